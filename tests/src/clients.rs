//! What the harnesses of real clients (podman, Docker, containerd's CRI)
//! share: command output, a throw-away unprivileged user, images made from
//! the project's own root filesystems, and the clean-up of what a client
//! started.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::repo_root;

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Out {
        use std::os::unix::process::ExitStatusExt;
        Out {
            code: o
                .status
                .code()
                .unwrap_or_else(|| 128 + o.status.signal().unwrap_or(0)),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// An unprivileged user with subordinate uid and gid ranges (as rootless
/// podman needs), made for one test and deleted after it with everything
/// it ran.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TestUser {
    pub fn create(prefix: &str) -> TestUser {
        let name = format!("{prefix}{}", std::process::id());
        let st = Command::new("useradd")
            .args([
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/bin/sh",
                "--user-group",
            ])
            .arg(&name)
            .status()
            .expect("useradd");
        assert!(st.success(), "useradd {name}");
        // 65536 ids far above any real user's, distinct per test process.
        let start = 1_000_000_000 + (std::process::id() % 10_000) * 65_536;
        let range = format!("{start}-{}", start + 65_535);
        let st = Command::new("usermod")
            .args(["--add-subuids", &range, "--add-subgids", &range])
            .arg(&name)
            .status()
            .expect("usermod");
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").arg(flag).arg(&name).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        let user = TestUser {
            uid: id("-u"),
            gid: id("-g"),
            name,
        };
        assert!(st.success(), "usermod --add-subuids {range} {}", user.name);
        user
    }

    /// `program`, run as this user (no supplementary groups).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.uid(self.uid).gid(self.gid);
        c
    }

    pub fn chown_tree(&self, dir: &Path) {
        let st = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", self.uid, self.gid))
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// SIGKILL every process of this user (all were started by the test).
    pub fn kill_all(&self) {
        for _ in 0..50 {
            let pids = processes_where(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("Uid:"))
                        .and_then(|l| l.split_whitespace().next())
                        == Some(&self.uid.to_string())
                })
            });
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // SAFETY: a process of the test's own user.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            crate::reap_inits();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        self.kill_all();
        // userdel also drops the user's subordinate ranges and its group.
        let _ = Command::new("userdel")
            .arg("--force")
            .arg(&self.name)
            .status();
    }
}

fn processes_where(f: impl Fn(i32) -> bool) -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me && f(*pid))
        .collect()
}

/// SIGKILL every process whose command line names `dir` (a client's
/// private directory: its daemons, conmon, shims), then reap what was ours.
pub fn kill_processes_mentioning(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    for _ in 0..50 {
        let pids = processes_where(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        });
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: a process started for this test's client.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        crate::containerd::reap_zombies(0);
    }
}

/// Remove cgroup `rel` (absolute in each hierarchy) and everything below
/// it, in every hierarchy, killing what still runs there: a tree a test's
/// client made below the test's own cgroup.
pub fn remove_cgroup_tree(rel: &str) {
    for mount in crate::cgroup_mounts() {
        let top = mount.join(rel.trim_start_matches('/'));
        if !top.exists() {
            continue;
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut stack = vec![top];
        while let Some(d) = stack.pop() {
            if let Ok(entries) = std::fs::read_dir(&d) {
                stack.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            dirs.push(d);
        }
        for d in dirs.iter().rev() {
            for _ in 0..100 {
                let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: a process in a cgroup the test's client made.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
        }
    }
}

/// Root filesystem tarballs of the project's own, for `podman import` and
/// `docker import`: busybox, and the wasm guests (`/hello.wasm`,
/// `/spin.wasm`, `/idle.wasm`, `/alloc.wasm`, and a broken `/bad.wasm`)
/// with nothing else.
pub fn rootfs_tarball(kind: &str, dir: &Path) -> PathBuf {
    let root = dir.join(format!("{kind}-rootfs"));
    std::fs::create_dir_all(&root).unwrap();
    match kind {
        "busybox" => {
            let st = Command::new(repo_root().join("bundles/busybox-rootfs.sh"))
                .arg(&root)
                .status()
                .unwrap();
            assert!(st.success(), "busybox-rootfs.sh");
        }
        "wasm" => {
            for guest in ["hello", "spin", "idle", "alloc", "counter"] {
                std::fs::copy(
                    crate::guests_dir().join(format!("{guest}.wasm")),
                    root.join(format!("{guest}.wasm")),
                )
                .unwrap();
            }
            // A module that starts like one and then is not: it must fail
            // at create, with amphi's reason in the client's output.
            std::fs::write(root.join("bad.wasm"), b"\0asm\x01\0\0\0\xffnot a section").unwrap();
            std::fs::create_dir_all(root.join("tmp")).unwrap();
        }
        other => panic!("no rootfs kind {other}"),
    }
    let tar = dir.join(format!("{kind}.tar"));
    let st = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--numeric-owner", "-cf"])
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success(), "tar {kind}");
    // The tarball is read by the client, possibly as another user.
    let _ = std::fs::set_permissions(&tar, std::os::unix::fs::PermissionsExt::from_mode(0o644));
    tar
}

/// `true` where a command exists on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Run `program` in a new session (no controlling terminal): daemons that
/// must outlive the call.
pub fn daemon(program: &str) -> Command {
    let mut c = Command::new(program);
    // SAFETY: setsid in the child before exec.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    c
}
