//! Results: JSON and CSV under the output directory, SVG plots, and the
//! table in docs/benchmarks.md (rewritten between its bench markers by a
//! full run).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::plot::{self, Bar, Plot};
use crate::Opts;

const BEGIN: &str = "<!-- bench:begin (written by amphi-bench) -->";
const END: &str = "<!-- bench:end -->";

pub fn default_out() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("results")
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

pub fn write(r: &Value, o: &Opts) -> Result<()> {
    std::fs::create_dir_all(&o.out).with_context(|| format!("mkdir {}", o.out.display()))?;
    std::fs::write(o.out.join("results.json"), serde_json::to_vec_pretty(r)?)?;
    let mut md = String::new();
    writeln!(
        md,
        "Machine: {}; {} runs per variant, interleaved, after a warm-up; medians (p95).\n",
        r["machine"]["summary"].as_str().unwrap_or(""),
        r["runs"]
    )?;

    if let Some(s) = r.get("start") {
        start_section(&mut md, s, o)?;
    }

    if let Some(t) = r.get("throughput") {
        throughput_section(&mut md, t, o)?;
    }

    if let Some(m) = r.get("memory") {
        memory_section(&mut md, m, o)?;
    }

    if let Some(c) = r.get("compute") {
        compute_section(&mut md, c, o)?;
    }

    if let Some(sh) = r.get("shim") {
        shim_section(&mut md, sh, o)?;
    }

    if let Some(p) = r.get("pods") {
        pods_section(&mut md, p, o)?;
        pod_memory_section(&mut md, p)?;
    }

    if let Some(d) = r.get("density") {
        density_section(&mut md, d)?;
    }

    if let Some(sv) = r.get("serve") {
        serve_table(&mut md, sv, o)?;
    }

    if let Some(wasm) = r.get("wasm") {
        wasm_section(&mut md, wasm, o)?;
    }

    if let Some(ck) = r.get("checkpoint") {
        checkpoint_table(&mut md, ck)?;
    }

    for figure in plots(r) {
        let svg = format!("{}.svg", figure.name);
        plot::write(
            &o.out.join(&svg),
            &Plot {
                title: &figure.title,
                caption: &figure.caption,
                unit: figure.unit,
                bars: &figure.bars,
            },
        )?;
        writeln!(md, "\n![{}](../benchmarks/results/{svg})", figure.name)?;
    }
    // Beside the plots, summary.md links them by name; the docs page, from docs/.
    std::fs::write(
        o.out.join("summary.md"),
        md.replace("](../benchmarks/results/", "]("),
    )?;
    println!("{md}");
    if !o.smoke && o.out == default_out() {
        update_docs(&md)?;
    }
    Ok(())
}

fn start_section(md: &mut String, s: &Value, o: &Opts) -> Result<()> {
    writeln!(
        md,
        "**Start latency** (create to exit of a trivial workload):\n"
    )?;
    latencies(
        md,
        &s["variants"],
        "amphi, pod bundle",
        &o.out.join("start.csv"),
    )?;
    writeln!(md)?;
    for v in s["variants"].as_array().into_iter().flatten() {
        writeln!(
            md,
            "- {}: {}",
            v["variant"].as_str().unwrap_or(""),
            v["note"].as_str().unwrap_or("")
        )?;
    }
    for skip in s["skipped"].as_array().into_iter().flatten() {
        writeln!(md, "- skipped: {}", skip.as_str().unwrap_or(""))?;
    }
    writeln!(
        md,
        "\n**Against the targets** (pairwise medians of this run):\n\n| measure | this run | target |\n|---|---|---|"
    )?;
    for t in s["targets"].as_array().into_iter().flatten() {
        let unit = t["unit"].as_str().unwrap_or("");
        let (value, target) = (f(&t["value"]), f(&t["target"]));
        writeln!(
            md,
            "| {} | {value:.2} {unit} | ≤ {target} {unit} ({}) |",
            t["what"].as_str().unwrap_or(""),
            if value <= target { "met" } else { "missed" }
        )?;
    }

    let mut csv = String::from("runtime,create_ms,start_ms,wait_ms,delete_ms\n");
    writeln!(md, "\n**Where the time goes** (pod bundle, v1 controllers; median per phase):\n\n| runtime | create | start | wait | delete |\n|---|---|---|---|---|")?;
    for p in s["split"].as_array().into_iter().flatten() {
        let name = p["runtime"].as_str().unwrap_or("");
        let ph = ["create_ms", "start_ms", "wait_ms", "delete_ms"].map(|k| f(&p[k]));
        writeln!(
            csv,
            "{name},{:.3},{:.3},{:.3},{:.3}",
            ph[0], ph[1], ph[2], ph[3]
        )?;
        writeln!(
            md,
            "| {name} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            ph[0], ph[1], ph[2], ph[3]
        )?;
    }
    std::fs::write(o.out.join("split.csv"), csv)?;
    phase_table(md, &s["phases"])
}

