//! The systemd cgroup driver (`--systemd-cgroup`, `slice:prefix:name`
//! cgroupsPaths). Where systemd is PID 1 (the VM lane: systemd 252 on
//! pure cgroup v2), against the real systemd, read back with systemctl and
//! from the cgroup files, with runc --systemd-cgroup as the reference; on
//! a host without systemd, the clear error.

use amphi_tests::{wait_for, Env};
use serde_json::json;

fn systemd_runs() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

fn unit_gone(unit: &str) -> bool {
    wait_for(10, || {
        amphi_tests::systemctl_show(unit, "LoadState") == "not-found"
    })
}

fn systemd_bundle(env: &Env, name: &str, cgroups_path: &str) -> amphi_tests::Bundle {
    let mut b = env.bundle(name, &["sleep", "600"]);
    b.spec["linux"]["cgroupsPath"] = json!(cgroups_path);
    b.spec["linux"]["resources"] = json!({
        "memory": {"limit": 67108864},
        "pids": {"limit": 32},
        "cpu": {"quota": 50000, "period": 100000}
    });
    b.write();
    b
}

#[test]
fn without_systemd_the_flag_is_a_clear_error() {
    if systemd_runs() {
        return; // The lane's cases below cover a host with systemd.
    }
    let env = Env::new();
    let b = systemd_bundle(&env, "nosd", "system.slice:amphi:nosd");
    let id = env.id("nosd");
    env.amphi(&["--systemd-cgroup", "run", "--bundle", b.path(), &id])
        .fails_with("systemd is not running");
    assert!(!env.root.join(&id).exists());
}

#[test]
fn a_scope_unit_per_container_with_its_limits() {
    if !systemd_runs() {
        eprintln!("systemd is not PID 1 here: the VM lane runs this");
        return;
    }
    let env = Env::new();
    for (runtime, name) in [
        (amphi_tests::amphi_bin(), "amphisd"),
        ("/usr/sbin/runc".into(), "runcsd"),
    ] {
        let env_rt = Env::for_runtime(runtime);
        let id = env_rt.id(name);
        let unit = format!("{name}-{id}.scope");
        let b = systemd_bundle(&env_rt, name, &format!("system.slice:{name}:{id}"));
        env_rt
            .amphi(&["--systemd-cgroup", "create", "--bundle", b.path(), &id])
            .ok();
        env_rt.amphi(&["--systemd-cgroup", "start", &id]).ok();
        let pid = env_rt.state(&id)["pid"].as_i64().unwrap();
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert_eq!(cgroup.trim(), format!("0::/system.slice/{unit}"), "{name}");
        assert_eq!(
            amphi_tests::systemctl_show(&unit, "ActiveState"),
            "active",
            "{name}"
        );
        assert_eq!(
            amphi_tests::systemctl_show(&unit, "MemoryMax"),
            "67108864",
            "{name}"
        );
        assert_eq!(
            amphi_tests::systemctl_show(&unit, "TasksMax"),
            "32",
            "{name}"
        );
        assert_eq!(
            amphi_tests::systemctl_show(&unit, "CPUQuotaPerSecUSec"),
            "500ms",
            "{name}"
        );
        let dir = format!("/sys/fs/cgroup/system.slice/{unit}");
        assert_eq!(
            std::fs::read_to_string(format!("{dir}/memory.max"))
                .unwrap()
                .trim(),
            "67108864"
        );
        assert_eq!(
            std::fs::read_to_string(format!("{dir}/pids.max"))
                .unwrap()
                .trim(),
            "32"
        );
        // update changes the unit's properties and the files.
        env_rt
            .amphi(&[
                "--systemd-cgroup",
                "update",
                "--memory",
                "128m",
                "--pids-limit",
                "64",
                &id,
            ])
            .ok();
        assert_eq!(
            amphi_tests::systemctl_show(&unit, "MemoryMax"),
            "134217728",
            "{name} update"
        );
        assert_eq!(
            std::fs::read_to_string(format!("{dir}/pids.max"))
                .unwrap()
                .trim(),
            "64"
        );
        env_rt
            .amphi(&["--systemd-cgroup", "delete", "--force", &id])
            .ok();
        assert!(unit_gone(&unit), "{name}: the unit goes with the container");
        assert!(!std::path::Path::new(&dir).exists());
        amphi_tests::reap_inits();
    }
    // A slice of slices: kubelet's kubepods-besteffort-podX.slice shape.
    let id = env.id("nested");
    let b = systemd_bundle(&env, "nested", &format!("amphitest-pod1.slice:cri:{id}"));
    env.amphi(&["--systemd-cgroup", "run", "-d", "--bundle", b.path(), &id])
        .ok();
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert_eq!(
        cgroup.trim(),
        format!("0::/amphitest.slice/amphitest-pod1.slice/cri-{id}.scope")
    );
    env.amphi(&["--systemd-cgroup", "delete", "--force", &id])
        .ok();
    assert!(unit_gone(&format!("cri-{id}.scope")));
    let _ = std::process::Command::new("systemctl")
        .args(["stop", "amphitest-pod1.slice", "amphitest.slice"])
        .status();
    amphi_tests::reap_inits();
}

