//! Real third-party WASI programs (tests/src/corpus.rs), each run in an
//! amphi container from a cold cache and again from the cached artifact,
//! its output checked both times. A registry this machine cannot reach
//! skips its programs, saying so; anything else that goes wrong fails.

use std::path::PathBuf;

use amphi_tests::corpus::{bundle, fetch, Program, Unavailable, PROGRAMS, PYTHON_FUNCTION_ANSWER};
use amphi_tests::serve::{manifest, Serve};
use amphi_tests::Env;

fn program(name: &str) -> &'static Program {
    PROGRAMS.iter().find(|p| p.name == name).unwrap()
}

/// The program, fetched; None (saying why) when its registry is out of
/// reach.
fn fetched(p: &Program) -> Option<PathBuf> {
    match fetch(p) {
        Ok(dir) => Some(dir),
        Err(Unavailable::Offline(why)) => {
            eprintln!(
                "SKIP corpus {} ({}): registry unreachable: {why}",
                p.name,
                p.origin_text()
            );
            None
        }
        Err(Unavailable::Broken(why)) => panic!("fetch {}: {why}", p.name),
    }
}

fn runs_cold_and_cached(name: &str) {
    let p = program(name);
    let Some(fetched) = fetched(p) else { return };
    let env = Env::new();
    let cache = env.tmp.path().join("wasm-cache").display().to_string();
    let report = [("AMPHI_WASM_CACHE_REPORT", "1")];
    for (round, expect) in [
        ("cold", "wasm cache: Compiled"),
        ("cached", "wasm cache: Hit"),
    ] {
        let b = bundle(&env, p, &fetched, &format!("{name}-{round}"));
        b.write();
        let id = env.id(&format!("{name}-{round}"));
        let r = env.amphi_env(
            &report,
            &["--wasm-cache", &cache, "run", "--bundle", b.path(), &id],
        );
        assert_eq!(
            r.code, p.exit,
            "{name} {round}: exit {}\nstdout: {}\nstderr: {}",
            r.code, r.stdout, r.stderr
        );
        assert!(r.stderr.contains(expect), "{name} {round}: {}", r.stderr);
        for needle in p.stdout {
            assert!(
                r.stdout.contains(needle) || r.stderr.contains(needle),
                "{name} {round}: no {needle:?} in its output:\n{}\nstderr: {}",
                r.stdout,
                r.stderr
            );
        }
        if let Some((path, needle)) = p.writes {
            let written = std::fs::read_to_string(b.rootfs().join(&path[1..]))
                .unwrap_or_else(|e| panic!("{name} {round}: {path}: {e}"));
            assert!(
                written.contains(needle),
                "{name} {round}: {path}:\n{written}"
            );
        }
        env.assert_clean(&id, &b.cgroup());
    }
}

#[test]
fn corpus_yosys() {
    runs_cold_and_cached("yosys");
}

#[test]
fn corpus_boolector() {
    runs_cold_and_cached("boolector");
}

#[test]
fn corpus_silice() {
    runs_cold_and_cached("silice");
}

#[test]
fn corpus_esbuild() {
    runs_cold_and_cached("esbuild");
}

#[test]
fn corpus_ripgrep() {
    runs_cold_and_cached("ripgrep");
}

#[test]
fn corpus_rustpython() {
    runs_cold_and_cached("rustpython");
}

#[test]
fn corpus_python_function() {
    runs_cold_and_cached("python-function");
}

/// The Python function with `preinit = true` under `amphi serve`: the
/// interpreter's start and the handler's imports run once, when the server
/// compiles the module at start, and every cold envelope begins from that
/// snapshot and answers its own request. (Containers' pre-initialization,
/// the annotation, is tested with small guests in tests/wasm.rs; a second
/// 16 s snapshot of this module, for `amphi run`'s engine, would only add
/// time to the suite. The benchmark's wasm group starts it in containers.)
#[test]
fn corpus_python_function_starts_preinitialized() {
    let p = program("python-function");
    let Some(fetched) = fetched(p) else { return };
    let env = Env::new();
    let want = format!("preinitialized {PYTHON_FUNCTION_ANSWER}\n");
    // Scaled to zero after each request: every one makes its envelope,
    // which maps what the server compiled and snapshotted at start.
    let dir = env.tmp.path().join("functions");
    let module = fetched.join("python-function.wasm");
    manifest(
        &dir,
        "py",
        &format!("module = {module:?}\npreinit = true\nidle = \"0s\"\n"),
    );
    let report = [("AMPHI_WASM_CACHE_REPORT", "1")];
    let mut s = Serve::start_with_env(&env, &dir, &[], &report).unwrap();
    for _ in 0..2 {
        assert!(
            amphi_tests::wait_for(20, || s.envelopes(&env).is_empty()),
            "the idle envelope is still there"
        );
        let r = s.get("/py?text=to+be+or+not+to+be");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), want);
    }
    let r = s.get("/py?text=a+b+a");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains(r#""words": 3"#), "{}", r.text());
    let cold = s.log().iter().filter(|l| l["cold"] == true).count();
    assert!(cold >= 2, "{}", s.log_text());
    // Snapshotted once, by the server; no envelope compiles again.
    let compiled = s.log_text().matches("wasm cache: Compiled").count();
    assert_eq!(compiled, 1, "{}", s.log_text());
    assert!(
        !s.log_text().contains("wasm cache: Recompiled"),
        "{}",
        s.log_text()
    );
    assert_eq!(s.stop(), Some(0));
    s.assert_clean(&env);
}

#[test]
fn the_corpus_covers_four_toolchains_and_six_programs() {
    assert!(PROGRAMS.len() >= 6);
    let has = |t: &str| PROGRAMS.iter().any(|p| p.toolchain.contains(t));
    for toolchain in [
        "C,",
        "C++",
        "Rust",
        "Go",
        "garbage-collected",
        "wasm exceptions",
    ] {
        assert!(has(toolchain), "no {toolchain} program");
    }
}
