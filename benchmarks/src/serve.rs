//! `amphi serve` under load on loopback: requests/s and latency of a hello
//! function, wasm against native, warm and cold, the strict tier with and
//! without its warm pool, and `wasmtime serve` running the same wasi:http
//! component when it is installed.
//!
//! The load generator is a set of keep-alive client threads in this
//! process (amphi_tests::serve::Client). Warm variants, `wasmtime serve`
//! among them, are measured in alternating rounds, so that a noisy moment
//! hits all of them alike.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amphi_tests::serve::{manifest, native_cgi, wasm_guest, Client, Serve};
use amphi_tests::Env;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{median_p95, world, Opts};

/// What one load run measured.
struct Load {
    requests: usize,
    errors: usize,
    secs: f64,
    latencies_ms: Vec<f64>,
}

/// `clients` keep-alive connections sending GET `path` back to back for `secs`.
fn load(addr: SocketAddr, path: &str, clients: usize, secs: f64) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, path) = (stop.clone(), path.to_string());
            std::thread::spawn(move || {
                let mut c = Client::new(addr);
                let (mut lat, mut errors) = (Vec::new(), 0usize);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match c.try_request("GET", &path, &[], b"") {
                        Ok(r) if r.status == 200 => lat.push(t.elapsed().as_secs_f64() * 1e3),
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let mut out = Load {
        requests: 0,
        errors: 0,
        secs: 0.0,
        latencies_ms: Vec::new(),
    };
    for t in threads {
        let (lat, errors) = t.join().expect("client thread");
        out.requests += lat.len();
        out.errors += errors;
        out.latencies_ms.extend(lat);
    }
    out.secs = started.elapsed().as_secs_f64();
    out
}

/// Nearest-rank percentile.
fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1]
}

fn row(name: &str, note: &str, loads: &[Load]) -> Value {
    let requests: usize = loads.iter().map(|l| l.requests).sum();
    let errors: usize = loads.iter().map(|l| l.errors).sum();
    let secs: f64 = loads.iter().map(|l| l.secs).sum();
    let lat: Vec<f64> = loads
        .iter()
        .flat_map(|l| l.latencies_ms.iter().copied())
        .collect();
    json!({
        "variant": name, "note": note,
        "requests": requests, "errors": errors,
        "rps": requests as f64 / secs,
        "p50_ms": percentile(&lat, 0.50), "p99_ms": percentile(&lat, 0.99),
    })
}

/// The wasmtime CLI the comparison uses: amphi's own wasmtime version.
const WASMTIME_VERSION: &str = "50.0.1";

/// `wasmtime serve` from $WASMTIME, PATH, or (a full run) built once with
/// `cargo install` into target/wasmtime-cli-VERSION and kept there: about
/// 25 minutes on 2 cores the first time, nothing after. The smoke pass
/// never builds it, nor a run with WASMTIME set empty.
fn wasmtime(o: &Opts) -> Result<Option<PathBuf>> {
    if std::env::var_os("WASMTIME").is_some_and(|v| v.is_empty()) {
        return Ok(None);
    }
    if let Some(bin) = std::env::var_os("WASMTIME")
        .map(PathBuf::from)
        .or_else(|| world::on_path("wasmtime"))
    {
        return Ok(Some(bin));
    }
    let root = world::repo_root().join(format!("target/wasmtime-cli-{WASMTIME_VERSION}"));
    let bin = root.join("bin/wasmtime");
    if bin.exists() || o.smoke {
        return Ok(bin.exists().then_some(bin));
    }
    eprintln!("amphi-bench: building wasmtime-cli {WASMTIME_VERSION} for the serve comparison (once; cached in {})", root.display());
    let st = Command::new("cargo")
        .args([
            "install",
            "wasmtime-cli",
            "--locked",
            "--version",
            WASMTIME_VERSION,
            "--root",
        ])
        .arg(&root)
        .status()
        .context("cargo install wasmtime-cli")?;
    if !st.success() {
        bail!("cargo install wasmtime-cli {WASMTIME_VERSION} failed ({st}); set WASMTIME to a wasmtime binary to skip the build");
    }
    Ok(Some(bin))
}

