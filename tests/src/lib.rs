//! Test harness: real containers through the real `amphi` binary, each test
//! in its own temp runtime root with cgroups below this process's cgroup,
//! removed by a drop guard whatever happens.

pub mod clients;
pub mod containerd;
pub mod corpus;
pub mod cri;
pub mod docker;
pub mod podman;
pub mod seccomp;
pub mod serve;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

static SUBREAPER: Once = Once::new();
static GUESTS: Once = Once::new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);
/// Pids of container inits this process may have inherited as subreaper.
static INITS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// The binary under test: $AMPHI_BIN, else target/<profile>/amphi next to
/// this test executable.
pub fn amphi_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("AMPHI_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("amphi");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build` first",
        bin.display()
    );
    bin
}

/// The wasm guest programs, built once per test process by bundles/wasm/build.sh.
pub fn guests_dir() -> PathBuf {
    // Built already (the VM lane builds them on the host: no cargo under
    // emulation).
    if let Some(dir) = std::env::var_os("AMPHI_GUESTS") {
        return dir.into();
    }
    GUESTS.call_once(|| {
        let st = Command::new("bash")
            .arg(repo_root().join("bundles/wasm/build.sh"))
            .status()
            .expect("bundles/wasm/build.sh");
        assert!(st.success(), "building the wasm guests failed");
    });
    repo_root().join("bundles/out/wasm")
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Orphaned container inits are re-parented to us, not to a PID 1 that
/// reaps them late.
pub(crate) fn become_subreaper() {
    SUBREAPER.call_once(|| {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    });
}

/// Reap the container inits we may have inherited. Only known pids, so a
/// `Command` waiting on its own child is never robbed.
pub fn reap_inits() {
    let mut inits = INITS.lock().unwrap();
    inits.retain(|pid| {
        let r = unsafe { libc::waitpid(*pid, std::ptr::null_mut(), libc::WNOHANG) };
        // Not ours yet (its parent is still dying, and the kernel has not
        // handed it to us) is not gone: keep it until it is reaped.
        r == 0
            || (r < 0
                && nix::Error::last() == nix::Error::ECHILD
                && Path::new(&format!("/proc/{pid}")).exists())
    });
}

/// A process of a container this test started detached (e.g. `exec -d`),
/// which this process inherits as subreaper and must reap: a pid
/// namespace's init cannot finish exiting until every process in the
/// namespace is reaped.
pub fn remember_init(pid: i32) {
    if pid > 0 {
        INITS.lock().unwrap().push(pid);
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        use std::os::unix::process::ExitStatusExt;
        Run {
            code: o
                .status
                .code()
                .unwrap_or_else(|| 128 + o.status.signal().unwrap_or(0)),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn ok(&self) -> &Run {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn fails_with(&self, needle: &str) -> &Run {
        assert_ne!(self.code, 0, "unexpected success; stdout: {}", self.stdout);
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}: {}",
            self.stderr
        );
        self
    }
}

/// One test's world: a temp dir with a runtime root and bundles.
pub struct Env {
    /// The runtime binary under test (amphi unless the conformance suite
    /// says otherwise).
    pub runtime: PathBuf,
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    /// Unique prefix of this test's container ids and cgroups.
    pub tag: String,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    pub fn new() -> Env {
        Env::for_runtime(amphi_bin())
    }

    /// An Env driving another runc-compatible runtime binary.
    pub fn for_runtime(runtime: PathBuf) -> Env {
        become_subreaper();
        let tmp = tempfile::Builder::new()
            .prefix("amphi-test")
            .tempdir()
            .unwrap();
        let root = tmp.path().join("root");
        let tag = format!(
            "amphi-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        Env {
            runtime,
            tmp,
            root,
            tag,
        }
    }

    pub fn id(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }

    /// `amphi --root ROOT args...`
    /// Output goes to files, not pipes: a created container inherits
    /// amphi's stdio and would hold a pipe open long after amphi exits.
    pub fn amphi(&self, args: &[&str]) -> Run {
        self.amphi_env(&[], args)
    }

    /// `amphi` with environment variables set (e.g. AMPHI_WASM_CACHE_REPORT).
    pub fn amphi_env(&self, env: &[(&str, &str)], args: &[&str]) -> Run {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let out_path = self.tmp.path().join(format!("out.{n}"));
        let err_path = self.tmp.path().join(format!("err.{n}"));
        let status = self
            .command(args)
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .status()
            .expect("spawn amphi");
        let out = Output {
            status,
            stdout: std::fs::read(&out_path).unwrap(),
            stderr: std::fs::read(&err_path).unwrap(),
        };
        let _ = std::fs::remove_file(out_path);
        let _ = std::fs::remove_file(err_path);
        let run = Run::from(out);
        if run.code == 0 {
            self.remember_detached_init(args);
        }
        run
    }

    /// After `create ID` or `run -d ID`, the init is orphaned to this
    /// process (a subreaper): remember it so it is reaped once it dies, or
    /// its zombie keeps the container's cgroup busy and `delete` cannot
    /// remove it. The pid comes from the state file (amphi's `pid`, runc's
    /// `init_process_pid`), not from another runtime call.
    fn remember_detached_init(&self, args: &[&str]) {
        let Some(at) = args.iter().position(|a| *a == "create" || *a == "run") else {
            return;
        };
        let detached = args[at] == "create" || args.iter().any(|a| *a == "-d" || *a == "--detach");
        let Some(id) = args.last().filter(|_| detached) else {
            return;
        };
        let pid = std::fs::read(self.root.join(id).join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["pid"].as_i64().or(v["init_process_pid"].as_i64()));
        if let Some(pid) = pid {
            remember_init(pid as i32);
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.runtime);
        c.arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// A bundle with a busybox rootfs running `args`.
    pub fn bundle(&self, name: &str, args: &[&str]) -> Bundle {
        let dir = self.tmp.path().join(format!("bundle-{name}"));
        let rootfs = dir.join("rootfs");
        copy_tree(busybox_template(), &rootfs).expect("copy the busybox rootfs");
        let spec = default_spec(args, &format!("{}-{name}", self.tag));
        Bundle { dir, spec }
    }

    /// A bundle whose rootfs also holds the wasm guest programs under /app,
    /// running `args` (args[0] e.g. "/app/hello.wasm").
    pub fn wasm_bundle(&self, name: &str, args: &[&str]) -> Bundle {
        let b = self.bundle(name, args);
        let app = b.rootfs().join("app");
        std::fs::create_dir_all(&app).unwrap();
        for e in std::fs::read_dir(guests_dir()).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "wasm") {
                std::fs::copy(e.path(), app.join(e.file_name())).unwrap();
            }
        }
        b
    }

    /// The status field of `state`, or None when the container is gone.
    pub fn status(&self, id: &str) -> Option<String> {
        reap_inits();
        let r = self.amphi(&["state", id]);
        if r.code != 0 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("state json");
        if let Some(pid) = v["pid"].as_i64() {
            remember_init(pid as i32);
        }
        Some(v["status"].as_str().unwrap().to_owned())
    }

    pub fn state(&self, id: &str) -> serde_json::Value {
        let r = self.amphi(&["state", id]);
        r.ok();
        let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("state json");
        if let Some(pid) = v["pid"].as_i64() {
            remember_init(pid as i32);
        }
        v
    }

    /// Nothing of container `id` with cgroup `cgroup` (relative) is left:
    /// no state directory, no cgroup in any hierarchy, no mount on the host,
    /// no process whose root lies in this test's temp dir.
    #[track_caller]
    pub fn assert_clean(&self, id: &str, cgroup: &str) {
        reap_inits();
        assert!(!self.root.join(id).exists(), "state directory of {id} left");
        for dir in cgroup_dirs(cgroup) {
            assert!(!dir.exists(), "cgroup {} left", dir.display());
        }
        let tmp = self.tmp.path().to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&tmp),
            "host mount under {tmp} left:\n{mounts}"
        );
        let left = processes_rooted_in(self.tmp.path());
        assert!(left.is_empty(), "processes {left:?} still run in {tmp}");
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Whatever the test did, remove its containers (dead inits reaped
        // first: an unreaped one keeps its cgroup busy).
        reap_inits();
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.command(&["delete", "--force", &id]).output();
            }
        }
        reap_inits();
        // Cgroups named for this test that no container record covers (a
        // parent the runtime failed to remove, which the test reports):
        // removed while empty, deepest first, so the machine stays clean.
        let prefix = format!("{}-", self.tag);
        for own in cgroup_dirs("") {
            let Ok(entries) = std::fs::read_dir(&own) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    for dir in cgroup_subdirs(&e.path()) {
                        let _ = std::fs::remove_dir(dir);
                    }
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
    }
}

