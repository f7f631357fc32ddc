//! What an invocation is on either side of the envelope: the server's
//! routed requests and a worker serving its function's own port
//! ([`crate::direct`]) admit, describe and answer requests the same way.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use amphi_function::Interface;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::cgi;
use crate::protocol::Head;

/// The most a function may answer (headers and body).
pub const MAX_RESPONSE: usize = 16 << 20;
/// The most of an invocation's stderr kept for the log.
pub const MAX_STDERR_LOGGED: usize = 2048;
/// The largest request head read (hyper answers 431 beyond it); with its
/// CGI variables it fits a worker message ([`crate::protocol::MAX_MESSAGE`]).
pub const MAX_REQUEST_HEAD: usize = 64 << 10;

/// Accept HTTP/1 connections until `stop`, each served by `handle`
/// (given the request, the connection's local and remote addresses) and
/// watched by `graceful` for the shutdown that follows.
pub async fn accept_until<H, F>(
    listener: &tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()>,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
    handle: H,
) where
    H: Fn(hyper::Request<hyper::body::Incoming>, SocketAddr, SocketAddr) -> F
        + Clone
        + Send
        + 'static,
    F: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::pin!(stop);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of fds or memory: let in-flight requests end.
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut stop => return,
        };
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        serve_connection(stream, local, remote, graceful, handle.clone());
    }
}

/// Serve one HTTP/1 connection in a task of its own, each request by
/// `handle`, watched by `graceful`.
pub fn serve_connection<I, H, F>(
    io: I,
    local: SocketAddr,
    remote: SocketAddr,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
    handle: H,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(hyper::Request<hyper::body::Incoming>, SocketAddr, SocketAddr) -> F + Send + 'static,
    F: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let conn = http1().serve_connection(
        hyper_util::rt::TokioIo::new(io),
        hyper::service::service_fn(move |req| {
            let reply = handle(req, local, remote);
            async move { Ok::<_, std::convert::Infallible>(reply.await) }
        }),
    );
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        let _ = conn.await;
    });
}

/// The HTTP/1 server settings of every connection.
pub fn http1() -> hyper::server::conn::http1::Builder {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(MAX_REQUEST_HEAD);
    http
}

/// `concurrency` invocations at once, `queue` more waiting, the rest
/// turned away.
pub struct Admission {
    permits: Semaphore,
    waiting: AtomicUsize,
    concurrency: usize,
    queue: usize,
}

impl Admission {
    pub fn new(concurrency: usize, queue: usize) -> Admission {
        Admission {
            permits: Semaphore::new(concurrency),
            waiting: AtomicUsize::new(0),
            concurrency,
            queue,
        }
    }

    /// A slot now, or after waiting in the queue; None when the queue is
    /// full.
    pub async fn enter(&self) -> Option<SemaphorePermit<'_>> {
        if let Ok(p) = self.permits.try_acquire() {
            return Some(p);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let p = self.permits.acquire().await.expect("semaphore open");
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        Some(p)
    }

    /// A slot, however long the wait.
    pub async fn slot(&self) -> SemaphorePermit<'_> {
        self.permits.acquire().await.expect("semaphore open")
    }

    pub fn busy(&self) -> String {
        format!(
            "{} invocations running and {} waiting",
            self.concurrency, self.queue
        )
    }
}

pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("response")
}

/// The 503 of a full queue.
pub fn busy_response() -> Response<Full<Bytes>> {
    let mut r = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "function busy, retry later\n",
    );
    r.headers_mut()
        .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
    r
}

pub fn too_large_response(max_body: u64) -> Response<Full<Bytes>> {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body larger than {max_body} bytes\n"),
    )
}

/// A request body as a function gets it.
pub enum Body {
    Read(Bytes),
    /// Over the function's `max_body`: answer 413.
    TooLarge,
    /// The connection failed mid-body: answer 400, with why for the log.
    Broken(String),
}

