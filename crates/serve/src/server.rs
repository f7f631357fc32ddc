//! The HTTP side: routing, admission (concurrency, queue, body size),
//! envelopes per function (warm, pooled, scaled to zero), invocations with
//! their timeout, `/metrics`, the per-invocation log line and graceful
//! shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use amphi_function::{Function, METRICS_ROUTE};
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, Interest};
use tokio::sync::oneshot;

use crate::connection::{next_request, serve_until_given_back, Next, Serving};
use crate::invocation::{
    self, busy_response, failed, read_body, text, timed_out, too_large_response, Admission, Body,
    Ending, Input, MAX_RESPONSE, MAX_STDERR_LOGGED,
};
use crate::keeper::Keeper;
use crate::log::{log_line, log_lines};
use crate::metrics::{self, FunctionMetrics};
use crate::protocol::{epoch_ns, recv, send, Done, FromWorker, Head, Served, ToWorker};

pub struct Settings {
    pub listen: SocketAddr,
    pub shutdown_timeout: Duration,
}

/// One envelope: a started container whose process is a function worker.
struct Envelope {
    id: String,
    control: AsyncFd<OwnedFd>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Done>>>,
    dead: AtomicBool,
    /// The worker gave the function's port back.
    drained: AtomicBool,
    /// Woken when the envelope ends or is drained.
    changed: tokio::sync::Notify,
}

impl Envelope {
    fn alive(&self) -> bool {
        !self.dead.load(Ordering::Acquire)
    }

    /// Until the worker has given the port back (or is gone).
    async fn drained(&self) {
        while self.alive() && !self.drained.load(Ordering::Acquire) {
            self.changed.notified().await;
        }
    }

    async fn send(&self, msg: &ToWorker, fds: &[std::os::fd::RawFd]) -> std::io::Result<()> {
        self.control
            .async_io(Interest::WRITABLE, |fd| {
                send(fd.as_fd(), msg, fds).map_err(std::io::Error::from)
            })
            .await
    }

    /// Route each worker report to its invocation, and each outgoing
    /// request to the proxy; at the end of the stream the envelope is dead
    /// and every waiting invocation learns it.
    async fn read_reports(self: Arc<Self>, func: Arc<Func>, server: Arc<Server>) {
        let mut buf = vec![0u8; crate::protocol::MAX_MESSAGE];
        loop {
            let r = self
                .control
                .async_io(Interest::READABLE, |fd| {
                    recv(fd.as_fd(), &mut buf).map_err(std::io::Error::from)
                })
                .await;
            match r {
                Ok(Some((n, fds))) => match serde_json::from_slice::<FromWorker>(&buf[..n]) {
                    Ok(FromWorker::Done(done)) => {
                        if let Some(tx) = self.pending.lock().expect("pending").remove(&done.id) {
                            let _ = tx.send(done);
                        }
                    }
                    Ok(FromWorker::Served { reports }) => log_lines(
                        reports
                            .into_iter()
                            .map(|s| served(&func, &self.id, s))
                            .collect(),
                    ),
                    Ok(FromWorker::Forward { local, remote }) => {
                        if let Some(stream) = fds.into_iter().next() {
                            server.answer_forwarded(stream, local, remote);
                        }
                    }
                    Ok(FromWorker::Returned {
                        local,
                        remote,
                        read,
                    }) => {
                        if let Some(socket) = fds.into_iter().next() {
                            server.take_back(socket, local, remote, read);
                        }
                    }
                    Ok(FromWorker::Drained) => {
                        self.drained.store(true, Ordering::Release);
                        self.changed.notify_one();
                    }
                    Ok(FromWorker::Outbound) => {
                        // A worker of a function without an allow-list
                        // never sends this; one that does is refused too.
                        if let Some(stream) = fds.into_iter().next() {
                            tokio::spawn(crate::outbound::serve(func.clone(), stream));
                        }
                    }
                    Err(_) => {}
                },
                Ok(None) | Err(_) => break,
            }
        }
        self.dead.store(true, Ordering::Release);
        self.pending.lock().expect("pending").clear();
        self.changed.notify_one();
    }
}

impl Func {
    fn pool_push(&self, e: Arc<Envelope>) {
        let mut pool = self.pool.lock().expect("pool");
        pool.push(e);
        self.metrics.pooled.store(pool.len(), Ordering::Relaxed);
    }

    fn pool_pop(&self) -> Option<Arc<Envelope>> {
        let mut pool = self.pool.lock().expect("pool");
        let e = pool.pop();
        self.metrics.pooled.store(pool.len(), Ordering::Relaxed);
        e
    }

    fn pool_drain(&self) -> Vec<Arc<Envelope>> {
        let mut pool = self.pool.lock().expect("pool");
        self.metrics.pooled.store(0, Ordering::Relaxed);
        pool.drain(..).collect()
    }
}

