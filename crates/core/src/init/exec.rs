//! A process joining a running container (`exec`), after the steps every
//! init takes: its namespaces were joined by path and its mount namespace
//! has the rootfs as `/` already, so there is no rootfs work and no hook;
//! it waits for its cgroup, prepares the executor, takes on the process's
//! credentials and runs.

use std::convert::Infallible;
use std::os::fd::AsFd;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::{
    before_exec, console_socket, enter_process, exec_workload, take_process_umask, InitArgs, Parent,
};
use crate::error::SysContext;
use crate::executor::PrepareContext;
use crate::Result;

pub(super) fn exec(a: InitArgs, parent: &mut Parent) -> Result<Infallible> {
    let spec = &a.bundle.spec;
    let process = a.bundle.process();
    // A process joining a container needs no host directory.
    drop(a.state_dir);
    let seccomp = parent.joined()?;
    let root_fd = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .sys(|| "open the container's root".into())?;
    let mut executor = a.executor;
    executor.prepare(&PrepareContext {
        spec,
        process,
        rootfs: std::path::Path::new("/"),
        root_fd: root_fd.as_fd(),
        state_dir: None,
    })?;
    drop(root_fd);
    if let Some(socket) = console_socket(a.console_socket) {
        crate::console::setup(socket, process, false)?;
    }
    enter_process(process, spec.linux().as_ref(), seccomp.as_ref())?;
    before_exec(process, seccomp.as_ref())?;
    parent.ready()?;
    take_process_umask(process);
    exec_workload(executor, process)
}
