//! create / start / state / kill / delete, exit codes, signals and hooks.

use std::time::Duration;

use amphi_tests::{wait_for, Env};
use serde_json::json;

#[test]
fn create_start_kill_delete_transitions() {
    let env = Env::new();
    let b = env.bundle(
        "life",
        &[
            "sh",
            "-c",
            "trap 'exit 7' TERM; while :; do sleep 0.05; done",
        ],
    );
    b.write();
    let id = env.id("life");
    let pid_file = env.tmp.path().join("pid");
    env.amphi(&[
        "create",
        "--bundle",
        b.path(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
    ])
    .ok();
    let s = env.state(&id);
    assert_eq!(s["status"], "created");
    assert_eq!(s["id"], id.as_str());
    assert_eq!(s["ociVersion"], "1.2.0");
    assert_eq!(s["executor"], "native");
    assert_eq!(
        std::fs::canonicalize(s["bundle"].as_str().unwrap()).unwrap(),
        std::fs::canonicalize(&b.dir).unwrap()
    );
    let pid = s["pid"].as_i64().unwrap();
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), pid.to_string());
    // The workload has not run: the init still waits on the exec fifo.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("trap"));

    env.amphi(&["start", &id]).ok();
    assert_eq!(env.status(&id).as_deref(), Some("running"));
    env.amphi(&["start", &id])
        .fails_with("only a created container can be started");
    env.amphi(&["delete", &id]).fails_with("is running");

    env.amphi(&["kill", &id, "TERM"]).ok();
    assert!(wait_for(10, || env.status(&id).as_deref() == Some("stopped")));
    env.amphi(&["kill", &id, "KILL"])
        .fails_with("no process to signal");
    let s = env.state(&id);
    assert!(s.get("pid").is_none(), "a stopped container reports no pid");
    env.amphi(&["delete", &id]).ok();
    assert_eq!(env.status(&id), None);
    env.amphi(&["state", &id]).fails_with("does not exist");
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn run_returns_the_exit_code() {
    let env = Env::new();
    for (name, code) in [("zero", 0), ("three", 3), ("big", 200)] {
        let b = env.bundle(name, &["sh", "-c", &format!("exit {code}")]);
        b.write();
        let id = env.id(name);
        let r = env.amphi(&["run", "--bundle", b.path(), &id]);
        assert_eq!(r.code, code, "{}", r.stderr);
        env.assert_clean(&id, &b.cgroup());
    }
}

#[test]
fn run_reports_death_by_signal_as_128_plus_n() {
    let env = Env::new();
    let b = env.bundle("sig", &["sleep", "60"]);
    b.write();
    let id = env.id("sig");
    let mut child = env
        .command(&["run", "--bundle", b.path(), &id])
        .spawn()
        .unwrap();
    assert!(wait_for(10, || env.status(&id).as_deref() == Some("running")));
    env.amphi(&["kill", &id, "9"]).ok();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(137));
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn run_forwards_signals_to_the_container() {
    let env = Env::new();
    let b = env.bundle(
        "fwd",
        &[
            "sh",
            "-c",
            "trap 'exit 42' USR1; echo ready; while :; do sleep 0.05; done",
        ],
    );
    b.write();
    let id = env.id("fwd");
    let mut child = env
        .command(&["run", "--bundle", b.path(), &id])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut out, &mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(42));
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn instant_exits_are_never_missed() {
    let env = Env::new();
    let b = env.bundle("true", &["true"]);
    b.write();
    for i in 0..40 {
        let id = env.id(&format!("true{i}"));
        let r = env.amphi(&["run", "--bundle", b.path(), &id]);
        assert_eq!(r.code, 0, "run {i}: {}", r.stderr);
    }
    env.assert_clean(&env.id("true0"), &b.cgroup());
}

