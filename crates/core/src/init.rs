//! The container's init process, from clone to exec, for every executor.
//! `setup` reads top to bottom as the order of container set-up; each
//! ordering constraint says why.

use std::convert::Infallible;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{openat, OFlag};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{chdir, sethostname, setresgid, setresuid, write, Gid, Uid};
use oci_spec::runtime::LinuxNamespaceType;

use crate::error::SysContext;
use crate::executor::{Executor, PrepareContext};
use crate::launch::{clone, keep_fds};
use crate::namespaces::Plan;
use crate::rootfs::{self, RootfsContext};
use crate::seccomp::Program;
use crate::spec::Bundle;
use crate::state::EXEC_FIFO;
use crate::sync::{Channel, Msg};
use crate::{hooks, process, Error, Result};

pub struct InitArgs<'a> {
    pub id: &'a str,
    pub bundle: &'a Bundle,
    pub plan: &'a Plan,
    pub intermediate: bool,
    pub channel: Channel,
    /// The state directory (O_PATH), to open the exec fifo from after pivot_root.
    pub state_dir: OwnedFd,
    pub cgroup_paths: &'a [std::path::PathBuf],
    /// Joining a running container (`exec`): its mount namespace already
    /// has the rootfs as `/`.
    pub exec: bool,
    pub no_pivot: bool,
    pub preserve_fds: i32,
    /// The connected console socket (the parent's fd, inherited).
    pub console_socket: Option<std::os::fd::RawFd>,
    pub executor: Box<dyn Executor>,
}

/// Never returns: the process becomes the workload or exits.
pub fn run(args: InitArgs) -> ! {
    let id = args.id.to_owned();
    let mut reported = false;
    let err = match setup(args, &mut reported) {
        Ok(never) => match never {},
        Err((e, ch)) => {
            if let Some(ch) = ch.filter(|_| !reported) {
                let _ = ch.send(&Msg::Failed(e.to_string()));
            } else {
                // After `create` returned nobody listens on the channel: the
                // container's stderr is where the error can still be seen.
                eprintln!("amphi: container {id}: {e}");
            }
            e
        }
    };
    let code = match err {
        Error::Sys {
            source: nix::Error::ENOENT | nix::Error::EACCES | nix::Error::ENOEXEC,
            ..
        } => 127,
        _ => 1,
    };
    // SAFETY: leave without running destructors or atexit handlers that
    // belong to the parent's copy of this process.
    unsafe { libc::_exit(code) }
}

type Failure = (Error, Option<Channel>);

