//! Container cgroups through cgroups-rs, on v1, v2 and hybrid hosts.
//!
//! The host's layout is detected at run time: a cgroup2 mount at
//! `/sys/fs/cgroup` is a v2 host; otherwise each v1 hierarchy is used (on a
//! hybrid host the v1 controllers do the limiting, as with runc). A relative
//! `cgroupsPath` is taken relative to the creating process's own cgroup in
//! each hierarchy, which differs per controller on v1.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use cgroups_rs::fs::hierarchies;
use cgroups_rs::fs::Cgroup;
use cgroups_rs::CgroupPid;
use oci_spec::runtime::{Linux, LinuxResources};

use crate::{Error, Result};

pub mod resources;
pub mod systemd;

/// Where a pure v2 host mounts its cgroup2 hierarchy.
pub const V2_MOUNT: &str = "/sys/fs/cgroup";

/// A container's cgroup, created and not yet populated.
pub struct ContainerCgroup {
    cgroup: Cgroup,
    /// The container's directory in every hierarchy.
    pub paths: Vec<PathBuf>,
    /// Directories this call made (deepest last), for `delete` to remove.
    pub created: Vec<PathBuf>,
    /// What `make` applies.
    resources: Option<LinuxResources>,
    /// With the systemd driver: the unit the cgroup belongs to, made once
    /// the init exists (systemd takes the pid to move in).
    pub systemd: Option<systemd::Unit>,
}

fn err(path: impl std::fmt::Display, why: impl std::fmt::Display) -> Error {
    Error::Cgroup {
        path: path.to_string(),
        why: why.to_string(),
        errno: None,
    }
}

/// A cgroups-rs failure, keeping the kernel's errno when it had one.
fn lib_err(path: impl std::fmt::Display, what: &str, e: cgroups_rs::fs::error::Error) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    let mut errno = None;
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            errno = io.raw_os_error();
            break;
        }
        source = s.source();
    }
    Error::Cgroup {
        path: path.to_string(),
        why: format!("{what}: {e}"),
        errno,
    }
}

/// The cgroup path of this process in the unified hierarchy.
fn own_v2_path() -> Result<String> {
    let data = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| Error::io("read", "/proc/self/cgroup", e))?;
    data.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .ok_or_else(|| err("/proc/self/cgroup", "no cgroup2 entry"))
}

/// Plan the cgroup named by `cgroups_path` (or the container id, relative,
/// when the spec gives none): its directories, and which of them are new.
/// Nothing is created yet, so that the caller can record what `make` will
/// create before it exists (a crash in between must leave a record).
pub fn plan(id: &str, linux: Option<&Linux>, driver: Driver) -> Result<ContainerCgroup> {
    let cgroups_path = linux.and_then(|l| l.cgroups_path().as_deref());
    let resources = linux.and_then(|l| l.resources().as_ref());
    let hier = hierarchies::auto();
    if driver == Driver::Systemd {
        return plan_systemd(id, cgroups_path, resources, hier);
    }
    let requested = cgroups_path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(id));
    if requested
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(err(
            requested.display(),
            "linux.cgroupsPath must not contain '..'",
        ));
    }
    if requested.to_str().is_some_and(|s| s.contains(':')) {
        return Err(Error::Unsupported(format!(
            "linux.cgroupsPath {:?} is in systemd's slice:prefix:name form: run with --systemd-cgroup (or give a cgroupfs path)",
            requested
        )));
    }
    let absolute = requested.is_absolute();
    let v2 = hier.v2();
    if let Some(r) = resources {
        // What this hierarchy cannot express fails before anything exists.
        resources::writes(r, resources::Hierarchy { v2, bfq: false })?;
    }
    let cgroup = if v2 {
        let full = if absolute {
            requested.clone()
        } else {
            Path::new(&own_v2_path()?).join(&requested)
        };
        let rel = full.strip_prefix("/").unwrap_or(&full).to_path_buf();
        Cgroup::load(hier, rel)
    } else {
        let rel = requested
            .strip_prefix("/")
            .unwrap_or(&requested)
            .to_path_buf();
        let relative_to: HashMap<String, String> = if absolute {
            HashMap::new()
        } else {
            cgroups_rs::fs::cgroup::get_cgroups_relative_paths()
                .map_err(|e| err("/proc/self/cgroup", e))?
        };
        Cgroup::load_with_relative_paths(hier, rel, relative_to)
    };

    // v2 lists each controller with the one directory: a path once each.
    let mut paths: Vec<PathBuf> = Vec::new();
    for p in cgroup
        .subsystems()
        .iter()
        .map(|s| s.to_controller().path().to_path_buf())
    {
        if !paths.contains(&p) {
            paths.push(p);
        }
    }
    let mut created = Vec::new();
    for p in &paths {
        let mut missing: Vec<PathBuf> = p
            .ancestors()
            .take_while(|a| !a.exists())
            .map(Path::to_path_buf)
            .collect();
        // A parent another container made (a pod's directory, made by the
        // pod's first container) is this container's to remove as well:
        // whichever of them goes last removes it, in whatever order they
        // are deleted (after a killed shim, containerd deletes them all at
        // once).
        let adopted = p
            .ancestors()
            .skip(missing.len())
            .filter(|a| *a != p)
            .take_while(|a| made_by_amphi(a));
        missing.extend(adopted.map(Path::to_path_buf));
        missing.reverse();
        created.extend(missing);
    }
    Ok(ContainerCgroup {
        cgroup,
        paths,
        created,
        resources: resources.cloned(),
        systemd: None,
    })
}

