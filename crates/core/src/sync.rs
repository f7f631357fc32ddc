//! The parent/init conversation: small messages over a SOCK_SEQPACKET pair,
//! so each send is one message and a dead peer reads as end of file.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};

use crate::seccomp::Program;
use crate::{Error, Result};

#[derive(Debug, PartialEq, Eq)]
pub enum Msg {
    /// parent → init: ids are mapped; go on.
    Go,
    /// parent → init: you are in the container's cgroup, its limits are
    /// set, and this is the seccomp program (if the spec has a profile).
    Joined(Option<Program>),
    /// stage 1 → parent: write the id maps of my new user namespace.
    MapIds,
    /// parent → stage 1: the maps are written.
    MapsDone,
    /// stage 1 → parent: the init process, a sibling of mine, has this pid.
    InitPid(i32),
    /// init → parent: run the prestart and createRuntime hooks now.
    RunHooks,
    /// parent → init: they ran.
    HooksDone,
    /// init → parent: set up, now waiting on the exec fifo.
    Ready,
    /// init → parent: set-up failed, with the reason.
    Failed(String),
}

pub struct Channel(OwnedFd);

impl Channel {
    pub fn pair() -> Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| Error::sys("socketpair", e))?;
        Ok((Channel(a), Channel(b)))
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    pub fn send(&self, msg: &Msg) -> Result<()> {
        let mut buf = Vec::with_capacity(8);
        match msg {
            Msg::Go => buf.push(1),
            Msg::MapIds => buf.push(2),
            Msg::MapsDone => buf.push(3),
            Msg::InitPid(p) => {
                buf.push(4);
                buf.extend_from_slice(&p.to_le_bytes());
            }
            Msg::RunHooks => buf.push(5),
            Msg::HooksDone => buf.push(6),
            Msg::Ready => buf.push(7),
            Msg::Joined(seccomp) => {
                buf.push(9);
                if let Some(p) = seccomp {
                    buf.extend_from_slice(&p.to_bytes());
                }
            }
            Msg::Failed(s) => {
                buf.push(8);
                buf.extend_from_slice(&s.as_bytes()[..s.len().min(60_000)]);
            }
        }
        send(self.raw(), &buf, MsgFlags::MSG_NOSIGNAL)
            .map(drop)
            .map_err(|e| Error::sys("send to container init", e))
    }

    /// The next message, or `None` when the other side is gone.
    pub fn recv(&self) -> Result<Option<Msg>> {
        let mut buf = vec![0u8; 65_536];
        let mut reset = false;
        let n = loop {
            match recv(self.raw(), &mut buf, MsgFlags::empty()) {
                Err(nix::errno::Errno::EINTR) => continue,
                // A peer that closes with our messages unread makes the
                // kernel report ECONNRESET first; what it sent before
                // leaving (why it failed) is still queued behind it.
                Err(nix::errno::Errno::ECONNRESET) if !reset => reset = true,
                r => break r.map_err(|e| Error::sys("receive from container init", e))?,
            }
        };
        if n == 0 {
            return Ok(None);
        }
        let body = &buf[1..n];
        Ok(Some(match buf[0] {
            1 => Msg::Go,
            2 => Msg::MapIds,
            3 => Msg::MapsDone,
            4 if body.len() == 4 => Msg::InitPid(i32::from_le_bytes(body.try_into().unwrap())),
            5 => Msg::RunHooks,
            6 => Msg::HooksDone,
            7 => Msg::Ready,
            8 => Msg::Failed(String::from_utf8_lossy(body).into_owned()),
            9 if body.is_empty() => Msg::Joined(None),
            9 => Msg::Joined(Some(Program::from_bytes(body).ok_or_else(|| {
                Error::Init("a malformed seccomp program from the runtime".into())
            })?)),
            t => return Err(Error::Init(format!("unknown sync message {t}"))),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_sees_eof() {
        let (a, b) = Channel::pair().unwrap();
        for m in [
            Msg::Go,
            Msg::InitPid(-7),
            Msg::Failed("x y".into()),
            Msg::Joined(None),
            Msg::Joined(Some(
                crate::seccomp::compile(
                    &crate::seccomp::default_profile(),
                    crate::seccomp::UnknownNames::Refuse,
                    &mut Vec::new(),
                )
                .unwrap(),
            )),
            Msg::Ready,
        ] {
            a.send(&m).unwrap();
            assert_eq!(b.recv().unwrap(), Some(m));
        }
        drop(a);
        assert_eq!(b.recv().unwrap(), None);
    }
}
