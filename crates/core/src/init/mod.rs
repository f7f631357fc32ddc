//! The container's init process, from clone to the workload, for every
//! executor. [`run`] does what every init does (this module), then either
//! sets up a new container ([`create`]) or joins a running one ([`exec`]);
//! each reads top to bottom as the order of its steps, and each ordering
//! constraint says why.
//!
//! Failures go to `create` (or `exec`) while it waits for the init to be
//! ready, and to the container's stderr after that: which one follows from
//! whether the line to the parent is still open.

mod create;
mod exec;

use std::convert::Infallible;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::fcntl::OFlag;
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::stat::{umask, Mode as FileMode};
use nix::unistd::{setresgid, setresuid, Gid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, Process};

use crate::clone::{clone, keep_fds};
use crate::error::SysContext;
use crate::executor::Executor;
use crate::namespaces::Plan;
use crate::procfs::{self, ProcFs};
use crate::seccomp::Program;
use crate::spec::Bundle;
use crate::sync::{Channel, Msg};
use crate::{process, Error, Result};

/// What the init sets up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A new container: mounts, devices, hooks, then pivot_root (or, for
    /// a rootfs on a ramdisk, `--no-pivot`: a move and a chroot).
    Create { pivot: bool },
    /// A process joining a running container (`exec`): its mount
    /// namespace already has the rootfs as `/`, and its hooks ran.
    Exec,
}

pub struct InitArgs<'a> {
    pub id: &'a str,
    pub bundle: &'a Bundle,
    pub plan: &'a Plan,
    pub mode: Mode,
    /// The state directory (O_PATH), to open the exec fifo from after pivot_root.
    pub state_dir: OwnedFd,
    pub cgroup_paths: &'a [std::path::PathBuf],
    /// v1 `tasks` files to move this process into before anything else.
    pub cgroup_tasks: Vec<crate::clone::CgroupTasks>,
    pub preserve_fds: i32,
    /// The connected console socket (the parent's fd, inherited).
    pub console_socket: Option<RawFd>,
    /// Give the process a session keyring of its own (runc's default), so
    /// the keys of whoever ran the runtime do not reach the container.
    pub new_keyring: bool,
    pub executor: Box<dyn Executor>,
}

/// The init's line to the runtime, open until the process is ready.
struct Parent(Option<Channel>);

impl Parent {
    fn send(&self, msg: &Msg) -> Result<()> {
        match &self.0 {
            Some(ch) => ch.send(msg),
            None => Err(Error::Init(format!("{msg:?} after the runtime left"))),
        }
    }

    /// Wait for `want`; anything else means the runtime gave up on us.
    fn expect(&self, want: Msg, while_: &str) -> Result<()> {
        match self.0.as_ref().map(Channel::recv).transpose()?.flatten() {
            Some(m) if m == want => Ok(()),
            _ => Err(Error::Init(format!("the runtime went away {while_}"))),
        }
    }

    /// Wait for `Joined`: in the cgroup, its limits set. Returns the seccomp
    /// program the runtime compiled meanwhile.
    fn joined(&self) -> Result<Option<Program>> {
        match self.0.as_ref().map(Channel::recv).transpose()?.flatten() {
            Some(Msg::Joined(seccomp)) => Ok(seccomp),
            _ => Err(Error::Init(
                "the runtime went away before the cgroup was joined".into(),
            )),
        }
    }

    /// Tell the runtime the process is set up; from here on nobody listens.
    fn ready(&mut self) -> Result<()> {
        self.send(&Msg::Ready)?;
        self.0 = None;
        Ok(())
    }

    fn raw(&self) -> Option<RawFd> {
        self.0.as_ref().map(Channel::raw)
    }
}

/// Never returns: the process becomes the workload or exits.
pub fn run(channel: Channel, args: InitArgs) -> ! {
    let id = args.id.to_owned();
    let mut parent = Parent(Some(channel));
    let err = match init(args, &mut parent) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    if parent.send(&Msg::Failed(err.to_string())).is_err() {
        // After `create` returned nobody listens on the channel: the
        // container's stderr is where the error can still be seen.
        eprintln!("amphi: container {id}: {err}");
    }
    let code = match err {
        Error::Sys {
            errno: nix::Error::ENOENT | nix::Error::EACCES | nix::Error::ENOEXEC,
            ..
        } => 127,
        _ => 1,
    };
    // SAFETY: leave without running destructors or atexit handlers that
    // belong to the parent's copy of this process.
    unsafe { libc::_exit(code) }
}

