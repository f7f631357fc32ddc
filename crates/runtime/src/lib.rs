//! amphi's runtime API: the container lifecycle (create, start, state, kill,
//! delete, run, list) that every frontend drives. Frontends translate their
//! protocol to these calls and hold no container logic of their own; each
//! passes the executor handlers it wants, in order, and the first that
//! takes a bundle runs it.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use amphi_core::cgroups;
use amphi_core::executor::{self, Executor, Handler};
use amphi_core::hooks;
use amphi_core::init::Mode;
use amphi_core::launch::{launch, Cgroup, LaunchConfig};
use amphi_core::spec::Bundle;
use amphi_core::state::{proc_stat, ContainerState, Locked, Status, Store};
use amphi_core::{paths, util, Error, Result};
use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::stat::Mode as FileMode;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{
    Capability, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResources, Process,
};

pub use amphi_core::state::Status as ContainerStatus;

pub struct CreateOptions<'a> {
    pub id: &'a str,
    pub bundle: &'a Path,
    pub pid_file: Option<&'a Path>,
    pub console_socket: Option<&'a Path>,
    pub no_pivot: bool,
    pub preserve_fds: i32,
    /// Keep the caller's session keyring instead of a fresh one (runc's
    /// `--no-new-keyring`).
    pub no_new_keyring: bool,
    /// Continue from the checkpoint image these options name (`amphi
    /// restore`).
    pub restore: Option<&'a executor::CheckpointOptions>,
}

pub struct ExecOptions<'a> {
    pub id: &'a str,
    pub process: Process,
    pub detach: bool,
    pub pid_file: Option<&'a Path>,
    pub console_socket: Option<&'a Path>,
    pub preserve_fds: i32,
}

/// What `exec ID ARGS...` may change of the container's own process.
#[derive(Default)]
pub struct ExecOverrides {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// uid and optional gid.
    pub user: Option<(u32, Option<u32>)>,
    pub caps: Vec<String>,
    pub no_new_privs: bool,
    pub tty: bool,
}

pub struct Runtime {
    store: Store,
    handlers: Vec<Box<dyn Handler>>,
    cgroups: cgroups::Driver,
    warn: Box<dyn Fn(&str)>,
}

/// What runs a new process, and where its terminal goes.
struct Chosen<'h> {
    handler: &'h dyn Handler,
    executor: Box<dyn Executor>,
    console_socket: Option<std::os::fd::OwnedFd>,
}

/// Undo a half-made container unless disarmed.
struct CreateGuard {
    locked: Option<Locked>,
    cgroup_created: Vec<PathBuf>,
    cgroup_paths: Vec<PathBuf>,
    systemd_unit: Option<String>,
}

impl Drop for CreateGuard {
    fn drop(&mut self) {
        if let Some(locked) = self.locked.take() {
            if let Some(unit) = &self.systemd_unit {
                let _ = cgroups::systemd::stop(unit);
            }
            cgroups::remove(&self.cgroup_created, &self.cgroup_paths);
            let _ = locked.remove();
        }
    }
}

impl Runtime {
    /// A runtime keeping state in `root`, running containers with the
    /// first of `handlers` that takes them.
    pub fn new(root: &Path, handlers: Vec<Box<dyn Handler>>) -> Result<Runtime> {
        Ok(Runtime {
            store: Store::open(root)?,
            handlers,
            cgroups: cgroups::Driver::Cgroupfs,
            warn: Box::new(|m| eprintln!("amphi: warning: {m}")),
        })
    }

    /// Who makes the containers' cgroups (`--systemd-cgroup`: systemd).
    pub fn cgroup_driver(mut self, driver: cgroups::Driver) -> Runtime {
        self.cgroups = driver;
        self
    }

    /// Where warnings go (what the spec asks for and this host cannot do,
    /// where the spec allows going on): stderr unless set.
    pub fn on_warning(mut self, f: impl Fn(&str) + 'static) -> Runtime {
        self.warn = Box::new(f);
        self
    }

