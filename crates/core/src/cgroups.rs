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
use oci_spec::runtime::LinuxResources;

use crate::{Error, Result};

/// A container's cgroup, created and not yet populated.
pub struct ContainerCgroup {
    cgroup: Cgroup,
    /// The container's directory in every hierarchy.
    pub paths: Vec<PathBuf>,
    /// Directories this call made (deepest last), for `delete` to remove.
    pub created: Vec<PathBuf>,
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

/// Create the cgroup named by `cgroups_path` (or the container id, relative,
/// when the spec gives none) and apply `resources`. On error nothing is left.
pub fn create(
    id: &str,
    cgroups_path: Option<&Path>,
    resources: Option<&LinuxResources>,
) -> Result<ContainerCgroup> {
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
    let cg = ContainerCgroup {
        cgroup,
        paths,
        created,
    };
    if let Err(e) = cg.cgroup.create() {
        let e = err(requested.display(), format!("create: {e}"));
        remove(&cg.created, &cg.paths);
        return Err(e);
    }
    if let Some(r) = resources {
        if let Err(e) = cg.apply(r) {
            remove(&cg.created, &cg.paths);
            return Err(e);
        }
    }
    Ok(cg)
}

impl ContainerCgroup {
    pub fn v2(&self) -> bool {
        self.cgroup.v2()
    }

    /// Write the resources the spec asks for; every write that fails is an
    /// error naming the file, never a silent pass.
    pub fn apply(&self, r: &LinuxResources) -> Result<()> {
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
                if !v2 {
                    mem.set_swappiness(s).map_err(|e| {
                        err(
                            path(mem, "memory.swappiness"),
                            format!("linux.resources.memory.swappiness={s}: {e}"),
                        )
                    })?;
                }
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

#[cfg(test)]
mod tests {
    #[test]
    fn weight_mapping_matches_runc() {
        assert_eq!(super::shares_to_weight(2), 1);
        assert_eq!(super::shares_to_weight(1024), 39);
        assert_eq!(super::shares_to_weight(262_144), 10_000);
    }
}
