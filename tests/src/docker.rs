//! A private dockerd (Debian's docker.io 20.10) with amphi registered as a
//! runtime, as its users do in daemon.json: its own data root, exec root,
//! socket and containerd, no bridge and no iptables, in a mount namespace
//! of its own (with a fresh /run: dockerd keeps a plugin directory there
//! whatever it is told), cgroups below the test's own. Images come from
//! `docker import` only; runs never pull.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::clients::{daemon, kill_processes_mentioning, remove_cgroup_tree, Out};
use crate::wait_for;

pub struct Docker {
    pub tmp: tempfile::TempDir,
    daemon: Child,
    cgroup_parent: String,
}

impl Docker {
    pub fn start(amphi: &Path) -> Docker {
        crate::become_subreaper();
        let tmp = tempfile::Builder::new()
            .prefix("amphi-docker")
            .tempdir()
            .unwrap();
        let t = tmp.path();
        let cgroup_parent = format!(
            "{}/amphi-docker-{}",
            crate::own_cgroup().trim_end_matches('/'),
            t.file_name().unwrap().to_string_lossy()
        );
        // default-ulimits within this host's hard limits, which root cannot
        // raise (with runc as with amphi).
        let config = serde_json::json!({
            "runtimes": {"amphi": {"path": amphi}},
            "bridge": "none", "iptables": false, "ip6tables": false,
            "ip-forward": false, "ip-masq": false, "userland-proxy": false,
            "default-ulimits": {
                "nofile": {"Name": "nofile", "Hard": 1024, "Soft": 1024},
                "nproc": {"Name": "nproc", "Hard": 4096, "Soft": 4096}
            },
            "cgroup-parent": cgroup_parent,
            "storage-driver": "vfs",
            "log-driver": "json-file",
            "registry-mirrors": ["http://127.0.0.1:9"]
        });
        std::fs::write(t.join("daemon.json"), config.to_string()).unwrap();
        let script = format!(
            "mount -t tmpfs -o mode=755 tmpfs /run && exec dockerd --config-file {t}/daemon.json \
             --data-root {t}/data --exec-root {t}/exec --pidfile {t}/docker.pid -H unix://{t}/docker.sock",
            t = t.display()
        );
        let daemon = daemon("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(t.join("dockerd.log")).unwrap())
            .stderr(std::fs::File::create(t.join("dockerd.err")).unwrap())
            .spawn()
            .expect("dockerd (Debian's docker.io package; scripts/deps.sh installs it)");
        let d = Docker {
            tmp,
            daemon,
            cgroup_parent,
        };
        assert!(
            wait_for(60, || d.docker(&["version"]).code == 0),
            "dockerd did not come up: {}",
            std::fs::read_to_string(d.tmp.path().join("dockerd.err")).unwrap_or_default()
        );
        d
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("/usr/bin/docker");
        c.arg("-H")
            .arg(format!("unix://{}/docker.sock", self.tmp.path().display()))
            .args(args)
            .env("DOCKER_CONFIG", self.tmp.path().join("client"))
            .stdin(Stdio::null());
        c
    }

    pub fn docker(&self, args: &[&str]) -> Out {
        Out::from(self.command(args).output().expect("docker client"))
    }

    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert_eq!(
            o.code, 0,
            "docker {args:?}\nstdout: {}\nstderr: {}",
            o.stdout, o.stderr
        );
        o.stdout
    }

    /// `docker run` as the tests run it: amphi, no pull, no network.
    pub fn run(&self, opts: &[&str], image: &str, args: &[&str]) -> Out {
        let mut a = vec![
            "run",
            "--runtime",
            "amphi",
            "--pull",
            "never",
            "--network",
            "none",
        ];
        a.extend(opts);
        a.push(image);
        a.extend(args);
        self.docker(&a)
    }

    pub fn import(&self, tar: &Path, name: &str, changes: &[&str]) {
        let mut a = vec!["import"];
        for c in changes {
            a.extend(["--change", c]);
        }
        let tar = tar.to_str().unwrap();
        a.extend([tar, name]);
        self.ok(&a);
    }

    /// The container's cgroup directories on the host.
    pub fn container_cgroups(&self, id: &str) -> Vec<std::path::PathBuf> {
        crate::cgroup_mounts()
            .into_iter()
            .map(|m| m.join(self.cgroup_parent.trim_start_matches('/')).join(id))
            .filter(|d| d.exists())
            .collect()
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let ids = self.docker(&["ps", "--all", "--quiet"]).stdout;
        for id in ids.lines() {
            let _ = self.docker(&["rm", "--force", id.trim()]);
        }
        // SAFETY: signalling the daemon we started (its sh has exec'd it).
        unsafe { libc::kill(self.daemon.id() as i32, libc::SIGTERM) };
        wait_for(20, || matches!(self.daemon.try_wait(), Ok(Some(_))));
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // Its containerd, shims and anything a failed test left.
        kill_processes_mentioning(self.tmp.path());
        crate::reap_inits();
        remove_cgroup_tree(&self.cgroup_parent);
    }
}
