//! `linux.resources` as the list of cgroup file writes that express it on
//! a v1 or a v2 hierarchy: a pure function of the spec and the version, so
//! every rule (units, ranges, zero meaning "unset", what a version cannot
//! express) is tested without root, and `create` and `update` refuse a
//! field before writing anything. Devices are not here: they are rules for
//! `devices.allow` (v1) or an eBPF program (v2), see [`crate::devices`].

use oci_spec::runtime::LinuxResources;

use crate::{Error, Result};

/// One write: `value` into `file` of the `controller`'s directory ("" is
/// the container's one directory on v2), for the spec field `field`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub controller: &'static str,
    pub file: String,
    pub value: String,
    pub field: String,
}

/// What of the hierarchy changes how a field is written.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hierarchy {
    pub v2: bool,
    /// v2 with BFQ: `io.bfq.weight`, which takes v1's weight range.
    pub bfq: bool,
}

fn w(
    controller: &'static str,
    file: impl Into<String>,
    value: impl ToString,
    field: &str,
) -> Write {
    Write {
        controller,
        file: file.into(),
        value: value.to_string(),
        field: format!("linux.resources.{field}"),
    }
}

fn refuse<T>(field: &str, why: &str) -> Result<T> {
    Err(Error::Unsupported(format!(
        "linux.resources.{field}: {why}"
    )))
}

const V1_ONLY: &str = "cgroup v1 only; this host's cgroups are v2";

/// Every write `r` asks for, in the order to make them. A zero in a field
/// clients send as "unset" (Docker's `blockIO.weight: 0`, `cpu.shares: 0`,
/// `pids.limit: 0`, ...) is unset, as with runc.
pub fn writes(r: &LinuxResources, h: Hierarchy) -> Result<Vec<Write>> {
    let mut out = Vec::new();
    memory(r, h, &mut out)?;
    cpu(r, h, &mut out)?;
    if let Some(p) = r.pids() {
        match p.limit() {
            0 => {}
            n if n < 0 => out.push(w("pids", "pids.max", "max", "pids.limit")),
            n => out.push(w("pids", "pids.max", n, "pids.limit")),
        }
    }
    block_io(r, h, &mut out)?;
    for l in r.hugepage_limits().iter().flatten() {
        let file = if h.v2 {
            format!("hugetlb.{}.max", l.page_size())
        } else {
            format!("hugetlb.{}.limit_in_bytes", l.page_size())
        };
        out.push(w("hugetlb", file, l.limit(), "hugepageLimits"));
    }
    if let Some(n) = r.network() {
        if h.v2 {
            return refuse(
                "network",
                "net_cls/net_prio are cgroup v1 only; this host's cgroups are v2",
            );
        }
        if let Some(id) = n.class_id().filter(|id| *id != 0) {
            out.push(w("net_cls", "net_cls.classid", id, "network.classID"));
        }
        for p in n.priorities().iter().flatten() {
            let value = format!("{} {}", p.name(), p.priority());
            out.push(w(
                "net_prio",
                "net_prio.ifpriomap",
                value,
                "network.priorities",
            ));
        }
    }
    if let Some(u) = r.unified().as_ref().filter(|u| !u.is_empty()) {
        if !h.v2 {
            return refuse(
                "unified",
                "needs a cgroup v2 host; this host's controllers are v1",
            );
        }
        let mut keys: Vec<_> = u.keys().collect();
        keys.sort();
        for key in keys {
            if key.contains('/') || key.starts_with('.') || !key.contains('.') {
                return refuse(
                    &format!("unified.{key}"),
                    "not a cgroup interface file name",
                );
            }
            out.push(w("", key.as_str(), &u[key], &format!("unified.{key}")));
        }
    }
    Ok(out)
}