/// The `--debug` steps of amphi's `run`, one column per build.
fn phase_table(md: &mut String, phases: &Value) -> Result<()> {
    let Some(rows) = phases.as_array().filter(|r| !r.is_empty()) else {
        return Ok(());
    };
    let builds: Vec<String> = rows[0]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k.clone())
        .filter(|k| k != "step")
        .collect();
    writeln!(
        md,
        "\n**amphi's steps** (`amphi --debug run`, pod bundle; median ms since the step before):\n\n| step | {} |\n|---|{}",
        builds.join(" | "),
        "---|".repeat(builds.len())
    )?;
    for r in rows {
        let cells: Vec<String> = builds
            .iter()
            .map(|b| r[b].as_f64().map_or("—".into(), |v| format!("{v:.2}")))
            .collect();
        writeln!(
            md,
            "| {} | {} |",
            r["step"].as_str().unwrap_or(""),
            cells.join(" | ")
        )?;
    }
    Ok(())
}

fn throughput_section(md: &mut String, t: &Value, o: &Opts) -> Result<()> {
    writeln!(
        md,
        "\n**Throughput** (pod bundle, `run` to exit and removed, {} per stream; best of two interleaved rounds):\n",
        t["per_stream"]
    )?;
    throughput_table(md, t, o, "throughput")?;
    Ok(())
}

fn memory_section(md: &mut String, m: &Value, o: &Opts) -> Result<()> {
    let mut csv = String::from("measure,kind,value_mib\n");
    writeln!(md, "\n**Memory**:\n\n| measure | value |\n|---|---|")?;
    for p in m["create_peak_rss"].as_array().into_iter().flatten() {
        let name = p["runtime"].as_str().unwrap_or("");
        writeln!(
            md,
            "| peak RSS of `{name} create` | {:.1} MiB |",
            f(&p["median_mib"])
        )?;
        writeln!(csv, "create_peak_rss,{name},{:.3}", f(&p["median_mib"]))?;
    }
    for p in m["idle"].as_array().into_iter().flatten() {
        let kind = p["kind"].as_str().unwrap_or("");
        writeln!(
            md,
            "| idle {kind} container: cgroup memory / init PSS | {:.1} MiB / {:.1} MiB |",
            f(&p["cgroup_mib"]),
            f(&p["pss_mib"])
        )?;
        writeln!(
            csv,
            "idle_cgroup,{kind},{:.3}\nidle_pss,{kind},{:.3}",
            f(&p["cgroup_mib"]),
            f(&p["pss_mib"])
        )?;
    }
    for p in m["density"].as_array().into_iter().flatten() {
        let kind = p["kind"].as_str().unwrap_or("");
        let n = p["n"].as_u64().unwrap_or(0);
        writeln!(md, "| {n} idle {kind} containers: started in / cgroup total / PSS total | {:.2} s / {:.1} MiB / {:.1} MiB |",
            f(&p["start_all_s"]), f(&p["cgroup_total_mib"]), f(&p["pss_total_mib"]))?;
        writeln!(
            csv,
            "density_{n}_cgroup,{kind},{:.3}\ndensity_{n}_pss,{kind},{:.3}",
            f(&p["cgroup_total_mib"]),
            f(&p["pss_total_mib"])
        )?;
    }
    std::fs::write(o.out.join("memory.csv"), csv)?;
    Ok(())
}