    /// The handler that runs `spec` and the executor it builds for
    /// container `id`, and the connected console socket.
    fn executor_and_console(
        &self,
        id: &str,
        spec: &oci_spec::runtime::Spec,
        rootfs: &Path,
        console_socket: Option<&Path>,
        restore: Option<&executor::CheckpointOptions>,
    ) -> Result<Chosen<'_>> {
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let handler = executor::choose(&self.handlers, spec, rootfs)?;
        let executor = match restore {
            Some(image) => handler.restoring_executor(id, spec, &image.image_path)?,
            None => handler.executor(id, spec)?,
        };
        let console_socket = connect_console(terminal, console_socket)?;
        Ok(Chosen {
            handler,
            executor,
            console_socket,
        })
    }

    pub fn create(&self, o: &CreateOptions) -> Result<i32> {
        amphi_core::id::validate(o.id)?;
        util::trace::phase("create: load bundle");
        let bundle = Bundle::load(o.bundle)?;
        let spec = &bundle.spec;
        for w in &bundle.warnings {
            (self.warn)(w);
        }
        if let Some(image) = o.restore {
            let handler = executor::choose(&self.handlers, spec, &bundle.rootfs)?;
            if handler.restores_through_criu() {
                return self.restore_through_criu(o, &bundle, handler, image);
            }
        }
        let Chosen {
            handler,
            executor,
            console_socket,
        } = self.executor_and_console(o.id, spec, &bundle.rootfs, o.console_socket, o.restore)?;

        let locked = self.store.create(o.id)?;
        util::failpoint("create:dir");
        let mut guard = CreateGuard {
            locked: Some(locked),
            cgroup_created: Vec::new(),
            cgroup_paths: Vec::new(),
            systemd_unit: None,
        };
        let locked = guard.locked.as_ref().expect("set above");
        let fifo = locked.fifo();
        nix::unistd::mkfifo(&fifo, FileMode::from_bits_truncate(0o622))
            .map_err(|e| Error::sys(format!("mkfifo {}", fifo.display()), e))?;
        // mkfifo applies the umask; the init may run as any user.
        std::fs::set_permissions(&fifo, std::os::unix::fs::PermissionsExt::from_mode(0o622))
            .map_err(|e| Error::io("chmod", &fifo, e))?;

        let linux = spec.linux().as_ref();
        util::trace::phase("create: cgroup");
        let planned = cgroups::plan(o.id, linux, self.cgroups)?;
        let mut state = new_state(o, &bundle, handler, &planned);
        // Recorded before anything exists outside the state directory, so
        // that `delete --force` after a crash knows what to remove.
        locked.save(&state)?;
        util::failpoint("create:state");
        let cgroup = match planned.make() {
            Err(e) if rootless_without_cgroup(&e, linux) => {
                state.cgroup_paths.clear();
                state.cgroup_created.clear();
                locked.save(&state)?;
                None
            }
            Err(e) => return Err(e),
            Ok(()) => Some(planned),
        };
        guard.cgroup_created = state.cgroup_created.clone();
        guard.cgroup_paths = state.cgroup_paths.clone();
        guard.systemd_unit = state.systemd_unit.clone();
        util::failpoint("create:cgroup");

        let hooks = spec.hooks().as_ref();
        let mut runtime_hooks = |pid: i32| -> Result<()> {
            let mut s = state.clone();
            s.pid = pid;
            let json = serde_json::to_vec(&s.oci_state(Status::Creating)).expect("json");
            hooks::run_all(hooks.and_then(|h| h.prestart().as_ref()), "prestart", &json)?;
            hooks::run_all(
                hooks.and_then(|h| h.create_runtime().as_ref()),
                "createRuntime",
                &json,
            )
        };
        let pid = launch(
            &LaunchConfig {
                id: o.id,
                bundle: &bundle,
                state_dir: &locked.dir,
                cgroup: cgroup.as_ref().map_or(Cgroup::None, Cgroup::New),
                mode: Mode::Create { pivot: !o.no_pivot },
                preserve_fds: o.preserve_fds,
                console_socket: console_socket.as_ref(),
                new_keyring: !o.no_new_keyring,
            },
            executor,
            &mut runtime_hooks,
        )?;
        util::failpoint("create:ready");
        record_init(locked, &mut state, pid, o.pid_file)?;
        guard.locked = None;
        Ok(pid)
    }

    /// create's counterpart for an image CRIU restores: the state
    /// directory and cgroup as for create, then `criu restore` in place
    /// of an init; the container runs at once (no `start`).
    fn restore_through_criu(
        &self,
        o: &CreateOptions,
        bundle: &Bundle,
        handler: &dyn Handler,
        image: &executor::CheckpointOptions,
    ) -> Result<i32> {
        let spec = &bundle.spec;
        let locked = self.store.create(o.id)?;
        let mut guard = CreateGuard {
            locked: Some(locked),
            cgroup_created: Vec::new(),
            cgroup_paths: Vec::new(),
            systemd_unit: None,
        };
        let locked = guard.locked.as_ref().expect("set above");
        let planned = cgroups::plan(o.id, spec.linux().as_ref(), self.cgroups)?;
        if planned.systemd.is_some() {
            return Err(Error::Unsupported(
                "restoring through CRIU with the systemd cgroup driver: use the cgroupfs driver"
                    .into(),
            ));
        }
        let mut state = new_state(o, bundle, handler, &planned);
        locked.save(&state)?;
        planned.make()?;
        guard.cgroup_created = state.cgroup_created.clone();
        guard.cgroup_paths = state.cgroup_paths.clone();
        // CRIU's own process exits once the tree is restored: as its
        // subreaper this process inherits the restored init and can wait
        // for it (`restore` without --detach).
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let pid = amphi_core::criu::restore(&amphi_core::criu::Restore {
            options: image,
            spec,
            rootfs: &bundle.rootfs,
            state_dir: &locked.dir,
            cgroup_paths: &state.cgroup_paths,
        })?;
        record_init(locked, &mut state, pid, o.pid_file)?;
        guard.locked = None;
        Ok(pid)
    }

    /// start, but for a container CRIU restored, which runs already.
    fn start_created(&self, o: &CreateOptions) -> Result<()> {
        if o.restore.is_some() {
            let (_locked, _state, status) = self.load(o.id)?;
            if status == Status::Running {
                return Ok(());
            }
        }
        self.start(o.id)
    }

    fn load(&self, id: &str) -> Result<(Locked, ContainerState, Status)> {
        let locked = self.store.lock(id)?;
        let state = locked.load()?;
        let status = state.status(&locked.dir);
        Ok((locked, state, status))
    }

    pub fn start(&self, id: &str) -> Result<()> {
        let (locked, state, status) = self.load(id)?;
        if status != Status::Created {
            return Err(wrong_state(
                id,
                status,
                "only a created container can be started",
            ));
        }
        let fifo_path = locked.fifo();
        let fifo = open(
            &fifo_path,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            FileMode::empty(),
        )
        .map_err(|e| Error::sys(format!("open {}", fifo_path.display()), e))?;
        util::failpoint("start:opened");
        loop {
            let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(100u16)) {
                Ok(0) | Err(Errno::EINTR) => {
                    if state.status(&locked.dir) == Status::Stopped {
                        return Err(wrong_state(
                            id,
                            Status::Stopped,
                            "the init process died before start",
                        ));
                    }
                }
                Ok(_) => {
                    let mut b = [0u8; 1];
                    match nix::unistd::read(&fifo, &mut b) {
                        Ok(1) => break,
                        Err(Errno::EAGAIN) => continue,
                        _ => {
                            return Err(wrong_state(
                                id,
                                Status::Stopped,
                                "the init process died before start",
                            ))
                        }
                    }
                }
                Err(e) => return Err(Error::sys("poll exec fifo", e)),
            }
        }
        std::fs::remove_file(&fifo_path).map_err(|e| Error::io("remove", &fifo_path, e))?;
        let json = serde_json::to_vec(&state.oci_state(Status::Running)).expect("json");
        let poststart = state
            .spec
            .hooks()
            .as_ref()
            .and_then(|h| h.poststart().as_ref());
        if let Err(e) = hooks::run_all(poststart, "poststart", &json) {
            // The spec: a failed poststart hook is logged, the container runs on.
            (self.warn)(&format!("container {id}: {e}"));
        }
        Ok(())
    }

    /// Writes a running container's checkpoint image through its
    /// executor; without `leave_running` the container is then removed,
    /// as runc does.
    pub fn checkpoint(&self, id: &str, o: &executor::CheckpointOptions) -> Result<()> {
        let (locked, state, status) = self.load(id)?;
        if status != Status::Running {
            return Err(wrong_state(
                id,
                status,
                "only a running container can be checkpointed",
            ));
        }
        let handler = self
            .handlers
            .iter()
            .find(|h| h.name() == state.executor)
            .ok_or_else(|| {
                Error::Unsupported(format!(
                    "container {id} runs on the {} executor, which this frontend lacks",
                    state.executor
                ))
            })?;
        handler.checkpoint(&state, &locked.dir, o)?;
        drop(locked);
        if !o.leave_running && !o.pre_dump {
            wait_gone(&state);
            self.delete(id, true)?;
        }
        Ok(())
    }

    /// The runtime-spec state document of a container.
    pub fn state(&self, id: &str) -> Result<serde_json::Value> {
        let (_locked, state, status) = self.load(id)?;
        Ok(state.oci_state(status))
    }

    /// Every container with its current status. Reads without locking (state
    /// files are replaced atomically), so a long command elsewhere never
    /// stalls `list`; a container still being created is left out.
    pub fn list(&self) -> Result<Vec<(ContainerState, Status)>> {
        let mut out = Vec::new();
        for id in self.store.list()? {
            let dir = self.store.root().join(&id);
            let Ok(data) = std::fs::read(dir.join(amphi_core::state::STATE_FILE)) else {
                continue;
            };
            let Ok(state) = serde_json::from_slice::<ContainerState>(&data) else {
                continue;
            };
            let status = state.status(&dir);
            out.push((state, status));
        }
        Ok(out)
    }

    /// Send `signal` (None: only check that the process exists, like kill -0).
    pub fn kill(&self, id: &str, signal: Option<Signal>, all: bool) -> Result<()> {
        let (_locked, state, status) = self.load(id)?;
        // A stopped container may still have processes with --all: those
        // its init left in a pid namespace it did not own (runc allows it;
        // the containerd shim relies on it).
        if status == Status::Creating || (status == Status::Stopped && !all) {
            return Err(wrong_state(id, status, "no process to signal"));
        }
        if all {
            for pid in cgroups::procs(&state.cgroup_paths) {
                let _ = kill(Pid::from_raw(pid), signal);
            }
            return Ok(());
        }
        kill(Pid::from_raw(state.pid), signal).map_err(|e| {
            let name = signal.map_or("0", Signal::as_str);
            Error::sys(format!("kill {name} of container {id}"), e)
        })
    }

    /// The process `exec ID ARGS...` runs: the container's own process with
    /// the given overrides (as runc builds it).
    pub fn exec_process(&self, id: &str, o: ExecOverrides) -> Result<Process> {
        let (_locked, state, _status) = self.load(id)?;
        let Some(mut p) = state.spec.process().clone() else {
            return Err(Error::State {
                id: id.into(),
                path: PathBuf::from(amphi_core::state::STATE_FILE),
                why: "the recorded spec has no process".into(),
            });
        };
        if o.args.is_empty() {
            return Err(Error::Unsupported(format!(
                "exec {id}: give the command to run, or --process FILE"
            )));
        }
        p.set_args(Some(o.args));
        let mut env = p.env().clone().unwrap_or_default();
        for kv in o.env {
            let key = kv.split('=').next().unwrap_or("").to_owned();
            env.retain(|e| e.split('=').next() != Some(key.as_str()));
            env.push(kv);
        }
        p.set_env(Some(env));
        if let Some(cwd) = o.cwd {
            p.set_cwd(cwd);
        }
        if let Some((uid, gid)) = o.user {
            let mut u = p.user().clone();
            u.set_uid(uid);
            u.set_gid(gid.unwrap_or(0));
            u.set_additional_gids(None);
            p.set_user(u);
        }
        if !o.caps.is_empty() {
            let mut caps = p.capabilities().clone().unwrap_or_default();
            let parsed: Vec<Capability> = o
                .caps
                .iter()
                .map(|c| {
                    serde_json::from_value(serde_json::Value::String(c.clone())).map_err(|_| {
                        Error::Unsupported(format!("exec --cap {c:?}: unknown capability"))
                    })
                })
                .collect::<Result<_>>()?;
            let add = |set: &Option<oci_spec::runtime::Capabilities>| {
                let mut set = set.clone().unwrap_or_default();
                set.extend(parsed.iter().copied());
                Some(set)
            };
            let (b, e, pm) = (
                add(caps.bounding()),
                add(caps.effective()),
                add(caps.permitted()),
            );
            caps.set_bounding(b).set_effective(e).set_permitted(pm);
            p.set_capabilities(Some(caps));
        }
        if o.no_new_privs {
            p.set_no_new_privileges(Some(true));
        }
        p.set_terminal(Some(o.tty));
        Ok(p)
    }

    /// Run another process in a running container: in all its namespaces
    /// and its cgroup, with its own user, capabilities and rlimits. Native,
    /// or wasm when the program is a module, whatever the container runs.
    /// Returns the process's exit status (0 at once with `detach`).
    pub fn exec(&self, o: ExecOptions) -> Result<i32> {
        let (locked, state, status) = self.load(o.id)?;
        if status != Status::Running {
            return Err(wrong_state(o.id, status, "exec needs a running container"));
        }
        match o.process.args() {
            Some(a) if !a.is_empty() && !a[0].is_empty() => {}
            _ => {
                return Err(Error::Unsupported(format!(
                    "exec {}: process.args is empty",
                    o.id
                )))
            }
        }
        if !o.process.cwd().is_absolute() {
            return Err(Error::Unsupported(format!(
                "exec {}: process.cwd must be absolute",
                o.id
            )));
        }
        let mut spec = state.spec.clone();
        let mut linux = spec.linux().clone().unwrap_or_default();
        let joined: Vec<_> = linux
            .namespaces()
            .iter()
            .flatten()
            .map(|ns| {
                let name = match ns.typ() {
                    LinuxNamespaceType::Mount => "mnt",
                    LinuxNamespaceType::Cgroup => "cgroup",
                    LinuxNamespaceType::Uts => "uts",
                    LinuxNamespaceType::Ipc => "ipc",
                    LinuxNamespaceType::User => "user",
                    LinuxNamespaceType::Pid => "pid",
                    LinuxNamespaceType::Network => "net",
                    LinuxNamespaceType::Time => "time",
                };
                LinuxNamespaceBuilder::default()
                    .typ(ns.typ())
                    .path(format!("/proc/{}/ns/{name}", state.pid))
                    .build()
                    .expect("namespace")
            })
            .collect();
        linux.set_namespaces(Some(joined));
        spec.set_linux(Some(linux));
        spec.set_hooks(None);
        // The executor follows the program, not the container's annotations:
        // a shell execs natively into a wasm container.
        spec.set_annotations(None);
        spec.set_process(Some(o.process));
        let Chosen {
            executor,
            console_socket,
            ..
        } = self.executor_and_console(o.id, &spec, &state.rootfs, o.console_socket, None)?;
        let bundle = Bundle::new(state.bundle.clone(), state.rootfs.clone(), spec)?;
        let blocked = if o.detach {
            SigSet::empty()
        } else {
            waited_signals()
        };
        with_blocked(&blocked, || {
            let pid = launch(
                &LaunchConfig {
                    id: o.id,
                    bundle: &bundle,
                    state_dir: &locked.dir,
                    cgroup: Cgroup::Existing(&state.cgroup_paths),
                    mode: Mode::Exec,
                    preserve_fds: o.preserve_fds,
                    console_socket: console_socket.as_ref(),
                    new_keyring: !state.no_new_keyring,
                },
                executor,
                &mut |_| Ok(()),
            )?;
            if let Some(f) = o.pid_file {
                paths::write_file(f, pid.to_string().as_bytes())?;
            }
            // Other commands on the container must not wait for this process.
            drop(locked);
            if o.detach {
                return Ok(0);
            }
            wait_forwarding(Pid::from_raw(pid), &blocked)
        })
    }

    /// Change a live container's cgroup limits. Only the fields given
    /// change; the container's recorded spec is updated to match.
    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        let (locked, mut state, status) = self.load(id)?;
        if status == Status::Stopped {
            return Err(wrong_state(
                id,
                status,
                "a stopped container has no cgroup to update",
            ));
        }
        let mut linux = state.spec.linux().clone().unwrap_or_default();
        let cgroup = cgroups::ContainerCgroup::open(&state.cgroup_paths)?;
        if let Some(unit) = &state.systemd_unit {
            let writes = cgroups::resources::writes(
                resources,
                cgroups::resources::Hierarchy {
                    v2: true,
                    bfq: false,
                },
            )?;
            cgroups::systemd::set(unit, &writes)?;
        }
        cgroup.apply(resources)?;
        let merged = merge_json(
            serde_json::to_value(linux.resources()).expect("json"),
            serde_json::to_value(resources).expect("json"),
        );
        linux.set_resources(serde_json::from_value(merged).ok());
        state.spec.set_linux(Some(linux));
        locked.save(&state)
    }

    /// Cgroup statistics (runc's `events --stats` data), the number of OOM
    /// kills so far, and whether the container has stopped (its cgroup is
    /// still there until `delete`, so a last OOM kill can still be seen).
    pub fn stats(&self, id: &str) -> Result<(serde_json::Value, u64, bool)> {
        let (_locked, state, status) = self.load(id)?;
        Ok((
            cgroups::stats(&state.cgroup_paths),
            cgroups::oom_kills(&state.cgroup_paths),
            status == Status::Stopped,
        ))
    }

    /// A watch that wakes when the container's OOM counters change or its
    /// init exits; None where there is none to watch (no memory
    /// controller, or a stopped container).
    pub fn watch(&self, id: &str) -> Result<Option<cgroups::ContainerWatch>> {
        let (_locked, state, status) = self.load(id)?;
        let watch = cgroups::ContainerWatch::new(&state.cgroup_paths, state.pid);
        // The pid was the init's when the pidfd was taken only if the init
        // still is the recorded one now.
        Ok(watch.filter(|_| status != Status::Stopped && state.init_alive()))
    }

    /// Host pids of every process in the container.
    pub fn ps(&self, id: &str) -> Result<Vec<i32>> {
        let (_locked, state, status) = self.load(id)?;
        if status == Status::Stopped {
            return Ok(Vec::new());
        }
        Ok(cgroups::procs(&state.cgroup_paths))
    }

    /// Freeze every process of a running container.
    pub fn pause(&self, id: &str) -> Result<()> {
        self.set_paused(id, true)
    }

    /// Thaw a paused container.
    pub fn resume(&self, id: &str) -> Result<()> {
        self.set_paused(id, false)
    }

    fn set_paused(&self, id: &str, paused: bool) -> Result<()> {
        let (_locked, state, status) = self.load(id)?;
        let (from, why) = if paused {
            (Status::Running, "only a running container can be paused")
        } else {
            (Status::Paused, "only a paused container can be resumed")
        };
        if status != from {
            return Err(wrong_state(id, status, why));
        }
        cgroups::set_frozen(&state.cgroup_paths, paused)
    }

    /// Remove a container. With `force`, a running one is killed first and
    /// one that does not exist is no error (as with runc).
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let locked = match self.store.lock(id) {
            Err(Error::NotFound(_)) if force => return Ok(()),
            r => r?,
        };
        let state = match locked.load() {
            Ok(s) => s,
            // A directory without a readable record (a create killed before
            // its first save, or a corrupt file): with --force, remove it.
            Err(Error::State { .. } | Error::NotFound(_)) if force => return locked.remove(),
            Err(e) => return Err(e),
        };
        let status = state.status(&locked.dir);
        match status {
            Status::Stopped => {}
            // As runc: a container that never started is removed on delete
            // (containerd relies on it).
            Status::Created | Status::Creating => kill_all(&state),
            Status::Running | Status::Paused if force => kill_all(&state),
            _ => {
                return Err(wrong_state(
                    id,
                    status,
                    "stop it first, or use delete --force",
                ))
            }
        }
        util::failpoint("delete:killed");
        wait_gone(&state);
        let mut errors = Vec::new();
        if let Some(unit) = &state.systemd_unit {
            errors.extend(cgroups::systemd::stop(unit).err());
        }
        let cgroup_errors = cgroups::remove(&state.cgroup_created, &state.cgroup_paths);
        if let Some(e) = cgroup_errors.into_iter().next() {
            // Keep the record: a cgroup left without one could never be
            // found again. Busy is usually a dead process its parent has
            // not reaped yet; the next delete finishes the job.
            return Err(Error::Init(format!(
                "container {id}: {e}; the container is kept, run delete again \
                 once its processes are reaped"
            )));
        }
        util::failpoint("delete:cgroup");
        let json = serde_json::to_vec(&state.oci_state(Status::Stopped)).expect("json");
        let poststop = state
            .spec
            .hooks()
            .as_ref()
            .and_then(|h| h.poststop().as_ref());
        // runtime.md, Lifecycle: a failed poststop hook is a warning, and
        // "the remaining hooks and lifecycle continue".
        for e in hooks::run_every(poststop, "poststop", &json) {
            (self.warn)(&format!("container {id}: {e}"));
        }
        locked.remove()?;
        match errors.pop() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// create + start; a container that fails to start is removed.
    pub fn run_detached(&self, o: &CreateOptions) -> Result<()> {
        self.create(o)?;
        self.start_created(o).inspect_err(|_| {
            let _ = self.delete(o.id, true);
        })
    }

    /// create + start + wait + delete; the container's exit status, 128+N
    /// for a signal N. Signals to this process go to the container.
    pub fn run(&self, o: &CreateOptions) -> Result<i32> {
        // Blocked before the container exists, so neither its exit nor a
        // signal meant for it can slip by before we wait.
        let blocked = waited_signals();
        with_blocked(&blocked, || self.run_blocked(o, &blocked))
    }

    fn run_blocked(&self, o: &CreateOptions, blocked: &SigSet) -> Result<i32> {
        let pid = Pid::from_raw(self.create(o)?);
        if let Err(e) = self.start_created(o) {
            let _ = self.delete(o.id, true);
            let _ = waitpid(pid, None);
            return Err(e);
        }
        util::trace::phase("run: started, waiting");
        let code = wait_forwarding(pid, blocked)?;
        util::trace::phase("run: exited, deleting");
        self.delete(o.id, true)?;
        util::trace::phase("run: deleted");
        Ok(code)
    }
}

