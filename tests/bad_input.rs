//! Bad input: a clear error naming what is wrong, a non-zero exit, and
//! nothing left behind.

use amphi_tests::Env;
use serde_json::json;

fn create_fails(env: &Env, name: &str, patch: impl FnOnce(&mut amphi_tests::Bundle), needle: &str) {
    let mut b = env.bundle(name, &["true"]);
    patch(&mut b);
    let id = env.id(name);
    env.amphi(&["create", "--bundle", b.path(), &id])
        .fails_with(needle);
    env.amphi(&["run", "--bundle", b.path(), &id])
        .fails_with(needle);
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn missing_bundle() {
    let env = Env::new();
    let missing = env.tmp.path().join("nope");
    let r = env.amphi(&["create", "--bundle", missing.to_str().unwrap(), "x"]);
    r.fails_with("open bundle");
    assert!(r.stderr.contains("nope"));
    env.assert_clean("x", "x");
}

#[test]
fn malformed_config_names_the_field() {
    let env = Env::new();
    create_fails(
        &env,
        "syntax",
        |b| std::fs::write(b.dir.join("config.json"), "{ not json").unwrap(),
        "config.json",
    );
    create_fails(
        &env,
        "type",
        |b| {
            b.spec["process"]["user"]["uid"] = json!("root");
            b.write();
        },
        "process.user.uid",
    );
    create_fails(
        &env,
        "cap",
        |b| {
            b.spec["process"]["capabilities"]["bounding"] = json!(["CAP_NOPE"]);
            b.write();
        },
        "process.capabilities.bounding[0]",
    );
}

#[test]
fn unknown_oci_version_major() {
    let env = Env::new();
    create_fails(
        &env,
        "ver",
        |b| {
            b.spec["ociVersion"] = json!("2.0.0");
            b.write();
        },
        "ociVersion",
    );
}

#[test]
fn empty_args() {
    let env = Env::new();
    create_fails(
        &env,
        "args",
        |b| {
            b.spec["process"]["args"] = json!([]);
            b.write();
        },
        "process.args",
    );
}

#[test]
fn missing_root_path() {
    let env = Env::new();
    create_fails(
        &env,
        "root",
        |b| {
            b.spec["root"]["path"] = json!("no-such-rootfs");
            b.write();
        },
        "root.path",
    );
}

#[test]
fn executable_not_found() {
    let env = Env::new();
    create_fails(
        &env,
        "exe",
        |b| {
            b.spec["process"]["args"] = json!(["/bin/does-not-exist"]);
            b.write();
        },
        "process.args[0]",
    );
    create_fails(
        &env,
        "path",
        |b| {
            b.spec["process"]["args"] = json!(["nosuchprogram"]);
            b.write();
        },
        "executable file not found",
    );
}

#[test]
fn failing_mount_and_rlimit_leave_nothing() {
    let env = Env::new();
    create_fails(
        &env,
        "mnt",
        |b| {
            b.spec["mounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"destination": "/x", "type": "nosuchfs", "source": "none"}));
            b.write();
        },
        "mounts[6]",
    );
    // Raising a hard limit needs CAP_SYS_RESOURCE, which this machine's root lacks;
    // where root has it the config is valid, so only check the failure shape there.
    create_fails(
        &env,
        "rlim",
        |b| {
            b.spec["process"]["rlimits"] =
                json!([{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}]);
            b.write();
        },
        "soft limit above hard limit",
    );
}

#[test]
fn duplicate_id() {
    let env = Env::new();
    let b = env.bundle("dup", &["sleep", "30"]);
    b.write();
    let id = env.id("dup");
    env.amphi(&["create", "--bundle", b.path(), &id]).ok();
    env.amphi(&["create", "--bundle", b.path(), &id])
        .fails_with("already exists");
    // The first container is untouched.
    assert_eq!(env.status(&id).as_deref(), Some("created"));
    env.amphi(&["delete", &id]).ok();
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn wrong_state_operations() {
    let env = Env::new();
    let b = env.bundle("ws", &["true"]);
    b.write();
    let id = env.id("ws");
    env.amphi(&["start", &id]).fails_with("does not exist");
    env.amphi(&["kill", &id]).fails_with("does not exist");
    env.amphi(&["delete", &id]).fails_with("does not exist");
    env.amphi(&["create", "--bundle", b.path(), &id]).ok();
    env.amphi(&["start", &id]).ok();
    assert!(amphi_tests::wait_for(10, || env.status(&id).as_deref() == Some("stopped")));
    env.amphi(&["start", &id])
        .fails_with("only a created container can be started");
    env.amphi(&["kill", &id, "KILL"]).fails_with("is stopped");
    env.amphi(&["delete", &id]).ok();
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn bad_ids_are_refused() {
    let env = Env::new();
    let b = env.bundle("ids", &["true"]);
    b.write();
    let long = "a".repeat(10_000);
    for id in ["a/b", "..", "../escape", ".", "", long.as_str()] {
        env.amphi(&["create", "--bundle", b.path(), id])
            .fails_with("invalid container id");
    }
    assert!(!env.tmp.path().join("escape").exists());
    assert_eq!(
        std::fs::read_dir(&env.root).map(|d| d.count()).unwrap_or(0),
        0
    );
    env.assert_clean("a", &b.cgroup());
}

#[test]
fn unsupported_flags_say_so() {
    let env = Env::new();
    env.amphi(&["--systemd-cgroup", "list"])
        .fails_with("--systemd-cgroup is not supported");
}

#[test]
fn json_log_for_containerd() {
    let env = Env::new();
    let log = env.tmp.path().join("log.json");
    let r = env.amphi(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "start",
        "nope",
    ]);
    r.fails_with("does not exist");
    let text = std::fs::read_to_string(&log).unwrap();
    let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(v["level"], "error");
    assert!(v["msg"].as_str().unwrap().contains("nope"));
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
}
