//! Seccomp profiles as clients hand them to a runtime.

use oci_spec::runtime::LinuxSeccomp;
use serde_json::{json, Value};

/// podman's stock profile (containers-common).
pub const CONTAINERS_PROFILE: &str = "/usr/share/containers/seccomp.json";

/// podman's default capabilities (containers.conf `default_capabilities`).
pub const PODMAN_CAPS: [&str; 11] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

/// containers/common's profile format, resolved for amd64 and `caps`, as
/// podman does: entries whose `includes` are met and `excludes` are not.
pub fn resolve_containers_profile(profile: &Value, caps: &[&str]) -> LinuxSeccomp {
    // The strings of `v[key]` (an `includes` or `excludes` list).
    let strings = |v: &Value, key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(String::from))
            .collect()
    };
    let arches_of = |v: &Value| strings(v, "arches");
    let caps_of = |v: &Value| strings(v, "caps");
    let ours = |a: &String| a == "amd64";
    let mut syscalls = Vec::new();
    for s in profile["syscalls"].as_array().unwrap() {
        let (inc, exc) = (&s["includes"], &s["excludes"]);
        let inc_arches = arches_of(inc);
        if !inc_arches.is_empty() && !inc_arches.iter().any(ours) {
            continue;
        }
        if !caps_of(inc).iter().all(|c| caps.contains(&c.as_str())) {
            continue;
        }
        if arches_of(exc).iter().any(ours)
            || caps_of(exc).iter().any(|c| caps.contains(&c.as_str()))
        {
            continue;
        }
        let mut entry = json!({"names": s["names"], "action": s["action"]});
        if let Some(e) = s.get("errnoRet").filter(|e| !e.is_null()) {
            entry["errnoRet"] = e.clone();
        }
        if let Some(a) = s
            .get("args")
            .filter(|a| a.as_array().is_some_and(|a| !a.is_empty()))
        {
            entry["args"] = a.clone();
        }
        syscalls.push(entry);
    }
    serde_json::from_value(json!({
        "defaultAction": profile["defaultAction"],
        "defaultErrnoRet": profile["defaultErrnoRet"],
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls,
    }))
    .unwrap()
}
