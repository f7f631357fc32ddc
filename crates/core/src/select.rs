//! Choosing the executor of a bundle, once, at create. The conventions are
//! the ones crun, youki and runwasi users already write. It lives in the
//! core, beside the rootfs resolution it reads the entrypoint with, as a
//! pure function of the spec and the rootfs (and so can be fuzzed alone).

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;

use crate::rootfs::{open_in_root, Create};
use oci_spec::runtime::Spec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Native,
    Wasm,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Native => "native",
            Kind::Wasm => "wasm",
        }
    }
}

const VARIANT: &str = "module.wasm.image/variant";
const HANDLER: &str = "run.oci.handler";

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
    let Ok(fd) = open_in_root(root.as_fd(), &cwd.join(arg0), Create::Nothing) else {
        return false;
    };
    // Only a regular file is read: opening a FIFO would block create and
    // opening a device node could act on the device.
    match nix::sys::stat::fstat(&fd) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {}
        _ => return false,
    }
    let Ok(f) = std::fs::File::open(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    )) else {
        return false;
    };
    let mut head = [0u8; 4];
    f.take(4).read_exact(&mut head).is_ok() && has_wasm_magic(&head)
}

pub fn choose(spec: &Spec, rootfs: &Path) -> Kind {
    let empty = HashMap::new();
    let annotations = spec.annotations().as_ref().unwrap_or(&empty);
    let arg0 = spec
        .process()
        .as_ref()
        .and_then(|p| p.args().as_ref())
        .and_then(|a| a.first())
        .map(String::as_str)
        .unwrap_or("");
    let is_module = || looks_like_module_name(arg0) || entrypoint_is_wasm(rootfs, spec, arg0);
    match annotation_says(annotations) {
        Some(true) => Kind::Wasm,
        Some(false) => {
            if is_module() {
                Kind::Wasm
            } else {
                Kind::Native
            }
        }
        None => {
            if entrypoint_is_wasm(rootfs, spec, arg0) {
                Kind::Wasm
            } else {
                Kind::Native
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(arg0: &str, annotation: Option<(&str, &str)>) -> Spec {
        let mut v = serde_json::json!({
            "ociVersion": "1.0.2", "root": {"path": "rootfs"},
            "process": {"args": [arg0], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        });
        if let Some((k, val)) = annotation {
            v["annotations"] = serde_json::json!({ k: val });
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn follows_annotations_and_magic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello.wasm"), b"\0asm\x01\0\0\0").unwrap();
        std::fs::write(dir.path().join("app"), b"\0asm\x01\0\0\0").unwrap();
        std::fs::write(dir.path().join("sh"), b"\x7fELF").unwrap();
        let r = dir.path();
        assert_eq!(
            choose(&spec("/sh", Some((VARIANT, "compat"))), r),
            Kind::Wasm
        );
        assert_eq!(choose(&spec("/sh", Some((HANDLER, "wasm"))), r), Kind::Wasm);
        assert_eq!(
            choose(&spec("/sh", Some((VARIANT, "compat-smart"))), r),
            Kind::Native
        );
        assert_eq!(
            choose(&spec("/hello.wasm", Some((HANDLER, "wasm-smart"))), r),
            Kind::Wasm
        );
        assert_eq!(
            choose(&spec("/app", Some((VARIANT, "compat-smart"))), r),
            Kind::Wasm
        );
        assert_eq!(choose(&spec("/app", None), r), Kind::Wasm);
        assert_eq!(choose(&spec("/sh", None), r), Kind::Native);
        assert_eq!(choose(&spec("/missing", None), r), Kind::Native);
        // A FIFO entrypoint must not block the choice.
        nix::unistd::mkfifo(&dir.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(choose(&spec("/fifo", None), r), Kind::Native);
    }
}
