//! The host's end of functions' outgoing requests: an HTTP forward proxy
//! on each stream socket a worker sends, which makes a request only when
//! the function's `allowed_outbound_hosts` has its URL, from the host's
//! network, within the host's limits ([`amphi_wasm::outbound`] is the
//! worker's end and the request itself).

use std::convert::Infallible;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use amphi_wasm::outbound::{refusal, send, Error, Limits, WasiBody};
use hyper::body::Incoming;
use hyper::Request;

use crate::server::{log_line, Func};

/// Connecting to a backend; reading from it waits up to the function's
/// own timeout, which ends the invocation anyway.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A request body or an answer, each way: what a function may answer.
const MAX_BODY: usize = 16 << 20;

/// Serve one worker's outgoing request (or several in turn, if its client
/// keeps the connection) on `stream`.
pub(crate) async fn serve(func: Arc<Func>, stream: OwnedFd) {
    let stream = std::os::unix::net::UnixStream::from(stream);
    let stream = match stream
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(stream))
    {
        Ok(s) => s,
        Err(e) => {
            log_line(
                serde_json::json!({"msg": "outbound", "function": func.f.name, "error": format!("the worker's socket: {e}")}),
            );
            return;
        }
    };
    let service = hyper::service::service_fn(move |req| {
        let func = func.clone();
        async move { Ok::<_, Infallible>(proxy(&func, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}

async fn proxy(func: &Func, req: Request<Incoming>) -> hyper::Response<WasiBody> {
    let f = &func.f;
    let uri = req.uri().clone();
    let method = req.method().to_string();
    let log = |outcome: &'static str, detail: serde_json::Value| {
        func.metrics.outbound(outcome);
        let mut line = serde_json::json!({"msg": "outbound", "function": f.name, "method": method, "url": uri.to_string(), "outcome": outcome});
        if let (Some(line), Some(detail)) = (line.as_object_mut(), detail.as_object()) {
            line.extend(detail.clone());
        }
        log_line(line);
    };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        let why = "not an absolute URI";
        log("failed", serde_json::json!({"error": why}));
        return refusal(&Error::HttpRequestUriInvalid, why);
    };
    let port = authority
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    if !f.allows_outbound(scheme, authority.host(), port, uri.path()) {
        let why = format!(
            "function {}: {uri} is not in allowed_outbound_hosts ({})",
            f.name,
            f.allowed_outbound_hosts
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        log("denied", serde_json::json!({"error": why}));
        return refusal(&Error::HttpRequestDenied, &why);
    }
    let limits = Limits {
        connect: CONNECT_TIMEOUT,
        idle: f.timeout,
        body: MAX_BODY,
    };
    match send(req, limits).await {
        Ok(response) => {
            log(
                "sent",
                serde_json::json!({"status": response.status().as_u16()}),
            );
            response
        }
        Err(e) => {
            let why = format!("function {}: {uri}: {e}", f.name);
            log("failed", serde_json::json!({"error": why}));
            refusal(&e, &why)
        }
    }
}
