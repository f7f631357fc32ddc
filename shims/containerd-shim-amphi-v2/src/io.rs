//! A process's stdio from the FIFOs containerd passes. Without a terminal
//! the output FIFOs are the process's own stdout and stderr (no copying);
//! stdin is pumped from its FIFO through a pipe, so that the process sees
//! EOF when the client closes it. With a terminal, the pty master arrives
//! over a console socket and is pumped to and from the FIFOs.

use std::fs::{File, OpenOptions};
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use crate::amphi::Stdio3;

pub struct Paths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
}

fn open_writer(path: &str) -> std::io::Result<Option<File>> {
    if path.is_empty() {
        return Ok(None);
    }
    // containerd holds the read end open, so this does not block.
    OpenOptions::new().write(true).open(path).map(Some)
}

/// stdin FIFO -> pipe; the read end is the process's stdin.
fn stdin_pipe(path: &str) -> std::io::Result<Option<File>> {
    if path.is_empty() {
        return Ok(None);
    }
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let path = path.to_owned();
    std::thread::spawn(move || {
        // Blocks until the client opens its end.
        if let Ok(mut fifo) = File::open(&path) {
            let mut w = File::from(w);
            let _ = std::io::copy(&mut fifo, &mut w);
        }
    });
    Ok(Some(File::from(r)))
}

/// The stdio of a process without a terminal.
pub fn plain(p: &Paths) -> std::io::Result<Stdio3> {
    Ok(Stdio3 {
        stdin: stdin_pipe(&p.stdin)?,
        stdout: open_writer(&p.stdout)?,
        stderr: open_writer(&p.stderr)?,
    })
}

/// A console socket waiting for the pty master.
pub struct ConsoleSocket {
    pub path: PathBuf,
    receiver: std::thread::JoinHandle<Option<OwnedFd>>,
}

static SOCKETS: AtomicUsize = AtomicUsize::new(0);

impl ConsoleSocket {
    pub fn new() -> std::io::Result<ConsoleSocket> {
        let n = SOCKETS.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("amphi-shim-{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        let receiver = std::thread::spawn(move || {
            let (stream, _) = listener.accept().ok()?;
            let mut buf = [0u8; 4096];
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
            let msg = recvmsg::<()>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .ok()?;
            for c in msg.cmsgs().ok()? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    // SAFETY: the kernel just gave us this fd.
                    return fds.first().map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) });
                }
            }
            None
        });
        Ok(ConsoleSocket { path, receiver })
    }

    /// The master, once `amphi` sent it; None if the command failed
    /// before (the connection below unblocks the receiver).
    pub fn master(self) -> Option<OwnedFd> {
        if !self.receiver.is_finished() {
            let _ = std::os::unix::net::UnixStream::connect(&self.path);
        }
        let master = self.receiver.join().ok().flatten();
        let _ = std::fs::remove_file(&self.path);
        master
    }
}

/// Pump the terminal: master -> stdout FIFO, stdin FIFO -> master.
pub fn pump_terminal(master: &OwnedFd, p: &Paths) -> std::io::Result<()> {
    if let Some(mut out) = open_writer(&p.stdout)? {
        let mut m = File::from(master.try_clone()?);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut m, &mut out);
        });
    }
    if !p.stdin.is_empty() {
        let mut m = File::from(master.try_clone()?);
        let path = p.stdin.clone();
        std::thread::spawn(move || {
            if let Ok(mut fifo) = File::open(&path) {
                let _ = std::io::copy(&mut fifo, &mut m);
            }
        });
    }
    Ok(())
}

pub fn resize(master: &OwnedFd, width: u32, height: u32) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: height as u16,
        ws_col: width as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a pointer to a live winsize.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
