//! A tiny pass of the whole harness, so that it cannot rot: every group
//! runs, every output is written, and the numbers are plausible.

#[test]
fn harness_runs_end_to_end() {
    let out = tempfile::tempdir().unwrap();
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_amphi-bench"))
        .args(["all", "--smoke", "--out"])
        .arg(out.path())
        .status()
        .unwrap();
    assert!(st.success(), "amphi-bench all --smoke failed");
    for f in [
        "results.json",
        "summary.md",
        "start.csv",
        "start.svg",
        "split.csv",
        "split.svg",
        "throughput.csv",
        "throughput.svg",
        "memory.csv",
        "memory.svg",
        "compute.csv",
        "compute.svg",
        "wasm.csv",
    ] {
        assert!(out.path().join(f).exists(), "{f} not written");
    }
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    let variants = r["start"]["variants"].as_array().unwrap();
    for name in [
        "amphi, pod bundle",
        "runc, pod bundle",
        "amphi, pod bundle, cgroup2",
        "amphi native",
        "runc native",
        "amphi wasm (cached)",
        "kernel floor",
        "kernel floor, cgroup2",
    ] {
        let v = variants.iter().find(|v| v["variant"] == name).unwrap();
        let median = v["median_ms"].as_f64().unwrap();
        assert!(median > 0.0 && median < 10_000.0, "{name}: {median} ms");
    }
    let targets = r["start"]["targets"].as_array().unwrap();
    assert!(
        targets.iter().any(|t| t["what"]
            .as_str()
            .is_some_and(|w| w.starts_with("pod bundle, v1 controllers"))
            && t["value"].as_f64().is_some_and(|v| v > 0.0)),
        "{targets:?}"
    );
    for row in r["throughput"]["rows"].as_array().unwrap() {
        for k in ["amphi", "runc"] {
            assert!(row["per_s"][k].as_f64().is_some_and(|x| x > 0.0), "{row}");
        }
    }
    let workloads = r["compute"]["workloads"].as_array().unwrap();
    for w in ["sha256", "json_parse", "sort", "file_write", "file_read"] {
        let row = workloads.iter().find(|x| x["workload"] == w).unwrap();
        assert!(row["wasm_over_native"].as_f64().unwrap() > 0.0, "{w}");
    }
    assert!(r["memory"]["idle"][1]["pss_mib"].as_f64().unwrap() > 0.0);
    let shim = &r["shim"]["variants"][0]["median_ms"];
    assert!(
        shim.as_f64().is_some_and(|m| m > 0.0),
        "shim group: {}",
        r["shim"]
    );
    for row in r["shim"]["throughput"]["rows"].as_array().unwrap() {
        for k in [
            "amphi shim, native",
            "runc shim, native",
            "amphi shim, wasm",
        ] {
            assert!(row["per_s"][k].as_f64().is_some_and(|x| x > 0.0), "{row}");
        }
    }
    assert!(out.path().join("shim_throughput.svg").exists());
    for v in r["serve"]["variants"].as_array().unwrap() {
        assert!(v["requests"].as_u64().unwrap() > 0, "serve: {v}");
        assert_eq!(v["errors"], 0, "serve: {v}");
    }
    assert!(out.path().join("serve.svg").exists());
    // The smoke pass starts one small real program, unless its registry is
    // unreachable (then it says so).
    let wasm = &r["wasm"];
    let started = wasm["programs"].as_array().unwrap().iter().any(|p| {
        p["first_start_ms"].as_f64().unwrap() > 0.0 && p["cached_start_ms"].as_f64().unwrap() > 0.0
    });
    assert!(
        started || !wasm["skipped"].as_array().unwrap().is_empty(),
        "{wasm}"
    );
    // Memory of a running pod, per part, and the density pass.
    for v in r["pods"]["variants"].as_array().unwrap() {
        let m = &v["memory_mib"];
        for k in ["shim_pss", "pause_pss", "containers_pss", "total_rss"] {
            assert!(m[k].as_f64().is_some_and(|x| x > 0.0), "pods {k}: {v}");
        }
    }
    for row in r["density"]["rows"].as_array().unwrap() {
        assert_eq!(row["pods"], row["asked"], "density: {row}");
        assert!(
            row["pss_mib_per_pod"].as_f64().is_some_and(|x| x > 0.0),
            "{row}"
        );
    }
    let svg = std::fs::read_to_string(out.path().join("start.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("amphi native"));
}
