//! The function worker: what runs as a function envelope's process. It is
//! the container's init with everything set up but the workload's last
//! step; for each invocation it forks a child that takes a private /tmp,
//! becomes the function's process (user, capabilities, no_new_privs,
//! seccomp) and runs the workload once: a fresh process for native code, a
//! fresh instance from the pre-linked module for wasm. Invocations thus
//! share no mutable state, and a crash or a kill ends one invocation only.
//!
//! The host talks to the worker over a SOCK_SEQPACKET socket: one message
//! per invocation carrying its stream socket (body in, CGI response out)
//! and a pipe for its stderr; one message back with how it ended
//! ([`crate::protocol`]). A
//! function allowed outgoing requests sends one more per request: a
//! stream socket on which the host proxies it
//! ([`amphi_wasm::outbound`]).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use crate::in_process::InProcess;
use crate::protocol::{recv, send, Done, FromWorker, ToWorker, MAX_MESSAGE};
use amphi_core::executor::{Executor, PrepareContext};
use amphi_core::seccomp::Program;
use amphi_core::{Error, Result};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::Process;

/// What the worker runs per invocation.
pub enum Workload {
    /// A native program, run once per invocation in a forked child as a
    /// CGI program.
    Native(amphi_native::Native),
    /// A wasm module or component: a fresh instance per invocation, in the
    /// worker's own process.
    Wasm(Box<amphi_wasm::function::Function>),
}

pub struct Worker {
    pub workload: Workload,
    /// The host's end of the control socket, inherited by the init.
    pub control: OwnedFd,
    /// The function's process, as its spec says: what an invocation becomes.
    pub process: Process,
    pub seccomp: Option<Program>,
    /// Bytes of the tmpfs each invocation gets at /tmp (0: none).
    pub tmp: u64,
    /// Whether the function may make outgoing requests (through the host).
    pub outbound: bool,
    /// The function has a port of its own, served here.
    pub direct: Option<std::sync::Arc<crate::direct::Plan>>,
}

impl Executor for Worker {
    fn inherited_fds(&self) -> Vec<RawFd> {
        let mut fds = match &self.workload {
            Workload::Native(e) => e.inherited_fds(),
            Workload::Wasm(f) => f.inherited_fds(),
        };
        fds.push(self.control.as_raw_fd());
        fds
    }

    fn keeps_trap_handlers(&self) -> bool {
        match &self.workload {
            Workload::Native(e) => e.keeps_trap_handlers(),
            Workload::Wasm(f) => f.keeps_trap_handlers(),
        }
    }

    fn prepare(&mut self, ctx: &PrepareContext) -> Result<()> {
        match &mut self.workload {
            Workload::Native(e) => e.prepare(ctx),
            Workload::Wasm(f) => f.prepare(ctx),
        }
    }

    fn exec(self: Box<Self>, _worker_process: &Process) -> Error {
        let served = match self.workload {
            Workload::Wasm(_) => self.serve_in_process(),
            Workload::Native(_) => self.serve(),
        };
        match served {
            Ok(()) => unsafe { libc::_exit(0) },
            Err(e) => e,
        }
    }
}

fn sys(op: &str, e: nix::Error) -> Error {
    Error::sys(op.to_string(), e)
}