/// The steps every init takes, then the mode's own.
fn init(mut a: InitArgs, parent: &mut Parent) -> Result<Infallible> {
    crate::util::trace::phase("init: started");
    // Before anything is charged; an intermediate's init is born here.
    for tasks in a.cgroup_tasks.drain(..) {
        tasks.join_self()?;
    }
    crate::util::trace::phase("init: joined cgroup");
    protect_runtime_binary(a.plan);
    crate::lsm::probe();
    // Default dispositions and nothing blocked (`run` blocks everything;
    // Rust ignores SIGPIPE), set first so that what an executor installs
    // while preparing (wasmtime's trap handlers) stays.
    reset_signals(a.executor.keeps_trap_handlers());
    // Nothing of the caller's (a lock, a shim's socket) may reach the
    // container beyond --preserve-fds (CVE-2024-21626 class).
    let mut keep = keep_fds(&[&a.state_dir]);
    keep.extend(parent.raw());
    keep.extend(a.plan.join.iter().map(|j| j.fd.as_raw_fd()));
    keep.extend(a.console_socket);
    keep.extend(a.executor.inherited_fds());
    close_fds(a.preserve_fds, &keep)?;

    if a.plan.needs_intermediate() {
        // Returns in the init only; the intermediate process leaves.
        fork_init_from_namespaces(a.plan, parent)?;
    }
    // Our own procfs, in the pid namespace the init lives in, before any of
    // the container's mount namespaces is joined: every procfs access from
    // here on goes through it, never through the container's /proc.
    crate::util::trace::phase("init: fds closed");
    let proc = procfs::handle()?;
    crate::util::trace::phase("init: procfs");
    // Before the container's namespaces are joined, through our procfs.
    process::set_oom_score_adj(&proc, a.bundle.process())?;
    // A session of its own, as runc's and crun's inits: nothing of the
    // caller's session (a shell, conmon's) is the container's, and CRIU
    // dumps only trees whose session leader is inside them.
    nix::unistd::setsid().sys(|| "setsid".into())?;
    parent.expect(Msg::Go, "before the id maps were written")?;
    crate::util::trace::phase("init: go");
    join_namespaces(a.plan, |t| {
        !matches!(t, LinuxNamespaceType::User | LinuxNamespaceType::Pid)
    })?;
    if a.plan.has_userns() {
        become_namespace_root()?;
    }
    // Device nodes and mount points get exactly the modes the spec gives.
    umask(FileMode::empty());
    if a.plan.creates(LinuxNamespaceType::Time) {
        enter_new_time_namespace(&proc, a.bundle.spec.linux().as_ref())?;
    }
    drop(proc);
    if a.new_keyring {
        join_new_session_keyring()?;
    }
    crate::util::trace::phase("init: namespaces, keyring");
    match a.mode {
        Mode::Create { pivot } => create::create(a, pivot, parent),
        Mode::Exec => exec::exec(a, parent),
    }
}

/// Until exec this process *is* the amphi binary: /proc/PID/exe leads to
/// it, and an O_PATH handle taken through it would let a container process
/// rewrite the host's runtime once we are gone (CVE-2019-5736).
/// Non-dumpable, no process without CAP_SYS_PTRACE over us may open it;
/// execve of the workload makes the process dumpable again, while a wasm
/// guest (which stays amphi) stays protected. In a user namespace the
/// container's root cannot write the host's binary anyway, and a dumpable
/// process keeps its /proc files owned by the namespace's root.
fn protect_runtime_binary(plan: &Plan) {
    if !plan.has_userns() {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    }
}

/// Joining a pid or user namespace by path: setns to a pid namespace
/// applies to children only, so this process (the intermediate) joins the
/// user and pid namespaces, creates the rest, then forks the init as its
/// parent's child (CLONE_PARENT) and leaves.
fn fork_init_from_namespaces(plan: &Plan, parent: &Parent) -> Result<()> {
    join_namespaces(plan, |t| {
        matches!(t, LinuxNamespaceType::User | LinuxNamespaceType::Pid)
    })?;
    unshare(plan.clone_flags()).sys(|| format!("unshare {:?}", plan.new))?;
    if plan.creates(LinuxNamespaceType::User) {
        parent.send(&Msg::MapIds)?;
        parent.expect(Msg::MapsDone, "while the id maps were written")?;
    }
    let pid = clone(CloneFlags::CLONE_PARENT)?;
    if pid != 0 {
        let _ = parent.send(&Msg::InitPid(pid));
        // SAFETY: as in `run`.
        unsafe { libc::_exit(0) }
    }
    Ok(())
}

