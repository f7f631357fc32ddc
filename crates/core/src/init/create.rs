//! A new container's init, after the steps every init takes: the rootfs,
//! the cgroup, hooks, the executor's preparation, pivot_root, the console,
//! the process's credentials; then it waits for `start`.

use std::convert::Infallible;
use std::os::fd::AsFd;

use nix::fcntl::{openat, OFlag};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::Mode;
use nix::unistd::{sethostname, write};
use oci_spec::runtime::LinuxNamespaceType;

use super::{
    before_exec, console_socket, enter_process, exec_workload, take_process_umask, InitArgs, Parent,
};
use crate::error::SysContext;
use crate::executor::PrepareContext;
use crate::rootfs::{self, RootfsContext};
use crate::state::EXEC_FIFO;
use crate::sync::Msg;
use crate::util::trace::phase;
use crate::{hooks, procfs, Error, Result};

pub(super) fn create(a: InitArgs, pivot: bool, parent: &mut Parent) -> Result<Infallible> {
    let spec = &a.bundle.spec;
    let process = a.bundle.process();
    let proc = procfs::handle()?;
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        sethostname(h).sys(|| format!("hostname {h:?}"))?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        set_domainname(d)?;
    }
    if a.plan.creates(LinuxNamespaceType::Network) {
        crate::namespaces::loopback_up()?;
    }
    // sysctls apply to the namespaces of the process that writes them, so
    // they are written now, through our procfs; validation let through
    // only namespaced ones.
    for (key, value) in spec
        .linux()
        .as_ref()
        .and_then(|l| l.sysctl().as_ref())
        .into_iter()
        .flatten()
    {
        proc.write_sysctl(key, value)
            .map_err(|e| Error::Init(format!("linux.sysctl.{key}={value:?}: {}", e.desc())))?;
    }

    phase("init: rootfs");
    let root_fd = rootfs::setup(&RootfsContext {
        spec,
        bundle: &a.bundle.dir,
        rootfs: &a.bundle.rootfs,
        // In a user namespace (the container's, or one the runtime itself
        // runs in) device nodes cannot be made, only bound from the host.
        userns: a.plan.has_userns() || crate::util::in_user_namespace(&proc),
        cgroup_paths: a.cgroup_paths,
    })?;

    // The parent moved us into the cgroup while we mounted, and set its
    // limits. From here on everything is charged to it and limited by it,
    // and a new cgroup namespace is rooted at it.
    phase("init: rootfs mounted, waiting for cgroup");
    let seccomp = parent.joined()?;
    if a.plan.creates(LinuxNamespaceType::Cgroup) {
        unshare(CloneFlags::CLONE_NEWCGROUP).sys(|| "unshare cgroup namespace".into())?;
    }

    // prestart and createRuntime hooks run in the runtime's namespaces, by
    // the parent, once the mounts exist and before pivot_root.
    let hooks = spec.hooks().as_ref();
    if hooks.is_some_and(|h| h.prestart().is_some() || h.create_runtime().is_some()) {
        parent.send(&Msg::RunHooks)?;
        parent.expect(
            Msg::HooksDone,
            "during the prestart and createRuntime hooks",
        )?;
    }
    let state_json = |status: &str| {
        serde_json::to_vec(&serde_json::json!({
            "ociVersion": crate::state::OCI_VERSION, "id": a.id, "status": status,
            "pid": std::process::id(), "bundle": a.bundle.dir,
            "annotations": spec.annotations().clone().unwrap_or_default(),
        }))
        .expect("json")
    };
    // createContainer hooks: in the container's namespaces, before pivot_root.
    hooks::run_all(
        hooks.and_then(|h| h.create_container().as_ref()),
        "createContainer",
        &state_json("creating"),
    )?;

    // The executor prepares while host paths are reachable (e.g. a compiled
    // module cache), but already inside the cgroup and namespaces.
    let mut executor = a.executor;
    phase("init: executor prepare");
    executor.prepare(&PrepareContext {
        spec,
        process,
        rootfs: &a.bundle.rootfs,
        root_fd: root_fd.as_fd(),
        state_dir: Some(a.state_dir.as_fd()),
    })?;
    drop(root_fd);
    // The exec fifo, as an O_PATH handle (a FIFO is no directory: nothing
    // can be reached through it); the state directory, the init's last
    // handle on a host directory, goes before the container's root is entered.
    let fifo = openat(
        a.state_dir.as_fd(),
        EXEC_FIFO,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .sys(|| "open exec fifo".into())?;
    drop(a.state_dir);

    phase("init: pivot_root");
    if pivot {
        rootfs::pivot(&a.bundle.rootfs)?;
    } else {
        rootfs::move_root(&a.bundle.rootfs)?;
    }
    // Propagation that pivot_root itself refuses (shared) is set on the
    // new root once it is in place.
    rootfs::set_root_propagation(spec)?;
    // The pty comes from the container's own devpts, so after pivot_root;
    // and before the rootfs is finalised, which may make /dev read-only.
    if let Some(socket) = console_socket(a.console_socket) {
        crate::console::setup(socket, process, true)?;
    }
    // Masked and read-only paths after pivot_root: they name container paths.
    phase("init: masked and read-only paths");
    rootfs::finalize(spec)?;
    enter_process(process, spec.linux().as_ref(), seccomp.as_ref())?;

    // Created: tell the parent, then block until `start` opens the fifo.
    parent.ready()?;
    take_process_umask(process);
    // Blocks until `start` opens the other end.
    let writer = proc
        .reopen(fifo.as_fd(), OFlag::O_WRONLY)
        .sys(|| "open exec fifo".into())?;
    drop(fifo);
    drop(proc);
    write(&writer, b"0").sys(|| "write exec fifo".into())?;
    drop(writer);

    // startContainer hooks: in the container, after start, before the workload.
    hooks::run_all(
        hooks.and_then(|h| h.start_container().as_ref()),
        "startContainer",
        &state_json("running"),
    )?;
    before_exec(process, seccomp.as_ref())?;
    exec_workload(executor, process)
}

fn set_domainname(d: &str) -> Result<()> {
    // SAFETY: pointer and length of a live byte slice.
    if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
        return Err(Error::sys(format!("domainname {d:?}"), nix::Error::last()));
    }
    Ok(())
}
