//! Task metrics as containerd expects them: `io.containerd.cgroups.v1.Metrics`
//! on v1 and hybrid hosts, `io.containerd.cgroups.v2.Metrics` on v2 hosts
//! (containerd's CRI and `ctr task metrics` read either). Both are built
//! from `amphi events --stats`. The v2 message is not in the protos crate,
//! so it is encoded here, field numbers from containerd's
//! `cgroup2/stats/metrics.proto`.

use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat, Throttle,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{CodedOutputStream, MessageField};
use serde_json::Value;

/// `events --stats` data as the metrics message for this host's cgroups.
pub fn any(data: &Value) -> Result<Any, String> {
    match data.get("cgroup2") {
        Some(v2) => Ok(Any {
            type_url: "io.containerd.cgroups.v2.Metrics".into(),
            value: v2_metrics(data, v2).map_err(|e| e.to_string())?,
            ..Default::default()
        }),
        None => containerd_shim::util::convert_to_any(Box::new(v1_metrics(data)))
            .map_err(|e| e.to_string()),
    }
}

fn v1_metrics(v: &Value) -> Metrics {
    let u = |p: &str| v.pointer(p).and_then(|x| x.as_u64()).unwrap_or(0);
    let entry = |base: &str| MemoryEntry {
        usage: u(&format!("{base}/usage")),
        limit: u(&format!("{base}/limit")),
        max: u(&format!("{base}/max")),
        failcnt: u(&format!("{base}/failcnt")),
        ..Default::default()
    };
    Metrics {
        cpu: MessageField::some(CPUStat {
            usage: MessageField::some(CPUUsage {
                total: u("/cpu/usage/total"),
                kernel: u("/cpu/usage/kernel"),
                user: u("/cpu/usage/user"),
                per_cpu: v
                    .pointer("/cpu/usage/percpu")
                    .and_then(|a| a.as_array())
                    .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
                    .unwrap_or_default(),
                ..Default::default()
            }),
            throttling: MessageField::some(Throttle {
                periods: u("/cpu/throttling/periods"),
                throttled_periods: u("/cpu/throttling/throttledPeriods"),
                throttled_time: u("/cpu/throttling/throttledTime"),
                ..Default::default()
            }),
            ..Default::default()
        }),
        memory: MessageField::some(MemoryStat {
            cache: u("/memory/cache"),
            rss: u("/memory/raw/rss").max(u("/memory/raw/anon")),
            usage: MessageField::some(entry("/memory/usage")),
            swap: MessageField::some(entry("/memory/swap")),
            ..Default::default()
        }),
        pids: MessageField::some(PidsStat {
            current: u("/pids/current"),
            limit: u("/pids/limit"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

type Encoded = Result<Vec<u8>, containerd_shim::protos::protobuf::Error>;

/// A message of uint64 fields: (field number, key in `from`).
fn message(from: &Value, fields: &[(u32, &str)]) -> Encoded {
    let mut out = Vec::new();
    let mut w = CodedOutputStream::vec(&mut out);
    for &(number, key) in fields {
        if let Some(x) = from.get(key).and_then(Value::as_u64).filter(|&x| x != 0) {
            w.write_uint64(number, x)?;
        }
    }
    w.flush()?;
    drop(w);
    Ok(out)
}

const CPU: &[(u32, &str)] = &[
    (1, "usage_usec"),
    (2, "user_usec"),
    (3, "system_usec"),
    (4, "nr_periods"),
    (5, "nr_throttled"),
    (6, "throttled_usec"),
    (8, "nr_bursts"),
    (9, "burst_usec"),
];

const MEMORY_STAT: &[(u32, &str)] = &[
    (1, "anon"),
    (2, "file"),
    (3, "kernel_stack"),
    (4, "slab"),
    (5, "sock"),
    (6, "shmem"),
    (7, "file_mapped"),
    (8, "file_dirty"),
    (9, "file_writeback"),
    (10, "anon_thp"),
    (11, "inactive_anon"),
    (12, "active_anon"),
    (13, "inactive_file"),
    (14, "active_file"),
    (15, "unevictable"),
    (16, "slab_reclaimable"),
    (17, "slab_unreclaimable"),
    (18, "pgfault"),
    (19, "pgmajfault"),
    (22, "workingset_nodereclaim"),
    (23, "pgrefill"),
    (24, "pgscan"),
    (25, "pgsteal"),
    (26, "pgactivate"),
    (27, "pgdeactivate"),
    (28, "pglazyfree"),
    (29, "pglazyfreed"),
    (30, "thp_fault_alloc"),
    (31, "thp_collapse_alloc"),
    (39, "workingset_refault_anon"),
    (40, "workingset_refault_file"),
    (41, "workingset_activate_anon"),
    (42, "workingset_activate_file"),
];

const MEMORY_USAGE: &[(u32, &str)] = &[
    (32, "usage"),
    (33, "usage_limit"),
    (34, "swap_usage"),
    (35, "swap_limit"),
    (36, "max_usage"),
    (37, "swap_max_usage"),
];

const MEMORY_EVENTS: &[(u32, &str)] = &[
    (1, "low"),
    (2, "high"),
    (3, "max"),
    (4, "oom"),
    (5, "oom_kill"),
    (6, "oom_group_kill"),
];

const IO_ENTRY: &[(u32, &str)] = &[
    (1, "major"),
    (2, "minor"),
    (3, "rbytes"),
    (4, "wbytes"),
    (5, "rios"),
    (6, "wios"),
];

/// io.containerd.cgroups.v2.Metrics { pids 1, cpu 2, memory 4, io 6,
/// memory_events 8 }.
fn v2_metrics(data: &Value, v2: &Value) -> Encoded {
    let pids = message(&data["pids"], &[(1, "current"), (2, "limit")])?;
    let cpu = message(&v2["cpu"], CPU)?;
    let mut memory = message(&v2["memory"], MEMORY_STAT)?;
    memory.extend(message(&v2["memory_usage"], MEMORY_USAGE)?);
    let entries = v2["io"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| message(entry, IO_ENTRY))
        .collect::<Result<Vec<_>, _>>()?;
    let mut io = Vec::new();
    let mut w = CodedOutputStream::vec(&mut io);
    for entry in &entries {
        w.write_bytes(1, entry)?;
    }
    w.flush()?;
    drop(w);
    let events = message(&v2["memory_events"], MEMORY_EVENTS)?;
    let mut out = Vec::new();
    let mut w = CodedOutputStream::vec(&mut out);
    for (number, body) in [(1, &pids), (2, &cpu), (4, &memory), (6, &io), (8, &events)] {
        w.write_bytes(number, body)?;
    }
    w.flush()?;
    drop(w);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_fields_land_on_containerds_numbers() {
        let data = serde_json::json!({
            "pids": {"current": 3, "limit": 0},
            "cgroup2": {"cpu": {"usage_usec": 5}, "memory": {}, "memory_usage": {"usage": 1},
                        "memory_events": {"oom_kill": 2}, "io": [{"major": 8, "minor": 0, "rbytes": 7}]},
        });
        let v2 = any(&data).unwrap();
        assert_eq!(v2.type_url, "io.containerd.cgroups.v2.Metrics");
        assert_eq!(
            v2.value,
            [
                0x0a, 2, 0x08, 3, // pids { current: 3 }
                0x12, 2, 0x08, 5, // cpu { usage_usec: 5 }
                0x22, 3, 0x80, 0x02, 1, // memory { usage (32): 1 }
                0x32, 6, 0x0a, 4, 0x08, 8, 0x18, 7, // io { usage { major 8, rbytes 7 } }
                0x42, 2, 0x28, 2, // memory_events { oom_kill: 2 }
            ]
        );
        let v1 = any(&serde_json::json!({"pids": {"current": 1}})).unwrap();
        assert_eq!(v1.type_url, "io.containerd.cgroups.v1.Metrics");
    }
}