/// The directories below `dir`, each after those below it (the order
/// rmdir takes them in).
pub(crate) fn cgroup_subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(cgroup_subdirs(&e.path()));
            found.push(e.path());
        }
    }
    found
}

/// A busybox rootfs made once per test process (bundles/busybox-rootfs.sh
/// forks a process per applet link, which under emulation costs seconds a
/// bundle), copied for each bundle; removed when the process exits.
fn busybox_template() -> &'static Path {
    static TEMPLATE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("amphi-busybox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let st = Command::new(repo_root().join("bundles/busybox-rootfs.sh"))
            .arg(dir.join("rootfs"))
            .status()
            .expect("busybox-rootfs.sh");
        assert!(st.success(), "busybox-rootfs.sh failed");
        extern "C" fn remove_template() {
            let dir = std::env::temp_dir().join(format!("amphi-busybox-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(dir);
        }
        // SAFETY: registering a plain function to run at exit.
        unsafe { libc::atexit(remove_template) };
        dir.join("rootfs")
    })
}

/// Copy a directory tree (files, directories with their modes, symlinks)
/// in this process.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to)?;
    std::fs::set_permissions(to, std::fs::metadata(from)?.permissions())?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let t = e.file_type()?;
        if t.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if t.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
            let mode = std::fs::metadata(&src)?.permissions().mode();
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

