//! The runtime options containerd passes with every task: the table
//! `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.amphi.options]`
//! of its config (or `ctr run --runtime-config-path`), sent as a
//! `runtimeoptions.v1.Options` whose `config_body` is that table as TOML
//! (runwasi reads it the same way). They are kept in the bundle, where the
//! clean-up after a dead shim (`shim delete`, which gets no options) finds
//! them.

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
    /// amphi's state root (default /run/containerd/amphi/NAMESPACE).
    pub root: Option<PathBuf>,
    /// Where compiled wasm modules are cached (default ROOT/wasm-cache).
    pub wasm_cache: Option<PathBuf>,
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
        let body = config_body(&any.value)
            .map_err(|e| format!("runtime options ({}): {e}", any.type_url))?;
        toml::from_str(&body).map_err(|e| {
            format!(
                "runtime options: {}; amphi takes BinaryName, Root, WasmCache, SystemdCgroup and NoNewKeyring",
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

/// Field 3 (`config_body`) of a runtimeoptions.v1.Options message.
fn config_body(message: &[u8]) -> Result<String, String> {
    const CONFIG_BODY: u32 = 3;
    let mut is = CodedInputStream::from_bytes(message);
    let mut body = String::new();
    while let Some(tag) = is.read_raw_tag_or_eof().map_err(|e| e.to_string())? {
        if tag >> 3 == CONFIG_BODY {
            body = is.read_string().map_err(|e| e.to_string())?;
        } else {
            containerd_shim::protos::protobuf::rt::skip_field_for_tag(tag, &mut is)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(body: &str) -> Any {
        // runtimeoptions.v1.Options { type_url: 1, config_path: 2, config_body: 3 }.
        let mut value = vec![0x0a, 3];
        value.extend_from_slice(b"x.y");
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
    fn an_unknown_key_is_named() {
        let e = Options::from_request(Some(&any("Rooot = \"/r\"\n"))).unwrap_err();
        assert!(e.contains("Rooot"), "{e}");
    }
}
