//! The benchmark's world: a temp dir with one rootfs (busybox, the wasm
//! guests under /app, the native benchmark program as /bin/bench), bundles
//! that share it, a runtime root per runtime, container cgroups below our
//! own, and removal of everything on drop.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use amphi_tests::cgroup_dirs_by_hierarchy;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

#[derive(Clone, Copy)]
pub enum Kind {
    Native,
    Wasm,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Native => "native",
            Kind::Wasm => "wasm",
        }
    }

    pub fn tag(self) -> &'static str {
        &self.name()[..1]
    }
}

pub struct World {
    tmp: tempfile::TempDir,
    tag: String,
    pub rootfs: PathBuf,
    pub amphi: PathBuf,
    pub runc: PathBuf,
    pub runc_version: String,
    pub crun: Option<PathBuf>,
    pub youki: Option<PathBuf>,
    pub native_true: PathBuf,
    /// /bin/true in the bundle a pod container gets (see `pod_bundle`).
    pub pod_true: PathBuf,
    /// The same for the cgroup2 view (`Layout::Cgroup2`).
    pub pod_true_v2: PathBuf,
    /// The same for crun: no cgroup manager, no device filter.
    pub pod_true_crun: PathBuf,
    pub native_sleep: PathBuf,
    pub wasm_hello: PathBuf,
    /// preinit.wasm, whose start is mostly its own initialization, with
    /// io.github.amphi.preinit=true, and as it is.
    pub wasm_preinit: PathBuf,
    pub wasm_own_init: PathBuf,
    pub floor_cgroup: String,
    /// The cgroup2 view: a mount namespace with cgroup2 at /sys/fs/cgroup,
    /// made once and held by a sleeping process; the cgroup2 rows join it.
    cgroup2_view: Cgroup2View,
}

struct Cgroup2View {
    holder: std::process::Child,
    ns: std::fs::File,
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_path_buf()
}

pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

fn first_line(cmd: &Path, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default()
}

/// The amphi binary of this build profile (amphi-wasm and the shim beside
/// it), built if missing.
fn amphi_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("AMPHI_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("exe dir")?;
    let bin = dir.join("amphi");
    if ["amphi", "amphi-wasm", "containerd-shim-amphi-v2"]
        .iter()
        .any(|b| !dir.join(b).exists())
    {
        let mut c = Command::new("cargo");
        c.args(["build", "-p", "amphi", "-p", "containerd-shim-amphi-v2"])
            .current_dir(repo_root());
        if !cfg!(debug_assertions) {
            c.arg("--release");
        }
        if !c.status()?.success() {
            bail!("building amphi failed");
        }
    }
    Ok(bin)
}

/// What `amphi --version` says of a build, on one line (its wasmtime
/// included).
pub fn version_of(amphi: &Path) -> String {
    Command::new(amphi)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .replace('\n', ", ")
        })
        .unwrap_or_default()
}

