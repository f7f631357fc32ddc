//! The envelope keepers: single-threaded children of `amphi serve`, forked
//! before the server starts its threads, that create and delete function
//! envelopes through the runtime API. The runtime clones the container's
//! init from the calling process, which must be single-threaded; a
//! keeper is, and the multi-threaded server only talks to them. Several
//! keepers make envelopes side by side (the runtime locks per container),
//! so the strict tier is not one keeper's pace.
//!
//! A keeper is the parent of the envelope inits it made and reaps them;
//! an envelope is deleted by the keeper that made it. When the server goes
//! away (even by SIGKILL), its sockets end and each keeper deletes every
//! envelope it made before it exits.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use amphi_runtime::{CreateOptions, Runtime};
use anyhow::{anyhow, bail, Context, Result};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use serde::{Deserialize, Serialize};

use crate::handler::{FunctionHandler, Pending, Plan};
use crate::protocol::{recv, send, MAX_MESSAGE};

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Request {
    /// Make and start envelope `id` of function `function`; fd: the
    /// worker's end of its control socket.
    Create {
        id: String,
        function: usize,
    },
    Delete {
        id: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
enum Reply {
    Ok,
    Failed { error: String },
}

pub struct Keeper {
    procs: Vec<KeeperProcess>,
    next: AtomicUsize,
    /// Which keeper made each live envelope.
    maker: Mutex<HashMap<String, usize>>,
}

struct KeeperProcess {
    sock: Mutex<Option<OwnedFd>>,
    pid: nix::unistd::Pid,
}

impl Keeper {
    /// Fork `count` keepers. Call before any other thread exists.
    pub fn spawn(
        count: usize,
        runtime_root: PathBuf,
        wasm_cache: amphi_wasm::CacheDir,
        plans: Vec<Plan>,
    ) -> Result<Keeper> {
        let mut keeper = Keeper {
            procs: Vec::with_capacity(count),
            next: AtomicUsize::new(0),
            maker: Mutex::new(HashMap::new()),
        };
        for _ in 0..count {
            match spawn_one(&mut keeper.procs, &runtime_root, &wasm_cache, &plans) {
                Ok(p) => keeper.procs.push(p),
                Err(e) => {
                    keeper.shutdown();
                    return Err(e);
                }
            }
        }
        Ok(keeper)
    }

    /// Ask a keeper that is free now (or, if none is, the next in turn).
    fn call(
        &self,
        keeper: Option<usize>,
        req: &Request,
        fds: &[std::os::fd::RawFd],
    ) -> Result<usize> {
        let n = self.procs.len();
        let (index, sock) = match keeper {
            Some(i) => (i, self.procs[i].sock.lock().expect("keeper socket")),
            None => {
                let first = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (first + k) % n)
                    .find_map(|i| self.procs[i].sock.try_lock().ok().map(|s| (i, s)))
                    .unwrap_or_else(|| {
                        let i = first % n;
                        (i, self.procs[i].sock.lock().expect("keeper socket"))
                    })
            }
        };
        let sock = sock
            .as_ref()
            .ok_or_else(|| anyhow!("envelope keeper shut down"))?;
        send(sock.as_fd(), req, fds).context("envelope keeper is gone")?;
        let mut buf = vec![0u8; 64 << 10];
        let (len, _) = recv(sock.as_fd(), &mut buf)
            .context("envelope keeper")?
            .ok_or_else(|| anyhow!("envelope keeper is gone"))?;
        match serde_json::from_slice(&buf[..len])? {
            Reply::Ok => Ok(index),
            Reply::Failed { error } => bail!("{error}"),
        }
    }

    /// Make and start an envelope; `control` is the worker's end of its socket.
    pub fn create(&self, id: &str, function: usize, control: &OwnedFd) -> Result<()> {
        let index = self.call(
            None,
            &Request::Create {
                id: id.into(),
                function,
            },
            &[control.as_raw_fd()],
        )?;
        self.maker.lock().expect("makers").insert(id.into(), index);
        Ok(())
    }

    pub fn delete(&self, id: &str) -> Result<()> {
        let index = self
            .maker
            .lock()
            .expect("makers")
            .remove(id)
            .ok_or_else(|| anyhow!("no envelope {id}"))?;
        self.call(Some(index), &Request::Delete { id: id.into() }, &[])
            .map(drop)
    }

    /// Close the sockets (each keeper deletes what it has left) and wait
    /// for the keepers.
    pub fn shutdown(&self) {
        for p in &self.procs {
            drop(p.sock.lock().expect("keeper socket").take());
        }
        for p in &self.procs {
            let _ = waitpid(p.pid, None);
        }
    }
}

fn spawn_one(
    earlier: &mut Vec<KeeperProcess>,
    runtime_root: &std::path::Path,
    wasm_cache: &amphi_wasm::CacheDir,
    plans: &[Plan],
) -> Result<KeeperProcess> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("socketpair for an envelope keeper")?;
    // SAFETY: the caller guarantees a single-threaded process.
    match unsafe { nix::unistd::fork() }.context("fork an envelope keeper")? {
        nix::unistd::ForkResult::Parent { child } => Ok(KeeperProcess {
            sock: Mutex::new(Some(ours)),
            pid: child,
        }),
        nix::unistd::ForkResult::Child => {
            drop(ours);
            // The server's ends of the earlier keepers' sockets: holding
            // them would keep those keepers from seeing the server go.
            earlier.clear();
            let code = match serve(theirs, runtime_root, wasm_cache.clone(), plans.to_vec()) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("amphi serve: envelope keeper: {e:#}");
                    1
                }
            };
            // SAFETY: leave without the parent's destructors.
            unsafe { libc::_exit(code) }
        }
    }
}

