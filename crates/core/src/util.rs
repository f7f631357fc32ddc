use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::{Error, Result};

/// Write a file so that readers see either the old or the new content, never
/// a torn one: write a sibling temp file, fsync-free rename over the target.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io("create", &tmp, e))?;
    f.write_all(data).map_err(|e| Error::io("write", &tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("rename to", path, e)
    })
}

/// Seconds and nanoseconds since the epoch as RFC 3339 UTC, without pulling a
/// date crate into the start path.
pub fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_nanos())
}

pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{nanos:09}Z")
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_known_instants() {
        assert_eq!(super::rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            super::rfc3339(1_709_210_096, 5),
            "2024-02-29T12:34:56.000000005Z"
        );
    }
}

/// `--debug`: the start path's phases with their time since the command
/// began, on stderr (from the runtime and from the container's init, which
/// shares the clock). Off unless enabled: the checks cost nothing else.
pub mod trace {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::OnceLock;
    use std::time::Instant;

    static ON: AtomicBool = AtomicBool::new(false);
    static START: OnceLock<Instant> = OnceLock::new();

    pub fn enable() {
        START.get_or_init(Instant::now);
        ON.store(true, Ordering::Relaxed);
    }

    pub fn phase(what: &str) {
        if ON.load(Ordering::Relaxed) {
            let t = START.get_or_init(Instant::now).elapsed();
            eprintln!(
                "amphi: debug: {:8.3} ms [{}] {what}",
                t.as_secs_f64() * 1e3,
                std::process::id()
            );
        }
    }
}

/// Fault injection for the crash-recovery tests: with `AMPHI_FAILPOINT=NAME`
/// in the environment, the process SIGKILLs itself on reaching point NAME,
/// as a crash or an impatient caller would. Read once; free otherwise.
pub fn failpoint(name: &str) {
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let point = POINT.get_or_init(|| std::env::var("AMPHI_FAILPOINT").ok());
    if point.as_deref() == Some(name) {
        // SAFETY: signalling ourselves.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}