/// The namespaces given by path whose type `which` selects; the user
/// namespace comes first (the plan's order), which grants the rights to
/// join the others it owns.
fn join_namespaces(plan: &Plan, which: impl Fn(LinuxNamespaceType) -> bool) -> Result<()> {
    for j in plan.join.iter().filter(|j| which(j.typ)) {
        setns(j.fd.as_fd(), crate::namespaces::flag(j.typ))
            .sys(|| format!("linux.namespaces: join {} {}", j.typ, j.path.display()))?;
    }
    Ok(())
}

/// In a user namespace, become its root so what we create is owned by it.
fn become_namespace_root() -> Result<()> {
    let root = Gid::from_raw(0);
    setresgid(root, root, root)
        .sys(|| "setresgid(0) in the user namespace (is container gid 0 mapped?)".into())?;
    let root = Uid::from_raw(0);
    setresuid(root, root, root)
        .sys(|| "setresuid(0) in the user namespace (is container uid 0 mapped?)".into())
}

/// A fresh, anonymous session keyring: the caller's keys stay behind.
/// Where keyctl does not exist for us (a filter in front of the runtime
/// answers ENOSYS), the container goes without, as with runc.
fn join_new_session_keyring() -> Result<()> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: keyctl with a NULL name: join a new anonymous keyring.
    let r = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    match (r, nix::Error::last()) {
        (r, _) if r >= 0 => Ok(()),
        (_, nix::Error::ENOSYS) => Ok(()),
        (_, e) => Err(Error::sys(
            "join a new session keyring (--no-new-keyring keeps the caller's)",
            e,
        )),
    }
}

/// The process's own place and credentials, last before the workload:
/// cwd, rlimits, scheduling, personality, user and capabilities,
/// no_new_privs.
fn enter_process(
    process: &Process,
    linux: Option<&oci_spec::runtime::Linux>,
    seccomp: Option<&Program>,
) -> Result<()> {
    // No host directory is open here (the state directory went before
    // pivot_root), and the cwd is resolved inside the root with no magic
    // link followed, then checked (CVE-2024-21626).
    crate::paths::chdir_in_root(process.cwd())?;
    process::set_rlimits(process)?;
    process::set_scheduling(process)?;
    process::set_personality(linux)?;
    if !no_new_privs(process) {
        // Without no_new_privs only CAP_SYS_ADMIN may install a filter, so
        // it goes in before the capabilities are dropped (as runc does);
        // the profile then also governs the few syscalls left until exec.
        if let Some(p) = seccomp {
            p.install()?;
        }
    }
    process::become_user(process, !setgroups_denied())?;
    process::set_no_new_privs(process)
}

/// The LSM labels for the coming exec, then, with no_new_privs, the
/// filter: as late as possible, so that the runtime's own last steps (the
/// exec fifo, startContainer hooks) are not subject to the container's
/// profile.
fn before_exec(process: &Process, seccomp: Option<&Program>) -> Result<()> {
    crate::lsm::apply_on_exec(process)?;
    match seccomp {
        Some(p) if no_new_privs(process) => p.install(),
        _ => Ok(()),
    }
}

/// The umask the process asks for (the init ran with none, so that nodes
/// and mount points got exactly the modes the spec gives), set before
/// anything runs on the process's behalf: startContainer hooks, the workload.
fn take_process_umask(process: &Process) {
    umask(FileMode::from_bits_truncate(
        process.user().umask().unwrap_or(0o022),
    ));
}

/// Hand over to the workload, holding nothing of the runtime's.
fn exec_workload(executor: Box<dyn Executor>, process: &Process) -> Result<Infallible> {
    crate::util::trace::phase("init: exec");
    procfs::release();
    Err(executor.exec(process))
}

/// Everything of the spec's process that a forked child of the workload
/// still has to take on, in the init's order: seccomp (early without
/// no_new_privs), user and capabilities, no_new_privs, LSM label, seccomp
/// (late with no_new_privs). For a long-lived container process that runs
/// each task in a child which must end up as the spec's process would
/// (`amphi serve`'s function worker).
pub fn assume_process(process: &Process, seccomp: Option<&Program>) -> Result<()> {
    if !no_new_privs(process) {
        if let Some(p) = seccomp {
            p.install()?;
        }
    }
    process::become_user(process, !setgroups_denied())?;
    process::set_no_new_privs(process)?;
    before_exec(process, seccomp)
}