pub(crate) struct Func {
    index: usize,
    pub(crate) f: Function,
    engine: crate::Engine,
    admission: Admission,
    warm: tokio::sync::Mutex<Option<Arc<Envelope>>>,
    pool: Mutex<Vec<Arc<Envelope>>>,
    filling: AtomicUsize,
    last_used: Mutex<Instant>,
    pub(crate) metrics: FunctionMetrics,
    /// The function's own port (`listen`), bound at start.
    port: std::sync::OnceLock<std::net::TcpListener>,
    /// Its warm envelope is being drained to scale to zero.
    draining: AtomicBool,
    /// Connections on their way to its warm envelope: the worker counts
    /// them in flight only once it has them.
    handing: AtomicUsize,
}

impl Func {
    /// Nothing in flight or being handed over, and nothing since its
    /// `idle` time.
    fn idle(&self) -> bool {
        self.metrics.in_flight.load(Ordering::Acquire) == 0
            && self.handing.load(Ordering::Acquire) == 0
            && self.last_used.lock().expect("last used").elapsed() >= self.f.idle
    }

    /// Whether its worker serves connections itself ([`crate::direct`]):
    /// the server's port hands it those whose request is the function's.
    fn serves_connections(&self) -> bool {
        self.engine == crate::Engine::Wasm && !self.f.strict()
    }
}

/// A connection being handed to a function's envelope, counted while it
/// lives.
struct Handing<'a>(&'a Func);

impl<'a> Handing<'a> {
    fn of(func: &'a Func) -> Handing<'a> {
        func.handing.fetch_add(1, Ordering::AcqRel);
        Handing(func)
    }
}

impl Drop for Handing<'_> {
    fn drop(&mut self) {
        self.0.handing.fetch_sub(1, Ordering::AcqRel);
    }
}

impl crate::outbound::Caller for Func {
    fn function(&self) -> &Function {
        &self.f
    }

    fn count_outbound(&self, outcome: &'static str) {
        self.metrics.outbound(outcome);
    }
}

pub struct Server {
    funcs: Vec<Arc<Func>>,
    keeper: Arc<Keeper>,
    prefix: String,
    seq: AtomicU64,
    invocations: AtomicU64,
    local: Mutex<SocketAddr>,
    /// Connections of the port the server serves itself, a request at a
    /// time; stopped at shutdown, after which connections are closed.
    serving: Serving,
    /// Requests workers forward; taken at shutdown.
    forwarded: Mutex<Option<hyper_util::server::graceful::GracefulShutdown>>,
}

/// What became of one invocation.
enum Outcome {
    Finished {
        done: Option<Done>,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
    TimedOut,
    Unreachable(String),
}

impl Server {
    pub fn new(functions: Vec<Function>, engines: &[crate::Engine], keeper: Keeper) -> Arc<Server> {
        let funcs = functions
            .into_iter()
            .enumerate()
            .map(|(index, f)| {
                Arc::new(Func {
                    index,
                    engine: engines[index],
                    admission: Admission::new(f.concurrency, f.queue),
                    warm: tokio::sync::Mutex::new(None),
                    pool: Mutex::new(Vec::new()),
                    filling: AtomicUsize::new(0),
                    last_used: Mutex::new(Instant::now()),
                    metrics: FunctionMetrics::default(),
                    port: std::sync::OnceLock::new(),
                    draining: AtomicBool::new(false),
                    handing: AtomicUsize::new(0),
                    f,
                })
            })
            .collect();
        Arc::new(Server {
            funcs,
            keeper: Arc::new(keeper),
            prefix: format!("serve{}", std::process::id()),
            seq: AtomicU64::new(0),
            invocations: AtomicU64::new(0),
            local: Mutex::new(SocketAddr::from(([127, 0, 0, 1], 0))),
            serving: Serving::default(),
            forwarded: Mutex::new(Some(hyper_util::server::graceful::GracefulShutdown::new())),
        })
    }

