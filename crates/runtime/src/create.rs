//! Making a container and starting it: `create`, `start`, `run`, and
//! `restore`'s way in (a checkpoint image instead of a fresh start).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use amphi_core::cgroups;
use amphi_core::executor::{self, Executor, Handler};
use amphi_core::hooks;
use amphi_core::init::Mode;
use amphi_core::launch::{launch, Cgroup, LaunchConfig};
use amphi_core::namespaces::NetworkAhead;
use amphi_core::spec::Bundle;
use amphi_core::state::{proc_stat, ContainerState, Locked, Status, StoredSpec};
use amphi_core::{paths, util, Error, Result};
use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::stat::Mode as FileMode;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::{wrong_state, CreateOptions, Runtime};

impl Runtime {
    /// The handler that runs `spec` and the executor it builds for
    /// container `id`, and the connected console socket.
    pub(crate) fn executor_and_console(
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
        self.create_locked(o)
            .map(|(_unlocked_on_drop, state)| state.pid)
    }

    /// create, still holding the container's lock, with the record it wrote.
    fn create_locked(&self, o: &CreateOptions) -> Result<(Locked, ContainerState)> {
        amphi_core::id::validate(o.id)?;
        util::trace::phase("create: load bundle");
        let bundle = Bundle::load(o.bundle)?;
        util::trace::phase("create: bundle loaded");
        let spec = &bundle.spec;
        // The warnings wait for the executor: a frontend may hand the whole
        // command to another binary as it builds one, and that one warns.
        let warn_bundle = || bundle.warnings.iter().for_each(|w| (self.warn)(w));
        if let Some(image) = o.restore {
            let handler = executor::choose(&self.handlers, spec, &bundle.rootfs)?;
            if handler.restores_through_criu() {
                warn_bundle();
                return self.restore_through_criu(o, &bundle, handler, image);
            }
        }
        let chosen =
            self.executor_and_console(o.id, spec, &bundle.rootfs, o.console_socket, o.restore);
        warn_bundle();
        util::trace::phase("create: executor chosen");
        let Chosen {
            handler,
            executor,
            console_socket,
        } = chosen?;
        // Made on another core while the state, the cgroup and the record
        // are made here; the clone would otherwise make it after them.
        let network = NetworkAhead::start(
            spec.linux()
                .as_ref()
                .and_then(|l| l.namespaces().as_deref())
                .unwrap_or_default(),
        );

        let locked = self.store.create(o.id)?;
        util::failpoint("create:dir");
        let mut guard = CreateGuard::new(locked);
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
        util::trace::phase("create: cgroup planned");
        // Recorded before anything exists outside the state directory, so
        // that `delete --force` after a crash knows what to remove.
        locked.save(&state)?;
        util::failpoint("create:state");
        util::trace::phase("create: state recorded");
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
        util::trace::phase("create: cgroup made");

        let hooks = spec.hooks().as_ref();
        let mut staged = None;
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
        let network = network.wait();
        if network.is_some() {
            util::trace::phase("create: network namespace made ahead");
        }
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
                warn: &*self.warn,
                network: network.as_ref(),
            },
            executor,
            &mut runtime_hooks,
            // Written while the init mounts; in place once it is ready.
            &mut |pid| {
                staged = Some(stage_record(locked, &state, pid)?);
                Ok(())
            },
        )?;
        util::failpoint("create:ready");
        let (record, with_init) = staged.take().expect("launch ran meanwhile");
        commit_record(Ok(record), pid, o.pid_file)?;
        state = with_init;
        util::trace::phase("create: init recorded");
        let locked = guard.locked.take().expect("set above");
        Ok((locked, state))
    }

    /// create + start, holding the lock create took: the record create
    /// wrote is the one started from, not read again. A container that
    /// fails to start is removed. Returns the init's pid.
    fn create_started(&self, o: &CreateOptions) -> Result<Pid> {
        let (locked, state) = self.create_locked(o)?;
        let status = state.status(&locked.dir);
        // A container CRIU restored runs already.
        let started = if o.restore.is_some() && status == Status::Running {
            Ok(())
        } else {
            self.start_loaded(o.id, &locked, &state, status)
        };
        // Released before anything else takes it (delete, a caller's
        // `state` or `kill` while the container runs).
        drop(locked);
        let pid = Pid::from_raw(state.pid);
        started.map(|()| pid).inspect_err(|_| {
            let _ = self.delete(o.id, true);
            let _ = waitpid(pid, None);
        })
    }

    pub fn start(&self, id: &str) -> Result<()> {
        let (locked, state, status) = self.load(id)?;
        util::trace::phase("start: state loaded");
        self.start_loaded(id, &locked, &state, status)
    }

    fn start_loaded(
        &self,
        id: &str,
        locked: &Locked,
        state: &ContainerState,
        status: Status,
    ) -> Result<()> {
        if status != Status::Created {
            return Err(wrong_state(
                id,
                status,
                "only a created container can be started",
            ));
        }
        // Read before the init is released: a record that cannot give them
        // fails start while the workload has not begun.
        let recorded_hooks = state.hooks()?;
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
        util::trace::phase("start: init released");
        std::fs::remove_file(&fifo_path).map_err(|e| Error::io("remove", &fifo_path, e))?;
        let json = serde_json::to_vec(&state.oci_state(Status::Running)).expect("json");
        let poststart = recorded_hooks.as_ref().and_then(|h| h.poststart().as_ref());
        if let Err(e) = hooks::run_all(poststart, "poststart", &json) {
            // The spec: a failed poststart hook is logged, the container runs on.
            (self.warn)(&format!("container {id}: {e}"));
        }
        Ok(())
    }

    /// create + start; a container that fails to start is removed.
    pub fn run_detached(&self, o: &CreateOptions) -> Result<()> {
        self.create_started(o).map(drop)
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
        let pid = self.create_started(o)?;
        util::trace::phase("run: started, waiting");
        let code = wait_forwarding(pid, blocked)?;
        util::trace::phase("run: exited, deleting");
        self.delete(o.id, true)?;
        util::trace::phase("run: deleted");
        Ok(code)
    }
}

