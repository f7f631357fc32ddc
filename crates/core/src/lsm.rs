//! `process.apparmorProfile` and `process.selinuxLabel`: applied on exec
//! where the kernel has the LSM; where it does not, the frontend warns
//! (a label the host cannot enforce is never passed over silently).

use std::path::Path;

use oci_spec::runtime::Process;

use crate::{Error, Result};

/// Which LSMs the host enforces, read once from the host's /sys: the
/// init asks before it enters the container's mount namespace
/// ([`probe`]), so a container's own `/sys` can never say "disabled".
fn enabled() -> (bool, bool) {
    static ENABLED: std::sync::OnceLock<(bool, bool)> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        (
            std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
                .is_ok_and(|s| s.trim() == "Y"),
            Path::new("/sys/fs/selinux/enforce").exists(),
        )
    })
}

/// Read the host's LSM state now, while /sys is the host's.
pub fn probe() {
    enabled();
}

fn apparmor_enabled() -> bool {
    enabled().0
}

fn selinux_enabled() -> bool {
    enabled().1
}

/// What the spec asks for that this host cannot enforce.
pub fn warnings(process: Option<&Process>) -> Vec<String> {
    let mut out = Vec::new();
    let Some(p) = process else { return out };
    if let Some(profile) = p.apparmor_profile().as_deref().filter(|s| !s.is_empty()) {
        if !apparmor_enabled() {
            out.push(format!(
                "process.apparmorProfile {profile:?} is not applied: AppArmor is not enabled in this kernel"
            ));
        }
    }
    if let Some(label) = p.selinux_label().as_deref().filter(|s| !s.is_empty()) {
        if !selinux_enabled() {
            out.push(format!(
                "process.selinuxLabel {label:?} is not applied: SELinux is not enabled in this kernel"
            ));
        }
    }
    out
}

/// Set the labels the next execve takes on (in the init, last before exec).
pub fn apply_on_exec(p: &Process) -> Result<()> {
    if let Some(profile) = p.apparmor_profile().as_deref().filter(|s| !s.is_empty()) {
        if apparmor_enabled() {
            write_exec_attr(&["apparmor/exec", "exec"], &format!("exec {profile}")).map_err(
                |(attr, e)| {
                    Error::Init(format!(
                        "process.apparmorProfile {profile:?}: write /proc/thread-self/attr/{attr}: {} \
                         (is the profile loaded?)",
                        e.desc()
                    ))
                },
            )?;
        }
    }
    if let Some(label) = p.selinux_label().as_deref().filter(|s| !s.is_empty()) {
        if selinux_enabled() {
            write_exec_attr(&["exec"], label).map_err(|(attr, e)| {
                Error::Init(format!(
                    "process.selinuxLabel {label:?}: write /proc/thread-self/attr/{attr}: {}",
                    e.desc()
                ))
            })?;
        }
    }
    Ok(())
}

/// Write the first of `attrs` (below the calling thread's `attr/`) that
/// exists, through the runtime's own procfs: the container's `/proc` may
/// lead anywhere (CVE-2025-52881).
fn write_exec_attr(attrs: &[&'static str], value: &str) -> Result<(), (&'static str, nix::Error)> {
    let proc = crate::procfs::handle().map_err(|_| (attrs[0], nix::Error::EIO))?;
    let mut last = (attrs[0], nix::Error::ENOENT);
    for attr in attrs {
        match proc.open_thread_self(&format!("attr/{attr}"), nix::fcntl::OFlag::O_WRONLY) {
            Ok(fd) => {
                return nix::unistd::write(&fd, value.as_bytes())
                    .map(drop)
                    .map_err(|e| (*attr, e))
            }
            Err(e) => last = (*attr, e),
        }
    }
    Err(last)
}
