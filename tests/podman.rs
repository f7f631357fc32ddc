//! podman as it ships (Debian's podman 4.3, its default seccomp profile)
//! driving amphi with `--runtime`, as root and rootless: what a podman user
//! does, checked through podman and from the host, and nothing left after.

use std::path::Path;

use amphi_tests::clients::rootfs_tarball;
use amphi_tests::podman::Podman;
use amphi_tests::{amphi_bin, wait_for};

const BUSYBOX: &str = "localhost/amphi/busybox:test";
const WASM: &str = "localhost/amphi/wasm:test";

/// A podman running `amphi`, with the project's busybox and wasm images.
fn podman(rootless: bool, amphi: &Path) -> Podman {
    let p = if rootless {
        Podman::rootless(amphi)
    } else {
        Podman::root(amphi)
    };
    let images = p.tmp.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    p.import(&rootfs_tarball("busybox", &images), BUSYBOX, &[]);
    p.import(
        &rootfs_tarball("wasm", &images),
        WASM,
        &[r#"ENTRYPOINT ["/hello.wasm"]"#],
    );
    if let Some(u) = &p.user {
        // What a rootless podman makes as root is the user's.
        u.chown_tree(p.tmp.path());
    }
    p
}

fn cgroup_file(p: &Podman, id: &str, file: &str) -> Option<String> {
    p.container_cgroups(id)
        .iter()
        .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
        .map(|s| s.trim().to_owned())
}

/// Nothing of the containers is left: podman knows none, no conmon or
/// container process runs, no cgroup is left below the parent.
#[track_caller]
fn assert_clean(p: &Podman) {
    let left = p.ok(&["ps", "--all", "--quiet"]);
    assert!(
        left.trim().is_empty(),
        "podman still has containers: {left}"
    );
    assert!(
        wait_for(10, || amphi_tests::processes_rooted_in(p.tmp.path())
            .is_empty()),
        "container processes left"
    );
    let conmons = || -> Vec<i32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.starts_with("/usr/bin/conmon") && c.contains(&*p.tmp.path().to_string_lossy())
                })
            })
            .collect()
    };
    // conmon outlives `podman run --rm` by its own clean-up.
    assert!(
        wait_for(10, || conmons().is_empty()),
        "conmon left: {:?}",
        conmons()
    );
}

fn scenarios_every_podman_user_runs(p: &Podman) {
    // run --rm: output and exit codes.
    let r = p.run(&["--rm"], BUSYBOX, &["echo", "hello from podman"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "hello from podman\n");
    let r = p.run(&["--rm"], BUSYBOX, &["sh", "-c", "exit 3"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    // podman's default seccomp profile is in force.
    let r = p.run(
        &["--rm"],
        BUSYBOX,
        &["grep", "^Seccomp:", "/proc/self/status"],
    );
    assert_eq!(
        r.stdout.split_whitespace().last(),
        Some("2"),
        "{}{}",
        r.stdout,
        r.stderr
    );

    // run -d, exec, logs, stop, rm.
    let id = p.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "sleeper",
        BUSYBOX,
        "sh",
        "-c",
        "echo started; exec sleep 600",
    ]);
    let id = id.trim();
    assert!(wait_for(10, || p
        .podman(&["logs", "sleeper"])
        .stdout
        .contains("started")));
    let r = p.podman(&["exec", "sleeper", "cat", "/proc/1/cmdline"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("sleep"), "{}", r.stdout);
    let r = p.podman(&["exec", "sleeper", "sh", "-c", "exit 7"]);
    assert_eq!(r.code, 7, "exec exit code: {}", r.stderr);
    let top = p.ok(&["top", "sleeper"]);
    assert!(top.contains("sleep"), "{top}");
    p.ok(&["stop", "--time", "2", "sleeper"]);
    let state = p.ok(&[
        "inspect",
        "--format",
        "{{.State.Status}} {{.State.ExitCode}}",
        id,
    ]);
    assert!(state.starts_with("exited"), "{state}");
    p.ok(&["rm", "sleeper"]);

    // A wasm image: its entrypoint is a module (told by its magic), and
    // with the annotation crun and runwasi users write.
    for opts in [
        vec!["--rm"],
        vec!["--rm", "--annotation", "module.wasm.image/variant=compat"],
    ] {
        let r = p.run(&opts, WASM, &[]);
        assert_eq!(r.code, 0, "wasm {opts:?}: {}", r.stderr);
        assert_eq!(r.stdout, "hello from wasm\n");
    }
    // A long-running guest stops on podman stop (TERM ends a wasm guest).
    p.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "wasmidle",
        "--entrypoint",
        "/idle.wasm",
        WASM,
        "600",
    ]);
    let r = p.podman(&["exec", "wasmidle", "/hello.wasm"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "hello from wasm\n"),
        "{}",
        r.stderr
    );
    p.ok(&["stop", "--time", "5", "wasmidle"]);
    let code = p.ok(&["inspect", "--format", "{{.State.ExitCode}}", "wasmidle"]);
    assert_eq!(code.trim(), "143", "TERM ended the guest");
    p.ok(&["rm", "wasmidle"]);

    // What amphi cannot do fails with amphi's reason in podman's output,
    // and leaves nothing.
    let r = p.run(
        &["--rm", "--annotation", "run.oci.handler=wasm"],
        BUSYBOX,
        &["/bin/true"],
    );
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("not a WebAssembly module"),
        "amphi's error in podman's: {}",
        r.stderr
    );
    assert_clean(p);
}