/// Who makes and removes container cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// amphi, in the cgroup filesystem.
    Cgroupfs,
    /// systemd, as transient units (`--systemd-cgroup`).
    Systemd,
}

/// The systemd driver's plan: the unit's cgroup directory, made by systemd
/// when the unit starts (`attach`), nothing made by amphi.
fn plan_systemd(
    id: &str,
    cgroups_path: Option<&Path>,
    resources: Option<&LinuxResources>,
    hier: Box<dyn cgroups_rs::fs::Hierarchy>,
) -> Result<ContainerCgroup> {
    if !systemd::running() {
        return Err(Error::Unsupported(
            "--systemd-cgroup: systemd is not running on this host (no /run/systemd/system); \
             drop the flag and give a cgroupfs path"
                .into(),
        ));
    }
    if !hier.v2() {
        return Err(Error::Unsupported(
            "--systemd-cgroup: amphi's systemd driver needs a pure cgroup v2 host".into(),
        ));
    }
    let path = cgroups_path
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| format!(":amphi:{id}"));
    let unit = systemd::Unit::parse(&path)?;
    if let Some(r) = resources {
        resources::writes(
            r,
            resources::Hierarchy {
                v2: true,
                bfq: false,
            },
        )?;
    }
    let dir = unit.dir(Path::new(V2_MOUNT))?;
    // Checked here from the filesystem: D-Bus starts threads, and the init
    // is yet to be forked.
    if dir.exists() {
        return Err(Error::InvalidSpec {
            file: "config.json".into(),
            field: "linux.cgroupsPath".into(),
            why: format!("{path:?}: unit {} exists already", unit.name),
        });
    }
    let rel = dir
        .strip_prefix("/sys/fs/cgroup")
        .unwrap_or(&dir)
        .to_path_buf();
    Ok(ContainerCgroup {
        cgroup: Cgroup::load(hier, rel),
        paths: vec![dir],
        created: Vec::new(),
        resources: resources.cloned(),
        systemd: Some(unit),
    })
}