/// The record of a container about to be made by `handler` in cgroup
/// `planned`, its init not yet known.
fn new_state(
    o: &CreateOptions,
    bundle: &Bundle,
    handler: &dyn Handler,
    planned: &cgroups::ContainerCgroup,
) -> ContainerState {
    let spec = &bundle.spec;
    ContainerState {
        id: o.id.into(),
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        pid: 0,
        start_time: 0,
        created: util::rfc3339_now(),
        executor: handler.name().into(),
        no_new_keyring: o.no_new_keyring,
        systemd_unit: planned.systemd.as_ref().map(|u| u.name.clone()),
        annotations: spec.annotations().clone().unwrap_or_default(),
        cgroup_paths: planned.paths.clone(),
        cgroup_created: planned.created.clone(),
        spec: spec.clone(),
    }
}

/// Records the container's init `pid` (and writes --pid-file); if that
/// fails the init is killed, so that the caller's guard can remove the rest.
fn record_init(
    locked: &Locked,
    state: &mut ContainerState,
    pid: i32,
    pid_file: Option<&Path>,
) -> Result<()> {
    state.pid = pid;
    state.start_time = proc_stat(pid).map(|s| s.start_time).unwrap_or(0);
    let recorded = locked.save(state).and_then(|()| match pid_file {
        Some(f) => paths::write_file(f, pid.to_string().as_bytes()),
        None => Ok(()),
    });
    if let Err(e) = recorded {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(pid), None);
        return Err(e);
    }
    Ok(())
}

