//! Hardening: amphi killed at every stage, hostile bundles, hostile guests,
//! the runtime binary out of reach, and load; each must be contained and
//! leave nothing behind.

use std::os::unix::process::CommandExt;
use std::time::Duration;

use amphi_tests::{wait_for, Env};
use serde_json::json;

/// Each named point amphi can be SIGKILLed at (AMPHI_FAILPOINT), with the
/// command that reaches it.
const STAGES: &[(&str, &str)] = &[
    ("create:dir", "create"),
    ("create:state", "create"),
    ("create:cgroup", "create"),
    ("create:clone", "create"),
    ("create:attached", "create"),
    ("create:ready", "create"),
    ("start:opened", "start"),
    ("exec:clone", "exec"),
    ("exec:attached", "exec"),
    ("delete:killed", "delete"),
    ("delete:cgroup", "delete"),
];

#[test]
fn sigkill_at_every_stage_is_recovered_by_delete_force() {
    let env = Env::new();
    for (i, (point, command)) in STAGES.iter().enumerate() {
        let name = format!("kill{i}");
        let b = env.bundle(&name, &["sleep", "600"]);
        b.write();
        let id = env.id(&name);
        // Bring the container to the state the command starts from.
        if *command != "create" {
            env.amphi(&["create", "--bundle", b.path(), &id]).ok();
        }
        if *command == "exec" || *command == "delete" {
            env.amphi(&["start", &id]).ok();
        }
        let fp = [("AMPHI_FAILPOINT", *point)];
        let r = match *command {
            "create" => env.amphi_env(&fp, &["create", "--bundle", b.path(), &id]),
            "start" => env.amphi_env(&fp, &["start", &id]),
            "exec" => env.amphi_env(&fp, &["exec", &id, "sleep", "600"]),
            _ => env.amphi_env(&fp, &["delete", "--force", &id]),
        };
        assert_eq!(
            r.code,
            128 + 9,
            "{point}: amphi was not killed there: {}",
            r.stderr
        );
        // Whatever the crash left, delete --force removes it.
        env.amphi(&["delete", "--force", &id]).ok();
        assert!(env.status(&id).is_none(), "{point}: container still listed");
        env.assert_clean(&id, &b.cgroup());
    }
}

#[test]
fn state_on_disk_truncated_or_corrupt_is_an_error_and_recoverable() {
    let env = Env::new();
    for (name, content) in [("trunc", "{\"id\":"), ("junk", "\u{0}\u{1}not json")] {
        let b = env.bundle(name, &["sleep", "600"]);
        b.write();
        let id = env.id(name);
        env.amphi(&["run", "-d", "--bundle", b.path(), &id]).ok();
        let pid = env.state(&id)["pid"].as_i64().unwrap();
        std::fs::write(env.root.join(&id).join("state.json"), content).unwrap();
        env.amphi(&["state", &id]).fails_with("state.json");
        env.amphi(&["delete", &id]).fails_with("state.json");
        // The record is gone, so the process must be found another way:
        // delete --force removes the directory; the cgroup and process are
        // left to the caller, as with runc, so clean them up here.
        env.amphi(&["delete", "--force", &id]).ok();
        assert!(!env.root.join(&id).exists());
        // SAFETY: killing the container init this test started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        amphi_tests::reap_inits();
        for d in amphi_tests::cgroup_dirs(&b.cgroup()) {
            wait_for(5, || std::fs::remove_dir(&d).is_ok() || !d.exists());
        }
        env.assert_clean(&id, &b.cgroup());
    }
}