/// How much of a body over `max_body` is read and thrown away, and for how
/// long, before the 413 is sent. A server that closes a connection with
/// input unread makes the kernel reset it, and a client still sending, or
/// not yet reading, can lose the 413 to the reset (nginx's lingering close
/// answers the same race).
const DRAIN_BYTES: u64 = 1 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// `req`'s body, if it is at most `max` bytes.
pub async fn read_body(req: Request<Incoming>, max: u64) -> (hyper::http::request::Parts, Body) {
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A client that waits for 100-continue sends nothing until the body is
    // read: refused at once, it never uploads.
    let waits = req
        .headers()
        .get(hyper::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (parts, mut body) = req.into_parts();
    if declared.is_some_and(|n| n > max) {
        if !waits {
            drain(body).await;
        }
        return (parts, Body::TooLarge);
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => data,
                Err(_trailers) => continue,
            },
            Err(e) => return (parts, Body::Broken(e.to_string())),
        };
        len += data.len() as u64;
        if len > max {
            drain(body).await;
            return (parts, Body::TooLarge);
        }
        chunks.push(data);
    }
    let bytes = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => chunks
            .iter()
            .fold(BytesMut::with_capacity(len as usize), |mut all, c| {
                all.extend_from_slice(c);
                all
            })
            .freeze(),
    };
    (parts, Body::Read(bytes))
}

/// Read and drop what is left of `body`, within the drain's bounds.
async fn drain(mut body: Incoming) {
    let mut left = DRAIN_BYTES;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, |d| d.len() as u64);
            match left.checked_sub(n) {
                Some(rest) => left = rest,
                None => break,
            }
        }
    })
    .await;
}

/// Whether `path` is the function's: its route or below it.
pub fn routed(route: &str, path: &str) -> bool {
    route == "/"
        || path == route
        || path
            .strip_prefix(route)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A request as the function sees it.
pub struct Input<'a> {
    pub interface: Interface,
    pub route: &'a str,
    pub parts: &'a hyper::http::request::Parts,
    /// The invocation span's `traceparent`, replacing the client's.
    pub traceparent: Option<&'a str>,
    pub body_len: usize,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// CGI variables, or a `wasi:http` request head.
pub fn input(i: &Input) -> (Vec<(String, String)>, Option<Head>) {
    let mut headers: Vec<(String, String)> = i
        .parts
        .headers
        .iter()
        .filter(|(k, _)| i.traceparent.is_none() || *k != "traceparent")
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    if let Some(tp) = i.traceparent {
        headers.push(("traceparent".into(), tp.to_string()));
    }
    match i.interface {
        Interface::Cgi => {
            let env = cgi::variables(&cgi::Request {
                method: i.parts.method.as_str(),
                route: i.route,
                path: i.parts.uri.path(),
                query: i.parts.uri.query().unwrap_or(""),
                headers: &headers,
                content_length: i.body_len,
                local: i.local,
                remote: i.remote,
            });
            (env, None)
        }
        Interface::Http => {
            let uri = i
                .parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into());
            if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
                headers.push(("host".into(), i.local.to_string()));
            }
            let head = Head {
                method: i.parts.method.to_string(),
                uri,
                headers,
            };
            (Vec::new(), Some(head))
        }
    }
}

/// How an invocation ended, as the worker saw it.
pub struct Ending {
    pub exit: Option<i32>,
    pub signal: Option<i32>,
    pub error: Option<String>,
}

/// The function's answer, or why it failed (a 502).
pub fn response(ending: Ending, stdout: &[u8]) -> Result<Response<Full<Bytes>>, String> {
    match ending {
        Ending { error: Some(e), .. } => return Err(e),
        Ending {
            signal: Some(s), ..
        } => {
            return Err(if s == libc::SIGKILL {
                "killed (SIGKILL: out of memory in the envelope?)".to_string()
            } else {
                format!("killed by signal {s}")
            })
        }
        Ending {
            exit: Some(code), ..
        } if code != 0 => return Err(format!("exited with status {code}")),
        _ => {}
    }
    if stdout.len() > MAX_RESPONSE {
        return Err(format!("response over {MAX_RESPONSE} bytes"));
    }
    let r = cgi::parse_response(stdout)?;
    let mut b = Response::builder().status(r.status);
    for (k, v) in &r.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(Full::new(Bytes::copy_from_slice(&stdout[r.body_offset..])))
        .map_err(|e| format!("bad response header: {e}"))
}

pub fn failed(function: &str) -> Response<Full<Bytes>> {
    text(
        StatusCode::BAD_GATEWAY,
        format!("function {function} failed\n"),
    )
}

pub fn timed_out(function: &str) -> Response<Full<Bytes>> {
    text(
        StatusCode::GATEWAY_TIMEOUT,
        format!("function {function} timed out\n"),
    )
}
