/// Whether amphi runs without the host's root: as another user, or as root
/// of a user namespace (rootless podman runs its runtime that way). Such a
/// caller keeps state under its own runtime directory and goes without
/// cgroups nobody delegated to it, as runc does.
pub fn rootless() -> bool {
    !nix::unistd::geteuid().is_root()
        || std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| !initial_uid_map(&m))
}

/// Whether this process is in a user namespace other than the host's,
/// where mknod of device nodes is refused.
pub fn in_user_namespace(proc: &crate::procfs::ProcFs) -> bool {
    proc.read_self("uid_map")
        .is_ok_and(|m| !initial_uid_map(&m))
}

/// The initial user namespace maps all 2^32 ids at 0.
fn initial_uid_map(map: &str) -> bool {
    map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"]
}

/// A size as runc and Docker take it (`--memory 512m`): bytes, or a number
/// with a k, m, g or t suffix, in powers of 1024, in either case, with an
/// optional `b` or `ib` after it (`64Mi`, `1GiB`, `512k`).
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let digits_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let shift = match unit.strip_suffix('i').unwrap_or(unit) {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return None,
    };
    if number.contains('.') {
        let n: f64 = number.parse().ok()?;
        let bytes = n * (1u64 << shift) as f64;
        return (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64)
            .then_some(bytes as u64);
    }
    number.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// A duration as Go writes it (runc's `--interval`): `500ms`, `5s`, `1m30s`,
/// `1.5h`; units ns, us (µs), ms, s, m, h. A bare number is seconds.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(std::time::Duration::from_secs(secs));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_secs = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * unit_secs;
        rest = &rest[unit_len..];
    }
    std::time::Duration::try_from_secs_f64(total).ok()
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
    use std::time::Duration;

    #[test]
    fn sizes_in_the_units_runc_takes() {
        use super::parse_size;
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("64Mi"), Some(64 << 20));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("1.5g"), Some(3 << 29));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("5x"), None);
        assert_eq!(parse_size("99999999999t"), None);
    }

    #[test]
    fn durations_as_go_writes_them() {
        use super::parse_duration;
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("5d"), None);
        assert_eq!(parse_duration("ms"), None);
    }

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
            // One write a line: the parent and the init trace at once.
            let line = format!(
                "amphi: debug: {:8.3} ms [{}] {what}\n",
                t.as_secs_f64() * 1e3,
                std::process::id()
            );
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
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
