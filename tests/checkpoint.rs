//! Checkpoint and restore: wasm containers through amphi's own images,
//! native ones through CRIU (where CRIU runs: the cgroup v2 lane's VM).

use std::path::{Path, PathBuf};

use amphi_tests::{wait_for, Bundle, Env};
use serde_json::json;

const ANNOTATION: &str = "io.github.amphi.checkpoint";

fn checkpointable(env: &Env, name: &str, args: &[&str]) -> Bundle {
    let mut b = env.wasm_bundle(name, args);
    b.spec["annotations"] = json!({ ANNOTATION: "true" });
    b.write();
    b
}

/// `amphi ARGS` for a command that leaves a container running (`run -d`,
/// `restore -d`), its stdout (the container's) to `out`.
fn detached(env: &Env, args: &[&str], out: &Path) -> amphi_tests::Run {
    let err = out.with_extension("err");
    let status = env
        .command(args)
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .unwrap();
    let id = args.last().unwrap();
    if status.success() {
        // `state` remembers the init, to reap it.
        let state = env.state(id);
        assert!(
            state["pid"].as_i64().is_some(),
            "{id}: {state}; stderr: {}",
            std::fs::read_to_string(&err).unwrap_or_default()
        );
    }
    amphi_tests::Run {
        code: status.code().unwrap_or(-1),
        stdout: String::new(),
        stderr: std::fs::read_to_string(&err).unwrap(),
    }
}

