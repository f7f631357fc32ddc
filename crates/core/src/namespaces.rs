//! Which namespaces a container creates and which it joins by path.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::fcntl::{open, OFlag};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

use crate::error::SysContext;
use crate::Result;

/// Bring up `lo` in a network namespace the container created, as runc
/// does: a new namespace's loopback starts down, and without it even
/// 127.0.0.1 is unreachable inside the container.
pub fn loopback_up() -> Result<()> {
    set_loopback_up(&inet_socket()?)
}

fn inet_socket() -> Result<OwnedFd> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .sys(|| "socket for the loopback interface".into())
}

fn set_loopback_up(sock: &OwnedFd) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *to = *from as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into
    // the ifreq we own, which outlives the call.
    let got = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    nix::errno::Errno::result(got).sys(|| "loopback interface: get flags".into())?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the name and flags from our ifreq.
    let set = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    nix::errno::Errno::result(set).sys(|| "loopback interface: set up".into())?;
    Ok(())
}

/// A container's new network namespace, made on a thread of this process
/// while the rest of `create` goes on. Making one costs the kernel about
/// 0.7 ms here (a loopback device, the per-namespace sysctl tables); made
/// by the init's clone, it would come after all the runtime's work before
/// the clone, which takes as long. For a container with no user namespace
/// only: this process's namespace then owns it, as it would own one made
/// by the clone (with a user namespace, the container's must own it).
/// Dropped unused, it waits for the thread, so that the process is single
/// threaded again (the init is a fork-like clone).
pub struct NetworkAhead(Option<std::thread::JoinHandle<Result<OwnedFd>>>);

impl NetworkAhead {
    /// Start making one if `namespaces` asks for a new network namespace
    /// and no user namespace.
    pub fn start(namespaces: &[LinuxNamespace]) -> NetworkAhead {
        let new_net = namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Network && n.path().is_none());
        let userns = namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::User);
        if !new_net || userns {
            return NetworkAhead(None);
        }
        let thread = std::thread::Builder::new()
            .name("amphi-netns".into())
            .stack_size(256 << 10)
            .spawn(make_network);
        NetworkAhead(thread.ok())
    }

    /// The namespace, its loopback up. `None` where none was started or it
    /// could not be made: then the clone makes it, and fails as it would
    /// have.
    pub fn wait(mut self) -> Option<OwnedFd> {
        self.0.take()?.join().ok()?.ok()
    }
}

impl Drop for NetworkAhead {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            let _ = thread.join();
        }
    }
}

/// On its own thread (unshare moves only the calling thread): a new
/// network namespace with `lo` up, as a handle from one of its sockets
/// (SIOCGSKNS), without going through procfs.
fn make_network() -> Result<OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    nix::sched::unshare(CloneFlags::CLONE_NEWNET).sys(|| "unshare network namespace".into())?;
    let sock = inet_socket()?;
    set_loopback_up(&sock)?;
    // SAFETY: SIOCGSKNS takes no argument and returns a new fd.
    let fd = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGSKNS) };
    nix::errno::Errno::result(fd).sys(|| "network namespace of a socket (SIOCGSKNS)".into())?;
    // SAFETY: the kernel just gave us this fd, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

/// A namespace to join, opened by the parent while host paths are reachable.
pub struct Join {
    pub typ: LinuxNamespaceType,
    pub path: PathBuf,
    pub fd: OwnedFd,
}

/// The namespace plan of one container.
pub struct Plan {
    /// Namespaces to create.
    pub new: CloneFlags,
    /// Namespaces to join, user namespace first (joining it grants the
    /// rights to join the others it owns).
    pub join: Vec<Join>,
}

