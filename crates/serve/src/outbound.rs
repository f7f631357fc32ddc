//! The host's end of functions' outgoing requests: an HTTP forward proxy
//! on each stream socket a worker sends, which makes a request only when
//! the function's `allowed_outbound_hosts` has its URL, from the host's
//! network, within the host's limits ([`amphi_wasm::outbound`] is the
//! worker's end and the request itself).

use std::convert::Infallible;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use amphi_wasm::outbound::{refusal, send, Error, Limits, WasiBody};
use hyper::body::Incoming;
use hyper::Request;

use amphi_function::Function;

use crate::log::log_line;

/// What the proxy needs of the function whose requests it makes.
pub(crate) trait Caller: Send + Sync + 'static {
    fn function(&self) -> &Function;
    /// Count one outgoing request's outcome in the function's metrics.
    fn count_outbound(&self, outcome: &'static str);
}

/// Connecting to a backend; reading from it waits up to the function's
/// own timeout, which ends the invocation anyway.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A request body or an answer, each way: what a function may answer.
const MAX_BODY: usize = 16 << 20;

/// Serve one worker's outgoing request (or several in turn, if its client
/// keeps the connection) on `stream`: a socket pair's end (wasi:http) or a
/// connection a native invocation made to its `http_proxy`.
pub(crate) async fn serve<C: Caller>(func: Arc<C>, stream: OwnedFd) {
    let unix = matches!(
        nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(stream.as_raw_fd())
            .map(|a| nix::sys::socket::SockaddrLike::family(&a)),
        Ok(Some(nix::sys::socket::AddressFamily::Unix))
    );
    let io: Result<Box<dyn Stream>, std::io::Error> = if unix {
        let s = std::os::unix::net::UnixStream::from(stream);
        s.set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(s))
            .map(|s| Box::new(s) as Box<dyn Stream>)
    } else {
        let s = std::net::TcpStream::from(stream);
        s.set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(s))
            .map(|s| Box::new(s) as Box<dyn Stream>)
    };
    let io = match io {
        Ok(io) => io,
        Err(e) => {
            log_line(
                serde_json::json!({"msg": "outbound", "function": func.function().name, "error": format!("the worker's socket: {e}")}),
            );
            return;
        }
    };
    let service = hyper::service::service_fn(move |req| {
        let func = func.clone();
        async move { Ok::<_, Infallible>(proxy(func, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades()
        .await;
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Stream for T {}

async fn proxy<C: Caller>(func: Arc<C>, mut req: Request<Incoming>) -> hyper::Response<WasiBody> {
    let f = func.function();
    let uri = req.uri().clone();
    let method = req.method().to_string();
    let span = crate::trace::outbound(&f.name, &method, &uri.to_string(), req.headers());
    if let Some(tp) = span.as_ref().and_then(|s| s.traceparent().parse().ok()) {
        // The backend's work is a child of this request's span.
        req.headers_mut().insert("traceparent", tp);
    }
    let span = std::sync::Mutex::new(span);
    let log = |outcome: &'static str, detail: serde_json::Value| {
        if let Some(span) = span.lock().expect("span").take() {
            let status = detail["status"].as_u64().map(|s| s as u16);
            let error = detail["error"].as_str().map(String::from);
            span.end(
                status,
                vec![opentelemetry::KeyValue::new("amphi.outcome", outcome)],
                error.as_deref(),
                None,
            );
        }
        func.count_outbound(outcome);
        let mut line = serde_json::json!({"msg": "outbound", "function": f.name, "method": method, "url": uri.to_string(), "outcome": outcome});
        if let (Some(line), Some(detail)) = (line.as_object_mut(), detail.as_object()) {
            line.extend(detail.clone());
        }
        log_line(line);
    };
    // CONNECT host:port: a tunnel, for https through `https_proxy`. The
    // path is inside it, so only an https entry without a path allows it.
    let connect = req.method() == hyper::Method::CONNECT;
    let scheme = if connect {
        Some("https")
    } else {
        uri.scheme_str()
    };
    let (Some(scheme), Some(authority)) = (scheme, uri.authority()) else {
        let why = "not an absolute URI";
        log("failed", serde_json::json!({"error": why}));
        return refusal(&Error::HttpRequestUriInvalid, why);
    };
    let port = authority
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let path = if connect { "" } else { uri.path() };
    if !f.allows_outbound(scheme, authority.host(), port, path) {
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
    if connect {
        let target = format!("{}:{port}", authority.host());
        return match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&target))
            .await
        {
            Ok(Ok(backend)) => {
                log("sent", serde_json::json!({"status": 200, "tunnel": true}));
                let name = f.name.clone();
                let idle = f.timeout;
                tokio::spawn(async move {
                    if let Ok(upgraded) = hyper::upgrade::on(req).await {
                        tunnel(upgraded, backend, idle, &name).await;
                    }
                });
                hyper::Response::new(WasiBody::default())
            }
            Ok(Err(e)) => {
                let why = format!("function {}: CONNECT {target}: {e}", f.name);
                log("failed", serde_json::json!({"error": why}));
                refusal(&Error::ConnectionRefused, &why)
            }
            Err(_) => {
                let why = format!(
                    "function {}: CONNECT {target}: no connection within {CONNECT_TIMEOUT:?}",
                    f.name
                );
                log("failed", serde_json::json!({"error": why}));
                refusal(&Error::ConnectionTimeout, &why)
            }
        };
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

/// Copy both ways until either side closes or the tunnel idles for a
/// function timeout, at most [`MAX_BODY`] each way.
async fn tunnel(
    upgraded: hyper::upgrade::Upgraded,
    backend: tokio::net::TcpStream,
    idle: Duration,
    function: &str,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let client = hyper_util::rt::TokioIo::new(upgraded);
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut backend_read, mut backend_write) = backend.into_split();
    async fn pump(
        from: &mut (impl tokio::io::AsyncRead + Unpin),
        to: &mut (impl tokio::io::AsyncWrite + Unpin),
        idle: Duration,
    ) -> std::io::Result<()> {
        let mut buf = vec![0u8; 16 << 10];
        let mut total = 0usize;
        loop {
            let n = tokio::time::timeout(idle, from.read(&mut buf))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            total += n;
            if n == 0 || total > MAX_BODY {
                return to.shutdown().await;
            }
            to.write_all(&buf[..n]).await?;
        }
    }
    let (up, down) = tokio::join!(
        pump(&mut client_read, &mut backend_write, idle),
        pump(&mut backend_read, &mut client_write, idle)
    );
    if let Some(e) = up.err().or(down.err()) {
        log_line(
            serde_json::json!({"msg": "outbound", "function": function, "tunnel": true, "error": e.to_string()}),
        );
    }
}