/// This process's cgroup: the unified one, or on a v1 host the memory
/// controller's (clients take one cgroup parent for every hierarchy).
pub fn own_cgroup() -> String {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let of = |ctrl: &str| {
        own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            (ctrls == ctrl || ctrls.split(',').any(|c| c == ctrl)).then(|| path.to_owned())
        })
    };
    if nix::sys::statfs::statfs("/sys/fs/cgroup")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
    {
        of("").unwrap_or_else(|| "/".into())
    } else {
        of("memory").unwrap_or_else(|| "/".into())
    }
}

/// The mount point of every cgroup hierarchy (v1 controllers, cgroup2).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split(' ').next()?;
            let point = pre.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(point))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// This test process's cgroup in each mounted hierarchy, joined with `rel`.
pub fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    cgroup_dirs_by_hierarchy(rel)
        .into_iter()
        .map(|(_, dir)| dir)
        .collect()
}

/// The same, with each hierarchy's controllers ("" for cgroup2): v1 puts
/// each controller at its own path.
pub fn cgroup_dirs_by_hierarchy(rel: &str) -> Vec<(String, PathBuf)> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in mounts.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let mut post = post.split(' ');
        let fstype = post.next().unwrap_or("");
        let opts = post.nth(1).unwrap_or("");
        let mut pre = pre.split(' ');
        let mount_root = pre.nth(3).unwrap_or("/");
        let mount_point = pre.next().unwrap_or("");
        for l in own.lines() {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
            let matches = match fstype {
                "cgroup2" => ctrls.is_empty(),
                "cgroup" => {
                    !ctrls.is_empty() && ctrls.split(',').all(|c| opts.split(',').any(|o| o == c))
                }
                _ => false,
            };
            if matches {
                let p = path
                    .strip_prefix(mount_root)
                    .unwrap_or(path)
                    .trim_start_matches('/');
                out.push((ctrls.to_owned(), Path::new(mount_point).join(p).join(rel)));
            }
        }
    }
    out
}

