//! Answers every request with a greeting, its method and its path, as a
//! `wasi:http/handler@0.3.0` (the response body written by a task the
//! handler spawns, after the response was returned); a path ending
//! `/trap` traps.
use wasip3::http::types::{ErrorCode, Fields, Method, Request, Response};
use wasip3::{wit_bindgen, wit_future, wit_stream};

struct Hello;

wasip3::http::service::export!(Hello);

impl wasip3::exports::http::handler::Guest for Hello {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let path = request.get_path_with_query().unwrap_or_default();
        if path.ends_with("/trap") {
            panic!("trapping on purpose");
        }
        let method = match request.get_method() {
            Method::Get => "GET".to_owned(),
            Method::Post => "POST".to_owned(),
            other => format!("{other:?}"),
        };
        let text = format!("hello from wasi:http 0.3: {method} {path}\n");
        let (mut body_tx, body_rx) = wit_stream::new();
        let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
        let (response, _sent) = Response::new(Fields::new(), Some(body_rx), trailers_rx);
        drop(trailers_tx);
        wit_bindgen::spawn_local(async move {
            let rest = body_tx.write_all(text.into_bytes()).await;
            assert!(rest.is_empty());
        });
        Ok(response)
    }
}
