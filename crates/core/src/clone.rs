//! Cloning a child of the runtime into new namespaces and its cgroup: the
//! container's init (see [`crate::launch`]) and the init's own children.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sched::CloneFlags;

use crate::error::SysContext;
use crate::{Error, Result};

/// A v1 hierarchy's `tasks` file the child writes itself into.
pub struct CgroupTasks {
    pub fd: OwnedFd,
    pub path: std::path::PathBuf,
}

impl CgroupTasks {
    /// Move the calling thread (the whole process: it has one) here.
    pub(crate) fn join_self(&self) -> Result<()> {
        nix::unistd::write(&self.fd, b"0")
            .sys(|| format!("join cgroup: write {}", self.path.display()))?;
        Ok(())
    }
}

/// clone3(2) with namespace flags and CLONE_INTO_CGROUP: fork-like (no
/// CLONE_VM, no stack of its own), the child born in the cgroup of
/// `cgroup`. Ok(None) where the kernel has no clone3 or cannot place it so
/// (then the caller clones and migrates the child itself).
pub(crate) fn clone_into_cgroup(flags: CloneFlags, cgroup: &OwnedFd) -> Result<Option<i32>> {
    // SAFETY: amphi clones its init only while single-threaded.
    match unsafe { clone3(flags, Some(cgroup.as_fd())) } {
        Ok(pid) => Ok(Some(pid)),
        Err(nix::Error::ENOSYS | nix::Error::E2BIG | nix::Error::EINVAL) => Ok(None),
        Err(e) => Err(Error::sys(
            format!("clone3({flags:?}, CLONE_INTO_CGROUP)"),
            e,
        )),
    }
}

/// clone3(2), fork-like (no CLONE_VM, no stack of its own), with namespace
/// `flags` and, given a cgroup directory, the child born in that cgroup
/// (CLONE_INTO_CGROUP). Returns 0 in the child.
///
/// # Safety
/// As for fork: the caller must be single-threaded (the child continues on
/// a copy of this stack, and no other thread's locks come with it).
pub unsafe fn clone3(flags: CloneFlags, cgroup: Option<BorrowedFd>) -> nix::Result<i32> {
    /// The kernel's `struct clone_args`, version 2 (with `cgroup`).
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let mut args = CloneArgs {
        flags: flags.bits() as u32 as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(cg) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = cg.as_raw_fd() as u64;
    }
    // SAFETY: the caller upholds fork's contract; the kernel copies
    // `args`, which outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    nix::Error::result(r).map(|pid| pid as i32)
}

/// fork(2) with namespace flags. The caller must be single-threaded: the
/// child continues on a copy of this stack.
pub(crate) fn clone(flags: CloneFlags) -> Result<i32> {
    // SAFETY: raw clone without CLONE_VM behaves as fork; amphi forks only
    // while single-threaded, so no lock is held by a vanished thread.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags.bits() | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if r < 0 {
        return Err(Error::sys(format!("clone({flags:?})"), nix::Error::last()));
    }
    Ok(r as i32)
}

/// Raw fd numbers a child must keep open while closing everything else.
pub(crate) fn keep_fds(fds: &[&dyn AsRawFd]) -> Vec<i32> {
    fds.iter().map(|f| f.as_raw_fd()).collect()
}