fn compute_section(md: &mut String, c: &Value, o: &Opts) -> Result<()> {
    let mut csv = String::from("workload,native_ms,wasm_ms,wasm_over_native\n");
    writeln!(md, "\n**Compute and file I/O** ({} MiB, timed inside the program; same Rust source for x86_64 and wasm32-wasip1):\n\n| workload | native | wasm | wasm / native (pairwise) |\n|---|---|---|---|", c["mib"])?;
    for w in c["workloads"].as_array().into_iter().flatten() {
        let name = w["workload"].as_str().unwrap_or("");
        writeln!(
            md,
            "| {name} | {:.1} ms | {:.1} ms | {:.2} |",
            f(&w["native_ms"]),
            f(&w["wasm_ms"]),
            f(&w["wasm_over_native"])
        )?;
        writeln!(
            csv,
            "{name},{:.3},{:.3},{:.3}",
            f(&w["native_ms"]),
            f(&w["wasm_ms"]),
            f(&w["wasm_over_native"])
        )?;
    }
    std::fs::write(o.out.join("compute.csv"), csv)?;
    Ok(())
}

fn shim_section(md: &mut String, sh: &Value, o: &Opts) -> Result<()> {
    if let Some(why) = sh["skipped"].as_str() {
        writeln!(md, "\n**Through containerd**: skipped: {why}")?;
    } else {
        writeln!(
            md,
            "\n**Through containerd 1.6** (`ctr run --rm`, busybox `true` and wasm hello):\n"
        )?;
        latencies(
            md,
            &sh["variants"],
            "amphi shim, native",
            &o.out.join("shim.csv"),
        )?;
        writeln!(
            md,
            "\nThe shim's resident memory while serving one task: {:.1} MiB.",
            f(&sh["shim_rss_mib"])
        )?;
        if let Some(t) = sh.get("throughput") {
            writeln!(
                md,
                "\n**Tasks through containerd** (`ctr run --rm` to exit, {} per stream; best of two interleaved rounds):\n",
                t["per_stream"]
            )?;
            throughput_table(md, t, o, "shim_throughput")?;
        }
    }
    Ok(())
}

fn pods_section(md: &mut String, p: &Value, o: &Opts) -> Result<()> {
    if let Some(why) = p["skipped"].as_str() {
        writeln!(md, "\n**Pod start through CRI**: skipped: {why}")?;
    } else {
        writeln!(
            md,
            "\n**Pod start through containerd 1.6's CRI** (RunPodSandbox to both containers Running, as kubelet starts a pod; {} pods a variant):\n",
            p["runs"]
        )?;
        latencies(
            md,
            &p["variants"],
            "runc, native + native",
            &o.out.join("pods.csv"),
        )?;
    }
    Ok(())
}

fn density_section(md: &mut String, d: &Value) -> Result<()> {
    if let Some(why) = d["skipped"].as_str() {
        writeln!(md, "\n**Density through CRI**: skipped: {why}")?;
    } else {
        writeln!(
            md,
            "\n**Density through CRI** (idle pods, pause and one container, started one after another):\n\n\
             | handler | container | pods running | asked | PSS a pod (MiB) | RSS a pod (MiB) | last pods | their start (s) | stopped by |\n|---|---|---|---|---|---|---|---|---|"
        )?;
        for row in d["rows"].as_array().into_iter().flatten() {
            writeln!(
                md,
                "| {} | {} | {} | {} | {:.2} | {:.2} | {} | {:.2} | {} |",
                row["handler"].as_str().unwrap_or(""),
                row["container"].as_str().unwrap_or(""),
                row["pods"],
                row["asked"],
                row["pss_mib_per_pod"].as_f64().unwrap_or(f64::NAN),
                row["rss_mib_per_pod"].as_f64().unwrap_or(f64::NAN),
                row["last_pods"],
                row["last_pods_s"].as_f64().unwrap_or(f64::NAN),
                row["refused"].as_str().unwrap_or("the count asked"),
            )?;
        }
    }
    Ok(())
}