    async fn make_envelope(self: &Arc<Self>, func: &Arc<Func>) -> Result<Arc<Envelope>> {
        let (ours, theirs) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .context("socketpair")?;
        let id = format!(
            "{}-{}-{}",
            self.prefix,
            func.f.name,
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        let keeper = self.keeper.clone();
        let (index, for_keeper) = (func.index, id.clone());
        tokio::task::spawn_blocking(move || keeper.create(&for_keeper, index, &theirs))
            .await
            .expect("keeper call")?;
        nix::fcntl::fcntl(
            &ours,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .context("nonblocking control socket")?;
        // SAFETY: the AsyncFd owns the socket; nothing else closes it.
        let control = unsafe { AsyncFd::register(ours) }.context("register control socket")?;
        let envelope = Arc::new(Envelope {
            id,
            control,
            pending: Mutex::new(HashMap::new()),
            dead: AtomicBool::new(false),
            drained: AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
        });
        tokio::spawn(envelope.clone().read_reports(func.clone(), self.clone()));
        func.metrics.envelopes.fetch_add(1, Ordering::Relaxed);
        Ok(envelope)
    }

    /// Delete an envelope in the background.
    fn retire(self: &Arc<Self>, func: &Arc<Func>, envelope: Arc<Envelope>) {
        let keeper = self.keeper.clone();
        let func = func.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = keeper.delete(&envelope.id) {
                log_line(
                    serde_json::json!({"msg": "delete envelope", "envelope": envelope.id, "error": format!("{e:#}")}),
                );
            }
            func.metrics.envelopes.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// The function's warm envelope, made first if there is none (and
    /// given the function's port if it has one; `for_port`: a connection
    /// waits there, its first request is the cold one).
    async fn shared_envelope(
        self: &Arc<Self>,
        func: &Arc<Func>,
        for_port: bool,
    ) -> Result<(Arc<Envelope>, bool)> {
        let mut warm = func.warm.lock().await;
        if let Some(e) = warm.as_ref().filter(|e| e.alive()) {
            return Ok((e.clone(), false));
        }
        if let Some(dead) = warm.take() {
            self.retire(func, dead);
        }
        let started = Instant::now();
        let e = self.make_envelope(func).await?;
        if func.port.get().is_some() {
            if let Err(err) = self.hand_port(func, &e, for_port).await {
                self.retire(func, e);
                return Err(err);
            }
        }
        func.metrics.cold_start(started.elapsed());
        *func.last_used.lock().expect("last used") = Instant::now();
        *warm = Some(e.clone());
        Ok((e, true))
    }

    /// An envelope of its own for one invocation: from the pool when one is
    /// ready (and the pool refilled behind it), else made now.
    async fn strict_envelope(self: &Arc<Self>, func: &Arc<Func>) -> Result<(Arc<Envelope>, bool)> {
        let pooled = loop {
            let e = func.pool_pop();
            match e {
                Some(e) if !e.alive() => self.retire(func, e),
                other => break other,
            }
        };
        self.refill(func);
        if let Some(e) = pooled {
            return Ok((e, false));
        }
        let started = Instant::now();
        let e = self.make_envelope(func).await?;
        func.metrics.cold_start(started.elapsed());
        Ok((e, true))
    }

    fn refill(self: &Arc<Self>, func: &Arc<Func>) {
        let want = func.f.pool;
        let have = func.pool.lock().expect("pool").len() + func.filling.load(Ordering::Acquire);
        for _ in have..want {
            func.filling.fetch_add(1, Ordering::AcqRel);
            let (server, func) = (self.clone(), func.clone());
            tokio::spawn(async move {
                match server.make_envelope(&func).await {
                    Ok(e) => func.pool_push(e),
                    Err(e) => log_line(
                        serde_json::json!({"msg": "pool refill", "function": func.f.name, "error": format!("{e:#}")}),
                    ),
                }
                func.filling.fetch_sub(1, Ordering::AcqRel);
            });
        }
    }

    /// Make each function's first envelopes: a function that cannot run
    /// fails start-up, not its first request.
    pub async fn warm_up(self: &Arc<Self>) -> Result<()> {
        for func in &self.funcs {
            let e = self.make_envelope(func).await?;
            if func.f.strict() {
                if func.f.pool > 0 {
                    func.pool_push(e);
                    self.refill(func);
                } else {
                    self.retire(func, e);
                }
            } else {
                if func.port.get().is_some() {
                    self.hand_port(func, &e, false).await?;
                }
                *func.warm.lock().await = Some(e);
            }
            *func.last_used.lock().expect("last used") = Instant::now();
        }
        Ok(())
    }

    /// Bind each function's own port: a port in use fails start-up.
    fn bind_ports(&self) -> Result<()> {
        for func in &self.funcs {
            let Some(addr) = func.f.listen else { continue };
            let port = std::net::TcpListener::bind(addr)
                .with_context(|| format!("function {}: listen = \"{addr}\"", func.f.name))?;
            port.set_nonblocking(true).context("nonblocking listener")?;
            log_line(serde_json::json!({
                "msg": "function listening",
                "function": func.f.name,
                "address": format!("http://{}", port.local_addr()?),
            }));
            let _ = func.port.set(port);
        }
        Ok(())
    }

    async fn hand_port(&self, func: &Func, e: &Envelope, cold: bool) -> Result<()> {
        let port = func.port.get().expect("a function with a port");
        let msg = ToWorker::Listen {
            traced: crate::trace::enabled(),
            cold,
        };
        e.send(&msg, &[port.as_raw_fd()])
            .await
            .with_context(|| format!("hand envelope {} the function's port", e.id))
    }

    /// A function's own port: its envelope serves it while it lives and
    /// is not idle; without one, the server waits for a connection, makes
    /// an envelope and hands it the port.
    async fn port_loop(self: Arc<Self>, func: Arc<Func>) {
        let tick = (func.f.idle / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
        loop {
            let current = func.warm.lock().await.clone();
            match current {
                Some(e) if e.alive() => {
                    if !func.idle() {
                        tokio::select! {
                            _ = e.changed.notified() => {}
                            _ = tokio::time::sleep(tick) => {}
                        }
                        continue;
                    }
                    self.drain_warm(&func).await;
                }
                Some(_) => {
                    if let Some(dead) = func.warm.lock().await.take() {
                        log_line(
                            serde_json::json!({"msg": "envelope ended", "function": func.f.name, "envelope": dead.id}),
                        );
                        self.retire(&func, dead);
                    }
                }
                None => {
                    if let Err(e) = self.wait_for_connection(&func).await {
                        log_line(
                            serde_json::json!({"msg": "function port", "function": func.f.name, "error": format!("{e:#}")}),
                        );
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    if let Err(e) = self.shared_envelope(&func, true).await {
                        // The waiting client learns it; the next one
                        // brings the next attempt.
                        func.metrics.error("envelope");
                        log_line(
                            serde_json::json!({"msg": "making an envelope", "function": func.f.name, "error": format!("{e:#}")}),
                        );
                        self.refuse_waiting(&func);
                    }
                }
            }
        }
    }

    /// Until a connection waits on the function's port.
    async fn wait_for_connection(&self, func: &Func) -> Result<()> {
        let port = func.port.get().expect("a function with a port");
        // A registration of its own each time: readiness seen while a
        // worker had the port says nothing of now.
        let dup = OwnedFd::from(port.try_clone()?);
        // SAFETY: the AsyncFd owns the duplicate; nothing else closes it.
        let watch = unsafe { AsyncFd::register_with_interest(dup, Interest::READABLE) }?;
        let _ = watch.readable().await?;
        Ok(())
    }

    /// Answer the connections waiting on a port no envelope can serve.
    fn refuse_waiting(&self, func: &Func) {
        let port = func.port.get().expect("a function with a port");
        while let Ok((mut conn, _)) = port.accept() {
            let body = format!("function {} could not be started\n", func.f.name);
            let reply = format!(
                "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.set_nonblocking(true);
            let _ = std::io::Write::write_all(&mut conn, reply.as_bytes());
        }
    }

    /// Take every port and connection back from the workers, letting
    /// in-flight requests end.
    async fn drain_workers(&self) {
        let mut draining = Vec::new();
        for func in self.funcs.iter().filter(|f| f.serves_connections()) {
            if let Some(e) = func.warm.lock().await.clone() {
                let _ = e.send(&ToWorker::Drain, &[]).await;
                draining.push(e);
            }
        }
        for e in draining {
            e.drained().await;
        }
    }

    /// Scale a function that serves connections to zero: its worker
    /// finishes what it has and gives its port and connections back
    /// first. Requests routed meanwhile wait for the next envelope.
    async fn drain_warm(self: &Arc<Self>, func: &Arc<Func>) {
        let mut warm = func.warm.lock().await;
        // Idle still: the envelope may be new, made for a request routed
        // while this waited for the lock.
        if !func.idle() {
            return;
        }
        if let Some(e) = warm.take() {
            if e.alive() {
                let _ = e.send(&ToWorker::Drain, &[]).await;
                e.drained().await;
            }
            self.retire(func, e);
        }
    }

    /// Remove the envelopes of functions idle for their `idle` time.
    fn scale_to_zero(self: &Arc<Self>, func: &Arc<Func>) {
        // A port's envelope is drained by its own loop.
        if func.port.get().is_some() {
            return;
        }
        if !func.idle() {
            return;
        }
        if func.serves_connections() {
            let warm = func.warm.try_lock().map(|w| w.is_some());
            if warm.unwrap_or(true) && !func.draining.swap(true, Ordering::AcqRel) {
                let (server, func) = (self.clone(), func.clone());
                tokio::spawn(async move {
                    server.drain_warm(&func).await;
                    func.draining.store(false, Ordering::Release);
                });
            }
        } else if let Ok(mut warm) = func.warm.try_lock() {
            if func.metrics.in_flight.load(Ordering::Acquire) == 0 {
                if let Some(e) = warm.take() {
                    self.retire(func, e);
                }
            }
        }
        if func.filling.load(Ordering::Acquire) == 0 {
            let drained = func.pool_drain();
            for e in drained {
                self.retire(func, e);
            }
        }
    }

    async fn idle_loop(self: Arc<Self>) {
        let tick = self
            .funcs
            .iter()
            .map(|f| f.f.idle / 4)
            .min()
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(20), Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            for func in &self.funcs {
                self.scale_to_zero(func);
            }
        }
    }

    /// Every envelope, removed; then the keeper, which removes what is left.
    pub async fn teardown(self: &Arc<Self>) {
        for func in &self.funcs {
            if let Some(e) = func.warm.lock().await.take() {
                self.retire(func, e);
            }
            let drained = func.pool_drain();
            for e in drained {
                self.retire(func, e);
            }
        }
        let keeper = self.keeper.clone();
        let _ = tokio::task::spawn_blocking(move || keeper.shutdown()).await;
    }

    /// A connection of the server's port, between two requests: the next
    /// request's function serves it when its worker serves connections
    /// (handed over: no hop), else the server serves that one request and
    /// routes the next.
    async fn connection(
        self: Arc<Self>,
        mut stream: tokio::net::TcpStream,
        local: SocketAddr,
        remote: SocketAddr,
        mut read: Vec<u8>,
    ) {
        loop {
            if self.serving.stopping() {
                return;
            }
            let func = match next_request(&mut stream, &mut read).await {
                Next::Closed => return,
                Next::Path(path) => self
                    .route(&path)
                    .filter(|f| f.serves_connections())
                    .cloned(),
                Next::Unreadable => None,
            };
            if let Some(func) = func {
                match self.hand(&func, stream, local, remote, read).await {
                    Ok(()) => return,
                    // An envelope that cannot be made or reached: the
                    // server answers (502, counted and logged as on
                    // every path).
                    Err((s, r)) => (stream, read) = (s, r),
                }
            }
            match self.serve_one(stream, remote, read).await {
                Some((s, r)) => (stream, read) = (s, r),
                None => return,
            }
        }
    }

    /// Hand a connection to the function's warm envelope (made now if
    /// there is none); the connection back if it cannot be.
    async fn hand(
        self: &Arc<Self>,
        func: &Arc<Func>,
        stream: tokio::net::TcpStream,
        local: SocketAddr,
        remote: SocketAddr,
        read: Vec<u8>,
    ) -> Result<(), (tokio::net::TcpStream, Vec<u8>)> {
        let asked = SystemTime::now();
        // Not idle until the worker has it: with `idle = "0s"` a scale to
        // zero would otherwise drain an envelope made for this very
        // connection before it is sent, and the request would make
        // another (a third of cold requests did).
        let _handing = Handing::of(func);
        let Ok((envelope, cold)) = self.shared_envelope(func, false).await else {
            return Err((stream, read));
        };
        let msg = ToWorker::Connection {
            traced: crate::trace::enabled(),
            cold: cold.then(|| (epoch_ns(asked), epoch_ns(SystemTime::now()))),
            local,
            remote,
            read,
        };
        match envelope.send(&msg, &[stream.as_raw_fd()]).await {
            Ok(()) => Ok(()),
            Err(_) => {
                let ToWorker::Connection { read, .. } = msg else {
                    unreachable!("the message built above")
                };
                Err((stream, read))
            }
        }
    }

    /// Serve the next request on a connection here; the connection after
    /// it, to be routed again.
    async fn serve_one(
        self: &Arc<Self>,
        stream: tokio::net::TcpStream,
        remote: SocketAddr,
        read: Vec<u8>,
    ) -> Option<(tokio::net::TcpStream, Vec<u8>)> {
        self.serving.begin();
        let server = self.clone();
        let handle = move |req| {
            let server = server.clone();
            async move { (server.handle(req, remote).await, true) }
        };
        let back = serve_until_given_back(stream, read, handle, self.serving.stopped()).await;
        self.serving.end();
        back.filter(|_| !self.serving.stopping())
    }

    /// Serve a stream here to its end (or until shutdown).
    fn serve_here<I>(self: &Arc<Self>, io: I, local: SocketAddr, remote: SocketAddr)
    where
        I: AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let forwarded = self.forwarded.lock().expect("forwarded");
        let Some(graceful) = forwarded.as_ref() else {
            return;
        };
        let server = self.clone();
        invocation::serve_connection(io, local, remote, graceful, move |req, _local, remote| {
            let server = server.clone();
            async move { server.handle(req, remote).await }
        });
    }

    /// A request a worker met on a connection of the server's port that is
    /// not its function's: answered here as on the port.
    fn answer_forwarded(self: &Arc<Self>, stream: OwnedFd, local: SocketAddr, remote: SocketAddr) {
        let stream = std::os::unix::net::UnixStream::from(stream);
        if let Ok(stream) = stream
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(stream))
        {
            self.serve_here(stream, local, remote);
        }
    }

    /// A connection a worker gave back: routed again (closed once the
    /// server is shutting down).
    fn take_back(
        self: &Arc<Self>,
        socket: OwnedFd,
        local: SocketAddr,
        remote: SocketAddr,
        read: Vec<u8>,
    ) {
        if self.serving.stopping() {
            return;
        }
        let stream = std::net::TcpStream::from(socket);
        if let Ok(stream) = stream
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(stream))
        {
            tokio::spawn(self.clone().connection(stream, local, remote, read));
        }
    }

    fn route(&self, path: &str) -> Option<&Arc<Func>> {
        self.funcs
            .iter()
            .filter(|f| invocation::routed(&f.f.route, path))
            .max_by_key(|f| f.f.route.len())
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        remote: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        if path == METRICS_ROUTE {
            let body = metrics::render(self.funcs.iter().map(|f| (f.f.name.as_str(), &f.metrics)));
            return Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(body)))
                .expect("response");
        }
        let Some(func) = self.route(&path).cloned() else {
            return text(StatusCode::NOT_FOUND, "no function at this path\n");
        };
        let started = Instant::now();
        let method = req.method().to_string();
        let span = crate::trace::invocation(&func.f.name, &method, &path, req.headers());
        let record = Record {
            traceparent: span.as_ref().map(|s| s.traceparent()),
            ..Record::default()
        };
        let (response, record) = self.invoke(&func, req, remote, record).await;
        let took = started.elapsed();
        func.metrics.response(response.status().as_u16(), took);
        log_line(invocation_line(&Invocation {
            func: &func,
            method: &method,
            path: &path,
            status: response.status().as_u16(),
            took,
            cold: record.cold,
            envelope: record.envelope.as_deref(),
            error: record.error.as_deref(),
            stderr: &String::from_utf8_lossy(&record.stderr),
        }));
        if let Some(span) = span {
            for (name, from, to) in &record.phases {
                span.phase(name, *from, *to);
            }
            span.end(
                Some(response.status().as_u16()),
                span_attributes(record.cold, record.envelope.as_deref()),
                record.error.as_deref(),
                None,
            );
        }
        response
    }