fn memory(r: &LinuxResources, h: Hierarchy, out: &mut Vec<Write>) -> Result<()> {
    let Some(m) = r.memory() else { return Ok(()) };
    let set = |v: Option<i64>| v.filter(|v| *v != 0);
    let limit = set(m.limit());
    let bytes = |v: i64| {
        if v < 0 && h.v2 {
            "max".to_string()
        } else {
            v.to_string()
        }
    };
    if h.v2 {
        if m.swappiness().is_some() {
            return refuse("memory.swappiness", V1_ONLY);
        }
        if m.disable_oom_killer() == Some(true) {
            return refuse("memory.disableOOMKiller", V1_ONLY);
        }
    }
    if let Some(l) = limit {
        let file = if h.v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        out.push(w("memory", file, bytes(l), "memory.limit"));
    }
    if let Some(res) = set(m.reservation()) {
        let file = if h.v2 {
            "memory.low"
        } else {
            "memory.soft_limit_in_bytes"
        };
        out.push(w("memory", file, bytes(res), "memory.reservation"));
    }
    if let Some(swap) = set(m.swap()) {
        if h.v2 {
            // The spec's swap is memory+swap; v2's memory.swap.max is swap alone.
            let value = match (swap, limit) {
                (-1, _) => "max".to_string(),
                (_, None | Some(-1)) => {
                    return refuse(
                        "memory.swap",
                        "on cgroup v2 a swap limit needs a memory limit beside it",
                    )
                }
                (s, Some(l)) if s < l => {
                    return refuse("memory.swap", "memory+swap is below the memory limit")
                }
                (s, Some(l)) => (s - l).to_string(),
            };
            out.push(w("memory", "memory.swap.max", value, "memory.swap"));
        } else {
            out.push(w(
                "memory",
                "memory.memsw.limit_in_bytes",
                swap,
                "memory.swap",
            ));
        }
    }
    if let Some(s) = m.swappiness() {
        if s > 100 {
            return refuse("memory.swappiness", "must be between 0 and 100");
        }
        out.push(w("memory", "memory.swappiness", s, "memory.swappiness"));
    }
    if m.disable_oom_killer() == Some(true) {
        out.push(w(
            "memory",
            "memory.oom_control",
            1,
            "memory.disableOOMKiller",
        ));
    }
    Ok(())
}

fn cpu(r: &LinuxResources, h: Hierarchy, out: &mut Vec<Write>) -> Result<()> {
    let Some(c) = r.cpu() else { return Ok(()) };
    let quota = c.quota().filter(|q| *q != 0);
    let period = c.period().filter(|p| *p != 0);
    if let Some(shares) = c.shares().filter(|s| *s != 0) {
        if h.v2 {
            out.push(w(
                "cpu",
                "cpu.weight",
                shares_to_weight(shares),
                "cpu.shares",
            ));
        } else {
            out.push(w("cpu", "cpu.shares", shares, "cpu.shares"));
        }
    }
    if h.v2 {
        if c.realtime_runtime().is_some_and(|v| v != 0)
            || c.realtime_period().is_some_and(|v| v != 0)
        {
            return refuse("cpu.realtimeRuntime/realtimePeriod", V1_ONLY);
        }
        if quota.is_some() || period.is_some() {
            // runc's cpu.max: "max" unless a positive quota, then the period.
            let mut value = match quota {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".into(),
            };
            if let Some(p) = period {
                value += &format!(" {p}");
            }
            out.push(w("cpu", "cpu.max", value, "cpu.quota"));
        }
        if let Some(idle) = c.idle() {
            out.push(w("cpu", "cpu.idle", idle, "cpu.idle"));
        }
    } else {
        // The period first: a quota is checked against the current period.
        if let Some(p) = period {
            out.push(w("cpu", "cpu.cfs_period_us", p, "cpu.period"));
        }
        if let Some(q) = quota {
            out.push(w("cpu", "cpu.cfs_quota_us", q, "cpu.quota"));
        }
        if let Some(p) = c.realtime_period().filter(|p| *p != 0) {
            out.push(w("cpu", "cpu.rt_period_us", p, "cpu.realtimePeriod"));
        }
        if let Some(rt) = c.realtime_runtime().filter(|r| *r != 0) {
            out.push(w("cpu", "cpu.rt_runtime_us", rt, "cpu.realtimeRuntime"));
        }
    }
    if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
        out.push(w("cpuset", "cpuset.cpus", cpus, "cpu.cpus"));
    }
    if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
        out.push(w("cpuset", "cpuset.mems", mems, "cpu.mems"));
    }
    Ok(())
}

