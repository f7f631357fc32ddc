//! A seccomp profile -> BPF: never a panic; a compiled program fits the
//! kernel's limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(profile) = serde_json::from_slice::<oci_spec::runtime::LinuxSeccomp>(data) {
        let mut warnings = Vec::new();
        let skip = amphi_core::seccomp::UnknownNames::Skip;
        if let Ok(p) = amphi_core::seccomp::compile(&profile, skip, &mut warnings) {
            assert!(p.len() <= 4096);
        }
    }
});