/// With `process.terminal`, the pty master goes to the console socket: connect
/// it while host paths are reachable.
fn connect_console(terminal: bool, socket: Option<&Path>) -> Result<Option<std::os::fd::OwnedFd>> {
    match (terminal, socket) {
        (false, _) => Ok(None),
        (true, None) => Err(Error::Unsupported(
            "process.terminal is true: give --console-socket to receive the pty master \
             (or set process.terminal to false)"
                .into(),
        )),
        (true, Some(path)) => Ok(Some(
            std::os::unix::net::UnixStream::connect(path)
                .map_err(|e| Error::io("connect to --console-socket", path, e))?
                .into(),
        )),
    }
}

/// Wait for `pid` (our child) to exit, passing on every other signal to it.
/// The caller blocked `blocked` before `pid` existed.
fn wait_forwarding(pid: Pid, blocked: &SigSet) -> Result<i32> {
    loop {
        let sig = blocked.wait().map_err(|e| Error::sys("sigwait", e))?;
        if sig == Signal::SIGCHLD {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
                _ => continue,
            }
        }
        if sig != Signal::SIGWINCH {
            let _ = kill(pid, sig);
        }
    }
}

/// Signals a waiting caller handles itself: all but KILL and STOP.
fn waited_signals() -> SigSet {
    let mut set = SigSet::all();
    set.remove(Signal::SIGKILL);
    set.remove(Signal::SIGSTOP);
    set
}