fn setup(a: InitArgs, reported: &mut bool) -> std::result::Result<Infallible, Failure> {
    let ch = a.channel;
    macro_rules! t {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => return Err((e, Some(ch))),
            }
        };
    }
    let spec = &a.bundle.spec;
    let process = spec.process().as_ref().expect("validated: process present");
    // Until exec this process *is* the amphi binary: /proc/PID/exe leads to
    // it, and an O_PATH handle taken through it would let a container
    // process rewrite the host's runtime once we are gone (CVE-2019-5736).
    // Non-dumpable, no process without CAP_SYS_PTRACE over us may open it;
    // execve of the workload makes the process dumpable again, while a wasm
    // guest (which stays amphi) stays protected. In a user namespace the
    // container's root cannot write the host's binary anyway, and a
    // dumpable process keeps its /proc files owned by the namespace's root.
    if !a.plan.has_userns() {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    }
    // Default dispositions and nothing blocked (`run` blocks everything;
    // Rust ignores SIGPIPE), set first so that what an executor installs
    // while preparing (wasmtime's trap handlers) stays.
    reset_signals();

    // Nothing of the caller's (a lock, a shim's socket) may reach the
    // container beyond --preserve-fds (CVE-2024-21626 class).
    let mut keep = keep_fds(&[&ch.raw(), &a.state_dir]);
    keep.extend(a.plan.join.iter().map(|j| j.fd.as_raw_fd()));
    keep.extend(a.console_socket);
    keep.extend(a.executor.inherited_fds());
    t!(close_fds(a.preserve_fds, &keep));

    if a.intermediate {
        // Stage 1: join the user and pid namespaces, create the rest, then
        // fork the init as our parent's child (CLONE_PARENT) and leave.
        for t in [LinuxNamespaceType::User, LinuxNamespaceType::Pid] {
            if let Some(j) = a.plan.joins(t) {
                t!(
                    setns(j.fd.as_fd(), crate::namespaces::flag(t)).sys(|| format!(
                        "linux.namespaces: join {} {}",
                        t,
                        j.path.display()
                    ))
                );
            }
        }
        t!(unshare(a.plan.clone_flags()).sys(|| format!("unshare {:?}", a.plan.new)));
        if a.plan.creates(LinuxNamespaceType::User) {
            t!(ch.send(&Msg::MapIds));
            if t!(ch.recv()) != Some(Msg::MapsDone) {
                return Err((Error::Init("id maps not written".into()), None));
            }
        }
        let pid = t!(clone(CloneFlags::CLONE_PARENT));
        if pid != 0 {
            let _ = ch.send(&Msg::InitPid(pid));
            // SAFETY: as in `run`.
            unsafe { libc::_exit(0) }
        }
    }

    // Wait until the parent mapped our ids.
    match t!(ch.recv()) {
        Some(Msg::Go) => {}
        _ => return Err((Error::Init("parent went away".into()), None)),
    }
    for j in a
        .plan
        .join
        .iter()
        .filter(|j| !matches!(j.typ, LinuxNamespaceType::User | LinuxNamespaceType::Pid))
    {
        t!(
            setns(j.fd.as_fd(), crate::namespaces::flag(j.typ)).sys(|| format!(
                "linux.namespaces: join {} {}",
                j.typ,
                j.path.display()
            ))
        );
    }
    let userns = a.plan.has_userns();
    if userns {
        // Become the namespace's root so what we create is owned by it.
        t!(
            setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
                .sys(|| "setresgid(0) in the user namespace (is container gid 0 mapped?)".into())
        );
        t!(
            setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
                .sys(|| "setresuid(0) in the user namespace (is container uid 0 mapped?)".into())
        );
    }
    // Device nodes and mount points get exactly the modes the spec gives.
    umask(Mode::empty());
    if a.plan.creates(LinuxNamespaceType::Time) {
        t!(enter_new_time_namespace(spec.linux().as_ref()));
    }

    t!(process::set_oom_score_adj(process));

    if a.exec {
        // Joining a running container: its mount namespace has the rootfs
        // as `/` already, and its hooks ran when it was created.
        match t!(ch.recv()) {
            Some(Msg::Joined) => {}
            _ => return Err((Error::Init("parent went away".into()), None)),
        }
        let root_fd = t!(nix::fcntl::open(
            "/",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty()
        )
        .sys(|| "open the container's root".into()));
        let mut executor = a.executor;
        t!(executor.prepare(&PrepareContext {
            spec,
            process,
            rootfs: std::path::Path::new("/"),
            root_fd: root_fd.as_fd(),
        }));
        drop(root_fd);
        if let Some(fd) = a.console_socket {
            // SAFETY: as below.
            let socket = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            t!(crate::console::setup(socket, process));
        }
        t!(enter_process(
            process,
            spec.linux().as_ref(),
            a.bundle.seccomp.as_ref()
        ));
        t!(before_exec(process, a.bundle.seccomp.as_ref()));
        t!(ch.send(&Msg::Ready));
        *reported = true;
        drop(ch);
        drop(a.state_dir);
        umask(Mode::from_bits_truncate(
            process.user().umask().unwrap_or(0o022),
        ));
        return Err((executor.exec(process), None));
    }

    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        t!(sethostname(h).sys(|| format!("hostname {h:?}")));
    }
    if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        t!(set_domainname(d));
    }

    crate::util::trace::phase("init: rootfs");
    let root_fd = t!(rootfs::setup(&RootfsContext {
        spec,
        bundle: &a.bundle.dir,
        rootfs: &a.bundle.rootfs,
        userns,
        cgroup_paths: a.cgroup_paths,
    }));

    // The parent moved us into the cgroup while we mounted. From here on
    // everything is charged to it, and a new cgroup namespace is rooted at it.
    crate::util::trace::phase("init: rootfs mounted, waiting for cgroup");
    match t!(ch.recv()) {
        Some(Msg::Joined) => {}
        _ => return Err((Error::Init("parent went away".into()), None)),
    }
    if a.plan.creates(LinuxNamespaceType::Cgroup) {
        t!(unshare(CloneFlags::CLONE_NEWCGROUP).sys(|| "unshare cgroup namespace".into()));
    }

    // prestart and createRuntime hooks run in the runtime's namespaces, by
    // the parent, once the mounts exist and before pivot_root.
    let hooks = spec.hooks().as_ref();
    if hooks.is_some_and(|h| h.prestart().is_some() || h.create_runtime().is_some()) {
        t!(ch.send(&Msg::RunHooks));
        if t!(ch.recv()) != Some(Msg::HooksDone) {
            return Err((Error::Init("parent went away during hooks".into()), None));
        }
    }
    let state_json = |status: &str| {
        serde_json::to_vec(&serde_json::json!({
            "ociVersion": "1.2.0", "id": a.id, "status": status,
            "pid": std::process::id(), "bundle": a.bundle.dir,
            "annotations": spec.annotations().clone().unwrap_or_default(),
        }))
        .expect("json")
    };
    // createContainer hooks: in the container's namespaces, before pivot_root.
    t!(hooks::run_all(
        hooks.and_then(|h| h.create_container().as_ref()),
        "createContainer",
        &state_json("creating")
    ));

    // The executor prepares while host paths are reachable (e.g. a compiled
    // module cache), but already inside the cgroup and namespaces.
    let mut executor = a.executor;
    crate::util::trace::phase("init: executor prepare");
    t!(executor.prepare(&PrepareContext {
        spec,
        process,
        rootfs: &a.bundle.rootfs,
        root_fd: root_fd.as_fd(),
    }));
    drop(root_fd);

    crate::util::trace::phase("init: pivot_root");
    if a.no_pivot {
        t!(rootfs::move_root(&a.bundle.rootfs));
    } else {
        t!(rootfs::pivot(&a.bundle.rootfs));
    }
    // The pty comes from the container's own devpts, so after pivot_root;
    // and before the rootfs is finalised, which may make /dev read-only.
    if let Some(fd) = a.console_socket {
        // SAFETY: the fd is this process's copy of the parent's socket,
        // owned by nobody else here.
        let socket = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        t!(crate::console::setup(socket, process));
    }
    // sysctls through the container's own /proc, before /proc/sys is made
    // read-only; validation let through only namespaced ones.
    for (key, value) in spec
        .linux()
        .as_ref()
        .and_then(|l| l.sysctl().as_ref())
        .into_iter()
        .flatten()
    {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        t!(std::fs::write(&path, value)
            .map_err(|e| Error::Init(format!("linux.sysctl.{key}={value:?}: write {path}: {e}"))));
    }
    // Masked and read-only paths after pivot_root: they name container paths.
    crate::util::trace::phase("init: masked and read-only paths");
    t!(rootfs::finalize(spec));
    t!(enter_process(
        process,
        spec.linux().as_ref(),
        a.bundle.seccomp.as_ref()
    ));

    // Created: tell the parent, then block until `start` opens the fifo.
    t!(ch.send(&Msg::Ready));
    *reported = true;
    drop(ch);
    let fifo = openat(
        a.state_dir.as_fd(),
        EXEC_FIFO,
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .sys(|| "open exec fifo".into())
    .map_err(|e| (e, None))?;
    // The last handle on a host directory goes before any container code runs.
    drop(a.state_dir);
    write(&fifo, b"0")
        .sys(|| "write exec fifo".into())
        .map_err(|e| (e, None))?;
    drop(fifo);

    hooks::run_all(
        hooks.and_then(|h| h.start_container().as_ref()),
        "startContainer",
        &state_json("running"),
    )
    .map_err(|e| (e, None))?;
    before_exec(process, a.bundle.seccomp.as_ref()).map_err(|e| (e, None))?;

    crate::util::trace::phase("init: exec");
    // The workload starts with the umask it asks for.
    umask(Mode::from_bits_truncate(
        process.user().umask().unwrap_or(0o022),
    ));
    Err((executor.exec(process), None))
}

