//! Connections a wasm function's worker serves itself: those of the
//! function's own port (`listen`: the server binds the socket and hands
//! it over with SCM_RIGHTS, so the envelope's network namespace stays
//! empty while its worker accepts connections made outside it) and those
//! of the server's port whose request the server routed to the function
//! ([`crate::connection`]). A request then costs no hop: no socket pair,
//! pipe or control message before the guest runs. The worker applies the
//! function's limits (route, body size, concurrency and queue, timeout) as
//! the server does ([`crate::invocation`]) and reports each request
//! afterwards ([`Served`]) for the server's log line, metrics and trace.
//! A request on a server's connection that is not the function's goes to
//! the server ([`FromWorker::Forward`]), and the connection with it once
//! no request is in flight and the last one answered was not the
//! function's ([`FromWorker::Returned`]). The server takes the
//! port and the connections back to scale to zero
//! ([`ToWorker::Drain`](crate::protocol::ToWorker::Drain)).

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use amphi_function::Interface;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::connection::{serve_until_given_back, Serving};
use crate::in_process::{phases, InProcess};
use crate::invocation::{
    self, busy_response, failed, read_body, text, timed_out, too_large_response, Admission, Body,
    Ending, Input, MAX_REQUEST_HEAD, MAX_RESPONSE, MAX_STDERR_LOGGED,
};
use crate::protocol::{epoch_ns, send, FromWorker, Served};

/// The most bytes of reports in one message (estimated; a message may
/// hold up to [`crate::protocol::MAX_MESSAGE`]).
const REPORT_BATCH: usize = 64 << 10;
/// Invocation ids of the port, apart from those the server numbers (their
/// scratch directories share the envelope's /tmp).
const FIRST_ID: u64 = 1 << 63;

/// What the worker needs to serve the function's port.
pub struct Plan {
    pub name: String,
    pub route: String,
    pub interface: Interface,
    pub timeout: Duration,
    pub max_body: u64,
    pub concurrency: usize,
    pub queue: usize,
    /// Paths under the route that the server's router sends elsewhere.
    pub elsewhere: Vec<String>,
}

impl Plan {
    /// Whether the server's router gives this path to the function.
    fn routes(&self, path: &str) -> bool {
        invocation::routed(&self.route, path)
            && !self.elsewhere.iter().any(|r| invocation::routed(r, path))
    }
}

pub struct Direct {
    plan: Arc<Plan>,
    function: Arc<InProcess>,
    control: Arc<AsyncFd<OwnedFd>>,
    admission: Admission,
    in_flight: AtomicUsize,
    next_id: AtomicU64,
    /// Set until the first request after a cold hand-over is served.
    cold: AtomicBool,
    /// When the server made the envelope for a handed connection's first
    /// request, told with that request.
    made: std::sync::Mutex<Option<(u64, u64)>>,
    traced: AtomicBool,
    /// The port's accept loop and the connections being served; stopped
    /// by the server's Drain (the port closed, every connection of the
    /// server's given back between two requests).
    serving: Serving,
    reporting: std::sync::Once,
    /// Served requests not yet reported, sent in batches: under load the
    /// server wakes once for many.
    reports: std::sync::Mutex<Vec<Served>>,
    reported: tokio::sync::Notify,
}

impl Direct {
    pub fn new(
        plan: Arc<Plan>,
        function: Arc<InProcess>,
        control: Arc<AsyncFd<OwnedFd>>,
    ) -> Arc<Direct> {
        Arc::new(Direct {
            admission: Admission::new(plan.concurrency, plan.queue),
            plan,
            function,
            control,
            in_flight: AtomicUsize::new(0),
            next_id: AtomicU64::new(FIRST_ID),
            cold: AtomicBool::new(false),
            made: std::sync::Mutex::new(None),
            traced: AtomicBool::new(false),
            serving: Serving::default(),
            reporting: std::sync::Once::new(),
            reports: std::sync::Mutex::new(Vec::new()),
            reported: tokio::sync::Notify::new(),
        })
    }

    /// A slot for an invocation the server routed (the server queued it
    /// already: it waits here without a queue limit of its own).
    pub async fn slot(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.admission.slot().await
    }

    /// Close the port, give the server's connections back as their
    /// requests end, then say so.
    pub fn drain(self: &Arc<Self>) {
        self.serving.stop();
        let direct = self.clone();
        tokio::spawn(async move {
            direct.serving.all_ended().await;
            direct.send_reports().await;
            direct.report(&FromWorker::Drained).await;
        });
    }