    async fn invoke(
        self: &Arc<Self>,
        func: &Arc<Func>,
        req: Request<Incoming>,
        remote: SocketAddr,
        mut record: Record,
    ) -> (Response<Full<Bytes>>, Record) {
        let f = &func.f;
        let too_large = |record: &mut Record| {
            func.metrics.error("too_large");
            record.error = Some(format!("request body over max_body ({} bytes)", f.max_body));
            too_large_response(f.max_body)
        };
        let (parts, body) = read_body(req, f.max_body).await;
        let body = match body {
            Body::Read(bytes) => bytes,
            Body::TooLarge => return (too_large(&mut record), record),
            Body::Broken(e) => {
                record.error = Some(format!("reading the request body: {e}"));
                return (text(StatusCode::BAD_REQUEST, "bad request body\n"), record);
            }
        };

        // Admission: a slot now, or a place in the bounded queue.
        let queued = SystemTime::now();
        let Some(_permit) = func.admission.enter().await else {
            func.metrics.error("overload");
            record.error = Some(func.admission.busy());
            return (busy_response(), record);
        };
        record.phases.push(("queue", queued, SystemTime::now()));
        func.metrics.in_flight.fetch_add(1, Ordering::AcqRel);
        let result = self
            .run_invocation(func, &parts, body, remote, &mut record)
            .await;
        *func.last_used.lock().expect("last used") = Instant::now();
        func.metrics.in_flight.fetch_sub(1, Ordering::AcqRel);
        if f.idle.is_zero() && !f.strict() {
            self.scale_to_zero(func);
        }
        (result, record)
    }

