//! Rootless: an unprivileged user, made for the test, runs a bundle from
//! `amphi spec --rootless` (a user namespace mapping the user to root, no
//! cgroup without delegation).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use amphi_tests::{amphi_bin, repo_root, Env};

/// A system user for the duration of the test.
struct User {
    name: String,
    uid: u32,
}

impl User {
    fn create() -> User {
        let name = format!("amphirl{}", std::process::id());
        let st = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/bin/sh", &name])
            .status()
            .expect("useradd (Debian's passwd package)");
        assert!(st.success(), "useradd {name}");
        let out = Command::new("id").args(["-u", &name]).output().unwrap();
        let uid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        User { name, uid }
    }

    /// `sh -c script` as this user; stdout, and the exit code.
    fn sh(&self, dir: &Path, script: &str) -> (i32, String, String) {
        let out = Command::new("setpriv")
            .args([
                "--reuid",
                &self.uid.to_string(),
                "--regid",
                &self.uid.to_string(),
                "--clear-groups",
                "--reset-env",
            ])
            .args(["sh", "-c", script])
            .current_dir(dir)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .expect("setpriv");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

#[test]
fn unprivileged_user_runs_a_rootless_bundle() {
    let env = Env::new();
    let user = User::create();
    let dir = env.tmp.path().join("rootless");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(env.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.uid)).unwrap();
    // The binary where the user can run it.
    let bin = dir.join("amphi");
    std::fs::copy(amphi_bin(), &bin).unwrap();
    let rootfs_script = repo_root().join("bundles/busybox-rootfs.sh");
    let d = dir.display();
    let (code, out, err) = user.sh(
        &dir,
        &format!(
            "set -e; bash {} {d}/b/rootfs; cd {d}/b; {d}/amphi spec --rootless; \
             sed -i 's|\"sh\"|\"sh\", \"-c\", \"id -u; cat /proc/self/uid_map; sleep 600\"|' config.json; \
             {d}/amphi --root {d}/state create -b . rl > {d}/out 2>&1; {d}/amphi --root {d}/state start rl; \
             {d}/amphi --root {d}/state state rl",
            rootfs_script.display()
        ),
    );
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let state: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(state["status"], "running", "{out}");
    let pid = state["pid"].as_i64().unwrap();
    amphi_tests::remember_init(pid as i32);
    // On the host the container's root is the unprivileged user.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().nth(1),
        Some(user.uid.to_string().as_str())
    );
    assert!(amphi_tests::wait_for(5, || std::fs::read_to_string(
        dir.join("out")
    )
    .is_ok_and(|s| s.lines().count() >= 2)));
    let inside = std::fs::read_to_string(dir.join("out")).unwrap();
    let mut lines = inside.lines();
    assert_eq!(lines.next(), Some("0"), "{inside}");
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["0", user.uid.to_string().as_str(), "1"]
    );
    // exec and the rest of the lifecycle work unprivileged too.
    let (code, out, err) = user.sh(
        &dir,
        &format!("{d}/amphi --root {d}/state exec rl id -u && {d}/amphi --root {d}/state kill rl KILL && sleep 0.3 && {d}/amphi --root {d}/state delete --force rl"),
    );
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(out.trim(), "0");
    assert!(!dir.join("state/rl").exists(), "state left");
    amphi_tests::reap_inits();
    assert!(amphi_tests::wait_for(5, || nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        None
    )
    .is_err()));
}
