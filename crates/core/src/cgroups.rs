//! Container cgroups through cgroups-rs, on v1, v2 and hybrid hosts.
//!
//! The host's layout is detected at run time: a cgroup2 mount at
//! `/sys/fs/cgroup` is a v2 host; otherwise each v1 hierarchy is used (on a
//! hybrid host the v1 controllers do the limiting, as with runc). A relative
//! `cgroupsPath` is taken relative to the creating process's own cgroup in
//! each hierarchy, which differs per controller on v1.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuset::CpuSetController;
use cgroups_rs::fs::hierarchies;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Cgroup, Controller, MaxValue};
use cgroups_rs::CgroupPid;
use oci_spec::runtime::{Linux, LinuxDeviceType, LinuxResources};

use crate::{Error, Result};

/// A container's cgroup, created and not yet populated.
pub struct ContainerCgroup {
    cgroup: Cgroup,
    /// The container's directory in every hierarchy.
    pub paths: Vec<PathBuf>,
    /// Directories this call made (deepest last), for `delete` to remove.
    pub created: Vec<PathBuf>,
    /// `linux.devices` (type, major, minor): the device cgroup allows them.
    device_nodes: Vec<(char, i64, i64)>,
    /// What `make` applies.
    resources: Option<LinuxResources>,
}

fn device_nodes(linux: Option<&Linux>) -> Vec<(char, i64, i64)> {
    linux
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
        .filter_map(|d| {
            let typ = match d.typ() {
                LinuxDeviceType::B => 'b',
                LinuxDeviceType::C | LinuxDeviceType::U => 'c',
                _ => return None,
            };
            Some((typ, d.major(), d.minor()))
        })
        .collect()
}

fn err(path: impl std::fmt::Display, why: impl std::fmt::Display) -> Error {
    Error::Cgroup {
        path: path.to_string(),
        why: why.to_string(),
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
pub fn plan(id: &str, linux: Option<&Linux>) -> Result<ContainerCgroup> {
    let cgroups_path = linux.and_then(|l| l.cgroups_path().as_deref());
    let resources = linux.and_then(|l| l.resources().as_ref());
    let hier = hierarchies::auto();
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
            "linux.cgroupsPath {:?} is in systemd's slice:prefix:name form; amphi manages cgroupfs paths only (no --systemd-cgroup)",
            requested
        )));
    }
    let absolute = requested.is_absolute();
    let v2 = hier.v2();
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

    let paths: Vec<PathBuf> = cgroup
        .subsystems()
        .iter()
        .map(|s| s.to_controller().path().to_path_buf())
        .collect();
    let mut created = Vec::new();
    for p in &paths {
        let mut missing: Vec<PathBuf> = p
            .ancestors()
            .take_while(|a| !a.exists())
            .map(Path::to_path_buf)
            .collect();
        missing.reverse();
        created.extend(missing);
    }
    Ok(ContainerCgroup {
        cgroup,
        paths,
        created,
        device_nodes: device_nodes(linux),
        resources: resources.cloned(),
    })
}

impl ContainerCgroup {
    /// Create the planned directories and apply the resources; on error
    /// nothing is left.
    pub fn make(&self) -> Result<()> {
        if let Err(e) = self.cgroup.create() {
            let e = err(self.cgroup.path(), format!("create: {e}"));
            remove(&self.created, &self.paths);
            return Err(e);
        }
        if let Some(r) = &self.resources {
            if let Err(e) = self.apply(r) {
                remove(&self.created, &self.paths);
                return Err(e);
            }
        }
        Ok(())
    }

    pub fn v2(&self) -> bool {
        self.cgroup.v2()
    }

