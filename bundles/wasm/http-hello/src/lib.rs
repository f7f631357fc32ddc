//! Answers every request with a greeting, the method, the path and, for a
//! body, its length; `/http/trap` (or any path ending `/trap`) traps,
//! `/http/echo` returns the body, a path ending `/count` the requests
//! this instance has counted (a global: 1 on a fresh
//! instance, more where instances are reused), a path ending `/fetch`
//! makes the outgoing request its body names (`URL` on the first line;
//! the rest, if any, is POSTed) and answers with its status and body, or
//! 502 and the error.
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
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
        let (status, text) = if path.starts_with("/http/echo") {
            (200, body)
        } else if path.ends_with("/count") {
            let n = COUNTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            (200, format!("count={n}\n").into_bytes())
        } else if path.ends_with("/fetch") {
            match fetch(&body) {
                Ok((status, body)) => (200, [format!("status={status}\n").into_bytes(), body].concat()),
                Err(e) => (502, format!("error={e:?}\n").into_bytes()),
            }
        } else {
            (200, format!("hello from wasi:http\nmethod={method}\npath={path}\nbody={}\n", body.len()).into_bytes())
        };
        let headers = Fields::new();
        headers.set("content-type", &[b"text/plain".to_vec()]).unwrap();
        headers.set("x-amphi", &[b"wasi-http".to_vec()]).unwrap();
        let response = OutgoingResponse::new(headers);
        response.set_status_code(status).unwrap();
        let outgoing = response.body().unwrap();
        ResponseOutparam::set(out, Ok(response));
        let stream = outgoing.write().unwrap();
        for chunk in text.chunks(4096) {
            stream.blocking_write_and_flush(chunk).unwrap();
        }
        drop(stream);
        OutgoingBody::finish(outgoing, None).unwrap();
    }
}

/// One outgoing request: `spec` is a URL line and an optional body.
fn fetch(spec: &[u8]) -> Result<(u16, Vec<u8>), ErrorCode> {
    let spec = String::from_utf8_lossy(spec);
    let (url, body) = spec.split_once('\n').unwrap_or((&spec, ""));
    let (scheme, rest) = match url.trim().split_once("://") {
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        _ => return Err(ErrorCode::HttpRequestUriInvalid),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    request.set_scheme(Some(&scheme)).unwrap();
    request.set_authority(Some(authority)).unwrap();
    request.set_path_with_query(Some(path)).unwrap();
    if !body.is_empty() {
        request.set_method(&Method::Post).unwrap();
    }
    let outgoing = request.body().unwrap();
    let pending = outgoing_handler::handle(request, None)?;
    let stream = outgoing.write().unwrap();
    for chunk in body.as_bytes().chunks(4096) {
        stream.blocking_write_and_flush(chunk).unwrap();
    }
    drop(stream);
    OutgoingBody::finish(outgoing, None)?;
    pending.subscribe().block();
    let response = pending.get().expect("ready").expect("once")?;
    let status = response.status();
    let mut data = Vec::new();
    let incoming = response.consume().expect("body once");
    let stream = incoming.stream().expect("stream once");
    while let Ok(chunk) = stream.blocking_read(64 << 10) {
        data.extend_from_slice(&chunk);
    }
    Ok((status, data))
}