/// Block `set` for the duration of `f`.
fn with_blocked<T>(set: &SigSet, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let mut old = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(set), Some(&mut old))
        .map_err(|e| Error::sys("sigprocmask", e))?;
    let result = f();
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    result
}

/// A rootless caller (an unprivileged user, or root of a user namespace
/// that is not the host's, as podman runs its runtime) without a delegated
/// cgroup runs the container without one, as with runc, unless the spec
/// asks for limits that need it.
fn rootless_without_cgroup(e: &Error, linux: Option<&oci_spec::runtime::Linux>) -> bool {
    let wants_limits = linux
        .and_then(|l| l.resources().as_ref())
        .is_some_and(|r| !cgroups::resources::is_empty(r));
    util::rootless() && e.is_permission_denied() && !wants_limits
}

/// `update` on top of `base`: objects merge key by key, anything else is replaced.
fn merge_json(base: serde_json::Value, update: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (base, update) {
        (Value::Object(mut b), Value::Object(u)) => {
            for (k, v) in u {
                let merged = match b.remove(&k) {
                    Some(old) => merge_json(old, v),
                    None => v,
                };
                b.insert(k, merged);
            }
            Value::Object(b)
        }
        (b, Value::Null) => b,
        (_, u) => u,
    }
}

fn wrong_state(id: &str, status: Status, why: &str) -> Error {
    Error::WrongState {
        id: id.into(),
        status: status.to_string(),
        why: why.into(),
    }
}

/// SIGKILL the init and everything in the container's cgroup (a container
/// without a pid namespace does not die with its init).
fn kill_all(state: &ContainerState) {
    if state.init_alive() {
        let _ = kill(Pid::from_raw(state.pid), Signal::SIGKILL);
    }
    // A frozen cgroup's processes die only once thawed.
    if cgroups::is_frozen(&state.cgroup_paths) {
        let _ = cgroups::set_frozen(&state.cgroup_paths, false);
    }
    for pid in cgroups::procs(&state.cgroup_paths) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Wait (bounded) until the init is dead and the cgroup is empty.
fn wait_gone(state: &ContainerState) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pause = Duration::from_micros(100);
    while Instant::now() < deadline
        && (state.init_alive() || !cgroups::procs(&state.cgroup_paths).is_empty())
    {
        for pid in cgroups::procs(&state.cgroup_paths) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}
