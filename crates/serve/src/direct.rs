//! A function's own port (`listen`), served by the worker in its envelope:
//! the server binds the socket and hands it over (SCM_RIGHTS), so the
//! envelope's network namespace stays empty while its worker accepts
//! connections made outside it. A request then costs no hop: no socket
//! pair, pipe or control message before the guest runs. The worker
//! applies the function's limits (route, body size, concurrency and
//! queue, timeout) as the server does ([`crate::invocation`]) and reports
//! each request afterwards ([`Served`]) for the server's log line, metrics
//! and trace. The server takes the port back to scale to zero
//! ([`ToWorker::Drain`](crate::protocol::ToWorker::Drain)) and gives it to a
//! new envelope when a connection waits.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
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

use crate::in_process::{phases, InProcess};
use crate::invocation::{
    self, busy_response, failed, text, timed_out, too_large_response, Admission, Ending, Input,
    MAX_STDERR_LOGGED,
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
    traced: AtomicBool,
    drain: tokio::sync::Notify,
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
            traced: AtomicBool::new(false),
            drain: tokio::sync::Notify::new(),
            reports: std::sync::Mutex::new(Vec::new()),
            reported: tokio::sync::Notify::new(),
        })
    }

    /// A slot for an invocation the server routed (the server queued it
    /// already: it waits here without a queue limit of its own).
    pub async fn slot(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.admission.slot().await
    }

    pub fn drain(&self) {
        self.drain.notify_one();
    }

    async fn report(&self, msg: &FromWorker) {
        let _ = self
            .control
            .async_io(Interest::WRITABLE, |fd| {
                send(fd.as_fd(), msg, &[]).map_err(std::io::Error::from)
            })
            .await;
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

    /// Accept and serve until drained, then finish the open connections
    /// and say so.
    pub async fn serve(self: Arc<Self>, listener: OwnedFd, traced: bool, cold: bool) {
        self.traced.store(traced, Ordering::Relaxed);
        self.cold.store(cold, Ordering::Relaxed);
        let listener = std::net::TcpListener::from(listener);
        let listener = match listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
        {
            Ok(l) => l,
            Err(e) => {
                eprintln!("amphi: function worker: the function's port: {e}");
                self.report(&FromWorker::Drained).await;
                return;
            }
        };
        let reporter = tokio::spawn(self.clone().reporter());
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let direct = self.clone();
        invocation::accept_until(
            &listener,
            self.drain.notified(),
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
        reporter.abort();
        self.send_reports().await;
        self.report(&FromWorker::Drained).await;
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
        let started = SystemTime::now();
        let mut served = Served {
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            started: epoch_ns(started),
            cold: self.cold.swap(false, Ordering::Relaxed),
            ..Served::default()
        };
        if self.traced.load(Ordering::Relaxed) {
            served.trace = Some(crate::trace::new_invocation_context(req.headers()));
        }
        let response = self.answer(req, local, remote, &mut served).await;
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
        let declared = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let too_large = format!("request body over max_body ({} bytes)", plan.max_body);
        if declared.is_some_and(|n| n > plan.max_body) {
            failure(served, "too_large", too_large);
            return too_large_response(plan.max_body);
        }
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, plan.max_body as usize).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                failure(served, "too_large", too_large);
                return too_large_response(plan.max_body);
            }
            Err(e) => {
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
