//! Docker as it ships (Debian's docker.io 20.10, its default seccomp
//! profile) with amphi registered as a runtime in daemon.json: what a
//! Docker user does, checked through Docker and from the host, and
//! nothing left after.

use amphi_tests::clients::rootfs_tarball;
use amphi_tests::docker::Docker;
use amphi_tests::{amphi_bin, wait_for};

const BUSYBOX: &str = "amphi/busybox:test";
const WASM: &str = "amphi/wasm:test";

fn cgroup_file(d: &Docker, id: &str, files: &[&str]) -> Option<String> {
    d.container_cgroups(id).iter().find_map(|dir| {
        files
            .iter()
            .find_map(|f| std::fs::read_to_string(dir.join(f)).ok())
            .map(|s| s.trim().to_owned())
    })
}

#[test]
fn docker_drives_amphi() {
    let d = Docker::start(&amphi_bin());
    let images = d.tmp.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    d.import(&rootfs_tarball("busybox", &images), BUSYBOX, &[]);
    d.import(
        &rootfs_tarball("wasm", &images),
        WASM,
        &[r#"ENTRYPOINT ["/hello.wasm"]"#],
    );

    // run --rm: output, exit codes, Docker's default seccomp profile.
    let r = d.run(&["--rm"], BUSYBOX, &["echo", "hello from docker"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "hello from docker\n"),
        "{}",
        r.stderr
    );
    assert_eq!(d.run(&["--rm"], BUSYBOX, &["sh", "-c", "exit 3"]).code, 3);
    let r = d.run(
        &["--rm"],
        BUSYBOX,
        &["grep", "^Seccomp:", "/proc/self/status"],
    );
    assert_eq!(
        r.stdout.split_whitespace().last(),
        Some("2"),
        "{}",
        r.stderr
    );

    // -t, --user, --cap-drop ALL, --read-only.
    let r = d.run(&["--rm", "-t"], BUSYBOX, &["tty"]);
    assert!(
        r.stdout.starts_with("/dev/pts/"),
        "{:?} {}",
        r.stdout,
        r.stderr
    );
    let r = d.run(&["--rm", "--user", "1000:1000"], BUSYBOX, &["id", "-u"]);
    assert_eq!(r.stdout.trim(), "1000", "{}", r.stderr);
    let r = d.run(
        &["--rm", "--cap-drop", "ALL"],
        BUSYBOX,
        &["grep", "^CapEff:", "/proc/self/status"],
    );
    assert_eq!(
        r.stdout.split_whitespace().last(),
        Some("0000000000000000"),
        "{}",
        r.stderr
    );
    assert_ne!(
        d.run(&["--rm", "--read-only"], BUSYBOX, &["touch", "/x"])
            .code,
        0
    );

    // -d, exec, logs, top, stats, pause/unpause, stop, rm; limits on the host.
    let r = d.run(
        &["-d", "--name", "sleeper", "-m", "64m", "--pids-limit", "16"],
        BUSYBOX,
        &["sh", "-c", "echo started; exec sleep 600"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let id = r.stdout.trim().to_owned();
    assert!(wait_for(10, || d
        .docker(&["logs", "sleeper"])
        .stdout
        .contains("started")));
    let r = d.docker(&["exec", "sleeper", "cat", "/proc/1/cmdline"]);
    assert!(r.stdout.starts_with("sleep"), "{} {}", r.stdout, r.stderr);
    assert_eq!(d.docker(&["exec", "sleeper", "sh", "-c", "exit 7"]).code, 7);
    assert!(d.ok(&["top", "sleeper"]).contains("sleep 600"));
    assert_eq!(
        cgroup_file(&d, &id, &["memory.limit_in_bytes", "memory.max"]).as_deref(),
        Some("67108864")
    );
    assert_eq!(cgroup_file(&d, &id, &["pids.max"]).as_deref(), Some("16"));
    let stats = d.ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.MemUsage}} {{.PIDs}}",
        "sleeper",
    ]);
    assert!(stats.contains("/ 64MiB"), "docker stats: {stats}");
    d.ok(&["pause", "sleeper"]);
    assert_eq!(
        d.ok(&["inspect", "--format", "{{.State.Status}}", "sleeper"])
            .trim(),
        "paused"
    );
    let frozen = cgroup_file(&d, &id, &["freezer.state", "cgroup.freeze"]);
    assert!(
        matches!(frozen.as_deref(), Some("FROZEN") | Some("1")),
        "{frozen:?}"
    );
    d.ok(&["unpause", "sleeper"]);
    d.ok(&["stop", "--time", "1", "sleeper"]);
    d.ok(&["rm", "sleeper"]);

    // -m: an OOM kill is exit 137.
    let r = d.run(
        &["--rm", "-m", "32m", "--memory-swap", "32m"],
        BUSYBOX,
        &["tail", "/dev/zero"],
    );
    assert_eq!(r.code, 137, "{}", r.stderr);

    // A wasm image: its entrypoint's magic makes it wasm (Docker 20.10 has
    // no --annotation); docker stop ends a guest with TERM.
    let r = d.run(&["--rm"], WASM, &[]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "hello from wasm\n"),
        "{}",
        r.stderr
    );
    d.ok(&[
        "run",
        "-d",
        "--runtime",
        "amphi",
        "--pull",
        "never",
        "--network",
        "none",
        "--name",
        "wasmidle",
        "--entrypoint",
        "/idle.wasm",
        WASM,
        "600",
    ]);
    d.ok(&["stop", "--time", "5", "wasmidle"]);
    assert_eq!(
        d.ok(&["inspect", "--format", "{{.State.ExitCode}}", "wasmidle"])
            .trim(),
        "143"
    );
    d.ok(&["rm", "wasmidle"]);

    // A module amphi cannot load fails the run with amphi's reason.
    let r = d.run(&["--rm", "--entrypoint", "/bad.wasm"], WASM, &[]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("/bad.wasm"),
        "amphi's error in Docker's: {}",
        r.stderr
    );

    assert!(
        d.ok(&["ps", "--all", "--quiet"]).trim().is_empty(),
        "containers left"
    );
    assert!(
        wait_for(10, || amphi_tests::processes_rooted_in(d.tmp.path())
            .is_empty()),
        "container processes left"
    );
}