impl World {
    pub fn new(smoke: bool) -> Result<World> {
        let amphi = amphi_bin()?;
        let runc =
            on_path("runc").context("runc not found: run scripts/deps.sh (Debian's runc)")?;
        let st = Command::new("bash")
            .arg(repo_root().join("bundles/wasm/build.sh"))
            .status()?;
        if !st.success() {
            bail!("bundles/wasm/build.sh failed");
        }
        let tmp = tempfile::Builder::new().prefix("amphi-bench").tempdir()?;
        let rootfs = tmp.path().join("rootfs");
        let st = Command::new(repo_root().join("bundles/busybox-rootfs.sh"))
            .arg(&rootfs)
            .status()?;
        if !st.success() {
            bail!("bundles/busybox-rootfs.sh failed");
        }
        let out = repo_root().join("bundles/out");
        std::fs::create_dir_all(rootfs.join("app"))?;
        for g in ["hello", "idle", "bench", "counter", "preinit"] {
            std::fs::copy(
                out.join(format!("wasm/{g}.wasm")),
                rootfs.join(format!("app/{g}.wasm")),
            )?;
        }
        std::fs::copy(out.join("bin/bench"), rootfs.join("bin/bench"))?;
        let tag = format!("amphi-bench-{}", std::process::id());
        let cgroup2_view = Cgroup2View::new()?;
        let mut w = World {
            cgroup2_view,
            runc_version: first_line(&runc, "--version"),
            crun: if smoke { None } else { on_path("crun") },
            youki: if smoke { None } else { on_path("youki") },
            floor_cgroup: format!("{tag}-floor"),
            tag,
            rootfs,
            amphi,
            runc,
            native_true: PathBuf::new(),
            pod_true: PathBuf::new(),
            pod_true_v2: PathBuf::new(),
            pod_true_crun: PathBuf::new(),
            native_sleep: PathBuf::new(),
            wasm_hello: PathBuf::new(),
            wasm_preinit: PathBuf::new(),
            wasm_own_init: PathBuf::new(),
            tmp,
        };
        w.native_true = w.bundle("true", &["/bin/true"])?;
        w.pod_true = w.pod_bundle("pod", PodCgroups::Full)?;
        w.pod_true_v2 = w.pod_bundle("pod-v2", PodCgroups::Devices)?;
        w.pod_true_crun = w.pod_bundle("pod-crun", PodCgroups::None)?;
        w.native_sleep = w.bundle("sleep", &["/bin/sleep", "600"])?;
        w.wasm_hello = w.bundle("hello", &["/app/hello.wasm"])?;
        w.wasm_own_init = w.bundle("own-init", &["/app/preinit.wasm"])?;
        w.wasm_preinit = w.bundle("preinit", &["/app/preinit.wasm"])?;
        let config = w.wasm_preinit.join("config.json");
        let mut spec: Value = serde_json::from_slice(&std::fs::read(&config)?)?;
        spec["annotations"] = json!({"io.github.amphi.preinit": "true"});
        std::fs::write(&config, serde_json::to_vec_pretty(&spec)?)?;
        Ok(w)
    }

    pub fn tmp(&self) -> &Path {
        self.tmp.path()
    }