/// The corpus's Python function (bundles/wasm/python), built if need be;
/// None when crates.io is out of reach.
fn python_function() -> Result<Option<PathBuf>> {
    let p = amphi_tests::corpus::PROGRAMS
        .iter()
        .find(|p| p.name == "python-function")
        .context("no python-function in the corpus")?;
    match amphi_tests::corpus::fetch(p) {
        Ok(dir) => Ok(Some(dir.join("python-function.wasm"))),
        Err(amphi_tests::corpus::Unavailable::Offline(why)) => {
            eprintln!("amphi-bench: serve: no Python function: {why}");
            Ok(None)
        }
        Err(amphi_tests::corpus::Unavailable::Broken(why)) => bail!("python-function: {why}"),
    }
}

struct WasmtimeServe {
    child: Child,
    addr: SocketAddr,
}

impl Drop for WasmtimeServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wasmtime_serve(bin: &Path, component: &Path) -> Result<WasmtimeServe> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let child = Command::new(bin)
        // -Scli: the component is built with std, which imports wasi:cli.
        .args(["serve", "-Scli", "--addr", &addr.to_string()])
        .arg(component)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let w = WasmtimeServe { child, addr };
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("wasmtime serve did not listen on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(w)
}

pub fn group(w: &world::World, o: &Opts) -> Result<Value> {
    let env = Env::for_runtime(w.amphi.clone());
    let dir = env.tmp.path().join("functions");
    let cgi_wasm = wasm_guest("cgi.wasm");
    let http = wasm_guest("http-hello.wasm");
    let cgi_native = native_cgi();
    // One server, one function per variant; generous limits so that the
    // load measures the host, not the admission control.
    let common = "concurrency = 64\nqueue = 1024\nmemory = \"256Mi\"\n";
    for (name, source, extra) in [
        ("wasm", format!("module = {cgi_wasm:?}"), ""),
        ("native", format!("program = {cgi_native:?}"), ""),
        (
            "http",
            format!("module = {http:?}\ninterface = \"http\""),
            "",
        ),
        (
            "http-reuse",
            format!("module = {http:?}\ninterface = \"http\""),
            "isolation = \"reuse\"\n",
        ),
        // Served on ports of their own by the envelope's worker: no hop.
        (
            "wasm-port",
            format!("module = {cgi_wasm:?}"),
            "listen = \"127.0.0.1:0\"\n",
        ),
        (
            "http-port",
            format!("module = {http:?}\ninterface = \"http\""),
            "listen = \"127.0.0.1:0\"\n",
        ),
        (
            "http-reuse-port",
            format!("module = {http:?}\ninterface = \"http\""),
            "isolation = \"reuse\"\nlisten = \"127.0.0.1:0\"\n",
        ),
        (
            "wasm-cold",
            format!("module = {cgi_wasm:?}"),
            "idle = \"0s\"\n",
        ),
        (
            "native-cold",
            format!("program = {cgi_native:?}"),
            "idle = \"0s\"\n",
        ),
        (
            "wasm-strict",
            format!("module = {cgi_wasm:?}"),
            "isolation = \"envelope\"\npool = 8\n",
        ),
        (
            "native-strict",
            format!("program = {cgi_native:?}"),
            "isolation = \"envelope\"\npool = 8\n",
        ),
        (
            "wasm-strict-nopool",
            format!("module = {cgi_wasm:?}"),
            "isolation = \"envelope\"\npool = 0\n",
        ),
        // What a user namespace per function costs: per warm request, and
        // where envelopes are made per request.
        (
            "wasm-hostns",
            format!("module = {cgi_wasm:?}"),
            "user_namespace = false\n",
        ),
        (
            "wasm-strict-nopool-hostns",
            format!("module = {cgi_wasm:?}"),
            "isolation = \"envelope\"\npool = 0\nuser_namespace = false\n",
        ),
        (
            "native-cold-hostns",
            format!("program = {cgi_native:?}"),
            "idle = \"0s\"\nuser_namespace = false\n",
        ),
    ] {
        manifest(&dir, name, &format!("{source}\n{common}{extra}"));
    }
    // A Python function (RustPython inside), pre-initialized and as it is:
    // its start is the interpreter's. Built from the test corpus; not in
    // the smoke pass (a first build takes minutes).
    let python = if o.smoke { None } else { python_function()? };
    if let Some(module) = &python {
        for (name, extra) in [
            ("python", ""),
            ("python-preinit", "preinit = true\n"),
            ("python-cold", "idle = \"0s\"\n"),
            ("python-preinit-cold", "preinit = true\nidle = \"0s\"\n"),
        ] {
            manifest(&dir, name, &format!("module = {module:?}\n{common}{extra}"));
        }
    }
    let serve =
        Serve::start(&env, &dir, &[]).map_err(|f| anyhow::anyhow!("amphi serve: {}", f.stderr))?;
    let clients = 4;
    let (rounds, secs) = if o.smoke { (1, 0.3) } else { (3, 2.0) };

    // Warm: a fresh instance (wasm) or process (native) per request in a
    // warm envelope.
    let routed = serve.addr;
    // Each: the address, the path, and how many clients load it.
    let mut warm = vec![
        (routed, "/wasm", clients),
        (routed, "/native", clients),
        (routed, "/http", clients),
        (routed, "/http-reuse", clients),
        (routed, "/wasm-hostns", clients),
        (serve.port_of("wasm-port"), "/wasm-port", clients),
        (serve.port_of("http-port"), "/http-port", clients),
        (
            serve.port_of("http-reuse-port"),
            "/http-reuse-port",
            clients,
        ),
    ];
    // The baseline build's server, on the same functions: its wasm
    // variants are loaded in the same rounds, turn about with this one's.
    let baseline_env = o.baseline.clone().map(Env::for_runtime);
    let baseline = match &baseline_env {
        Some(env) => Some(
            Serve::start(env, &dir, &[])
                .map_err(|f| anyhow::anyhow!("amphi serve (baseline): {}", f.stderr))?,
        ),
        None => None,
    };
    const BASELINE_WARM: [(&str, &str); 3] = [
        ("/wasm", "wasm CGI (warm)"),
        ("/http", "wasi:http (warm)"),
        ("/http-reuse", "wasi:http (warm, isolation reuse)"),
    ];
    if python.is_some() {
        let plain = "/python?text=to+be+or+not+to+be";
        let preinit = "/python-preinit?text=to+be+or+not+to+be";
        // One client too: what one warm instance takes, with no request
        // queued behind another on the machine's cores.
        warm.extend([
            (routed, plain, clients),
            (routed, preinit, clients),
            (routed, plain, 1),
            (routed, preinit, 1),
        ]);
    }
    // wasmtime serve, same component, loaded in the same rounds: a ratio
    // against it taken minutes apart would carry the machine's drift.
    let wasmtime_bin = wasmtime(o)?;
    let reference = match &wasmtime_bin {
        Some(bin) => Some(wasmtime_serve(bin, &http)?),
        None => None,
    };
    let wasmtime_at = warm.len();
    warm.extend(reference.as_ref().map(|ws| (ws.addr, "/http", clients)));
    let baseline_from = warm.len();
    if let Some(b) = &baseline {
        warm.extend(
            BASELINE_WARM
                .iter()
                .map(|(path, _)| (b.addr, *path, clients)),
        );
    }
    let mut warm_loads: Vec<Vec<Load>> = warm.iter().map(|_| Vec::new()).collect();
    for (addr, path, clients) in &warm {
        let _warm_up = load(*addr, path, *clients, secs / 4.0);
    }
    for _ in 0..rounds {
        for (i, (addr, path, clients)) in warm.iter().enumerate() {
            warm_loads[i].push(load(*addr, path, *clients, secs));
        }
    }
    let mut rows = vec![
        row(
            "amphi serve, wasm CGI (warm)",
            "module instance per request, envelope shared",
            &warm_loads[0],
        ),
        row(
            "amphi serve, native CGI (warm)",
            "process per request, envelope shared",
            &warm_loads[1],
        ),
        row(
            "amphi serve, wasi:http (warm)",
            "component instance per request, envelope shared",
            &warm_loads[2],
        ),
        row(
            "amphi serve, wasi:http (warm, isolation reuse)",
            "component instance kept for up to 1000 requests, envelope shared",
            &warm_loads[3],
        ),
        row(
            "amphi serve, wasm CGI (warm, no user namespace)",
            "module instance per request, envelope shared, in the host's user namespace",
            &warm_loads[4],
        ),
        row(
            "amphi serve, wasm CGI (warm, own port)",
            "module instance per request; the envelope's worker serves the function's port",
            &warm_loads[5],
        ),
        row(
            "amphi serve, wasi:http (warm, own port)",
            "component instance per request; the envelope's worker serves the function's port",
            &warm_loads[6],
        ),
        row(
            "amphi serve, wasi:http (warm, isolation reuse, own port)",
            "component instance kept for up to 1000 requests; the worker serves the port",
            &warm_loads[7],
        ),
    ];
    if python.is_some() {
        rows.push(row(
            "amphi serve, Python function (warm)",
            "RustPython: an instance per request starts the interpreter and imports the handler's modules",
            &warm_loads[8],
        ));
        rows.push(row(
            "amphi serve, Python function (warm, preinit)",
            "the same module with preinit = true: an instance per request, from the snapshot",
            &warm_loads[9],
        ));
        rows.push(row(
            "amphi serve, Python function (warm, one client)",
            "an instance per request, one request at a time",
            &warm_loads[10],
        ));
        rows.push(row(
            "amphi serve, Python function (warm, preinit, one client)",
            "an instance per request from the snapshot, one request at a time",
            &warm_loads[11],
        ));
    }
    if baseline.is_some() {
        for (j, (_, variant)) in BASELINE_WARM.iter().enumerate() {
            rows.push(row(
                &format!("amphi serve, {variant} [baseline]"),
                "the same function on the baseline build's server",
                &warm_loads[baseline_from + j],
            ));
        }
    }

    // Strict: an envelope per request, from a warm pool or made on demand.
    let strict = [
        ("amphi serve, wasm CGI (strict, pool 8)", "/wasm-strict"),
        ("amphi serve, native CGI (strict, pool 8)", "/native-strict"),
        (
            "amphi serve, wasm CGI (strict, no pool)",
            "/wasm-strict-nopool",
        ),
        (
            "amphi serve, wasm CGI (strict, no pool, no user namespace)",
            "/wasm-strict-nopool-hostns",
        ),
    ];
    for (name, path) in strict {
        let l = load(serve.addr, path, clients, secs);
        rows.push(row(name, "envelope made, used once, deleted", &[l]));
    }

    // Cold: every request after scale-to-zero makes the envelope first.
    // One client, requests interleaved across the variants.
    let cold_n = if o.smoke { 2 } else { 30 };
    let mut cold = vec![
        ("amphi serve, wasm CGI (cold)", "/wasm-cold"),
        ("amphi serve, native CGI (cold)", "/native-cold"),
        (
            "amphi serve, native CGI (cold, no user namespace)",
            "/native-cold-hostns",
        ),
    ];
    if python.is_some() {
        cold.extend([
            ("amphi serve, Python function (cold)", "/python-cold"),
            (
                "amphi serve, Python function (cold, preinit)",
                "/python-preinit-cold",
            ),
        ]);
    }
    let mut cold: Vec<(String, &str, usize)> = cold
        .into_iter()
        .map(|(name, path)| (name.to_owned(), path, 0))
        .collect();
    // The baseline build's cold starts, turn about with this one's.
    if baseline.is_some() {
        let of_this: Vec<(String, &str, usize)> = cold
            .iter()
            .filter(|(_, path, _)| ["/wasm-cold", "/python-preinit-cold"].contains(path))
            .map(|(name, path, _)| (format!("{name} [baseline]"), *path, 1))
            .collect();
        cold.extend(of_this);
    }
    let mut cold_clients: Vec<Client> = std::iter::once(serve.addr)
        .chain(baseline.as_ref().map(|b| b.addr))
        .map(Client::new)
        .collect();
    let mut cold_lat: Vec<Vec<f64>> = vec![Vec::new(); cold.len()];
    for _ in 0..cold_n {
        for (i, (_, path, server)) in cold.iter().enumerate() {
            // Let the previous request's envelope go first.
            std::thread::sleep(Duration::from_millis(30));
            let path = &format!("{path}?text=to+be+or+not+to+be");
            let t = Instant::now();
            let r = cold_clients[*server].request("GET", path, &[], b"");
            if r.status == 200 {
                cold_lat[i].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    drop(cold_clients);
    drop(baseline);
    for (i, (name, _, _)) in cold.iter().enumerate() {
        let (median, _) = median_p95(&cold_lat[i]);
        rows.push(json!({"variant": name, "note": "scale to zero after every request; one client",
            "requests": cold_lat[i].len(), "errors": cold_n - cold_lat[i].len(), "rps": 1e3 / median,
            "p50_ms": percentile(&cold_lat[i], 0.5), "p99_ms": percentile(&cold_lat[i], 0.99)}));
    }
    let log = serve.log();
    let cold_starts = log.iter().filter(|l| l["cold"] == true).count();
    drop(serve);

    // The strict tier with one envelope keeper (the default is one per
    // CPU): how far making envelopes side by side carries.
    let one_dir = env.tmp.path().join("one-keeper");
    manifest(
        &one_dir,
        "wasm-strict-nopool",
        &format!("module = {cgi_wasm:?}\n{common}isolation = \"envelope\"\npool = 0\n"),
    );
    let one = Serve::start(&env, &one_dir, &["--keepers", "1"])
        .map_err(|f| anyhow::anyhow!("amphi serve --keepers 1: {}", f.stderr))?;
    let l = load(one.addr, "/wasm-strict-nopool", clients, secs);
    rows.push(row(
        "amphi serve, wasm CGI (strict, no pool, 1 keeper)",
        "envelope made, used once, deleted; one envelope keeper",
        &[l],
    ));
    drop(one);

    let wasmtime_row = match &wasmtime_bin {
        None => {
            json!({"skipped": "not built: the smoke pass, or WASMTIME set empty (a full run builds wasmtime-cli, or set WASMTIME to one)"})
        }
        Some(bin) => {
            let version = Command::new(bin)
                .arg("--version")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            row(
                &format!("wasmtime serve ({version})"),
                "component instance per request, no envelope; loaded in the warm rounds",
                &warm_loads[wasmtime_at],
            )
        }
    };
    drop(reference);
    let stat = |variant: &str, key: &str| {
        rows.iter()
            .find(|r| r["variant"] == variant)
            .and_then(|r| r[key].as_f64())
            .unwrap_or(f64::NAN)
    };
    let rps = |variant: &str| stat(&format!("amphi serve, {variant}"), "rps");
    let p50 = |variant: &str| stat(&format!("amphi serve, {variant}"), "p50_ms");
    let mut ratios = json!({
        "wasm_over_native_rps_warm": rps("wasm CGI (warm)") / rps("native CGI (warm)"),
        "wasm_over_native_p50_cold": p50("wasm CGI (cold)") / p50("native CGI (cold)"),
        "strict_pool_over_nopool_rps": rps("wasm CGI (strict, pool 8)") / rps("wasm CGI (strict, no pool)"),
        "http_reuse_over_instance_rps": rps("wasi:http (warm, isolation reuse)") / rps("wasi:http (warm)"),
        "userns_over_hostns_rps_warm": rps("wasm CGI (warm)") / rps("wasm CGI (warm, no user namespace)"),
        "userns_over_hostns_rps_strict": rps("wasm CGI (strict, no pool)") / rps("wasm CGI (strict, no pool, no user namespace)"),
        "userns_over_hostns_p50_cold": p50("native CGI (cold)") / p50("native CGI (cold, no user namespace)"),
        "keepers_over_one_rps_strict": rps("wasm CGI (strict, no pool)") / rps("wasm CGI (strict, no pool, 1 keeper)"),
        "port_over_routed_rps_http": rps("wasi:http (warm, own port)") / rps("wasi:http (warm)"),
        "port_over_routed_rps_wasm_cgi": rps("wasm CGI (warm, own port)") / rps("wasm CGI (warm)"),
    });
    if python.is_some() {
        ratios["python_preinit_over_plain_rps_warm"] =
            json!(rps("Python function (warm, preinit)") / rps("Python function (warm)"));
        ratios["python_preinit_over_plain_p50_cold"] =
            json!(p50("Python function (cold, preinit)") / p50("Python function (cold)"));
        ratios["python_preinit_over_plain_p50_warm_one_client"] = json!(
            p50("Python function (warm, preinit, one client)")
                / p50("Python function (warm, one client)")
        );
    }
    if let Some(b) = &o.baseline {
        ratios["baseline"] = json!(world::version_of(b));
        for (key, variant) in [
            ("over_baseline_rps_wasm_cgi", "wasm CGI (warm)"),
            ("over_baseline_rps_http", "wasi:http (warm)"),
            (
                "over_baseline_rps_http_reuse",
                "wasi:http (warm, isolation reuse)",
            ),
        ] {
            ratios[key] = json!(rps(variant) / rps(&format!("{variant} [baseline]")));
        }
        for (key, variant) in [
            ("over_baseline_p50_wasm_cgi_cold", "wasm CGI (cold)"),
            (
                "over_baseline_p50_python_preinit_cold",
                "Python function (cold, preinit)",
            ),
        ] {
            ratios[key] = json!(p50(variant) / p50(&format!("{variant} [baseline]")));
        }
    }
    if let Some(rps) = wasmtime_row["rps"].as_f64() {
        ratios["amphi_http_over_wasmtime_serve_rps"] =
            json!(stat("amphi serve, wasi:http (warm)", "rps") / rps);
        ratios["amphi_http_reuse_over_wasmtime_serve_rps"] =
            json!(stat("amphi serve, wasi:http (warm, isolation reuse)", "rps") / rps);
        ratios["amphi_http_port_over_wasmtime_serve_rps"] =
            json!(stat("amphi serve, wasi:http (warm, own port)", "rps") / rps);
        ratios["amphi_http_reuse_port_over_wasmtime_serve_rps"] = json!(
            stat(
                "amphi serve, wasi:http (warm, isolation reuse, own port)",
                "rps"
            ) / rps
        );
        ratios["amphi_wasm_cgi_port_over_wasmtime_serve_rps"] =
            json!(stat("amphi serve, wasm CGI (warm, own port)", "rps") / rps);
    }
    Ok(
        json!({"clients": clients, "seconds_per_round": secs, "rounds": rounds,
              "variants": rows, "wasmtime_serve": wasmtime_row, "ratios": ratios,
              "cold_starts_logged": cold_starts}),
    )
}
