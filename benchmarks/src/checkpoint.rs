//! Checkpoint and restore of wasm containers: what the checkpointable form
//! costs a compute-bound guest, how long a checkpoint plus a restore of a
//! guest with a 64 MiB heap takes against a cached start of that guest,
//! and how large its image is against the memory it touched.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::world::World;
use crate::{median_p95, ms, pair_ratio, Opts};

const ANNOTATION: &str = "io.github.amphi.checkpoint";

fn annotate(bundle: &Path) -> Result<()> {
    let path = bundle.join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    spec["annotations"] = json!({ ANNOTATION: "true" });
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(())
}

pub fn group(w: &World, o: &Opts) -> Result<Value> {
    let overhead = overhead(w, o)?;
    let heap = if o.smoke { 4 } else { 64 };
    let restore = restore_cost(w, o, heap)?;
    Ok(json!({"instrumentation": overhead, "restore": restore}))
}

/// bench.wasm plainly and in checkpointable form, rounds interleaved.
fn overhead(w: &World, o: &Opts) -> Result<Value> {
    let mib = o.mib.to_string();
    let plain = w.bundle("ck-plain", &["/app/bench.wasm", &mib, "/tmp"])?;
    let instrumented = w.bundle("ck-instrumented", &["/app/bench.wasm", &mib, "/tmp"])?;
    annotate(&instrumented)?;
    let mut per: std::collections::BTreeMap<String, [Vec<f64>; 2]> = Default::default();
    // Round 0 fills the compile cache (and instruments), uncounted.
    for round in 0..(o.compute_runs + 1) {
        for (k, bundle) in [&plain, &instrumented].into_iter().enumerate() {
            let lines = w.compute_in(bundle, &format!("ck{k}-{round}"))?;
            if round == 0 {
                continue;
            }
            for (name, value) in lines {
                per.entry(name).or_default()[k].push(value);
            }
        }
    }
    Ok(json!(per
        .iter()
        .map(|(name, [plain, instrumented])| json!({
            "workload": name, "plain_ms": median_p95(plain).0,
            "checkpointable_ms": median_p95(instrumented).0,
            "ratio": pair_ratio(instrumented, plain),
        }))
        .collect::<Vec<_>>()))
}

/// Starts a container that stays (`run -d`, `restore -d`): its stdout to
/// `out`, stderr to a file too (a pipe would stay open in the container).
fn detached(w: &World, args: &[&str], out: &Path) -> Result<()> {
    let err = out.with_extension("err");
    let status = w
        .cmd(&w.amphi, &[], args)
        .stdout(std::fs::File::create(out)?)
        .stderr(std::fs::File::create(&err)?)
        .status()?;
    if !status.success() {
        bail!(
            "amphi {args:?}: {status}: {}",
            std::fs::read_to_string(&err)?.trim()
        );
    }
    Ok(())
}

/// Lines the counter printed so far.
fn printed(out: &Path) -> usize {
    std::fs::read_to_string(out).map_or(0, |t| t.lines().count())
}

fn wait_printed(out: &Path, at_least: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while printed(out) < at_least {
        if Instant::now() > deadline {
            bail!("{}: no line {at_least} in 120 s", out.display());
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    Ok(())
}

/// The resident part of the guest's linear memory: wasmtime reserves it
/// as one mapping of several GiB and makes its accessible start
/// read-write, so it is a read-write mapping followed directly by the
/// rest of the reservation (inaccessible) for 4 GiB or more; its Rss is
/// the pages the guest touched.
fn touched_memory(pid: i64) -> Result<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    // (start, end, perms, rss bytes) per mapping.
    let mut maps: Vec<(u64, u64, String, u64)> = Vec::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
                continue;
            };
            maps.push((a, b, words.next().unwrap_or("").to_owned(), 0));
        } else if first == "Rss:" {
            if let (Some(m), Some(kb)) = (maps.last_mut(), words.next()) {
                m.3 = kb.parse::<u64>()? * 1024;
            }
        }
    }
    Ok(maps
        .windows(2)
        .filter(|w| {
            w[0].1 == w[1].0
                && w[0].2.starts_with("rw")
                && w[1].2.starts_with("---")
                && w[1].1 - w[0].0 >= 4 << 30
        })
        .map(|w| w[0].3)
        .sum())
}

