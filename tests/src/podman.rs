//! A private podman driving amphi: Debian's podman with its stock seccomp
//! profile, storage, run state, config and cgroups of the test's own, as
//! root or as a rootless test user (a user with subordinate id ranges,
//! made and removed by the test). Everything is undone by `Drop`: the
//! containers, conmon and any process left, the cgroups, the user.
//!
//! Root podman runs in a mount namespace of the test's with a fresh /run:
//! it keeps state in /run/libpod and /run/containers whatever it is told,
//! and gives the runtime no --root (runc's state goes to /run/runc,
//! amphi's to /run/amphi), nor the same flags on every call (its clean-up
//! runs `delete` without `--runtime-flag`s), so the runtime's default root
//! is the only one every call agrees on.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::clients::{kill_processes_mentioning, remove_cgroup_tree, Out, TestUser};

pub struct Podman {
    pub tmp: tempfile::TempDir,
    amphi: PathBuf,
    /// Holds the mount namespace root podman runs in (its /run is a tmpfs).
    holder: Option<std::process::Child>,
    /// The cgroup the containers go below (root podman only).
    cgroup_parent: Option<String>,
    pub user: Option<TestUser>,
}

impl Podman {
    /// podman as root, with amphi as its runtime.
    pub fn root(amphi: &Path) -> Podman {
        Podman::new(amphi, None)
    }

    /// podman as a fresh unprivileged user (rootless).
    pub fn rootless(amphi: &Path) -> Podman {
        Podman::new(amphi, Some(TestUser::create("amphipm")))
    }

    fn new(amphi: &Path, user: Option<TestUser>) -> Podman {
        crate::become_subreaper();
        let tmp = tempfile::Builder::new()
            .prefix("amphi-podman")
            .tempdir()
            .unwrap();
        let t = tmp.path();
        for d in ["root", "runroot", "tmp", "run"] {
            std::fs::create_dir(t.join(d)).unwrap();
        }
        // podman asks for nofile and nproc of 1048576 by default; this
        // host's hard limits are lower and root cannot raise them (no
        // CAP_SYS_RESOURCE), with runc as with amphi.
        let conf = format!(
            r#"[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
netns = "none"
ipcns = "private"
log_driver = "k8s-file"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "amphi"
[engine.runtimes]
amphi = ["{amphi}"]
"#,
            amphi = amphi.display(),
        );
        std::fs::write(t.join("containers.conf"), conf).unwrap();
        let cgroup_parent = user.is_none().then(|| {
            format!(
                "{}/amphi-podman-{}",
                crate::own_cgroup().trim_end_matches('/'),
                t.file_name().unwrap().to_string_lossy()
            )
        });
        if let Some(u) = &user {
            u.chown_tree(t);
            // The user's own run directory, as a login would give it.
            std::fs::set_permissions(
                t.join("run"),
                std::os::unix::fs::PermissionsExt::from_mode(0o700),
            )
            .unwrap();
        }
        let holder = user.is_none().then(|| {
            let mut holder = crate::clients::daemon("unshare")
                .args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg("mount -t tmpfs -o mode=755 tmpfs /run && touch /run/.amphi-ready && exec sleep infinity")
                .stdin(Stdio::null())
                .spawn()
                .expect("unshare");
            let ready = format!("/proc/{}/root/run/.amphi-ready", holder.id());
            if !crate::wait_for(10, || Path::new(&ready).exists()) {
                let _ = holder.kill();
                panic!("the mount namespace for podman did not come up");
            }
            holder
        });
        Podman {
            tmp,
            amphi: amphi.to_path_buf(),
            holder,
            cgroup_parent,
            user,
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let t = self.tmp.path();
        let mut c = match (&self.user, &self.holder) {
            (Some(u), _) => u.command("podman"),
            (None, Some(h)) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--mount=/proc/{}/ns/mnt", h.id()))
                    .args(["--", "podman"]);
                c
            }
            (None, None) => unreachable!("root podman has its mount namespace"),
        };
        c.env("CONTAINERS_CONF", t.join("containers.conf"))
            .env("XDG_RUNTIME_DIR", t.join("run"))
            .env("HOME", t)
            .arg("--root")
            .arg(t.join("root"))
            .arg("--runroot")
            .arg(t.join("runroot"))
            .arg("--tmpdir")
            .arg(t.join("tmp"))
            .args(["--storage-driver", "vfs", "--runtime"])
            .arg(&self.amphi)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    pub fn podman(&self, args: &[&str]) -> Out {
        Out::from(
            self.command(args)
                .output()
                .expect("podman (Debian's podman package)"),
        )
    }

    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.podman(args);
        assert_eq!(
            o.code, 0,
            "podman {args:?}\nstdout: {}\nstderr: {}",
            o.stdout, o.stderr
        );
        o.stdout
    }

    /// `podman run` with the options every test run takes: no network,
    /// the test's cgroup parent, conmon outside cgroups (it would go to
    /// a cgroup at the root of every hierarchy).
    pub fn run(&self, opts: &[&str], image: &str, args: &[&str]) -> Out {
        let parent = self
            .cgroup_parent
            .as_ref()
            .map(|p| format!("--cgroup-parent={p}"));
        let mut a = vec!["run", "--network", "none"];
        if let Some(p) = &parent {
            a.extend(["--cgroups=no-conmon", p]);
        }
        a.extend(opts);
        a.push(image);
        a.extend(args);
        self.podman(&a)
    }

    /// Import a root filesystem tarball as `name`, with `changes` (Dockerfile
    /// instructions such as `ENTRYPOINT ["/hello.wasm"]`).
    pub fn import(&self, tar: &Path, name: &str, changes: &[&str]) {
        let mut a = vec!["import"];
        for c in changes {
            a.extend(["--change", c]);
        }
        let tar = tar.to_str().unwrap();
        a.extend([tar, name]);
        self.ok(&a);
    }

    /// The cgroup directories below this podman's cgroup parent, in every
    /// hierarchy (where its containers' limits are).
    pub fn container_cgroups(&self, id: &str) -> Vec<PathBuf> {
        let Some(parent) = &self.cgroup_parent else {
            return Vec::new();
        };
        crate::cgroup_mounts()
            .into_iter()
            .map(|m| {
                m.join(parent.trim_start_matches('/'))
                    .join(format!("libpod-{id}"))
            })
            .filter(|d| d.exists())
            .collect()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self
            .command(&["rm", "--all", "--force", "--time", "0"])
            .output();
        // conmon, a container a failed test left, rootless podman's pause
        // process: every process started for this podman names its dirs.
        kill_processes_mentioning(self.tmp.path());
        if let Some(u) = &self.user {
            u.kill_all();
        }
        crate::reap_inits();
        if let Some(p) = &self.cgroup_parent {
            remove_cgroup_tree(p);
        }
        if let Some(mut h) = self.holder.take() {
            let _ = h.kill();
            let _ = h.wait();
        }
    }
}
