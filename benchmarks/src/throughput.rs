//! Throughput: containers started and removed per second (`run` of the
//! pod bundle's /bin/true to exit, delete included) with 1, 4 and 16
//! streams in parallel, amphi and runc taking turns at each width. Each
//! stream has a bundle and cgroup of its own, as independent containers
//! on a node do; what serialises them is the runtime's own locking and the
//! kernel's.

use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::world::{PodCgroups, World};
use crate::Opts;

pub fn group(w: &World, o: &Opts) -> Result<Value> {
    let widths: &[usize] = if o.smoke { &[1, 2] } else { &[1, 4, 16] };
    let per_stream = if o.smoke { 2 } else { 12 };
    let widest = widths.iter().copied().max().unwrap_or(1);
    let bundles = (0..widest)
        .map(|k| w.pod_bundle(&format!("tp{k}"), PodCgroups::Full))
        .collect::<Result<Vec<_>>>()?;
    let runtimes = [("amphi", &w.amphi), ("runc", &w.runc)];
    let mut rows = Vec::new();
    for &streams in widths {
        let mut rate = [0.0; 2];
        // Two rounds each, interleaved; the better one counts (a
        // neighbour's burst on a shared machine lowers a round, nothing
        // raises it).
        for round in 0..2 {
            for (r, (name, bin)) in runtimes.iter().enumerate() {
                let t = Instant::now();
                std::thread::scope(|s| -> Result<()> {
                    let workers: Vec<_> = bundles[..streams]
                        .iter()
                        .enumerate()
                        .map(|(k, bundle)| {
                            s.spawn(move || -> Result<()> {
                                for i in 0..per_stream {
                                    w.run_time(
                                        bin,
                                        bundle,
                                        &format!("t{name}{streams}-{round}-{k}-{i}"),
                                        &[],
                                    )?;
                                }
                                Ok(())
                            })
                        })
                        .collect();
                    for h in workers {
                        h.join()
                            .expect("stream thread")
                            .with_context(|| format!("{name}, {streams} streams"))?;
                    }
                    Ok(())
                })?;
                let per_s = (streams * per_stream) as f64 / t.elapsed().as_secs_f64();
                rate[r] = f64::max(rate[r], per_s);
            }
        }
        rows.push(
            json!({"streams": streams, "amphi_per_s": rate[0], "runc_per_s": rate[1],
                         "amphi_over_runc": rate[0] / rate[1]}),
        );
    }
    Ok(json!({"per_stream": per_stream, "rows": rows}))
}