    /// What the server said of its tracing and of the envelope's first
    /// request, and the reporter, started once.
    fn begin(self: &Arc<Self>, traced: bool, cold: bool) {
        self.traced.store(traced, Ordering::Relaxed);
        if cold {
            self.cold.store(true, Ordering::Relaxed);
        }
        self.serving.begin();
        self.reporting
            .call_once(|| drop(tokio::spawn(self.clone().reporter())));
    }

    async fn report(&self, msg: &FromWorker) {
        let _ = self.report_with(msg, &[]).await;
    }

    async fn report_with(&self, msg: &FromWorker, fds: &[RawFd]) -> std::io::Result<()> {
        self.control
            .async_io(Interest::WRITABLE, |fd| {
                send(fd.as_fd(), msg, fds).map_err(std::io::Error::from)
            })
            .await
    }

    fn queue_report(&self, served: Served) {
        let mut reports = self.reports.lock().expect("reports");
        reports.push(served);
        if reports.len() == 1 {
            self.reported.notify_one();
        }
    }

    /// Send what is queued, in messages of at most [`REPORT_BATCH`]
    /// (estimated) bytes.
    async fn send_reports(&self) {
        let mut pending = std::mem::take(&mut *self.reports.lock().expect("reports"));
        while !pending.is_empty() {
            let mut bytes = 0;
            let n = pending
                .iter()
                .take_while(|s| {
                    bytes += s.size_estimate();
                    bytes <= REPORT_BATCH
                })
                .count()
                .max(1);
            let rest = pending.split_off(n);
            self.report(&FromWorker::Served { reports: pending }).await;
            pending = rest;
        }
    }

    /// Report in batches: after a wake-up, the requests that end meanwhile
    /// join the batch.
    async fn reporter(self: Arc<Self>) {
        loop {
            self.reported.notified().await;
            tokio::task::yield_now().await;
            self.send_reports().await;
        }
    }

    /// Serve the function's own port until drained (counted from the
    /// moment the server's message is read).
    pub fn listen(self: &Arc<Self>, listener: OwnedFd, traced: bool, cold: bool) {
        self.begin(traced, cold);
        tokio::spawn(self.clone().serve_port(listener));
    }

    /// Accept and serve until drained, then finish the open connections.
    async fn serve_port(self: Arc<Self>, listener: OwnedFd) {
        let listener = std::net::TcpListener::from(listener);
        let listener = match listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
        {
            Ok(l) => l,
            Err(e) => {
                eprintln!("amphi: function worker: the function's port: {e}");
                self.serving.end();
                return;
            }
        };
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let direct = self.clone();
        invocation::accept_until(
            &listener,
            self.serving.stopped(),
            &graceful,
            move |req, local, remote| {
                let direct = direct.clone();
                async move { direct.handle(req, local, remote).await }
            },
        )
        .await;
        // Connections queue in the listener's backlog for the next
        // envelope the server makes.
        drop(listener);
        graceful.shutdown().await;
        self.serving.end();
    }

    /// Serve a connection of the server's port (counted from the moment
    /// the server's message is read).
    pub fn connection(self: &Arc<Self>, socket: OwnedFd, handed: Handed) {
        if handed.cold.is_some() {
            *self.made.lock().expect("made") = handed.cold;
        }
        self.begin(handed.traced, handed.cold.is_some());
        tokio::spawn(self.clone().serve_handed(socket, handed));
    }

