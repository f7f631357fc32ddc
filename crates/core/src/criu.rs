//! Checkpoints of native containers through CRIU's command line, with
//! the options runc gives CRIU's RPC: the container's root, its bind
//! mounts and masked files as external mounts (their sources are the
//! host's, not the image's), cgroups per `--manage-cgroups-mode`, and
//! runc's flags passed on.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::executor::CheckpointOptions;
use crate::state::ContainerState;
use crate::{Error, Result};

const CRIU: &str = "criu";

/// The logs CRIU writes in the work directory.
const DUMP_LOG: &str = "dump.log";
const RESTORE_LOG: &str = "restore.log";

fn unsupported(what: String) -> Error {
    Error::Unsupported(what)
}

/// `criu dump` (or `pre-dump`) of the container's process tree into
/// `o.image_path`.
pub fn dump(state: &ContainerState, o: &CheckpointOptions) -> Result<()> {
    let images = &o.image_path;
    let work = o.work_path.clone().unwrap_or_else(|| images.clone());
    for dir in [images, &work] {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("mkdir", dir, e))?;
    }
    let mut c = Command::new(CRIU);
    c.arg(if o.pre_dump { "pre-dump" } else { "dump" })
        .arg("--tree")
        .arg(state.pid.to_string())
        .arg("--images-dir")
        .arg(images)
        .arg("--work-dir")
        .arg(&work)
        .args(["--log-file", DUMP_LOG, "-v4"])
        .arg("--root")
        .arg(&state.rootfs)
        .arg(format!(
            "--manage-cgroups={}",
            o.manage_cgroups_mode.as_deref().unwrap_or("soft")
        ));
    if let Some(parent) = &o.parent_path {
        c.arg("--prev-images-dir").arg(parent);
    }
    if o.pre_dump {
        c.arg("--track-mem");
    }
    if o.leave_running || o.pre_dump {
        c.arg("--leave-running");
    }
    c.args(runc_flags(o));
    record_stdio(state.pid, images)?;
    for mount in external_mounts(&state.spec()?, &state.rootfs) {
        c.arg("--external")
            .arg(format!("mnt[{0}]:{0}", mount.display()));
    }
    run(c.stdin(Stdio::null()), &work.join(DUMP_LOG), "dump")
}

/// runc's flags that CRIU takes as they are, at dump and at restore.
fn runc_flags(o: &CheckpointOptions) -> impl Iterator<Item = &'static str> {
    [
        ("--tcp-established", o.tcp_established),
        ("--ext-unix-sk", o.ext_unix_sk),
        ("--shell-job", o.shell_job),
        ("--file-locks", o.file_locks),
    ]
    .into_iter()
    .filter_map(|(flag, on)| on.then_some(flag))
}

/// runc's record of the init's stdio, in the image.
const DESCRIPTORS: &str = "descriptors.json";

fn record_stdio(pid: i32, images: &Path) -> Result<()> {
    let fds: Vec<String> = (0..3)
        .map(|fd| {
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "/dev/null".into())
        })
        .collect();
    let path = images.join(DESCRIPTORS);
    let json = serde_json::to_vec(&fds).expect("json");
    std::fs::write(&path, json).map_err(|e| Error::io("write", &path, e))
}

fn recorded_stdio(images: &Path) -> Vec<String> {
    std::fs::read(images.join(DESCRIPTORS))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Destinations CRIU must not take for the container's own mounts: bind
/// mounts (their source is a host path) and masked files (/dev/null bound
/// over them), as runc lists them.
fn external_mounts(spec: &oci_spec::runtime::Spec, rootfs: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = spec
        .mounts()
        .iter()
        .flatten()
        .filter(|m| is_bind(m))
        .map(|m| m.destination().clone())
        .collect();
    out.extend(masked_files(spec, rootfs));
    out
}

/// What `criu restore` needs besides the image.
pub struct Restore<'a> {
    pub options: &'a CheckpointOptions,
    pub spec: &'a oci_spec::runtime::Spec,
    pub rootfs: &'a Path,
    /// The new container's state directory: CRIU's root is bound at
    /// `criu-root` in it (in a mount namespace of CRIU's own), its pid
    /// file written there.
    pub state_dir: &'a Path,
    /// The new container's cgroup, in every hierarchy: CRIU joins it
    /// before it forks the restored tree, which so is born there.
    pub cgroup_paths: &'a [PathBuf],
}