fn block_io(r: &LinuxResources, h: Hierarchy, out: &mut Vec<Write>) -> Result<()> {
    let Some(b) = r.block_io() else { return Ok(()) };
    let weight = |v: Option<u16>| v.filter(|v| *v != 0);
    let in_range = |field: &str, v: u16| {
        if (10..=1000).contains(&v) {
            Ok(())
        } else {
            refuse(field, "must be between 10 and 1000 (0 leaves it unset)")
        }
    };
    let (ctl, file) = match (h.v2, h.bfq) {
        (false, _) => ("blkio", "blkio.weight"),
        (true, true) => ("io", "io.bfq.weight"),
        (true, false) => ("io", "io.weight"),
    };
    // io.weight has its own range [1, 10000]; runc maps v1's onto it.
    let scaled = |v: u16| -> u64 {
        if h.v2 && !h.bfq {
            1 + (u64::from(v) - 10) * 9999 / 990
        } else {
            u64::from(v)
        }
    };
    if let Some(v) = weight(b.weight()) {
        in_range("blockIO.weight", v)?;
        let value = if h.v2 && !h.bfq {
            format!("default {}", scaled(v))
        } else {
            v.to_string()
        };
        out.push(w(ctl, file, value, "blockIO.weight"));
    }
    let leaf = weight(b.leaf_weight()).is_some()
        || b.weight_device()
            .iter()
            .flatten()
            .any(|d| weight(d.leaf_weight()).is_some());
    if h.v2 && leaf {
        return refuse("blockIO.leafWeight", V1_ONLY);
    }
    if let Some(v) = weight(b.leaf_weight()) {
        in_range("blockIO.leafWeight", v)?;
        out.push(w("blkio", "blkio.leaf_weight", v, "blockIO.leafWeight"));
    }
    for d in b.weight_device().iter().flatten() {
        if let Some(v) = weight(d.weight()) {
            in_range("blockIO.weightDevice.weight", v)?;
            let value = format!("{}:{} {}", d.major(), d.minor(), scaled(v));
            out.push(w(ctl, file, value, "blockIO.weightDevice"));
        }
        if let Some(v) = weight(d.leaf_weight()) {
            in_range("blockIO.weightDevice.leafWeight", v)?;
            let value = format!("{}:{} {v}", d.major(), d.minor());
            out.push(w(
                "blkio",
                "blkio.leaf_weight_device",
                value,
                "blockIO.weightDevice",
            ));
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
            let field = format!("blockIO.{field}");
            if h.v2 {
                let rate = if d.rate() == 0 {
                    "max".to_string()
                } else {
                    d.rate().to_string()
                };
                let value = format!("{}:{} {v2_key}={rate}", d.major(), d.minor());
                out.push(w("io", "io.max", value, &field));
            } else {
                let value = format!("{}:{} {}", d.major(), d.minor(), d.rate());
                out.push(w("blkio", v1_file, value, &field));
            }
        }
    }
    Ok(())
}

/// Whether `r` asks for no limit at all (every field absent or "unset"),
/// devices aside: a rootless container without a cgroup may still run.
pub fn is_empty(r: &LinuxResources) -> bool {
    writes(r, Hierarchy::default()).is_ok_and(|w| w.is_empty())
}

