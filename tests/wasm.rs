//! The wasm executor: WebAssembly workloads in the same envelope, through
//! the same CLI.

use std::time::{Duration, Instant};

use amphi_tests::{cgroup_dirs, wait_for, Env};
use serde_json::json;

fn run(
    env: &Env,
    name: &str,
    args: &[&str],
    patch: impl FnOnce(&mut amphi_tests::Bundle),
) -> (amphi_tests::Run, String, String) {
    let mut b = env.wasm_bundle(name, args);
    patch(&mut b);
    b.write();
    let id = env.id(name);
    let r = env.amphi(&["run", "--bundle", b.path(), &id]);
    (r, id, b.cgroup())
}

#[test]
fn hello_module_and_component_without_annotation() {
    let env = Env::new();
    for (name, module) in [
        ("mod", "/app/hello.wasm"),
        ("comp", "/app/hello-component.wasm"),
    ] {
        let (r, id, cg) = run(&env, name, &[module], |_| {});
        r.ok();
        assert_eq!(r.stdout, "hello from wasm\n");
        env.assert_clean(&id, &cg);
    }
}

/// `amphi` has no engine linked in: alone, without `amphi-wasm` beside
/// it, it still runs a native bundle, and refuses a wasm one, `exec` of a
/// module and `serve` by naming what to install, leaving nothing behind.
/// Beside it, the wasm bundle is handed over once and runs.
#[test]
fn amphi_hands_wasm_to_amphi_wasm_beside_it() {
    let alone = tempfile::tempdir().unwrap();
    let amphi_alone = alone.path().join("amphi");
    std::fs::copy(amphi_tests::amphi_bin(), &amphi_alone).unwrap();
    let env = Env::for_runtime(amphi_alone);

    let native = env.bundle("native", &["echo", "native"]);
    native.write();
    let id = env.id("native");
    let r = env.amphi(&["run", "--bundle", native.path(), &id]);
    assert_eq!(r.ok().stdout, "native\n");
    env.assert_clean(&id, &native.cgroup());

    let (r, id, cg) = run(&env, "alone", &["/app/hello.wasm"], |_| {});
    r.fails_with("a WebAssembly workload needs")
        .fails_with("amphi-wasm");
    assert_eq!(r.stdout, "");
    env.assert_clean(&id, &cg);

    let sleeper = env.bundle("sleeper", &["sleep", "600"]);
    sleeper.write();
    let id = env.id("sleeper");
    env.amphi(&["run", "-d", "--bundle", sleeper.path(), &id])
        .ok();
    std::fs::copy(
        amphi_tests::guests_dir().join("hello.wasm"),
        sleeper.rootfs().join("hello.wasm"),
    )
    .unwrap();
    env.amphi(&["exec", &id, "/hello.wasm"])
        .fails_with("amphi-wasm");
    env.amphi(&["exec", &id, "true"]).ok();
    env.amphi(&["delete", "--force", &id]).ok();
    env.assert_clean(&id, &sleeper.cgroup());

    env.amphi(&["serve", "--functions", "/nonexistent"])
        .fails_with("amphi serve needs")
        .fails_with("amphi-wasm");

    let env = Env::new();
    let (r, id, cg) = run(&env, "handed", &["/app/hello.wasm"], |_| {});
    let b = env.wasm_bundle("debug", &["/app/hello.wasm"]);
    b.write();
    let debug_id = env.id("debug");
    let debug = env.amphi(&["--debug", "run", "--bundle", b.path(), &debug_id]);
    assert_eq!(r.ok().stdout, "hello from wasm\n");
    assert_eq!(debug.ok().stdout, "hello from wasm\n");
    assert_eq!(
        debug.stderr.matches("hand off to amphi-wasm").count(),
        1,
        "{}",
        debug.stderr
    );
    env.assert_clean(&id, &cg);
    env.assert_clean(&debug_id, &b.cgroup());
}

