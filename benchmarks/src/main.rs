//! amphi's benchmark harness: what a user choosing between native and wasm
//! (and between amphi and runc) wants to know, measured side by side.
//!
//! ```sh
//! cargo run --release -p amphi-bench -- all          # full run, updates docs/benchmarks.md and benchmarks/results
//! cargo run --release -p amphi-bench -- start        # one group (to target/amphi-bench/GROUP): start | throughput | memory | compute | shim | pods | serve | wasm
//! cargo run -p amphi-bench -- all --smoke --out DIR  # tiny run (the test suite's)
//! cargo run -p amphi-bench -- report [--out DIR]     # tables and plots again from DIR/results.json
//! ```
//!
//! Method: the machine is shared and noisy, so compared commands are
//! interleaved (A B A B ...) after a warm-up, each is run many times, and
//! the report gives medians, p95s and ratios taken pair by pair.

mod checkpoint;
mod floor;
mod plot;
mod pods;
mod report;
mod serve;
mod throughput;
mod wasm;
mod world;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use world::{Kind, World};

pub struct Opts {
    pub runs: usize,
    pub warmup: usize,
    pub compute_runs: usize,
    pub mib: usize,
    pub density: Vec<usize>,
    pub idle: usize,
    /// Idle pods the density group starts (opt-in at full size).
    pub pods: usize,
    pub out: PathBuf,
    pub smoke: bool,
    /// An amphi binary of another build (the release before an upgrade,
    /// say) that the wasm and serve groups measure beside this one,
    /// interleaved, so each pair comes from one run.
    pub baseline: Option<PathBuf>,
}

impl Opts {
    fn parse() -> Result<(String, Opts)> {
        let mut args = std::env::args().skip(1);
        let group = args.next().unwrap_or_else(|| "all".into());
        let mut o = Opts {
            runs: 30,
            warmup: 3,
            compute_runs: 9,
            mib: 64,
            density: vec![10, 100],
            idle: 5,
            // A short pass within `all`; `density` alone goes to 1,000.
            pods: if group == "density" { 1000 } else { 20 },
            out: report::default_out(),
            smoke: false,
            baseline: None,
        };
        while let Some(a) = args.next() {
            let mut value = || args.next().with_context(|| format!("{a} needs a value"));
            match a.as_str() {
                "--runs" => o.runs = value()?.parse()?,
                "--compute-runs" => o.compute_runs = value()?.parse()?,
                "--mib" => o.mib = value()?.parse()?,
                "--density" => {
                    o.density = value()?
                        .split(',')
                        .map(str::parse)
                        .collect::<std::result::Result<_, _>>()?
                }
                "--pods" => o.pods = value()?.parse()?,
                "--out" => o.out = value()?.into(),
                "--baseline" => o.baseline = Some(value()?.into()),
                "--smoke" => {
                    o.smoke = true;
                    o.runs = 3;
                    o.warmup = 1;
                    o.compute_runs = 1;
                    o.mib = 1;
                    o.density = vec![2];
                    o.idle = 1;
                    o.pods = 2;
                }
                other => bail!("unknown argument {other:?} (see benchmarks/src/main.rs)"),
            }
        }
        if ![
            "all",
            "start",
            "throughput",
            "memory",
            "compute",
            "shim",
            "pods",
            "density",
            "serve",
            "wasm",
            "checkpoint",
            "report",
        ]
        .contains(&group.as_str())
        {
            bail!("unknown group {group:?}: use all, start, throughput, memory, compute, shim, pods, density, serve, wasm, checkpoint or report");
        }
        // The committed results and docs/benchmarks.md's table are a full run's:
        // one group alone writes elsewhere unless told where.
        if !["all", "report"].contains(&group.as_str()) && o.out == report::default_out() {
            o.out = world::repo_root().join("target/amphi-bench").join(&group);
        }
        Ok((group, o))
    }
}

/// Median and 95th percentile (nearest rank) of a sample.
pub fn median_p95(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let rank = |q: f64| s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    let median = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (median, rank(0.95))
}

