//! The runtime's own procfs, for what the container's init (and what it
//! forks) reads and writes of its own process: oom_score_adj, sysctls,
//! the time namespace's offsets, LSM labels, its fds.
//!
//! Never the container's `/proc`: a container without a procfs mount may
//! plant `/proc/self/...` as symlinks, and one with CAP_SYS_ADMIN may
//! cover its `/proc` with something else, so a write through it lands
//! where the container points (CVE-2025-52881, 2019-19921). The handle is
//! a procfs instance of the init's own (`fsopen`), or a clone of the
//! `/proc` mount without what is mounted below it (`open_tree`), or, on a
//! kernel with neither, `/proc` itself; it is opened before the init joins
//! any of the container's mount namespaces, so the last two are the
//! host's. It is checked to be procfs's root, and every lookup in it
//! follows no symlink and crosses no mount; only the last component of a
//! magic link of the process's own (an fd, a namespace) is followed.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, readlinkat, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::{Error, Result};

pub struct ProcFs {
    root: OwnedFd,
}

/// The procfs of this process, opened at the first use. The init opens it
/// first thing (`init::run`), before it joins a mount namespace.
static HANDLE: Mutex<Option<Arc<ProcFs>>> = Mutex::new(None);

/// Set once the handle was released: the process may be in the
/// container's mount namespace by then, so only a new instance will do.
static RELEASED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// This process's procfs handle.
pub fn handle() -> Result<Arc<ProcFs>> {
    let mut h = HANDLE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = h.as_ref() {
        return Ok(p.clone());
    }
    let p = Arc::new(if RELEASED.load(std::sync::atomic::Ordering::Relaxed) {
        new_instance()
            .map_err(|e| Error::sys("open a procfs instance of the runtime's own", e))
            .and_then(ProcFs::checked)?
    } else {
        ProcFs::open()?
    });
    *h = Some(p.clone());
    Ok(p)
}

/// Drop the handle: a procfs opened before the init entered the
/// container's pid namespace shows the host's processes, and nothing of
/// the host's may stay open once the workload runs. Any later handle is a
/// new instance, never a `/proc` the container could have replaced.
pub fn release() {
    RELEASED.store(true, std::sync::atomic::Ordering::Relaxed);
    HANDLE.lock().unwrap_or_else(|p| p.into_inner()).take();
}

impl ProcFs {
    pub fn open() -> Result<Self> {
        let root = new_instance()
            .or_else(|_| detached_clone())
            .or_else(|_| {
                nix::fcntl::open(
                    "/proc",
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
                    Mode::empty(),
                )
            })
            .map_err(|e| Error::sys("open a procfs of the runtime's own", e))?;
        Self::checked(root)
    }

    fn checked(root: OwnedFd) -> Result<Self> {
        let fs = nix::sys::statfs::fstatfs(&root).map_err(|e| Error::sys("statfs procfs", e))?;
        let st = nix::sys::stat::fstat(&root).map_err(|e| Error::sys("stat procfs", e))?;
        // procfs's root directory is inode 1 (PROC_ROOT_INO).
        if fs.filesystem_type() != nix::sys::statfs::PROC_SUPER_MAGIC || st.st_ino != 1 {
            return Err(Error::Init(
                "the runtime's procfs handle is not procfs's root; refusing it".into(),
            ));
        }
        Ok(ProcFs { root })
    }

    /// `rel` inside the handle, following nothing and crossing no mount.
    fn beneath(&self, rel: &str, flags: OFlag) -> nix::Result<OwnedFd> {
        let how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
        loop {
            match openat2(self.root.as_fd(), rel, how) {
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                r => return r,
            }
        }
    }

    /// This process's directory (`self`) or its calling thread's
    /// (`thread-self`), as the pid(s) this procfs knows it by: the symlink
    /// is read, never followed.
    fn own_dir(&self, which: &str) -> nix::Result<String> {
        let link = readlinkat(self.root.as_fd(), which)?;
        link.into_string().map_err(|_| Errno::EINVAL)
    }

    /// A file of this process (`self/<rel>`).
    pub fn open_self(&self, rel: &str, flags: OFlag) -> nix::Result<OwnedFd> {
        self.beneath(&format!("{}/{rel}", self.own_dir("self")?), flags)
    }

    /// A file of the calling thread (`thread-self/<rel>`): LSM attributes
    /// are a thread's own.
    pub fn open_thread_self(&self, rel: &str, flags: OFlag) -> nix::Result<OwnedFd> {
        self.beneath(&format!("{}/{rel}", self.own_dir("thread-self")?), flags)
    }