#[test]
fn a_process_dying_between_create_and_start_is_reported_and_removable() {
    let env = Env::new();
    let b = env.bundle("early", &["sleep", "600"]);
    b.write();
    let id = env.id("early");
    env.amphi(&["create", "--bundle", b.path(), &id]).ok();
    let pid = env.state(&id)["pid"].as_i64().unwrap() as i32;
    // SAFETY: killing the init this test created.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_for(5, || env.status(&id).as_deref() == Some("stopped")));
    env.amphi(&["start", &id]).fails_with("stopped");
    env.amphi(&["delete", &id]).ok();
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn read_only_root_dir_is_a_clear_error() {
    let env = Env::new();
    let b = env.bundle("roroot", &["true"]);
    b.write();
    std::fs::create_dir_all(&env.root).unwrap();
    // A read-only bind of the root over itself, in a mount namespace of
    // our own so the host never sees it.
    let root = env.root.clone();
    let id = env.id("roroot");
    let mut c = env.command(&["create", "--bundle", b.path(), &id]);
    let err = env.tmp.path().join("ro.err");
    c.stderr(std::fs::File::create(&err).unwrap());
    let root_c = std::ffi::CString::new(root.to_str().unwrap()).unwrap();
    // SAFETY: only syscalls between fork and exec.
    unsafe {
        c.pre_exec(move || {
            let null = std::ptr::null();
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    null,
                    c"/".as_ptr(),
                    null,
                    libc::MS_REC | libc::MS_PRIVATE,
                    null.cast(),
                ) != 0
                || libc::mount(
                    root_c.as_ptr(),
                    root_c.as_ptr(),
                    null,
                    libc::MS_BIND,
                    null.cast(),
                ) != 0
                || libc::mount(
                    null,
                    root_c.as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    null.cast(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let st = c.status().unwrap();
    let msg = std::fs::read_to_string(&err).unwrap();
    assert!(!st.success());
    assert!(
        msg.contains("Read-only file system") && msg.contains(root.to_str().unwrap()),
        "{msg}"
    );
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn huge_configs_and_too_many_mounts_are_refused() {
    let env = Env::new();
    let mut b = env.bundle("big", &["true"]);
    b.spec["annotations"] = json!({"padding": "x".repeat(20 << 20)});
    b.write();
    let id = env.id("big");
    // Refused by its size, before it is read or parsed.
    env.amphi(&["create", "--bundle", b.path(), &id])
        .fails_with("at most");
    env.assert_clean(&id, &b.cgroup());

    let mut b = env.bundle("mounts", &["true"]);
    let many: Vec<_> = (0..100_000)
        .map(|i| json!({"destination": format!("/tmp/m{i}"), "type": "tmpfs", "source": "tmpfs"}))
        .collect();
    b.spec["mounts"] = json!(many);
    b.write();
    let id = env.id("mounts");
    env.amphi(&["create", "--bundle", b.path(), &id])
        .fails_with("mounts");
    assert_eq!(
        std::fs::read_dir(b.rootfs().join("tmp")).unwrap().count(),
        0,
        "mount points were made"
    );
    env.assert_clean(&id, &b.cgroup());

    // 100,000 environment entries are the kernel's to judge: they fit.
    let mut b = env.bundle("env", &["sh", "-c", "env | wc -l"]);
    b.spec["process"]["env"] = json!((0..100_000).map(|i| format!("V{i}=x")).collect::<Vec<_>>());
    b.write();
    let id = env.id("env");
    let r = env.amphi(&["run", "--bundle", b.path(), &id]);
    r.ok();
    assert!(r.stdout.trim().parse::<usize>().unwrap() >= 100_000);
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn symlinked_mount_destinations_stay_inside_the_rootfs() {
    let env = Env::new();
    let outside = env.tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "host secret").unwrap();
    let mut b = env.bundle("links", &["sh", "-c", "cat /proc/self/mountinfo; ls /data"]);
    let rootfs = b.rootfs();
    // An absolute link out of the rootfs, and a relative one climbing out.
    std::os::unix::fs::symlink(&outside, rootfs.join("data")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../../..", rootfs.join("up")).unwrap();
    b.spec["mounts"].as_array_mut().unwrap().extend([
        json!({"destination": "/data", "type": "tmpfs", "source": "tmpfs"}),
        json!({"destination": "/up/etc", "type": "tmpfs", "source": "tmpfs"}),
    ]);
    b.spec["process"]["cwd"] = json!("/up");
    b.write();
    let id = env.id("links");
    // /data leads nowhere inside the rootfs: a clear error naming it, and
    // the host directory untouched.
    env.amphi(&["run", "--bundle", b.path(), &id])
        .fails_with("/data");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    env.assert_clean(&id, &b.cgroup());
    // Pointing inside the rootfs, the same links are followed there: the
    // climbing one ends at the rootfs's own /etc, and cwd /up is /.
    std::fs::remove_file(rootfs.join("data")).unwrap();
    std::fs::create_dir_all(rootfs.join("srv/data")).unwrap();
    std::os::unix::fs::symlink("/srv/data", rootfs.join("data")).unwrap();
    b.spec["process"]["args"] = json!([
        "sh",
        "-c",
        "pwd; grep -E ' /(srv/data|etc) ' /proc/self/mountinfo | wc -l; ls /etc | wc -l"
    ]);
    b.write();
    let r = env.amphi(&["run", "--bundle", b.path(), &id]);
    r.ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], "/", "cwd through the link: {}", r.stdout);
    assert_eq!(
        lines[1].trim(),
        "2",
        "both tmpfs inside the rootfs: {}",
        r.stdout
    );
    assert_eq!(
        lines[2].trim(),
        "0",
        "/etc is the fresh tmpfs: {}",
        r.stdout
    );
    assert!(!r.stdout.contains("secret"), "{}", r.stdout);
    env.assert_clean(&id, &b.cgroup());

    // procfs on a symlink is refused (masked paths would miss it).
    let b = env.bundle("proclink", &["true"]);
    std::fs::remove_dir(b.rootfs().join("proc")).unwrap();
    std::os::unix::fs::symlink("tmp", b.rootfs().join("proc")).unwrap();
    b.write();
    let id = env.id("proclink");
    env.amphi(&["create", "--bundle", b.path(), &id])
        .fails_with("symlink");
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn a_destination_swapped_for_a_symlink_during_create_never_escapes() {
    let env = Env::new();
    let outside = env.tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "host secret").unwrap();
    let mut b = env.bundle(
        "race",
        &["sh", "-c", "ls -a /data; cat /proc/self/mountinfo"],
    );
    b.spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/data", "type": "bind", "source": env.tmp.path().join("bindsrc"), "options": ["rbind"]}));
    std::fs::create_dir(env.tmp.path().join("bindsrc")).unwrap();
    std::fs::write(env.tmp.path().join("bindsrc/ok"), "").unwrap();
    b.write();
    let data = b.rootfs().join("data");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (data, outside, stop) = (data.clone(), outside.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::remove_dir(&data);
                let _ = std::os::unix::fs::symlink(&outside, &data);
                let _ = std::fs::remove_file(&data);
                let _ = std::fs::create_dir(&data);
            }
        })
    };
    let mut runs = 0;
    for i in 0..40 {
        let id = env.id(&format!("race{i}"));
        let r = env.amphi(&["run", "--bundle", b.path(), &id]);
        assert!(
            !r.stdout.contains("secret"),
            "run {i} saw the host directory: {}",
            r.stdout
        );
        if r.code == 0 {
            runs += 1;
        }
        env.assert_clean(&id, &b.cgroup());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flipper.join().unwrap();
    assert!(runs > 0, "no run completed while the destination flipped");
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        "host secret"
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        1,
        "something was created outside"
    );
}

#[test]
fn fds_and_cwd_of_the_caller_never_reach_the_container() {
    let env = Env::new();
    let b = env.bundle(
        "fds",
        &[
            "sh",
            "-c",
            "ls /proc/self/fd; pwd; cat /proc/self/fd/3 2>&1 | head -c 20",
        ],
    );
    b.write();
    let id = env.id("fds");
    let out = env.tmp.path().join("fds.out");
    let mut c = env.command(&["run", "--bundle", b.path(), &id]);
    c.stdout(std::fs::File::create(&out).unwrap());
    // The caller's cwd is a host directory and fd 3 (as containerd's runc
    // shim leaks its socket) an open host directory, neither preserved.
    c.current_dir("/etc");
    let dir = std::fs::File::open("/etc").unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&dir);
    // SAFETY: dup2 and fcntl between fork and exec.
    unsafe {
        c.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    assert!(c.status().unwrap().success());
    let text = std::fs::read_to_string(&out).unwrap();
    let fds: Vec<&str> = text
        .lines()
        .take_while(|l| l.parse::<u32>().is_ok())
        .collect();
    assert!(
        fds.iter().all(|f| ["0", "1", "2", "3"].contains(f)),
        "fds: {fds:?}"
    );
    // fd 3 in the container, if any, is ls's own directory handle, not /etc.
    assert!(text.lines().any(|l| l == "/"), "cwd is process.cwd: {text}");
    assert!(!text.contains("passwd"), "{text}");
    env.assert_clean(&id, &b.cgroup());

    // process.cwd naming an fd of the runtime's gets nowhere either.
    let mut b = env.bundle("fdcwd", &["pwd"]);
    b.spec["process"]["cwd"] = json!("/proc/self/fd/3");
    b.write();
    let id = env.id("fdcwd");
    let r = env.amphi(&["run", "--bundle", b.path(), &id]);
    assert!(r.code != 0 || !r.stdout.contains("/etc"), "{}", r.stdout);
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn the_runtime_binary_is_out_of_reach_of_containers() {
    let env = Env::new();
    // A wasm guest is PID 1 inside the amphi process for its whole life.
    let b = env.wasm_bundle("bin", &["/app/idle.wasm", "600"]);
    b.write();
    let id = env.id("bin");
    env.amphi(&["run", "-d", "--bundle", b.path(), &id]).ok();
    let r = env.amphi(&[
        "exec", &id, "sh", "-c",
        "readlink /proc/1/exe; echo readlink=$?; head -c 4 /proc/1/exe >/dev/null; echo read=$?; readlink /proc/1/fd/0 /proc/1/root; echo fds=$?",
    ]);
    assert!(r.stdout.contains("readlink=1"), "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("read=1"), "{}", r.stdout);
    assert!(r.stdout.contains("fds=1"), "{}", r.stdout);
    // The exec'd shell itself is an ordinary (dumpable) process.
    let r = env.amphi(&["exec", &id, "readlink", "/proc/self/exe"]);
    assert_eq!(r.stdout.trim(), "/bin/busybox");
    env.amphi(&["delete", "--force", &id]).ok();
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn default_spec_is_locked_down() {
    let env = Env::new();
    let dir = env.tmp.path().join("spec");
    std::fs::create_dir(&dir).unwrap();
    env.amphi(&["spec", "--bundle", dir.to_str().unwrap()]).ok();
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(s["process"]["noNewPrivileges"], true);
    let caps = s["process"]["capabilities"]["bounding"].as_array().unwrap();
    assert!(
        caps.len() <= 14 && !caps.iter().any(|c| c == "CAP_SYS_ADMIN"),
        "{caps:?}"
    );
    assert!(s["linux"]["maskedPaths"].as_array().unwrap().len() >= 5);
    assert!(!s["linux"]["readonlyPaths"].as_array().unwrap().is_empty());
    let sc = &s["linux"]["seccomp"];
    assert_eq!(sc["defaultAction"], "SCMP_ACT_ERRNO");
    let allowed = sc["syscalls"][0]["names"].as_array().unwrap();
    for denied in [
        "mount",
        "unshare",
        "setns",
        "bpf",
        "ptrace",
        "kexec_load",
        "init_module",
    ] {
        assert!(!allowed.iter().any(|n| n == denied), "{denied} allowed");
    }
    // And it runs: ordinary work passes, namespace games do not.
    let b = env.bundle("dflt", &["true"]);
    let mut b = b;
    b.spec["linux"]["seccomp"] = sc.clone();
    b.spec["process"]["args"] = json!([
        "sh",
        "-c",
        "echo ok > /tmp/f && cat /tmp/f; unshare -n true; echo unshare=$?"
    ]);
    b.write();
    let id = env.id("dflt");
    let r = env.amphi(&["run", "--bundle", b.path(), &id]);
    r.ok();
    assert!(
        r.stdout.starts_with("ok\n") && r.stdout.contains("unshare=1"),
        "{}",
        r.stdout
    );
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn hostile_guests_fail_alone() {
    let env = Env::new();
    let wat = |name: &str, text: &str| {
        let mut b = env.wasm_bundle(name, &[&format!("/app/{name}.wat")]);
        b.spec["annotations"] = json!({"run.oci.handler": "wasm"});
        let path = b.rootfs().join(format!("app/{name}.wat"));
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        b
    };
    let cases = [
        ("recurse", "(module (func $f (call $f)) (func (export \"_start\") (call $f)) (memory (export \"memory\") 1))", "stack"),
        ("tables", "(module (table 1 funcref) (memory (export \"memory\") 1) (func (export \"_start\") (loop (br_if 0 (i32.ne (table.grow (ref.null func) (i32.const 100000)) (i32.const -1)))) unreachable))", "unreachable"),
    ];
    // A neighbour that must not notice.
    let n = env.bundle("neighbour", &["sleep", "600"]);
    n.write();
    let nid = env.id("neighbour");
    env.amphi(&["run", "-d", "--bundle", n.path(), &nid]).ok();
    for (name, text, needle) in cases {
        let b = wat(name, text);
        b.write();
        let id = env.id(name);
        let r = env.amphi(&["run", "--bundle", b.path(), &id]);
        assert_eq!(r.code, 134, "{name}: {}", r.stderr);
        assert!(
            r.stderr.to_lowercase().contains(needle),
            "{name}: {}",
            r.stderr
        );
        env.assert_clean(&id, &b.cgroup());
    }
    // A native fork bomb, bounded by its pids limit.
    let mut b = env.bundle(
        "forkbomb",
        &[
            "sh",
            "-c",
            "for i in $(seq 200); do sleep 30 & done 2>/dev/null; echo done",
        ],
    );
    b.spec["linux"]["resources"] = json!({"pids": {"limit": 20}});
    b.write();
    let id = env.id("forkbomb");
    env.amphi(&["run", "-d", "--bundle", b.path(), &id]).ok();
    std::thread::sleep(Duration::from_millis(500));
    let n_pids = env.amphi(&["ps", "--format", "json", &id]).stdout;
    let count = serde_json::from_str::<Vec<i64>>(&n_pids)
        .unwrap_or_default()
        .len();
    assert!(count <= 20, "{count} processes despite pids.limit 20");
    env.amphi(&["delete", "--force", &id]).ok();
    env.assert_clean(&id, &b.cgroup());
    // Filling /dev/shm stops at its size.
    let b = env.bundle("fill", &["sh", "-c", "dd if=/dev/zero of=/dev/shm/f bs=1M count=200 2>/tmp/err; grep -q 'No space left' /tmp/err && echo full"]);
    b.write();
    let id = env.id("fill");
    let r = env.amphi(&["run", "--bundle", b.path(), &id]);
    assert!(r.stdout.contains("full"), "{}{}", r.stdout, r.stderr);
    env.assert_clean(&id, &b.cgroup());
    assert_eq!(
        env.status(&nid).as_deref(),
        Some("running"),
        "the neighbour was disturbed"
    );
    env.amphi(&["delete", "--force", &nid]).ok();
    env.assert_clean(&nid, &n.cgroup());
}

#[test]
fn parallel_streams_keep_state_consistent() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let env = Env::new();
    let streams = 16;
    let per_stream: usize = std::env::var("AMPHI_LOAD_PER_STREAM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    // One rootfs; a config (and so a cgroup) per container.
    let base = env.bundle("load", &["sleep", "600"]);
    let rootfs = base.rootfs();
    let bundle = |name: &str| -> (std::path::PathBuf, String) {
        let dir = env.tmp.path().join(format!("cfg-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut spec = base.spec.clone();
        spec["root"]["path"] = json!(rootfs);
        let cg = format!("{}-{name}", env.tag);
        spec["linux"]["cgroupsPath"] = json!(cg);
        std::fs::write(dir.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
        (dir, cg)
    };
    let finished = AtomicUsize::new(0);
    let errors = std::sync::Mutex::new(Vec::new());
    let mut cgroups = Vec::new();
    let plans: Vec<Vec<(String, std::path::PathBuf, String)>> = (0..streams)
        .map(|t| {
            (0..per_stream)
                .map(|i| {
                    let name = format!("s{t}-{i}");
                    let (dir, cg) = bundle(&name);
                    (env.id(&name), dir, cg)
                })
                .collect()
        })
        .collect();
    for p in plans.iter().flatten() {
        cgroups.push((p.0.clone(), p.2.clone()));
    }
    std::thread::scope(|s| {
        for plan in &plans {
            let (env, errors, finished) = (&env, &errors, &finished);
            s.spawn(move || {
                for (id, dir, _) in plan {
                    let path = dir.to_str().unwrap();
                    for args in [
                        vec!["create", "--bundle", path, id],
                        vec!["start", id],
                        vec!["kill", id, "KILL"],
                        vec!["delete", "--force", id],
                    ] {
                        let r = env.amphi(&args);
                        if r.code != 0 {
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("{args:?}: {}", r.stderr));
                        }
                    }
                }
                finished.fetch_add(1, Ordering::SeqCst);
            });
        }
        // Readers meanwhile: list always parses and never shows an id twice;
        // state and ps of listed containers never fail in a torn way.
        let (env, errors, finished) = (&env, &errors, &finished);
        s.spawn(move || {
            while finished.load(Ordering::SeqCst) < streams {
                let r = env.amphi(&["list", "--format", "json"]);
                let Ok(list) = serde_json::from_str::<Vec<serde_json::Value>>(&r.stdout) else {
                    errors
                        .lock()
                        .unwrap()
                        .push(format!("list: {}{}", r.stdout, r.stderr));
                    continue;
                };
                let mut ids: Vec<_> = list.iter().map(|c| c["id"].to_string()).collect();
                let n = ids.len();
                ids.sort();
                ids.dedup();
                if ids.len() != n {
                    errors
                        .lock()
                        .unwrap()
                        .push("a container listed twice".into());
                }
                for c in list.iter().take(4) {
                    let id = c["id"].as_str().unwrap_or("");
                    let r = env.amphi(&["state", id]);
                    if r.code != 0
                        && !r.stderr.contains("does not exist")
                        && !r.stderr.contains("not found")
                    {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("state {id}: {}", r.stderr));
                    }
                }
            }
        });
    });
    amphi_tests::reap_inits();
    let errors = errors.into_inner().unwrap();
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    let left = env.amphi(&["list", "-q"]).stdout;
    assert!(left.trim().is_empty(), "left: {left}");
    for (id, cg) in &cgroups {
        env.assert_clean(id, cg);
    }
    eprintln!("load: {streams} streams x {per_stream} containers, readers alongside");
}

#[test]
fn special_files_as_entrypoints_fail_fast() {
    let env = Env::new();
    for (name, wasm) in [
        ("fifo-native", false),
        ("fifo-wasm", true),
        ("zero-wasm", true),
    ] {
        let entry = if name.starts_with("zero") {
            "/dev/zero"
        } else {
            "/app/entry"
        };
        let mut b = env.bundle(name, &[entry]);
        if wasm {
            b.spec["annotations"] = json!({"run.oci.handler": "wasm"});
        }
        std::fs::create_dir_all(b.rootfs().join("app")).unwrap();
        nix::unistd::mkfifo(&b.rootfs().join("app/entry"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        b.write();
        let id = env.id(name);
        // A FIFO that nobody writes would block a reader for ever: that
        // the command returns at all is the check.
        let r = env.amphi(&["run", "--bundle", b.path(), &id]);
        assert_ne!(r.code, 0, "{name}");
        if wasm {
            assert!(
                r.stderr.contains("not a regular file"),
                "{name}: {}",
                r.stderr
            );
        }
        env.assert_clean(&id, &b.cgroup());
    }
}

/// `amphi ARGS` in a mount namespace of its own where cgroup2 is mounted
/// at /sys/fs/cgroup, so amphi sees a pure v2 host (the same unified
/// hierarchy the host has at /sys/fs/cgroup/unified on hybrid machines;
/// on a pure v2 host, as in the VM lane, it is there already).
/// Output goes to `v2-{args[0]}.out`/`.err` in the test's temp dir.
fn amphi_on_v2(env: &Env, args: &[&str]) -> amphi_tests::Run {
    let mount_cgroup2 = !nix::sys::statfs::statfs("/sys/fs/cgroup")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    let mut c = env.command(args);
    let out = env.tmp.path().join(format!("v2-{}.out", args[0]));
    let err = env.tmp.path().join(format!("v2-{}.err", args[0]));
    c.stdout(std::fs::File::create(&out).unwrap());
    c.stderr(std::fs::File::create(&err).unwrap());
    // SAFETY: only syscalls between fork and exec.
    unsafe {
        c.pre_exec(move || {
            let null = std::ptr::null();
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    null,
                    c"/".as_ptr(),
                    null,
                    libc::MS_REC | libc::MS_PRIVATE,
                    null.cast(),
                ) != 0
                || (mount_cgroup2
                    && libc::mount(
                        c"cgroup2".as_ptr(),
                        c"/sys/fs/cgroup".as_ptr(),
                        c"cgroup2".as_ptr(),
                        0,
                        null.cast(),
                    ) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let st = c.status().unwrap();
    amphi_tests::Run {
        code: st.code().unwrap_or(-1),
        stdout: std::fs::read_to_string(out).unwrap(),
        stderr: std::fs::read_to_string(err).unwrap(),
    }
}

#[test]
fn a_pure_cgroup_v2_view_works_end_to_end() {
    let env = Env::new();
    let unified = amphi_tests::cgroup_dirs_by_hierarchy("")
        .into_iter()
        .find(|(ctrls, _)| ctrls.is_empty());
    let Some((_, own_v2)) = unified else {
        eprintln!("skipped: no cgroup2 hierarchy on this host");
        return;
    };
    let mut b = env.bundle("v2", &["sh", "-c", "head -c 1 /dev/null && echo null-ok; mknod /tmp/kmsg c 1 11; mknod /tmp/mem c 1 1 && head -c 1 /tmp/mem; echo mem=$?; sleep 600"]);
    b.spec["linux"]["resources"] = json!({"devices": [{"allow": false, "access": "rwm"}]});
    b.write();
    let id = env.id("v2");
    // The container's cgroup is in the view's hierarchy: a failed check
    // must still delete it from inside the view (Env's own clean-up runs
    // outside it and would leave the cgroup).
    struct DeleteInView<'a>(&'a Env, &'a str);
    impl Drop for DeleteInView<'_> {
        fn drop(&mut self) {
            let _ = amphi_on_v2(self.0, &["delete", "--force", self.1]);
        }
    }
    let _delete = DeleteInView(&env, &id);
    amphi_on_v2(&env, &["run", "-d", "--bundle", b.path(), &id]).ok();
    // The container writes to the stdout it inherited from that first call.
    let out = env.tmp.path().join("v2-run.out");
    let dir = own_v2.join(b.cgroup());
    assert!(
        dir.join("cgroup.procs").exists(),
        "the container's cgroup is in the unified hierarchy"
    );
    assert!(wait_for(5, || std::fs::read_to_string(
        dir.join("cgroup.procs")
    )
    .is_ok_and(|p| !p.trim().is_empty())));
    // The eBPF device filter: /dev/null allowed, a made /dev/mem not.
    assert!(
        wait_for(5, || std::fs::read_to_string(&out)
            .is_ok_and(|s| s.contains("mem="))),
        "{:?}",
        std::fs::read_to_string(&out)
    );
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("null-ok") && text.contains("mem=1"), "{text}");
    // `update` replaces amphi's filter (an ancestor's or systemd's would
    // stay): kmsg (1:11, which any process may open for writing) opens once
    // allowed, which it could not if the filter from create were still
    // attached, and not once denied again.
    let resources = env.tmp.path().join("devices.json");
    for (allow, want) in [(true, "kmsg=0"), (false, "kmsg=1")] {
        let rules = json!({"devices": [
            {"allow": false, "access": "rwm"},
            {"allow": allow, "type": "c", "major": 1, "minor": 11, "access": "rwm"},
        ]});
        std::fs::write(&resources, rules.to_string()).unwrap();
        amphi_on_v2(
            &env,
            &["update", "--resources", resources.to_str().unwrap(), &id],
        )
        .ok();
        let r = amphi_on_v2(
            &env,
            &[
                "exec",
                &id,
                "sh",
                "-c",
                "(exec 3>/tmp/kmsg) 2>/dev/null; echo kmsg=$?",
            ],
        );
        assert!(
            r.stdout.contains(want),
            "allow {allow}: {} {}",
            r.stdout,
            r.stderr
        );
    }
    amphi_on_v2(&env, &["pause", &id]).ok();
    assert_eq!(
        std::fs::read_to_string(dir.join("cgroup.freeze"))
            .unwrap()
            .trim(),
        "1"
    );
    amphi_on_v2(&env, &["resume", &id]).ok();
    let stats = amphi_on_v2(&env, &["events", "--stats", &id]);
    stats.ok();
    assert!(stats.stdout.contains("\"pids\""), "{}", stats.stdout);
    amphi_on_v2(&env, &["delete", "--force", &id]).ok();
    assert!(!dir.exists(), "cgroup {} left", dir.display());
    env.assert_clean(&id, &b.cgroup());
}
