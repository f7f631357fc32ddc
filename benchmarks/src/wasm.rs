//! Real WebAssembly programs (the test corpus, `tests/src/corpus.rs`): the
//! first start of each, which compiles, and a cached start, all from one
//! bundle per program and build, as a node starts the containers of one
//! image from one layer; the 68 MB C++
//! one also against wasmtime's own compile of it (the `wasmtime` Python
//! package, which embeds the C API, with its default configuration),
//! compiling and serializing as `wasmtime compile` does.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use amphi_tests::corpus::{self, Program, Unavailable, PROGRAMS};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::world::World;
use crate::{median_p95, ms, Opts};

/// The reference compiler: wasmtime's Python package of the pinned major
/// release (a wheel: a zip holding the C API's shared library).
const WHEEL_URL: &str = "https://files.pythonhosted.org/packages/d5/9d/97c109d4a25c716c4045644398d7e684e1d4fa5ec6c99412b5cba35a9a98/wasmtime-50.0.1-py3-none-manylinux1_x86_64.whl";
const WHEEL_SHA256: &str = "cc14c3a17654e0394e0225b11813532ef0cd7bd1e222a0c5494cdedaabeddac4";

/// Compile and serialize a module; print the seconds it took.
const COMPILE_PY: &str = "
import sys, time, wasmtime
engine = wasmtime.Engine()
data = open(sys.argv[1], 'rb').read()
t = time.perf_counter()
artifact = wasmtime.Module(engine, data).serialize()
print(time.perf_counter() - t, len(artifact))
";

pub fn group(w: &World, o: &Opts) -> Result<Value> {
    let env = amphi_tests::Env::for_runtime(w.amphi.clone());
    let baseline = o.baseline.clone().map(amphi_tests::Env::for_runtime);
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let programs: Vec<&Program> = PROGRAMS
        .iter()
        .filter(|p| !o.smoke || p.name == "boolector")
        .collect();
    for p in programs {
        let fetched = match corpus::fetch(p) {
            Ok(dir) => dir,
            Err(Unavailable::Offline(why)) => {
                skipped.push(format!("{}: registry unreachable: {why}", p.name));
                continue;
            }
            Err(Unavailable::Broken(why)) => bail!("fetch {}: {why}", p.name),
        };
        let module = fetched.join(format!("{}.wasm", p.name));
        let size = std::fs::metadata(&module)?.len();
        // A first start costs seconds to a minute: fewer rounds of those.
        let rounds = if o.smoke || size > 32 << 20 { 1 } else { 3 };
        // This build, then the baseline's (if any), turn about.
        let builds: Vec<&amphi_tests::Env> = std::iter::once(&env).chain(&baseline).collect();
        let mut cold = vec![Vec::new(); builds.len()];
        let mut cached = vec![Vec::new(); builds.len()];
        let bundles: Vec<Staged> = builds
            .iter()
            .map(|env| Staged::new(env, p, &fetched, "plain", false))
            .collect();
        for round in 0..rounds {
            let cache = |b: usize| w.tmp().join(format!("wasm-cache-{}-{round}-{b}", p.name));
            for (b, env) in builds.iter().enumerate() {
                cold[b].push(ms(start(
                    env,
                    p,
                    &bundles[b],
                    &cache(b),
                    &format!("c{round}"),
                )?));
            }
            for again in 0..rounds.max(3) {
                for (b, env) in builds.iter().enumerate() {
                    let name = format!("h{round}-{again}");
                    cached[b].push(ms(start(env, p, &bundles[b], &cache(b), &name)?));
                }
            }
            for b in 0..builds.len() {
                let _ = std::fs::remove_dir_all(cache(b));
            }
        }
        let mut row = json!({
            "program": p.name, "toolchain": p.toolchain, "origin": p.origin_text(),
            "module_bytes": size, "first_start_ms": median_p95(&cold[0]).0,
            "cached_start_ms": median_p95(&cached[0]).0,
        });
        if baseline.is_some() {
            row["baseline_first_start_ms"] = json!(median_p95(&cold[1]).0);
            row["baseline_cached_start_ms"] = json!(median_p95(&cached[1]).0);
        }
        if p.name == "python-function" {
            // Pre-initialized: the first start runs the initialization and
            // compiles the snapshot; later ones start from it.
            let (mut first, mut again) = (Vec::new(), Vec::new());
            let bundle = Staged::new(&env, p, &fetched, "preinit", true);
            for round in 0..rounds {
                let cache = w.tmp().join(format!("wasm-cache-{}-pre-{round}", p.name));
                first.push(ms(start(&env, p, &bundle, &cache, &format!("pc{round}"))?));
                for i in 0..3 {
                    let name = format!("ph{round}-{i}");
                    again.push(ms(start(&env, p, &bundle, &cache, &name)?));
                }
                let _ = std::fs::remove_dir_all(cache);
            }
            row["preinit_first_start_ms"] = json!(median_p95(&first).0);
            row["preinit_cached_start_ms"] = json!(median_p95(&again).0);
            row["preinit_over_plain_cached_start"] =
                json!(median_p95(&again).0 / median_p95(&cached[0]).0);
        }
        if size > 32 << 20 && !o.smoke {
            let reference = reference_compile(&module)?;
            row["wasmtime_compile_ms"] = json!(ms(reference));
            row["first_start_over_wasmtime_compile"] =
                json!(median_p95(&cold[0]).0 / ms(reference));
        }
        rows.push(row);
    }
    Ok(json!({"programs": rows, "skipped": skipped,
              "baseline": o.baseline.as_ref().map(|b| crate::world::version_of(b))}))
}

