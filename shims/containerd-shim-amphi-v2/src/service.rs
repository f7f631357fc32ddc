//! The task service: containerd's task API over `amphi` commands. Each
//! container's init and exec'd processes are tracked by pid; their exits
//! come from the reaper and are published as TaskExit.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use containerd_shim::api;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::protos::types::task::{ProcessInfo, Status};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};
use log::{info, warn};

use crate::amphi::{Amphi, Stdio3};
use crate::io::{self, ConsoleSocket, Paths};
use crate::options::Options;
use crate::reaper::{Exit, REAPER};

struct Proc {
    pid: i32,
    status: Status,
    exit: Option<Exit>,
    paths: Paths,
    terminal: bool,
    master: Option<OwnedFd>,
    /// An exec'd process's spec (JSON), kept until it starts.
    spec: Vec<u8>,
}

impl Container {
    /// The init (no exec id) or an exec'd process.
    fn process(&self, exec_id: &str) -> TtrpcResult<&Proc> {
        if exec_id.is_empty() {
            Ok(&self.init)
        } else {
            self.execs.get(exec_id).ok_or_else(|| not_found(exec_id))
        }
    }
}

/// `amphi events` for a container's OOM kills, and the thread reading it.
struct OomMonitor {
    pid: i32,
    reader: std::thread::JoinHandle<()>,
    ready: std::sync::mpsc::Receiver<()>,
}

struct Container {
    bundle: PathBuf,
    amphi: Amphi,
    init: Proc,
    execs: HashMap<String, Proc>,
    rootfs_mounted: bool,
    monitor: Option<i32>,
    /// The OOM reader; it ends once `amphi events` saw the container stop.
    oom_reader: Option<std::thread::JoinHandle<()>>,
    /// Signalled once the OOM monitor has taken its baseline: `start`
    /// waits for it, so no OOM kill can come before the monitor counts
    /// (an instant one in a slow machine, or a systemd scope whose cgroup,
    /// with its counters, is gone as soon as the process died).
    oom_ready: Option<std::sync::mpsc::Receiver<()>>,
    /// In a pid namespace it does not own (the pod's, the host's): when its
    /// init exits, nothing else of it may stay behind, as with containerd's
    /// runc shim (`ShouldKillAllOnExit`).
    kill_all_on_exit: bool,
}

#[derive(Clone)]
pub struct Service {
    pub exit: Arc<ExitSignal>,
    /// containerd's ttrpc socket, where events go.
    pub events: Arc<str>,
    pub namespace: String,
    containers: Arc<Mutex<HashMap<String, Container>>>,
    /// Signalled whenever a process exits (with the containers' lock).
    exited: Arc<std::sync::Condvar>,
}