impl ContainerCgroup {
    /// Create the planned directories with their device rules; on error
    /// nothing is left. The rest of the limits come with
    /// [`ContainerCgroup::limit`]. The device rules cannot wait: the init
    /// makes device nodes while it mounts, the rules decide whether it
    /// may, and on v1 they go in through a moment of deny-all.
    pub fn make(&self) -> Result<()> {
        if self.systemd.is_some() {
            // systemd makes it, with the init (see `attach`).
            return Ok(());
        }
        if let Err(e) = self.cgroup.create() {
            let e = lib_err(self.cgroup.path(), "create", e);
            remove(&self.created, &self.paths);
            return Err(e);
        }
        for parent in self.created.iter().filter(|d| !self.paths.contains(d)) {
            mark_made_by_amphi(parent);
        }
        if let Some(r) = &self.resources {
            let applied =
                device_rules(r).and_then(|rules| self.apply_device_rules(rules.as_deref()));
            if let Err(e) = applied {
                remove(&self.created, &self.paths);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Apply the planned limits but the device rules (`make` applied them)
    /// to the directories `make` made (with the systemd driver, `attach`
    /// applies all as the unit starts). `create` sets them while the init
    /// mounts its rootfs, the init in the cgroup already and no workload
    /// yet, as runc does: the writes cost the init nothing then.
    pub fn limit(&self) -> Result<()> {
        match (&self.resources, &self.systemd) {
            (Some(r), None) => self.apply_limits(r),
            _ => Ok(()),
        }
    }

    pub fn v2(&self) -> bool {
        self.cgroup.v2()
    }

    /// Reopen the cgroup of an existing container from its directories.
    pub fn open(paths: &[PathBuf]) -> Result<ContainerCgroup> {
        let hier = hierarchies::auto();
        let cgroup = if hier.v2() {
            let dir = paths
                .first()
                .ok_or_else(|| err("cgroup", "the container has no cgroup"))?;
            let rel = dir
                .strip_prefix(hier.root())
                .map_err(|_| err(dir.display(), "not below the cgroup2 mount"))?;
            Cgroup::load(hier, rel)
        } else {
            // v1: each hierarchy has its own path; name it relative to the
            // hierarchy's mount point.
            let mut relative = HashMap::new();
            for sub in hier.subsystems() {
                let name = sub.controller_name();
                let mount = sub.to_controller().path().to_path_buf();
                if let Some(rel) = paths.iter().find_map(|p| p.strip_prefix(&mount).ok()) {
                    relative.insert(name, rel.display().to_string());
                }
            }
            Cgroup::load_with_relative_paths(hier, ".", relative)
        };
        Ok(ContainerCgroup {
            cgroup,
            paths: paths.to_vec(),
            created: Vec::new(),
            resources: None,
            systemd: None,
        })
    }

    /// The directory of one controller (v2: the one directory).
    fn dir(&self, controller: &str) -> Option<PathBuf> {
        if self.v2() {
            let dir = self.paths.first()?;
            if controller.is_empty() {
                return Some(dir.clone());
            }
            let enabled = std::fs::read_to_string(dir.join("cgroup.controllers")).ok()?;
            return enabled
                .split_whitespace()
                .any(|c| c == controller)
                .then(|| dir.clone());
        }
        self.cgroup
            .subsystems()
            .iter()
            .find(|s| s.controller_name() == controller)
            .map(|s| s.to_controller().path().to_path_buf())
    }

    fn hierarchy(&self) -> resources::Hierarchy {
        let v2 = self.v2();
        resources::Hierarchy {
            v2,
            bfq: v2
                && self
                    .dir("io")
                    .is_some_and(|d| d.join("io.bfq.weight").exists()),
        }
    }

    /// Write the resources the spec asks for. Everything is checked before
    /// the first write, so a refused `create` or `update` changes nothing;
    /// every write that fails is an error naming the file, never a silent pass.
    pub fn apply(&self, r: &LinuxResources) -> Result<()> {
        let rules = device_rules(r)?;
        self.apply_limits(r)?;
        self.apply_device_rules(rules.as_deref())
    }

    /// Everything of `r` but its device rules.
    fn apply_limits(&self, r: &LinuxResources) -> Result<()> {
        let mut writes = resources::writes(r, self.hierarchy())?;
        for w in &writes {
            let dir = self.dir(w.controller).ok_or_else(|| {
                err(
                    w.controller,
                    format!(
                        "{}: no {} controller for this container on this host",
                        w.field, w.controller
                    ),
                )
            })?;
            if w.controller == "hugetlb" && !dir.join(&w.file).exists() {
                return Err(err(
                    &w.file,
                    format!("{}: page size not supported by this kernel", w.field),
                ));
            }
        }
        order_memory_and_swap(&mut writes, |file| {
            self.dir("memory")
                .and_then(|d| std::fs::read_to_string(d.join(file)).ok())
        });
        for w in &writes {
            let path = self.dir(w.controller).expect("checked above").join(&w.file);
            std::fs::write(&path, &w.value).map_err(|e| Error::Cgroup {
                path: path.display().to_string(),
                why: format!("{}={:?}: {e}", w.field, w.value),
                errno: e.raw_os_error(),
            })?;
        }
        Ok(())
    }

    fn apply_device_rules(&self, rules: Option<&[crate::devices::Rule]>) -> Result<()> {
        match rules {
            None => Ok(()),
            Some(rules) if self.v2() => crate::devices::apply_v2(&self.paths[0], rules),
            Some(rules) => {
                let dir = self.dir("devices").ok_or_else(|| {
                    err(
                        "devices",
                        "linux.resources.devices: no devices controller on this host",
                    )
                })?;
                crate::devices::apply_v1(&dir, rules)
            }
        }
    }

    /// Move a process (all its threads) into the container's cgroup.
    pub fn attach(&self, pid: i32) -> Result<()> {
        if let Some(unit) = &self.systemd {
            let writes = match &self.resources {
                Some(r) => resources::writes(r, self.hierarchy())?,
                None => Vec::new(),
            };
            systemd::start(unit, pid, &writes, &self.paths[0])?;
            // What systemd does not manage, and what it does, exactly.
            return match &self.resources {
                Some(r) => self.apply(r).inspect_err(|_| {
                    let _ = systemd::stop(&unit.name);
                }),
                None => Ok(()),
            };
        }
        self.cgroup
            .add_task_by_tgid(CgroupPid::from(pid as u64))
            .map_err(|e| lib_err(self.cgroup.path(), &format!("attach pid {pid}"), e))
    }
}

/// `r`'s device rules, checked.
fn device_rules(r: &LinuxResources) -> Result<Option<Vec<crate::devices::Rule>>> {
    r.devices()
        .as_deref()
        .map(crate::devices::rules)
        .transpose()
}

/// On v1, memory.memsw.limit_in_bytes may never be below
/// memory.limit_in_bytes: when both change, the one that grows goes first
/// (runc's order), judged against the swap limit in force.
fn order_memory_and_swap(
    writes: &mut [resources::Write],
    current: impl Fn(&str) -> Option<String>,
) {
    let at = |file: &str| writes.iter().position(|w| w.file == file);
    let (Some(mem), Some(swap)) = (
        at("memory.limit_in_bytes"),
        at("memory.memsw.limit_in_bytes"),
    ) else {
        return;
    };
    let new_swap: i64 = writes[swap].value.parse().unwrap_or(-1);
    let old_swap: i64 = current("memory.memsw.limit_in_bytes")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(i64::MAX);
    if new_swap == -1 || new_swap > old_swap {
        writes.swap(mem, swap);
    }
}

/// Remove the directories a container's cgroup creation made. The
/// container's own directories (`paths`) may stay busy for a moment after
/// their last process died, so removal is retried; parents it made are
/// removed only while empty, since another container may have moved in.
pub fn remove(created: &[PathBuf], paths: &[PathBuf]) -> Vec<Error> {
    let mut errors = Vec::new();
    for dir in created.iter().rev() {
        let own = paths.contains(dir);
        // The last process usually leaves within a fraction of a
        // millisecond (a multi-threaded one, or one unmapping a large
        // address space, takes longer): wait briefly first, then longer,
        // about a second in all.
        let mut pause = std::time::Duration::from_micros(100);
        let mut waited = std::time::Duration::ZERO;
        loop {
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY)
                        && own
                        && waited < std::time::Duration::from_secs(1) =>
                {
                    // Cgroups the workload made below its own (systemd or
                    // a runtime inside the container) go first, as runc
                    // removes them; looked for only now, since a
                    // container's directory usually goes at once. Having
                    // removed some, it tries again at once, the pause still
                    // counted against the wait.
                    if !remove_children(dir) {
                        std::thread::sleep(pause);
                    }
                    waited += pause;
                    pause = (pause * 2).min(std::time::Duration::from_millis(5));
                }
                Err(_) if !own => break,
                Err(e) => {
                    errors.push(Error::io("remove cgroup", dir, e));
                    break;
                }
            }
        }
    }
    errors
}

/// The mark on a parent directory amphi made, so that the containers that
/// later share it remove it too. `trusted.` needs CAP_SYS_ADMIN in the
/// host's user namespace, so no container can mark a directory itself.
const MADE_BY_AMPHI: &std::ffi::CStr = c"trusted.amphi.parent";

fn made_by_amphi(dir: &Path) -> bool {
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: both names are NUL-terminated; a zero-sized read only asks
    // whether the attribute exists.
    unsafe {
        libc::getxattr(
            path.as_ptr(),
            MADE_BY_AMPHI.as_ptr(),
            std::ptr::null_mut(),
            0,
        ) >= 0
    }
}

/// Best effort: where the hierarchy keeps no xattrs, the parent is removed
/// only by the container that made it (if it goes last).
fn mark_made_by_amphi(dir: &Path) {
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: NUL-terminated names and a one-byte value that outlives the call.
    unsafe {
        libc::setxattr(
            path.as_ptr(),
            MADE_BY_AMPHI.as_ptr(),
            b"1".as_ptr().cast(),
            1,
            0,
        )
    };
}

/// Remove the cgroups below `dir`, deepest first; whether any went. A
/// busy one stays (and keeps `dir` busy, which the caller reports).
fn remove_children(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut removed = false;
    for child in entries.flatten() {
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            remove_children(&child.path());
            removed |= std::fs::remove_dir(child.path()).is_ok();
        }
    }
    removed
}