/// Median of the pairwise ratios a[i]/b[i] (runs were interleaved).
pub fn pair_ratio(a: &[f64], b: &[f64]) -> f64 {
    let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    median_p95(&r).0
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs the trivial workload once (round number given) and times it.
type StartOnce = Box<dyn FnMut(&World, usize) -> Result<Duration>>;

/// One start variant: a name, and a way to run the trivial workload once.
struct Variant {
    name: String,
    note: String,
    run: StartOnce,
}

fn start_group(w: &World, o: &Opts) -> Result<Value> {
    // The pod bundle first (what users run), the lean one second (where
    // the fixed costs show).
    let mut variants: Vec<Variant> = vec![
        Variant {
            name: "amphi, pod bundle".into(),
            note: "amphi run /bin/true, the bundle a pod container gets (runc spec + containerd's CRI defaults, seccomp included), v1 controllers of this host".into(),
            run: Box::new(|w, i| w.run_time(&w.amphi, &w.pod_true, &format!("p{i}"), &[])),
        },
        Variant {
            name: "runc, pod bundle".into(),
            note: format!("{} run, same bundle", w.runc_version),
            run: Box::new(|w, i| w.run_time(&w.runc, &w.pod_true, &format!("q{i}"), &[])),
        },
        Variant {
            name: "amphi, pod bundle, cgroup2".into(),
            note: "amphi run in a private mount namespace with cgroup2 at /sys/fs/cgroup, made once and joined by each run (a pure v2 host's view; no controllers enabled there, so no CPU weight)".into(),
            run: Box::new(|w, i| w.amphi_v2_time(&w.pod_true_v2, &format!("v{i}"))),
        },
    ];
    if let Some(crun) = w.crun.clone() {
        variants.push(Variant {
            name: "crun, pod bundle, cgroup2 (lower bound)".into(),
            note: "crun 1.8 in the same view with --cgroup-manager=disabled and no device filter: no cgroup work".into(),
            run: Box::new(move |w, i| w.crun_time(&crun, &w.pod_true_crun, &format!("k{i}"))),
        });
    }
    variants.extend([
        Variant {
            name: "amphi native".into(),
            note: "amphi run, busybox /bin/true, the lean bundle (proc, two tmpfs, three masked paths, one capability, no seccomp)".into(),
            run: Box::new(|w, i| w.run_time(&w.amphi, &w.native_true, &format!("n{i}"), &[])),
        },
        Variant {
            name: "runc native".into(),
            note: format!("{} run, the lean bundle", w.runc_version),
            run: Box::new(|w, i| w.run_time(&w.runc, &w.native_true, &format!("r{i}"), &[])),
        },
        Variant {
            name: "amphi wasm (cached)".into(),
            note: "amphi run, hello.wasm, compiled module in the cache".into(),
            run: Box::new(|w, i| w.run_time(&w.amphi, &w.wasm_hello, &format!("w{i}"), &[])),
        },
        Variant {
            name: "amphi-wasm wasm (cached)".into(),
            note: "amphi-wasm run, hello.wasm: the binary amphi hands a wasm bundle to, called directly (no hand-off)".into(),
            run: Box::new(|w, i| {
                w.run_time(&w.amphi.with_file_name("amphi-wasm"), &w.wasm_hello, &format!("d{i}"), &[])
            }),
        },
        Variant {
            name: "amphi wasm preinit (cached)".into(),
            note: "amphi run, preinit.wasm (a table of 200,000 primes built at start) with io.github.amphi.preinit=true: the table comes with the cached snapshot".into(),
            run: Box::new(|w, i| w.run_time(&w.amphi, &w.wasm_preinit, &format!("z{i}"), &[])),
        },
        Variant {
            name: "amphi wasm own init (cached)".into(),
            note: "amphi run, the same preinit.wasm without the annotation: it builds its table at every start".into(),
            run: Box::new(|w, i| w.run_time(&w.amphi, &w.wasm_own_init, &format!("o{i}"), &[])),
        },
        Variant {
            name: "amphi wasm (first start)".into(),
            note: "amphi run, hello.wasm, empty module cache (compiles)".into(),
            run: Box::new(|w, i| {
                let cache = w.tmp().join(format!("cache-{i}"));
                let c = cache.to_str().unwrap().to_owned();
                let t = w.run_time(
                    &w.amphi,
                    &w.wasm_hello,
                    &format!("f{i}"),
                    &["--wasm-cache", &c],
                );
                let _ = std::fs::remove_dir_all(&cache);
                t
            }),
        },
    ]);
    if let Some(crun) = w.crun.clone() {
        variants.push(Variant {
            name: "crun native (lower bound)".into(),
            note: "crun 1.8 in the cgroup2 view, --cgroup-manager=disabled, the lean bundle".into(),
            run: Box::new(move |w, i| w.crun_time(&crun, &w.native_true, &format!("c{i}"))),
        });
    }
    if let Some(youki) = w.youki.clone() {
        variants.push(Variant {
            name: "youki native".into(),
            note: "youki run, the lean bundle".into(),
            run: Box::new(move |w, i| w.run_time(&youki, &w.native_true, &format!("y{i}"), &[])),
        });
    }
    variants.push(Variant {
        name: "kernel floor".into(),
        note: "clone into the namespaces, join the cgroups (the child moves itself on v1), pivot_root, exec /bin/true, in-process"
            .into(),
        run: Box::new(|w, _| floor::once(&w.rootfs, &w.floor_cgroup, floor::Layout::Host)),
    });
    variants.push(Variant {
        name: "kernel floor, cgroup2".into(),
        note: "the same in the unified hierarchy, the one the cgroup2 view shows (born in its cgroup with CLONE_INTO_CGROUP)"
            .into(),
        run: Box::new(|w, _| floor::once(&w.rootfs, &w.floor_cgroup, floor::Layout::Unified)),
    });

    // The baseline build beside this one, interleaved: the before and
    // after of a change from one run.
    if let Some(baseline) = o.baseline.clone() {
        let version = world::version_of(&baseline);
        for (name, what) in [
            ("amphi, pod bundle", "pod"),
            ("amphi wasm (cached)", "wasm"),
        ] {
            let bin = baseline.clone();
            variants.push(Variant {
                name: format!("{name} [baseline]"),
                note: format!("the same, run by the baseline build ({version})"),
                run: Box::new(move |w, i| {
                    let bundle = if what == "pod" {
                        &w.pod_true
                    } else {
                        &w.wasm_hello
                    };
                    w.run_time(&bin, bundle, &format!("b{what}{i}"), &[])
                }),
            });
        }
    }

    let total = o.warmup + o.runs;
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..total {
        for (v, s) in variants.iter_mut().zip(samples.iter_mut()) {
            let d = (v.run)(w, round).with_context(|| v.name.clone())?;
            if round >= o.warmup {
                s.push(ms(d));
            }
        }
    }
    let base = samples[0].clone();
    let rows: Vec<Value> = variants
        .iter()
        .zip(&samples)
        .map(|(v, s)| {
            let (median, p95) = median_p95(s);
            json!({"variant": v.name, "note": v.note, "median_ms": median, "p95_ms": p95,
                   "pairwise_ratio": pair_ratio(s, &base), "samples_ms": s})
        })
        .collect();
    let targets = start_targets(&variants, &samples);
    let mut skipped = Vec::new();
    if w.crun.is_none() {
        skipped.push("crun: not installed (apt-get install crun)".to_string());
    }
    if w.youki.is_none() {
        skipped.push("youki: not installed (cargo install youki --features \"v1 v2 seccomp\"; about 11 minutes here)".to_string());
    }

    // The split, amphi against runc (and the baseline build), interleaved.
    let mut runtimes = vec![
        ("amphi".to_owned(), w.amphi.clone()),
        ("runc".into(), w.runc.clone()),
    ];
    runtimes.extend(o.baseline.clone().map(|b| ("amphi [baseline]".into(), b)));
    let mut split: Vec<(String, Vec<[f64; 4]>)> = runtimes
        .iter()
        .map(|(name, _)| (name.clone(), Vec::new()))
        .collect();
    for round in 0..total {
        for (i, ((_, s), (_, bin))) in split.iter_mut().zip(&runtimes).enumerate() {
            let phases = w.split_time(bin, &w.pod_true, &format!("s{i}-{round}"))?;
            if round >= o.warmup {
                s.push(phases.map(ms));
            }
        }
    }
    let split_rows: Vec<Value> = split
        .iter()
        .map(|(name, s)| {
            let phase = |i: usize| median_p95(&s.iter().map(|p| p[i]).collect::<Vec<_>>()).0;
            json!({"runtime": name, "create_ms": phase(0), "start_ms": phase(1), "wait_ms": phase(2), "delete_ms": phase(3)})
        })
        .collect();
    let phases = phase_table(w, &runtimes, o)?;
    Ok(
        json!({"variants": rows, "skipped": skipped, "split": split_rows,
              "phases": phases, "targets": targets}),
    )
}

/// amphi's own `--debug` steps of a pod bundle's `run`, this build and the
/// baseline interleaved: the median of each step, in this build's order.
fn phase_table(w: &world::World, runtimes: &[(String, PathBuf)], o: &Opts) -> Result<Value> {
    let amphis: Vec<&(String, PathBuf)> = runtimes
        .iter()
        .filter(|(name, _)| name.starts_with("amphi"))
        .collect();
    let mut samples: Vec<Vec<Vec<(String, f64)>>> = vec![Vec::new(); amphis.len()];
    for round in 0..o.warmup + o.runs {
        for (i, (_, bin)) in amphis.iter().enumerate() {
            let steps = w.debug_phases(bin, &w.pod_true, &format!("p{i}-{round}"))?;
            if round >= o.warmup {
                samples[i].push(steps);
            }
        }
    }
    let mut order: Vec<String> = Vec::new();
    for s in samples.iter().flatten().flatten() {
        if !order.contains(&s.0) {
            order.push(s.0.clone());
        }
    }
    let rows: Vec<Value> = order
        .iter()
        .map(|step| {
            let mut row = json!({"step": step});
            for ((name, _), runs) in amphis.iter().zip(&samples) {
                let took: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| r.iter().find(|(s, _)| s == step).map(|(_, t)| *t))
                    .collect();
                row[name.as_str()] = if took.is_empty() {
                    Value::Null
                } else {
                    json!(median_p95(&took).0)
                };
            }
            row
        })
        .collect();
    Ok(json!(rows))
}