fn err(code: Code, msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

fn not_found(id: &str) -> ttrpc::Error {
    err(Code::NOT_FOUND, format!("container {id} not found"))
}

fn failed(e: impl ToString) -> ttrpc::Error {
    err(Code::UNKNOWN, e)
}

fn ts(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

impl Service {
    /// ttrpc's synchronous client polls its socket every 10 ms for as
    /// long as it is connected: a publisher kept for the shim's life woke
    /// each idle pod's shim 100 times a second, and 1,000 idle pods kept
    /// this 2-core machine's CPUs busy. So events go over a connection
    /// made for each (a handful per container), and the one the crate
    /// opened is closed at once.
    pub fn new(exit: Arc<ExitSignal>, publisher: RemotePublisher, namespace: String) -> Service {
        drop(publisher);
        Service {
            exit,
            events: std::env::var("TTRPC_ADDRESS").unwrap_or_default().into(),
            namespace,
            containers: Default::default(),
            exited: Default::default(),
        }
    }

    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let published = RemotePublisher::new(&*self.events).and_then(|p| {
            p.publish(
                ttrpc::context::Context::default(),
                topic,
                &self.namespace,
                event,
            )
        });
        if let Err(e) = published {
            warn!("publish {topic} to {}: {e}", self.events);
        }
    }

    /// Record the process's exit and tell containerd, once it happens.
    fn watch(&self, id: &str, exec_id: &str, pid: i32) {
        let svc = self.clone();
        let (id, exec_id) = (id.to_owned(), exec_id.to_owned());
        std::thread::spawn(move || {
            let exit = REAPER.wait(pid);
            if exec_id.is_empty() && exit.code == 128 + libc::SIGKILL as u32 {
                // An OOM kill (a SIGKILL) is told before the exit it caused.
                let reader = svc
                    .containers
                    .lock()
                    .unwrap()
                    .get_mut(&id)
                    .and_then(|c| c.oom_reader.take());
                if let Some(r) = reader {
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
                    while !r.is_finished() && std::time::Instant::now() < deadline {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                }
            }
            let kill_rest = {
                let cs = svc.containers.lock().unwrap();
                cs.get(&id)
                    .filter(|c| exec_id.is_empty() && c.kill_all_on_exit)
                    .map(|c| c.amphi.clone())
            };
            if let Some(amphi) = kill_rest {
                // Before the exit is told, as the runc shim does: the rest
                // goes at once, not at `delete`.
                if let Err(e) = amphi.run(&["kill", "--all", &id, "KILL"], Stdio3::default(), None)
                {
                    warn!("{id}: kill the container's remaining processes: {e}");
                }
            }
            {
                let mut cs = svc.containers.lock().unwrap();
                let Some(c) = cs.get_mut(&id) else { return };
                let p = if exec_id.is_empty() {
                    &mut c.init
                } else {
                    match c.execs.get_mut(&exec_id) {
                        Some(p) => p,
                        None => return,
                    }
                };
                p.status = Status::STOPPED;
                p.exit = Some(exit);
                svc.exited.notify_all();
            }
            svc.publish(
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: id.clone(),
                    id: if exec_id.is_empty() { id } else { exec_id },
                    pid: pid as u32,
                    exit_status: exit.code,
                    exited_at: MessageField::some(ts(exit.at)),
                    ..Default::default()
                }),
            );
        });
    }

    /// TaskOOM for every kernel OOM kill in the container, from `amphi events`.
    fn watch_oom(&self, id: &str, amphi: &Amphi) -> Option<OomMonitor> {
        let (pid, stdout) = amphi.spawn_monitor(&["events", "--interval", "1h", id])?;
        let svc = self.clone();
        let id = id.to_owned();
        let (ready, ready_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                // The first line is the baseline's stats.
                let _ = ready.send(());
                if line.contains("\"type\":\"oom\"") {
                    info!("{id}: OOM kill");
                    svc.publish(
                        topics::TASK_OOM_EVENT_TOPIC,
                        Box::new(TaskOOM {
                            container_id: id.clone(),
                            ..Default::default()
                        }),
                    );
                }
            }
        });
        Some(OomMonitor {
            pid,
            reader,
            ready: ready_rx,
        })
    }

    fn with<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Container) -> TtrpcResult<T>,
    ) -> TtrpcResult<T> {
        let mut cs = self.containers.lock().unwrap();
        let c = cs.get_mut(id).ok_or_else(|| not_found(id))?;
        f(c)
    }

    /// `amphi pause` / `resume`, then the status and the event.
    fn freeze(&self, id: &str, frozen: bool) -> TtrpcResult<api::Empty> {
        let amphi = self.amphi(id)?;
        let (command, status) = if frozen {
            ("pause", Status::PAUSED)
        } else {
            ("resume", Status::RUNNING)
        };
        amphi
            .run(&[command, id], Stdio3::default(), None)
            .map_err(failed)?;
        self.set_status(id, status)?;
        let container_id = id.to_owned();
        if frozen {
            self.publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                Box::new(TaskPaused {
                    container_id,
                    ..Default::default()
                }),
            );
        } else {
            self.publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                Box::new(TaskResumed {
                    container_id,
                    ..Default::default()
                }),
            );
        }
        Ok(api::Empty::default())
    }

    fn set_status(&self, id: &str, status: Status) -> TtrpcResult<()> {
        self.with(id, |c| {
            if c.init.exit.is_none() {
                c.init.status = status;
            }
            Ok(())
        })
    }

    /// The amphi handle of a container, without holding the lock while a
    /// command runs.
    fn amphi(&self, id: &str) -> TtrpcResult<Amphi> {
        self.with(id, |c| Ok(c.amphi.clone()))
    }
}