/// `amphi` is what clients start three times per container, and the
/// engine costs every start: wasmtime's compiler, WASI's host side and
/// the function host's async runtime belong to `amphi-wasm` alone. A
/// reference from `amphi`'s own paths to any of them would link it all
/// back in, and only a benchmark would notice.
#[test]
fn amphi_links_no_engine() {
    let symbols = |bin: &std::path::Path| {
        let out = std::process::Command::new("nm")
            .arg(bin)
            .output()
            .expect("nm (binutils)");
        assert!(out.status.success(), "nm {}", bin.display());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let amphi = amphi_tests::amphi_bin();
    let lean = symbols(&amphi);
    let full = symbols(&amphi.with_file_name("amphi-wasm"));
    for name in ["cranelift_codegen", "wasmtime_wasi", "5tokio"] {
        let (in_lean, in_full) = (lean.matches(name).count(), full.matches(name).count());
        assert!(
            in_full > 1000,
            "amphi-wasm has {in_full} {name} symbols: is this nm's format?"
        );
        assert!(
            in_lean * 100 < in_full,
            "amphi links {name}: {in_lean} symbols (amphi-wasm: {in_full})"
        );
    }
}

#[test]
fn state_records_the_executor() {
    let env = Env::new();
    let mut b = env.wasm_bundle("st", &["/app/spin.wasm"]);
    b.spec["annotations"] = json!({"run.oci.handler": "wasm"});
    b.write();
    let id = env.id("st");
    env.amphi(&["create", "--bundle", b.path(), &id]).ok();
    let s = env.state(&id);
    assert_eq!(s["executor"], "wasm");
    // runtime.md, State: the annotations are the config's, nothing added.
    assert_eq!(s["annotations"], json!({"run.oci.handler": "wasm"}));
    env.amphi(&["delete", &id]).ok();
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn args_and_env_are_the_specs_only() {
    let env = Env::new();
    std::env::set_var("AMPHI_HOST_SECRET", "leak");
    let (r, id, cg) = run(
        &env,
        "args",
        &["/app/probe.wasm", "args", "two words", "x"],
        |_| {},
    );
    r.ok();
    assert_eq!(r.stdout, "/app/probe.wasm|args|two words|x\n");
    env.assert_clean(&id, &cg);
    let (r, id, cg) = run(&env, "env", &["/app/probe.wasm", "env"], |b| {
        b.spec["process"]["env"] = json!(["A=1", "B=two words"]);
    });
    r.ok();
    assert_eq!(r.stdout, "A=1\nB=two words\n");
    env.assert_clean(&id, &cg);
}

#[test]
fn files_inside_the_rootfs_and_nothing_outside() {
    let env = Env::new();
    let secret = env.tmp.path().join("host-secret");
    std::fs::write(&secret, "host data").unwrap();
    let mut b = env.wasm_bundle("fs", &["/app/probe.wasm", "read", "/etc/passwd"]);
    std::os::unix::fs::symlink(&secret, b.rootfs().join("app/abslink")).unwrap();
    std::os::unix::fs::symlink("../../../../../../..", b.rootfs().join("app/uplink")).unwrap();
    b.write();
    let id = env.id("fs");
    let r = env.amphi(&["run", "--bundle", b.path(), &id]);
    r.ok();
    assert!(r.stdout.starts_with("root:x:0:0"), "{}", r.stdout);
    let mut escape_via = |path: String| {
        b.spec["process"]["args"] = json!(["/app/probe.wasm", "read", path]);
        b.write();
        let r = env.amphi(&["run", "--bundle", b.path(), &id]);
        assert!(
            !r.stdout.contains("host data"),
            "read a host file through {}",
            r.stdout
        );
        assert_eq!(r.code, 2, "{} {}", r.stdout, r.stderr);
    };
    escape_via("/app/abslink".into());
    escape_via(format!("/app/uplink{}", secret.display()));
    escape_via(format!("/../../../..{}", secret.display()));
    // Writes land in the rootfs.
    b.spec["process"]["args"] = json!(["/app/probe.wasm", "write", "/tmp/out.txt", "from guest"]);
    b.write();
    env.amphi(&["run", "--bundle", b.path(), &id]).ok();
    assert_eq!(
        std::fs::read_to_string(b.rootfs().join("tmp/out.txt")).unwrap(),
        "from guest"
    );
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn readonly_root_and_masked_paths_hold_for_wasm() {
    let env = Env::new();
    let (r, id, cg) = run(&env, "ro", &["/app/probe.wasm", "write", "/x", "y"], |b| {
        b.spec["root"]["readonly"] = json!(true);
    });
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(r.stdout.contains("error"), "{}", r.stdout);
    env.assert_clean(&id, &cg);
    let (r, id, cg) = run(
        &env,
        "mask",
        &["/app/probe.wasm", "ls", "/etc/secret"],
        |b| {
            std::fs::create_dir_all(b.rootfs().join("etc/secret")).unwrap();
            std::fs::write(b.rootfs().join("etc/secret/key"), "k").unwrap();
            b.spec["linux"]["maskedPaths"]
                .as_array_mut()
                .unwrap()
                .push(json!("/etc/secret"));
        },
    );
    r.ok();
    assert_eq!(r.stdout, "\n", "masked directory visible to the guest");
    env.assert_clean(&id, &cg);
}

#[test]
fn exit_codes_and_traps() {
    let env = Env::new();
    let (r, id, cg) = run(&env, "exit", &["/app/probe.wasm", "exit", "7"], |_| {});
    assert_eq!(r.code, 7);
    env.assert_clean(&id, &cg);
    let (r, id, cg) = run(&env, "trap", &["/app/trap.wasm"], |_| {});
    assert_eq!(r.code, 134, "{}", r.stderr);
    assert!(r.stdout.contains("about to trap"));
    assert!(
        r.stderr.contains("trapped") && r.stderr.contains("unreachable"),
        "{}",
        r.stderr
    );
    env.assert_clean(&id, &cg);
}

#[test]
fn term_stops_a_spinning_guest_quickly() {
    let env = Env::new();
    let b = env.wasm_bundle("spin", &["/app/spin.wasm"]);
    b.write();
    let id = env.id("spin");
    let mut child = env
        .command(&["run", "--bundle", b.path(), &id])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 9];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut buf).unwrap();
    assert_eq!(&buf, b"spinning\n");
    let pid = env.state(&id)["pid"].as_i64().unwrap() as i32;
    let sent = Instant::now();
    env.amphi(&["kill", &id, "TERM"]).ok();
    while std::path::Path::new(&format!("/proc/{pid}/status")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
        && sent.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = sent.elapsed();
    // The guest never calls the host: only the signal can have ended it.
    assert_eq!(child.wait().unwrap().code(), Some(128 + 15));
    eprintln!("TERM to stop: {took:?}");
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn memory_limit_caps_linear_memory() {
    let env = Env::new();
    let (r, id, cg) = run(&env, "mem", &["/app/alloc.wasm"], |b| {
        b.spec["linux"]["resources"] = json!({"memory": {"limit": 67108864}});
    });
    // The guest sees an allocation failure; the cgroup never OOM-kills it.
    r.ok();
    let mib: u64 = r
        .stdout
        .strip_prefix("allocation failed after ")
        .and_then(|s| s.trim().strip_suffix(" MiB"))
        .unwrap_or_else(|| panic!("{}", r.stdout))
        .parse()
        .unwrap();
    assert!((32..64).contains(&mib), "{mib} MiB under a 64 MiB limit");
    env.assert_clean(&id, &cg);
}

#[test]
fn cpu_quota_throttles_the_guest() {
    // What the kernel accounts, not how long it took: with a 20% quota the
    // guest's cgroup is throttled and its CPU time stays within the quota
    // of the periods it ran; without one it is never throttled.
    let env = Env::new();
    let mut n = 0;
    let mut accounted = |quota: Option<i64>| -> (u64, u64, u64) {
        n += 1;
        let mut b = env.wasm_bundle(&format!("cpu{n}"), &["/app/cpu.wasm", "20"]);
        if let Some(q) = quota {
            b.spec["linux"]["resources"] = json!({"cpu": {"quota": q, "period": 100000}});
        }
        b.write();
        let id = env.id(&format!("cpu{n}"));
        env.amphi(&["create", "--bundle", b.path(), &id]).ok();
        env.amphi(&["start", &id]).ok();
        assert!(wait_for(120, || env.status(&id).as_deref() == Some("stopped")));
        // The stopped container's cgroup stays until delete: read it now.
        let stat = cgroup_dirs(&b.cgroup())
            .iter()
            .find_map(|d| {
                let s = std::fs::read_to_string(d.join("cpu.stat")).ok()?;
                s.contains("nr_throttled").then_some(s)
            })
            .expect("cpu.stat of the container's cgroup");
        let field = |k: &str| -> u64 {
            stat.lines()
                .find_map(|l| l.strip_prefix(k)?.trim().parse().ok())
                .unwrap_or(0)
        };
        let usage_ns = cgroup_dirs(&b.cgroup())
            .iter()
            .find_map(|d| {
                let v1 = std::fs::read_to_string(d.join("cpuacct.usage")).ok();
                let v2 = std::fs::read_to_string(d.join("cpu.stat"))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("usage_usec "))
                            .map(|u| format!("{}000", u.trim()))
                    });
                v1.or(v2)?.trim().parse().ok()
            })
            .expect("the cgroup's CPU usage");
        env.amphi(&["delete", &id]).ok();
        env.assert_clean(&id, &b.cgroup());
        (field("nr_periods "), field("nr_throttled "), usage_ns)
    };
    let (_, free_throttled, _) = accounted(None);
    let (periods, throttled, usage_ns) = accounted(Some(20_000));
    eprintln!("20% quota: {throttled} of {periods} periods throttled, {usage_ns} ns of CPU");
    assert_eq!(free_throttled, 0, "no quota, no throttling");
    assert!(
        throttled > 0,
        "a 20% quota throttles a busy guest ({periods} periods)"
    );
    // 20 ms a 100 ms period, with two periods of slack for the kernel's
    // bandwidth slices.
    assert!(
        usage_ns <= (periods + 2) * 20_000_000,
        "{usage_ns} ns of CPU in {periods} periods of 20 ms"
    );
}

