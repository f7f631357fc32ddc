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
    let cache = env.root.join("wasm-cache");
    let entry = std::fs::read_dir(&cache)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
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
    let cases: [(&str, &[u8], &str); 4] = [
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