    async fn run_invocation(
        self: &Arc<Self>,
        func: &Arc<Func>,
        parts: &hyper::http::request::Parts,
        body: Bytes,
        remote: SocketAddr,
        record: &mut Record,
    ) -> Response<Full<Bytes>> {
        let f = &func.f;
        let asked = SystemTime::now();
        let acquired = if f.strict() {
            self.strict_envelope(func).await
        } else {
            self.shared_envelope(func, false).await
        };
        let envelope = match acquired {
            Ok((e, cold)) => {
                record.cold = cold;
                e
            }
            Err(e) => {
                func.metrics.error("envelope");
                record.error = Some(format!("making an envelope: {e:#}"));
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!("function {} could not be started\n", f.name),
                );
            }
        };
        record.phases.push(("envelope", asked, SystemTime::now()));
        record.envelope = Some(envelope.id.clone());
        let (env, head) = invocation::input(&Input {
            interface: f.interface,
            route: &f.route,
            parts,
            traceparent: record.traceparent.as_deref(),
            body_len: body.len(),
            local: *self.local.lock().expect("local"),
            remote,
        });
        let running = SystemTime::now();
        let outcome = self.call(&envelope, env, head, body, f.timeout).await;
        record.phases.push(("run", running, SystemTime::now()));
        if f.strict() {
            self.retire(func, envelope);
        }
        match outcome {
            Outcome::TimedOut => {
                func.metrics.error("timeout");
                record.error = Some(format!(
                    "timed out after {:?}; invocation killed",
                    f.timeout
                ));
                timed_out(&f.name)
            }
            Outcome::Unreachable(why) => {
                func.metrics.error("envelope");
                record.error = Some(why);
                failed(&f.name)
            }
            Outcome::Finished {
                done,
                stdout,
                stderr,
            } => {
                record.stderr = stderr;
                let at = |ns: u64| SystemTime::UNIX_EPOCH + Duration::from_nanos(ns);
                for (name, from, to) in done.iter().flat_map(|d| &d.phases) {
                    let name = match name.as_str() {
                        "instance" => "instance",
                        "guest" => "guest",
                        _ => continue,
                    };
                    record.phases.push((name, at(*from), at(*to)));
                }
                self.respond(func, done, stdout, record)
            }
        }
    }