/// `amphi restore -d` of image `img` with bundle `b` as container `id`.
fn restore_detached(env: &Env, img: &Path, b: &Bundle, id: &str, out: &Path) -> amphi_tests::Run {
    let args = [
        "restore",
        "-d",
        "--image-path",
        img.to_str().unwrap(),
        "--bundle",
        b.path(),
        id,
    ];
    detached(env, &args, out)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The counter's numbers in `path` (its stdout: "N ok" lines).
fn numbers(path: &Path) -> Vec<u64> {
    lines(path)
        .iter()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

fn assert_counts_on(numbers: &[u64], from: u64) {
    let expected: Vec<u64> = (from..from + numbers.len() as u64).collect();
    assert_eq!(numbers, expected, "not one count after another from {from}");
}

fn image(env: &Env, name: &str) -> PathBuf {
    env.tmp.path().join(format!("image-{name}"))
}

#[test]
fn a_counter_and_its_open_file_continue_in_a_new_container() {
    let env = Env::new();
    let b = checkpointable(&env, "count", &["/app/counter.wasm", "/count.log", "20"]);
    let (id, restored) = (env.id("count"), env.id("count2"));
    let (out1, out2) = (env.tmp.path().join("out1"), env.tmp.path().join("out2"));
    detached(&env, &["run", "-d", "--bundle", b.path(), &id], &out1).ok();
    let log = b.rootfs().join("count.log");
    assert!(
        wait_for(30, || lines(&log).len() >= 5),
        "the counter did not count"
    );
    let img = image(&env, "count");
    env.amphi(&["checkpoint", "--image-path", img.to_str().unwrap(), &id])
        .ok();
    // As runc: without --leave-running the container is gone.
    assert_eq!(env.status(&id), None);
    env.assert_clean(&id, &b.cgroup());
    let before: Vec<u64> = lines(&log).iter().map(|l| l.parse().unwrap()).collect();
    let last = *before.last().unwrap();
    assert_counts_on(&before, 1);
    assert_counts_on(&numbers(&out1), 1);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(img.join("amphi-wasm.json")).unwrap()).unwrap();
    assert_eq!(manifest["files"][0]["path"], "count.log", "{manifest}");

    restore_detached(&env, &img, &b, &restored, &out2).ok();
    assert!(
        wait_for(30, || lines(&log).len() as u64 >= last + 5),
        "the restored counter did not go on"
    );
    env.amphi(&["delete", "--force", &restored]).ok();
    // Where it stopped: the next number, on stdout and at the file's end,
    // written through the descriptor the guest opened before.
    let after = numbers(&out2);
    assert_eq!(after.first(), Some(&(last + 1)), "{after:?}");
    assert_counts_on(&after, last + 1);
    let all: Vec<u64> = lines(&log).iter().map(|l| l.parse().unwrap()).collect();
    assert_counts_on(&all, 1);
    env.assert_clean(&restored, &b.cgroup());
}

#[test]
fn leave_running_keeps_the_guest_going_and_the_image_restores() {
    let env = Env::new();
    let b = checkpointable(&env, "keep", &["/app/counter.wasm", "-", "20"]);
    let (id, copy) = (env.id("keep"), env.id("keep2"));
    let (out1, out2) = (env.tmp.path().join("out1"), env.tmp.path().join("out2"));
    detached(&env, &["run", "-d", "--bundle", b.path(), &id], &out1).ok();
    assert!(wait_for(30, || numbers(&out1).len() >= 3));
    let img = image(&env, "keep");
    env.amphi(&[
        "checkpoint",
        "--leave-running",
        "--image-path",
        img.to_str().unwrap(),
        &id,
    ])
    .ok();
    assert_eq!(env.status(&id).as_deref(), Some("running"));
    let at_checkpoint = numbers(&out1).len() as u64;
    assert!(wait_for(30, || numbers(&out1).len() as u64 >= at_checkpoint + 3));
    // A second checkpoint of the same guest works as the first.
    let img2 = image(&env, "keep-again");
    env.amphi(&[
        "checkpoint",
        "--leave-running",
        "--image-path",
        img2.to_str().unwrap(),
        &id,
    ])
    .ok();
    restore_detached(&env, &img, &b, &copy, &out2).ok();
    assert!(wait_for(30, || numbers(&out2).len() >= 3));
    env.amphi(&["delete", "--force", &id]).ok();
    env.amphi(&["delete", "--force", &copy]).ok();
    let (original, restored) = (numbers(&out1), numbers(&out2));
    assert_counts_on(&original, 1);
    let first = restored[0];
    assert!(
        first > 1 && first <= at_checkpoint + 1,
        "the copy starts at {first}, the original was at {at_checkpoint}"
    );
    assert_counts_on(&restored, first);
    env.assert_clean(&id, &b.cgroup());
    env.assert_clean(&copy, &b.cgroup());
}

/// The 64-bit LCG spinsum.wasm steps, `n` times from 1, by squaring the
/// affine map (the test does not spin as long as the guest).
fn lcg(n: u64) -> u64 {
    let (mut a, mut c) = (6364136223846793005u64, 1442695040888963407u64);
    let (mut ra, mut rc) = (1u64, 0u64);
    let mut n = n;
    while n > 0 {
        if n & 1 == 1 {
            // r = f ∘ r
            rc = a.wrapping_mul(rc).wrapping_add(c);
            ra = a.wrapping_mul(ra);
        }
        c = a.wrapping_mul(c).wrapping_add(c);
        a = a.wrapping_mul(a);
        n >>= 1;
    }
    ra.wrapping_add(rc)
}

#[test]
fn a_guest_spinning_without_host_calls_stops_at_a_back_edge() {
    let env = Env::new();
    // Seconds of spinning on any machine this runs on: the checkpoint
    // comes while it spins.
    let n: u64 = 1 << 33;
    let b = checkpointable(&env, "spin", &["/app/spinsum.wasm", &n.to_string()]);
    let (id, restored) = (env.id("spin"), env.id("spin2"));
    let (out1, out2) = (env.tmp.path().join("out1"), env.tmp.path().join("out2"));
    detached(&env, &["run", "-d", "--bundle", b.path(), &id], &out1).ok();
    assert!(wait_for(30, || !lines(&out1).is_empty()));
    let img = image(&env, "spin");
    env.amphi(&["checkpoint", "--image-path", img.to_str().unwrap(), &id])
        .ok();
    assert_eq!(lines(&out1), [format!("spinning {n}")], "it finished first");
    restore_detached(&env, &img, &b, &restored, &out2).ok();
    assert!(
        wait_for(600, || env.status(&restored).as_deref() != Some("running")),
        "the restored guest still spins"
    );
    env.amphi(&["delete", "--force", &restored]).ok();
    assert_eq!(lines(&out2), [lcg(n).to_string()]);
    env.assert_clean(&restored, &b.cgroup());
}

#[test]
fn damaged_images_and_other_modules_are_refused_leaving_nothing() {
    let env = Env::new();
    let b = checkpointable(&env, "src", &["/app/counter.wasm", "-", "20"]);
    let id = env.id("src");
    let out = env.tmp.path().join("out");
    detached(&env, &["run", "-d", "--bundle", b.path(), &id], &out).ok();
    assert!(wait_for(30, || numbers(&out).len() >= 2));
    let img = image(&env, "src");
    env.amphi(&["checkpoint", "--image-path", img.to_str().unwrap(), &id])
        .ok();
    let copy = |name: &str| {
        let dir = image(&env, name);
        amphi_tests::copy_tree(&img, &dir).unwrap();
        dir
    };
    let restore = |dir: &Path, bundle: &Bundle, name: &str| {
        let new = env.id(name);
        let r = env.amphi(&[
            "restore",
            "-d",
            "--image-path",
            dir.to_str().unwrap(),
            "--bundle",
            bundle.path(),
            &new,
        ]);
        env.assert_clean(&new, &bundle.cgroup());
        r
    };

    let truncated = copy("truncated");
    let memory = truncated.join("memory.img");
    let len = std::fs::metadata(&memory).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&memory)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    restore(&truncated, &b, "r1").fails_with("truncated or damaged");

    let flipped = copy("flipped");
    let memory = flipped.join("memory.img");
    let mut bytes = std::fs::read(&memory).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&memory, bytes).unwrap();
    restore(&flipped, &b, "r2").fails_with("SHA-256");

    let garbled = copy("garbled");
    std::fs::write(garbled.join("amphi-wasm.json"), b"{\"format\": 1, ").unwrap();
    restore(&garbled, &b, "r3").fails_with("amphi-wasm.json");

    restore(&env.tmp.path().join("nowhere"), &b, "r4").fails_with("nowhere");

    // The same image, a bundle whose module is another.
    let other = checkpointable(&env, "other", &["/app/spinsum.wasm", "10"]);
    restore(&img, &other, "r5").fails_with("restore it with the bundle it was taken from");

    // And the image itself is good.
    let good = env.id("good");
    let out = env.tmp.path().join("out-good");
    restore_detached(&env, &img, &b, &good, &out).ok();
    env.amphi(&["delete", "--force", &good]).ok();
    env.assert_clean(&good, &b.cgroup());
}

