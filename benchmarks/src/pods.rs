//! Pods through containerd's CRI, as kubelet starts them.
//!
//! `pods`: from RunPodSandbox to both of its containers Running (a native
//! sidecar and a second native container for runc; for amphi the same,
//! and a pod of a native sidecar and a wasm container), the amphi handler
//! and containerd's runc handler interleaved in one run; and what a running
//! pod costs in memory: its shim, its pause process and each container's
//! processes, RSS and PSS.
//!
//! `density`: idle pods (pause and one container: a wasm module on amphi,
//! `sleep` on runc) started one after another until `--pods` run or the
//! machine says no; memory per pod and the time the last tenth took.

use std::time::Instant;

use amphi_tests::cri::{container, Cri, BUSYBOX, WASM_POD};
use anyhow::{anyhow, Result};
use k8s_cri::v1::ContainerState;
use serde_json::{json, Value};

use crate::world::World;
use crate::{median_p95, pair_ratio, Opts};

/// (name, handler, second container's image and command)
type PodVariant = (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
);

const VARIANTS: [PodVariant; 3] = [
    (
        "amphi, native + native",
        "amphi",
        BUSYBOX,
        &["sleep", "600"],
    ),
    ("runc, native + native", "runc", BUSYBOX, &["sleep", "600"]),
    (
        "amphi, native + wasm",
        "amphi",
        WASM_POD,
        &["/app/idle.wasm", "600"],
    ),
];

pub fn group(w: &World, o: &Opts) -> Result<Value> {
    if crate::world::on_path("containerd").is_none()
        || !std::path::Path::new("/usr/lib/cni/loopback").exists()
    {
        return Ok(
            json!({"skipped": "containerd or the CNI loopback plugin is not installed (scripts/deps.sh)"}),
        );
    }
    let cri = Cri::start(&w.amphi, "");
    let runs = o.runs.min(20);
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    let mut memory: Vec<Vec<PodMemory>> = vec![Vec::new(); VARIANTS.len()];
    for round in 0..(o.warmup + runs) {
        for (k, (_, handler, image, command)) in VARIANTS.iter().enumerate() {
            let config = cri.pod_config(&format!("bench{k}"), &[], false);
            let t = Instant::now();
            let pod = cri
                .run_pod(&config, handler)
                .map_err(|e| anyhow!("{handler}: {e}"))?;
            let a = cri
                .start_container(
                    &pod,
                    &config,
                    container("sidecar", BUSYBOX, &["sleep", "600"]),
                )
                .map_err(|e| anyhow!("{handler}: {e}"))?;
            let b = cri
                .start_container(&pod, &config, container("app", image, command))
                .map_err(|e| anyhow!("{handler}: {e}"))?;
            while ![&a, &b]
                .iter()
                .all(|id| cri.status(id).0.state == ContainerState::ContainerRunning as i32)
            {
                std::thread::yield_now();
            }
            let took = t.elapsed().as_secs_f64() * 1e3;
            if round >= o.warmup {
                samples[k].push(took);
                memory[k].push(pod_memory(&cri, &pod, &[&a, &b]));
            }
            cri.remove_pod(&pod);
        }
    }
    let base = samples[1].clone();
    let rows: Vec<Value> = VARIANTS
        .iter()
        .zip(&samples)
        .zip(&memory)
        .map(|(((name, ..), s), m)| {
            let (median, p95) = median_p95(s);
            json!({"variant": name, "median_ms": median, "p95_ms": p95,
                   "pairwise_ratio": pair_ratio(s, &base), "samples_ms": s,
                   "memory_mib": PodMemory::medians(m)})
        })
        .collect();
    Ok(json!({"variants": rows, "runs": runs}))
}

/// RSS and PSS (MiB) of one process.
#[derive(Clone, Copy, Default)]
struct Mem {
    rss: f64,
    pss: f64,
}

impl Mem {
    fn of(pid: i32) -> Mem {
        let field = |file: &str, key: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/{file}"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix(key))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                })
                .unwrap_or(0.0)
                / 1024.0
        };
        Mem {
            rss: field("status", "VmRSS:"),
            pss: field("smaps_rollup", "Pss:"),
        }
    }

    fn add(self, o: Mem) -> Mem {
        Mem {
            rss: self.rss + o.rss,
            pss: self.pss + o.pss,
        }
    }
}