    /// A bundle on the shared rootfs, with a cgroup of its own below ours.
    pub fn bundle(&self, name: &str, args: &[&str]) -> Result<PathBuf> {
        let dir = self.tmp().join(format!("bundle-{name}"));
        std::fs::create_dir_all(&dir)?;
        let spec = json!({
            "ociVersion": "1.0.2",
            "process": {
                "user": {"uid": 0, "gid": 0}, "args": args, "cwd": "/",
                "env": ["PATH=/bin"], "noNewPrivileges": true,
                "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]}
            },
            "root": {"path": self.rootfs},
            "hostname": "bench",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755", "size=65536k"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
            ],
            "linux": {
                "cgroupsPath": format!("{}-{name}", self.tag),
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list"],
                "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
            }
        });
        std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&spec)?)?;
        Ok(dir)
    }

    /// /bin/true in the bundle a Kubernetes pod container gets: `runc
    /// spec` (where containerd, podman and Docker start from: /dev/pts,
    /// /dev/shm, mqueue, a read-only sysfs and cgroup mount, masked and
    /// read-only paths, the device deny-all) plus what containerd's CRI
    /// adds: the default capabilities, the RuntimeDefault seccomp profile
    /// (containers-common's, as podman resolves it), /etc/hosts,
    /// resolv.conf and hostname bound in, a cgroup namespace, the
    /// BestEffort CPU weight and a read-write rootfs.
    pub fn pod_bundle(&self, name: &str, cgroups: PodCgroups) -> Result<PathBuf> {
        let dir = self.tmp().join(format!("bundle-{name}"));
        std::fs::create_dir_all(&dir)?;
        let st = Command::new(&self.runc)
            .args(["spec", "--bundle"])
            .arg(&dir)
            .status()
            .context("runc spec")?;
        if !st.success() {
            bail!("runc spec: {st}");
        }
        let mut spec: Value = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
        let caps = amphi_tests::DEFAULT_CAPS;
        spec["root"] = json!({"path": self.rootfs, "readonly": false});
        spec["hostname"] = json!("pod");
        let process = &mut spec["process"];
        process["terminal"] = json!(false);
        process["args"] = json!(["/bin/true"]);
        process["oomScoreAdj"] = json!(1000);
        for set in ["bounding", "effective", "permitted"] {
            process["capabilities"][set] = json!(caps);
        }
        let mut mounts = spec["mounts"].as_array().cloned().unwrap_or_default();
        for file in ["hosts", "resolv.conf", "hostname"] {
            std::fs::write(dir.join(file), "")?;
            let etc = self.rootfs.join("etc").join(file);
            if !etc.exists() {
                std::fs::write(etc, "")?;
            }
            mounts.push(
                json!({"destination": format!("/etc/{file}"), "type": "bind",
                "source": dir.join(file), "options": ["rbind", "rprivate", "rw"]}),
            );
        }
        spec["mounts"] = json!(mounts);
        let linux = &mut spec["linux"];
        linux["cgroupsPath"] = json!(format!("{}-{name}", self.tag));
        linux["namespaces"]
            .as_array_mut()
            .context("runc spec: linux.namespaces")?
            .push(json!({"type": "cgroup"}));
        let profile: Value = serde_json::from_str(
            &std::fs::read_to_string(amphi_tests::seccomp::CONTAINERS_PROFILE)
                .context("containers-common's seccomp profile (scripts/deps.sh installs podman)")?,
        )?;
        linux["seccomp"] = serde_json::to_value(amphi_tests::seccomp::resolve_containers_profile(
            &profile, &caps,
        ))?;
        match cgroups {
            PodCgroups::Full => linux["resources"]["cpu"] = json!({"shares": 2}),
            PodCgroups::Devices => {}
            PodCgroups::None => linux["resources"] = json!({}),
        }
        std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&spec)?)?;
        Ok(dir)
    }

    fn root(&self, bin: &Path) -> PathBuf {
        let name = bin.file_name().unwrap_or_default().to_string_lossy();
        self.tmp().join(format!("root-{name}"))
    }

    pub(crate) fn cmd(&self, bin: &Path, global: &[&str], args: &[&str]) -> Command {
        let mut c = Command::new(bin);
        c.arg("--root").arg(self.root(bin)).args(global).args(args);
        c.stdin(Stdio::null()).stdout(Stdio::null());
        c
    }

    pub(crate) fn id(&self, suffix: &str) -> String {
        format!("b{}-{suffix}", std::process::id())
    }

    /// Run a command to completion; an error carries its stderr.
    pub(crate) fn check(&self, mut c: Command, what: &str) -> Result<()> {
        let out = c
            .stderr(Stdio::piped())
            .output()
            .with_context(|| what.to_owned())?;
        if !out.status.success() {
            bail!(
                "{what}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// `RUNTIME run` of the bundle, create to exit (delete included).
    pub fn run_time(
        &self,
        bin: &Path,
        bundle: &Path,
        suffix: &str,
        global: &[&str],
    ) -> Result<Duration> {
        let id = self.id(suffix);
        let c = self.cmd(
            bin,
            global,
            &["run", "--bundle", bundle.to_str().unwrap(), &id],
        );
        let t = Instant::now();
        self.check(c, &format!("{} run", bin.display()))?;
        Ok(t.elapsed())
    }

    /// crun as a lower bound: in the cgroup2 view (it refuses hybrid
    /// hosts) with no cgroup manager.
    pub fn crun_time(&self, crun: &Path, bundle: &Path, suffix: &str) -> Result<Duration> {
        let id = self.id(suffix);
        let mut c = self.cmd(
            crun,
            &["--cgroup-manager=disabled"],
            &["run", "--bundle", bundle.to_str().unwrap(), &id],
        );
        self.in_cgroup2_view(&mut c);
        let t = Instant::now();
        self.check(c, "crun run")?;
        Ok(t.elapsed())
    }

    /// amphi in the cgroup2 view: it sees a pure v2 host, and its
    /// containers' cgroups go into the unified hierarchy.
    pub fn amphi_v2_time(&self, bundle: &Path, suffix: &str) -> Result<Duration> {
        let id = self.id(suffix);
        let mut c = self.cmd(
            &self.amphi,
            &[],
            &["run", "--bundle", bundle.to_str().unwrap(), &id],
        );
        self.in_cgroup2_view(&mut c);
        let t = Instant::now();
        self.check(c, "amphi run (cgroup2 view)")?;
        Ok(t.elapsed())
    }

    /// Run `c` in the cgroup2 view. Joining a view made once, rather than
    /// mounting cgroup2 for every start, keeps the rows about the runtimes:
    /// a fresh cgroup2 mount waits for the cgroup teardown the previous
    /// row left behind (about 11 ms right after a runc run here).
    fn in_cgroup2_view(&self, c: &mut Command) {
        let ns = self.cgroup2_view.ns.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the fd outlives the spawn.
        unsafe {
            c.pre_exec(move || {
                if libc::setns(ns, libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    fn create(&self, bin: &Path, bundle: &Path, id: &str) -> Result<(i32, libc::rusage)> {
        let pid_file = self.tmp().join(format!("{id}.pid"));
        let mut c = self.cmd(
            bin,
            &[],
            &[
                "create",
                "--pid-file",
                pid_file.to_str().unwrap(),
                "--bundle",
                bundle.to_str().unwrap(),
                id,
            ],
        );
        let err = self.tmp().join("stderr");
        c.stderr(std::fs::File::create(&err)?);
        let child = c.spawn()?;
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; wait4 fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waiting for our own child with valid pointers.
        unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            bail!(
                "{} create: {}",
                bin.display(),
                std::fs::read_to_string(&err).unwrap_or_default().trim()
            );
        }
        let pid = std::fs::read_to_string(&pid_file)?.trim().parse()?;
        Ok((pid, usage))
    }

    /// create, start, wait (for the init, re-parented to us), delete.
    pub fn split_time(&self, bin: &Path, bundle: &Path, suffix: &str) -> Result<[Duration; 4]> {
        let id = self.id(suffix);
        let t0 = Instant::now();
        let (pid, _) = self.create(bin, bundle, &id)?;
        let t1 = Instant::now();
        self.check(self.cmd(bin, &[], &["start", &id]), "start")?;
        let t2 = Instant::now();
        // SAFETY: waiting for a process we inherited as subreaper.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        let t3 = Instant::now();
        self.check(self.cmd(bin, &[], &["delete", &id]), "delete")?;
        let t4 = Instant::now();
        Ok([t1 - t0, t2 - t1, t3 - t2, t4 - t3])
    }

    /// `RUNTIME --debug run` of the bundle: each step amphi's `--debug`
    /// names (parent and init, in time order) with the milliseconds since
    /// the step before it.
    pub fn debug_phases(
        &self,
        bin: &Path,
        bundle: &Path,
        suffix: &str,
    ) -> Result<Vec<(String, f64)>> {
        let id = self.id(suffix);
        let out = self
            .cmd(
                bin,
                &["--debug"],
                &["run", "--bundle", bundle.to_str().unwrap(), &id],
            )
            .stderr(Stdio::piped())
            .output()
            .context("--debug run")?;
        if !out.status.success() {
            bail!(
                "{} --debug run: {}: {}",
                bin.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // "amphi: debug: <ms> ms [<pid>] <step>"
        let mut steps: Vec<(f64, String)> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("amphi: debug:")?.trim_start();
                let (ms, rest) = rest.split_once(" ms [")?;
                let (_, step) = rest.split_once("] ")?;
                Some((ms.trim().parse().ok()?, step.to_owned()))
            })
            .collect();
        steps.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut last = 0.0;
        Ok(steps
            .into_iter()
            .map(|(at, step)| {
                let took = at - last;
                last = at;
                (step, took)
            })
            .collect())
    }

    fn kill_delete(&self, bin: &Path, id: &str, pid: i32) {
        let _ = self.cmd(bin, &[], &["delete", "--force", id]).status();
        // SAFETY: reaping a process we inherited.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }

    /// Peak RSS (KiB) of the runtime process while it creates a container.
    pub fn create_peak_rss(&self, bin: &Path, bundle: &Path, suffix: &str) -> Result<i64> {
        let id = self.id(suffix);
        let (pid, usage) = self.create(bin, bundle, &id)?;
        self.kill_delete(bin, &id, pid);
        Ok(usage.ru_maxrss)
    }

    fn start_idle(&self, kind: Kind, name: &str) -> Result<(String, i32, PathBuf)> {
        let args: &[&str] = match kind {
            Kind::Native => &["/bin/sleep", "600"],
            Kind::Wasm => &["/app/idle.wasm", "600"],
        };
        let bundle = self.bundle(name, args)?;
        let id = self.id(name);
        let (pid, _) = self.create(&self.amphi, &bundle, &id)?;
        self.check(self.cmd(&self.amphi, &[], &["start", &id]), "start")?;
        Ok((id, pid, bundle))
    }

    fn footprint(&self, name: &str, pid: i32) -> (f64, f64) {
        let rel = format!("{}-{name}", self.tag);
        let cg = memory_usage(&rel).unwrap_or(0) as f64 / (1 << 20) as f64;
        let pss = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Pss:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0)
            / 1024.0;
        (cg, pss)
    }

    /// cgroup memory and init PSS (MiB) of one idle container.
    pub fn idle_footprint(&self, kind: Kind, name: &str) -> Result<(f64, f64)> {
        let (id, pid, _) = self.start_idle(kind, name)?;
        std::thread::sleep(Duration::from_millis(700));
        let f = self.footprint(name, pid);
        self.kill_delete(&self.amphi, &id, pid);
        Ok(f)
    }

    /// Start n idle containers; seconds to start them all, total cgroup
    /// memory and total PSS (MiB).
    pub fn density(&self, kind: Kind, n: usize) -> Result<(f64, f64, f64)> {
        let t = Instant::now();
        let mut started = Vec::new();
        let result = (|| -> Result<(f64, f64, f64)> {
            for i in 0..n {
                let name = format!("d{}{n}-{i}", kind.tag());
                let (id, pid, _) = self.start_idle(kind, &name)?;
                started.push((name, id, pid));
            }
            let secs = t.elapsed().as_secs_f64();
            std::thread::sleep(Duration::from_millis(1000));
            let (cg, pss) = started
                .iter()
                .map(|(name, _, pid)| self.footprint(name, *pid))
                .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
            Ok((secs, cg, pss))
        })();
        for (_, id, pid) in &started {
            self.kill_delete(&self.amphi, id, *pid);
        }
        result
    }

    /// The benchmark program in a container: (workload, milliseconds) lines.
    pub fn compute(&self, kind: Kind, mib: usize, suffix: &str) -> Result<Vec<(String, f64)>> {
        let mib = mib.to_string();
        let prog = match kind {
            Kind::Native => "/bin/bench",
            Kind::Wasm => "/app/bench.wasm",
        };
        let bundle = self.bundle(&format!("compute-{}", kind.name()), &[prog, &mib, "/tmp"])?;
        self.compute_in(&bundle, suffix)
    }

    /// The benchmark program's lines, run in `bundle`.
    pub fn compute_in(&self, bundle: &Path, suffix: &str) -> Result<Vec<(String, f64)>> {
        let out = self.tmp().join("compute.out");
        let mut c = self.cmd(
            &self.amphi,
            &[],
            &[
                "run",
                "--bundle",
                bundle.to_str().unwrap(),
                &self.id(suffix),
            ],
        );
        c.stdout(std::fs::File::create(&out)?);
        self.check(c, &format!("{} benchmark program", bundle.display()))?;
        let text = std::fs::read_to_string(&out)?;
        Ok(text
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?.to_owned(), f.next()?.parse().ok()?))
            })
            .collect())
    }

    pub fn machine(&self) -> Value {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|s| s.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let uname = nix::sys::utsname::uname().ok();
        let kernel = uname
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let cgroup = if nix::sys::statfs::statfs("/sys/fs/cgroup")
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        {
            "v2"
        } else if Path::new("/sys/fs/cgroup/unified").exists() {
            "hybrid (v1 controllers, cgroup2 at /sys/fs/cgroup/unified)"
        } else {
            "v1"
        };
        let lock = std::fs::read_to_string(repo_root().join("Cargo.lock")).unwrap_or_default();
        let wasmtime = lock
            .split("[[package]]")
            .find(|p| p.contains("name = \"wasmtime\"\n"))
            .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
            .unwrap_or("?")
            .trim_matches('"')
            .to_owned();
        let amphi = first_line(&self.amphi, "--version");
        let crun = self.crun.as_ref().map(|c| first_line(c, "--version"));
        let summary = format!("{cpu}, {cores} cores, Linux {kernel}, cgroups {cgroup}; {amphi} (wasmtime {wasmtime}), {}{}",
            self.runc_version,
            crun.as_ref().map(|c| format!(", {c}")).unwrap_or_default());
        json!({"cpu": cpu, "cores": cores, "kernel": kernel, "cgroups": cgroup, "amphi": amphi,
               "wasmtime": wasmtime, "runc": self.runc_version, "crun": crun,
               "youki": self.youki.as_ref().map(|y| first_line(y, "--version")), "summary": summary})
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let mut bins = vec![self.amphi.clone(), self.runc.clone()];
        bins.extend(self.crun.clone());
        bins.extend(self.youki.clone());
        for bin in bins {
            let root = self.root(&bin);
            for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                if e.path().is_dir() && e.file_name() != "wasm-cache" {
                    let id = e.file_name().to_string_lossy().into_owned();
                    let _ = self.cmd(&bin, &[], &["delete", "--force", &id]).status();
                }
            }
        }
        // Reap whatever we inherited.
        // SAFETY: non-blocking waits on any child.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
    }
}

/// Memory charged to the cgroup `rel` (below ours), in bytes.
fn memory_usage(rel: &str) -> Option<u64> {
    cgroup_dirs_by_hierarchy(rel)
        .iter()
        .find_map(|(ctrls, dir)| {
            let file = if ctrls.is_empty() {
                dir.join("memory.current")
            } else if ctrls.split(',').any(|c| c == "memory") {
                dir.join("memory.usage_in_bytes")
            } else {
                return None;
            };
            std::fs::read_to_string(file).ok()?.trim().parse().ok()
        })
}

/// Which cgroup settings a pod bundle carries.
#[derive(Clone, Copy)]
pub enum PodCgroups {
    /// What kubelet asks for a BestEffort pod: the device rules and a CPU weight.
    Full,
    /// Only the device rules (the cgroup2 view here has no controllers
    /// enabled to take a CPU weight).
    Devices,
    /// None (crun 1.8 cannot load a device filter here: it must raise
    /// RLIMIT_MEMLOCK, which root cannot on these machines).
    None,
}

impl Cgroup2View {
    /// A sleeping process in a private mount namespace with a fresh
    /// cgroup2 at /sys/fs/cgroup: a pure v2 host's view of the host's
    /// unified hierarchy.
    fn new() -> Result<Cgroup2View> {
        let mut c = Command::new("sleep");
        c.arg("infinity").stdin(Stdio::null());
        fresh_cgroup2_view(&mut c);
        let holder = c.spawn().context("start the cgroup2 view's holder")?;
        let ns = std::fs::File::open(format!("/proc/{}/ns/mnt", holder.id()))
            .context("open the cgroup2 view's mount namespace")?;
        Ok(Cgroup2View { holder, ns })
    }
}

impl Drop for Cgroup2View {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Run `c` in a private mount namespace with a fresh cgroup2 at
/// /sys/fs/cgroup: a pure v2 host's view of the host's unified hierarchy.
/// The namespace set-up is counted: about a millisecond.
fn fresh_cgroup2_view(c: &mut Command) {
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            let fail = || Err(std::io::Error::last_os_error());
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return fail();
            }
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return fail();
            }
            if libc::mount(
                c"cgroup2".as_ptr(),
                c"/sys/fs/cgroup".as_ptr(),
                c"cgroup2".as_ptr(),
                0,
                std::ptr::null(),
            ) != 0
            {
                return fail();
            }
            Ok(())
        });
    }
}
