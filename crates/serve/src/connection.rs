//! Connections of the server's port that move between the server and the
//! workers: a wasm function's worker serves the connection itself (no hop
//! on the request path) while its requests are the function's, and gives
//! it back, with what it read and did not serve, when one is not.
//!
//! Whoever holds a connection holds the bytes read from it that nobody has
//! served yet; [`Resumed`] replays them before reading the socket again.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::invocation::MAX_REQUEST_HEAD;

/// Serve requests on a connection, each answered by `handle` with its
/// response and whether the connection should then go back, until one
/// should or `stop` ends. Then the connection and what was read of it but
/// not served, for whoever routes its next request; None when it ended
/// (the client closed it, or HTTP did).
///
/// A connection that comes with bytes read (a request routed here) is
/// given back by `stop` only after one request: that request was routed
/// here to be served. Given back unserved, it would be routed to the same
/// function again, which a scale to zero (`stop`) has just taken away,
/// and cost a second cold start.
///
/// hyper is shut down only when no request is in flight: shut down
/// during one (a pipelined request it read ahead), it would add
/// `Connection: close` to that response. Idle, it stops without writing
/// anything and returns what it had read.
pub async fn serve_until_given_back<H, F>(
    stream: TcpStream,
    read: Vec<u8>,
    handle: H,
    stop: impl Future<Output = ()>,
) -> Option<(TcpStream, Vec<u8>)>
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = (Response<Full<Bytes>>, bool)> + Send + 'static,
{
    let turns = Arc::new(Turns::default());
    let owes_a_request = !read.is_empty();
    let (handle, counted) = (Arc::new(handle), turns.clone());
    let service = hyper::service::service_fn(move |req| {
        // Counted from the moment hyper dispatches the request.
        let mut turn = Turn {
            turns: counted.clone(),
            give_back: false,
        };
        counted.in_flight.fetch_add(1, Ordering::AcqRel);
        counted.dispatched.store(true, Ordering::Release);
        let answer = handle(req);
        Box::pin(async move {
            let (response, give_back) = answer.await;
            turn.give_back = give_back;
            Ok(response.map(|body| Answered { body, _turn: turn }))
        }) as Answer
    });
    let mut conn = crate::invocation::http1().serve_connection(
        hyper_util::rt::TokioIo::new(Resumed::new(read, stream)),
        service,
    );
    tokio::pin!(stop);
    let (mut stopped, mut shutting) = (false, false);
    let ended = loop {
        tokio::select! {
            ended = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break ended,
            () = turns.changed.notified(), if !shutting => {}
            () = &mut stop, if !stopped => stopped = true,
        }
        let stop_now = stopped && (!owes_a_request || turns.dispatched.load(Ordering::Acquire));
        let wanted = stop_now || turns.give_back.load(Ordering::Acquire);
        if !shutting && wanted && turns.in_flight.load(Ordering::Acquire) == 0 {
            shutting = true;
            Pin::new(&mut conn).graceful_shutdown();
        }
    };
    if !shutting || ended.is_err() {
        return None;
    }
    let parts = conn.into_parts();
    let (stream, unread) = parts.io.into_inner().into_parts();
    let mut read = parts.read_buf.to_vec();
    read.extend(unread);
    Some((stream, read))
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<Answered>, Infallible>> + Send>>;

/// Requests in flight on one connection, and whether the last one
/// answered asked for the connection to go back (HTTP/1 answers in
/// order: a pipelined run of requests that ends with the holder's own
/// keeps it there).
#[derive(Default)]
struct Turns {
    in_flight: AtomicUsize,
    /// A request was dispatched on the connection.
    dispatched: std::sync::atomic::AtomicBool,
    give_back: std::sync::atomic::AtomicBool,
    changed: Notify,
}

/// One request, in flight until hyper is done with its response (it has
/// written the head by then) or drops it unanswered.
struct Turn {
    turns: Arc<Turns>,
    give_back: bool,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.turns
            .give_back
            .store(self.give_back, Ordering::Release);
        self.turns.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.turns.changed.notify_one();
    }
}

/// A response body that holds its request's [`Turn`].
struct Answered {
    body: Full<Bytes>,
    _turn: Turn,
}

impl hyper::body::Body for Answered {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Connections (or accept loops) being served, and the signal that ends
/// them.
pub struct Serving {
    count: AtomicUsize,
    ended: Notify,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Default for Serving {
    fn default() -> Serving {
        Serving {
            count: AtomicUsize::new(0),
            ended: Notify::new(),
            stop: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl Serving {
    pub fn begin(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    pub fn end(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.ended.notify_waiters();
        }
    }

    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Until [`Serving::stop`].
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.subscribe();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    }

    /// Until nothing is being served.
    pub async fn all_ended(&self) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            ended.await;
        }
    }
}

/// A stream whose first bytes were read before it was handed over.
pub struct Resumed<S> {
    read: Vec<u8>,
    at: usize,
    stream: S,
}

impl<S> Resumed<S> {
    pub fn new(read: Vec<u8>, stream: S) -> Resumed<S> {
        Resumed {
            read,
            at: 0,
            stream,
        }
    }