/// runc's mapping of cgroup v1 cpu shares [2, 262144] onto v2 weights [1, 10000].
pub fn shares_to_weight(shares: u64) -> u64 {
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(json: serde_json::Value) -> LinuxResources {
        serde_json::from_value(json).unwrap()
    }

    fn files(r: serde_json::Value, h: Hierarchy) -> Vec<(String, String)> {
        writes(&resources(r), h)
            .unwrap()
            .into_iter()
            .map(|w| (w.file, w.value))
            .collect()
    }

    const V1: Hierarchy = Hierarchy {
        v2: false,
        bfq: false,
    };
    const V2: Hierarchy = Hierarchy {
        v2: true,
        bfq: false,
    };

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn weight_mapping_matches_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn zero_means_unset_as_clients_send_it() {
        // What Docker sends for a plain `docker run`.
        let docker = serde_json::json!({
            "memory": {"limit": 0, "reservation": 0, "swap": 0},
            "cpu": {"shares": 0, "quota": 0, "period": 0, "cpus": "", "mems": "",
                    "realtimePeriod": 0, "realtimeRuntime": 0},
            "pids": {"limit": 0},
            "blockIO": {"weight": 0, "leafWeight": 0}
        });
        assert_eq!(files(docker.clone(), V1), vec![]);
        assert_eq!(files(docker, V2), vec![]);
    }

    #[test]
    fn v1_and_v2_files() {
        let r = serde_json::json!({
            "memory": {"limit": 268435456, "reservation": 134217728, "swap": 536870912},
            "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
            "pids": {"limit": 64},
            "blockIO": {"weight": 500, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]}
        });
        assert_eq!(
            files(r.clone(), V1),
            pairs(&[
                ("memory.limit_in_bytes", "268435456"),
                ("memory.soft_limit_in_bytes", "134217728"),
                ("memory.memsw.limit_in_bytes", "536870912"),
                ("cpu.shares", "1024"),
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "50000"),
                ("cpuset.cpus", "0"),
                ("cpuset.mems", "0"),
                ("pids.max", "64"),
                ("blkio.weight", "500"),
                ("blkio.throttle.read_bps_device", "8:0 1048576"),
            ])
        );
        assert_eq!(
            files(r, V2),
            pairs(&[
                ("memory.max", "268435456"),
                ("memory.low", "134217728"),
                ("memory.swap.max", "268435456"),
                ("cpu.weight", "39"),
                ("cpu.max", "50000 100000"),
                ("cpuset.cpus", "0"),
                ("cpuset.mems", "0"),
                ("pids.max", "64"),
                ("io.weight", "default 4950"),
                ("io.max", "8:0 rbps=1048576"),
            ])
        );
    }

    #[test]
    fn unlimited_values() {
        let r = serde_json::json!({"memory": {"limit": -1, "swap": -1}, "cpu": {"quota": -1}, "pids": {"limit": -1}});
        assert_eq!(
            files(r.clone(), V2),
            pairs(&[
                ("memory.max", "max"),
                ("memory.swap.max", "max"),
                ("cpu.max", "max"),
                ("pids.max", "max")
            ])
        );
        assert_eq!(
            files(r, V1),
            pairs(&[
                ("memory.limit_in_bytes", "-1"),
                ("memory.memsw.limit_in_bytes", "-1"),
                ("cpu.cfs_quota_us", "-1"),
                ("pids.max", "max"),
            ])
        );
    }

    #[test]
    fn each_version_refuses_what_it_cannot_express() {
        let err = |r: serde_json::Value, h| writes(&resources(r), h).unwrap_err().to_string();
        assert!(err(serde_json::json!({"memory": {"swappiness": 10}}), V2)
            .contains("memory.swappiness"));
        assert!(err(serde_json::json!({"cpu": {"realtimeRuntime": 5}}), V2).contains("realtime"));
        assert!(err(serde_json::json!({"network": {"classID": 1}}), V2).contains("network"));
        assert!(err(serde_json::json!({"unified": {"memory.high": "1"}}), V1).contains("unified"));
        assert!(err(serde_json::json!({"unified": {"../x": "1"}}), V2).contains("unified.../x"));
        assert!(err(serde_json::json!({"blockIO": {"weight": 5}}), V1).contains("blockIO.weight"));
        assert!(err(serde_json::json!({"memory": {"swap": 1000}}), V2).contains("memory.swap"));
        assert!(err(
            serde_json::json!({"memory": {"limit": 2000, "swap": 1000}}),
            V2
        )
        .contains("memory.swap"));
    }

    #[test]
    fn bfq_takes_the_v1_range() {
        let r = serde_json::json!({"blockIO": {"weight": 500, "weightDevice": [{"major": 8, "minor": 0, "weight": 100}]}});
        assert_eq!(
            files(
                r,
                Hierarchy {
                    v2: true,
                    bfq: true
                }
            ),
            pairs(&[("io.bfq.weight", "500"), ("io.bfq.weight", "8:0 100")])
        );
    }
}