/// What one running pod holds: its shim (the sandbox's parent: one shim
/// serves a pod) with the helpers it keeps (amphi's OOM monitors), its
/// pause process, and its containers' processes.
#[derive(Clone, Copy, Default)]
struct PodMemory {
    shim: Mem,
    pause: Mem,
    containers: Mem,
}

impl PodMemory {
    fn total(&self) -> Mem {
        self.shim.add(self.pause).add(self.containers)
    }

    fn medians(v: &[PodMemory]) -> Value {
        let m = |f: &dyn Fn(&PodMemory) -> f64| median_p95(&v.iter().map(f).collect::<Vec<_>>()).0;
        json!({
            "shim_rss": m(&|p| p.shim.rss), "shim_pss": m(&|p| p.shim.pss),
            "pause_rss": m(&|p| p.pause.rss), "pause_pss": m(&|p| p.pause.pss),
            "containers_rss": m(&|p| p.containers.rss), "containers_pss": m(&|p| p.containers.pss),
            "total_rss": m(&|p| p.total().rss), "total_pss": m(&|p| p.total().pss),
        })
    }
}

fn parent(pid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            after.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// A process and every process below it.
fn tree(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        let children =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        all.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
        i += 1;
    }
    all
}

fn pod_memory(cri: &Cri, pod: &str, containers: &[&String]) -> PodMemory {
    let pause = cri.sandbox_pid(pod);
    let workload: Vec<i32> = containers.iter().flat_map(|id| tree(cri.pid(id))).collect();
    let sum =
        |pids: &mut dyn Iterator<Item = i32>| pids.map(Mem::of).fold(Mem::default(), Mem::add);
    PodMemory {
        // The shim's tree holds the pod's processes too (it reaps them).
        shim: sum(&mut tree(parent(pause))
            .into_iter()
            .filter(|p| *p != pause && !workload.contains(p))),
        pause: Mem::of(pause),
        containers: sum(&mut workload.iter().copied()),
    }
}

/// (handler, image, command) of a density pod's one container.
const DENSITY: [(&str, &str, &[&str]); 2] = [
    ("amphi", WASM_POD, &["/app/idle.wasm", "3600"]),
    ("runc", BUSYBOX, &["sleep", "3600"]),
];

/// Idle pods until `o.pods` run or the machine refuses one.
pub fn density(w: &World, o: &Opts) -> Result<Value> {
    if crate::world::on_path("containerd").is_none()
        || !std::path::Path::new("/usr/lib/cni/loopback").exists()
    {
        return Ok(
            json!({"skipped": "containerd or the CNI loopback plugin is not installed (scripts/deps.sh)"}),
        );
    }
    let mut rows = Vec::new();
    for (handler, image, command) in DENSITY {
        let cri = Cri::start(&w.amphi, "");
        let mut started = Vec::new();
        let mut took = Vec::new();
        let mut refused = None;
        for n in 0..o.pods {
            let t = Instant::now();
            let config = cri.pod_config(&format!("dense{n}"), &[], false);
            let made = cri.run_pod(&config, handler).and_then(|pod| {
                let c = cri.start_container(&pod, &config, container("idle", image, command));
                started.push((pod, c.as_ref().ok().cloned()));
                c
            });
            if let Err(e) = made {
                refused = Some(format!("pod {n}: {}", e.message()));
                break;
            }
            took.push(t.elapsed().as_secs_f64());
        }
        let running: Vec<_> = started
            .iter()
            .filter_map(|(pod, c)| Some((pod, c.as_ref()?)))
            .collect();
        while !running
            .iter()
            .all(|(_, id)| cri.status(id).0.state == ContainerState::ContainerRunning as i32)
        {
            std::thread::yield_now();
        }
        let total = running
            .iter()
            .map(|(pod, id)| pod_memory(&cri, pod, &[id]).total())
            .fold(Mem::default(), Mem::add);
        let n = running.len().max(1) as f64;
        let tail = (took.len() / 10).clamp(1, 100);
        let last: f64 = took.iter().rev().take(tail).sum();
        eprintln!(
            "amphi-bench: density {handler}: {} pods, {:.2} MiB PSS a pod",
            running.len(),
            total.pss / n
        );
        for (pod, _) in &started {
            cri.remove_pod(pod);
        }
        rows.push(
            json!({"handler": handler, "container": command[0], "pods": running.len(),
            "asked": o.pods, "refused": refused, "pss_mib_per_pod": total.pss / n,
            "rss_mib_per_pod": total.rss / n, "last_pods": tail, "last_pods_s": last}),
        );
    }
    Ok(json!({"rows": rows}))
}
