//! A private containerd for tests and benchmarks: Debian's containerd 1.6
//! with its own config, root, state and socket in a temp dir, amphi's shim
//! on its PATH, and images built locally as OCI layouts (no registry).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{repo_root, wait_for};

pub const RUNTIME: &str = "io.containerd.amphi.v2";
pub const BUSYBOX: &str = "docker.io/amphi/busybox:test";
pub const WASM: &str = "docker.io/amphi/wasm:test";
pub const NS: &str = "amphi-test";

pub struct Containerd {
    pub tmp: tempfile::TempDir,
    pub daemon: Child,
    pub tag: String,
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Containerd {
    /// Start containerd with `amphi` (and the shim beside it) on its PATH.
    pub fn start(amphi: &Path) -> Containerd {
        Containerd::start_with(amphi, false)
    }

    /// The same, with cgroup2 mounted at /sys/fs/cgroup in containerd's
    /// mount namespace: containerd, the shim and amphi see a pure v2 host
    /// (the host's own unified hierarchy).
    pub fn start_on_cgroup2(amphi: &Path) -> Containerd {
        Containerd::start_with(amphi, true)
    }

    fn start_with(amphi: &Path, cgroup2: bool) -> Containerd {
        // The runc shim daemonizes; its orphans come to us, not to a PID 1
        // that reaps late.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let tmp = tempfile::Builder::new()
            .prefix("amphi-ctd")
            .tempdir()
            .unwrap();
        let t = tmp.path();
        // The shim and amphi, found by containerd on its PATH.
        let bin = t.join("bin");
        std::fs::create_dir(&bin).unwrap();
        let shim = amphi.with_file_name("containerd-shim-amphi-v2");
        assert!(
            shim.exists(),
            "{} missing: cargo build first",
            shim.display()
        );
        std::os::unix::fs::symlink(&shim, bin.join("containerd-shim-amphi-v2")).unwrap();
        std::os::unix::fs::symlink(amphi, bin.join("amphi")).unwrap();
        let config = format!(
            r#"version = 2
root = "{t}/root"
state = "{t}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{t}/c.sock"
[ttrpc]
  address = "{t}/c.sock.ttrpc"
"#,
            t = t.display()
        );
        std::fs::write(t.join("config.toml"), config).unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        // A mount namespace of its own with a fresh /run: containerd 1.6 and
        // its shims keep sockets and state there whatever they are told.
        let script = format!(
            "mount -t tmpfs -o mode=755 tmpfs /run && {}exec containerd --config {}/config.toml",
            if cgroup2 {
                "mount -t cgroup2 cgroup2 /sys/fs/cgroup && "
            } else {
                ""
            },
            t.display()
        );
        std::fs::create_dir_all(t.join("fifo")).unwrap();
        let daemon = crate::clients::daemon("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env("PATH", path)
            .env("AMPHI_ROOT", t.join("amphi"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(t.join("containerd.log")).unwrap())
            .stderr(std::fs::File::create(t.join("containerd.err")).unwrap())
            .spawn()
            .expect("containerd (Debian's containerd package; scripts/deps.sh installs it)");
        let c = Containerd {
            tag: format!("amphi-ctd-{}", std::process::id()),
            tmp,
            daemon,
        };
        assert!(
            wait_for(20, || c.ctr(&["version"]).code == 0),
            "containerd did not come up: {}",
            std::fs::read_to_string(c.tmp.path().join("containerd.err")).unwrap_or_default()
        );
        c
    }

    pub fn ctr(&self, args: &[&str]) -> Out {
        // The stdio FIFOs ctr makes for a task go where the daemon, in its
        // own /run, can open them too.
        let fifo_dir = self.tmp.path().join("fifo");
        let mut args: Vec<&str> = args.to_vec();
        let after = match args.as_slice() {
            ["run", ..] => Some(1),
            ["task", "start" | "exec", ..] => Some(2),
            _ => None,
        };
        if let Some(at) = after {
            args.insert(at, "--fifo-dir");
            args.insert(at + 1, fifo_dir.to_str().unwrap());
        }
        let out = Command::new("ctr")
            .arg("-a")
            .arg(self.tmp.path().join("c.sock"))
            .args(["-n", NS])
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        reap_zombies(self.daemon.id() as i32);
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert_eq!(
            o.code, 0,
            "ctr {args:?}\nstdout: {}\nstderr: {}",
            o.stdout, o.stderr
        );
        o.stdout
    }

    pub fn cgroup(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }

    /// `ctr run` with amphi's shim and a cgroup below ours.
    pub fn run(&self, opts: &[&str], image: &str, id: &str, args: &[&str]) -> Out {
        self.run_with(RUNTIME, opts, image, id, args)
    }

    /// `ctr run` with `runtime`'s shim (amphi's, or runc's as the
    /// reference) and a cgroup below ours.
    pub fn run_with(
        &self,
        runtime: &str,
        opts: &[&str],
        image: &str,
        id: &str,
        args: &[&str],
    ) -> Out {
        let cg = self.cgroup(id);
        let mut a = vec!["run", "--runtime", runtime, "--cgroup", &cg];
        a.extend(opts);
        a.extend([image, id]);
        a.extend(args);
        self.ctr(&a)
    }

    pub fn task_pid(&self, id: &str) -> i32 {
        self.ok(&["task", "ls"])
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first() == Some(&id)).then(|| f[1].parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no task {id}"))
    }

    pub fn task_status(&self, id: &str) -> String {
        self.ok(&["task", "ls"])
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first() == Some(&id)).then(|| f[2].to_owned())
            })
            .unwrap_or_default()
    }