fn wasm_section(md: &mut String, wasm: &Value, o: &Opts) -> Result<()> {
    writeln!(
        md,
        "\n**Real wasm programs** (`amphi run` to exit; first start compiles, cached maps the artifact){}:\n\n\
         | program | toolchain | module | first start | cached start |\n|---|---|---|---|---|",
        measured_apart(wasm)
    )?;
    let mut csv = String::from("program,module_bytes,first_start_ms,cached_start_ms\n");
    let mut against_wasmtime = String::new();
    for p in wasm["programs"].as_array().into_iter().flatten() {
        let name = p["program"].as_str().unwrap_or("");
        writeln!(
            md,
            "| {name} | {} | {:.1} MB | {:.0} ms | {:.0} ms |",
            p["toolchain"].as_str().unwrap_or(""),
            f(&p["module_bytes"]) / 1e6,
            f(&p["first_start_ms"]),
            f(&p["cached_start_ms"])
        )?;
        writeln!(
            csv,
            "{name},{},{:.1},{:.1}",
            p["module_bytes"],
            f(&p["first_start_ms"]),
            f(&p["cached_start_ms"])
        )?;
        if let Some(again) = p["preinit_cached_start_ms"].as_f64() {
            writeln!(
                against_wasmtime,
                "\n{name} with `io.github.amphi.preinit=true`: first start {:.0} ms (runs the initialization, compiles the snapshot), cached start {again:.1} ms, {:.2}x its cached start without",
                f(&p["preinit_first_start_ms"]),
                f(&p["preinit_over_plain_cached_start"])
            )?;
        }
        if let Some(reference) = p["wasmtime_compile_ms"].as_f64() {
            writeln!(
                against_wasmtime,
                "\n{name}: first start {:.2}x wasmtime's own compile and serialize of it ({:.1} s, wasmtime's Python package of the same version)",
                f(&p["first_start_over_wasmtime_compile"]),
                reference / 1e3
            )?;
        }
    }
    md.push_str(&against_wasmtime);
    if let Some(baseline) = wasm["baseline"].as_str() {
        writeln!(
            md,
            "\nAgainst the baseline build ({baseline}), same run, turn about:\n\n\
             | program | first start | baseline | ratio | cached start | baseline | ratio |\n|---|---|---|---|---|---|---|"
        )?;
        for p in wasm["programs"].as_array().into_iter().flatten() {
            let (first, cached) = (f(&p["first_start_ms"]), f(&p["cached_start_ms"]));
            let (base_first, base_cached) = (
                f(&p["baseline_first_start_ms"]),
                f(&p["baseline_cached_start_ms"]),
            );
            writeln!(
                md,
                "| {} | {first:.0} ms | {base_first:.0} ms | {:.2}x | {cached:.1} ms | {base_cached:.1} ms | {:.2}x |",
                p["program"].as_str().unwrap_or(""),
                first / base_first,
                cached / base_cached
            )?;
        }
    }
    for skip in wasm["skipped"].as_array().into_iter().flatten() {
        writeln!(md, "- skipped: {}", skip.as_str().unwrap_or(""))?;
    }
    std::fs::write(o.out.join("wasm.csv"), csv)?;
    Ok(())
}

/// A latency table (median, p95, pairwise ratio to `base`) and its samples
/// as CSV.
fn latencies(md: &mut String, variants: &Value, base: &str, csv_path: &Path) -> Result<()> {
    let mut csv = String::from("variant,run,ms\n");
    writeln!(
        md,
        "| variant | median | p95 | ratio to {base} (pairwise) |\n|---|---|---|---|"
    )?;
    for v in variants.as_array().into_iter().flatten() {
        let name = v["variant"].as_str().unwrap_or("");
        for (i, x) in v["samples_ms"].as_array().into_iter().flatten().enumerate() {
            writeln!(csv, "{name},{i},{:.3}", f(x))?;
        }
        writeln!(
            md,
            "| {name} | {:.1} ms | {:.1} ms | {:.2} |",
            f(&v["median_ms"]),
            f(&v["p95_ms"]),
            f(&v["pairwise_ratio"])
        )?;
    }
    std::fs::write(csv_path, csv)?;
    Ok(())
}

/// Replace the results in docs/benchmarks.md between the markers with this
/// run's.
fn update_docs(md: &str) -> Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md");
    let text = std::fs::read_to_string(&path)?;
    let (Some(a), Some(b)) = (text.find(BEGIN), text.find(END)) else {
        eprintln!("amphi-bench: docs/benchmarks.md has no bench markers; results are in benchmarks/results/summary.md");
        return Ok(());
    };
    let new = format!("{}{BEGIN}\n{md}\n{}", &text[..a], &text[b..]);
    std::fs::write(&path, new)?;
    eprintln!("amphi-bench: docs/benchmarks.md results updated");
    Ok(())
}