    /// Reopen the cgroup of an existing container from its directories.
    pub fn open(paths: &[PathBuf], linux: Option<&Linux>) -> Result<ContainerCgroup> {
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
            device_nodes: device_nodes(linux),
            resources: None,
        })
    }

    /// The directory of one controller (v2: the one directory).
    fn dir(&self, controller: &str) -> Option<PathBuf> {
        if self.v2() {
            let dir = self.paths.first()?;
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

    fn write(&self, controller: &str, file: &str, value: &str, field: &str) -> Result<()> {
        let dir = self.dir(controller).ok_or_else(|| {
            err(
                controller,
                format!("{field}: no {controller} controller for this container on this host"),
            )
        })?;
        let path = dir.join(file);
        std::fs::write(&path, value)
            .map_err(|e| err(path.display(), format!("{field}={value:?}: {e}")))
    }

    /// Refuse what this cgroup version cannot express, before anything is
    /// written, so that a refused `create` or `update` changes nothing.
    pub fn check_expressible(&self, r: &LinuxResources) -> Result<()> {
        let v2 = self.v2();
        let refuse = |field: &str, why: &str| Err(Error::Unsupported(format!("{field}: {why}")));
        let v1_only = "cgroup v1 only; this host's cgroups are v2";
        if v2 {
            if let Some(m) = r.memory() {
                if m.swappiness().is_some() {
                    return refuse("linux.resources.memory.swappiness", v1_only);
                }
                if m.disable_oom_killer() == Some(true) {
                    return refuse("linux.resources.memory.disableOOMKiller", v1_only);
                }
            }
            if let Some(c) = r.cpu() {
                if c.realtime_runtime().is_some() || c.realtime_period().is_some() {
                    return refuse(
                        "linux.resources.cpu.realtimeRuntime/realtimePeriod",
                        v1_only,
                    );
                }
            }
            if let Some(b) = r.block_io() {
                if b.leaf_weight().is_some()
                    || b.weight_device()
                        .iter()
                        .flatten()
                        .any(|d| d.leaf_weight().is_some())
                {
                    return refuse("linux.resources.blockIO.leafWeight", v1_only);
                }
            }
            if r.network().is_some() {
                return refuse(
                    "linux.resources.network",
                    "net_cls/net_prio are cgroup v1 only; this host's cgroups are v2",
                );
            }
        } else if r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
            return refuse(
                "linux.resources.unified",
                "needs a cgroup v2 host; this host's controllers are v1",
            );
        }
        if let Some(u) = r.unified() {
            for key in u.keys() {
                if key.contains('/') || key.starts_with('.') || !key.contains('.') {
                    return refuse(
                        &format!("linux.resources.unified.{key}"),
                        "not a cgroup interface file name",
                    );
                }
            }
        }
        if let Some(b) = r.block_io() {
            if let Some(w) = b.weight() {
                if !(10..=1000).contains(&w) {
                    return refuse(
                        "linux.resources.blockIO.weight",
                        "must be between 10 and 1000",
                    );
                }
            }
        }
        Ok(())
    }

    /// Write the resources the spec asks for; every write that fails is an
    /// error naming the file, never a silent pass.
    pub fn apply(&self, r: &LinuxResources) -> Result<()> {
        self.check_expressible(r)?;
        self.apply_more(r)?;
        let v2 = self.v2();
        let path = |c: &dyn Controller, f: &str| c.path().join(f).display().to_string();
        if let Some(m) = r.memory() {
            let mem: &MemController = self.cgroup.controller_of().ok_or_else(|| {
                err(
                    "memory",
                    "linux.resources.memory: no memory controller on this host",
                )
            })?;
            if let Some(limit) = m.limit() {
                mem.set_limit(limit).map_err(|e| {
                    err(
                        path(mem, "memory limit"),
                        format!("linux.resources.memory.limit={limit}: {e}"),
                    )
                })?;
            }
            if let Some(res) = m.reservation() {
                mem.set_soft_limit(res).map_err(|e| {
                    err(
                        path(mem, "memory reservation"),
                        format!("linux.resources.memory.reservation={res}: {e}"),
                    )
                })?;
            }
            if let Some(swap) = m.swap() {
                // v2's memory.swap.max counts swap alone; the spec's value is memory+swap.
                let value = match (v2, m.limit()) {
                    (true, Some(limit)) if swap > 0 => swap - limit,
                    _ => swap,
                };
                mem.set_memswap_limit(value).map_err(|e| {
                    err(
                        path(mem, "memory swap"),
                        format!(
                            "linux.resources.memory.swap={swap}: {e} (is swap accounting enabled?)"
                        ),
                    )
                })?;
            }
            if let Some(s) = m.swappiness() {
                mem.set_swappiness(s).map_err(|e| {
                    err(
                        path(mem, "memory.swappiness"),
                        format!("linux.resources.memory.swappiness={s}: {e}"),
                    )
                })?;
            }
        }
        if let Some(c) = r.cpu() {
            if c.shares().is_some() || c.quota().is_some() || c.period().is_some() {
                let cpu: &CpuController = self.cgroup.controller_of().ok_or_else(|| {
                    err("cpu", "linux.resources.cpu: no cpu controller on this host")
                })?;
                if let Some(shares) = c.shares() {
                    let value = if v2 { shares_to_weight(shares) } else { shares };
                    cpu.set_shares(value).map_err(|e| {
                        err(
                            path(cpu, "cpu shares"),
                            format!("linux.resources.cpu.shares={shares}: {e}"),
                        )
                    })?;
                }
                if v2 {
                    cpu.set_cfs_quota_and_period(c.quota(), c.period())
                        .map_err(|e| {
                            err(
                                path(cpu, "cpu.max"),
                                format!("linux.resources.cpu quota/period: {e}"),
                            )
                        })?;
                } else {
                    // Period first: a quota is checked against the current period.
                    if let Some(p) = c.period() {
                        cpu.set_cfs_period(p).map_err(|e| {
                            err(
                                path(cpu, "cpu.cfs_period_us"),
                                format!("linux.resources.cpu.period={p}: {e}"),
                            )
                        })?;
                    }
                    if let Some(q) = c.quota() {
                        cpu.set_cfs_quota(q).map_err(|e| {
                            err(
                                path(cpu, "cpu.cfs_quota_us"),
                                format!("linux.resources.cpu.quota={q}: {e}"),
                            )
                        })?;
                    }
                }
            }
            if c.cpus().is_some() || c.mems().is_some() {
                let cpuset: &CpuSetController = self.cgroup.controller_of().ok_or_else(|| {
                    err(
                        "cpuset",
                        "linux.resources.cpu.cpus: no cpuset controller on this host",
                    )
                })?;
                if let Some(cpus) = c.cpus() {
                    cpuset.set_cpus(cpus).map_err(|e| {
                        err(
                            path(cpuset, "cpuset.cpus"),
                            format!("linux.resources.cpu.cpus={cpus}: {e}"),
                        )
                    })?;
                }
                if let Some(mems) = c.mems() {
                    cpuset.set_mems(mems).map_err(|e| {
                        err(
                            path(cpuset, "cpuset.mems"),
                            format!("linux.resources.cpu.mems={mems}: {e}"),
                        )
                    })?;
                }
            }
        }
        if let Some(p) = r.pids() {
            let pids: &PidController = self.cgroup.controller_of().ok_or_else(|| {
                err(
                    "pids",
                    "linux.resources.pids: no pids controller on this host",
                )
            })?;
            let limit = p.limit();
            let value = if limit > 0 {
                MaxValue::Value(limit)
            } else {
                MaxValue::Max
            };
            pids.set_pid_max(value).map_err(|e| {
                err(
                    path(pids, "pids.max"),
                    format!("linux.resources.pids.limit={limit}: {e}"),
                )
            })?;
        }
        Ok(())
    }

    /// Block I/O, huge pages, devices, network classes, the OOM killer and
    /// raw v2 files: the resources written file by file.
    fn apply_more(&self, r: &LinuxResources) -> Result<()> {
        let v2 = self.v2();
        if let Some(b) = r.block_io() {
            // v2 takes io.bfq.weight (the v1 range) when BFQ is there, else
            // io.weight, scaled as runc does.
            let bfq = v2
                && self
                    .dir("io")
                    .is_some_and(|d| d.join("io.bfq.weight").exists());
            let (ctl, weight_file) = match (v2, bfq) {
                (false, _) => ("blkio", "blkio.weight"),
                (true, true) => ("io", "io.bfq.weight"),
                (true, false) => ("io", "io.weight"),
            };
            let scale = |w: u16| -> u64 {
                if v2 && !bfq {
                    1 + (u64::from(w).saturating_sub(10)) * 9999 / 990
                } else {
                    u64::from(w)
                }
            };
            if let Some(w) = b.weight() {
                let value = if v2 && !bfq {
                    format!("default {}", scale(w))
                } else {
                    scale(w).to_string()
                };
                self.write(ctl, weight_file, &value, "linux.resources.blockIO.weight")?;
            }
            if let Some(w) = b.leaf_weight() {
                self.write(
                    "blkio",
                    "blkio.leaf_weight",
                    &w.to_string(),
                    "linux.resources.blockIO.leafWeight",
                )?;
            }
            for d in b.weight_device().iter().flatten() {
                if let Some(w) = d.weight() {
                    let value = format!("{}:{} {}", d.major(), d.minor(), scale(w));
                    self.write(
                        ctl,
                        weight_file,
                        &value,
                        "linux.resources.blockIO.weightDevice",
                    )?;
                }
                if let Some(w) = d.leaf_weight() {
                    let value = format!("{}:{} {w}", d.major(), d.minor());
                    self.write(
                        "blkio",
                        "blkio.leaf_weight_device",
                        &value,
                        "linux.resources.blockIO.weightDevice.leafWeight",
                    )?;
                }
            }
            for (list, v1_file, v2_key, field) in [
                (
                    b.throttle_read_bps_device(),
                    "blkio.throttle.read_bps_device",
                    "rbps",
                    "throttleReadBpsDevice",
                ),
                (
                    b.throttle_write_bps_device(),
                    "blkio.throttle.write_bps_device",
                    "wbps",
                    "throttleWriteBpsDevice",
                ),
                (
                    b.throttle_read_iops_device(),
                    "blkio.throttle.read_iops_device",
                    "riops",
                    "throttleReadIOPSDevice",
                ),
                (
                    b.throttle_write_iops_device(),
                    "blkio.throttle.write_iops_device",
                    "wiops",
                    "throttleWriteIOPSDevice",
                ),
            ] {
                for d in list.iter().flatten() {
                    let field = format!("linux.resources.blockIO.{field}");
                    if v2 {
                        let rate = if d.rate() == 0 {
                            "max".to_string()
                        } else {
                            d.rate().to_string()
                        };
                        let value = format!("{}:{} {v2_key}={rate}", d.major(), d.minor());
                        self.write("io", "io.max", &value, &field)?;
                    } else {
                        let value = format!("{}:{} {}", d.major(), d.minor(), d.rate());
                        self.write("blkio", v1_file, &value, &field)?;
                    }
                }
            }
        }
        for h in r.hugepage_limits().iter().flatten() {
            let file = if v2 {
                format!("hugetlb.{}.max", h.page_size())
            } else {
                format!("hugetlb.{}.limit_in_bytes", h.page_size())
            };
            let field = format!("linux.resources.hugepageLimits[{}]", h.page_size());
            if self.dir("hugetlb").is_some_and(|d| !d.join(&file).exists()) {
                return Err(err(
                    file,
                    format!("{field}: page size not supported by this kernel"),
                ));
            }
            self.write("hugetlb", &file, &h.limit().to_string(), &field)?;
        }
        if let Some(m) = r.memory() {
            if m.disable_oom_killer() == Some(true) {
                self.write(
                    "memory",
                    "memory.oom_control",
                    "1",
                    "linux.resources.memory.disableOOMKiller",
                )?;
            }
        }
        if let Some(c) = r.cpu() {
            if let Some(p) = c.realtime_period() {
                self.write(
                    "cpu",
                    "cpu.rt_period_us",
                    &p.to_string(),
                    "linux.resources.cpu.realtimePeriod",
                )?;
            }
            if let Some(rt) = c.realtime_runtime() {
                self.write(
                    "cpu",
                    "cpu.rt_runtime_us",
                    &rt.to_string(),
                    "linux.resources.cpu.realtimeRuntime",
                )?;
            }
        }
        if let Some(n) = r.network() {
            if let Some(id) = n.class_id() {
                self.write(
                    "net_cls",
                    "net_cls.classid",
                    &id.to_string(),
                    "linux.resources.network.classID",
                )?;
            }
            for p in n.priorities().iter().flatten() {
                let value = format!("{} {}", p.name(), p.priority());
                self.write(
                    "net_prio",
                    "net_prio.ifpriomap",
                    &value,
                    "linux.resources.network.priorities",
                )?;
            }
        }
        if let Some(u) = r.unified() {
            let dir = self
                .paths
                .first()
                .ok_or_else(|| err("cgroup", "no cgroup"))?;
            for (key, value) in u {
                let path = dir.join(key);
                std::fs::write(&path, value).map_err(|e| {
                    err(
                        path.display(),
                        format!("linux.resources.unified.{key}={value:?}: {e}"),
                    )
                })?;
            }
        }
        if let Some(devices) = r.devices() {
            self.apply_devices(devices)?;
        }
        Ok(())
    }

    fn apply_devices(&self, spec_rules: &[oci_spec::runtime::LinuxDeviceCgroup]) -> Result<()> {
        let rules = crate::devices::rules(spec_rules, &self.device_nodes)?;
        if self.v2() {
            let dir = self
                .paths
                .first()
                .ok_or_else(|| err("cgroup", "no cgroup"))?;
            crate::devices::apply_v2(dir, &rules)
        } else {
            let dir = self.dir("devices").ok_or_else(|| {
                err(
                    "devices",
                    "linux.resources.devices: no devices controller on this host",
                )
            })?;
            crate::devices::apply_v1(&dir, &rules)
        }
    }

    /// Move a process (all its threads) into the container's cgroup.
    pub fn attach(&self, pid: i32) -> Result<()> {
        self.cgroup
            .add_task_by_tgid(CgroupPid::from(pid as u64))
            .map_err(|e| err(self.cgroup.path(), format!("attach pid {pid}: {e}")))
    }
}