    pub fn write_self(&self, rel: &str, data: &str) -> nix::Result<()> {
        let fd = self.open_self(rel, OFlag::O_WRONLY)?;
        write_all(fd.as_fd(), data.as_bytes())
    }

    pub fn read_self(&self, rel: &str) -> nix::Result<String> {
        let fd = self.open_self(rel, OFlag::O_RDONLY)?;
        let mut s = String::new();
        std::fs::File::from(fd)
            .read_to_string(&mut s)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        Ok(s)
    }

    /// A number of this process's `status` (`Threads`, `RssAnon` in kB),
    /// its unit left out.
    pub fn self_status_number(&self, field: &str) -> Option<u64> {
        let status = self.read_self("status").ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Set a sysctl (`net.ipv4.ip_forward`) for the namespaces this
    /// process is in.
    pub fn write_sysctl(&self, key: &str, value: &str) -> nix::Result<()> {
        let rel = format!("sys/{}", key.replace('.', "/"));
        if rel.split('/').any(|c| c.is_empty() || c == "..") {
            return Err(Errno::EINVAL);
        }
        let fd = self.beneath(&rel, OFlag::O_WRONLY)?;
        write_all(fd.as_fd(), value.as_bytes())
    }

    /// A magic link of this process's (`fd/3`, `ns/time_for_children`),
    /// followed: the directory holding it is resolved as everything else
    /// here, and only the link itself is followed, which leads to an
    /// object the process holds already.
    pub fn open_own_link(&self, rel: &str, flags: OFlag) -> nix::Result<OwnedFd> {
        let (dir, name) = rel.rsplit_once('/').ok_or(Errno::EINVAL)?;
        let dir = self.open_self(dir, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        openat(dir.as_fd(), name, flags | OFlag::O_CLOEXEC, Mode::empty())
    }

    /// Open what `fd` (an O_PATH handle) names again, with `flags`.
    pub fn reopen(&self, fd: BorrowedFd, flags: OFlag) -> nix::Result<OwnedFd> {
        self.open_own_link(&format!("fd/{}", fd.as_raw_fd()), flags)
    }
}

fn write_all(fd: BorrowedFd, mut data: &[u8]) -> nix::Result<()> {
    while !data.is_empty() {
        let n = nix::unistd::write(fd, data)?;
        data = &data[n..];
    }
    Ok(())
}

/// A procfs instance of this process's own (its pid namespace), mounted
/// nowhere.
fn new_instance() -> nix::Result<OwnedFd> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    // SAFETY: a NUL-terminated name; the result is a new fd or -1.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, c"proc".as_ptr(), FSOPEN_CLOEXEC) };
    // SAFETY: fsopen returned a new fd we own.
    let fs = unsafe { OwnedFd::from_raw_fd(Errno::result(fs)? as i32) };
    // SAFETY: the create command takes no key or value.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    Errno::result(r)?;
    let attrs = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOEXEC;
    // SAFETY: fsmount on the fs context we own; the result is a new fd or -1.
    let m = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) };
    // SAFETY: fsmount returned a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(Errno::result(m)? as i32) })
}

/// `/proc`'s mount alone, cloned and detached: nothing mounted below it
/// comes with it.
fn detached_clone() -> nix::Result<OwnedFd> {
    // SAFETY: a NUL-terminated path; the result is a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c"/proc".as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_SYMLINK_NOFOLLOW as u32,
        )
    };
    // SAFETY: open_tree returned a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(Errno::result(fd)? as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_numbers_of_its_own_status() {
        let p = ProcFs::open().unwrap();
        assert!(p.self_status_number("Threads").is_some_and(|n| n >= 1));
        assert!(p.self_status_number("RssAnon").is_some_and(|kib| kib > 0));
        assert_eq!(p.self_status_number("NoSuchField"), None);
    }

    #[test]
    fn reads_and_reopens_through_its_own_instance() {
        let p = ProcFs::open().unwrap();
        let status = p.read_self("status").unwrap();
        assert!(status.contains("Pid:"), "{status}");
        let f = std::fs::File::open("/dev/null").unwrap();
        let path =
            nix::fcntl::open("/dev/null", OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()).unwrap();
        let again = p.reopen(path.as_fd(), OFlag::O_RDONLY).unwrap();
        let (a, b) = (
            nix::sys::stat::fstat(&f).unwrap(),
            nix::sys::stat::fstat(&again).unwrap(),
        );
        assert_eq!((a.st_dev, a.st_ino), (b.st_dev, b.st_ino));
        // A key that tries to leave /proc/sys is refused before any lookup.
        assert_eq!(p.write_sysctl("..", "1"), Err(Errno::EINVAL));
        assert_eq!(p.write_sysctl("kernel/../../x", "1"), Err(Errno::EINVAL));
    }
}
