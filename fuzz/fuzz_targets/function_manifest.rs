//! `NAME\nTOML` -> a function manifest: never a panic; what parses keeps
//! the invariants the server relies on, and its spec (for a function in a
//! root filesystem, which needs no files) serialises.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (name, manifest) = text.split_once('\n').unwrap_or(("fuzz", &text));
    let Ok(f) = amphi_function::parse(name, manifest) else {
        return;
    };
    assert!(f.route.starts_with('/') && f.route != amphi_function::METRICS_ROUTE);
    assert!(!f.route.split('/').any(|s| s == ".."));
    assert!(f.concurrency >= 1 && !f.timeout.is_zero());
    assert!(!f.name.is_empty() && !f.name.contains('/'));
    if let amphi_function::Source::InRoot { .. } = f.source {
        let spec = f.spec(std::path::Path::new("/nonexistent")).expect("in-root specs need no files");
        serde_json::to_vec(&spec).expect("a spec serialises");
    }
});
