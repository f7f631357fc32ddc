//! A hostile image's tree of symlinks (to absolute paths, `..`, magic
//! links), then a `process.cwd` and a pid file name: resolving the cwd
//! inside the root never leads out of it nor creates anything outside, and
//! a pid file written among the planted links never writes through one.
#![no_main]

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use amphi_core::paths::{open_in_root, write_file, Create};
use libfuzzer_sys::fuzz_target;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

static RUN: AtomicUsize = AtomicUsize::new(0);

fn base() -> std::path::PathBuf {
    // Under $AMPHI_FUZZ_DIR when run.sh sets it (and removes it).
    let base = std::env::var_os("AMPHI_FUZZ_DIR").map_or_else(std::env::temp_dir, Into::into);
    base.canonicalize().unwrap()
}

/// A name planted in the root: one component, never `.` or `..`.
fn name(s: &str) -> Option<&str> {
    (!s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0'])).then_some(s)
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let (Some(cwd), Some(pid_name)) = (lines.next(), lines.next().and_then(name)) else {
        return;
    };
    let dir = base().join(format!(
        "amphi-fuzz-paths-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let (root, outside) = (dir.join("root"), dir.join("outside"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("victim");
    std::fs::write(&victim, "host").unwrap();
    for line in lines {
        if let Some((link, target)) = line.split_once(" -> ") {
            if let Some(link) = name(link) {
                let _ = std::os::unix::fs::symlink(target.replace("VICTIM", victim.to_str().unwrap()), root.join(link));
            }
        }
    }
    let root_fd = open(&root, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
    if !cwd.contains('\0') {
        if let Ok(fd) = open_in_root(root_fd.as_fd(), Path::new(cwd), Create::Dir) {
            let at = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd))).unwrap();
            assert!(at.starts_with(&root), "{cwd:?} resolved to {}", at.display());
        }
    }
    let pid_file = root.join(pid_name);
    let written = write_file(&pid_file, b"1234");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host", "written through a link");
    let outside_names: Vec<_> = std::fs::read_dir(&outside).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(outside_names, [std::ffi::OsString::from("victim")], "created outside the root");
    if written.is_ok() {
        let meta = std::fs::symlink_metadata(&pid_file).unwrap();
        assert!(meta.is_file());
        assert_eq!(std::fs::read(&pid_file).unwrap(), b"1234");
    }
    std::fs::remove_dir_all(&dir).unwrap();
});