/// A bundle as `runc spec` writes it (with the `cgroup` mount at
/// /sys/fs/cgroup that runc, containerd, podman and Docker all write), a
/// busybox rootfs, `args`, a 64 MiB memory limit and `cgroups_path`.
fn runc_spec_bundle(
    env: &Env,
    name: &str,
    cgroups_path: &str,
    args: &[&str],
) -> amphi_tests::Bundle {
    let mut b = env.bundle(name, args);
    let dir = tempfile::tempdir().unwrap();
    let st = std::process::Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(dir.path())
        .status()
        .expect("runc spec");
    assert!(st.success());
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert!(
        spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["type"] == "cgroup"),
        "runc spec writes a cgroup mount"
    );
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(args);
    spec["linux"]["cgroupsPath"] = json!(cgroups_path);
    spec["linux"]["resources"]["memory"] = json!({"limit": 67108864});
    b.spec = spec;
    b.write();
    b
}

#[test]
fn runc_spec_bundles_in_every_cgroups_path_form() {
    if !systemd_runs() {
        eprintln!("systemd is not PID 1 here: the VM lane runs this");
        return;
    }
    for (runtime, rt) in [
        (amphi_tests::amphi_bin(), "amphi"),
        ("/usr/sbin/runc".into(), "runc"),
    ] {
        let env = Env::for_runtime(runtime);
        // slice:prefix:name in a top-level slice, in system.slice, in
        // kubelet's nested pod slices, with the slice left to the default,
        // and a unit that is itself a slice.
        for (i, (form, unit)) in [
            ("test.slice:{rt}:{id}", "{rt}-{id}.scope"),
            ("system.slice:{rt}:{id}", "{rt}-{id}.scope"),
            (
                "kubepods-besteffort-pod{i}.slice:cri-containerd:{id}",
                "cri-containerd-{id}.scope",
            ),
            (":{rt}:{id}", "{rt}-{id}.scope"),
        ]
        .into_iter()
        .enumerate()
        {
            let name = format!("{rt}{i}");
            let id = env.id(&name);
            let fill = |s: &str| {
                s.replace("{rt}", rt)
                    .replace("{id}", &id)
                    .replace("{i}", &i.to_string())
            };
            let (path, unit) = (fill(form), fill(unit));
            let b = runc_spec_bundle(
                &env,
                &name,
                &path,
                &[
                    "sh",
                    "-c",
                    "cat /sys/fs/cgroup/memory.max; cat /proc/self/cgroup",
                ],
            );
            let r = env.amphi(&["--systemd-cgroup", "run", "--bundle", b.path(), &id]);
            assert_eq!(r.code, 0, "{rt} {path}: {}", r.stderr);
            assert!(
                r.stdout.starts_with("67108864\n"),
                "{rt} {path}: {}",
                r.stdout
            );
            assert!(unit_gone(&unit), "{rt} {path}: {unit} left");
        }
        // create, start, update, delete on kubelet's form.
        let id = env.id(&format!("{rt}life"));
        let unit = format!("cri-containerd-{id}.scope");
        let b = runc_spec_bundle(
            &env,
            &format!("{rt}life"),
            &format!("kubepods-burstable-pod9.slice:cri-containerd:{id}"),
            &["sleep", "600"],
        );
        env.amphi(&["--systemd-cgroup", "create", "--bundle", b.path(), &id])
            .ok();
        env.amphi(&["--systemd-cgroup", "start", &id]).ok();
        assert_eq!(
            amphi_tests::systemctl_show(&unit, "ActiveState"),
            "active",
            "{rt}"
        );
        assert_eq!(
            amphi_tests::systemctl_show(&unit, "MemoryMax"),
            "67108864",
            "{rt}"
        );
        env.amphi(&["--systemd-cgroup", "update", "--memory", "128m", &id])
            .ok();
        assert_eq!(
            amphi_tests::systemctl_show(&unit, "MemoryMax"),
            "134217728",
            "{rt} update"
        );
        env.amphi(&["--systemd-cgroup", "delete", "--force", &id])
            .ok();
        assert!(unit_gone(&unit), "{rt}: the unit goes with the container");
        amphi_tests::reap_inits();
    }
    let _ = std::process::Command::new("systemctl")
        .args([
            "stop",
            "kubepods-besteffort-pod2.slice",
            "kubepods-burstable-pod9.slice",
            "kubepods-besteffort.slice",
            "kubepods-burstable.slice",
            "kubepods.slice",
            "test.slice",
        ])
        .status();
}

