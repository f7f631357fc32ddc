//! Reading a bundle and rejecting what cannot run, with the field named.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Linux, LinuxNamespaceType, Process, Spec};

use crate::{Error, Result};

pub const CONFIG: &str = "config.json";

/// The largest config.json amphi reads (16 MiB).
pub const MAX_CONFIG: u64 = 16 << 20;

/// The most mounts a container may ask for (each is a syscall or more in
/// the init, and the kernel's per-namespace limit is shared with the host's).
pub const MAX_MOUNTS: usize = 4096;

/// A bundle whose config parsed and validated.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute, canonical bundle directory.
    pub dir: PathBuf,
    pub spec: Spec,
    /// Absolute, canonical root filesystem directory.
    pub rootfs: PathBuf,
    /// What the spec asks for and this host cannot give, where the spec
    /// says to go on with a warning (capabilities nobody knows). The
    /// seccomp profile's own warnings come from [`Bundle::compile_seccomp`].
    pub warnings: Vec<String>,
}

impl Bundle {
    pub fn load(dir: &Path) -> Result<Bundle> {
        let dir = std::fs::canonicalize(dir).map_err(|e| Error::io("open bundle", dir, e))?;
        let file = dir.join(CONFIG);
        // A config is kilobytes; a huge one is an attack on the runtime's
        // memory (it is parsed as root), refused before it is read.
        let len = std::fs::metadata(&file)
            .map_err(|e| Error::io("read", &file, e))?
            .len();
        if len > MAX_CONFIG {
            return Err(invalid(
                &file,
                "(document)",
                format!("{len} bytes; amphi reads configs of at most {MAX_CONFIG} bytes"),
            ));
        }
        let data = std::fs::read(&file).map_err(|e| Error::io("read", &file, e))?;
        // Most configs parse as they are, in one pass. Only one that does
        // not goes the long way, which names the field that does not fit
        // and leaves out capabilities this build does not know: the same
        // spec and warnings either way, since a config with an unknown
        // capability never parses directly.
        let (spec, mut warnings) = match serde_json::from_slice::<Spec>(&data) {
            Ok(spec) => (spec, Vec::new()),
            Err(_) => {
                let mut json: serde_json::Value = parse(&file, &data)?;
                let warnings = drop_unknown_capabilities(&mut json);
                let spec = parse(&file, &serde_json::to_vec(&json).expect("json"))?;
                (spec, warnings)
            }
        };
        crate::util::trace::phase("bundle: config parsed");
        warnings.extend(crate::capabilities::unsupported(spec.process().as_ref()));
        warnings.extend(crate::lsm::warnings(spec.process().as_ref()));
        let rootfs = validate(&file, &dir, &spec)?;
        crate::util::trace::phase("bundle: config validated");
        let mut bundle = Bundle::new(dir, rootfs, spec)?;
        bundle.warnings = warnings;
        Ok(bundle)
    }

    /// `process`, which validation guarantees is there.
    pub fn process(&self) -> &Process {
        self.spec
            .process()
            .as_ref()
            .expect("a Bundle's spec is validated to have a process")
    }

    /// A bundle from parts already validated (e.g. `exec`'s spec derived
    /// from a running container's).
    pub fn new(dir: PathBuf, rootfs: PathBuf, spec: Spec) -> Result<Bundle> {
        if spec.process().is_none() {
            return Err(invalid(
                &dir.join(CONFIG),
                "process",
                "missing: nothing to run",
            ));
        }
        Ok(Bundle {
            dir,
            spec,
            rootfs,
            warnings: Vec::new(),
        })
    }

    /// `linux.seccomp` compiled, `None` without a profile; the syscalls it
    /// skips (of no architecture amphi knows) go to `warnings`. Not part
    /// of [`Bundle::load`]: `create` compiles while the init it is for
    /// mounts its rootfs, which needs the program only later.
    pub fn compile_seccomp(
        &self,
        warnings: &mut Vec<String>,
    ) -> Result<Option<crate::seccomp::Program>> {
        self.spec
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().as_ref())
            .map(|s| crate::seccomp::compile(s, unknown_syscalls(&self.spec), warnings))
            .transpose()
    }
}