    pub fn remove(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "-s", "KILL", id]);
        wait_for(10, || self.task_status(id) != "RUNNING");
        let _ = self.ctr(&["task", "delete", id]);
        let _ = self.ctr(&["container", "delete", id]);
    }

    /// Shim processes serving this containerd.
    pub fn shims(&self) -> Vec<i32> {
        let needle = self.tmp.path().join("c.sock").display().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("containerd-shim") && c.contains(&needle)
                })
            })
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let tasks = self.ctr(&["task", "ls", "-q"]).stdout;
        for id in tasks.lines() {
            self.remove(id.trim());
        }
        for id in self.ctr(&["container", "ls", "-q"]).stdout.lines() {
            let _ = self.ctr(&["container", "delete", id.trim()]);
        }
        // SAFETY: signalling the daemon we started.
        unsafe { libc::kill(self.daemon.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.daemon.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // A shim that outlived its daemon (a failed test) is ours: stop it.
        crate::clients::kill_processes_mentioning(self.tmp.path());
        reap_zombies(0);
    }
}

/// Reap our exited children that were handed to us (orphaned shims and
/// what they ran), never a child this process spawned itself: a `Command`
/// of another thread (`ctr`, `bash`, `amphi`) may be about to wait for its
/// zombie, and would get ECHILD (it did, building an image while another
/// test's daemon went down). Those stay in this process's session; a
/// client daemon ([`crate::clients::daemon`]) and what it starts, shims
/// included, are in the daemon's session, and a container's init is in
/// one of its own, so a zombie child in another session was handed to us.
pub fn reap_zombies(daemon: i32) {
    // SAFETY: getsid(0) only reads this process's session id.
    let own_session = unsafe { libc::getsid(0) };
    let me = std::process::id() as i32;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command's closing parenthesis: state, ppid, pgrp, session.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let number = |i: usize| fields.get(i).and_then(|f| f.parse::<i32>().ok());
        let zombie = fields.first() == Some(&"Z");
        let handed_to_us = number(1) == Some(me) && number(3).is_some_and(|s| s != own_session);
        if pid != daemon && zombie && handed_to_us {
            // SAFETY: reaping our own exited child.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        }
    }
}

pub fn image(kind: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{kind}.tar"));
    let st = Command::new("bash")
        .arg(repo_root().join("bundles/oci-image.sh"))
        .arg(kind)
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "oci-image.sh {kind}");
    out
}
