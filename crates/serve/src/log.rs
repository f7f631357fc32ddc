//! The server's log: one JSON line on stderr per event, with its time.

use std::io::Write;

/// One JSON line on stderr.
pub fn log_line(v: serde_json::Value) {
    log_lines(vec![v]);
}

/// JSON lines on stderr, in one write.
pub(crate) fn log_lines(lines: Vec<serde_json::Value>) {
    let time = amphi_core::util::rfc3339_now();
    let mut out = String::new();
    for mut v in lines {
        v["time"] = time.as_str().into();
        out.push_str(&v.to_string());
        out.push('\n');
    }
    let _ = std::io::stderr().lock().write_all(out.as_bytes());
}