fn unknown_syscalls(spec: &Spec) -> crate::seccomp::UnknownNames {
    let strict = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(crate::seccomp::STRICT_ANNOTATION))
        .is_some_and(|v| v == "true");
    if strict {
        crate::seccomp::UnknownNames::Refuse
    } else {
        crate::seccomp::UnknownNames::Skip
    }
}

/// Capability names no kernel amphi knows of are left out with a warning
/// (config.md: runtimes "SHOULD NOT fail if the container configuration
/// requests capabilities that cannot be granted"), before the typed parse
/// that would refuse them.
fn drop_unknown_capabilities(json: &mut serde_json::Value) -> Vec<String> {
    let mut warnings = Vec::new();
    let Some(sets) = json
        .pointer_mut("/process/capabilities")
        .and_then(serde_json::Value::as_object_mut)
    else {
        return warnings;
    };
    for (set, names) in sets.iter_mut() {
        let Some(names) = names.as_array_mut() else {
            continue;
        };
        names.retain(|n| {
            let known = serde_json::from_value::<oci_spec::runtime::Capability>(n.clone()).is_ok();
            if !known && n.is_string() {
                warnings.push(format!(
                    "process.capabilities.{set}: {n} is not a capability amphi knows; left out"
                ));
            }
            known || !n.is_string()
        });
    }
    warnings
}

/// Parse a config (or any part of one, such as `exec`'s process.json),
/// naming the JSON path of the first field that does not fit.
pub fn parse<T: serde::de::DeserializeOwned>(file: &Path, data: &[u8]) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_slice(data);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        Error::InvalidSpec {
            file: file.into(),
            field: if field == "." {
                "(document)".into()
            } else {
                field
            },
            why: e.into_inner().to_string(),
        }
    })
}

fn invalid(file: &Path, field: &str, why: impl Into<String>) -> Error {
    Error::InvalidSpec {
        file: file.into(),
        field: field.into(),
        why: why.into(),
    }
}

/// Check what serde cannot: versions, required fields, cross-field rules,
/// one section of the spec at a time. Returns the canonical rootfs path.
pub fn validate(file: &Path, bundle: &Path, spec: &Spec) -> Result<PathBuf> {
    validate_version(file, spec)?;
    let rootfs = validate_root(file, bundle, spec)?;
    validate_process(file, spec)?;
    let linux = spec.linux().as_ref();
    let namespaces = validate_namespaces(file, linux)?;
    validate_uts(file, spec, &namespaces)?;
    validate_id_mappings(file, linux, &namespaces)?;
    validate_sysctl(file, linux, &namespaces)?;
    validate_time_offsets(file, linux, &namespaces)?;
    if linux.is_some_and(|l| l.intel_rdt().is_some()) {
        return Err(Error::Unsupported(format!(
            "{}: linux.intelRdt: Intel RDT (resctrl) is not supported by amphi; remove the field",
            file.display()
        )));
    }
    validate_mounts(file, spec)?;
    Ok(rootfs)
}

fn validate_version(file: &Path, spec: &Spec) -> Result<()> {
    let major = spec.version().split('.').next().unwrap_or("");
    if major != "1" {
        return Err(invalid(
            file,
            "ociVersion",
            format!(
                "unsupported version {:?}: amphi implements runtime-spec 1.x",
                spec.version()
            ),
        ));
    }
    Ok(())
}

/// `root`: the rootfs directory, canonical.
fn validate_root(file: &Path, bundle: &Path, spec: &Spec) -> Result<PathBuf> {
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid(file, "root", "missing: the bundle needs a root filesystem"))?;
    let root_path = bundle.join(root.path());
    let rootfs = std::fs::canonicalize(&root_path)
        .map_err(|e| invalid(file, "root.path", format!("{}: {e}", root_path.display())))?;
    if !rootfs.is_dir() {
        return Err(invalid(
            file,
            "root.path",
            format!("{} is not a directory", rootfs.display()),
        ));
    }
    Ok(rootfs)
}