/// amphi as the README installs it (scripts/install.sh, given the
/// binaries under test through the script's own BIN_DIR switch), into a
/// prefix of the test's.
fn installed(prefix: &Path) -> std::path::PathBuf {
    let script = amphi_tests::repo_root().join("scripts/install.sh");
    let built = amphi_tests::amphi_bin();
    let st = std::process::Command::new("bash")
        .arg(&script)
        .arg(prefix)
        .env("BIN_DIR", built.parent().expect("binary directory"))
        .status()
        .unwrap();
    assert!(st.success(), "install.sh");
    for b in ["amphi", "containerd-shim-amphi-v2"] {
        assert!(prefix.join("bin").join(b).exists(), "{b} installed");
    }
    // Its man pages, each rendered by man(1): amphi(8), a page per
    // subcommand, the shim's.
    let man8 = prefix.join("share/man/man8");
    let pages: Vec<_> = std::fs::read_dir(&man8)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    for name in [
        "amphi.8",
        "amphi-run.8",
        "amphi-exec.8",
        "containerd-shim-amphi-v2.8",
    ] {
        assert!(man8.join(name).exists(), "{name} installed: {pages:?}");
    }
    for page in &pages {
        let out = std::process::Command::new("man")
            .arg("-l")
            .arg(page)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .output()
            .expect("man (Debian's man-db)");
        let text = String::from_utf8_lossy(&out.stdout);
        let stem = page.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(
            out.status.success() && text.contains("NAME") && text.contains(&stem),
            "man -l {}: {}{}",
            page.display(),
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    prefix.join("bin/amphi")
}

#[test]
fn podman_as_root() {
    let prefix = tempfile::tempdir().unwrap();
    let amphi = installed(prefix.path());
    let p = podman(false, &amphi);
    scenarios_every_podman_user_runs(&p);

    // -t: the terminal comes over conmon's console socket.
    let r = p.run(
        &["--rm", "-t"],
        BUSYBOX,
        &["sh", "-c", "tty; [ -c /dev/console ] && echo console"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = r.stdout.replace('\r', "");
    assert!(
        out.starts_with("/dev/pts/") && out.contains("console"),
        "{out:?}"
    );

    // --user, --cap-drop ALL, --read-only.
    let r = p.run(&["--rm", "--user", "1000:1000"], BUSYBOX, &["id", "-u"]);
    assert_eq!(r.stdout.trim(), "1000", "{}", r.stderr);
    let r = p.run(
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
    let r = p.run(&["--rm", "--read-only"], BUSYBOX, &["touch", "/x"]);
    assert_ne!(r.code, 0, "a read-only root");

    // Limits, read from the container's cgroup on the host.
    let r = p.run(
        &["-d", "--memory", "64m", "--pids-limit", "16"],
        BUSYBOX,
        &["sleep", "600"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let id = r.stdout;
    let id = id.trim().to_owned();
    let limit =
        cgroup_file(&p, &id, "memory.limit_in_bytes").or(cgroup_file(&p, &id, "memory.max"));
    assert_eq!(limit.as_deref(), Some("67108864"));
    assert_eq!(cgroup_file(&p, &id, "pids.max").as_deref(), Some("16"));
    let r = p.podman(&[
        "exec",
        &id,
        "sh",
        "-c",
        "for i in $(seq 32); do sleep 60 & done; wait",
    ]);
    assert!(
        r.stderr.contains("can't fork"),
        "the pids limit holds: {}",
        r.stderr
    );

    // pause / unpause freeze and thaw the cgroup.
    p.ok(&["pause", &id]);
    assert_eq!(
        p.ok(&["inspect", "--format", "{{.State.Status}}", &id])
            .trim(),
        "paused"
    );
    let frozen = cgroup_file(&p, &id, "freezer.state").or(cgroup_file(&p, &id, "cgroup.freeze"));
    assert!(
        matches!(frozen.as_deref(), Some("FROZEN") | Some("1")),
        "{frozen:?}"
    );
    p.ok(&["unpause", &id]);
    assert_eq!(
        p.ok(&["inspect", "--format", "{{.State.Status}}", &id])
            .trim(),
        "running"
    );
    p.ok(&["rm", "--force", "--time", "0", &id]);

    // An OOM kill: exit 137 (conmon on a hybrid host does not see the OOM
    // event, so OOMKilled stays false, with runc too).
    let r = p.run(
        &["--rm", "--memory", "32m", "--memory-swap", "32m"],
        BUSYBOX,
        &["tail", "/dev/zero"],
    );
    assert_eq!(r.code, 137, "{}", r.stderr);
    assert_clean(&p);
    drop(p);
    let st = std::process::Command::new("bash")
        .arg(amphi_tests::repo_root().join("scripts/install.sh"))
        .arg("--uninstall")
        .arg(prefix.path())
        .status()
        .unwrap();
    assert!(st.success() && !amphi.exists(), "install.sh --uninstall");
    let man8 = prefix.path().join("share/man/man8");
    let left: Vec<_> = std::fs::read_dir(&man8)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "man pages left: {left:?}");
}

#[test]
fn podman_rootless() {
    let p = podman(true, &amphi_bin());
    scenarios_every_podman_user_runs(&p);
    // amphi ran inside podman's user namespace as its root, and kept its
    // state where that user may write, not in /run/amphi.
    assert!(!Path::new("/run/amphi").join("sleeper").exists());
}

/// podman's checkpoint and restore of a wasm container: podman drives
/// amphi's `checkpoint` and `restore` (through conmon), and the guest
/// counts on where it stopped, in the same container.
#[test]
fn podman_checkpoints_and_restores_a_wasm_container() {
    let prefix = tempfile::tempdir().unwrap();
    let amphi = installed(prefix.path());
    let p = podman(false, &amphi);
    let counted = |p: &Podman| -> Vec<u64> {
        p.ok(&["logs", "count"])
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    };
    p.ok(&[
        "run",
        "-d",
        "--name",
        "count",
        "--annotation",
        "io.github.amphi.checkpoint=true",
        "--entrypoint",
        "/counter.wasm",
        WASM,
        "-",
        "20",
    ]);
    assert!(wait_for(30, || counted(&p).len() >= 3), "{:?}", counted(&p));
    p.ok(&["container", "checkpoint", "count"]);
    let status = p.ok(&[
        "inspect",
        "--format",
        "{{.State.Status}} {{.State.Checkpointed}}",
        "count",
    ]);
    assert_eq!(status.trim(), "exited true");
    let at_checkpoint = counted(&p);
    p.ok(&["container", "restore", "count"]);
    assert!(wait_for(30, || counted(&p).len() >= at_checkpoint.len() + 3));
    let all = counted(&p);
    let expected: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(all, expected, "the restored guest does not count on");
    p.ok(&["rm", "--force", "count"]);
    assert_clean(&p);
}
