//! containerd-shim-amphi-v2 against a real containerd (Debian's 1.6): a
//! private daemon with its own config, root, state and socket in a temp
//! dir, images built locally as OCI layouts and imported, then `ctr` with
//! `--runtime io.containerd.amphi.v2` for native and wasm images. At the end
//! no shim, cgroup, mount or state may be left.

use std::process::{Command, Stdio};

use amphi_tests::containerd::{image, reap_zombies, Containerd, BUSYBOX, NS, RUNTIME, WASM};
use amphi_tests::{amphi_bin, cgroup_dirs, wait_for};

#[test]
fn containerd_runs_native_and_wasm_through_the_shim() {
    let c = Containerd::start(&amphi_bin());
    for kind in ["busybox", "wasm"] {
        let tar = image(kind, c.tmp.path());
        c.ok(&["images", "import", tar.to_str().unwrap()]);
    }

    // run --rm: output and exit codes, native and wasm.
    let o = c.run(&["--rm"], BUSYBOX, "hello", &["echo", "hello from busybox"]);
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "hello from busybox\n"),
        "{}",
        o.stderr
    );
    let o = c.run(&["--rm"], WASM, "wasm", &[]);
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "hello from wasm\n"),
        "{}",
        o.stderr
    );
    let o = c.run(&["--rm"], BUSYBOX, "exit7", &["sh", "-c", "exit 7"]);
    assert_eq!(o.code, 7, "{}", o.stderr);

    // A long-running native task: exec, pause/resume, metrics, ps, kill.
    let o = c.run(&["-d"], BUSYBOX, "long", &["sleep", "600"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(c.task_status("long"), "RUNNING");
    let o = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "long",
        "sh",
        "-c",
        "echo in exec; exit 3",
    ]);
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (3, "in exec\n"),
        "{}",
        o.stderr
    );
    c.ok(&["task", "pause", "long"]);
    assert_eq!(c.task_status("long"), "PAUSED");
    c.ok(&["task", "resume", "long"]);
    assert_eq!(c.task_status("long"), "RUNNING");
    let metrics = c.ok(&["task", "metrics", "long"]);
    assert!(
        metrics.contains("pids.current") && metrics.contains("memory.usage"),
        "{metrics}"
    );
    let pid = c.task_pid("long");
    assert!(c.ok(&["task", "ps", "long"]).contains(&pid.to_string()));
    // The shim's footprint with one task, for the record.
    if let Some(shim) = c.shims().first() {
        let status = std::fs::read_to_string(format!("/proc/{shim}/status")).unwrap_or_default();
        let rss = status
            .lines()
            .find(|l| l.starts_with("VmRSS"))
            .unwrap_or("");
        eprintln!("shim {shim}: {rss}");
    }
    c.ok(&["task", "kill", "-s", "KILL", "long"]);
    assert!(wait_for(10, || c.task_status("long") == "STOPPED"));
    c.ok(&["task", "delete", "long"]);
    c.ok(&["container", "delete", "long"]);

    // A long-running wasm task joined to a native "sandbox" by path (as a
    // pod's containers join its sandbox), then killed.
    let o = c.run(&["-d"], BUSYBOX, "sandbox", &["sleep", "600"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let sandbox = c.task_pid("sandbox");
    let netns = format!("network:/proc/{sandbox}/ns/net");
    let o = c.run(
        &["-d", "--with-ns", &netns],
        WASM,
        "guest",
        &["/idle.wasm", "600"],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let guest = c.task_pid("guest");
    assert_eq!(
        std::fs::read_link(format!("/proc/{guest}/ns/net")).unwrap(),
        std::fs::read_link(format!("/proc/{sandbox}/ns/net")).unwrap(),
        "the wasm task joined the sandbox's network namespace"
    );
    c.ok(&["task", "kill", "guest"]);
    assert!(
        wait_for(10, || c.task_status("guest") == "STOPPED"),
        "wasm guest ignores SIGTERM"
    );
    c.ok(&["task", "delete", "guest"]);
    c.ok(&["container", "delete", "guest"]);
    c.remove("sandbox");

    // A pod's containers share one shim (CRI's sandbox-id annotation).
    let pod = "io.kubernetes.cri.sandbox-id=pod1";
    let o = c.run(
        &["-d", "--annotation", pod],
        BUSYBOX,
        "pod1",
        &["sleep", "600"],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let before = c.shims().len();
    let o = c.run(
        &["-d", "--annotation", pod],
        WASM,
        "pod1-wasm",
        &["/idle.wasm", "600"],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        c.shims().len(),
        before,
        "the pod's second container got a shim of its own"
    );
    c.remove("pod1-wasm");
    assert_eq!(
        c.task_status("pod1"),
        "RUNNING",
        "the shared shim left with one container"
    );
    c.remove("pod1");

    // A shim killed mid-flight: containerd's clean-up (`shim delete`)
    // removes the container, its processes, cgroup and rootfs mount.
    let before: Vec<i32> = c.shims();
    let o = c.run(&["-d"], BUSYBOX, "victim", &["sleep", "600"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let victim = c.task_pid("victim");
    let shim = *c
        .shims()
        .iter()
        .find(|p| !before.contains(p))
        .expect("the victim's shim");
    // SAFETY: a shim this test's containerd started.
    unsafe { libc::kill(shim, libc::SIGKILL) };
    assert!(
        wait_for(10, || {
            reap_zombies(c.daemon.id() as i32);
            std::fs::metadata(format!("/proc/{victim}")).is_err()
        }),
        "the container outlived its shim's clean-up"
    );
    let _ = c.ctr(&["task", "delete", "victim"]);
    c.ok(&["container", "delete", "victim"]);
    assert!(
        !c.tmp.path().join("amphi").join(NS).join("victim").exists(),
        "amphi state left"
    );

    // An OOM kill is published as /tasks/oom.
    let events_log = c.tmp.path().join("events.log");
    let mut events = Command::new("ctr")
        .arg("-a")
        .arg(c.tmp.path().join("c.sock"))
        .arg("events")
        .stdout(std::fs::File::create(&events_log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let o = c.run(
        &["--rm", "--memory-limit", "16777216"],
        BUSYBOX,
        "oom",
        &["sh", "-c", "head -c 200000000 /dev/zero | tail"],
    );
    assert_eq!(o.code, 137, "the memory hog was OOM-killed: {}", o.stderr);
    let oom = wait_for(5, || {
        std::fs::read_to_string(&events_log).is_ok_and(|s| s.contains("/tasks/oom"))
    });
    let _ = events.kill();
    let _ = events.wait();
    assert!(
        oom,
        "no /tasks/oom event: {}",
        std::fs::read_to_string(&events_log).unwrap_or_default()
    );

    // A terminal: ctr needs one of its own, which script(1) provides.
    let cg = c.cgroup("tty");
    let cmd = format!(
        "ctr -a {} -n {NS} run --fifo-dir {} --rm -t --runtime {RUNTIME} --cgroup {cg} {BUSYBOX} tty sh -c 'tty; echo done'",
        c.tmp.path().join("c.sock").display(),
        c.tmp.path().join("fifo").display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(
        out.status.success() && text.contains("/dev/pts/0") && text.contains("done"),
        "{text}"
    );

    // containerd's own runc shim drives the amphi binary for native containers.
    let cg = c.cgroup("runc");
    let bin = amphi_bin();
    let o = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.runc.v2",
        "--runc-binary",
        bin.to_str().unwrap(),
        "--cgroup",
        &cg,
        BUSYBOX,
        "viarunc",
        "sh",
        "-c",
        "echo via runc shim; exit 4",
    ]);
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (4, "via runc shim\n"),
        "{}",
        o.stderr
    );

    // Nothing left: tasks, shims, cgroups, mounts, amphi state.
    assert!(c.ctr(&["task", "ls", "-q"]).stdout.trim().is_empty());
    assert!(
        wait_for(10, || c.shims().is_empty()),
        "shims left: {:?}",
        c.shims()
    );
    for name in [
        "hello",
        "wasm",
        "exit7",
        "long",
        "sandbox",
        "guest",
        "pod1",
        "pod1-wasm",
        "oom",
        "tty",
        "runc",
    ] {
        for d in cgroup_dirs(&c.cgroup(name)) {
            assert!(!d.exists(), "cgroup {} left", d.display());
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&c.tmp.path().display().to_string()),
        "mounts left:\n{mounts}"
    );
    let state: Vec<_> = std::fs::read_dir(c.tmp.path().join("amphi").join(NS))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "wasm-cache")
        .collect();
    assert!(state.is_empty(), "amphi state left: {state:?}");
}

/// On a v2 host the shim reports `io.containerd.cgroups.v2.Metrics`, as
/// containerd's runc shim does there: containerd runs in a mount namespace
/// with cgroup2 at /sys/fs/cgroup (the host's unified hierarchy), and
/// `ctr task metrics` prints v2's rows, counted by the kernel.
/// A container in a pid namespace it does not own (the pod's, through
/// `--with-ns pid:`): when its init exits, what it started dies at once,
/// before `delete`, as containerd's runc shim does (`ShouldKillAllOnExit`).
#[test]
fn a_container_sharing_a_pid_namespace_leaves_nothing_once_its_init_exits() {
    let c = Containerd::start(&amphi_bin());
    let tar = image("busybox", c.tmp.path());
    c.ok(&["images", "import", tar.to_str().unwrap()]);
    for runtime in [RUNTIME, "io.containerd.runc.v2"] {
        let tag = if runtime == RUNTIME { "amphi" } else { "runc" };
        let (pod, member) = (format!("{tag}-pod"), format!("{tag}-member"));
        let o = c.run_with(runtime, &["-d"], BUSYBOX, &pod, &["sleep", "600"]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        let pidns = format!("pid:/proc/{}/ns/pid", c.task_pid(&pod));
        let o = c.run_with(
            runtime,
            &["-d", "--with-ns", &pidns],
            BUSYBOX,
            &member,
            &["sh", "-c", "sleep 600 & sleep 600 & exit 0"],
        );
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(
            wait_for(10, || c.task_status(&member) == "STOPPED"),
            "{tag}"
        );
        let procs = || -> Vec<String> {
            cgroup_dirs(&c.cgroup(&member))
                .iter()
                .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
                .flat_map(|s| s.lines().map(str::to_owned).collect::<Vec<_>>())
                .collect()
        };
        assert!(
            wait_for(10, || procs().is_empty()),
            "{tag}: the exited container's processes {:?} outlive its init",
            procs()
        );
        // The pod itself is untouched.
        assert_eq!(c.task_status(&pod), "RUNNING", "{tag}");
        c.ok(&["task", "delete", &member]);
        c.ok(&["container", "delete", &member]);
        c.remove(&pod);
    }
}

#[test]
fn task_metrics_are_cgroup2_metrics_on_a_v2_host() {
    let c = Containerd::start_on_cgroup2(&amphi_bin());
    let tar = image("busybox", c.tmp.path());
    c.ok(&["images", "import", tar.to_str().unwrap()]);
    // ctr asks for CPU shares by default; this host's unified hierarchy
    // has no cpu controller to take them (a pure v2 host's would), and 0
    // is unset.
    let o = c.run(
        &["-d", "--cpu-shares", "0"],
        BUSYBOX,
        "v2metrics",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 600",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let usage_usec = |table: &str| -> Option<u64> {
        table
            .lines()
            .find_map(|l| l.strip_prefix("cpu.usage_usec"))
            .and_then(|v| v.trim().parse().ok())
    };
    // The loop's CPU time shows once it has run a little.
    assert!(
        wait_for(10, || usage_usec(&c.ok(&["task", "metrics", "v2metrics"]))
            .is_some_and(|u| u > 0)),
        "{}",
        c.ok(&["task", "metrics", "v2metrics"])
    );
    let table = c.ok(&["task", "metrics", "v2metrics"]);
    assert!(!table.contains("cpuacct"), "v1 rows on a v2 host:\n{table}");
    c.remove("v2metrics");
    assert!(
        wait_for(10, || {
            reap_zombies(c.daemon.id() as i32);
            c.shims().is_empty()
        }),
        "shims left: {:?}",
        c.shims()
    );
    let unified = amphi_tests::cgroup_dirs_by_hierarchy(&c.cgroup("v2metrics"))
        .into_iter()
        .find(|(ctrls, _)| ctrls.is_empty());
    if let Some((_, dir)) = unified {
        assert!(!dir.exists(), "cgroup {} left", dir.display());
    }
}