/// The start-up ratios the project holds itself to (issue #31's, tighter
/// than #18's), each from one run's interleaved samples.
fn start_targets(variants: &[Variant], samples: &[Vec<f64>]) -> Vec<Value> {
    let of = |name: &str| {
        variants
            .iter()
            .position(|v| v.name == name)
            .map(|i| &samples[i])
    };
    let mut out = Vec::new();
    let mut ratio = |what: &str, a: &str, b: &str, target: f64| {
        if let (Some(a), Some(b)) = (of(a), of(b)) {
            out.push(
                json!({"what": what, "value": pair_ratio(a, b), "target": target, "unit": "x"}),
            );
        }
    };
    ratio(
        "pod bundle, v1 controllers: amphi / runc",
        "amphi, pod bundle",
        "runc, pod bundle",
        0.15,
    );
    ratio(
        "pod bundle, cgroup2: amphi / crun (no cgroup work)",
        "amphi, pod bundle, cgroup2",
        "crun, pod bundle, cgroup2 (lower bound)",
        0.35,
    );
    ratio(
        "lean bundle: amphi / runc",
        "amphi native",
        "runc native",
        0.3,
    );
    ratio(
        "wasm: a pre-initialized start / hello's",
        "amphi wasm preinit (cached)",
        "amphi wasm (cached)",
        1.2,
    );
    ratio(
        "wasm: a cached hello module's start / native /bin/true's",
        "amphi wasm (cached)",
        "amphi native",
        1.1,
    );
    for name in ["amphi, pod bundle", "amphi, pod bundle, cgroup2"] {
        if let Some(s) = of(name) {
            let (median, p95) = median_p95(s);
            out.push(json!({"what": format!("{name}: p95 / median"), "value": p95 / median, "target": 1.3, "unit": "x"}));
        }
    }
    // Each floor is compared with the start on its own layout.
    for (what, amphi, floor) in [
        (
            "pod bundle, v1 controllers: amphi over the kernel floor",
            "amphi, pod bundle",
            "kernel floor",
        ),
        (
            "pod bundle, cgroup2: amphi over the kernel floor",
            "amphi, pod bundle, cgroup2",
            "kernel floor, cgroup2",
        ),
    ] {
        if let (Some(a), Some(floor)) = (of(amphi), of(floor)) {
            let over = median_p95(a).0 - median_p95(floor).0;
            out.push(json!({"what": what, "value": over, "target": 3.0, "unit": "ms"}));
        }
    }
    out
}