pub fn processes_rooted_in(dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(root) = std::fs::read_link(format!("/proc/{pid}/root")) {
            if root.starts_with(dir) {
                let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')));
                if !zombie {
                    out.push(pid);
                }
            }
        }
    }
    out
}

pub struct Bundle {
    pub dir: PathBuf,
    pub spec: serde_json::Value,
}

impl Bundle {
    /// Grant the process `cap` in its bounding, effective and permitted sets.
    pub fn grant(&mut self, cap: &str) {
        for set in ["bounding", "effective", "permitted"] {
            self.spec["process"]["capabilities"][set]
                .as_array_mut()
                .expect("a capability set")
                .push(serde_json::json!(cap));
        }
    }

    /// A user namespace of the container's own, its root host uid and gid
    /// 100000 (65536 ids each way).
    pub fn own_user_namespace(&mut self) {
        self.spec["linux"]["namespaces"]
            .as_array_mut()
            .expect("linux.namespaces")
            .push(serde_json::json!({"type": "user"}));
        for map in ["uidMappings", "gidMappings"] {
            self.spec["linux"][map] =
                serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        }
    }

    pub fn write(&self) -> &Path {
        std::fs::write(
            self.dir.join("config.json"),
            serde_json::to_vec_pretty(&self.spec).unwrap(),
        )
        .unwrap();
        &self.dir
    }

    pub fn path(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    pub fn cgroup(&self) -> String {
        self.spec["linux"]["cgroupsPath"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
}

pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// A config like `runc spec` writes (less the terminal), with a relative
/// cgroupsPath below the test's own cgroup.
pub fn default_spec(args: &[&str], cgroup: &str) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"],
            "cwd": "/",
            "capabilities": {
                "bounding": DEFAULT_CAPS, "effective": DEFAULT_CAPS, "permitted": DEFAULT_CAPS,
                "inheritable": DEFAULT_CAPS, "ambient": DEFAULT_CAPS
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "amphi-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "cgroupsPath": cgroup,
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// Wait until `f` holds, for at most `secs`.
pub fn wait_for(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    f()
}

/// Listen on `path` as a `--console-socket`: the thread returns the pty
/// master the runtime sends, or None if none arrives.
pub fn console_receiver(path: &Path) -> std::thread::JoinHandle<Option<std::os::fd::OwnedFd>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || -> Option<OwnedFd> {
        let (stream, _) = listener.accept().ok()?;
        let mut buf = [0u8; 256];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .ok()?;
        for c in msg.cmsgs().ok()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                // SAFETY: the fd just arrived and nothing else owns it.
                return Some(unsafe { OwnedFd::from_raw_fd(fds[0]) });
            }
        }
        None
    })
}

/// Everything the container writes to its terminal, until its side closes
/// (the master then reads EIO), without carriage returns.
pub fn read_to_end_of_pty(master: std::os::fd::OwnedFd) -> String {
    use std::io::Read;
    let mut master = std::fs::File::from(master);
    let mut out = Vec::new();
    let mut chunk = [0u8; 1024];
    while let Ok(n) = master.read(&mut chunk) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&out).replace('\r', "")
}

/// `systemctl show UNIT -p PROP --value`.
pub fn systemctl_show(unit: &str, prop: &str) -> String {
    let out = Command::new("systemctl")
        .args(["show", unit, "-p", prop, "--value"])
        .output()
        .expect("systemctl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