fn no_new_privs(process: &Process) -> bool {
    process.no_new_privileges().unwrap_or(false)
}

/// The connected console socket, as this process's own fd.
fn console_socket(fd: Option<RawFd>) -> Option<OwnedFd> {
    // SAFETY: the fd is this process's copy of the parent's socket, owned
    // by nobody else here.
    fd.map(|fd| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// A time namespace applies to the children of the process that made it,
/// and its offsets can be set only until a process enters it: make it,
/// write `linux.timeOffsets`, then enter it ourselves.
fn enter_new_time_namespace(proc: &ProcFs, linux: Option<&oci_spec::runtime::Linux>) -> Result<()> {
    unshare(crate::namespaces::flag(LinuxNamespaceType::Time))
        .sys(|| "unshare time namespace".into())?;
    let offsets: String = linux
        .and_then(|l| l.time_offsets().as_ref())
        .into_iter()
        .flatten()
        .map(|(clock, o)| {
            format!(
                "{clock} {} {}\n",
                o.secs().unwrap_or(0),
                o.nanosecs().unwrap_or(0)
            )
        })
        .collect();
    if !offsets.is_empty() {
        proc.write_self("timens_offsets", &offsets).map_err(|e| {
            Error::Init(format!(
                "linux.timeOffsets: write /proc/self/timens_offsets {offsets:?}: {}",
                e.desc()
            ))
        })?;
    }
    let ns = proc
        .open_own_link("ns/time_for_children", OFlag::O_RDONLY)
        .sys(|| "open /proc/self/ns/time_for_children".into())?;
    setns(ns, crate::namespaces::flag(LinuxNamespaceType::Time))
        .sys(|| "enter the new time namespace".into())
}

/// In a user namespace whose setgroups is denied, setgroups(2) fails.
fn setgroups_denied() -> bool {
    procfs::handle()
        .ok()
        .and_then(|p| p.read_self("setgroups").ok())
        .is_some_and(|s| s.trim() == "deny")
}

/// `keep_traps`: leave the handlers of the signals a fault raises, which
/// the executor installed before the init was cloned.
fn reset_signals(keep_traps: bool) {
    const TRAPS: [Signal; 4] = [
        Signal::SIGSEGV,
        Signal::SIGBUS,
        Signal::SIGILL,
        Signal::SIGFPE,
    ];
    for sig in Signal::iterator() {
        if keep_traps && TRAPS.contains(&sig) {
            continue;
        }
        if !matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            // SAFETY: installing the default disposition.
            let _ = unsafe { signal(sig, SigHandler::SigDfl) };
        }
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// Close what the container must not inherit: every fd from 3 up, except
/// `keep` and the caller's `preserve` fds. A caller's fd crossed the exec into
/// amphi, so it cannot be close-on-exec; every fd amphi opened is, so one in
/// the preserved range that is close-on-exec is amphi's own (the caller
/// passed fewer fds than it said) and goes too. Above that range, whole
/// ranges go at once (close_range), without reading any /proc.
fn close_fds(preserve: i32, keep: &[i32]) -> Result<()> {
    let first = 3 + preserve.max(0);
    for fd in (3..first).filter(|fd| !keep.contains(fd)) {
        // SAFETY: fcntl and close on fds this process owns.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags >= 0 && flags & libc::FD_CLOEXEC != 0 {
            unsafe { libc::close(fd) };
        }
    }
    let mut kept: Vec<u32> = keep
        .iter()
        .filter(|&&k| k >= first)
        .map(|&k| k as u32)
        .collect();
    kept.sort_unstable();
    let mut from = first as u32;
    for k in kept.into_iter().chain([u32::MAX]) {
        if k > from {
            let to = if k == u32::MAX { u32::MAX } else { k - 1 };
            // SAFETY: closes fds this process owns and no Rust value holds
            // (every one it keeps is in `keep`).
            let r = unsafe { libc::syscall(libc::SYS_close_range, from, to, 0u32) };
            match (r, nix::Error::last()) {
                (0, _) => {}
                // Before Linux 5.9: one at a time, up to the fd limit.
                (_, nix::Error::ENOSYS) => {
                    let limit =
                        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                            .map_or(1024, |(soft, _)| soft.min(1 << 20) as u32);
                    for fd in from..to.min(limit) {
                        // SAFETY: as above.
                        unsafe { libc::close(fd as i32) };
                    }
                }
                (_, e) => return Err(Error::sys("close_range", e)),
            }
        }
        from = k.saturating_add(1);
    }
    Ok(())
}
