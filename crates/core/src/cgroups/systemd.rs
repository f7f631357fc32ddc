//! The systemd cgroup driver (`--systemd-cgroup`, kubelet's `systemd`
//! cgroup driver): a `slice:prefix:name` cgroupsPath names a transient
//! `prefix-name.scope` unit in `slice`, made through systemd's D-Bus API
//! (StartTransientUnit, with the init's pid, `Delegate=yes` and the
//! resources systemd manages as unit properties), as runc does. The files
//! systemd does not manage, and those it does (so they hold exactly what
//! the spec says), are then written directly; `update` sets the properties
//! again; `delete` stops the unit. Pure cgroup v2 hosts only.
//!
//! D-Bus is spoken by zbus through cgroups-rs's client, which starts
//! threads: every call happens after the init was cloned (amphi forks only
//! while single-threaded).

use std::path::{Path, PathBuf};

use cgroups_rs::systemd::SystemdClient;
use zbus::zvariant::Value;

use super::resources::Write;
use crate::{Error, Result};

/// A transient unit the container's processes live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// The slice it goes in, e.g. `kubepods-besteffort-pod12.slice`.
    pub slice: String,
    /// `prefix-name.scope` (or `name` when it is itself a `.slice`).
    pub name: String,
}

fn bad(why: impl Into<String>) -> Error {
    Error::InvalidSpec {
        file: "config.json".into(),
        field: "linux.cgroupsPath".into(),
        why: why.into(),
    }
}

/// A unit name systemd takes: the characters of unit names, no `/`.
fn valid_unit_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '-' | '\\'))
}

impl Unit {
    /// `slice:prefix:name` (slice may be empty: `system.slice`).
    pub fn parse(path: &str) -> Result<Unit> {
        let parts: Vec<&str> = path.split(':').collect();
        let [slice, prefix, name] = parts[..] else {
            return Err(bad(format!(
                "{path:?}: the systemd driver takes slice:prefix:name (slice may be empty)"
            )));
        };
        if prefix.is_empty() || name.is_empty() {
            return Err(bad(format!(
                "{path:?}: prefix and name must not be empty (slice:prefix:name)"
            )));
        }
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        expand_slice(slice)?;
        if !valid_unit_part(prefix) || !valid_unit_part(name) {
            return Err(bad(format!(
                "{path:?}: prefix and name take letters, digits and : _ . - only"
            )));
        }
        let name = if name.ends_with(".slice") {
            expand_slice(name)?;
            name.to_string()
        } else {
            format!("{prefix}-{name}.scope")
        };
        Ok(Unit {
            slice: slice.into(),
            name,
        })
    }

    /// Where systemd puts the unit's cgroup, below the cgroup2 mount.
    pub fn dir(&self, mount: &Path) -> Result<PathBuf> {
        Ok(mount.join(expand_slice(&self.slice)?).join(&self.name))
    }
}

/// `a-b-c.slice` lives at `a.slice/a-b.slice/a-b-c.slice` (systemd.slice(5));
/// `-.slice` is the root. A name systemd would reject is an error.
pub fn expand_slice(slice: &str) -> Result<String> {
    let reject = |why: &str| bad(format!("slice {slice:?}: {why}"));
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(reject("a slice's name ends with .slice"));
    };
    if stem == "-" {
        return Ok(String::new());
    }
    if !valid_unit_part(stem) || stem.contains('/') {
        return Err(reject(
            "a slice's name takes letters, digits and : _ . - only",
        ));
    }
    if stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
        return Err(reject(
            "dashes separate the levels of a slice; none may be empty",
        ));
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(&prefix);
        path.push_str(".slice");
    }
    Ok(path)
}