    fn respond(
        &self,
        func: &Func,
        done: Option<Done>,
        stdout: Vec<u8>,
        record: &mut Record,
    ) -> Response<Full<Bytes>> {
        let ending = match done {
            None => Ending {
                exit: None,
                signal: None,
                error: Some("the envelope ended during the invocation".into()),
            },
            Some(d) => Ending {
                exit: d.exit,
                signal: d.signal,
                error: d.error,
            },
        };
        invocation::response(ending, &stdout).unwrap_or_else(|why| {
            func.metrics.error("crash");
            record.error = Some(why);
            failed(&func.f.name)
        })
    }

    async fn call(
        &self,
        envelope: &Envelope,
        env: Vec<(String, String)>,
        head: Option<Head>,
        body: Bytes,
        timeout: Duration,
    ) -> Outcome {
        let id = self.invocations.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        envelope.pending.lock().expect("pending").insert(id, tx);
        let prepared = (|| -> std::io::Result<_> {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
            let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            ours.set_nonblocking(true)?;
            nix::fcntl::fcntl(
                &err_r,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )?;
            Ok((ours, theirs, err_r, err_w))
        })();
        let (ours, theirs, err_r, err_w) = match prepared {
            Ok(x) => x,
            Err(e) => {
                envelope.pending.lock().expect("pending").remove(&id);
                return Outcome::Unreachable(format!("invocation sockets: {e}"));
            }
        };
        let msg = ToWorker::Invoke { id, env, head };
        if let Err(e) = envelope
            .send(&msg, &[theirs.as_raw_fd(), err_w.as_raw_fd()])
            .await
        {
            envelope.pending.lock().expect("pending").remove(&id);
            return Outcome::Unreachable(format!("envelope {} unreachable: {e}", envelope.id));
        }
        drop((theirs, err_w));
        let work = async move {
            let stream = tokio::net::UnixStream::from_std(ours)?;
            let mut err = tokio::net::unix::pipe::Receiver::from_owned_fd(err_r)?;
            let (mut rd, mut wr) = stream.into_split();
            let write = async {
                // A function may answer without reading its input.
                let _ = wr.write_all(&body).await;
                let _ = wr.shutdown().await;
            };
            let (_, stdout, stderr) = tokio::join!(
                write,
                read_capped(&mut rd, MAX_RESPONSE + 1),
                read_capped(&mut err, MAX_STDERR_LOGGED)
            );
            let done = rx.await.ok();
            std::io::Result::Ok(Outcome::Finished {
                done,
                stdout: stdout?,
                stderr: stderr?,
            })
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                let _ = envelope.send(&ToWorker::Cancel { id }, &[]).await;
                envelope.pending.lock().expect("pending").remove(&id);
                Outcome::Unreachable(format!("invocation I/O: {e}"))
            }
            Err(_) => {
                let _ = envelope.send(&ToWorker::Cancel { id }, &[]).await;
                envelope.pending.lock().expect("pending").remove(&id);
                Outcome::TimedOut
            }
        }
    }
}