/// runc's mapping of cgroup v1 cpu shares [2, 262144] onto v2 weights [1, 10000].
fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// Remove the directories a container's cgroup creation made. The
/// container's own directories (`paths`) may stay busy for a moment after
/// their last process died, so removal is retried; parents it made are
/// removed only while empty, since another container may have moved in.
pub fn remove(created: &[PathBuf], paths: &[PathBuf]) -> Vec<Error> {
    let mut errors = Vec::new();
    for dir in created.iter().rev() {
        let own = paths.contains(dir);
        let mut tries = 0;
        loop {
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && own && tries < 200 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(5));
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
    let (cpu, memory) = if v2 {
        let cpu = read_keyed(paths, "cpu.stat");
        let us = |k: &str| cpu.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        let mem_raw = read_keyed(paths, "memory.stat");
        let events = read_keyed(paths, "memory.events");
        (
            json!({
                "usage": {"total": us("usage_usec") * 1000, "percpu": [],
                          "kernel": us("system_usec") * 1000, "user": us("user_usec") * 1000},
                "throttling": {"periods": us("nr_periods"), "throttledPeriods": us("nr_throttled"),
                               "throttledTime": us("throttled_usec") * 1000},
            }),
            json!({
                "cache": mem_raw.get("file").cloned().unwrap_or(0.into()),
                "usage": {"usage": n(read_u64(paths, "memory.current")),
                          "limit": n(read_u64(paths, "memory.max")),
                          "max": n(read_u64(paths, "memory.peak")),
                          "failcnt": events.get("max").cloned().unwrap_or(0.into())},
                "swap": {"usage": n(read_u64(paths, "memory.swap.current")),
                         "limit": n(read_u64(paths, "memory.swap.max"))},
                "raw": mem_raw,
            }),
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
        )
    };
    json!({
        "cpu": cpu,
        "memory": memory,
        "pids": {"current": n(read_u64(paths, "pids.current")),
                 "limit": n(read_u64(paths, "pids.max").filter(|&l| l != u64::MAX))},
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn weight_mapping_matches_runc() {
        assert_eq!(super::shares_to_weight(2), 1);
        assert_eq!(super::shares_to_weight(1024), 39);
        assert_eq!(super::shares_to_weight(262_144), 10_000);
    }
}
