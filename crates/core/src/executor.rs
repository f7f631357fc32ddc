//! The executor contract: what runs the workload once the envelope is set up.
//! Both phases run inside the container's init process.

use std::os::fd::BorrowedFd;
use std::path::Path;

use oci_spec::runtime::{Process, Spec};

use crate::Result;

/// What an executor may look at while preparing.
pub struct PrepareContext<'a> {
    pub spec: &'a Spec,
    pub process: &'a Process,
    /// The rootfs as a host path (still reachable: this is before pivot_root).
    pub rootfs: &'a Path,
    /// The rootfs, opened; resolve paths with [`crate::rootfs::open_in_root`]
    /// so symlinks cannot lead outside it.
    pub root_fd: BorrowedFd<'a>,
}

pub trait Executor {
    /// A short name recorded in the container's state ("native", "wasm").
    fn name(&self) -> &'static str;

    /// Fds the executor opened in the runtime and needs in the init; every
    /// other fd beyond the preserved ones is closed there first thing.
    fn inherited_fds(&self) -> Vec<std::os::fd::RawFd> {
        Vec::new()
    }

    /// Runs after namespaces, cgroup and mounts are set up and before
    /// pivot_root. Errors here fail `create`.
    fn prepare(&mut self, ctx: &PrepareContext) -> Result<()>;

    /// Runs after `start` released the container, with credentials,
    /// capabilities and no_new_privs applied. Never returns on success.
    fn exec(self: Box<Self>, process: &Process) -> crate::Error;
}