/// Read to the end, keeping at most `cap` bytes (the rest is drained, so
/// the writer never blocks on a full pipe).
async fn read_capped(r: &mut (impl AsyncRead + Unpin), cap: usize) -> std::io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(kept);
        }
        let room = cap.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
}

/// One invocation, for its log line.
struct Invocation<'a> {
    func: &'a Func,
    method: &'a str,
    path: &'a str,
    status: u16,
    took: Duration,
    cold: bool,
    envelope: Option<&'a str>,
    error: Option<&'a str>,
    stderr: &'a str,
}

fn invocation_line(i: &Invocation) -> serde_json::Value {
    let mut line = serde_json::json!({
        "function": i.func.f.name,
        "method": i.method,
        "path": i.path,
        "status": i.status,
        "duration_ms": (i.took.as_secs_f64() * 1e6).round() / 1e3,
        "executor": i.func.engine.name(),
        "cold": i.cold,
    });
    if let Some(envelope) = i.envelope {
        line["envelope"] = envelope.into();
    }
    if let Some(error) = i.error {
        line["error"] = error.into();
    }
    if !i.stderr.is_empty() {
        line["stderr"] = i.stderr.into();
    }
    line
}

fn span_attributes(cold: bool, envelope: Option<&str>) -> Vec<opentelemetry::KeyValue> {
    let mut attributes = vec![opentelemetry::KeyValue::new("faas.coldstart", cold)];
    if let Some(e) = envelope {
        attributes.push(opentelemetry::KeyValue::new(
            "amphi.envelope",
            e.to_string(),
        ));
    }
    attributes
}

