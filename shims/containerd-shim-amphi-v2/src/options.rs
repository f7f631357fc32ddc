//! The runtime options containerd passes with every task, from the table
//! `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.amphi.options]`
//! of its config, as a `runtimeoptions.v1.Options` (runwasi reads them the
//! same way). containerd 1.7 and later send the whole table as TOML in its
//! `config_body`; containerd 1.6 decodes the table into that message's own
//! fields, so there the table says `ConfigPath = "FILE"` (a TOML file with
//! amphi's keys) or `ConfigBody = "..."`. The options are kept in the
//! bundle, where the clean-up after a dead shim (`shim delete`, which gets
//! no options) finds them.

use std::path::{Path, PathBuf};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::CodedInputStream;
use serde::{Deserialize, Serialize};

const FILE: &str = "amphi-options.json";

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Options {
    /// The `amphi` binary (default: beside the shim, else on PATH).
    pub binary_name: Option<PathBuf>,
    /// amphi's state root, a directory per containerd namespace below it
    /// (default /run/containerd/amphi).
    pub root: Option<PathBuf>,
    /// Where compiled wasm modules are cached (default ROOT/wasm-cache).
    pub wasm_cache: Option<PathBuf>,
    /// The most the cached modules may take, in bytes (a TOML integer,
    /// checked here rather than failing each task later):
    /// `--wasm-cache-max`.
    pub wasm_cache_max: Option<u64>,
    /// Manage container cgroups through systemd (kubelet's `systemd`
    /// cgroup driver): `--systemd-cgroup`.
    #[serde(default)]
    pub systemd_cgroup: bool,
    /// Keep containerd's session keyring instead of a fresh one.
    #[serde(default)]
    pub no_new_keyring: bool,
}

impl Options {
    /// The options of a CreateTaskRequest (none: the defaults).
    pub fn from_request(any: Option<&Any>) -> Result<Options, String> {
        let Some(any) = any.filter(|a| !a.value.is_empty()) else {
            return Ok(Options::default());
        };
        let (path, body) = path_and_body(&any.value)
            .map_err(|e| format!("runtime options ({}): {e}", any.type_url))?;
        let mut text = String::new();
        if !path.is_empty() {
            text = std::fs::read_to_string(&path)
                .map_err(|e| format!("runtime options: ConfigPath {path}: {e}"))?;
            text.push('\n');
        }
        text.push_str(&body);
        let where_ = if path.is_empty() {
            String::new()
        } else {
            format!(" (ConfigPath {path})")
        };
        toml::from_str(&text).map_err(|e| {
            format!(
                "runtime options{where_}: {}; amphi takes BinaryName, Root, WasmCache, WasmCacheMax (bytes), SystemdCgroup and NoNewKeyring",
                e.message()
            )
        })
    }

    pub fn save(&self, bundle: &Path) -> Result<(), String> {
        let data = serde_json::to_vec(self).map_err(|e| e.to_string())?;
        std::fs::write(bundle.join(FILE), data)
            .map_err(|e| format!("write {}: {e}", bundle.join(FILE).display()))
    }

    /// What `save` kept in the bundle, or the defaults.
    pub fn load(bundle: &Path) -> Options {
        std::fs::read(bundle.join(FILE))
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .unwrap_or_default()
    }
}

/// Fields 2 (`config_path`) and 3 (`config_body`) of a
/// runtimeoptions.v1.Options message.
fn path_and_body(message: &[u8]) -> Result<(String, String), String> {
    const CONFIG_PATH: u32 = 2;
    const CONFIG_BODY: u32 = 3;
    let mut is = CodedInputStream::from_bytes(message);
    let (mut path, mut body) = (String::new(), String::new());
    while let Some(tag) = is.read_raw_tag_or_eof().map_err(|e| e.to_string())? {
        match tag >> 3 {
            CONFIG_PATH => path = is.read_string().map_err(|e| e.to_string())?,
            CONFIG_BODY => body = is.read_string().map_err(|e| e.to_string())?,
            _ => containerd_shim::protos::protobuf::rt::skip_field_for_tag(tag, &mut is)
                .map_err(|e| e.to_string())?,
        }
    }
    Ok((path, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(body: &str) -> Any {
        any_with(None, body)
    }

    fn any_with(path: Option<&str>, body: &str) -> Any {
        // runtimeoptions.v1.Options { type_url: 1, config_path: 2, config_body: 3 }.
        let mut value = vec![0x0a, 3];
        value.extend_from_slice(b"x.y");
        if let Some(p) = path {
            value.push(0x12);
            value.push(p.len() as u8);
            value.extend_from_slice(p.as_bytes());
        }
        value.push(0x1a);
        value.push(body.len() as u8);
        value.extend_from_slice(body.as_bytes());
        Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn reads_the_toml_table() {
        let o = Options::from_request(Some(&any("Root = \"/r\"\nSystemdCgroup = true\n"))).unwrap();
        assert_eq!(o.root.as_deref(), Some(Path::new("/r")));
        assert!(o.systemd_cgroup && !o.no_new_keyring);
        assert_eq!(Options::from_request(None).unwrap(), Options::default());
    }

    #[test]
    fn reads_a_config_path_as_containerd_1_6_sends_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("amphi.toml");
        std::fs::write(&file, "Root = \"/from-file\"\n").unwrap();
        let o = Options::from_request(Some(&any_with(
            Some(file.to_str().unwrap()),
            "NoNewKeyring = true",
        )))
        .unwrap();
        assert_eq!(o.root.as_deref(), Some(Path::new("/from-file")));
        assert!(o.no_new_keyring);
        let e = Options::from_request(Some(&any_with(Some("/nonexistent/amphi.toml"), "")))
            .unwrap_err();
        assert!(e.contains("ConfigPath /nonexistent/amphi.toml"), "{e}");
    }

    #[test]
    fn the_cache_bound_is_a_byte_count() {
        let o = Options::from_request(Some(&any("WasmCacheMax = 4294967296"))).unwrap();
        assert_eq!(o.wasm_cache_max, Some(4 << 30));
        let e = Options::from_request(Some(&any("WasmCacheMax = \"4G\""))).unwrap_err();
        assert!(e.contains("WasmCacheMax"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_named() {
        let e = Options::from_request(Some(&any("Rooot = \"/r\"\n"))).unwrap_err();
        assert!(e.contains("Rooot"), "{e}");
    }
}