/// A directory of a cgroup2 hierarchy (what CLONE_INTO_CGROUP takes).
pub fn is_v2_dir(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// Move a process into an existing container's cgroup (for `exec`).
pub fn join(paths: &[PathBuf], pid: i32) -> Result<()> {
    for p in paths {
        let procs = p.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).map_err(|e| Error::io("join cgroup", &procs, e))?;
    }
    Ok(())
}

/// Pids in the container's cgroup (taken from the first hierarchy: every
/// hierarchy holds the same processes).
pub fn procs(paths: &[PathBuf]) -> Vec<i32> {
    paths
        .iter()
        .find_map(|p| std::fs::read_to_string(p.join("cgroup.procs")).ok())
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Freeze or thaw every process of the container (v1 freezer, v2
/// cgroup.freeze) and wait until the kernel reports it done.
pub fn set_frozen(paths: &[PathBuf], frozen: bool) -> Result<()> {
    let (v1, v2) = if frozen {
        ("FROZEN", "1")
    } else {
        ("THAWED", "0")
    };
    let target = paths
        .iter()
        .find_map(|p| {
            if p.join("freezer.state").exists() {
                Some((p.join("freezer.state"), v1))
            } else if p.join("cgroup.freeze").exists() {
                Some((p.join("cgroup.freeze"), v2))
            } else {
                None
            }
        })
        .ok_or_else(|| {
            err(
                "freezer",
                "no freezer controller (v1) or cgroup.freeze (v2) for this container",
            )
        })?;
    let (file, value) = target;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        std::fs::write(&file, value).map_err(|e| Error::io("write", &file, e))?;
        let done = if file.ends_with("freezer.state") {
            std::fs::read_to_string(&file).is_ok_and(|s| s.trim() == value)
        } else {
            let events = file.with_file_name("cgroup.events");
            std::fs::read_to_string(&events)
                .is_ok_and(|s| s.lines().any(|l| l == format!("frozen {value}")))
        };
        if done {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(err(
                file.display(),
                format!("did not reach {value} within 10s"),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Whether the container's cgroup is frozen (v1 freezer or v2 cgroup.freeze).
pub fn is_frozen(paths: &[PathBuf]) -> bool {
    paths.iter().any(|p| {
        std::fs::read_to_string(p.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
            || std::fs::read_to_string(p.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
    })
}

/// The first of the container's cgroup directories holding `file` (v1
/// keeps each controller's files in its own hierarchy, v2 in one).
fn read(paths: &[PathBuf], file: &str) -> Option<String> {
    paths
        .iter()
        .find_map(|p| std::fs::read_to_string(p.join(file)).ok())
}

fn read_u64(paths: &[PathBuf], file: &str) -> Option<u64> {
    let s = read(paths, file)?;
    let s = s.trim();
    if s == "max" {
        return Some(u64::MAX);
    }
    s.parse().ok()
}

/// "key value" lines (memory.stat, cpu.stat, cpuacct.stat, memory.events).
fn read_keyed(paths: &[PathBuf], file: &str) -> serde_json::Map<String, serde_json::Value> {
    read(paths, file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse::<u64>().ok()?.into()))
        })
        .collect()
}

/// What a container's event stream waits on, so that it needs no polling:
/// the kernel's notice of a change in its OOM counters (v2: inotify on
/// `memory.events`, which the kernel signals on each change, as
/// containerd's runc shim watches it; v1: an eventfd registered on
/// `memory.oom_control` through `cgroup.event_control`, as runc's
/// `notify_on_oom`), and its init's exit (a pidfd).
///
/// A systemd scope's cgroup, counters and all, goes as soon as its last
/// process dies, and the kernel may hold the notice of an OOM kill back
/// (at most one change notice every 20 ms): when the init is the victim,
/// systemd often removes the scope before the count can be read (runc
/// issue 5071, conmon issue 426; containerd skips the OOM case of critest
/// on that driver). So the kernel's log is read too, from the watch's
/// start: an OOM kill of the init is logged there with its pid, and the
/// log outlives the cgroup.
pub struct ContainerWatch {
    notice: Notice,
    /// `memory.events` (v2) or `memory.oom_control` (v1): both count
    /// `oom_kill`.
    counters: std::fs::File,
    init: OwnedFd,
    init_pid: i32,
    /// `/dev/kmsg` at its end when the watch began; None without
    /// CAP_SYSLOG (rootless), where a removed scope's OOM kill is not told.
    kernel_log: Option<std::fs::File>,
    /// The count when the watch began, and the last one read or inferred.
    baseline: u64,
    seen: std::cell::Cell<u64>,
    /// The init's OOM kills the log told so far (it dies once: 0 or 1).
    logged: std::cell::Cell<u64>,
}

enum Notice {
    Inotify(nix::sys::inotify::Inotify),
    /// With the `memory.oom_control` fd it was registered for: the
    /// registration lasts while both are open.
    EventFd(OwnedFd),
}

impl Notice {
    fn v2(events: &Path) -> Option<Notice> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).ok()?;
        inotify.add_watch(events, AddWatchFlags::IN_MODIFY).ok()?;
        Some(Notice::Inotify(inotify))
    }

    fn v1(oom_control: &std::fs::File, dir: &Path) -> Option<Notice> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: eventfd with valid flags; a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        // SAFETY: eventfd returned a new fd we own.
        let eventfd = unsafe { OwnedFd::from_raw_fd(nix::Error::result(fd).ok()?) };
        let registration = format!("{} {}", eventfd.as_raw_fd(), oom_control.as_raw_fd());
        std::fs::write(dir.join("cgroup.event_control"), registration).ok()?;
        Some(Notice::EventFd(eventfd))
    }

    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        match self {
            Notice::Inotify(i) => i.as_fd(),
            Notice::EventFd(e) => e.as_fd(),
        }
    }

    /// Consumed, so that a change after the read wakes the next wait.
    fn drain(&self) {
        match self {
            Notice::Inotify(i) => while i.read_events().is_ok_and(|e| !e.is_empty()) {},
            Notice::EventFd(e) => {
                let _ = nix::unistd::read(e, &mut [0u8; 8]);
            }
        }
    }
}

impl ContainerWatch {
    /// None where there is no memory controller, or where inotify, eventfds
    /// or pidfds are not to be had: the caller polls then.
    pub fn new(paths: &[PathBuf], init: i32) -> Option<ContainerWatch> {
        use std::io::Seek;
        use std::os::fd::FromRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let (counters, notice) = if let Some(events) = paths
            .iter()
            .map(|p| p.join("memory.events"))
            .find(|f| f.exists())
        {
            (std::fs::File::open(&events).ok()?, Notice::v2(&events)?)
        } else {
            let dir = paths
                .iter()
                .find(|p| p.join("memory.oom_control").exists())?;
            let oom_control = std::fs::File::open(dir.join("memory.oom_control")).ok()?;
            let notice = Notice::v1(&oom_control, dir)?;
            (oom_control, notice)
        };
        // SAFETY: pidfd_open with a pid and no flags; a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, init, 0) };
        // SAFETY: pidfd_open returned a new fd we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(nix::Error::result(fd).ok()? as i32) };
        let kernel_log = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .and_then(|mut f| f.seek(std::io::SeekFrom::End(0)).map(|_| f))
            .ok();
        let mut watch = ContainerWatch {
            notice,
            counters,
            init: pidfd,
            init_pid: init,
            kernel_log,
            baseline: 0,
            seen: Default::default(),
            logged: Default::default(),
        };
        watch.baseline = watch.read_count()?;
        watch.seen.set(watch.baseline);
        Some(watch)
    }

    fn read_count(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 512];
        let n = self.counters.read_at(&mut buf, 0).ok()?;
        std::str::from_utf8(&buf[..n])
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// OOM kills of the init the kernel logged since the last look: its
    /// `Killed process PID (...)` line, for a memory cgroup's limit or the
    /// machine's.
    fn read_log(&self) -> u64 {
        use std::io::Read;
        let Some(mut log) = self.kernel_log.as_ref() else {
            return 0;
        };
        let needle = format!("of memory: Killed process {} (", self.init_pid);
        let mut kills = 0;
        // One record per read; EPIPE: records overwritten, the next is read.
        let mut record = vec![0u8; 8192];
        loop {
            match log.read(&mut record) {
                Ok(0) => break,
                Ok(n) => {
                    let text = String::from_utf8_lossy(&record[..n]);
                    let message = text.split_once(';').map_or(&*text, |(_, m)| m);
                    kills += u64::from(message.contains(&needle));
                }
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        kills
    }

    /// Until the OOM counters change, the init exits, or `timeout` passes
    /// (None); on a wake-up, the OOM kills counted right then. Read on
    /// either wake-up: the init's exit can come before the notice of the
    /// kill that caused it.
    pub fn wait(&self, timeout: std::time::Duration) -> Option<u64> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut fds = [
            PollFd::new(self.notice.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.init.as_fd(), PollFlags::POLLIN),
        ];
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        if !poll(&mut fds, timeout).is_ok_and(|n| n > 0) {
            return None;
        }
        self.notice.drain();
        let before = self.seen.get();
        let mut count = self.count();
        if let (Notice::EventFd(_), true) = (&self.notice, count == before) {
            // v1 signals the OOM itself; the kill it leads to is counted
            // right after, and signalled no more.
            for _ in 0..10 {
                std::thread::sleep(std::time::Duration::from_millis(5));
                count = self.count();
                if count != before {
                    break;
                }
            }
        }
        Some(count)
    }

    /// The OOM kills so far. Once the cgroup is gone, the init's logged
    /// kill counts if the last count read cannot have held it (never
    /// twice; a child's kill read before the init's hides the latter, but
    /// the container was OOM-killed either way).
    pub fn count(&self) -> u64 {
        let count = match self.read_count() {
            Some(n) => n.max(self.seen.get()),
            None => {
                self.logged.set(self.logged.get() + self.read_log());
                self.seen.get().max(self.baseline + self.logged.get())
            }
        };
        self.seen.set(count);
        count
    }
}

/// Kernel OOM kills in the container's cgroup so far (v1 memory.oom_control,
/// v2 memory.events).
pub fn oom_kills(paths: &[PathBuf]) -> u64 {
    for file in ["memory.events", "memory.oom_control"] {
        if let Some(n) = read_keyed(paths, file)
            .get("oom_kill")
            .and_then(|v| v.as_u64())
        {
            return n;
        }
    }
    0
}

/// Cgroup statistics in the shape of runc's `events --stats` (its
/// libcontainer `types.Stats`): cpu, memory, pids.
pub fn stats(paths: &[PathBuf]) -> serde_json::Value {
    use serde_json::json;
    let v2 = paths.iter().any(|p| p.join("cgroup.controllers").exists());
    let n = |v: Option<u64>| v.unwrap_or(0);
    let (cpu, memory, cgroup2) = if v2 {
        // Each file read once: runc's shape and v2's own figures (for the
        // shim's v2 metrics) come from the same reads.
        let cpu = read_keyed(paths, "cpu.stat");
        let us = |k: &str| cpu.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        let mem_raw = read_keyed(paths, "memory.stat");
        let events = read_keyed(paths, "memory.events");
        let counter = |file: &str| n(read_u64(paths, file));
        let (usage, limit, peak) = (
            counter("memory.current"),
            counter("memory.max"),
            counter("memory.peak"),
        );
        let (swap, swap_limit) = (counter("memory.swap.current"), counter("memory.swap.max"));
        (
            json!({
                "usage": {"total": us("usage_usec") * 1000, "percpu": [],
                          "kernel": us("system_usec") * 1000, "user": us("user_usec") * 1000},
                "throttling": {"periods": us("nr_periods"), "throttledPeriods": us("nr_throttled"),
                               "throttledTime": us("throttled_usec") * 1000},
            }),
            json!({
                "cache": mem_raw.get("file").cloned().unwrap_or(0.into()),
                "usage": {"usage": usage, "limit": limit, "max": peak,
                          "failcnt": events.get("max").cloned().unwrap_or(0.into())},
                "swap": {"usage": swap, "limit": swap_limit},
                "raw": mem_raw,
            }),
            // v2's own figures, in the terms of containerd's cgroup2
            // metrics (which the shim reports on a v2 host).
            Some(json!({
                "cpu": cpu,
                "memory": mem_raw,
                "memory_events": events,
                "memory_usage": {"usage": usage, "usage_limit": limit, "max_usage": peak,
                                 "swap_usage": swap, "swap_limit": swap_limit,
                                 "swap_max_usage": counter("memory.swap.peak")},
                "io": io_stat(paths),
            })),
        )
    } else {
        let ticks = read_keyed(paths, "cpuacct.stat");
        // cpuacct.stat counts USER_HZ (100 Hz) ticks.
        let ns = |k: &str| ticks.get(k).and_then(|v| v.as_u64()).unwrap_or(0) * 10_000_000;
        let percpu: Vec<u64> = read(paths, "cpuacct.usage_percpu")
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let thr = read_keyed(paths, "cpu.stat");
        let t = |k: &str| thr.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        let mem_raw = read_keyed(paths, "memory.stat");
        (
            json!({
                "usage": {"total": n(read_u64(paths, "cpuacct.usage")), "percpu": percpu,
                          "kernel": ns("system"), "user": ns("user")},
                "throttling": {"periods": t("nr_periods"), "throttledPeriods": t("nr_throttled"),
                               "throttledTime": t("throttled_time")},
            }),
            json!({
                "cache": mem_raw.get("cache").cloned().unwrap_or(0.into()),
                "usage": {"usage": n(read_u64(paths, "memory.usage_in_bytes")),
                          "limit": n(read_u64(paths, "memory.limit_in_bytes")),
                          "max": n(read_u64(paths, "memory.max_usage_in_bytes")),
                          "failcnt": n(read_u64(paths, "memory.failcnt"))},
                "swap": {"usage": n(read_u64(paths, "memory.memsw.usage_in_bytes")),
                         "limit": n(read_u64(paths, "memory.memsw.limit_in_bytes"))},
                "raw": mem_raw,
            }),
            None,
        )
    };
    let mut out = json!({
        "cpu": cpu,
        "memory": memory,
        "pids": {"current": n(read_u64(paths, "pids.current")),
                 "limit": n(read_u64(paths, "pids.max").filter(|&l| l != u64::MAX))},
    });
    if let Some(extra) = cgroup2 {
        out["cgroup2"] = extra;
    }
    out
}

/// io.stat: one entry per device, its counters by name.
fn io_stat(paths: &[PathBuf]) -> Vec<serde_json::Value> {
    read(paths, "io.stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (major, minor) = words.next()?.split_once(':')?;
            let mut entry = serde_json::json!({"major": major.parse::<u64>().ok()?,
                                               "minor": minor.parse::<u64>().ok()?});
            for (k, v) in words.filter_map(|w| w.split_once('=')) {
                entry[k] = v.parse::<u64>().ok()?.into();
            }
            Some(entry)
        })
        .collect()
}
