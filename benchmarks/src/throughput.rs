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

/// The stream widths and containers per stream of a throughput run.
pub fn shape(o: &Opts) -> (&'static [usize], usize) {
    if o.smoke {
        (&[1, 2], 2)
    } else {
        (&[1, 4, 16], 12)
    }
}

/// Containers per second when `streams` threads each call `one(stream,
/// i)` for `i` in `0..per_stream`.
pub fn rate(
    streams: usize,
    per_stream: usize,
    what: &str,
    one: impl Fn(usize, usize) -> Result<()> + Sync,
) -> Result<f64> {
    let t = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let one = &one;
        let workers: Vec<_> = (0..streams)
            .map(|k| s.spawn(move || (0..per_stream).try_for_each(|i| one(k, i))))
            .collect();
        for h in workers {
            h.join()
                .expect("stream thread")
                .with_context(|| format!("{what}, {streams} streams"))?;
        }
        Ok(())
    })?;
    Ok((streams * per_stream) as f64 / t.elapsed().as_secs_f64())
}

/// Runs each variant at each width, two interleaved rounds, the better
/// round counting (a neighbour's burst on a shared machine lowers a round,
/// nothing raises it). `one(variant, streams, round, stream, i)` starts
/// and removes one container.
pub fn table(
    o: &Opts,
    variants: &[&str],
    one: impl Fn(usize, usize, usize, usize, usize) -> Result<()> + Sync,
) -> Result<Value> {
    let (widths, per_stream) = shape(o);
    let mut rows = Vec::new();
    for &streams in widths {
        let mut best = vec![0.0_f64; variants.len()];
        for round in 0..2 {
            for (v, name) in variants.iter().enumerate() {
                let r = rate(streams, per_stream, name, |k, i| {
                    one(v, streams, round, k, i)
                })?;
                best[v] = best[v].max(r);
            }
        }
        let per_s: serde_json::Map<String, Value> = variants
            .iter()
            .zip(&best)
            .map(|(name, r)| (name.to_string(), json!(r)))
            .collect();
        rows.push(json!({"streams": streams, "per_s": per_s}));
    }
    Ok(json!({"per_stream": per_stream, "variants": variants, "rows": rows}))
}

pub fn group(w: &World, o: &Opts) -> Result<Value> {
    let widest = shape(o).0.iter().copied().max().unwrap_or(1);
    let bundles = (0..widest)
        .map(|k| w.pod_bundle(&format!("tp{k}"), PodCgroups::Full))
        .collect::<Result<Vec<_>>>()?;
    let runtimes = [("amphi", &w.amphi), ("runc", &w.runc)];
    let names: Vec<&str> = runtimes.iter().map(|(n, _)| *n).collect();
    table(o, &names, |v, streams, round, k, i| {
        let (name, bin) = runtimes[v];
        w.run_time(
            bin,
            &bundles[k],
            &format!("t{name}{streams}-{round}-{k}-{i}"),
            &[],
        )
        .map(drop)
    })
}