fn validate_process(file: &Path, spec: &Spec) -> Result<()> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid(file, "process", "missing: nothing to run"))?;
    match process.args() {
        Some(args) if !args.is_empty() && !args[0].is_empty() => {}
        _ => {
            return Err(invalid(
                file,
                "process.args",
                "empty: give at least the program to run",
            ))
        }
    }
    if !process.cwd().is_absolute() {
        return Err(invalid(
            file,
            "process.cwd",
            format!("{:?} is not an absolute path", process.cwd()),
        ));
    }
    if let Some(env) = process.env() {
        if let Some((i, _)) = env.iter().enumerate().find(|(_, e)| !e.contains('=')) {
            return Err(invalid(
                file,
                &format!("process.env[{i}]"),
                "not of the form KEY=VALUE",
            ));
        }
    }
    if let Some(rlimits) = process.rlimits() {
        let mut seen = HashSet::new();
        for (i, r) in rlimits.iter().enumerate() {
            if !seen.insert(r.typ().to_string()) {
                return Err(invalid(
                    file,
                    &format!("process.rlimits[{i}]"),
                    format!("{} given twice", r.typ()),
                ));
            }
            if r.soft() > r.hard() {
                return Err(invalid(
                    file,
                    &format!("process.rlimits[{i}]"),
                    "soft limit above hard limit",
                ));
            }
        }
    }
    Ok(())
}

/// `linux.namespaces`, each once; returns the types given.
fn validate_namespaces(file: &Path, linux: Option<&Linux>) -> Result<HashSet<LinuxNamespaceType>> {
    let namespaces = linux.and_then(|l| l.namespaces().as_ref());
    let mut seen = HashSet::new();
    for (i, ns) in namespaces.into_iter().flatten().enumerate() {
        if !seen.insert(ns.typ()) {
            return Err(invalid(
                file,
                &format!("linux.namespaces[{i}]"),
                format!("namespace {} given twice", ns.typ()),
            ));
        }
        if let Some(p) = ns.path() {
            if !p.is_absolute() {
                return Err(invalid(
                    file,
                    &format!("linux.namespaces[{i}].path"),
                    "must be absolute",
                ));
            }
        }
    }
    Ok(seen)
}

/// A hostname or domainname is the container's own only in a uts namespace.
fn validate_uts(file: &Path, spec: &Spec, namespaces: &HashSet<LinuxNamespaceType>) -> Result<()> {
    let has_ns = |t: LinuxNamespaceType| namespaces.contains(&t);
    if spec.hostname().as_deref().is_some_and(|h| !h.is_empty()) && !has_ns(LinuxNamespaceType::Uts)
    {
        return Err(invalid(
            file,
            "hostname",
            "setting a hostname needs a uts namespace in linux.namespaces",
        ));
    }
    if spec.domainname().as_deref().is_some_and(|h| !h.is_empty())
        && !has_ns(LinuxNamespaceType::Uts)
    {
        return Err(invalid(
            file,
            "domainname",
            "setting a domainname needs a uts namespace in linux.namespaces",
        ));
    }
    Ok(())
}