    /// Serve the function's requests on a connection of the server's
    /// port; give it back, between two requests, when one is another's or
    /// the server drains the worker.
    async fn serve_handed(self: Arc<Self>, socket: OwnedFd, handed: Handed) {
        let Handed {
            local,
            remote,
            read,
            ..
        } = handed;
        let stream = std::net::TcpStream::from(socket);
        let stream = match stream
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(stream))
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("amphi: function worker: a connection of the server's: {e}");
                self.serving.end();
                return;
            }
        };
        let direct = self.clone();
        let handle = move |req| {
            let direct = direct.clone();
            async move { direct.handle_handed(req, local, remote).await }
        };
        let back = serve_until_given_back(stream, read, handle, self.serving.stopped()).await;
        // Bounded by hyper's buffer and what the server read; a connection
        // that cannot be described in a message is closed.
        if let Some((stream, read)) = back.filter(|(_, read)| read.len() <= 2 * MAX_REQUEST_HEAD) {
            let back = FromWorker::Returned {
                local,
                remote,
                read,
            };
            let _ = self.report_with(&back, &[stream.as_raw_fd()]).await;
        }
        self.serving.end();
    }

    /// A request on a connection of the server's: the function's, or the
    /// server's to answer; then the connection goes back to it (true).
    async fn handle_handed(
        &self,
        req: Request<Incoming>,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> (Response<Full<Bytes>>, bool) {
        if self.plan.routes(req.uri().path()) {
            return (self.handle(req, local, remote).await, false);
        }
        let response = match self.forward(req, local, remote).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("amphi: function worker: a request for the server: {e}");
                text(StatusCode::BAD_GATEWAY, "the server could not be reached\n")
            }
        };
        (response, true)
    }

    /// Have the server answer a request, over a stream of their own.
    async fn forward(
        &self,
        req: Request<Incoming>,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<Response<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        self.report_with(
            &FromWorker::Forward { local, remote },
            &[theirs.as_raw_fd()],
        )
        .await?;
        drop(theirs);
        let stream = tokio::net::UnixStream::from_std(ours)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let (parts, body) = sender.send_request(req).await?.into_parts();
        let body = Limited::new(body, MAX_RESPONSE).collect().await?.to_bytes();
        Ok(Response::from_parts(parts, Full::new(body)))
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Response<Full<Bytes>> {
        if !invocation::routed(&self.plan.route, req.uri().path()) {
            return text(StatusCode::NOT_FOUND, "no function at this path\n");
        }
        let cold = self.cold.swap(false, Ordering::Relaxed);
        // A cold request on a handed connection began when the server
        // started making the envelope for it.
        let made = cold
            .then(|| self.made.lock().expect("made").take())
            .flatten();
        let mut served = Served {
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            started: made.map_or_else(|| epoch_ns(SystemTime::now()), |(from, _)| from),
            cold,
            ..Served::default()
        };
        if self.traced.load(Ordering::Relaxed) {
            served.trace = Some(crate::trace::new_invocation_context(req.headers()));
        }
        let response = self.answer(req, local, remote, &mut served).await;
        if let Some((from, to)) = made {
            served.phases.insert(0, ("envelope".into(), from, to));
        }
        served.status = response.status().as_u16();
        served.ended = epoch_ns(SystemTime::now());
        served.in_flight = self.in_flight.load(Ordering::Relaxed);
        self.queue_report(served);
        response
    }

    async fn answer(
        &self,
        req: Request<Incoming>,
        local: SocketAddr,
        remote: SocketAddr,
        served: &mut Served,
    ) -> Response<Full<Bytes>> {
        let plan = &self.plan;
        let (parts, body) = read_body(req, plan.max_body).await;
        let body = match body {
            Body::Read(bytes) => bytes,
            Body::TooLarge => {
                let why = format!("request body over max_body ({} bytes)", plan.max_body);
                failure(served, "too_large", why);
                return too_large_response(plan.max_body);
            }
            Body::Broken(e) => {
                served.error = Some(format!("reading the request body: {e}"));
                return text(StatusCode::BAD_REQUEST, "bad request body\n");
            }
        };
        let queued = SystemTime::now();
        let Some(_permit) = self.admission.enter().await else {
            failure(served, "overload", self.admission.busy());
            return busy_response();
        };
        let running = SystemTime::now();
        let (env, head) = invocation::input(&Input {
            interface: plan.interface,
            route: &plan.route,
            parts: &parts,
            traceparent: served.trace.as_ref().map(|(_, ours)| ours.as_str()),
            body_len: body.len(),
            local,
            remote,
        });
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outcome =
            tokio::time::timeout(plan.timeout, self.function.run(id, env, head, body)).await;
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        served.phases = vec![
            ("queue".into(), epoch_ns(queued), epoch_ns(running)),
            ("run".into(), epoch_ns(running), epoch_ns(SystemTime::now())),
        ];
        let outcome = match outcome {
            Err(_) => {
                let why = format!("timed out after {:?}; invocation killed", plan.timeout);
                failure(served, "timeout", why);
                return timed_out(&plan.name);
            }
            Ok(Err(why)) => {
                failure(served, "crash", why);
                return failed(&plan.name);
            }
            Ok(Ok(o)) => o,
        };
        served.phases.extend(phases(&outcome.phases));
        let stderr = &outcome.stderr[..outcome.stderr.len().min(MAX_STDERR_LOGGED)];
        served.stderr = String::from_utf8_lossy(stderr).into_owned();
        let ending = Ending {
            exit: Some(outcome.exit),
            signal: None,
            error: None,
        };
        invocation::response(ending, &outcome.stdout).unwrap_or_else(|why| {
            failure(served, "crash", why);
            failed(&plan.name)
        })
    }
}

fn failure(served: &mut Served, kind: &str, why: String) {
    served.error_kind = Some(kind.into());
    served.error = Some(why);
}

/// What the server says of a connection it hands over.
pub struct Handed {
    pub traced: bool,
    /// The envelope was made for the connection: from when to when.
    pub cold: Option<(u64, u64)>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub read: Vec<u8>,
}
