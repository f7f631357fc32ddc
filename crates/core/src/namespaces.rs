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
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .sys(|| "socket for the loopback interface".into())?;
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