#[test]
fn what_cannot_be_checkpointed_says_why() {
    let env = Env::new();
    // A component: refused at create, naming the annotation.
    let b = checkpointable(&env, "comp", &["/app/counter-component.wasm", "-", "20"]);
    let id = env.id("comp");
    env.amphi(&["run", "-d", "--bundle", b.path(), &id])
        .fails_with("only core modules");
    env.assert_clean(&id, &b.cgroup());

    // A wasm container created without the annotation runs on.
    let mut plain = env.wasm_bundle("plain", &["/app/counter.wasm", "-", "20"]);
    plain.spec["annotations"] = json!({});
    plain.write();
    let id = env.id("plain");
    let out = env.tmp.path().join("out-plain");
    detached(&env, &["run", "-d", "--bundle", plain.path(), &id], &out).ok();
    let img = image(&env, "plain");
    env.amphi(&["checkpoint", "--image-path", img.to_str().unwrap(), &id])
        .fails_with(ANNOTATION);
    assert_eq!(env.status(&id).as_deref(), Some("running"));
    // Nor does a wasm image take --pre-dump.
    env.amphi(&[
        "checkpoint",
        "--pre-dump",
        "--image-path",
        img.to_str().unwrap(),
        &id,
    ])
    .fails_with("--pre-dump");
    env.amphi(&["delete", "--force", &id]).ok();
    env.assert_clean(&id, &plain.cgroup());
}

/// Whether CRIU runs on this kernel (`criu check`): Debian's 3.17 does
/// not on 6.18 (vDSO), and does on the cgroup v2 lane's Debian 6.1.
fn criu_works() -> bool {
    std::process::Command::new("criu")
        .arg("check")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn native_containers_go_through_criu() {
    let env = Env::new();
    let script = "i=0; while true; do i=$((i+1)); echo $i >> /count.log; sleep 0.1; done";
    let b = env.bundle("native", &["sh", "-c", script]);
    b.write();
    let (id, restored) = (env.id("native"), env.id("native2"));
    // Pipes for stdio, as conmon and containerd give (CRIU dumps those; a
    // host file such as /dev/null lies on a mount the container lacks).
    // The children keep the pipes' other ends until the test ends.
    let mut held = Vec::new();
    let mut piped = |args: &[&str]| {
        use std::process::Stdio;
        let mut child = env
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let st = child.wait().unwrap();
        if !st.success() {
            // What amphi said; the container may hold the pipe open.
            let stderr = child.stderr.take().unwrap();
            let fd = std::os::fd::AsRawFd::as_raw_fd(&stderr);
            // SAFETY: fcntl on a pipe this test owns.
            unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
            let mut said = String::new();
            let _ = std::io::Read::read_to_string(&mut { stderr }, &mut said);
            panic!("amphi {args:?}: {st}: {said}");
        }
        env.state(args.last().unwrap());
        held.push(child);
    };
    piped(&["run", "-d", "--bundle", b.path(), &id]);
    let log = b.rootfs().join("count.log");
    assert!(wait_for(30, || lines(&log).len() >= 3));
    let img = image(&env, "native");
    let r = env.amphi(&["checkpoint", "--image-path", img.to_str().unwrap(), &id]);
    if !criu_works() {
        // CRIU's own words, and the container runs on.
        r.fails_with("criu dump failed");
        assert!(r.stderr.contains("CRIU's log"), "{}", r.stderr);
        assert_eq!(env.status(&id).as_deref(), Some("running"));
        env.amphi(&["delete", "--force", &id]).ok();
        env.assert_clean(&id, &b.cgroup());
        return;
    }
    r.ok();
    assert_eq!(env.status(&id), None);
    env.assert_clean(&id, &b.cgroup());
    let last = lines(&log).len();
    piped(&[
        "restore",
        "-d",
        "--image-path",
        img.to_str().unwrap(),
        "--bundle",
        b.path(),
        &restored,
    ]);
    assert!(
        wait_for(30, || lines(&log).len() >= last + 3),
        "the restored shell does not count"
    );
    env.amphi(&["delete", "--force", &restored]).ok();
    let all: Vec<u64> = lines(&log).iter().map(|l| l.parse().unwrap()).collect();
    assert_counts_on(&all, 1);
    env.assert_clean(&restored, &b.cgroup());
}