#[test]
fn guest_is_pid1_of_its_namespace_and_in_its_cgroup() {
    let env = Env::new();
    let b = env.wasm_bundle("ns", &["/app/spin.wasm"]);
    b.write();
    let id = env.id("ns");
    env.amphi(&["run", "--detach", "--bundle", b.path(), &id])
        .ok();
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    for ns in ["pid", "mnt", "net", "uts", "ipc", "cgroup"] {
        let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let guest = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_ne!(host, guest, "guest shares the host's {ns} namespace");
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.trim_end().ends_with("\t1"), "{nspid}");
    for dir in cgroup_dirs(&b.cgroup()) {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if dir.join("cgroup.procs").exists() && !dir.starts_with("/sys/fs/cgroup/unified") {
            assert!(
                procs.lines().any(|l| l == pid.to_string()),
                "{pid} not in {}",
                dir.display()
            );
        }
    }
    env.amphi(&["delete", "--force", &id]).ok();
    assert!(wait_for(5, || !std::path::Path::new(&format!(
        "/proc/{pid}/cmdline"
    ))
    .exists()
        || {
            amphi_tests::reap_inits();
            false
        }));
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn second_start_compiles_nothing_and_corruption_recovers() {
    let env = Env::new();
    let b = env.wasm_bundle("cache", &["/app/hello.wasm"]);
    b.write();
    let report = [("AMPHI_WASM_CACHE_REPORT", "1")];
    let start = |n: usize| {
        let id = env.id(&format!("cache{n}"));
        let r = env.amphi_env(&report, &["run", "--bundle", b.path(), &id]);
        r.ok();
        assert_eq!(r.stdout, "hello from wasm\n");
        env.assert_clean(&id, &b.cgroup());
        r.stderr
    };
    assert!(start(0).contains("wasm cache: Compiled"));
    assert!(start(1).contains("wasm cache: Hit"));
    let entry = artifacts(&env.root.join("wasm-cache")).pop().unwrap();
    let mut data = std::fs::read(&entry).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x5a;
    std::fs::write(&entry, &data).unwrap();
    assert!(start(2).contains("wasm cache: Recompiled"));
    std::fs::write(&entry, b"garbage").unwrap();
    assert!(start(3).contains("wasm cache: Recompiled"));
    assert!(start(4).contains("wasm cache: Hit"));
}

#[test]
fn bad_wasm_bundles_fail_at_create_and_leave_nothing() {
    let env = Env::new();
    let cases: [(&str, &[u8], &str); 5] = [
        (
            "invalid",
            b"\0asm\x01\0\0\0\x01\xff\xff\xff",
            "process.args[0]",
        ),
        (
            "import",
            b"(module (import \"env\" \"foo\" (func)) (func (export \"_start\")))",
            "env::foo",
        ),
        ("world", b"(component)", "wasi:cli/command"),
        (
            "exports",
            b"(component (core module $m (func (export \"f\"))) (core instance $i (instantiate $m)) \
              (func $f (canon lift (core func $i \"f\"))) (export \"hello\" (func $f)))",
            "(it exports [hello])",
        ),
        (
            "text",
            b"#!/bin/sh\necho native\n",
            "not a WebAssembly module",
        ),
    ];
    for (name, body, needle) in cases {
        let mut b = env.wasm_bundle(name, &["/app/x.wasm"]);
        std::fs::write(b.rootfs().join("app/x.wasm"), body).unwrap();
        b.spec["annotations"] = json!({"module.wasm.image/variant": "compat"});
        b.write();
        let id = env.id(name);
        env.amphi(&["create", "--bundle", b.path(), &id])
            .fails_with(needle);
        env.assert_clean(&id, &b.cgroup());
    }
    // compat on a native entrypoint, and a missing module.
    for (name, arg0, needle) in [
        ("native", "/bin/sh", "not a WebAssembly module"),
        ("missing", "/app/nope.wasm", "/app/nope.wasm"),
    ] {
        let mut b = env.wasm_bundle(name, &[arg0]);
        b.spec["annotations"] = json!({"module.wasm.image/variant": "compat"});
        b.write();
        let id = env.id(name);
        env.amphi(&["create", "--bundle", b.path(), &id])
            .fails_with(needle);
        env.assert_clean(&id, &b.cgroup());
    }
}

#[test]
fn smart_annotation_runs_native_sidecars_natively() {
    let env = Env::new();
    for (name, arg0, out) in [
        ("smartw", "/app/hello.wasm", "hello from wasm\n"),
        ("smartn", "/bin/echo", "\n"),
    ] {
        let mut b = env.wasm_bundle(name, &[arg0]);
        b.spec["annotations"] = json!({"module.wasm.image/variant": "compat-smart"});
        b.write();
        let id = env.id(name);
        let r = env.amphi(&["run", "--bundle", b.path(), &id]);
        r.ok();
        assert_eq!(r.stdout, out);
        env.assert_clean(&id, &b.cgroup());
    }
}

#[test]
fn wasm_lifecycle_with_hooks() {
    let env = Env::new();
    let log = env.tmp.path().join("hooks.log");
    let mut b = env.wasm_bundle("life", &["/app/spin.wasm"]);
    let hook = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("read -r s; echo {name} >> {}", log.display())]});
    b.spec["hooks"] = json!({"createRuntime": [hook("createRuntime")], "poststart": [hook("poststart")], "poststop": [hook("poststop")]});
    b.write();
    let id = env.id("life");
    env.amphi(&["create", "--bundle", b.path(), &id]).ok();
    assert_eq!(env.status(&id).as_deref(), Some("created"));
    env.amphi(&["start", &id]).ok();
    assert_eq!(env.status(&id).as_deref(), Some("running"));
    env.amphi(&["delete", &id]).fails_with("is running");
    env.amphi(&["kill", &id, "TERM"]).ok();
    assert!(wait_for(5, || env.status(&id).as_deref() == Some("stopped")));
    env.amphi(&["delete", &id]).ok();
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "createRuntime\npoststart\npoststop\n"
    );
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn wat_text_modules_run() {
    let env = Env::new();
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (data (i32.const 16) "hello from wat\n")
      (func (export "_start")
        (i32.store (i32.const 0) (i32.const 16))
        (i32.store (i32.const 4) (i32.const 15))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
        (call $exit (i32.const 3))))"#;
    let mut b = env.wasm_bundle("wat", &["/app/hello.wat"]);
    std::fs::write(b.rootfs().join("app/hello.wat"), wat).unwrap();
    b.spec["annotations"] = json!({"module.wasm.image/variant": "compat-smart"});
    b.write();
    let id = env.id("wat");
    let r = env.amphi(&["run", "--bundle", b.path(), &id]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(r.stdout, "hello from wat\n");
    env.assert_clean(&id, &b.cgroup());
    // A text module is accepted wherever a binary one is: in checkpointable
    // form too, with no byte array in any message.
    let mut b = env.wasm_bundle("watcp", &["/app/hello.wat"]);
    std::fs::write(b.rootfs().join("app/hello.wat"), wat).unwrap();
    b.spec["annotations"] = json!({"module.wasm.image/variant": "compat",
        "io.github.amphi.checkpoint": "true"});
    b.write();
    let id = env.id("watcp");
    let r = env.amphi(&["run", "--bundle", b.path(), &id]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(r.stdout, "hello from wat\n");
    assert!(!r.stderr.contains("[0x"), "{}", r.stderr);
    env.assert_clean(&id, &b.cgroup());
}

/// `proc_exit(N)` is the guest's own exit for every status a process can
/// have: 126 and up too (AssemblyScript's `abort()` is `proc_exit(255)`),
/// where wasmtime-wasi's refusal read as a trap (134).
#[test]
fn proc_exit_gives_every_status_a_process_can_have() {
    let env = Env::new();
    for (status, want) in [
        (0, 0),
        (125, 125),
        (126, 126),
        (255, 255),
        (256, 1),
        (70000, 1),
    ] {
        let name = format!("exit{status}");
        let (r, id, cg) = run(
            &env,
            &name,
            &["/app/probe.wasm", "exit", &status.to_string()],
            |_| {},
        );
        assert_eq!(r.code, want, "proc_exit({status}): {}", r.stderr);
        assert!(
            !r.stderr.contains("trapped"),
            "proc_exit({status}): {}",
            r.stderr
        );
        if status > 255 {
            assert!(
                r.stderr.contains(&format!("status {status}")),
                "{}",
                r.stderr
            );
        }
        env.assert_clean(&id, &cg);
    }
}

/// The guest's preopens as `wasmtime run --dir HOST::GUEST` gives them:
/// none at all, or container directories under names of their own; the
/// default stays the container's `/`. A path that is missing or a file is
/// refused at create, naming the annotation and the path.
#[test]
fn the_guests_directories_come_from_an_annotation() {
    let env = Env::new();
    let annotate = |dirs: &'static str| {
        move |b: &mut amphi_tests::Bundle| {
            std::fs::create_dir_all(b.rootfs().join("data")).unwrap();
            std::fs::write(b.rootfs().join("data/in-data"), "from data\n").unwrap();
            b.spec["annotations"] = json!({"io.github.amphi.wasm.dirs": dirs});
        }
    };
    // Named: the container's /data is the guest's /mnt, and only that.
    let (r, id, cg) = run(
        &env,
        "named",
        &["/app/probe.wasm", "read", "/mnt/in-data"],
        annotate("/data::/mnt"),
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "from data\n"),
        "{}",
        r.stderr
    );
    env.assert_clean(&id, &cg);
    let (r, id, cg) = run(
        &env,
        "narrow",
        &["/app/probe.wasm", "read", "/etc/passwd"],
        annotate("/data::/mnt"),
    );
    assert_eq!(r.code, 2, "the root is not preopened: {}", r.stdout);
    env.assert_clean(&id, &cg);
    // The path as its own name.
    let (r, id, cg) = run(
        &env,
        "same",
        &["/app/probe.wasm", "ls", "/data"],
        annotate("/data"),
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "in-data\n"),
        "{}",
        r.stderr
    );
    env.assert_clean(&id, &cg);
    // None at all.
    let (r, id, cg) = run(&env, "none", &["/app/probe.wasm", "ls", "/"], annotate(""));
    assert_eq!(r.code, 2, "no preopen: {}", r.stdout);
    env.assert_clean(&id, &cg);
    // Missing, a file, or relative: refused at create.
    for (name, dirs, needle) in [
        ("missing", "/nope::/x", "/nope"),
        ("file", "/etc/passwd", "not a directory"),
        ("relative", "data", "absolute"),
    ] {
        let (r, id, cg) = run(&env, name, &["/app/probe.wasm", "ls", "/"], annotate(dirs));
        assert_ne!(r.code, 0, "{name}");
        assert!(
            r.stderr.contains("io.github.amphi.wasm.dirs") && r.stderr.contains(needle),
            "{name}: {}",
            r.stderr
        );
        env.assert_clean(&id, &cg);
    }
}