/// `linux.uidMappings` and `gidMappings`: in a user namespace, non-empty
/// and not overlapping.
fn validate_id_mappings(
    file: &Path,
    linux: Option<&Linux>,
    namespaces: &HashSet<LinuxNamespaceType>,
) -> Result<()> {
    let maps = linux.is_some_and(|l| {
        l.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
            || l.gid_mappings().as_ref().is_some_and(|m| !m.is_empty())
    });
    if maps && !namespaces.contains(&LinuxNamespaceType::User) {
        return Err(invalid(
            file,
            "linux.uidMappings",
            "id mappings need a user namespace in linux.namespaces",
        ));
    }
    for (field, m) in [
        (
            "linux.uidMappings",
            linux.and_then(|l| l.uid_mappings().as_ref()),
        ),
        (
            "linux.gidMappings",
            linux.and_then(|l| l.gid_mappings().as_ref()),
        ),
    ] {
        let m = m.map(Vec::as_slice).unwrap_or_default();
        for (i, a) in m.iter().enumerate() {
            if a.size() == 0 {
                return Err(invalid(file, &format!("{field}[{i}].size"), "must be > 0"));
            }
            for b in &m[i + 1..] {
                let overlap = |x: u32, xs: u32, y: u32, ys: u32| {
                    u64::from(x) < u64::from(y) + u64::from(ys)
                        && u64::from(y) < u64::from(x) + u64::from(xs)
                };
                if overlap(a.container_id(), a.size(), b.container_id(), b.size())
                    || overlap(a.host_id(), a.size(), b.host_id(), b.size())
                {
                    return Err(invalid(
                        file,
                        &format!("{field}[{i}]"),
                        "overlaps another mapping",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `linux.sysctl`: namespaced keys only, in a namespace of the container's.
fn validate_sysctl(
    file: &Path,
    linux: Option<&Linux>,
    namespaces: &HashSet<LinuxNamespaceType>,
) -> Result<()> {
    if let Some(sysctl) = linux.and_then(|l| l.sysctl().as_ref()) {
        for key in sysctl.keys() {
            let needs = sysctl_namespace(key);
            let field = format!("linux.sysctl.{key}");
            match needs {
                None => {
                    return Err(invalid(
                        file,
                        &field,
                        "not a namespaced sysctl: it would change the host",
                    ))
                }
                Some(t) if !namespaces.contains(&t) => {
                    return Err(invalid(
                        file,
                        &field,
                        format!("needs a {t} namespace of the container's own"),
                    ))
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// `linux.timeOffsets`: monotonic and boottime, in a new time namespace.
fn validate_time_offsets(
    file: &Path,
    linux: Option<&Linux>,
    namespaces: &HashSet<LinuxNamespaceType>,
) -> Result<()> {
    if let Some(offsets) = linux.and_then(|l| l.time_offsets().as_ref()) {
        for clock in offsets.keys() {
            if clock != "monotonic" && clock != "boottime" {
                return Err(invalid(
                    file,
                    &format!("linux.timeOffsets.{clock}"),
                    "only the monotonic and boottime clocks have offsets",
                ));
            }
        }
        let joined = linux
            .and_then(|l| l.namespaces().as_ref())
            .into_iter()
            .flatten()
            .any(|n| n.typ() == LinuxNamespaceType::Time && n.path().is_some());
        if !offsets.is_empty() && (!namespaces.contains(&LinuxNamespaceType::Time) || joined) {
            return Err(invalid(
                file,
                "linux.timeOffsets",
                "offsets need a new time namespace in linux.namespaces (one without a path)",
            ));
        }
    }
    Ok(())
}

fn validate_mounts(file: &Path, spec: &Spec) -> Result<()> {
    if let Some(mounts) = spec.mounts() {
        if mounts.len() > MAX_MOUNTS {
            return Err(invalid(
                file,
                "mounts",
                format!(
                    "{} mounts; amphi sets up at most {MAX_MOUNTS} per container",
                    mounts.len()
                ),
            ));
        }
        for (i, m) in mounts.iter().enumerate() {
            if m.destination().as_os_str().is_empty() {
                return Err(invalid(file, &format!("mounts[{i}].destination"), "empty"));
            }
        }
    }
    Ok(())
}

/// The namespace a sysctl belongs to, for the ones a container may set
/// (the same list as runc's).
pub fn sysctl_namespace(key: &str) -> Option<LinuxNamespaceType> {
    let ipc = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if ipc.contains(&key) || key.starts_with("fs.mqueue.") {
        Some(LinuxNamespaceType::Ipc)
    } else if key.starts_with("net.") {
        Some(LinuxNamespaceType::Network)
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Some(LinuxNamespaceType::Uts)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_must_be_namespaced() {
        assert_eq!(
            field_of(check(
                |v| v["linux"]["sysctl"] = serde_json::json!({"vm.swappiness": "1"})
            )),
            "linux.sysctl.vm.swappiness"
        );
        assert_eq!(
            field_of(check(
                |v| v["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_forward": "1"})
            )),
            "linux.sysctl.net.ipv4.ip_forward"
        );
        check(|v| v["linux"]["sysctl"] = serde_json::json!({"kernel.domainname": "x"})).unwrap();
    }

    fn spec_json(patch: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut v = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "hostname": "h",
            "linux": {"namespaces": [{"type": "uts"}, {"type": "pid"}, {"type": "mount"}]}
        });
        patch(&mut v);
        serde_json::to_vec(&v).unwrap()
    }

    fn check(patch: impl FnOnce(&mut serde_json::Value)) -> Result<PathBuf> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        let file = dir.path().join(CONFIG);
        let spec: Spec = parse(&file, &spec_json(patch))?;
        validate(&file, dir.path(), &spec)
    }

    fn field_of(r: Result<PathBuf>) -> String {
        match r {
            Err(Error::InvalidSpec { field, .. }) => field,
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
    }

    fn load(patch: impl FnOnce(&mut serde_json::Value)) -> Result<Bundle> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        std::fs::write(dir.path().join(CONFIG), spec_json(patch)).unwrap();
        Bundle::load(dir.path())
    }

    /// Bundle::load parses most configs in one pass and goes the long way
    /// only for one that does not parse: both ways must give what the
    /// long way alone gave.
    #[test]
    fn loading_names_the_bad_field_and_leaves_out_unknown_capabilities() {
        let caps = |names: &[&str]| serde_json::json!({"bounding": names, "effective": names});
        let plain = load(|v| v["process"]["capabilities"] = caps(&["CAP_CHOWN"])).unwrap();
        assert!(plain.warnings.is_empty(), "{:?}", plain.warnings);

        let future =
            load(|v| v["process"]["capabilities"] = caps(&["CAP_CHOWN", "CAP_FROM_THE_FUTURE"]))
                .unwrap();
        let bounding = future.process().capabilities().as_ref().unwrap().bounding();
        assert_eq!(bounding.as_ref().map(|b| b.len()), Some(1), "{bounding:?}");
        assert_eq!(future.warnings.len(), 2, "{:?}", future.warnings);
        assert!(future.warnings[0].contains("CAP_FROM_THE_FUTURE"));

        let bad = load(|v| v["process"]["user"]["uid"] = "x".into()).map(|_| ());
        assert!(
            matches!(&bad, Err(Error::InvalidSpec { field, .. }) if field == "process.user.uid"),
            "{bad:?}"
        );
    }

    #[test]
    fn valid_config_passes() {
        check(|_| {}).unwrap();
    }

    #[test]
    fn names_the_bad_field() {
        assert_eq!(
            field_of(check(|v| v["process"]["user"]["uid"] = "x".into())),
            "process.user.uid"
        );
        assert_eq!(
            field_of(check(|v| v["ociVersion"] = "2.0.0".into())),
            "ociVersion"
        );
        assert_eq!(
            field_of(check(|v| v["process"]["args"] = serde_json::json!([]))),
            "process.args"
        );
        assert_eq!(
            field_of(check(|v| v["root"]["path"] = "nope".into())),
            "root.path"
        );
        assert_eq!(
            field_of(check(|v| v["process"]["cwd"] = "rel".into())),
            "process.cwd"
        );
        assert_eq!(
            field_of(check(
                |v| v["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}])
            )),
            "hostname"
        );
    }

    #[test]
    fn rejects_overlapping_id_maps() {
        let r = check(|v| {
            v["linux"]["namespaces"] = serde_json::json!([{"type": "user"}, {"type": "uts"}]);
            v["linux"]["uidMappings"] = serde_json::json!([
                {"containerID": 0, "hostID": 1000, "size": 10},
                {"containerID": 5, "hostID": 5000, "size": 10}
            ]);
        });
        assert_eq!(field_of(r), "linux.uidMappings[0]");
    }
}
