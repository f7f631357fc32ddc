//! Which bundles are wasm: the conventions crun, youki and runwasi users
//! already write, so their images run unchanged. A pure function of the
//! spec and the rootfs (fuzzed alone, without the engine):
//!
//! - `module.wasm.image/variant=compat` or `run.oci.handler=wasm`: wasm;
//! - `compat-smart` / `wasm-smart`: wasm only if `process.args[0]` is a
//!   module (`.wasm`/`.wat` name or the `\0asm` magic), else native;
//! - no annotation: wasm only if `process.args[0]`, read inside the
//!   rootfs, starts with `\0asm`;
//! - a Kubernetes sandbox (pause) container is never wasm, whatever the
//!   pod's annotations say (crun's rule: CRI forwards pod annotations to
//!   the sandbox too).

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;

use amphi_core::executor::Verdict;
use amphi_core::paths::open_regular_in_root;
use oci_spec::runtime::Spec;

/// The executor's name in a container's state, whichever binary runs it.
pub const EXECUTOR_NAME: &str = "wasm";

pub const VARIANT: &str = "module.wasm.image/variant";
pub const HANDLER: &str = "run.oci.handler";
/// CRI's annotation telling a pod's sandbox container from its workloads.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// The answer, with the reason for a "no".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wasm {
    Yes,
    No(&'static str),
}

/// What the annotations say: Some(true) wasm, Some(false) "wasm only if the
/// entrypoint is a module", None nothing said.
fn annotation_says(annotations: &HashMap<String, String>) -> Option<bool> {
    match annotations
        .get(VARIANT)
        .or(annotations.get(HANDLER))
        .map(String::as_str)
    {
        Some("compat" | "wasm") => Some(true),
        Some("compat-smart" | "wasm-smart") => Some(false),
        _ => None,
    }
}

/// A wasm binary starts with `\0asm`.
pub fn has_wasm_magic(head: &[u8]) -> bool {
    head.starts_with(b"\0asm")
}

fn looks_like_module_name(arg0: &str) -> bool {
    arg0.ends_with(".wasm") || arg0.ends_with(".wat")
}

/// Read the first bytes of `arg0` inside the rootfs (never outside it).
fn entrypoint_is_wasm(rootfs: &Path, spec: &Spec, arg0: &str) -> bool {
    let Ok(root) = nix::fcntl::open(
        rootfs,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) else {
        return false;
    };
    let cwd = spec
        .process()
        .as_ref()
        .map(|p| p.cwd().clone())
        .unwrap_or_else(|| "/".into());
    // Only a regular file is read: opening a FIFO would block create and
    // opening a device node could act on the device.
    let Ok((f, _)) = open_regular_in_root(root.as_fd(), &cwd.join(arg0)) else {
        return false;
    };
    let mut head = [0u8; 4];
    f.take(4).read_exact(&mut head).is_ok() && has_wasm_magic(&head)
}

/// Whether `spec` (rootfs at `rootfs`) runs as wasm.
pub fn is_wasm(spec: &Spec, rootfs: &Path) -> Wasm {
    let empty = HashMap::new();
    let annotations = spec.annotations().as_ref().unwrap_or(&empty);
    if annotations.get(CRI_CONTAINER_TYPE).map(String::as_str) == Some("sandbox") {
        return Wasm::No("a Kubernetes sandbox (pause) container always runs natively");
    }
    let arg0 = spec
        .process()
        .as_ref()
        .map_or("", amphi_core::executor::program);
    match annotation_says(annotations) {
        Some(true) => Wasm::Yes,
        Some(false) if looks_like_module_name(arg0) || entrypoint_is_wasm(rootfs, spec, arg0) => {
            Wasm::Yes
        }
        Some(false) => Wasm::No("a -smart wasm annotation, and process.args[0] is not a module"),
        None if entrypoint_is_wasm(rootfs, spec, arg0) => Wasm::Yes,
        None => Wasm::No("no wasm annotation, and process.args[0] is not a module"),
    }
}

/// [`is_wasm`] as a handler's answer.
pub fn verdict(spec: &Spec, rootfs: &Path) -> Verdict {
    match is_wasm(spec, rootfs) {
        Wasm::Yes => Verdict::Yes,
        Wasm::No(why) => Verdict::No(why.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(arg0: &str, annotations: &[(&str, &str)]) -> Spec {
        let mut v = serde_json::json!({
            "ociVersion": "1.0.2", "root": {"path": "rootfs"},
            "process": {"args": [arg0], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        });
        let a: serde_json::Map<_, _> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        v["annotations"] = a.into();
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn follows_annotations_and_magic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello.wasm"), b"\0asm\x01\0\0\0").unwrap();
        std::fs::write(dir.path().join("app"), b"\0asm\x01\0\0\0").unwrap();
        std::fs::write(dir.path().join("sh"), b"\x7fELF").unwrap();
        let r = dir.path();
        let yes = |s: Spec| is_wasm(&s, r) == Wasm::Yes;
        assert!(yes(spec("/sh", &[(VARIANT, "compat")])));
        assert!(yes(spec("/sh", &[(HANDLER, "wasm")])));
        assert!(!yes(spec("/sh", &[(VARIANT, "compat-smart")])));
        assert!(yes(spec("/hello.wasm", &[(HANDLER, "wasm-smart")])));
        assert!(yes(spec("/app", &[(VARIANT, "compat-smart")])));
        assert!(yes(spec("/app", &[])));
        assert!(!yes(spec("/sh", &[])));
        assert!(!yes(spec("/missing", &[])));
        // A FIFO entrypoint must not block the choice.
        nix::unistd::mkfifo(&dir.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(!yes(spec("/fifo", &[])));
    }

    #[test]
    fn a_pod_sandbox_is_never_wasm() {
        let dir = tempfile::tempdir().unwrap();
        let pod = [(VARIANT, "compat"), (CRI_CONTAINER_TYPE, "sandbox")];
        assert!(matches!(
            is_wasm(&spec("/pause", &pod), dir.path()),
            Wasm::No(_)
        ));
        let workload = [(VARIANT, "compat"), (CRI_CONTAINER_TYPE, "container")];
        assert_eq!(
            is_wasm(&spec("/app.wasm", &workload), dir.path()),
            Wasm::Yes
        );
    }
}
