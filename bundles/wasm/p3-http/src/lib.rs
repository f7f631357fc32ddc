//! Answers every request with a greeting, its method and its path, as a
//! `wasi:http/handler@0.3.0` (the response body written by a task the
//! handler spawns, after the response was returned). A path ending
//! `/trap` traps; one ending `/count` answers the requests this instance
//! has served (a global: 1 on a fresh instance); `/together/N` waits until
//! N requests are in flight in this instance at once and answers
//! `together=N`, or `alone` after 10 s (several requests at once in one
//! instance: what WASI 0.3's async handler allows).
use std::sync::atomic::{AtomicU32, Ordering};
use wasip3::clocks::monotonic_clock;
use wasip3::http::types::{ErrorCode, Fields, Method, Request, Response};
use wasip3::{wit_bindgen, wit_future, wit_stream};

struct Hello;

wasip3::http::service::export!(Hello);

static SERVED: AtomicU32 = AtomicU32::new(0);
static IN_FLIGHT: AtomicU32 = AtomicU32::new(0);

async fn together(n: u32) -> String {
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    let mut met = false;
    for _ in 0..200 {
        if IN_FLIGHT.load(Ordering::SeqCst) >= n {
            met = true;
            break;
        }
        monotonic_clock::wait_for(50_000_000).await;
    }
    // The others may still be counting: stay until they saw it too.
    monotonic_clock::wait_for(100_000_000).await;
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    if met {
        format!("together={n}\n")
    } else {
        "alone\n".to_owned()
    }
}

impl wasip3::exports::http::handler::Guest for Hello {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let served = SERVED.fetch_add(1, Ordering::SeqCst) + 1;
        let path = request.get_path_with_query().unwrap_or_default();
        if path.ends_with("/trap") {
            panic!("trapping on purpose");
        }
        let text = if path.ends_with("/count") {
            format!("count={served}\n")
        } else if let Some(n) = path.rsplit_once("/together/").and_then(|(_, n)| n.parse().ok()) {
            together(n).await
        } else {
            let method = match request.get_method() {
                Method::Get => "GET".to_owned(),
                Method::Post => "POST".to_owned(),
                other => format!("{other:?}"),
            };
            format!("hello from wasi:http 0.3: {method} {path}\n")
        };
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