fn memory_group(w: &World, o: &Opts) -> Result<Value> {
    // Peak RSS of the runtime process during create.
    let mut peak: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..(o.warmup + o.runs) {
        for (i, bin) in [&w.amphi, &w.runc].into_iter().enumerate() {
            let kib = w.create_peak_rss(bin, &w.native_sleep, &format!("p{i}-{round}"))?;
            if round >= o.warmup {
                peak[i].push(kib as f64 / 1024.0);
            }
        }
    }
    let peak_rows = json!([
        {"runtime": "amphi", "median_mib": median_p95(&peak[0]).0, "p95_mib": median_p95(&peak[0]).1},
        {"runtime": "runc", "median_mib": median_p95(&peak[1]).0, "p95_mib": median_p95(&peak[1]).1},
    ]);

    // An idle container's footprint, native sleep vs wasm sleep.
    let mut idle = Vec::new();
    for kind in [Kind::Native, Kind::Wasm] {
        let (cg, pss): (Vec<f64>, Vec<f64>) = (0..o.idle)
            .map(|i| w.idle_footprint(kind, &format!("i{}{i}", kind.tag())))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        idle.push(json!({"kind": kind.name(), "cgroup_mib": median_p95(&cg).0, "pss_mib": median_p95(&pss).0}));
    }

    // Density: N idle containers of each kind.
    let mut density = Vec::new();
    for &n in &o.density {
        for kind in [Kind::Native, Kind::Wasm] {
            let d = w.density(kind, n)?;
            density.push(json!({"kind": kind.name(), "n": n, "start_all_s": d.0, "cgroup_total_mib": d.1, "pss_total_mib": d.2}));
        }
    }
    Ok(json!({"create_peak_rss": peak_rows, "idle": idle, "density": density}))
}

