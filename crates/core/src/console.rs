//! `process.terminal`: a pty made inside the container's devpts, its master
//! sent over the console socket (SCM_RIGHTS), its slave the init's stdio
//! and controlling terminal, as runc does (containerd and podman rely on it).

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::{open, OFlag};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::stat::Mode;
use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout, setsid};
use oci_spec::runtime::Process;

use crate::error::SysContext;
use crate::Result;

/// Runs after pivot_root: `/dev/ptmx` is the container's own devpts.
pub fn setup(socket: OwnedFd, process: &Process) -> Result<()> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .sys(|| "process.terminal: open /dev/ptmx (is /dev/pts mounted?)".into())?;
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
    let slave = open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .sys(|| format!("open {name}"))?;
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
    setsid().sys(|| "setsid".into())?;
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