#[test]
fn bad_paths_and_taken_units_leave_no_unit() {
    if !systemd_runs() {
        eprintln!("systemd is not PID 1 here: the VM lane runs this");
        return;
    }
    let env = Env::new();
    let taken = env.id("taken");
    let b = systemd_bundle(&env, "taken", &format!("system.slice:amphi:{taken}"));
    env.amphi(&[
        "--systemd-cgroup",
        "run",
        "-d",
        "--bundle",
        b.path(),
        &taken,
    ])
    .ok();
    for (name, path, needle) in [
        ("missing", "system.slice::x", "prefix and name"),
        ("notslice", "system:amphi:x", "ends with .slice"),
        ("dashes", "a--b.slice:amphi:x", "dashes"),
        ("twoparts", "amphi:x", "slice:prefix:name"),
        (
            "exists",
            &format!("system.slice:amphi:{taken}") as &str,
            "exists already",
        ),
    ] {
        let b = systemd_bundle(&env, name, path);
        let id = env.id(name);
        env.amphi(&["--systemd-cgroup", "create", "--bundle", b.path(), &id])
            .fails_with("linux.cgroupsPath")
            .fails_with(needle);
        assert!(!env.root.join(&id).exists(), "{name}: no state left");
    }
    // The taken unit is untouched, and the refused ones made none.
    let unit = format!("amphi-{taken}.scope");
    assert_eq!(amphi_tests::systemctl_show(&unit, "ActiveState"), "active");
    for name in ["missing", "notslice", "dashes"] {
        assert!(unit_gone(&format!("amphi-{}.scope", env.id(name))));
    }
    env.amphi(&["--systemd-cgroup", "delete", "--force", &taken])
        .ok();
    assert!(unit_gone(&unit));
    amphi_tests::reap_inits();
}

/// An OOM kill of the init in a scope: systemd removes the scope (and its
/// `memory.events`) as soon as the victim died, often before the count can
/// be read (runc issue 5071); `amphi events` still tells it.
#[test]
fn events_tell_an_oom_kill_of_the_init_in_a_scope() {
    if !systemd_runs() {
        eprintln!("systemd is not PID 1 here: the VM lane runs this");
        return;
    }
    let env = Env::new();
    let id = env.id("sdoom");
    let mut b = env.bundle("sdoom", &["tail", "/dev/zero"]);
    b.spec["linux"]["cgroupsPath"] = json!(format!("system.slice:amphi:{id}"));
    b.spec["linux"]["resources"] = json!({"memory": {"limit": 33554432, "swap": 33554432}});
    b.write();
    env.amphi(&["--systemd-cgroup", "create", "--bundle", b.path(), &id])
        .ok();
    let mut events = env
        .command(&["--systemd-cgroup", "events", "--interval", "1h", &id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The baseline's stats line comes before the kill can.
    let mut stdout = std::io::BufReader::new(events.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert!(first.contains("\"stats\""), "{first}");
    env.amphi(&["--systemd-cgroup", "start", &id]).ok();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut events.stderr.take().unwrap(), &mut err).unwrap();
    assert!(events.wait().unwrap().success(), "amphi events: {err}");
    assert!(
        rest.contains("\"type\":\"oom\""),
        "no OOM event: {rest} {err}"
    );
    env.amphi(&["--systemd-cgroup", "delete", "--force", &id])
        .ok();
    assert!(unit_gone(&format!("amphi-{id}.scope")));
}

/// systemd not answering (a hung bus: a peer that takes the connection and
/// never replies): `create` gives up within its own bound, names the unit,
/// and leaves no state, process or unit.
#[test]
fn a_bus_that_does_not_answer_fails_create_and_leaves_nothing() {
    if !systemd_runs() {
        eprintln!("systemd is not PID 1 here: the VM lane runs this");
        return;
    }
    let env = Env::new();
    let bus = env.tmp.path().join("silent-bus");
    let _silent = std::os::unix::net::UnixListener::bind(&bus).unwrap();
    let id = env.id("nobus");
    let b = systemd_bundle(&env, "nobus", &format!("system.slice:amphi:{id}"));
    let address = format!("unix:path={}", bus.display());
    env.amphi_env(
        &[("DBUS_SYSTEM_BUS_ADDRESS", &address)],
        &["--systemd-cgroup", "create", "--bundle", b.path(), &id],
    )
    .fails_with(&format!("amphi-{id}.scope"))
    .fails_with("did not answer");
    amphi_tests::reap_inits();
    assert!(!env.root.join(&id).exists(), "no state left");
    let left = amphi_tests::processes_rooted_in(env.tmp.path());
    assert!(left.is_empty(), "processes {left:?} left");
    assert!(unit_gone(&format!("amphi-{id}.scope")));
}