/// Per round: a cached start of the counter (to its first count, so the
/// heap is filled), a checkpoint of it, and a restore (to its next count).
fn restore_cost(w: &World, o: &Opts, heap_mib: usize) -> Result<Value> {
    let heap = heap_mib.to_string();
    let bundle = w.bundle("ck-counter", &["/app/counter.wasm", "-", "2", &heap])?;
    annotate(&bundle)?;
    let bundle_arg = bundle.to_str().context("path")?;
    let rounds = if o.smoke { 1 } else { 5 };
    let (mut starts, mut checkpoints, mut restores) = (Vec::new(), Vec::new(), Vec::new());
    let (mut image_bytes, mut touched) = (0u64, 0u64);
    // Round 0 fills the compile cache, uncounted.
    for round in 0..=rounds {
        let (id, copy) = (w.id(&format!("ck-{round}")), w.id(&format!("ck-{round}-r")));
        let out = w.tmp().join(format!("ck-{round}.out"));
        let image = w.tmp().join(format!("ck-{round}.img"));
        let t = Instant::now();
        detached(w, &["run", "-d", "--bundle", bundle_arg, &id], &out)?;
        // "counting with N MiB", then "1 ok".
        wait_printed(&out, 2)?;
        let start = t.elapsed();
        let state: Value = serde_json::from_slice(
            &w.cmd(&w.amphi, &[], &["state", &id])
                .stdout(std::process::Stdio::piped())
                .output()?
                .stdout,
        )?;
        let pid = state["pid"].as_i64().context("pid")?;
        let memory = touched_memory(pid)?;
        let t = Instant::now();
        let c = w.cmd(
            &w.amphi,
            &[],
            &[
                "checkpoint",
                "--image-path",
                image.to_str().context("path")?,
                &id,
            ],
        );
        w.check(c, "checkpoint")?;
        let checkpoint = t.elapsed();
        let size = std::fs::metadata(image.join("memory.img"))?.len()
            + std::fs::metadata(image.join("amphi-wasm.json"))?.len();
        let out2 = w.tmp().join(format!("ck-{round}-r.out"));
        let t = Instant::now();
        let restore_args = [
            "restore",
            "-d",
            "--image-path",
            image.to_str().context("path")?,
            "--bundle",
            bundle_arg,
            &copy,
        ];
        detached(w, &restore_args, &out2)?;
        wait_printed(&out2, 1)?;
        let restore = t.elapsed();
        w.check(
            w.cmd(&w.amphi, &[], &["delete", "--force", &copy]),
            "delete",
        )?;
        let _ = std::fs::remove_dir_all(&image);
        if round == 0 {
            continue;
        }
        starts.push(ms(start));
        checkpoints.push(ms(checkpoint));
        restores.push(ms(restore));
        (image_bytes, touched) = (size, memory);
    }
    let both: Vec<f64> = checkpoints
        .iter()
        .zip(&restores)
        .map(|(c, r)| c + r)
        .collect();
    Ok(json!({
        "heap_mib": heap_mib,
        "cached_start_ms": median_p95(&starts).0,
        "checkpoint_ms": median_p95(&checkpoints).0,
        "restore_ms": median_p95(&restores).0,
        "checkpoint_plus_restore_over_cached_start": pair_ratio(&both, &starts),
        "image_bytes": image_bytes,
        "touched_memory_bytes": touched,
        "image_over_touched": image_bytes as f64 / touched.max(1) as f64,
    }))
}