/// Whether systemd runs this host (sd_booted(3)).
pub fn running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// The unit properties of the resources systemd manages on v2, from the
/// writes the spec's resources make (the same values, in systemd's units).
pub fn properties(writes: &[Write]) -> Result<Vec<(&'static str, Value<'static>)>> {
    let number = |w: &Write| -> Result<u64> {
        if w.value == "max" {
            return Ok(u64::MAX);
        }
        w.value
            .parse()
            .map_err(|_| Error::Unsupported(format!("{}: {:?} is not a number", w.field, w.value)))
    };
    let mut out: Vec<(&'static str, Value<'static>)> = Vec::new();
    for w in writes {
        match w.file.as_str() {
            "memory.max" => out.push(("MemoryMax", Value::U64(number(w)?))),
            "memory.low" => out.push(("MemoryLow", Value::U64(number(w)?))),
            "memory.swap.max" => out.push(("MemorySwapMax", Value::U64(number(w)?))),
            "pids.max" => out.push(("TasksMax", Value::U64(number(w)?))),
            "cpu.weight" => out.push(("CPUWeight", Value::U64(number(w)?))),
            "cpu.max" => {
                let mut fields = w.value.split(' ');
                let quota = fields.next().unwrap_or("max");
                let period: u64 = fields
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(100_000);
                let per_sec = match quota {
                    "max" => u64::MAX,
                    q => {
                        q.parse::<u64>().map_err(|_| {
                            Error::Unsupported(format!("{}: {:?} is not a quota", w.field, w.value))
                        })? * 1_000_000
                            / period
                    }
                };
                out.push(("CPUQuotaPerSecUSec", Value::U64(per_sec)));
                out.push(("CPUQuotaPeriodUSec", Value::U64(period)));
            }
            "cpuset.cpus" | "cpuset.mems" => {
                let (name, mask) = if w.file == "cpuset.cpus" {
                    cgroups_rs::systemd::cpuset::cpus(&w.value)
                } else {
                    cgroups_rs::systemd::cpuset::mems(&w.value)
                }
                .map_err(|e| Error::Unsupported(format!("{}={:?}: {e}", w.field, w.value)))?;
                out.push((name, Value::from(mask)));
            }
            "io.weight" => {
                if let Some(v) = w.value.strip_prefix("default ") {
                    let weight = v.parse().unwrap_or(100u64);
                    out.push(("IOWeight", Value::U64(weight)));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

fn dbus(unit: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Cgroup {
        path: unit.into(),
        why: format!("systemd: {what}: {e}"),
        errno: None,
    }
}

/// How long a call may wait for systemd: one that does not answer (a hung
/// bus, a busy manager) fails the operation with the unit named, instead
/// of holding `create` (and kubelet's sandbox) forever.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// `call` on a thread of its own, given up after `ANSWER_WITHIN`.
fn bounded<T: Send + 'static>(
    unit: &str,
    what: &str,
    call: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(call());
    });
    rx.recv_timeout(ANSWER_WITHIN).unwrap_or_else(|_| {
        Err(dbus(
            unit,
            what,
            format!(
                "systemd did not answer within {} s (is dbus-daemon running?)",
                ANSWER_WITHIN.as_secs()
            ),
        ))
    })
}

/// Start the unit with `pid` in it and the managed resources as properties,
/// then wait until systemd has moved `pid` into the unit's cgroup.
pub fn start(unit: &Unit, pid: i32, writes: &[Write], dir: &Path) -> Result<()> {
    let mut props: Vec<(&'static str, Value<'static>)> = vec![
        (
            "Description",
            Value::from(format!("amphi container {}", unit.name)),
        ),
        ("Delegate", Value::Bool(true)),
        ("DefaultDependencies", Value::Bool(false)),
        ("MemoryAccounting", Value::Bool(true)),
        ("CPUAccounting", Value::Bool(true)),
        ("TasksAccounting", Value::Bool(true)),
        ("IOAccounting", Value::Bool(true)),
    ];
    if unit.name.ends_with(".slice") {
        props.push(("Wants", Value::from(unit.slice.clone())));
    } else {
        props.push(("Slice", Value::from(unit.slice.clone())));
    }
    // A unit that failed (its pid gone before systemd attached it, a call
    // answered after amphi gave up on it) is collected, not left loaded.
    props.push(("CollectMode", Value::from("inactive-or-failed")));
    props.extend(properties(writes)?);
    let name = unit.name.clone();
    bounded(&unit.name, "StartTransientUnit", move || {
        let mut client = SystemdClient::new(&name, props).map_err(|e| dbus(&name, "client", e))?;
        client
            .set_pid_prop(cgroups_rs::CgroupPid::from(pid as u64))
            .map_err(|e| dbus(&name, "PIDs", e))?;
        client
            .start()
            .map_err(|e| dbus(&name, "StartTransientUnit", e))
    })?;
    // The job runs asynchronously: wait until the pid is in the unit's
    // cgroup. A unit that never gets it is stopped: nothing is left behind.
    let want = Path::new("/").join(dir.strip_prefix(super::V2_MOUNT).unwrap_or(dir));
    let want = want.to_string_lossy();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = match std::fs::read_to_string(format!("/proc/{pid}/cgroup")) {
            Ok(now) => now,
            Err(e) => {
                let _ = stop(&unit.name);
                return Err(dbus(
                    &unit.name,
                    "StartTransientUnit",
                    format!("pid {pid} is gone ({e}) before systemd moved it into {want}"),
                ));
            }
        };
        if now.lines().any(|l| l.strip_prefix("0::") == Some(&*want)) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            let _ = stop(&unit.name);
            return Err(dbus(
                &unit.name,
                "StartTransientUnit",
                format!("pid {pid} did not reach {want} within 10 s"),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Change the managed resources of a running unit.
pub fn set(unit: &str, writes: &[Write]) -> Result<()> {
    let props = properties(writes)?;
    if props.is_empty() {
        return Ok(());
    }
    let name = unit.to_owned();
    bounded(unit, "SetUnitProperties", move || {
        let mut client =
            SystemdClient::new(&name, Vec::new()).map_err(|e| dbus(&name, "client", e))?;
        client
            .set_properties(&props)
            .map_err(|e| dbus(&name, "SetUnitProperties", e))
    })
}

/// Stop the unit (and forget it if it failed); a unit already gone is fine.
pub fn stop(unit: &str) -> Result<()> {
    let name = unit.to_owned();
    bounded(unit, "StopUnit", move || {
        let client = SystemdClient::new(&name, Vec::new()).map_err(|e| dbus(&name, "client", e))?;
        client.stop().map_err(|e| dbus(&name, "StopUnit", e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_slices() {
        let u = Unit::parse("kubepods-besteffort-pod12.slice:cri-containerd:abc").unwrap();
        assert_eq!(u.name, "cri-containerd-abc.scope");
        assert_eq!(
            u.dir(Path::new("/sys/fs/cgroup")).unwrap(),
            Path::new("/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/cri-containerd-abc.scope")
        );
        let u = Unit::parse(":amphi:x").unwrap();
        assert_eq!(
            (u.slice.as_str(), u.name.as_str()),
            ("system.slice", "amphi-x.scope")
        );
        assert_eq!(expand_slice("-.slice").unwrap(), "");
        for bad in [
            "a:b",
            "a:b:c:d",
            "system.slice::x",
            "system.slice:p:",
            "nope:p:x",
            "a--b.slice:p:x",
            "-a.slice:p:x",
            "a/b.slice:p:x",
            "s.slice:p:x/y",
        ] {
            let e = Unit::parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(e.to_string().contains("linux.cgroupsPath"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_managed_resources_become_properties() {
        let w = |file: &str, value: &str| Write {
            controller: "x",
            file: file.into(),
            value: value.into(),
            field: format!("linux.resources.{file}"),
        };
        let props = properties(&[
            w("memory.max", "67108864"),
            w("pids.max", "max"),
            w("cpu.max", "50000 100000"),
            w("cpu.weight", "39"),
            w("io.max", "8:0 rbps=1"),
        ])
        .unwrap();
        let get = |k: &str| props.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        assert_eq!(get("MemoryMax"), Some(Value::U64(64 << 20)));
        assert_eq!(get("TasksMax"), Some(Value::U64(u64::MAX)));
        assert_eq!(get("CPUQuotaPerSecUSec"), Some(Value::U64(500_000)));
        assert_eq!(get("CPUQuotaPeriodUSec"), Some(Value::U64(100_000)));
        assert_eq!(get("CPUWeight"), Some(Value::U64(39)));
        assert_eq!(props.len(), 5, "io.max is written directly: {props:?}");
    }
}