#[test]
fn kill_accepts_names_and_numbers_and_all() {
    let env = Env::new();
    let b = env.bundle(
        "kill",
        &["sh", "-c", "trap '' TERM; sleep 60 & sleep 60 & wait"],
    );
    b.write();
    let id = env.id("kill");
    env.amphi(&["run", "--detach", "--bundle", b.path(), &id])
        .ok();
    env.amphi(&["kill", &id, "NOPE"])
        .fails_with("unknown signal");
    env.amphi(&["kill", &id, "0"]).ok();
    env.amphi(&["kill", &id, "SIGCONT"]).ok();
    env.amphi(&["kill", "--all", &id, "KILL"]).ok();
    assert!(wait_for(10, || env.status(&id).as_deref() == Some("stopped")));
    env.amphi(&["delete", &id]).ok();
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn delete_force_stops_a_running_container() {
    let env = Env::new();
    let b = env.bundle("force", &["sleep", "60"]);
    b.write();
    let id = env.id("force");
    env.amphi(&["run", "-d", "--bundle", b.path(), &id]).ok();
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    env.amphi(&["delete", "--force", &id]).ok();
    amphi_tests::reap_inits();
    assert!(wait_for(5, || !std::path::Path::new(&format!(
        "/proc/{pid}"
    ))
    .exists()));
    env.assert_clean(&id, &b.cgroup());
    // delete --force of what does not exist is not an error (runc does the same).
    env.amphi(&["delete", "--force", &id]).ok();
}

#[test]
fn created_container_can_be_deleted() {
    let env = Env::new();
    let b = env.bundle("created", &["true"]);
    b.write();
    let id = env.id("created");
    env.amphi(&["create", "--bundle", b.path(), &id]).ok();
    env.amphi(&["delete", &id]).ok();
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn list_shows_containers() {
    let env = Env::new();
    let b = env.bundle("list", &["sleep", "60"]);
    b.write();
    let (a, c) = (env.id("la"), env.id("lc"));
    env.amphi(&["run", "-d", "--bundle", b.path(), &a]).ok();
    let mut b2 = env.bundle("list2", &["true"]);
    b2.spec["linux"]["cgroupsPath"] = json!(format!("{}-list2", env.tag));
    b2.write();
    env.amphi(&["create", "--bundle", b2.path(), &c]).ok();
    let r = env.amphi(&["list", "--format", "json"]);
    r.ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let mut seen: Vec<(String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().into(),
                s["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![(a.clone(), "running".into()), (c.clone(), "created".into())]
    );
    let table = env.amphi(&["list"]);
    assert!(table.stdout.starts_with("ID"), "{}", table.stdout);
    assert_eq!(env.amphi(&["list", "-q"]).stdout, format!("{a}\n{c}\n"));
    env.amphi(&["delete", "-f", &a]).ok();
    env.amphi(&["delete", "-f", &c]).ok();
    env.assert_clean(&a, &b.cgroup());
    env.assert_clean(&c, &b2.cgroup());
}

#[test]
fn failing_or_slow_hooks_fail_create_and_leave_nothing() {
    let env = Env::new();
    for (name, hook, why) in [
        ("fail", json!({"path": "/bin/false"}), "failed"),
        (
            "slow",
            json!({"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}),
            "timed out after 1s",
        ),
    ] {
        let mut b = env.bundle(name, &["true"]);
        b.spec["hooks"] = json!({"createRuntime": [hook]});
        b.write();
        let id = env.id(name);
        let r = env.amphi(&["create", "--bundle", b.path(), &id]);
        r.fails_with("createRuntime").fails_with(why);
        env.assert_clean(&id, &b.cgroup());
    }
}

#[test]
fn concurrent_commands_on_distinct_and_same_ids() {
    let env = Env::new();
    let b = env.bundle("conc", &["sleep", "60"]);
    let mut spec = b.spec.clone();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            spec["linux"]["cgroupsPath"] = json!(format!("{}-conc{i}", env.tag));
            let dir = env.tmp.path().join(format!("bundle-conc{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::os::unix::fs::symlink(b.rootfs(), dir.join("rootfs")).unwrap();
            std::fs::write(dir.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
            let id = env.id(&format!("conc{i}"));
            let root = env.root.clone();
            std::thread::spawn(move || {
                let amphi = |args: &[&str]| {
                    std::process::Command::new(amphi_tests::amphi_bin())
                        .arg("--root")
                        .arg(&root)
                        .args(args)
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .status()
                        .unwrap()
                };
                assert!(amphi(&["create", "--bundle", dir.to_str().unwrap(), &id]).success());
                // Two starts race; exactly one wins.
                let (a, b) = std::thread::scope(|s| {
                    let a = s.spawn(|| amphi(&["start", &id]).success());
                    let b = s.spawn(|| amphi(&["start", &id]).success());
                    (a.join().unwrap(), b.join().unwrap())
                });
                assert!(a ^ b, "both or neither start succeeded");
                assert!(amphi(&["delete", "--force", &id]).success());
                id
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let id = t.join().unwrap();
        env.assert_clean(&id, &format!("{}-conc{i}", env.tag));
    }
}

#[test]
fn preserve_fds_beyond_what_was_passed_does_not_hang() {
    // amphi's own fds land at 3 and up; they must not be taken for the
    // caller's (one of them is the lock `start` needs).
    let env = Env::new();
    let b = env.bundle("fds", &["sh", "-c", "ls /proc/self/fd | wc -l"]);
    b.write();
    let id = env.id("fds");
    let r = env.amphi(&["run", "--preserve-fds", "5", "--bundle", b.path(), &id]);
    r.ok();
    // 0, 1, 2 and the directory ls reads: nothing of amphi's.
    assert_eq!(r.stdout.trim(), "4");
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn terminal_master_arrives_over_the_console_socket() {
    let env = Env::new();
    let sock = env.tmp.path().join("console.sock");
    let receiver = amphi_tests::console_receiver(&sock);
    let mut b = env.bundle("tty", &["sh", "-c", "tty; stty size; echo done"]);
    b.spec["process"]["terminal"] = json!(true);
    b.spec["process"]["consoleSize"] = json!({"height": 30, "width": 100});
    b.write();
    let id = env.id("tty");
    env.amphi(&[
        "create",
        "--console-socket",
        sock.to_str().unwrap(),
        "--bundle",
        b.path(),
        &id,
    ])
    .ok();
    let master = receiver.join().unwrap().expect("no pty master received");
    env.amphi(&["start", &id]).ok();
    let out = amphi_tests::read_to_end_of_pty(master);
    assert_eq!(out, "/dev/pts/0\n30 100\ndone\n");
    assert!(wait_for(10, || env.status(&id).as_deref() == Some("stopped")));
    env.amphi(&["delete", &id]).ok();
    env.assert_clean(&id, &b.cgroup());
    // Without a socket, a terminal cannot be had: say so.
    let id2 = env.id("tty2");
    env.amphi(&["create", "--bundle", b.path(), &id2])
        .fails_with("--console-socket");
    env.assert_clean(&id2, &b.cgroup());
}

#[test]
fn ps_pause_and_resume_native_and_wasm() {
    let env = Env::new();
    for (name, wasm) in [("pnative", false), ("pwasm", true)] {
        let args: &[&str] = if wasm {
            &["/app/spin.wasm"]
        } else {
            &["sh", "-c", "sleep 60 & while :; do :; done"]
        };
        let b = if wasm {
            env.wasm_bundle(name, args)
        } else {
            env.bundle(name, args)
        };
        b.write();
        let id = env.id(name);
        env.amphi(&["run", "-d", "--bundle", b.path(), &id]).ok();
        let pid = env.state(&id)["pid"].as_i64().unwrap();
        let r = env.amphi(&["ps", "--format", "json", &id]);
        r.ok();
        let pids: Vec<i64> = serde_json::from_str(&r.stdout).unwrap();
        assert!(pids.contains(&pid), "{pids:?} lacks the init {pid}");
        assert_eq!(pids.len(), if wasm { 1 } else { 2 }, "{pids:?}");
        env.amphi(&["resume", &id])
            .fails_with("only a paused container");
        env.amphi(&["pause", &id]).ok();
        assert_eq!(env.status(&id).as_deref(), Some("paused"));
        // Frozen: the busy init burns no CPU.
        let ticks = || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let f: Vec<&str> = stat.rsplit(") ").next().unwrap().split(' ').collect();
            f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
        };
        let before = ticks();
        std::thread::sleep(Duration::from_millis(300));
        assert!(ticks() - before <= 1, "a paused container ran");
        env.amphi(&["pause", &id])
            .fails_with("only a running container");
        env.amphi(&["resume", &id]).ok();
        assert_eq!(env.status(&id).as_deref(), Some("running"));
        let before = ticks();
        std::thread::sleep(Duration::from_millis(300));
        assert!(ticks() - before > 5, "a resumed container did not run");
        // A paused container can be force-deleted (it is thawed to die).
        env.amphi(&["pause", &id]).ok();
        env.amphi(&["delete", "--force", &id]).ok();
        env.assert_clean(&id, &b.cgroup());
    }
}

#[test]
fn exec_joins_a_running_container() {
    let env = Env::new();
    let b = env.wasm_bundle("exec", &["sleep", "60"]);
    b.write();
    let id = env.id("exec");
    env.amphi(&["run", "-d", "--bundle", b.path(), &id]).ok();
    let init = env.state(&id)["pid"].as_i64().unwrap();
    let r = env.amphi(&[
        "exec",
        "--env",
        "X=1",
        "--cwd",
        "/tmp",
        &id,
        "sh",
        "-c",
        "echo $$ $X $(pwd) $(hostname); ps -o comm | grep -c sleep",
    ]);
    r.ok();
    assert_eq!(r.stdout, "2 1 /tmp amphi-test\n1\n", "{}", r.stderr);
    assert_eq!(env.amphi(&["exec", &id, "sh", "-c", "exit 9"]).code, 9);
    // A wasm program execs into a native container (and runs as wasm).
    let r = env.amphi(&["exec", &id, "/app/hello.wasm"]);
    r.ok();
    assert_eq!(r.stdout, "hello from wasm\n");
    // --user and --process.
    assert_eq!(
        env.amphi(&["exec", "--user", "1000:1001", &id, "id"])
            .stdout,
        "uid=1000 gid=1001\n"
    );
    let pj = env.tmp.path().join("process.json");
    std::fs::write(&pj, serde_json::to_vec(&json!({"args": ["sh", "-c", "echo from json"], "cwd": "/", "user": {"uid": 0, "gid": 0}})).unwrap()).unwrap();
    assert_eq!(
        env.amphi(&["exec", "--process", pj.to_str().unwrap(), &id])
            .stdout,
        "from json\n"
    );
    // Bad input: a malformed process.json names the field; unknown caps and
    // users are refused; nothing runs.
    std::fs::write(
        &pj,
        br#"{"args": ["true"], "cwd": "/", "user": {"uid": "x"}}"#,
    )
    .unwrap();
    env.amphi(&["exec", "--process", pj.to_str().unwrap(), &id])
        .fails_with("user.uid");
    env.amphi(&["exec", "--cap", "CAP_NOPE", &id, "true"])
        .fails_with("unknown capability");
    env.amphi(&["exec", "--user", "bob", &id, "true"])
        .fails_with("--user");
    // The exec'd process is in the container's cgroup: ps sees it.
    let pid_file = env.tmp.path().join("exec.pid");
    env.amphi(&[
        "exec",
        "-d",
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
        "sleep",
        "30",
    ])
    .ok();
    amphi_tests::remember_init(std::fs::read_to_string(&pid_file).unwrap().parse().unwrap());
    let r = env.amphi(&["ps", "--format", "json", &id]);
    let pids: Vec<i64> = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert!(pids.contains(&init));
    // Paused and stopped containers take no exec.
    env.amphi(&["pause", &id]).ok();
    env.amphi(&["exec", &id, "true"])
        .fails_with("exec needs a running container");
    env.amphi(&["resume", &id]).ok();
    env.amphi(&["kill", "--all", &id, "KILL"]).ok();
    assert!(wait_for(10, || env.status(&id).as_deref() == Some("stopped")));
    env.amphi(&["exec", &id, "true"])
        .fails_with("exec needs a running container");
    env.amphi(&["delete", &id]).ok();
    env.assert_clean(&id, &b.cgroup());
}

/// Cgroups the workload made below its own are removed with it; one a
/// process outside the container still holds keeps delete from finishing,
/// and then delete fails and keeps the record (a cgroup without one could
/// never be found again), and succeeds once that process is gone.
#[test]
fn delete_removes_nested_cgroups_and_keeps_the_record_while_one_is_busy() {
    let env = Env::new();
    let b = env.bundle("nested", &["sleep", "600"]);
    b.write();
    let id = env.id("nested");
    env.amphi(&["create", "--bundle", b.path(), &id]).ok();
    let dirs = amphi_tests::cgroup_dirs(&b.cgroup());
    let first = dirs
        .iter()
        .find(|d| d.exists())
        .expect("a cgroup of the container")
        .clone();
    // Nested cgroups, as systemd or a runtime inside the container makes.
    for d in dirs.iter().filter(|d| d.exists()) {
        std::fs::create_dir_all(d.join("inner/deeper")).unwrap();
    }
    env.amphi(&["delete", "--force", &id]).ok();
    env.assert_clean(&id, &b.cgroup());

    let id = env.id("nested2");
    env.amphi(&["create", "--bundle", b.path(), &id]).ok();
    let holder_dir = first.join("held");
    std::fs::create_dir_all(&holder_dir).unwrap();
    let mut holder = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    std::fs::write(holder_dir.join("cgroup.procs"), holder.id().to_string()).unwrap();
    let r = env.amphi(&["delete", "--force", &id]);
    r.fails_with("run delete again");
    assert!(
        env.root.join(&id).exists(),
        "the record went, the cgroup stayed"
    );
    let _ = holder.kill();
    let _ = holder.wait();
    env.amphi(&["delete", &id]).ok();
    env.assert_clean(&id, &b.cgroup());
}

/// A parent directory amphi made for a container (a pod's, made by its
/// first container) goes with the last of the containers in it, whichever
/// that is: after a killed shim containerd deletes a pod's containers all
/// at once, the pod's first container as often first as last.
#[test]
fn a_shared_parent_cgroup_goes_with_the_last_container_in_it() {
    let env = Env::new();
    let pod = format!("{}-pod", env.tag);
    for first_deleted in ["sandbox", "app"] {
        let mut ids = Vec::new();
        for name in ["sandbox", "app"] {
            let mut b = env.bundle(&format!("{name}-{first_deleted}"), &["sleep", "600"]);
            b.spec["linux"]["cgroupsPath"] = json!(format!("{pod}/{name}"));
            b.write();
            let id = env.id(&format!("{name}-{first_deleted}"));
            env.amphi(&["create", "--bundle", b.path(), &id]).ok();
            ids.push((name, id));
        }
        ids.sort_by_key(|(name, _)| *name != first_deleted);
        let (_, first) = &ids[0];
        env.amphi(&["delete", "--force", first]).ok();
        assert!(
            amphi_tests::cgroup_dirs(&pod).iter().any(|d| d.exists()),
            "the pod's directory went while a container was in it"
        );
        let (_, last) = &ids[1];
        env.amphi(&["delete", "--force", last]).ok();
        env.assert_clean(last, &pod);
    }
}