fn compute_group(w: &World, o: &Opts) -> Result<Value> {
    let mut per: std::collections::BTreeMap<String, [Vec<f64>; 2]> = Default::default();
    let mut wall: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..(o.compute_runs + 1) {
        for (k, kind) in [Kind::Native, Kind::Wasm].into_iter().enumerate() {
            let t = Instant::now();
            let lines = w.compute(kind, o.mib, &format!("c{k}{round}"))?;
            let elapsed = ms(t.elapsed());
            if round == 0 {
                continue;
            }
            wall[k].push(elapsed);
            for (name, value) in lines {
                per.entry(name).or_default()[k].push(value);
            }
        }
    }
    let rows: Vec<Value> = per
        .iter()
        .map(|(name, [native, wasm])| {
            json!({"workload": name, "native_ms": median_p95(native).0, "wasm_ms": median_p95(wasm).0,
                   "wasm_over_native": pair_ratio(wasm, native)})
        })
        .collect();
    Ok(json!({"mib": o.mib, "workloads": rows,
              "container_wall_ms": {"native": median_p95(&wall[0]).0, "wasm": median_p95(&wall[1]).0}}))
}

/// `ctr run --rm` through containerd: amphi's shim (native and wasm)
/// against containerd's runc shim, and the shim's resident memory.
fn shim_group(w: &World, o: &Opts) -> Result<Value> {
    use amphi_tests::containerd::{image, Containerd, BUSYBOX, RUNTIME, WASM};
    let shim = w.amphi.with_file_name("containerd-shim-amphi-v2");
    if !shim.exists() || world::on_path("containerd").is_none() {
        return Ok(
            json!({"skipped": "containerd or the shim is not installed (scripts/deps.sh; cargo build --release -p containerd-shim-amphi-v2)"}),
        );
    }
    let c = Containerd::start(&w.amphi);
    for kind in ["busybox", "wasm"] {
        let tar = image(kind, c.tmp.path());
        c.ok(&["images", "import", tar.to_str().unwrap()]);
    }
    let variants: [(&str, &str, &str, &[&str]); 3] = [
        ("amphi shim, native", RUNTIME, BUSYBOX, &["true"]),
        (
            "runc shim, native",
            "io.containerd.runc.v2",
            BUSYBOX,
            &["true"],
        ),
        ("amphi shim, wasm", RUNTIME, WASM, &[]),
    ];
    // `ctr run --rm` of variant `v` as task `id`, in a cgroup of its own.
    let run_task = |v: usize, id: &str| -> Result<()> {
        let (_, runtime, image, args) = variants[v];
        let cg = c.cgroup(id);
        let mut a = vec![
            "run",
            "--rm",
            "--runtime",
            runtime,
            "--cgroup",
            &cg,
            image,
            id,
        ];
        a.extend(args.iter());
        let out = c.ctr(&a);
        anyhow::ensure!(out.code == 0, "ctr {a:?}: {}", out.stderr.trim());
        Ok(())
    };
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..(o.warmup + o.runs) {
        for (k, sample) in samples.iter_mut().enumerate() {
            let t = Instant::now();
            run_task(k, &format!("b{k}-{round}"))?;
            if round >= o.warmup {
                sample.push(ms(t.elapsed()));
            }
        }
    }
    // The shim's footprint while it serves one task.
    let o2 = c.run(&["-d"], BUSYBOX, "rss", &["sleep", "600"]);
    let rss_mib = c
        .shims()
        .first()
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0);
    if o2.code == 0 {
        c.remove("rss");
    }
    // The same three in parallel streams: what serialises tasks here is
    // containerd, the shims and the runtimes together.
    let names: Vec<&str> = variants.iter().map(|(name, ..)| *name).collect();
    let parallel = throughput::table(o, &names, |v, streams, round, k, i| {
        run_task(v, &format!("p{v}-{streams}-{round}-{k}-{i}"))
    })?;
    let base = samples[0].clone();
    let rows: Vec<Value> = variants
        .iter()
        .zip(&samples)
        .map(|((name, ..), s)| {
            let (median, p95) = median_p95(s);
            json!({"variant": name, "median_ms": median, "p95_ms": p95,
                   "pairwise_ratio": pair_ratio(s, &base), "samples_ms": s})
        })
        .collect();
    Ok(json!({"variants": rows, "shim_rss_mib": rss_mib, "throughput": parallel}))
}