/// A program's bundle, written once and removed when dropped.
struct Staged(amphi_tests::Bundle);

impl Staged {
    /// `p`'s bundle (pre-initialized: with `io.github.amphi.preinit=true`).
    fn new(
        env: &amphi_tests::Env,
        p: &Program,
        fetched: &Path,
        name: &str,
        preinit: bool,
    ) -> Staged {
        let mut b = corpus::bundle(env, p, fetched, &format!("{}-{name}", p.name));
        if preinit {
            b.spec["annotations"]["io.github.amphi.preinit"] = "true".into();
        }
        b.write();
        Staged(b)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(Path::new(self.0.path()));
    }
}

/// `amphi run` of `bundle`, `p`'s, once as container `name`, timed; its
/// exit status checked.
fn start(
    env: &amphi_tests::Env,
    p: &Program,
    bundle: &Staged,
    cache: &Path,
    name: &str,
) -> Result<Duration> {
    let id = env.id(&format!("{}-{name}", p.name));
    let cache = cache.to_str().context("cache path")?;
    let t = Instant::now();
    let r = env.amphi(&[
        "--wasm-cache",
        cache,
        "run",
        "--bundle",
        bundle.0.path(),
        &id,
    ]);
    let took = t.elapsed();
    if r.code != p.exit {
        bail!("{} {name}: exit {}: {}", p.name, r.code, r.stderr);
    }
    Ok(took)
}

fn reference_compile(module: &Path) -> Result<Duration> {
    let base = corpus::corpus_dir();
    let wheel = base.join("downloads/wasmtime-50.0.1.whl");
    corpus::download(WHEEL_URL, WHEEL_SHA256, &wheel).map_err(|e| match e {
        Unavailable::Offline(why) | Unavailable::Broken(why) => anyhow::anyhow!(why),
    })?;
    let unpacked = base.join("wasmtime-py");
    if !unpacked.join("wasmtime").is_dir() {
        let st = Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(&unpacked)
            .status()?;
        if !st.success() {
            bail!("unpacking {}", wheel.display());
        }
    }
    let out = Command::new("python3")
        .args(["-c", COMPILE_PY])
        .arg(module)
        .env("PYTHONPATH", &unpacked)
        .output()?;
    if !out.status.success() {
        bail!(
            "wasmtime (Python) compile: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let seconds: f64 = text
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("wasmtime (Python) printed {text:?}"))?;
    Ok(Duration::from_secs_f64(seconds))
}