impl Plan {
    pub fn from_spec(namespaces: &[LinuxNamespace]) -> Result<Plan> {
        let mut plan = Plan {
            new: CloneFlags::empty(),
            join: Vec::new(),
        };
        for ns in namespaces {
            match ns.path() {
                None => plan.new |= flag(ns.typ()),
                Some(path) => {
                    let fd = open(
                        path.as_path(),
                        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .sys(|| {
                        format!(
                            "linux.namespaces: open {} namespace {}",
                            ns.typ(),
                            path.display()
                        )
                    })?;
                    plan.join.push(Join {
                        typ: ns.typ(),
                        path: path.clone(),
                        fd,
                    });
                }
            }
        }
        plan.join.sort_by_key(|j| j.typ != LinuxNamespaceType::User);
        Ok(plan)
    }

    /// The namespaces created at clone (or unshare) time. A cgroup
    /// namespace is made later, once the init is in its cgroup; a time
    /// namespace too, since its offsets must be written before any process
    /// enters it (and clone(2) has no bit for it).
    pub fn clone_flags(&self) -> CloneFlags {
        self.new - CloneFlags::CLONE_NEWCGROUP - flag(LinuxNamespaceType::Time)
    }

    /// Join `ns`, a new network namespace made ahead ([`NetworkAhead`]),
    /// instead of making one in the clone.
    pub fn join_network_made_ahead(&mut self, ns: &OwnedFd) -> Result<()> {
        if !self.creates(LinuxNamespaceType::Network) || self.has_userns() {
            return Ok(());
        }
        let fd = ns
            .try_clone()
            .map_err(|e| crate::Error::io("dup", "the network namespace made ahead", e))?;
        self.new -= CloneFlags::CLONE_NEWNET;
        self.join.push(Join {
            typ: LinuxNamespaceType::Network,
            path: PathBuf::from("(new, made ahead)"),
            fd,
        });
        Ok(())
    }

    pub fn creates(&self, t: LinuxNamespaceType) -> bool {
        self.new.contains(flag(t))
    }

    pub fn joins(&self, t: LinuxNamespaceType) -> Option<&Join> {
        self.join.iter().find(|j| j.typ == t)
    }

    /// Joining a pid or user namespace takes an intermediate process that
    /// joins and then forks the init (setns to a pid namespace applies to
    /// children only).
    pub fn needs_intermediate(&self) -> bool {
        self.joins(LinuxNamespaceType::Pid).is_some()
            || self.joins(LinuxNamespaceType::User).is_some()
    }

    /// The container has a user namespace of its own (created or joined).
    pub fn has_userns(&self) -> bool {
        self.creates(LinuxNamespaceType::User) || self.joins(LinuxNamespaceType::User).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespaces(json: serde_json::Value) -> Vec<LinuxNamespace> {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn new_namespaces_and_what_waits() {
        let plan = Plan::from_spec(&namespaces(serde_json::json!([
            {"type": "pid"}, {"type": "mount"}, {"type": "cgroup"}, {"type": "time"}, {"type": "user"}
        ])))
        .unwrap();
        assert!(plan.creates(LinuxNamespaceType::Cgroup) && plan.has_userns());
        assert!(!plan.needs_intermediate());
        // cgroup and time are made later, once there is something to root them at.
        assert_eq!(
            plan.clone_flags(),
            CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUSER
        );
    }

    #[test]
    fn joined_namespaces_user_first() {
        let plan = Plan::from_spec(&namespaces(serde_json::json!([
            {"type": "network", "path": "/proc/self/ns/net"},
            {"type": "user", "path": "/proc/self/ns/user"},
            {"type": "uts"}
        ])))
        .unwrap();
        assert_eq!(plan.join[0].typ, LinuxNamespaceType::User);
        assert!(plan.needs_intermediate());
        assert!(plan.has_userns() && !plan.creates(LinuxNamespaceType::User));
        assert_eq!(plan.clone_flags(), CloneFlags::CLONE_NEWUTS);
        let missing = Plan::from_spec(&namespaces(serde_json::json!([
            {"type": "ipc", "path": "/nonexistent/ns"}
        ])));
        assert!(missing
            .err()
            .unwrap()
            .to_string()
            .contains("/nonexistent/ns"));
    }
}