/// `criu restore` of the image in `r.options.image_path`, detached: the
/// pid of the restored init (a child of the caller when it is a child
/// subreaper, as CRIU's own process exits).
pub fn restore(r: &Restore) -> Result<i32> {
    let o = r.options;
    let images = &o.image_path;
    let work = o.work_path.clone().unwrap_or_else(|| images.clone());
    std::fs::create_dir_all(&work).map_err(|e| Error::io("mkdir", &work, e))?;
    let root = r.state_dir.join("criu-root");
    std::fs::create_dir_all(&root).map_err(|e| Error::io("mkdir", &root, e))?;
    let pid_file = r.state_dir.join("criu-restore.pid");
    let mut c = Command::new(CRIU);
    c.arg("restore")
        .arg("--images-dir")
        .arg(images)
        .arg("--work-dir")
        .arg(&work)
        .args(["--log-file", RESTORE_LOG, "-v4"])
        .arg("--root")
        .arg(&root)
        .arg("--restore-detached")
        // The mount engine before mount-v2: the v2 one copies the root's
        // sharing, and CRIU's root here is a private bind of its own.
        .arg("--mntns-compat-mode")
        .arg("--pidfile")
        .arg(&pid_file)
        // The restored tree stays in the cgroup CRIU is born in (the new
        // container's, whose limits are the new bundle's) unless told.
        .arg(format!(
            "--manage-cgroups={}",
            o.manage_cgroups_mode.as_deref().unwrap_or("ignore")
        ));
    c.args(runc_flags(o));
    // As runc: the dumped init's stdio pipes become the restorer's own
    // (CRIU gives its fds 0-2 to the restored tree in their place).
    for (fd, what) in recorded_stdio(images).iter().enumerate() {
        if what.starts_with("pipe:") {
            c.arg("--inherit-fd").arg(format!("fd[{fd}]:{what}"));
        }
    }
    for (dest, source) in external_sources(r.spec, r.rootfs) {
        c.arg("--ext-mount-map")
            .arg(format!("{}:{}", dest.display(), source.display()));
    }
    let procs: Vec<std::ffi::CString> = r
        .cgroup_paths
        .iter()
        .map(|p| {
            std::ffi::CString::new(p.join("cgroup.procs").into_os_string().into_encoded_bytes())
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| unsupported("a cgroup path holds a NUL byte".into()))?;
    let rootfs = std::ffi::CString::new(r.rootfs.as_os_str().as_encoded_bytes())
        .map_err(|_| unsupported("the rootfs path holds a NUL byte".into()))?;
    let root_c = std::ffi::CString::new(root.as_os_str().as_encoded_bytes())
        .map_err(|_| unsupported("the state directory holds a NUL byte".into()))?;
    // SAFETY: between fork and exec only async-signal-safe calls on
    // memory prepared before the fork.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, move || {
            for procs in &procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
            // CRIU's root is the rootfs bound onto itself, in a mount
            // namespace of its own: nothing of it reaches the host's.
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                || libc::mount(
                    rootfs.as_ptr(),
                    root_c.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // CRIU's stdio stays this process's: --inherit-fd hands it to the
    // restored tree, which a captured output's pipes would then keep open.
    run(
        c.stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit()),
        &work.join(RESTORE_LOG),
        "restore",
    )?;
    let text = std::fs::read_to_string(&pid_file).map_err(|e| Error::io("read", &pid_file, e))?;
    text.trim().parse().map_err(|_| {
        Error::Init(format!(
            "criu restore: pid file {}: {text:?}",
            pid_file.display()
        ))
    })
}

/// The host sources of the mounts [`external_mounts`] lists, from the
/// bundle being restored: bind mounts' sources, /dev/null for masked files.
fn external_sources(spec: &oci_spec::runtime::Spec, rootfs: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut out: Vec<(PathBuf, PathBuf)> = spec
        .mounts()
        .iter()
        .flatten()
        .filter(|m| is_bind(m))
        .filter_map(|m| Some((m.destination().clone(), m.source().clone()?)))
        .collect();
    out.extend(
        masked_files(spec, rootfs)
            .into_iter()
            .map(|p| (p, PathBuf::from("/dev/null"))),
    );
    out
}

fn is_bind(m: &oci_spec::runtime::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

fn masked_files(spec: &oci_spec::runtime::Spec, rootfs: &Path) -> Vec<PathBuf> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.masked_paths().clone())
        .unwrap_or_default()
        .iter()
        .map(PathBuf::from)
        .filter(|p| rootfs.join(p.strip_prefix("/").unwrap_or(p)).is_file())
        .collect()
}

/// Runs CRIU; a failure is CRIU's own words: the error lines of its log.
fn run(c: &mut Command, log: &Path, what: &str) -> Result<()> {
    let out = c.output().map_err(|e| {
        unsupported(format!(
            "run {CRIU} (Debian's criu package): {e}; native containers are checkpointed \
             and restored through CRIU"
        ))
    })?;
    if out.status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Error") || l.contains("error"))
        .collect();
    let last = errors[errors.len().saturating_sub(3)..].join(" / ");
    let why = if last.is_empty() {
        String::from_utf8_lossy(&out.stderr).trim().to_owned()
    } else {
        last
    };
    Err(Error::Init(format!(
        "criu {what} failed ({}): {why}; CRIU's log: {}",
        out.status,
        log.display()
    )))
}