fn serve(
    sock: OwnedFd,
    root: &std::path::Path,
    wasm_cache: amphi_wasm::CacheDir,
    plans: Vec<Plan>,
) -> Result<()> {
    let _ = nix::sys::prctl::set_name(c"amphi-keeper");
    let plans = std::rc::Rc::new(plans);
    let pending = Pending::default();
    let handler = FunctionHandler::new(plans.clone(), wasm_cache, pending.clone());
    let runtime = Runtime::new(root, vec![Box::new(handler)])?;
    let mut live: BTreeSet<String> = BTreeSet::new();
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let mut fds = [nix::poll::PollFd::new(
            sock.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(500u16));
        reap();
        if !fds[0].any().unwrap_or(false) {
            continue;
        }
        let (n, mut received) = match recv(sock.as_fd(), &mut buf) {
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => break,
        };
        let reply = match serde_json::from_slice::<Request>(&buf[..n]) {
            Ok(Request::Create { id, function }) => {
                let control = received.pop();
                match (plans.get(function), control) {
                    (Some(plan), Some(control)) => {
                        live.insert(id.clone());
                        pending.borrow_mut().insert(id.clone(), control);
                        let r = create(&runtime, plan, &id);
                        pending.borrow_mut().remove(&id);
                        if r.is_err() {
                            live.remove(&id);
                        }
                        r
                    }
                    _ => Err(anyhow!("bad create request")),
                }
            }
            Ok(Request::Delete { id }) => {
                live.remove(&id);
                runtime.delete(&id, true).map_err(Into::into)
            }
            Err(e) => Err(anyhow!("bad request: {e}")),
        };
        let reply = match reply {
            Ok(()) => Reply::Ok,
            Err(e) => Reply::Failed {
                error: format!("{e:#}"),
            },
        };
        if send(sock.as_fd(), &reply, &[]).is_err() {
            break;
        }
        reap();
    }
    for id in &live {
        if let Err(e) = runtime.delete(id, true) {
            eprintln!("amphi serve: delete envelope {id}: {e}");
        }
    }
    reap();
    Ok(())
}

fn create(runtime: &Runtime, plan: &Plan, id: &str) -> Result<()> {
    let options = CreateOptions {
        id,
        bundle: &plan.bundle,
        pid_file: None,
        console_socket: None,
        no_pivot: false,
        preserve_fds: 0,
        no_new_keyring: false,
        restore: None,
    };
    runtime
        .create(&options)
        .with_context(|| format!("function {}", plan.name))?;
    if let Err(e) = runtime.start(id) {
        let _ = runtime.delete(id, true);
        return Err(e).with_context(|| format!("function {}", plan.name));
    }
    Ok(())
}

/// Reap every exited child: envelope inits and hook processes are done
/// with by the time the keeper looks.
fn reap() {
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}