    /// The stream, and what of the earlier bytes nobody read.
    pub fn into_parts(mut self) -> (S, Vec<u8>) {
        self.read.drain(..self.at);
        (self.stream, self.read)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Resumed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.read.len() {
            let n = buf.remaining().min(self.read.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.read[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Resumed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// What the next request on a connection is, by its request line.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// The request line's path (without the query).
    Path(String),
    /// The client closed the connection between requests.
    Closed,
    /// Not a request line the router can read (too long, not HTTP/1, a
    /// read error): whoever serves it answers as HTTP says.
    Unreadable,
}

/// Read until `read` holds the next request's line, and say where it goes.
/// Bytes read stay in `read`, for whoever serves the request.
pub async fn next_request(stream: &mut (impl AsyncRead + Unpin), read: &mut Vec<u8>) -> Next {
    loop {
        if let Some(next) = request_line_path(read) {
            return next;
        }
        if read.len() >= MAX_REQUEST_HEAD {
            return Next::Unreadable;
        }
        read.reserve(4096);
        match stream.read_buf(read).await {
            Ok(0) if read.iter().all(u8::is_ascii_whitespace) => return Next::Closed,
            Ok(0) | Err(_) => return Next::Unreadable,
            Ok(_) => {}
        }
    }
}

/// The path of the request line at the start of `read` (HTTP allows empty
/// lines before it); None until the line is whole.
fn request_line_path(read: &[u8]) -> Option<Next> {
    let start = read.iter().position(|b| !matches!(b, b'\r' | b'\n'))?;
    let line = &read[start..];
    let end = line.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&line[..end]).ok();
    let Some(mut parts) = line.map(|l| l.trim_end_matches('\r').split(' ')) else {
        return Some(Next::Unreadable);
    };
    let (Some(_method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some(Next::Unreadable);
    };
    if !version.starts_with("HTTP/1.") {
        return Some(Next::Unreadable);
    }
    // The absolute form (a request through a proxy) names the path after
    // the authority.
    let target = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |at| &rest[at..]),
        None => target,
    };
    let path = target.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return Some(Next::Unreadable);
    }
    Some(Next::Path(path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_is_read_from_the_request_line_once_it_is_whole() {
        let path = |s: &str| request_line_path(s.as_bytes());
        assert_eq!(
            path("GET /a/b?x=1 HTTP/1.1\r\nHost: x\r\n"),
            Some(Next::Path("/a/b".into()))
        );
        assert_eq!(
            path("\r\nPOST /f HTTP/1.0\n"),
            Some(Next::Path("/f".into()))
        );
        assert_eq!(
            path("GET http://h:8080/g/h?q HTTP/1.1\r\n"),
            Some(Next::Path("/g/h".into()))
        );
        assert_eq!(
            path("GET http://h HTTP/1.1\r\n"),
            Some(Next::Path("/".into()))
        );
        assert_eq!(path("GET /a HTTP/1.1"), None, "the line is not whole");
        assert_eq!(path("\r\n"), None);
        assert_eq!(path("GET * HTTP/1.1\r\n"), Some(Next::Unreadable));
        assert_eq!(path("PRI * HTTP/2.0\r\n"), Some(Next::Unreadable));
        assert_eq!(path("GET /a  HTTP/1.1\r\n"), Some(Next::Unreadable));
        assert_eq!(path("\u{ff}\r\n"), Some(Next::Unreadable));
    }

    #[tokio::test]
    async fn bytes_read_before_a_hand_over_are_read_again_first() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"world")
            .await
            .unwrap();
        drop(client);
        let mut resumed = Resumed::new(b"hello ".to_vec(), server);
        let mut first = [0u8; 3];
        resumed.read_exact(&mut first).await.unwrap();
        let (mut server, rest) = resumed.into_parts();
        assert_eq!((&first, rest.as_slice()), (b"hel", &b"lo "[..]));
        let mut tail = String::new();
        server.read_to_string(&mut tail).await.unwrap();
        assert_eq!(tail, "world");
    }

    /// A connection, its client's end, and the request head the client
    /// sent, read off it as the server's router reads it.
    async fn routed_connection(head: &[u8]) -> (TcpStream, TcpStream, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut client, head)
            .await
            .unwrap();
        let mut read = vec![0u8; head.len()];
        server.read_exact(&mut read).await.unwrap();
        (server, client, read)
    }

    fn answer_served(
        calls: Arc<AtomicUsize>,
    ) -> impl Fn(Request<Incoming>) -> std::future::Ready<(Response<Full<Bytes>>, bool)> {
        move |_req| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready((
                Response::new(Full::new(Bytes::from_static(b"served"))),
                false,
            ))
        }
    }

    /// A scale to zero that comes as a routed connection arrives (the
    /// stop already given) still lets its request be served: given back
    /// unserved, it would be routed to a new envelope, a second cold start.
    /// Which of the two is polled first is tokio's random choice, so the
    /// race is run many times.
    #[tokio::test]
    async fn a_routed_request_is_served_even_when_stopped_before_it() {
        for _ in 0..32 {
            let (server, mut client, read) =
                routed_connection(b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n").await;
            let calls = Arc::new(AtomicUsize::new(0));
            let answer = answer_served(calls.clone());
            let back = serve_until_given_back(server, read, answer, std::future::ready(())).await;
            assert_eq!(calls.load(Ordering::SeqCst), 1, "given back unserved");
            let (_, unread) = back.expect("given back after its request");
            assert!(unread.is_empty(), "{unread:?}");
            let mut response = vec![0u8; 256];
            let n = client.read(&mut response).await.unwrap();
            let response = String::from_utf8_lossy(&response[..n]);
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
            assert!(response.ends_with("served"), "{response}");
        }
    }

    /// Between two requests (nothing read), a stopped holder gives the
    /// connection back at once, so that draining never waits on a client.
    #[tokio::test]
    async fn an_idle_connection_is_given_back_at_once_when_stopped() {
        let (server, _client, _) = routed_connection(b"").await;
        let calls = Arc::new(AtomicUsize::new(0));
        let back = serve_until_given_back(
            server,
            Vec::new(),
            answer_served(calls.clone()),
            std::future::ready(()),
        )
        .await;
        assert!(back.is_some());
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }
}