impl Worker {
    /// Wasm: the worker becomes the function's process once (it needs no
    /// privilege for what follows) and runs each invocation as a task: a
    /// fresh instance with in-memory stdio and a scratch directory of its
    /// own as /tmp. A cancelled task is dropped, which ends its guest at the
    /// next epoch tick or host call.
    fn serve_in_process(self) -> Result<()> {
        // Before any thread exists: credentials and the filter are per thread.
        amphi_core::init::assume_process(&self.process, self.seccomp.as_ref())?;
        let Workload::Wasm(function) = self.workload else {
            unreachable!("in-process serving is for wasm")
        };
        let mut function = *function;
        amphi_wasm::function::start_epoch_ticker();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::Init(format!("tokio runtime: {e}")))?;
        nix::fcntl::fcntl(
            &self.control,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| sys("nonblocking control socket", e))?;
        let control = {
            let _in_runtime = runtime.enter();
            // SAFETY: the AsyncFd owns the socket; nothing else closes it.
            std::sync::Arc::new(
                unsafe { tokio::io::unix::AsyncFd::register(self.control) }
                    .map_err(|e| Error::Init(format!("register control socket: {e}")))?,
            )
        };
        if self.outbound {
            function = function.with_outbound(dialer(control.clone()));
        }
        let process_env: Vec<(String, String)> = self
            .process
            .env()
            .iter()
            .flatten()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // A kept instance has a /tmp of its own, not one per invocation.
        let scratch = (self.tmp > 0 && !function.reuses()).then(|| "/tmp".into());
        let shared = std::sync::Arc::new(InProcess {
            function,
            args: self.process.args().clone().unwrap_or_default(),
            env: process_env,
            scratch,
            cancels: std::sync::Mutex::new(HashMap::new()),
        });
        let direct = self
            .direct
            .map(|plan| crate::direct::Direct::new(plan, shared.clone(), control.clone()));
        runtime.block_on(async move {
            let mut buf = vec![0u8; MAX_MESSAGE];
            loop {
                let received = control
                    .async_io(tokio::io::Interest::READABLE, |fd| {
                        recv(fd.as_fd(), &mut buf).map_err(std::io::Error::from)
                    })
                    .await;
                let (n, fds) = match received {
                    Ok(Some(m)) => m,
                    // The host is gone: so is every invocation.
                    Ok(None) | Err(_) => return Ok(()),
                };
                match serde_json::from_slice::<ToWorker>(&buf[..n]) {
                    Ok(ToWorker::Invoke { id, env, head }) => {
                        let cancel = std::sync::Arc::new(tokio::sync::Notify::new());
                        shared
                            .cancels
                            .lock()
                            .expect("cancels")
                            .insert(id, cancel.clone());
                        let (shared, control) = (shared.clone(), control.clone());
                        let direct = direct.clone();
                        tokio::spawn(async move {
                            // The function's concurrency holds across its
                            // port and the server's.
                            let _slot = match &direct {
                                Some(d) => Some(d.slot().await),
                                None => None,
                            };
                            let done = shared.invoke(id, env, head, fds, cancel).await;
                            shared.cancels.lock().expect("cancels").remove(&id);
                            let done = FromWorker::Done(done);
                            let _ = control
                                .async_io(tokio::io::Interest::WRITABLE, |fd| {
                                    send(fd.as_fd(), &done, &[]).map_err(std::io::Error::from)
                                })
                                .await;
                        });
                    }
                    Ok(ToWorker::Cancel { id }) => {
                        if let Some(c) = shared.cancels.lock().expect("cancels").get(&id) {
                            c.notify_one();
                        }
                    }
                    Ok(ToWorker::Listen { traced, cold }) => {
                        match (&direct, fds.into_iter().next()) {
                            (Some(direct), Some(listener)) => direct.listen(listener, traced, cold),
                            _ => eprintln!("amphi: function worker: a port without its socket, or for a function without one"),
                        }
                    }
                    Ok(ToWorker::Connection {
                        traced,
                        cold,
                        local,
                        remote,
                        read,
                    }) => match (&direct, fds.into_iter().next()) {
                        (Some(direct), Some(socket)) => direct.connection(
                            socket,
                            crate::direct::Handed {
                                traced,
                                cold,
                                local,
                                remote,
                                read,
                            },
                        ),
                        _ => eprintln!("amphi: function worker: a connection without its socket, or for a function that takes none"),
                    },
                    Ok(ToWorker::Drain) => match &direct {
                        Some(direct) => direct.drain(),
                        None => eprintln!("amphi: function worker: drain without connections"),
                    },
                    Err(e) => eprintln!("amphi: function worker: bad message: {e}"),
                }
            }
        })
    }

    fn serve(mut self) -> Result<()> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.thread_block().map_err(|e| sys("block SIGCHLD", e))?;
        let sigchld = SignalFd::with_flags(
            &mask,
            nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
        )
        .map_err(|e| sys("signalfd", e))?;
        // Invocation id by the pid of its process (group leader).
        let mut running: HashMap<i32, u64> = HashMap::new();
        let proxy = self.outbound.then(outbound_proxy).transpose()?;
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let mut fds = vec![
                nix::poll::PollFd::new(self.control.as_fd(), nix::poll::PollFlags::POLLIN),
                nix::poll::PollFd::new(sigchld.as_fd(), nix::poll::PollFlags::POLLIN),
            ];
            if let Some((listener, _)) = &proxy {
                fds.push(nix::poll::PollFd::new(
                    listener.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                ));
            }
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(sys("poll", e)),
                Ok(_) => {}
            }
            let control_ready = fds[0].any().unwrap_or(false);
            let child_ready = fds[1].any().unwrap_or(false);
            let proxy_ready = fds.get(2).is_some_and(|f| f.any().unwrap_or(false));
            drop(fds);
            if let (true, Some((listener, _))) = (proxy_ready, &proxy) {
                // The host proxies each connection itself: the worker only
                // passes it on.
                while let Ok((conn, _)) = listener.accept() {
                    let _ = send(
                        self.control.as_fd(),
                        &FromWorker::Outbound,
                        &[conn.as_raw_fd()],
                    );
                }
            }
            if child_ready {
                while sigchld.read_signal().ok().flatten().is_some() {}
                self.reap(&mut running);
            }
            if !control_ready {
                continue;
            }
            let (n, received) = match recv(self.control.as_fd(), &mut buf) {
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
                // The host is gone: so is every invocation.
                Ok(None) | Err(_) => {
                    for pid in running.keys() {
                        let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
                    }
                    return Ok(());
                }
                Ok(Some(m)) => m,
            };
            match serde_json::from_slice::<ToWorker>(&buf[..n]) {
                Ok(ToWorker::Invoke { id, env, .. }) => {
                    let mut received = received.into_iter();
                    let (Some(io), Some(err)) = (received.next(), received.next()) else {
                        self.report(Done {
                            id,
                            exit: None,
                            signal: None,
                            error: Some("invocation without its sockets".into()),
                            phases: Vec::new(),
                        });
                        continue;
                    };
                    let mut env = env;
                    if let Some((_, url)) = &proxy {
                        // Lower case only: programs ignore HTTP_PROXY in a
                        // CGI request, where a client could have set it.
                        env.push(("http_proxy".into(), url.clone()));
                        env.push(("https_proxy".into(), url.clone()));
                    }
                    match self.spawn(io, err, env) {
                        Ok(pid) => {
                            running.insert(pid, id);
                        }
                        Err(e) => self.report(Done {
                            id,
                            exit: None,
                            signal: None,
                            error: Some(format!("fork: {e}")),
                            phases: Vec::new(),
                        }),
                    }
                }
                Ok(ToWorker::Cancel { id }) => {
                    if let Some((pid, _)) = running.iter().find(|(_, i)| **i == id) {
                        let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
                    }
                }
                Ok(ToWorker::Listen { .. } | ToWorker::Connection { .. } | ToWorker::Drain) => {
                    eprintln!("amphi: function worker: a native function serves no connection")
                }
                Err(e) => eprintln!("amphi: function worker: bad message: {e}"),
            }
        }
    }

    fn report(&self, done: Done) {
        let _ = send(self.control.as_fd(), &FromWorker::Done(done), &[]);
    }

    /// Collect every exited child (the worker may be its pid namespace's
    /// init, so orphans of invocations come here too) and report ours.
    fn reap(&self, running: &mut HashMap<i32, u64>) {
        loop {
            let (pid, exit, signal) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Some(code), None),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, None, Some(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            if let Some(id) = running.remove(&pid.as_raw()) {
                // The invocation is over when its process is: what it left
                // running in its group goes with it.
                let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
                self.report(Done {
                    id,
                    exit,
                    signal,
                    error: None,
                    phases: Vec::new(),
                });
            }
        }
    }

    fn spawn(&mut self, io: OwnedFd, err: OwnedFd, env: Vec<(String, String)>) -> nix::Result<i32> {
        // SAFETY: the worker is single-threaded; the child only calls into
        // code that is fine after fork in a single-threaded process.
        match unsafe { nix::unistd::fork() }? {
            nix::unistd::ForkResult::Parent { child } => Ok(child.as_raw()),
            nix::unistd::ForkResult::Child => {
                let code = match self.invocation(io, err, env) {
                    Ok(code) => code,
                    Err(e) => {
                        eprintln!("amphi: invocation: {e}");
                        127
                    }
                };
                unsafe { libc::_exit(code) }
            }
        }
    }

    /// In the invocation's own process: isolate, take on the function's
    /// process, run. Returns only for an http function or on failure.
    fn invocation(&mut self, io: OwnedFd, err: OwnedFd, env: Vec<(String, String)>) -> Result<i32> {
        // A group of its own, so that a timeout kills all it started.
        nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)).map_err(|e| sys("setpgid", e))?;
        SigSet::all()
            .thread_unblock()
            .map_err(|e| sys("unblock signals", e))?;
        // Under memory pressure in the envelope, an invocation goes before
        // the worker that serves the others.
        if let Ok(p) = amphi_core::procfs::handle() {
            let _ = p.write_self("oom_score_adj", "1000");
        }
        if self.tmp > 0 {
            private_tmp(self.tmp)?;
        }
        for (fd, target) in [
            (io.as_raw_fd(), 0),
            (io.as_raw_fd(), 1),
            (err.as_raw_fd(), 2),
        ] {
            // SAFETY: plain dup2 onto the stdio numbers.
            if unsafe { libc::dup2(fd, target) } < 0 {
                return Err(sys("dup2", nix::Error::last()));
            }
        }
        drop((io, err));
        // Nothing of the worker's reaches the invocation: not the control
        // socket, not another invocation's sockets.
        // SAFETY: closes fds above stdio; none is used after this.
        unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
        let mut process = self.process.clone();
        let mut all_env = process.env().clone().unwrap_or_default();
        all_env.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        process.set_env(Some(all_env));
        amphi_core::init::assume_process(&process, self.seccomp.as_ref())?;
        match &self.workload {
            Workload::Native(native) => Err(native.execve(&process)),
            Workload::Wasm(_) => Err(Error::Init("wasm invocations run in process".into())),
        }
    }
}