/// `amphi serve` under load: requests/s and latency per variant.
fn serve_table(md: &mut String, sv: &Value, o: &Opts) -> Result<()> {
    writeln!(
        md,
        "\n**Function host** (`amphi serve`, hello function, {} keep-alive clients on loopback, {} × {} s per variant){}:\n",
        sv["clients"], sv["rounds"], sv["seconds_per_round"], measured_apart(sv)
    )?;
    writeln!(
        md,
        "| variant | requests/s | p50 | p99 | errors |\n|---|---|---|---|---|"
    )?;
    let mut csv = String::from("variant,rps,p50_ms,p99_ms,requests,errors\n");
    let wasmtime = [sv["wasmtime_serve"].clone()];
    for v in sv["variants"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(wasmtime.iter().filter(|w| w.get("rps").is_some()))
    {
        let name = v["variant"].as_str().unwrap_or("");
        writeln!(
            md,
            "| {name} | {:.0} | {:.2} ms | {:.2} ms | {} |",
            f(&v["rps"]),
            f(&v["p50_ms"]),
            f(&v["p99_ms"]),
            v["errors"]
        )?;
        writeln!(
            csv,
            "{name},{:.1},{:.3},{:.3},{},{}",
            f(&v["rps"]),
            f(&v["p50_ms"]),
            f(&v["p99_ms"]),
            v["requests"],
            v["errors"]
        )?;
    }
    if let Some(why) = sv["wasmtime_serve"]["skipped"].as_str() {
        writeln!(md, "\n`wasmtime serve`: skipped: {why}")?;
    }
    let r = &sv["ratios"];
    write!(
        md,
        "\nRatios: wasm/native requests/s (warm) {:.2}; wasm/native p50 (cold) {:.2}; strict with pool / without, requests/s {:.2}; wasi:http reuse / instance, requests/s {:.2}; own port / server's port, requests/s, wasi:http {:.2}, wasm CGI {:.2}; with a user namespace / without, requests/s (warm) {:.2}, (strict, no pool) {:.2}, p50 (native cold) {:.2}; a keeper per CPU / one keeper, requests/s (strict, no pool) {:.2}",
        f(&r["wasm_over_native_rps_warm"]),
        f(&r["wasm_over_native_p50_cold"]),
        f(&r["strict_pool_over_nopool_rps"]),
        f(&r["http_reuse_over_instance_rps"]),
        f(&r["port_over_routed_rps_http"]),
        f(&r["port_over_routed_rps_wasm_cgi"]),
        f(&r["userns_over_hostns_rps_warm"]),
        f(&r["userns_over_hostns_rps_strict"]),
        f(&r["userns_over_hostns_p50_cold"]),
        f(&r["keepers_over_one_rps_strict"])
    )?;
    if let Some(x) = r["amphi_http_over_wasmtime_serve_rps"].as_f64() {
        writeln!(
            md,
            "; amphi / wasmtime serve, requests/s: wasi:http {x:.2} (isolation instance), {:.2} (isolation reuse); on the function's own port, wasi:http {:.2} (instance), {:.2} (reuse), wasm CGI {:.2}.",
            f(&r["amphi_http_reuse_over_wasmtime_serve_rps"]),
            f(&r["amphi_http_port_over_wasmtime_serve_rps"]),
            f(&r["amphi_http_reuse_port_over_wasmtime_serve_rps"]),
            f(&r["amphi_wasm_cgi_port_over_wasmtime_serve_rps"])
        )?;
    } else {
        writeln!(md, ".")?;
    }
    if let Some(x) = r["python_preinit_over_plain_rps_warm"].as_f64() {
        writeln!(
            md,
            "\nPython function, preinit / without, same run: requests/s (warm) {x:.2}, p50 (cold) {:.2}, p50 (warm, one client) {:.2}.",
            f(&r["python_preinit_over_plain_p50_cold"]),
            f(&r["python_preinit_over_plain_p50_warm_one_client"])
        )?;
    }
    if let Some(baseline) = r["baseline"].as_str() {
        writeln!(
            md,
            "\nThis build / the baseline build ({baseline}), same run: requests/s, wasm CGI {:.2}, wasi:http {:.2} (instance), {:.2} (reuse); cold p50, wasm CGI {:.2}{}.",
            f(&r["over_baseline_rps_wasm_cgi"]),
            f(&r["over_baseline_rps_http"]),
            f(&r["over_baseline_rps_http_reuse"]),
            f(&r["over_baseline_p50_wasm_cgi_cold"]),
            Some(f(&r["over_baseline_p50_python_preinit_cold"]))
                .filter(|x| x.is_finite())
                .map_or(String::new(), |x| format!(", Python function (preinit) {x:.2}"))
        )?;
    }
    std::fs::write(o.out.join("serve.csv"), csv)?;
    Ok(())
}

/// A throughput table (one column per variant, then the first over the
/// second) and its CSV, from `throughput::table`'s shape.
fn throughput_table(md: &mut String, t: &Value, o: &Opts, file: &str) -> Result<()> {
    let names: Vec<&str> = t["variants"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let [first, second, ..] = names[..] else {
        anyhow::bail!("{file}: fewer than two variants");
    };
    writeln!(
        md,
        "| streams | {} | {first} / {second} |\n|---|{}---|",
        names.join(" | "),
        "---|".repeat(names.len())
    )?;
    let mut csv = format!("streams,{}\n", names.join(","));
    for row in t["rows"].as_array().into_iter().flatten() {
        let n = &row["streams"];
        let rates: Vec<f64> = names.iter().map(|v| f(&row["per_s"][v])).collect();
        let cells: Vec<String> = rates.iter().map(|r| format!("{r:.1}/s")).collect();
        writeln!(
            md,
            "| {n} | {} | {:.2}x |",
            cells.join(" | "),
            rates[0] / rates[1]
        )?;
        let cells: Vec<String> = rates.iter().map(|r| format!("{r:.2}")).collect();
        writeln!(csv, "{n},{}", cells.join(","))?;
    }
    std::fs::write(o.out.join(format!("{file}.csv")), csv)?;
    Ok(())
}

/// Checkpoint and restore of wasm containers, with the targets.
fn checkpoint_table(md: &mut String, ck: &Value) -> Result<()> {
    let met = |ok: bool| if ok { "met" } else { "missed" };
    writeln!(
        md,
        "\n**Checkpoint and restore (wasm)**: the checkpointable form (Asyncify plus a poll at every loop back-edge) against the plain module, same program, timed inside it:\n\n\
         | workload | plain | checkpointable | ratio (pairwise) |\n|---|---|---|---|"
    )?;
    for w in ck["instrumentation"].as_array().into_iter().flatten() {
        writeln!(
            md,
            "| {} | {:.1} ms | {:.1} ms | {:.2} |",
            w["workload"].as_str().unwrap_or(""),
            f(&w["plain_ms"]),
            f(&w["checkpointable_ms"]),
            f(&w["ratio"])
        )?;
    }
    let worst = ck["instrumentation"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| matches!(w["workload"].as_str(), Some("sha256" | "sort")))
        .map(|w| f(&w["ratio"]))
        .fold(0.0, f64::max);
    writeln!(
        md,
        "\nsha256 and sort at most {worst:.2}x (target < 1.5x: {})",
        met(worst < 1.5)
    )?;
    let r = &ck["restore"];
    let ratio = f(&r["checkpoint_plus_restore_over_cached_start"]);
    let size = f(&r["image_over_touched"]);
    writeln!(
        md,
        "\nA counter with a {} MiB heap: cached start to its first count {:.1} ms; checkpoint {:.1} ms (to the image written and the container removed); restore {:.1} ms (to its next count). Checkpoint plus restore {ratio:.2}x the cached start (target < 5x: {}). Image {:.1} MiB for {:.1} MiB of touched guest memory: {size:.3}x (target <= 1.1x: {}).",
        r["heap_mib"],
        f(&r["cached_start_ms"]),
        f(&r["checkpoint_ms"]),
        f(&r["restore_ms"]),
        met(ratio < 5.0),
        f(&r["image_bytes"]) / 1048576.0,
        f(&r["touched_memory_bytes"]) / 1048576.0,
        met(size <= 1.1)
    )?;
    Ok(())
}

/// One plot of a run: its file name (without .svg) and what it draws.
pub struct Figure {
    pub name: &'static str,
    pub title: String,
    pub caption: String,
    pub unit: &'static str,
    pub bars: Vec<Bar>,
}

/// For a group run on its own and written into a full run's results
/// (its `machine` beside its rows): where it was measured.
fn measured_apart(group: &Value) -> String {
    group.get("machine").map_or(String::new(), |m| {
        format!(
            ", a run of this group alone on {}",
            m["summary"].as_str().unwrap_or("another machine")
        )
    })
}

/// The machine in a few words, for captions: "2-core AMD EPYC, Linux
/// 6.18, hybrid cgroups".
fn machine_in_brief(m: &Value) -> String {
    let kernel: Vec<&str> = m["kernel"]
        .as_str()
        .unwrap_or("")
        .split('.')
        .take(2)
        .collect();
    let cgroups = m["cgroups"].as_str().unwrap_or("");
    let cgroups = cgroups.split(' ').next().unwrap_or(cgroups);
    format!(
        "{}-core {}, Linux {}, {cgroups} cgroups",
        m["cores"],
        m["cpu"].as_str().unwrap_or("CPU"),
        kernel.join(".")
    )
}

/// Latency bars: median, p95 whisker, ratio to the table's base.
fn latency_bars(variants: &Value, trim: &str) -> Vec<Bar> {
    variants
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            let name = v["variant"].as_str().unwrap_or("");
            Bar::new(name.trim_start_matches(trim), f(&v["median_ms"]))
                .whisker(f(&v["p95_ms"]))
                .ratio(f(&v["pairwise_ratio"]))
        })
        .collect()
}

