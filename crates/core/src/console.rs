//! `process.terminal`: a pty made inside the container's devpts, its master
//! sent over the console socket (SCM_RIGHTS), its slave the init's stdio
//! and controlling terminal and, in a new container, bound at /dev/console
//! (config-linux.md, Default Devices), as runc does (containerd and podman
//! rely on it).

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::{open, OFlag};
use nix::pty::{grantpt, ptsname_r, unlockpt};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::stat::Mode;
use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout, setsid};
use oci_spec::runtime::Process;

use crate::error::SysContext;
use crate::Result;

/// Runs after pivot_root: `/dev/ptmx` is the container's own devpts.
/// `bind_console`: also bind the pty at /dev/console (a new container, not
/// a process joining one).
pub fn setup(socket: OwnedFd, process: &Process, bind_console: bool) -> Result<()> {
    let master = open_ptmx()?;
    grantpt(&master).sys(|| "grantpt".into())?;
    unlockpt(&master).sys(|| "unlockpt".into())?;
    let name = ptsname_r(&master).sys(|| "ptsname".into())?;
    if let Some(size) = process.console_size() {
        let ws = libc::winsize {
            ws_row: size.height() as u16,
            ws_col: size.width() as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ with a pointer to a live winsize.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    // The peer straight from the master (TIOCGPTPEER), not by its name:
    // a running container could have put anything at /dev/pts/N.
    // SAFETY: an ioctl on our own fd that returns a new fd or -1.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    let slave = nix::Error::result(slave).sys(|| format!("open {name} (TIOCGPTPEER)"))?;
    // SAFETY: the ioctl returned a new fd we own.
    let slave = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(slave) };
    if bind_console {
        bind_dev_console(&slave)?;
    }
    let fds = [master.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(name.as_bytes())],
        &cmsg,
        MsgFlags::empty(),
        None,
    )
    .sys(|| "send the pty master over --console-socket".into())?;
    drop(master);
    drop(socket);
    // The init leads a session of its own already; a process `exec`
    // adds with a terminal gets one here.
    if nix::unistd::getsid(None).ok() != Some(nix::unistd::getpid()) {
        setsid().sys(|| "setsid".into())?;
    }
    // SAFETY: TIOCSCTTY on our own fd.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        return Err(crate::Error::sys(
            "make the pty the controlling terminal",
            nix::Error::last(),
        ));
    }
    dup2_stdin(&slave).sys(|| "dup pty to stdin".into())?;
    dup2_stdout(&slave).sys(|| "dup pty to stdout".into())?;
    dup2_stderr(&slave).sys(|| "dup pty to stderr".into())?;
    Ok(())
}

/// A new pty master from the container's `/dev/ptmx`, resolved inside its
/// root (a running container may have replaced it with a link) and checked
/// to be the multiplexer (5:2) before it is opened, through our procfs.
fn open_ptmx() -> Result<nix::pty::PtyMaster> {
    use std::os::fd::AsFd;
    let what = || "process.terminal: open /dev/ptmx (is /dev/pts mounted?)".to_string();
    let root = open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .sys(what)?;
    let ptmx = crate::paths::open_in_root(
        root.as_fd(),
        std::path::Path::new("/dev/ptmx"),
        crate::paths::Create::Nothing,
    )
    .map_err(|e| crate::Error::Init(format!("{}: {e}", what())))?;
    let st = nix::sys::stat::fstat(&ptmx).sys(what)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR || st.st_rdev != nix::sys::stat::makedev(5, 2) {
        return Err(crate::Error::Init(format!(
            "{}: not the pty multiplexer (5:2)",
            what()
        )));
    }
    let master = crate::procfs::handle()?
        .reopen(ptmx.as_fd(), OFlag::O_RDWR | OFlag::O_NOCTTY)
        .sys(what)?;
    // SAFETY: checked above to be the multiplexer, so a pty master.
    Ok(unsafe { nix::pty::PtyMaster::from_owned_fd(master) })
}

/// Bind the pty over /dev/console. The rootfs is the container's, and by
/// now its /proc is mounted: a /dev or /dev/console that is a symlink (or
/// a /dev on procfs) could turn the bind into one over a kernel file
/// (CVE-2025-52565). So /dev is opened without following anything, an
/// image's /dev/console symlink is replaced (as runc does), never
/// followed, the target is checked to be a plain file or a device node,
/// and the pty is mounted onto that checked fd (open_tree, move_mount),
/// with no path through /proc.
fn bind_dev_console(pty: &OwnedFd) -> Result<()> {
    use nix::errno::Errno;
    use nix::fcntl::{openat, openat2, OpenHow, ResolveFlag};
    use nix::sys::stat::{fstat, SFlag};
    use std::os::fd::AsFd;

    let dev = open(
        "/dev",
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .sys(|| "process.terminal: open /dev for /dev/console (is /dev a symlink?)".into())?;
    let fs = nix::sys::statfs::fstatfs(&dev).sys(|| "statfs /dev".into())?;
    let fs_type = fs.filesystem_type();
    if fs_type == nix::sys::statfs::PROC_SUPER_MAGIC || fs_type == nix::sys::statfs::SYSFS_MAGIC {
        return Err(crate::Error::Init(
            "process.terminal: /dev is on procfs or sysfs; refusing to bind the console there"
                .into(),
        ));
    }
    // O_PATH|O_NOFOLLOW opens a symlink itself: its type tells.
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let kind_of = |fd: &OwnedFd| -> Result<SFlag> {
        Ok(
            SFlag::from_bits_truncate(fstat(fd).sys(|| "stat /dev/console".into())?.st_mode)
                & SFlag::S_IFMT,
        )
    };
    let existing = match openat2(dev.as_fd(), "console", how) {
        Ok(fd) if kind_of(&fd)? == SFlag::S_IFLNK => {
            // A symlink of the image's: replaced, never followed.
            nix::unistd::unlinkat(
                dev.as_fd(),
                "console",
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            )
            .sys(|| "process.terminal: remove the /dev/console symlink".into())?;
            None
        }
        Ok(fd) => Some(fd),
        Err(Errno::ENOENT) => None,
        Err(e) => return Err(crate::Error::sys("process.terminal: open /dev/console", e)),
    };
    let target = match existing {
        Some(fd) => fd,
        None => {
            openat(
                dev.as_fd(),
                "console",
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .sys(|| "process.terminal: create /dev/console".into())?;
            openat2(dev.as_fd(), "console", how)
                .sys(|| "process.terminal: open /dev/console".into())?
        }
    };
    let kind = kind_of(&target)?;
    if kind != SFlag::S_IFREG && kind != SFlag::S_IFCHR {
        return Err(crate::Error::Init(
            "process.terminal: /dev/console is neither a file nor a device node".into(),
        ));
    }
    crate::rootfs::bind_opened(pty.as_fd(), target.as_fd())
        .sys(|| "process.terminal: bind the pty at /dev/console".into())
}