/// The process's own place and credentials, last before the workload:
/// cwd, rlimits, user and capabilities, no_new_privs.
fn enter_process(
    process: &oci_spec::runtime::Process,
    linux: Option<&oci_spec::runtime::Linux>,
    seccomp: Option<&Program>,
) -> Result<()> {
    chdir(process.cwd().as_path()).sys(|| format!("process.cwd {}", process.cwd().display()))?;
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
/// filter: as late as possible, so that the
/// runtime's own last steps (the exec fifo, startContainer hooks) are not
/// subject to the container's profile.
fn before_exec(process: &oci_spec::runtime::Process, seccomp: Option<&Program>) -> Result<()> {
    crate::lsm::apply_on_exec(process)?;
    match seccomp {
        Some(p) if no_new_privs(process) => p.install(),
        _ => Ok(()),
    }
}

/// Everything of the spec's process that a forked child of the workload
/// still has to take on, in the init's order: seccomp (early without
/// no_new_privs), user and capabilities, no_new_privs, LSM label, seccomp
/// (late with no_new_privs). For a long-lived container process that runs
/// each task in a child which must end up as the spec's process would
/// (`amphi serve`'s function worker).
pub fn assume_process(
    process: &oci_spec::runtime::Process,
    seccomp: Option<&Program>,
) -> Result<()> {
    if !no_new_privs(process) {
        if let Some(p) = seccomp {
            p.install()?;
        }
    }
    process::become_user(process, !setgroups_denied())?;
    process::set_no_new_privs(process)?;
    before_exec(process, seccomp)
}

fn no_new_privs(process: &oci_spec::runtime::Process) -> bool {
    process.no_new_privileges().unwrap_or(false)
}

/// A time namespace applies to the children of the process that made it,
/// and its offsets can be set only until a process enters it: make it,
/// write `linux.timeOffsets`, then enter it ourselves.
fn enter_new_time_namespace(linux: Option<&oci_spec::runtime::Linux>) -> Result<()> {
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
        std::fs::write("/proc/self/timens_offsets", &offsets).map_err(|e| {
            Error::Init(format!(
                "linux.timeOffsets: write /proc/self/timens_offsets {offsets:?}: {e}"
            ))
        })?;
    }
    let ns = nix::fcntl::open(
        "/proc/self/ns/time_for_children",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .sys(|| "open /proc/self/ns/time_for_children".into())?;
    setns(ns, crate::namespaces::flag(LinuxNamespaceType::Time))
        .sys(|| "enter the new time namespace".into())
}

fn set_domainname(d: &str) -> Result<()> {
    // SAFETY: pointer and length of a live byte slice.
    if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
        return Err(Error::sys(format!("domainname {d:?}"), nix::Error::last()));
    }
    Ok(())
}

/// In a user namespace whose setgroups is denied, setgroups(2) fails.
fn setgroups_denied() -> bool {
    std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny")
}

fn reset_signals() {
    for sig in Signal::iterator() {
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
/// passed fewer fds than it said) and goes too.
fn close_fds(preserve: i32, keep: &[i32]) -> Result<()> {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| Error::io("read", "/proc/self/fd", e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd < 3 || keep.contains(&fd) {
            continue;
        }
        // SAFETY: fcntl and close on fds this process owns; the read_dir
        // handle is already gone.
        let cloexec = unsafe { libc::fcntl(fd, libc::F_GETFD) } & libc::FD_CLOEXEC != 0;
        if fd >= 3 + preserve || cloexec {
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}