/// Rate bars per variant and stream count; the first variant's carry its
/// ratio to the second's at the same count.
fn throughput_bars(t: &Value) -> Vec<Bar> {
    let names: Vec<&str> = t["variants"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut bars = Vec::new();
    for row in t["rows"].as_array().into_iter().flatten() {
        let n = &row["streams"];
        let rates: Vec<f64> = names.iter().map(|v| f(&row["per_s"][v])).collect();
        for (i, (name, &rate)) in names.iter().zip(&rates).enumerate() {
            let streams = if n.as_u64() == Some(1) {
                "stream"
            } else {
                "streams"
            };
            let bar = Bar::new(format!("{name}, {n} {streams}"), rate).series(i);
            bars.push(if i == 0 && rates.len() > 1 {
                bar.ratio(rate / rates[1])
            } else {
                bar
            });
        }
    }
    bars
}

/// Every plot the results hold, as `write` draws them.
pub fn plots(r: &Value) -> Vec<Figure> {
    let machine = machine_in_brief(&r["machine"]);
    let runs = &r["runs"];
    let mut figures = Vec::new();
    let mut add = |name, title: &str, caption: String, unit, bars: Vec<Bar>| {
        if !bars.is_empty() {
            figures.push(Figure {
                name,
                title: title.to_owned(),
                caption,
                unit,
                bars,
            });
        }
    };
    if let Some(s) = r.get("start") {
        add(
            "start",
            "Start latency: create to exit of a trivial workload",
            format!("Median of {runs} (p95); ratio to amphi, pod bundle. {machine}"),
            "ms",
            latency_bars(&s["variants"], ""),
        );
        let mut split = Vec::new();
        for p in s["split"].as_array().into_iter().flatten() {
            let name = p["runtime"].as_str().unwrap_or("");
            for (i, phase) in ["create", "start", "wait", "delete"]
                .into_iter()
                .enumerate()
            {
                let ms = f(&p[format!("{phase}_ms")]);
                split.push(Bar::new(format!("{name} {phase}"), ms).series(i));
            }
        }
        add(
            "split",
            "Where the time goes: each phase of the pod bundle",
            format!("Median of {runs} per phase. {machine}"),
            "ms",
            split,
        );
    }
    if let Some(t) = r.get("throughput") {
        add(
            "throughput",
            "Containers started and removed per second",
            format!("Pod bundle; ratio: amphi over runc. {machine}"),
            "per s",
            throughput_bars(t),
        );
    }
    if let Some(m) = r.get("memory") {
        let mut idle = Vec::new();
        for p in m["idle"].as_array().into_iter().flatten() {
            let kind = p["kind"].as_str().unwrap_or("");
            let cgroup = Bar::new(format!("{kind}: cgroup memory"), f(&p["cgroup_mib"]));
            idle.push(cgroup.series(0));
            idle.push(Bar::new(format!("{kind}: init PSS"), f(&p["pss_mib"])).series(1));
        }
        add(
            "memory",
            "Memory of one idle container",
            format!("Median over idle containers. {machine}"),
            "MiB",
            idle,
        );
    }
    if let Some(sh) = r.get("shim").filter(|s| s["skipped"].is_null()) {
        add(
            "shim",
            "ctr run --rm through containerd 1.6, to exit",
            format!("Median of {runs} (p95); ratio to amphi shim, native. {machine}"),
            "ms",
            latency_bars(&sh["variants"], ""),
        );
        if let Some(t) = sh.get("throughput") {
            add(
                "shim_throughput",
                "containerd tasks run and removed per second",
                format!("ctr run --rm; ratio: amphi over runc. {machine}"),
                "per s",
                throughput_bars(t),
            );
        }
    }
    if let Some(p) = r.get("pods").filter(|p| p["skipped"].is_null()) {
        add(
            "pods",
            "Pod start through CRI: RunPodSandbox to both containers Running",
            format!(
                "Median of {} (p95); ratio to runc, native + native. {machine}",
                p["runs"]
            ),
            "ms",
            latency_bars(&p["variants"], ""),
        );
    }
    if let Some(c) = r.get("compute") {
        let bars = c["workloads"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| {
                Bar::new(
                    w["workload"].as_str().unwrap_or(""),
                    f(&w["wasm_over_native"]),
                )
            })
            .collect();
        add(
            "compute",
            "wasm time over native time, same Rust source",
            format!(
                "{} MiB a workload, timed inside the program. {machine}",
                c["mib"]
            ),
            "x native",
            bars,
        );
    }
    if let Some(sv) = r.get("serve") {
        let reference = f(&sv["wasmtime_serve"]["p50_ms"]);
        let mut bars: Vec<Bar> = sv["variants"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(Some(&sv["wasmtime_serve"]).filter(|w| w.get("rps").is_some()))
            .map(|v| {
                let name = v["variant"].as_str().unwrap_or("");
                Bar::new(name.trim_start_matches("amphi serve, "), f(&v["p50_ms"]))
                    .whisker(f(&v["p99_ms"]))
                    .ratio(f(&v["p50_ms"]) / reference)
            })
            .collect();
        if !reference.is_finite() {
            bars.iter_mut().for_each(|b| b.ratio = None);
        }
        add(
            "serve",
            "amphi serve: latency per request, p50 (p99 whisker)",
            format!(
                "{} clients, loopback; ratio: p50 over wasmtime serve's. {}",
                sv["clients"],
                sv.get("machine").map_or(machine.clone(), machine_in_brief)
            ),
            "ms",
            bars,
        );
    }
    figures
}

/// The memory of each pod variant, where the run measured it.
fn pod_memory_section(md: &mut String, p: &Value) -> Result<()> {
    let measured = p["variants"]
        .as_array()
        .is_some_and(|v| v.iter().any(|v| v["memory_mib"].is_object()));
    if !measured {
        return Ok(());
    }
    writeln!(
        md,
        "\n**Memory of a running pod** (medians; the shim serving the pod, its pause process, its containers' processes; MiB):\n\n\
         | variant | shim RSS | shim PSS | pause RSS | pause PSS | containers RSS | containers PSS | total RSS | total PSS |\n|---|---|---|---|---|---|---|---|---|"
    )?;
    for v in p["variants"].as_array().into_iter().flatten() {
        let m = &v["memory_mib"];
        let f = |k: &str| m[k].as_f64().map_or("-".into(), |x| format!("{x:.2}"));
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            v["variant"].as_str().unwrap_or(""),
            f("shim_rss"),
            f("shim_pss"),
            f("pause_rss"),
            f("pause_pss"),
            f("containers_rss"),
            f("containers_pss"),
            f("total_rss"),
            f("total_pss")
        )?;
    }
    Ok(())
}
