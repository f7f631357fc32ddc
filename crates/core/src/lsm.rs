//! `process.apparmorProfile` and `process.selinuxLabel`: applied on exec
//! where the kernel has the LSM; where it does not, the frontend warns
//! (a label the host cannot enforce is never passed over silently).

use std::path::Path;

use oci_spec::runtime::Process;

use crate::{Error, Result};

fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y")
}

fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
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
            let attr = if Path::new("/proc/self/attr/apparmor/exec").exists() {
                "/proc/self/attr/apparmor/exec"
            } else {
                "/proc/self/attr/exec"
            };
            std::fs::write(attr, format!("exec {profile}")).map_err(|e| {
                Error::Init(format!(
                    "process.apparmorProfile {profile:?}: write {attr}: {e} (is the profile loaded?)"
                ))
            })?;
        }
    }
    if let Some(label) = p.selinux_label().as_deref().filter(|s| !s.is_empty()) {
        if selinux_enabled() {
            std::fs::write("/proc/self/attr/exec", label).map_err(|e| {
                Error::Init(format!(
                    "process.selinuxLabel {label:?}: write /proc/self/attr/exec: {e}"
                ))
            })?;
        }
    }
    Ok(())
}