/// Log, count and trace a request a worker served on its function's
/// port; its log line is returned, to be written with its batch's.
fn served(func: &Func, envelope: &str, s: Served) -> serde_json::Value {
    let at = |ns: u64| SystemTime::UNIX_EPOCH + Duration::from_nanos(ns);
    let took = Duration::from_nanos(s.ended.saturating_sub(s.started));
    func.metrics.response(s.status, took);
    let kind = match s.error_kind.as_deref() {
        Some("overload") => Some("overload"),
        Some("too_large") => Some("too_large"),
        Some("timeout") => Some("timeout"),
        Some("crash") => Some("crash"),
        _ => None,
    };
    if let Some(kind) = kind {
        func.metrics.error(kind);
    }
    func.metrics.in_flight.store(s.in_flight, Ordering::Relaxed);
    *func.last_used.lock().expect("last used") = Instant::now();
    let line = invocation_line(&Invocation {
        func,
        method: &s.method,
        path: &s.path,
        status: s.status,
        took,
        cold: s.cold,
        envelope: Some(envelope),
        error: s.error.as_deref(),
        stderr: &s.stderr,
    });
    let Some((client, ours)) = &s.trace else {
        return line;
    };
    let span = crate::trace::served_invocation(
        &func.f.name,
        &s.method,
        &s.path,
        client.as_deref(),
        ours,
        at(s.started),
    );
    if let Some(span) = span {
        for (name, from, to) in &s.phases {
            let name = match name.as_str() {
                "envelope" => "envelope",
                "queue" => "queue",
                "run" => "run",
                "instance" => "instance",
                "guest" => "guest",
                _ => continue,
            };
            span.phase(name, at(*from), at(*to));
        }
        span.end(
            Some(s.status),
            span_attributes(s.cold, Some(envelope)),
            s.error.as_deref(),
            Some(at(s.ended)),
        );
    }
    line
}

#[derive(Default)]
struct Record {
    cold: bool,
    envelope: Option<String>,
    error: Option<String>,
    stderr: Vec<u8>,
    /// The invocation span's, for the function (when tracing).
    traceparent: Option<String>,
    /// Phases of the invocation with their times, for its trace.
    phases: Vec<(&'static str, SystemTime, SystemTime)>,
}

/// Serve until SIGTERM or SIGINT, then finish in-flight requests (up to the
/// shutdown timeout) and remove every envelope.
pub async fn serve(server: Arc<Server>, settings: Settings) -> Result<()> {
    if let Err(e) = server.bind_ports() {
        server.teardown().await;
        return Err(e);
    }
    if let Err(e) = server.warm_up().await {
        server.teardown().await;
        return Err(e);
    }
    let listener = match tokio::net::TcpListener::bind(settings.listen).await {
        Ok(l) => l,
        Err(e) => {
            server.teardown().await;
            return Err(e).with_context(|| format!("--listen {}", settings.listen));
        }
    };
    let local = listener.local_addr()?;
    *server.local.lock().expect("local") = local;
    log_line(serde_json::json!({
        "msg": "listening",
        "address": format!("http://{local}"),
        "functions": server.funcs.iter().map(|f| serde_json::json!({"name": f.f.name, "route": f.f.route, "executor": f.engine.name()})).collect::<Vec<_>>(),
    }));
    let idle = tokio::spawn(server.clone().idle_loop());
    let ports: Vec<_> = server
        .funcs
        .iter()
        .filter(|f| f.port.get().is_some())
        .map(|f| tokio::spawn(server.clone().port_loop(f.clone())))
        .collect();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of fds or memory: let in-flight requests end.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        tokio::spawn(server.clone().connection(stream, local, remote, Vec::new()));
    }
    drop(listener);
    log_line(
        serde_json::json!({"msg": "shutting down", "deadline_s": settings.shutdown_timeout.as_secs_f64()}),
    );
    for port in &ports {
        port.abort();
    }
    server.serving.stop();
    let finished = tokio::time::timeout(settings.shutdown_timeout, async {
        // Workers draining may still forward a request that is not theirs.
        let workers = async {
            server.drain_workers().await;
            let forwarded = server.forwarded.lock().expect("forwarded").take();
            if let Some(graceful) = forwarded {
                graceful.shutdown().await;
            }
        };
        tokio::join!(server.serving.all_ended(), workers)
    })
    .await;
    if finished.is_err() {
        log_line(serde_json::json!({"msg": "shutdown deadline passed; ending in-flight requests"}));
    }
    idle.abort();
    server.teardown().await;
    log_line(serde_json::json!({"msg": "stopped"}));
    Ok(())
}
