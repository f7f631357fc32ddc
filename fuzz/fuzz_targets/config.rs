//! config.json bytes -> parse and validate: never a panic, only an error
//! naming a field, or a bundle.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// A bundle directory with a rootfs, made once.
fn bundle() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Under $AMPHI_FUZZ_DIR when run.sh sets it (and removes it).
        let base = std::env::var_os("AMPHI_FUZZ_DIR").map_or_else(std::env::temp_dir, Into::into);
        let dir = base.join(format!("amphi-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let file = bundle().join("config.json");
    if let Ok(spec) = amphi_core::spec::parse::<oci_spec::runtime::Spec>(&file, data) {
        let _ = amphi_core::spec::validate(&file, bundle(), &spec);
        if let Some(s) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
            let skip = amphi_core::seccomp::UnknownNames::Skip;
            let _ = amphi_core::seccomp::compile(s, skip, &mut Vec::new());
        }
    }
});