/// Mount containerd's rootfs mounts (a snapshot) on BUNDLE/rootfs.
fn mount_rootfs(
    mounts: &[containerd_shim::protos::types::mount::Mount],
    target: &Path,
) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(|e| format!("mkdir {}: {e}", target.display()))?;
    for m in mounts {
        let mut flags: libc::c_ulong = 0;
        let mut data = Vec::new();
        for o in &m.options {
            match o.as_str() {
                "ro" => flags |= libc::MS_RDONLY,
                "rw" => flags &= !libc::MS_RDONLY,
                "bind" => flags |= libc::MS_BIND,
                "rbind" => flags |= libc::MS_BIND | libc::MS_REC,
                "nosuid" => flags |= libc::MS_NOSUID,
                "nodev" => flags |= libc::MS_NODEV,
                "noexec" => flags |= libc::MS_NOEXEC,
                "relatime" => flags |= libc::MS_RELATIME,
                "noatime" => flags |= libc::MS_NOATIME,
                other => data.push(other.to_owned()),
            }
        }
        let c =
            |s: &str| std::ffi::CString::new(s).map_err(|_| format!("NUL in mount field {s:?}"));
        let (source, fstype, target_c, data_c) = (
            c(&m.source)?,
            c(&m.type_)?,
            c(target.to_str().ok_or("rootfs path")?)?,
            c(&data.join(","))?,
        );
        // SAFETY: valid C strings for the duration of the call.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target_c.as_ptr(),
                fstype.as_ptr(),
                flags,
                data_c.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(format!(
                "mount {} ({}) on {}: {}",
                m.source,
                m.type_,
                target.display(),
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

fn unmount_rootfs(bundle: &Path) {
    let target = bundle.join("rootfs");
    if let Ok(c) = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()) {
        // SAFETY: a valid C string.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

fn paths(stdin: &str, stdout: &str, stderr: &str) -> Paths {
    Paths {
        stdin: stdin.into(),
        stdout: stdout.into(),
        stderr: stderr.into(),
    }
}

/// Give a new process its stdio; with a terminal, the console socket goes
/// on the command line and the pty is pumped once it arrives.
fn prepare_io(p: &Paths, terminal: bool) -> TtrpcResult<(Stdio3, Option<ConsoleSocket>)> {
    if terminal {
        let sock = ConsoleSocket::new().map_err(failed)?;
        Ok((Stdio3::default(), Some(sock)))
    } else {
        Ok((io::plain(p).map_err(failed)?, None))
    }
}

fn finish_io(sock: Option<ConsoleSocket>, p: &Paths) -> TtrpcResult<Option<OwnedFd>> {
    let Some(sock) = sock else { return Ok(None) };
    let master = sock
        .master()
        .ok_or_else(|| failed("no pty master arrived on the console socket"))?;
    io::pump_terminal(&master, p).map_err(failed)?;
    Ok(Some(master))
}

fn read_pid(file: &Path) -> TtrpcResult<i32> {
    std::fs::read_to_string(file)
        .map_err(|e| failed(format!("read {}: {e}", file.display())))?
        .trim()
        .parse()
        .map_err(|e| failed(format!("pid file {}: {e}", file.display())))
}

impl containerd_shim::Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        info!("create {}", req.id);
        let bundle = PathBuf::from(&req.bundle);
        let options = Options::from_request(req.options.as_ref())
            .map_err(|e| err(Code::INVALID_ARGUMENT, e))?;
        options.save(&bundle).map_err(failed)?;
        let amphi = Amphi::new(&self.namespace, &bundle, &options);
        std::fs::create_dir_all(&amphi.root).map_err(failed)?;
        let rootfs_mounted = !req.rootfs.is_empty();
        if rootfs_mounted {
            mount_rootfs(&req.rootfs, &bundle.join("rootfs")).map_err(failed)?;
        }
        let p = paths(&req.stdin, &req.stdout, &req.stderr);
        let result = (|| {
            let (stdio, sock) = prepare_io(&p, req.terminal)?;
            let pid_file = bundle.join("init.pid");
            let mut args = vec!["create", "--bundle", &req.bundle, "--pid-file"];
            if options.no_new_keyring {
                args.insert(1, "--no-new-keyring");
            }
            let pid_arg = pid_file.to_string_lossy().into_owned();
            args.push(&pid_arg);
            let sock_arg = sock.as_ref().map(|s| s.path.to_string_lossy().into_owned());
            if let Some(s) = &sock_arg {
                args.extend(["--console-socket", s]);
            }
            args.push(&req.id);
            let created = amphi.run(&args, stdio, None);
            let master = finish_io(sock, &p);
            created.map_err(failed)?;
            Ok((read_pid(&pid_file)?, master?))
        })();
        let (pid, master) = match result {
            Ok(x) => x,
            Err(e) => {
                if rootfs_mounted {
                    unmount_rootfs(&bundle);
                }
                return Err(e);
            }
        };
        let oom = self.watch_oom(&req.id, &amphi);
        let monitor = oom.as_ref().map(|m| m.pid);
        let (oom_reader, oom_ready) = oom.map(|m| (m.reader, m.ready)).unzip();
        self.containers.lock().unwrap().insert(
            req.id.clone(),
            Container {
                bundle: bundle.clone(),
                amphi,
                init: Proc {
                    pid,
                    status: Status::CREATED,
                    exit: None,
                    paths: p,
                    terminal: req.terminal,
                    master,
                    spec: Vec::new(),
                },
                execs: HashMap::new(),
                rootfs_mounted,
                monitor,
                oom_reader,
                oom_ready,
                kill_all_on_exit: shares_a_pid_namespace(&bundle),
            },
        );
        self.watch(&req.id, "", pid);
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid: pid as u32,
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let amphi = self.amphi(&req.id)?;
        if req.exec_id.is_empty() {
            let oom_ready = self.with(&req.id, |c| Ok(c.oom_ready.take()))?;
            if let Some(ready) = oom_ready {
                // Bounded: a monitor that never answers costs OOM reports,
                // not the container.
                let _ = ready.recv_timeout(std::time::Duration::from_secs(10));
            }
            amphi
                .run(&["start", &req.id], Stdio3::default(), None)
                .map_err(failed)?;
            let pid = self.with(&req.id, |c| {
                if c.init.exit.is_none() {
                    c.init.status = Status::RUNNING;
                }
                Ok(c.init.pid)
            })?;
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid: pid as u32,
                    ..Default::default()
                }),
            );
            return Ok(api::StartResponse {
                pid: pid as u32,
                ..Default::default()
            });
        }
        let (spec, p, terminal, bundle) = self.with(&req.id, |c| {
            let e = c
                .execs
                .get(&req.exec_id)
                .ok_or_else(|| not_found(&req.exec_id))?;
            Ok((
                e.spec.clone(),
                paths(&e.paths.stdin, &e.paths.stdout, &e.paths.stderr),
                e.terminal,
                c.bundle.clone(),
            ))
        })?;
        let process_file = bundle.join(format!("exec-{}.json", req.exec_id));
        let pid_file = bundle.join(format!("exec-{}.pid", req.exec_id));
        std::fs::write(&process_file, &spec).map_err(failed)?;
        let (stdio, sock) = prepare_io(&p, terminal)?;
        let (pf, pidf) = (
            process_file.to_string_lossy().into_owned(),
            pid_file.to_string_lossy().into_owned(),
        );
        let mut args = vec!["exec", "--detach", "--process", &pf, "--pid-file", &pidf];
        let sock_arg = sock.as_ref().map(|s| s.path.to_string_lossy().into_owned());
        if let Some(s) = &sock_arg {
            args.extend(["--console-socket", s]);
        }
        args.push(&req.id);
        let ran = amphi.run(&args, stdio, None);
        let master = finish_io(sock, &p);
        let _ = std::fs::remove_file(&process_file);
        ran.map_err(failed)?;
        let master = master?;
        let pid = read_pid(&pid_file)?;
        let _ = std::fs::remove_file(&pid_file);
        self.with(&req.id, |c| {
            if let Some(e) = c.execs.get_mut(&req.exec_id) {
                e.pid = pid;
                e.status = Status::RUNNING;
                e.master = master;
            }
            Ok(())
        })?;
        self.watch(&req.id, &req.exec_id, pid);
        self.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid: pid as u32,
                ..Default::default()
            }),
        );
        Ok(api::StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        self.with(&req.id, |c| {
            let p = c.process(&req.exec_id)?;
            Ok(api::StateResponse {
                id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                bundle: c.bundle.to_string_lossy().into_owned(),
                pid: p.pid.max(0) as u32,
                status: p.status.into(),
                stdin: p.paths.stdin.clone(),
                stdout: p.paths.stdout.clone(),
                stderr: p.paths.stderr.clone(),
                terminal: p.terminal,
                exit_status: p.exit.map_or(0, |e| e.code),
                exited_at: p.exit.map(|e| ts(e.at)).into(),
                ..Default::default()
            })
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        if req.exec_id.is_empty() {
            let amphi = self.amphi(&req.id)?;
            let sig = req.signal.to_string();
            let mut args = vec!["kill"];
            if req.all {
                args.push("--all");
            }
            args.extend([req.id.as_str(), sig.as_str()]);
            amphi
                .run(&args, Stdio3::default(), None)
                .map_err(|e| err(Code::NOT_FOUND, e))?;
        } else {
            let pid = self.with(&req.id, |c| {
                let e = c
                    .execs
                    .get(&req.exec_id)
                    .ok_or_else(|| not_found(&req.exec_id))?;
                Ok(if e.exit.is_none() { e.pid } else { 0 })
            })?;
            if pid <= 0 {
                return Err(err(Code::NOT_FOUND, "process already finished"));
            }
            // SAFETY: plain kill of a pid we reap (so not reused until we do).
            if unsafe { libc::kill(pid, req.signal as i32) } != 0 {
                return Err(failed(std::io::Error::last_os_error()));
            }
        }
        Ok(api::Empty::default())
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        if !req.exec_id.is_empty() {
            let p = self.with(&req.id, |c| {
                c.execs
                    .remove(&req.exec_id)
                    .ok_or_else(|| not_found(&req.exec_id))
            })?;
            REAPER.forget(p.pid);
            return Ok(api::DeleteResponse {
                pid: p.pid.max(0) as u32,
                exit_status: p.exit.map_or(0, |e| e.code),
                exited_at: p.exit.map(|e| ts(e.at)).into(),
                ..Default::default()
            });
        }
        let amphi = self.amphi(&req.id)?;
        amphi
            .run(&["delete", "--force", &req.id], Stdio3::default(), None)
            .map_err(failed)?;
        let c = self
            .containers
            .lock()
            .unwrap()
            .remove(&req.id)
            .ok_or_else(|| not_found(&req.id))?;
        if let Some(m) = c.monitor {
            // SAFETY: a monitor process we started.
            unsafe { libc::kill(m, libc::SIGKILL) };
        }
        if c.rootfs_mounted {
            unmount_rootfs(&c.bundle);
        }
        let exit = c.init.exit.or_else(|| REAPER.exited(c.init.pid));
        REAPER.forget(c.init.pid);
        let _ = std::fs::remove_file(&c.amphi.log);
        let (code, at) = exit.map_or((0, SystemTime::now()), |e| (e.code, e.at));
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid: c.init.pid as u32,
                exit_status: code,
                exited_at: MessageField::some(ts(at)),
                ..Default::default()
            }),
        );
        Ok(api::DeleteResponse {
            pid: c.init.pid as u32,
            exit_status: code,
            exited_at: MessageField::some(ts(at)),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let amphi = self.amphi(&req.id)?;
        let out = amphi
            .run(
                &["ps", "--format", "json", &req.id],
                Stdio3::default(),
                None,
            )
            .map_err(failed)?;
        let pids: Vec<u32> = serde_json::from_str(out.trim()).unwrap_or_default();
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.freeze(&req.id, true)
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.freeze(&req.id, false)
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        self.with(&req.id, |c| {
            if c.execs.contains_key(&req.exec_id) {
                return Err(err(
                    Code::ALREADY_EXISTS,
                    format!("exec {} exists", req.exec_id),
                ));
            }
            if c.init.exit.is_some() {
                return Err(err(Code::FAILED_PRECONDITION, "container is stopped"));
            }
            c.execs.insert(
                req.exec_id.clone(),
                Proc {
                    pid: 0,
                    status: Status::CREATED,
                    exit: None,
                    paths: paths(&req.stdin, &req.stdout, &req.stderr),
                    terminal: req.terminal,
                    master: None,
                    spec: req.spec.value.clone(),
                },
            );
            Ok(())
        })?;
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::default())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        self.with(&req.id, |c| {
            let p = c.process(&req.exec_id)?;
            if let Some(m) = &p.master {
                io::resize(m, req.width, req.height).map_err(failed)?;
            }
            Ok(api::Empty::default())
        })
    }

    fn close_io(&self, _ctx: &TtrpcContext, _req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        // stdin is pumped until the client closes its FIFO, which is what
        // CloseIO announces: the pump sees EOF and closes the process's end.
        Ok(api::Empty::default())
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let amphi = self.amphi(&req.id)?;
        amphi
            .run(
                &["update", "--resources", "-", &req.id],
                Stdio3::default(),
                Some(&req.resources.value),
            )
            .map_err(failed)?;
        Ok(api::Empty::default())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        // containerd may wait for an exec before starting it: wait for the
        // recorded exit, not for a pid.
        let mut cs = self.containers.lock().unwrap();
        loop {
            let c = cs.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            let p = c.process(&req.exec_id)?;
            if let Some(exit) = p.exit {
                return Ok(api::WaitResponse {
                    exit_status: exit.code,
                    exited_at: MessageField::some(ts(exit.at)),
                    ..Default::default()
                });
            }
            cs = self.exited.wait(cs).unwrap();
        }
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let amphi = self.amphi(&req.id)?;
        let out = amphi
            .run(&["events", "--stats", &req.id], Stdio3::default(), None)
            .map_err(failed)?;
        let v: serde_json::Value = serde_json::from_str(out.trim()).map_err(failed)?;
        let any = crate::metrics::any(&v["data"]).map_err(failed)?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.with(&req.id, |c| Ok(c.init.pid)).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: task_pid.max(0) as u32,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        // One shim may serve a whole pod: it leaves with its last container.
        let containers: Vec<String> = self.containers.lock().unwrap().keys().cloned().collect();
        if containers.is_empty() {
            self.exit.signal();
        } else {
            info!("shutdown: staying for {}", containers.join(" "));
        }
        Ok(api::Empty::default())
    }
}

/// Whether the bundle's container lives in a pid namespace it does not
/// own: none of its own in `linux.namespaces`, or one given by path.
fn shares_a_pid_namespace(bundle: &std::path::Path) -> bool {
    let Ok(bytes) = std::fs::read(bundle.join("config.json")) else {
        return false;
    };
    let Ok(spec) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return false;
    };
    let namespaces = spec["linux"]["namespaces"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    !namespaces
        .iter()
        .any(|ns| ns["type"] == "pid" && ns["path"].as_str().is_none_or(str::is_empty))
}
