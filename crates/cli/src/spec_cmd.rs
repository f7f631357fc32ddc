//! `amphi spec` and `amphi features`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{ProcessBuilder, Spec};

/// Write a default config.json: runc's defaults (namespaces, masked and
/// read-only paths, a minimal capability set, no new privileges) plus a
/// seccomp profile like the common container default, running `sh` without
/// a terminal.
pub fn write(bundle: &Path, rootless: bool) -> Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        bail!(
            "{} exists already: remove it or choose another --bundle",
            path.display()
        );
    }
    let mut spec = if rootless {
        Spec::rootless(
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    } else {
        Spec::default()
    };
    let mut process = spec
        .process()
        .clone()
        .unwrap_or_else(|| ProcessBuilder::default().build().expect("default"));
    process.set_terminal(Some(false));
    // runc has written no inheritable or ambient set since 1.1.2: with
    // them, an exec'd program with file capabilities gains what the
    // bounding set allows (CVE-2022-29162).
    if let Some(mut caps) = process.capabilities().clone() {
        caps.set_inheritable(None);
        caps.set_ambient(None);
        process.set_capabilities(Some(caps));
    }
    spec.set_process(Some(process));
    spec.set_hostname(Some("amphi".into()));
    let mut json = serde_json::to_value(&spec)?;
    json["linux"]["seccomp"] = amphi_core::seccomp::default_profile_json();
    let json = serde_json::to_string_pretty(&json)?;
    std::fs::write(&path, json + "\n").with_context(|| format!("write {}", path.display()))
}

pub fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": [
            "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "mand",
            "noatime", "nodev", "nodiratime", "noexec", "nomand", "norelatime", "nostrictatime",
            "nosuid", "private", "ratime", "rbind", "rdev", "rdiratime", "relatime", "remount",
            "rexec", "rnoatime", "rnodev", "rnodiratime", "rnoexec", "rnorelatime",
            "rnostrictatime", "rnosuid", "rnosymfollow", "ro", "rprivate", "rrelatime", "rro",
            "rrw", "rshared", "rslave", "rstrictatime", "rsuid", "rsymfollow", "runbindable",
            "rw", "shared", "slave", "strictatime", "suid", "sync", "unbindable"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"],
            "capabilities": caps::all().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "cgroup": {"v1": true, "v2": true, "systemd": true, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                            "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                              "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": if cfg!(target_arch = "x86_64") {
                    vec!["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32"]
                } else {
                    vec!["SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"]
                },
                "knownFlags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
                "supportedFlags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]
            },
            "apparmor": {"enabled": std::path::Path::new("/sys/module/apparmor").exists()},
            "selinux": {"enabled": std::path::Path::new("/sys/fs/selinux/enforce").exists()},
            "intelRdt": {"enabled": false}
        },
        "annotations": {
            "io.github.amphi.executors": "native,wasm",
            "io.github.amphi.executor-annotations": "module.wasm.image/variant, run.oci.handler"
        }
    })
}