/// What runs a new process, and where its terminal goes.
pub(crate) struct Chosen<'h> {
    pub(crate) handler: &'h dyn Handler,
    pub(crate) executor: Box<dyn Executor>,
    pub(crate) console_socket: Option<std::os::fd::OwnedFd>,
}

/// Undo a half-made container unless disarmed.
pub(crate) struct CreateGuard {
    pub(crate) locked: Option<Locked>,
    pub(crate) cgroup_created: Vec<PathBuf>,
    pub(crate) cgroup_paths: Vec<PathBuf>,
    pub(crate) systemd_unit: Option<String>,
}

impl CreateGuard {
    /// Armed: dropped while it still holds `locked`, it removes the state
    /// directory and what it records.
    pub(crate) fn new(locked: Locked) -> CreateGuard {
        CreateGuard {
            locked: Some(locked),
            cgroup_created: Vec::new(),
            cgroup_paths: Vec::new(),
            systemd_unit: None,
        }
    }
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

/// The record of a container about to be made by `handler` in cgroup
/// `planned`, its init not yet known.
pub(crate) fn new_state(
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
        hooks: spec.hooks().clone(),
        hooks_recorded: true,
        spec: StoredSpec::new(spec),
    }
}

/// The record of the container with its init `pid`, written beside the
/// current one, and the state it records.
pub(crate) fn stage_record(
    locked: &Locked,
    state: &ContainerState,
    pid: i32,
) -> Result<(paths::Staged, ContainerState)> {
    let mut state = state.clone();
    state.pid = pid;
    state.start_time = proc_stat(pid).map(|s| s.start_time).unwrap_or(0);
    Ok((locked.stage(&state)?, state))
}

/// Records the container's init `pid` in `state` and on disk (and writes
/// --pid-file); if that fails the init is killed, so that the caller's
/// guard can remove the rest.
pub(crate) fn record_init(
    locked: &Locked,
    state: &mut ContainerState,
    pid: i32,
    pid_file: Option<&Path>,
) -> Result<()> {
    let record = stage_record(locked, state, pid).map(|(record, with_init)| {
        *state = with_init;
        record
    });
    commit_record(record, pid, pid_file)
}

/// Puts the init's staged `record` in place (and writes --pid-file); if
/// that fails the init is killed, so that the caller's guard can remove
/// the rest.
pub(crate) fn commit_record(
    record: Result<paths::Staged>,
    pid: i32,
    pid_file: Option<&Path>,
) -> Result<()> {
    let recorded = record
        .and_then(paths::Staged::commit)
        .and_then(|()| match pid_file {
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
pub(crate) fn connect_console(
    terminal: bool,
    socket: Option<&Path>,
) -> Result<Option<std::os::fd::OwnedFd>> {
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
pub(crate) fn wait_forwarding(pid: Pid, blocked: &SigSet) -> Result<i32> {
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
pub(crate) fn waited_signals() -> SigSet {
    let mut set = SigSet::all();
    set.remove(Signal::SIGKILL);
    set.remove(Signal::SIGSTOP);
    set
}

/// Block `set` for the duration of `f`.
pub(crate) fn with_blocked<T>(set: &SigSet, f: impl FnOnce() -> Result<T>) -> Result<T> {
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
pub(crate) fn rootless_without_cgroup(e: &Error, linux: Option<&oci_spec::runtime::Linux>) -> bool {
    let wants_limits = linux
        .and_then(|l| l.resources().as_ref())
        .is_some_and(|r| !cgroups::resources::is_empty(r));
    util::rootless() && e.is_permission_denied() && !wants_limits
}
