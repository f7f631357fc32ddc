//! The messages between the server and a function worker, over their
//! SOCK_SEQPACKET socket: one JSON message each, with the fds it carries.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

/// The largest message either side sends (an invocation's head and CGI
/// variables; a connection's unread bytes, hex, up to twice
/// `invocation::MAX_REQUEST_HEAD` of them).
pub const MAX_MESSAGE: usize = 512 << 10;

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ToWorker {
    /// Run one invocation; fds: its stream socket, its stderr pipe.
    Invoke {
        id: u64,
        /// CGI variables (and the function's own environment).
        env: Vec<(String, String)>,
        /// For wasi:http functions: the request head.
        head: Option<Head>,
    },
    /// The host gave up on an invocation (timeout): kill it.
    Cancel { id: u64 },
    /// Serve the function's own port; fd: its listening socket.
    Listen {
        /// Whether the server traces invocations.
        traced: bool,
        /// Whether the envelope was made for a waiting connection: its
        /// first request is a cold start.
        cold: bool,
    },
    /// Serve a connection of the server's port whose next request is
    /// the function's; fd: the connection.
    Connection {
        traced: bool,
        /// The envelope was made for this connection's request: from when
        /// to when (nanoseconds since the epoch), for its trace.
        cold: Option<(u64, u64)>,
        local: SocketAddr,
        remote: SocketAddr,
        /// What the server read of the connection already.
        #[serde(with = "hex_bytes")]
        read: Vec<u8>,
    },
    /// Stop accepting, finish what is in flight, give every connection
    /// of the server's port back, then say [`FromWorker::Drained`].
    Drain,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Head {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum FromWorker {
    Done(Done),
    /// An outgoing request; fd: the stream socket to proxy it on.
    Outbound,
    /// Requests the worker served on the function's own port.
    Served {
        reports: Vec<Served>,
    },
    /// A request on a connection of the server's port that is another
    /// function's (or the server's own): the server answers it; fd: the
    /// stream socket the worker sends it on, as HTTP/1.1.
    Forward {
        local: SocketAddr,
        remote: SocketAddr,
    },
    /// A connection of the server's port given back, between two
    /// requests; fd: the connection.
    Returned {
        local: SocketAddr,
        remote: SocketAddr,
        /// What the worker read of the connection and did not serve.
        #[serde(with = "hex_bytes")]
        read: Vec<u8>,
    },
    /// The port and the connections are given back and nothing is in
    /// flight.
    Drained,
}

/// Bytes as a hex string: half the size of JSON's array of numbers.
mod hex_bytes {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(2 * bytes.len());
        for b in bytes {
            out.push(DIGITS[usize::from(b >> 4)] as char);
            out.push(DIGITS[usize::from(b & 15)] as char);
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <&str>::deserialize(d)?;
        if text.len() % 2 != 0 {
            return Err(D::Error::custom("odd hex length"));
        }
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(D::Error::custom))
            .collect()
    }
}

/// What the server logs, counts and traces of a request served on the
/// function's own port.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Served {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Nanoseconds since the epoch.
    pub started: u64,
    pub ended: u64,
    pub cold: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The `amphi_errors_total` kind (overload, too_large, timeout, crash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    /// Timed steps (queue, run, instance, guest) as in [`Done::phases`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<(String, u64, u64)>,
    /// Requests in flight on the port when this one ended.
    pub in_flight: usize,
    /// The client's `traceparent`, and the one the function got (when
    /// tracing): the server exports the span the second one names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<(Option<String>, String)>,
}

impl Served {
    /// At least the bytes of its JSON: paths escape at most `"` and `\`,
    /// stderr and errors may escape every byte (`\u0000`).
    pub fn size_estimate(&self) -> usize {
        512 + self.method.len()
            + 2 * self.path.len()
            + 6 * (self.stderr.len() + self.error.as_ref().map_or(0, String::len))
    }
}

/// Nanoseconds since the epoch.
pub fn epoch_ns(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// How an invocation ended.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Done {
    pub id: u64,
    pub exit: Option<i32>,
    pub signal: Option<i32>,
    pub error: Option<String>,
    /// Timed steps in the worker (wasm: instance, guest), as names and
    /// nanoseconds since the epoch, for the invocation's trace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<(String, u64, u64)>,
}

/// Send one JSON message, with fds.
pub fn send<T: Serialize>(sock: BorrowedFd, msg: &T, fds: &[RawFd]) -> nix::Result<()> {
    let data = serde_json::to_vec(msg).expect("json");
    let iov = [std::io::IoSlice::new(&data)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None).map(|_| ())
}

/// Receive one message and its fds; None at end of stream.
pub fn recv(sock: BorrowedFd, buf: &mut [u8]) -> nix::Result<Option<(usize, Vec<OwnedFd>)>> {
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: received fds are new and ours alone.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let n = msg.bytes;
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some((n, fds)))
}