/// The outgoing proxy native invocations see (`http_proxy`): a listener on
/// the envelope's loopback whose connections the worker hands the host.
fn outbound_proxy() -> Result<(std::net::TcpListener, String)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| Error::Init(format!("outgoing proxy listener: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Init(format!("outgoing proxy listener: {e}")))?;
    Ok((listener, format!("http://{addr}")))
}

/// Outgoing requests leave through the host: a stream socket pair per
/// request, one end sent to the host over the control socket.
fn dialer(
    control: std::sync::Arc<tokio::io::unix::AsyncFd<OwnedFd>>,
) -> amphi_wasm::outbound::Dialer {
    std::sync::Arc::new(move || {
        let control = control.clone();
        Box::pin(async move {
            let (ours, theirs) = tokio::net::UnixStream::pair()?;
            let theirs = theirs.into_std()?;
            control
                .async_io(tokio::io::Interest::WRITABLE, |fd| {
                    send(fd.as_fd(), &FromWorker::Outbound, &[theirs.as_raw_fd()])
                        .map_err(std::io::Error::from)
                })
                .await?;
            Ok(ours)
        })
    })
}

/// A mount namespace of the invocation's own with a fresh tmpfs on /tmp:
/// what one invocation writes, no other sees.
fn private_tmp(size: u64) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| sys("unshare a mount namespace for /tmp", e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| sys("make / a slave mount", e))?;
    mount(
        Some("tmpfs"),
        "/tmp",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("size={size},mode=1777").as_str()),
    )
    .map_err(|e| sys("mount the invocation's tmpfs on /tmp", e))
}
