//! Pod start through containerd's CRI, as kubelet starts a pod: from
//! RunPodSandbox to both of its containers Running (a native sidecar and
//! a second native container for runc; for amphi the same, and a pod of a
//! native sidecar and a wasm container), the amphi handler and containerd's
//! runc handler interleaved in one run.

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
            cri.remove_pod(&pod);
            if round >= o.warmup {
                samples[k].push(took);
            }
        }
    }
    let base = samples[1].clone();
    let rows: Vec<Value> = VARIANTS
        .iter()
        .zip(&samples)
        .map(|((name, ..), s)| {
            let (median, p95) = median_p95(s);
            json!({"variant": name, "median_ms": median, "p95_ms": p95,
                   "pairwise_ratio": pair_ratio(s, &base), "samples_ms": s})
        })
        .collect();
    Ok(json!({"variants": rows, "runs": runs}))
}
