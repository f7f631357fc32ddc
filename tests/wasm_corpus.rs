//! Real third-party WASI programs (tests/src/corpus.rs), each run in an
//! amphi container from a cold cache and again from the cached artifact,
//! its output checked both times. A registry this machine cannot reach
//! skips its programs, saying so; anything else that goes wrong fails.

use amphi_tests::corpus::{bundle, fetch, Program, Unavailable, PROGRAMS};
use amphi_tests::Env;

fn program(name: &str) -> &'static Program {
    PROGRAMS.iter().find(|p| p.name == name).unwrap()
}

fn runs_cold_and_cached(name: &str) {
    let p = program(name);
    let fetched = match fetch(p) {
        Ok(dir) => dir,
        Err(Unavailable::Offline(why)) => {
            eprintln!(
                "SKIP corpus {name} ({}): registry unreachable: {why}",
                p.origin_text()
            );
            return;
        }
        Err(Unavailable::Broken(why)) => panic!("fetch {name}: {why}"),
    };
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