/// A module that exports Wizer's initialization function, run with
/// `io.github.amphi.preinit=true`: the initialization runs once, when amphi
/// compiles the module, and each start begins from its snapshot (the same
/// table, not built again); a second start compiles and initializes
/// nothing. Without the annotation the module initializes itself.
#[test]
fn a_preinitialized_module_starts_from_its_snapshot() {
    let env = Env::new();
    let preinit = |b: &mut amphi_tests::Bundle| {
        b.spec["annotations"] = json!({"io.github.amphi.preinit": "true"});
    };
    let (r, id, cg) = run(&env, "plain", &["/app/preinit.wasm"], |_| {});
    assert_eq!(r.code, 0, "{}", r.stderr);
    let table = r.stdout.strip_prefix("cold ").expect("initialized itself");
    env.assert_clean(&id, &cg);
    // The same program as a component: Wizer's component support runs
    // its `wizer-initialize` export.
    for (n, module) in [
        "/app/preinit.wasm",
        "/app/preinit.wasm",
        "/app/preinit-component.wasm",
        "/app/preinit-component.wasm",
    ]
    .into_iter()
    .enumerate()
    {
        let mut b = env.wasm_bundle(&format!("pre{n}"), &[module]);
        preinit(&mut b);
        b.write();
        let id = env.id(&format!("pre{n}"));
        let r = env.amphi_env(&REPORT, &["--debug", "run", "--bundle", b.path(), &id]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(
            r.stdout.strip_prefix("preinitialized "),
            Some(table),
            "start {n}: {}",
            r.stdout
        );
        let first = n % 2 == 0;
        let initialized = r.stderr.contains("wasm: pre-initialize");
        assert_eq!(initialized, first, "start {n}: {}", r.stderr);
        assert!(
            r.stderr.contains(if first {
                "wasm cache: Compiled"
            } else {
                "wasm cache: Hit"
            }),
            "start {n}: {}",
            r.stderr
        );
        env.assert_clean(&id, &b.cgroup());
    }
}

/// An initialization that traps, outgrows the memory limit, calls an
/// import that is not WASI, or runs past its fuel (here a tenth of a
/// second's) fails create, naming the module and why, a component's
/// too; a module or component with nothing to run, or a budget that is
/// not a number, is refused. Nothing is left behind, not even a compiled
/// artifact.
#[test]
fn a_failed_preinitialization_fails_create_and_stores_nothing() {
    let env = Env::new();
    let module = |init: &str| {
        format!(
            "(module (import \"env\" \"secret\" (func $secret)) (memory (export \"memory\") 1) \
             (func (export \"wizer.initialize\") {init}) (func (export \"_start\")))"
        )
    };
    let cases = [
        ("trap", module("unreachable"), "unreachable"),
        (
            "grow",
            module("(drop (memory.grow (i32.const 4096)))"),
            "linux.resources.memory.limit (64 MiB)",
        ),
        ("import", module("call $secret"), "env::secret"),
        ("forever", module("(loop br 0)"), "without returning"),
        (
            "none",
            "(module (func (export \"_start\")))".to_owned(),
            "exports no initialization function",
        ),
        (
            "component",
            "(component)".to_owned(),
            "the component exports no initialization function",
        ),
        (
            "componenttrap",
            "(component (core module $m (func (export \"init\") unreachable)) \
             (core instance $i (instantiate $m)) \
             (func (export \"wizer-initialize\") (canon lift (core func $i \"init\"))))"
                .to_owned(),
            "unreachable",
        ),
    ];
    for (name, body, needle) in cases {
        let mut b = env.wasm_bundle(name, &["/app/x.wasm"]);
        std::fs::write(b.rootfs().join("app/x.wasm"), body).unwrap();
        b.spec["annotations"] = json!({
            "module.wasm.image/variant": "compat",
            "io.github.amphi.preinit": "true",
            "io.github.amphi.preinit.fuel": "100000000",
        });
        b.spec["linux"]["resources"] = json!({"memory": {"limit": 64 << 20}});
        b.write();
        let id = env.id(name);
        let r = env.amphi(&["create", "--bundle", b.path(), &id]);
        assert_ne!(r.code, 0, "{name}");
        assert!(
            r.stderr.contains("/app/x.wasm") && r.stderr.contains(needle),
            "{name}: {}",
            r.stderr
        );
        env.assert_clean(&id, &b.cgroup());
    }
    let mut b = env.wasm_bundle("fuel", &["/app/preinit.wasm"]);
    b.spec["annotations"] = json!({
        "io.github.amphi.preinit": "true",
        "io.github.amphi.preinit.fuel": "lots",
    });
    b.write();
    let id = env.id("fuel");
    env.amphi(&["create", "--bundle", b.path(), &id])
        .fails_with("io.github.amphi.preinit.fuel=\"lots\"");
    env.assert_clean(&id, &b.cgroup());
    assert_eq!(
        artifacts(&env.root.join("wasm-cache")),
        Vec::<std::path::PathBuf>::new()
    );
}

#[test]
fn guest_cannot_reach_the_runtime_binary_through_proc() {
    // The guest runs inside the amphi process (CVE-2019-5736 class): its
    // /proc/self/exe is amphi. WASI path resolution refuses magic links.
    let env = Env::new();
    let binary = std::fs::read(amphi_tests::amphi_bin()).unwrap();
    for (i, args) in [
        vec!["read", "/proc/self/exe"],
        vec!["read", "/proc/1/exe"],
        vec!["write", "/proc/self/exe", "overwritten"],
        vec!["read", "/proc/self/root/etc/passwd"],
        vec!["read", "/proc/self/cwd/etc/passwd"],
    ]
    .into_iter()
    .enumerate()
    {
        let mut argv = vec!["/app/probe.wasm"];
        argv.extend(&args);
        let (r, id, cg) = run(&env, &format!("exe{i}"), &argv, |_| {});
        assert_eq!(
            r.code,
            2,
            "{args:?} succeeded: {}",
            &r.stdout[..r.stdout.len().min(80)]
        );
        assert!(r.stdout.starts_with("error:"), "{args:?}: {}", r.stdout);
        env.assert_clean(&id, &cg);
    }
    assert!(
        std::fs::read(amphi_tests::amphi_bin()).unwrap() == binary,
        "runtime binary changed"
    );
}

#[test]
fn native_exec_into_a_wasm_container() {
    let env = Env::new();
    let mut b = env.wasm_bundle("wexec", &["/app/spin.wasm"]);
    b.spec["annotations"] = json!({"module.wasm.image/variant": "compat"});
    b.write();
    let id = env.id("wexec");
    env.amphi(&["run", "-d", "--bundle", b.path(), &id]).ok();
    // A shell from the rootfs runs natively beside the wasm guest (PID 1).
    let r = env.amphi(&[
        "exec",
        &id,
        "sh",
        "-c",
        "echo $$; cat /proc/1/cmdline | tr '\\0' ' '",
    ]);
    r.ok();
    // PID 1 is the wasm host (amphi's init, whose threads take pids too);
    // the shell is another process of the same pid namespace.
    let mut lines = r.stdout.lines();
    assert_ne!(lines.next(), Some("1"), "{}", r.stdout);
    assert!(lines.next().unwrap_or("").contains("amphi"), "{}", r.stdout);
    // A module exec'd into the container compiles once, from the host's
    // cache, though it prepares inside the container's mount namespace.
    let report = [("AMPHI_WASM_CACHE_REPORT", "1")];
    let r = env.amphi_env(&report, &["exec", &id, "/app/probe.wasm", "args", "x"]);
    r.ok();
    assert_eq!(r.stdout, "/app/probe.wasm|args|x\n");
    let r = env.amphi_env(&report, &["exec", &id, "/app/probe.wasm", "args", "x"]);
    r.ok();
    assert!(
        r.stderr.contains("Hit"),
        "the second exec compiled again: {}",
        r.stderr
    );
    env.amphi(&["delete", "--force", &id]).ok();
    env.assert_clean(&id, &b.cgroup());
}

/// The compiled artifacts in a cache directory (beside them: .sum, .lock).
fn artifacts(cache: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(cache)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.retain(|p| p.extension().is_some_and(|x| x == "cwasm"));
    found
}

const REPORT: [(&str, &str); 1] = [("AMPHI_WASM_CACHE_REPORT", "1")];

#[test]
fn concurrent_first_starts_compile_once() {
    let env = Env::new();
    let reports: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..4)
            .map(|n| {
                let env = &env;
                s.spawn(move || {
                    let name = format!("conc{n}");
                    let b = env.wasm_bundle(&name, &["/app/hello.wasm"]);
                    b.write();
                    let id = env.id(&name);
                    let r = env.amphi_env(&REPORT, &["run", "--bundle", b.path(), &id]);
                    r.ok();
                    assert_eq!(r.stdout, "hello from wasm\n");
                    env.assert_clean(&id, &b.cgroup());
                    r.stderr.clone()
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let count = |what: &str| reports.iter().filter(|r| r.contains(what)).count();
    assert_eq!(
        (count("wasm cache: Compiled"), count("wasm cache: Hit")),
        (1, 3),
        "{reports:#?}"
    );
    assert_eq!(artifacts(&env.root.join("wasm-cache")).len(), 1);
}

/// `wasm-cache list --format json` as (module size, in use) pairs, sorted.
fn cache_entries(env: &Env) -> Vec<(u64, bool)> {
    let r = env.amphi(&["wasm-cache", "list", "--format", "json"]);
    r.ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let mut entries: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["moduleSize"].as_u64().unwrap(),
                e["inUse"].as_bool().unwrap(),
            )
        })
        .collect();
    entries.sort();
    entries
}

#[test]
fn the_cache_cap_and_prune_spare_modules_in_use() {
    let env = Env::new();
    let size = |name: &str| {
        std::fs::metadata(amphi_tests::guests_dir().join(name))
            .unwrap()
            .len()
    };
    let (spin, hello, exit) = (size("spin.wasm"), size("hello.wasm"), size("trap.wasm"));
    let spinner = env.wasm_bundle("spinner", &["/app/spin.wasm"]);
    spinner.write();
    let spinner_id = env.id("spinner");
    env.amphi(&["run", "-d", "--bundle", spinner.path(), &spinner_id])
        .ok();
    assert_eq!(cache_entries(&env), vec![(spin, true)]);

    // A cap of one byte keeps only the module just compiled, and every
    // module a running guest maps.
    let capped = |name: &str, args: &[&str]| {
        let b = env.wasm_bundle(name, args);
        b.write();
        let id = env.id(name);
        env.amphi(&["--wasm-cache-max", "1", "run", "--bundle", b.path(), &id]);
        env.assert_clean(&id, &b.cgroup());
    };
    capped("hello", &["/app/hello.wasm"]);
    let mut want = vec![(spin, true), (hello, false)];
    want.sort();
    assert_eq!(cache_entries(&env), want);
    capped("trap", &["/app/trap.wasm"]);
    let mut want = vec![(spin, true), (exit, false)];
    want.sort();
    assert_eq!(cache_entries(&env), want);

    env.amphi(&["wasm-cache", "prune"])
        .ok()
        .stdout
        .starts_with("removed 1 compiled modules")
        .then_some(())
        .expect("prune removes the unused module only");
    assert_eq!(cache_entries(&env), vec![(spin, true)]);
    env.amphi(&["delete", "--force", &spinner_id]).ok();
    env.assert_clean(&spinner_id, &spinner.cgroup());
    env.amphi(&["wasm-cache", "prune"]).ok();
    assert_eq!(cache_entries(&env), vec![]);
    let leftovers: Vec<_> = std::fs::read_dir(env.root.join("wasm-cache"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn an_unusable_cache_warns_and_the_container_runs() {
    let env = Env::new();
    let b = env.wasm_bundle("nocache", &["/app/hello.wasm"]);
    b.write();
    let id = env.id("nocache");
    // A path below a regular file can never be created.
    let r = env.amphi(&[
        "--wasm-cache",
        "/dev/null/cache",
        "run",
        "--bundle",
        b.path(),
        &id,
    ]);
    r.ok();
    assert_eq!(r.stdout, "hello from wasm\n");
    assert!(
        r.stderr.contains("amphi: warning: wasm cache"),
        "{}",
        r.stderr
    );
    env.assert_clean(&id, &b.cgroup());
}

/// A module whose compilation needs far more memory than its container
/// may use: `functions` functions of `repeats` arithmetic steps each,
/// encoded directly (as text it would need a large parse first).
fn big_module(functions: u32, repeats: usize) -> Vec<u8> {
    fn leb(mut n: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(body.len() as u64, out);
        out.extend_from_slice(body);
    }
    // (local.get 0) (i64.const 7) (i64.mul) (local.get 0) (i64.rotl) (local.set 0)
    const STEP: [u8; 10] = [0x20, 0, 0x42, 7, 0x7e, 0x20, 0, 0x89, 0x21, 0];
    let mut body = vec![0u8]; // no locals beyond the parameter
    for _ in 0..repeats {
        body.extend_from_slice(&STEP);
    }
    body.extend_from_slice(&[0x20, 0, 0x0b]);

    let mut module = b"\0asm\x01\0\0\0".to_vec();
    // Types: 0 = (i64) -> i64, 1 = () -> ().
    section(1, &[2, 0x60, 1, 0x7e, 1, 0x7e, 0x60, 0, 0], &mut module);
    let mut funcs = Vec::new();
    leb(u64::from(functions) + 1, &mut funcs);
    funcs.extend(std::iter::repeat_n(0u8, functions as usize));
    funcs.push(1);
    section(3, &funcs, &mut module);
    let mut exports = vec![1, 6];
    exports.extend_from_slice(b"_start");
    exports.push(0);
    leb(u64::from(functions), &mut exports);
    section(7, &exports, &mut module);
    let mut code = Vec::new();
    leb(u64::from(functions) + 1, &mut code);
    for _ in 0..functions {
        leb(body.len() as u64, &mut code);
        code.extend_from_slice(&body);
    }
    code.extend_from_slice(&[2, 0, 0x0b]);
    section(10, &code, &mut module);
    module
}

#[test]
fn compiling_beyond_the_memory_limit_names_the_limit() {
    let env = Env::new();
    let mut b = env.wasm_bundle("bigc", &["/app/big.wasm"]);
    write_executable(&b.rootfs().join("app/big.wasm"), big_module(200, 4000));
    b.spec["linux"]["resources"] = json!({"memory": {"limit": 48 << 20}});
    b.write();
    let id = env.id("bigc");
    env.amphi(&["create", "--bundle", b.path(), &id])
        .fails_with("linux.resources.memory.limit");
    env.assert_clean(&id, &b.cgroup());
    assert!(artifacts(&env.root.join("wasm-cache")).is_empty());
}

#[test]
fn a_proposal_the_cli_leaves_off_is_named() {
    let env = Env::new();
    for (name, text, needle) in [
        (
            "pages",
            "(module (memory 1 (pagesize 1)) (func (export \"_start\")))",
            "custom page sizes proposal",
        ),
        (
            "legacy",
            "(module (tag) (func (export \"_start\") try nop catch 0 end))",
            "legacy_exceptions feature required",
        ),
    ] {
        let mut b = env.wasm_bundle(name, &["/app/x.wasm"]);
        write_executable(&b.rootfs().join("app/x.wasm"), text);
        b.spec["annotations"] = json!({"module.wasm.image/variant": "compat"});
        b.write();
        let id = env.id(name);
        env.amphi(&["create", "--bundle", b.path(), &id])
            .fails_with(needle)
            .fails_with("the wasmtime CLI's defaults");
        env.assert_clean(&id, &b.cgroup());
    }
}

fn write_executable(path: &std::path::Path, text: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Every proposal `wasmtime run` enables by default, exercised in a
/// container: each probe computes with the proposal and traps unless the
/// result is right (the engine's settings are compared with the CLI's in
/// amphi-wasm's unit tests; these show the features work end to end).
#[test]
fn the_clis_default_proposals_run() {
    let probes: [(&str, &str); 11] = [
        (
            "exceptions",
            "(tag $e (param i32))
             (func (export \"_start\")
               (block $caught (result i32)
                 (try_table (catch $e $caught) (throw $e (i32.const 42)))
                 unreachable)
               i32.const 42 i32.ne (if (then unreachable)))",
        ),
        (
            "tail-call",
            "(func $down (param i32) (result i32)
               (if (result i32) (i32.eqz (local.get 0))
                 (then (i32.const 7))
                 (else (return_call $down (i32.sub (local.get 0) (i32.const 1))))))
             (func (export \"_start\")
               (call $down (i32.const 10000000)) i32.const 7 i32.ne (if (then unreachable)))",
        ),
        (
            "simd",
            "(func (export \"_start\")
               (i32x4.extract_lane 3 (i32x4.add (v128.const i32x4 1 2 3 4) (v128.const i32x4 1 1 1 1)))
               i32.const 5 i32.ne (if (then unreachable)))",
        ),
        (
            "relaxed-simd",
            "(func (export \"_start\")
               (i32x4.extract_lane 0 (i32x4.relaxed_trunc_f32x4_s (v128.const f32x4 1.5 2.5 3.5 4.5)))
               i32.const 1 i32.ne (if (then unreachable)))",
        ),
        (
            "multi-memory",
            "(memory $a 1) (memory $b 1)
             (func (export \"_start\")
               (i32.store $b (i32.const 8) (i32.const 11))
               (i32.load $a (i32.const 8)) (if (then unreachable))
               (i32.load $b (i32.const 8)) i32.const 11 i32.ne (if (then unreachable)))",
        ),
        (
            "memory64",
            "(memory i64 1)
             (func (export \"_start\")
               (i32.store (i64.const 65532) (i32.const 6))
               (i32.load (i64.const 65532)) i32.const 6 i32.ne (if (then unreachable)))",
        ),
        (
            "extended-const",
            "(global $g i32 (i32.add (i32.const 1) (i32.mul (i32.const 2) (i32.const 3))))
             (func (export \"_start\")
               global.get $g i32.const 7 i32.ne (if (then unreachable)))",
        ),
        (
            "gc",
            "(type $point (struct (field i32) (field (mut i32))))
             (func (export \"_start\") (local $p (ref $point))
               (local.set $p (struct.new $point (i32.const 9) (i32.const 1)))
               (struct.set $point 1 (local.get $p) (i32.const 4))
               (i32.add (struct.get $point 0 (local.get $p)) (struct.get $point 1 (local.get $p)))
               i32.const 13 i32.ne (if (then unreachable)))",
        ),
        (
            "function-references",
            "(type $answer (func (result i32)))
             (func $five (type $answer) i32.const 5)
             (elem declare func $five)
             (func (export \"_start\")
               (call_ref $answer (ref.func $five)) i32.const 5 i32.ne (if (then unreachable)))",
        ),
        (
            "threads",
            "(memory 1)
             (func (export \"_start\")
               (drop (i32.atomic.rmw.add (i32.const 0) (i32.const 3)))
               (i32.atomic.load (i32.const 0)) i32.const 3 i32.ne (if (then unreachable)))",
        ),
        (
            "bulk-memory",
            "(memory 1)
             (func (export \"_start\")
               (memory.fill (i32.const 0) (i32.const 9) (i32.const 100))
               (memory.copy (i32.const 200) (i32.const 50) (i32.const 10))
               (i32.load8_u (i32.const 209)) i32.const 9 i32.ne (if (then unreachable)))",
        ),
    ];
    let env = Env::new();
    for (proposal, body) in probes {
        let mut b = env.wasm_bundle(proposal, &["/app/probe.wat"]);
        write_executable(
            &b.rootfs().join("app/probe.wat"),
            format!("(module {body})"),
        );
        b.spec["annotations"] = json!({"module.wasm.image/variant": "compat"});
        b.write();
        let id = env.id(proposal);
        let r = env.amphi(&["run", "--bundle", b.path(), &id]);
        assert_eq!(r.code, 0, "{proposal}: {}", r.stderr);
        env.assert_clean(&id, &b.cgroup());
    }
}

/// Absolute paths mean the container's root whatever process.cwd is (a
/// "." preopen would have sent them into the cwd under wasi-libc), and
/// relative ones resolve against "/".
#[test]
fn absolute_paths_ignore_the_cwd() {
    let env = Env::new();
    let mut b = env.wasm_bundle("cwd", &["/app/probe.wasm", "read", "/etc/passwd"]);
    std::fs::create_dir_all(b.rootfs().join("work/etc")).unwrap();
    std::fs::write(b.rootfs().join("work/etc/passwd"), "the cwd's copy\n").unwrap();
    b.spec["process"]["cwd"] = json!("/work");
    b.write();
    let id = env.id("cwd");
    let read = |b: &amphi_tests::Bundle| {
        let r = env.amphi(&["run", "--bundle", b.path(), &id]);
        r.ok();
        env.assert_clean(&id, &b.cgroup());
        r.stdout.clone()
    };
    assert!(read(&b).starts_with("root:x:0:0"));
    b.spec["process"]["args"] = json!(["/app/probe.wasm", "read", "etc/passwd"]);
    b.write();
    assert!(read(&b).starts_with("root:x:0:0"));
}

/// `GET path` (HTTP/1.0: one request per connection, an unchunked body) to 127.0.0.1:port
/// inside the network namespace of process `pid`: the response's text, or
/// None while nothing listens.
fn get_in_netns(pid: i64, port: u16, path: &str) -> Option<String> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).ok()?;
    let path = path.to_owned();
    // setns moves only the calling thread: a thread of its own.
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: svc\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(text)
    })
    .join()
    .unwrap()
}

#[test]
fn a_wasi_http_component_serves_in_its_network_namespace() {
    let env = Env::new();
    let mut b = env.wasm_bundle("svc", &["/app/http-hello.wasm"]);
    b.spec["annotations"] = json!({"amphi.io/http-port": "8181"});
    b.spec["linux"]["resources"] = json!({"memory": {"limit": 256 << 20}});
    b.write();
    let id = env.id("svc");
    env.amphi(&["run", "-d", "--bundle", b.path(), &id]).ok();
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    assert!(
        wait_for(30, || get_in_netns(pid, 8181, "/").is_some()),
        "nothing listens on 8181 in the container"
    );
    for n in 0..3 {
        let r = get_in_netns(pid, 8181, &format!("/http/n{n}")).unwrap();
        assert!(r.starts_with("HTTP/1.0 200"), "{r}");
        assert!(r.contains("x-amphi: wasi-http"), "{r}");
        assert!(r.ends_with(&format!("path=/http/n{n}\nbody=0\n")), "{r}");
    }
    // A trapping request costs that request only.
    let r = get_in_netns(pid, 8181, "/http/trap").unwrap();
    assert!(r.starts_with("HTTP/1.0 500"), "{r}");
    assert!(get_in_netns(pid, 8181, "/")
        .unwrap()
        .starts_with("HTTP/1.0 200"));
    env.amphi(&["kill", &id, "TERM"]).ok();
    assert!(wait_for(10, || env.status(&id).as_deref() == Some("stopped")));
    env.amphi(&["delete", &id]).ok();
    env.assert_clean(&id, &b.cgroup());

    let mut b = env.wasm_bundle("badport", &["/app/http-hello.wasm"]);
    b.spec["annotations"] = json!({"amphi.io/http-port": "80000"});
    b.write();
    let id = env.id("badport");
    env.amphi(&["create", "--bundle", b.path(), &id])
        .fails_with("amphi.io/http-port");
    env.assert_clean(&id, &b.cgroup());
}

/// A module exec'd into a container prepares inside the container's mount
/// namespace; the host's cache is reached through a directory fd, never
/// through /proc paths that would resolve there: a container whose /proc
/// is a tmpfs of its own (which it could fill with anything) still gets
/// the cached artifact, and nothing is written into that /proc.
#[test]
fn exec_reaches_the_cache_without_the_containers_proc() {
    let env = Env::new();
    let mut b = env.wasm_bundle("fakeproc", &["sleep", "60"]);
    let mounts = b.spec["mounts"].as_array_mut().unwrap();
    for m in mounts.iter_mut().filter(|m| m["destination"] == "/proc") {
        *m = json!({"destination": "/proc", "type": "tmpfs", "source": "tmpfs"});
    }
    b.spec["linux"]["maskedPaths"] = json!([]);
    b.spec["linux"]["readonlyPaths"] = json!([]);
    b.write();
    let id = env.id("fakeproc");
    env.amphi(&["run", "-d", "--bundle", b.path(), &id]).ok();
    for expect in ["wasm cache: Compiled", "wasm cache: Hit"] {
        let r = env.amphi_env(&REPORT, &["exec", &id, "/app/hello.wasm"]);
        r.ok();
        assert_eq!(r.stdout, "hello from wasm\n");
        assert!(r.stderr.contains(expect), "{}", r.stderr);
    }
    let r = env.amphi(&["exec", &id, "ls", "-A", "/proc"]);
    r.ok();
    assert_eq!(r.stdout, "", "written into the container's /proc");
    env.amphi(&["delete", "--force", &id]).ok();
    env.assert_clean(&id, &b.cgroup());
}

/// A `wasi:cli/command@0.3` component (WASI 0.3: an async `run`, stdio,
/// arguments, environment and files as 0.3's streams and futures) runs as
/// a container: its output, its exit status, the rootfs as its
/// filesystem, and nothing left behind.
/// A command has the container's network, as a native process in it has:
/// wasi:sockets in the container's own namespace (its loopback).
#[test]
fn a_command_uses_the_containers_network_through_wasi_sockets() {
    let env = Env::new();
    let (r, id, cg) = run(&env, "net", &["/app/net-component.wasm"], |_| {});
    r.ok();
    assert_eq!(r.stdout, "over wasi:sockets on 127.0.0.1\n");
    env.assert_clean(&id, &cg);
}

/// A command's wasi:http client reaches what the container's network
/// reaches: here the host's loopback, the bundle sharing the host's
/// network namespace, where the test answers one request.
#[test]
fn a_command_makes_requests_with_wasi_http() {
    use std::io::{BufRead, BufReader, Write};
    let env = Env::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let authority = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(&conn);
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 2 {
            line.clear();
        }
        (&conn)
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 13\r\nconnection: close\r\n\r\nfrom the host",
            )
            .unwrap();
        request_line
    });
    let (r, id, cg) = run(
        &env,
        "httpget",
        &["/app/http-get.wasm", &authority, "/greeting?x=1"],
        |b| {
            let namespaces = b.spec["linux"]["namespaces"].as_array_mut().unwrap();
            namespaces.retain(|n| n["type"] != "network");
        },
    );
    r.ok();
    assert_eq!(r.stdout, "200 from the host\n");
    assert_eq!(server.join().unwrap(), "GET /greeting?x=1 HTTP/1.1\r\n");
    env.assert_clean(&id, &cg);
}

#[test]
fn a_wasi_0_3_command_runs_as_a_container() {
    let env = Env::new();
    let (r, id, cg) = run(
        &env,
        "p3",
        &[
            "/app/p3-hello.wasm",
            "read",
            "/etc/hostname-p3",
            "stderr",
            "to stderr",
        ],
        |b| {
            b.spec["process"]["env"] = json!(["GREETING=from the spec"]);
            std::fs::write(b.rootfs().join("etc/hostname-p3"), "a file of the rootfs\n").unwrap();
        },
    );
    r.ok();
    assert_eq!(
        r.stdout,
        "hello from wasi 0.3: args=[\"read\", \"/etc/hostname-p3\", \"stderr\", \"to stderr\"] \
         GREETING=from the spec\na file of the rootfs\n"
    );
    assert_eq!(r.stderr.trim(), "to stderr");
    env.assert_clean(&id, &cg);
    // `run` returning an error is exit 1, as for 0.2 and `wasmtime run`.
    let (r, id, cg) = run(&env, "p3fail", &["/app/p3-hello.wasm", "fail"], |_| {});
    assert_eq!(r.code, 1, "{}", r.stderr);
    env.assert_clean(&id, &cg);
    // A file outside the rootfs is not there for it.
    let (r, id, cg) = run(
        &env,
        "p3out",
        &["/app/p3-hello.wasm", "read", "/../../../etc/shadow"],
        |_| {},
    );
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.contains("open"), "{}", r.stderr);
    env.assert_clean(&id, &cg);
}

/// A `wasi:http@0.3` service (an async `handle`; the body written by a
/// task the guest spawned after it returned the response) serves as a
/// container, as a 0.2 proxy does.
#[test]
fn a_wasi_http_0_3_service_serves_in_its_network_namespace() {
    let env = Env::new();
    let mut b = env.wasm_bundle("svc3", &["/app/p3-http.wasm"]);
    b.spec["annotations"] = json!({"amphi.io/http-port": "8182"});
    b.spec["linux"]["resources"] = json!({"memory": {"limit": 256 << 20}});
    b.write();
    let id = env.id("svc3");
    env.amphi(&["run", "-d", "--bundle", b.path(), &id]).ok();
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    assert!(
        wait_for(30, || get_in_netns(pid, 8182, "/").is_some()),
        "nothing listens on 8182 in the container"
    );
    for n in 0..3 {
        let r = get_in_netns(pid, 8182, &format!("/p3/n{n}")).unwrap();
        assert!(r.starts_with("HTTP/1.0 200"), "{r}");
        assert!(
            r.ends_with(&format!("hello from wasi:http 0.3: GET /p3/n{n}\n")),
            "{r}"
        );
    }
    let r = get_in_netns(pid, 8182, "/p3/trap").unwrap();
    assert!(r.starts_with("HTTP/1.0 500"), "{r}");
    assert!(get_in_netns(pid, 8182, "/")
        .unwrap()
        .starts_with("HTTP/1.0 200"));
    env.amphi(&["kill", &id, "TERM"]).ok();
    assert!(wait_for(10, || env.status(&id).as_deref() == Some("stopped")));
    env.amphi(&["delete", &id]).ok();
    env.assert_clean(&id, &b.cgroup());
}

/// A 0.3 component importing what amphi does not provide fails create with
/// the import and the worlds amphi runs named, and leaves nothing.
#[test]
fn a_component_with_an_unknown_0_3_import_names_it() {
    let env = Env::new();
    let mut b = env.wasm_bundle("p3missing", &["/app/missing.wat"]);
    std::fs::write(
        b.rootfs().join("app/missing.wat"),
        r#"(component (import "wasi:missing/thing@0.3.0" (instance (export "f" (func)))))"#,
    )
    .unwrap();
    b.spec["annotations"] = json!({"run.oci.handler": "wasm"});
    b.write();
    let id = env.id("p3missing");
    env.amphi(&["create", "--bundle", b.path(), &id])
        .fails_with("wasi:missing/thing@0.3.0")
        .fails_with("wasi:cli/command (0.2 and 0.3)");
    env.assert_clean(&id, &b.cgroup());
}

/// The envelope holds a 0.3 command as it holds 0.2's: TERM ends a guest
/// waiting in an async host call (exit 143), and the memory limit caps its
/// memories (an allocation past it traps: exit 134, the cgroup intact).
#[test]
fn a_wasi_0_3_command_has_the_envelopes_signals_and_limits() {
    let env = Env::new();
    let b = env.wasm_bundle("p3sleep", &["/app/p3-hello.wasm", "sleep"]);
    b.write();
    let id = env.id("p3sleep");
    let mut child = env
        .command(&["run", "--bundle", b.path(), &id])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "sleeping\n");
    env.amphi(&["kill", &id, "TERM"]).ok();
    assert_eq!(child.wait().unwrap().code(), Some(128 + 15));
    env.assert_clean(&id, &b.cgroup());

    let (r, id, cg) = run(
        &env,
        "p3small",
        &["/app/p3-hello.wasm", "alloc", "16"],
        |b| {
            b.spec["linux"]["resources"] = json!({"memory": {"limit": 128 << 20}});
        },
    );
    r.ok();
    assert!(r.stdout.ends_with("allocated 16 MiB\n"), "{}", r.stdout);
    env.assert_clean(&id, &cg);
    let (r, id, cg) = run(
        &env,
        "p3big",
        &["/app/p3-hello.wasm", "alloc", "512"],
        |b| {
            b.spec["linux"]["resources"] = json!({"memory": {"limit": 128 << 20}});
        },
    );
    assert_eq!(r.code, 134, "{} {}", r.stdout, r.stderr);
    env.assert_clean(&id, &cg);
}
