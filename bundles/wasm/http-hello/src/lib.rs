//! Answers every request with a greeting, the method, the path and, for a
//! body, its length; `/http/trap` (or any path ending `/trap`) traps,
//! `/http/echo` returns the body, a path ending `/count` the requests
//! this instance has counted (a global: 1 on a fresh
//! instance, more where instances are reused).
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Hello;

static COUNTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

wasip2::http::proxy::export!(Hello);

fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let mut data = Vec::new();
    let Ok(body) = request.consume() else { return data };
    let Ok(stream) = body.stream() else { return data };
    while let Ok(chunk) = stream.blocking_read(64 << 10) {
        data.extend_from_slice(&chunk);
    }
    drop(stream);
    data
}

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        if path.ends_with("/trap") {
            panic!("trapping on purpose");
        }
        let method = format!("{:?}", request.method());
        let body = read_body(&request);
        let headers = Fields::new();
        headers.set("content-type", &[b"text/plain".to_vec()]).unwrap();
        headers.set("x-amphi", &[b"wasi-http".to_vec()]).unwrap();
        let response = OutgoingResponse::new(headers);
        response.set_status_code(200).unwrap();
        let outgoing = response.body().unwrap();
        ResponseOutparam::set(out, Ok(response));
        let text = if path.starts_with("/http/echo") {
            body
        } else if path.ends_with("/count") {
            let n = COUNTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            format!("count={n}\n").into_bytes()
        } else {
            format!("hello from wasi:http\nmethod={method}\npath={path}\nbody={}\n", body.len()).into_bytes()
        };
        let stream = outgoing.write().unwrap();
        for chunk in text.chunks(4096) {
            stream.blocking_write_and_flush(chunk).unwrap();
        }
        drop(stream);
        OutgoingBody::finish(outgoing, None).unwrap();
    }
}
