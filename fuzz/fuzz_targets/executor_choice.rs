//! A spec and an entrypoint file -> wasm or not: never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn rootfs() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Under $AMPHI_FUZZ_DIR when run.sh sets it (and removes it).
        let base = std::env::var_os("AMPHI_FUZZ_DIR").map_or_else(std::env::temp_dir, Into::into);
        let dir = base.join(format!("amphi-fuzz-choice-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("app")).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    // First byte splits the input: a spec, then the entrypoint's content.
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize).min(rest.len());
    let (spec, file) = rest.split_at(rest.len() - cut);
    std::fs::write(rootfs().join("app/entry"), file).unwrap();
    if let Ok(spec) = serde_json::from_slice::<oci_spec::runtime::Spec>(spec) {
        let _ = amphi_wasm::detect::is_wasm(&spec, rootfs());
    }
});