fn main() -> Result<()> {
    let (group, o) = Opts::parse()?;
    if group == "report" {
        // Tables, CSV and plots again from a run's results.json, measuring
        // nothing.
        let path = o.out.join("results.json");
        let results: Value = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("read {}", path.display()))?,
        )?;
        return report::write(&results, &o);
    }
    // Containers whose runtime process exits are re-parented to us; we reap them.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let w = World::new(o.smoke)?;
    let machine = w.machine();
    eprintln!("amphi-bench: {}", machine["summary"].as_str().unwrap_or(""));
    let mut results = json!({"machine": machine, "runs": o.runs, "smoke": o.smoke});
    if group == "all" || group == "start" {
        eprintln!(
            "amphi-bench: start latency ({} runs each, interleaved)",
            o.runs
        );
        results["start"] = start_group(&w, &o)?;
    }
    if group == "all" || group == "throughput" {
        eprintln!("amphi-bench: containers per second, 1 to 16 streams");
        results["throughput"] = throughput::group(&w, &o)?;
    }
    if group == "all" || group == "memory" {
        eprintln!("amphi-bench: memory");
        results["memory"] = memory_group(&w, &o)?;
    }
    if group == "all" || group == "shim" {
        eprintln!("amphi-bench: ctr run --rm through containerd");
        results["shim"] = shim_group(&w, &o)?;
    }
    if group == "all" || group == "pods" {
        eprintln!("amphi-bench: pod start through containerd's CRI");
        results["pods"] = pods::group(&w, &o)?;
    }
    if group == "all" || group == "density" {
        eprintln!(
            "amphi-bench: idle pods through containerd's CRI, up to {}",
            o.pods
        );
        results["density"] = pods::density(&w, &o)?;
    }
    if group == "all" || group == "compute" {
        eprintln!("amphi-bench: compute and file I/O ({} MiB)", o.mib);
        results["compute"] = compute_group(&w, &o)?;
    }
    if group == "all" || group == "serve" {
        eprintln!("amphi-bench: amphi serve under load on loopback");
        results["serve"] = serve::group(&w, &o)?;
    }
    if group == "all" || group == "wasm" {
        eprintln!("amphi-bench: real wasm programs, first and cached starts");
        results["wasm"] = wasm::group(&w, &o)?;
    }
    if group == "all" || group == "checkpoint" {
        eprintln!("amphi-bench: checkpoint and restore of wasm containers");
        results["checkpoint"] = checkpoint::group(&w, &o)?;
    }
    drop(w);
    report::write(&results, &o)?;
    Ok(())
}
