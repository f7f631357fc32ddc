//! Hostile images and hostile running containers against what the runtime
//! does as root on their behalf: resolving the working directory, writing
//! procfs files, writing pid files, binding the console. Each test builds
//! the attack as published for runc (CVE-2024-21626, CVE-2025-52881, runc's
//! `createPidFile`, CVE-2025-52565), for native and wasm containers, at
//! `create` and at `exec`, and checks that nothing of the host is reached.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use amphi_tests::{wait_for, Bundle, Env};
use serde_json::json;

/// A host file no container should ever read or change, with content
/// unique to this test.
fn host_file(env: &Env, name: &str) -> (PathBuf, String) {
    let path = env.tmp.path().join(name);
    let content = format!("host-only {} {name}\n", env.tag);
    std::fs::write(&path, &content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    (path, content)
}

fn bundle(env: &Env, name: &str, wasm: bool, native_args: &[&str], wasm_args: &[&str]) -> Bundle {
    if wasm {
        env.wasm_bundle(name, wasm_args)
    } else {
        env.bundle(name, native_args)
    }
}

/// A container that idles: `sleep`, or a wasm guest that sleeps.
fn idle(env: &Env, name: &str, wasm: bool) -> Bundle {
    bundle(
        env,
        name,
        wasm,
        &["sleep", "600"],
        &["/app/idle.wasm", "600"],
    )
}

/// Bind the host file or directory `source` at `dest`, writable.
fn bind_rw(b: &mut Bundle, dest: &str, source: &Path) {
    b.spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": dest,
        "type": "bind", "source": source.to_str().unwrap(), "options": ["bind", "rw"]}));
}

fn kind(wasm: bool) -> &'static str {
    if wasm {
        "wasm"
    } else {
        "native"
    }
}

/// The fd numbers a runtime's init might hold (the state directory, the
/// module cache, the namespaces `exec` joins, a socket): each is tried.
const FDS: std::ops::RangeInclusive<u32> = 3..=20;

#[test]
fn a_working_directory_through_a_runtime_fd_never_leaves_the_root() {
    let env = Env::new();
    // The state directory is ROOT/ID, the module cache ROOT/wasm-cache:
    // from either, the secret is one or two levels up.
    let (_, secret) = host_file(&env, "host-secret");
    let read = "cat ../../host-secret ../host-secret 2>/dev/null; pwd";
    for wasm in [false, true] {
        for n in FDS {
            for planted in [false, true] {
                let name = format!("cwd{}{n}{}", &kind(wasm)[..1], u8::from(planted));
                let mut b = bundle(&env, &name, wasm, &["sh", "-c", read], &["/app/hello.wasm"]);
                let magic = format!("/proc/self/fd/{n}");
                // The image's WORKDIR alone, or a symlink the image planted.
                let cwd = if planted {
                    std::os::unix::fs::symlink(&magic, b.rootfs().join("work")).unwrap();
                    "/work".to_owned()
                } else {
                    magic
                };
                b.spec["process"]["cwd"] = json!(cwd);
                b.write();
                let id = env.id(&name);
                let r = env.amphi(&["run", "--bundle", b.path(), &id]);
                assert!(
                    !r.stdout.contains(&secret),
                    "{} cwd {cwd} read the host's file: {}",
                    kind(wasm),
                    r.stdout
                );
                assert_ne!(r.code, 0, "{} cwd {cwd} ran: {}", kind(wasm), r.stdout);
                assert!(r.stderr.contains("process.cwd"), "{}", r.stderr);
                env.assert_clean(&id, &b.cgroup());
            }
        }
    }
}

#[test]
fn exec_with_a_working_directory_through_a_runtime_fd_never_leaves_the_root() {
    let env = Env::new();
    let (_, secret) = host_file(&env, "host-secret");
    for wasm in [false, true] {
        let name = format!("execcwd{}", kind(wasm));
        let b = idle(&env, &name, wasm);
        std::os::unix::fs::symlink("/proc/self/fd/7", b.rootfs().join("work7")).unwrap();
        b.write();
        let id = env.id(&name);
        env.amphi(&["run", "-d", "--bundle", b.path(), &id]).ok();
        let mut cwds: Vec<String> = FDS.map(|n| format!("/proc/self/fd/{n}")).collect();
        cwds.push("/work7".into());
        for cwd in &cwds {
            let r = env.amphi(&[
                "exec",
                "--cwd",
                cwd,
                &id,
                "sh",
                "-c",
                "cat ../../host-secret ../host-secret ../../../host-secret 2>/dev/null; pwd",
            ]);
            assert!(
                !r.stdout.contains(&secret),
                "exec into {} with cwd {cwd} read the host's file: {}",
                kind(wasm),
                r.stdout
            );
            assert_ne!(r.code, 0, "exec with cwd {cwd} ran: {}", r.stdout);
            assert!(r.stderr.contains("process.cwd"), "{}", r.stderr);
        }
        // An ordinary cwd still works, and the container is unharmed.
        let r = env.amphi(&["exec", "--cwd", "/etc", &id, "pwd"]);
        assert_eq!(r.ok().stdout.trim(), "/etc");
        env.amphi(&["delete", "--force", &id]).ok();
        env.assert_clean(&id, &b.cgroup());
    }
}

/// While it waits for `start`, the init of a new container holds no
/// directory but its own procfs: the state directory, the bundle and the
/// module cache are all closed before the container's root is entered.
#[test]
fn a_created_init_holds_no_host_directory() {
    let env = Env::new();
    for wasm in [false, true] {
        let name = format!("fds{}", kind(wasm));
        let b = bundle(&env, &name, wasm, &["true"], &["/app/hello.wasm"]);
        b.write();
        let id = env.id(&name);
        env.amphi(&["create", "--bundle", b.path(), &id]).ok();
        let pid = env.state(&id)["pid"].as_i64().unwrap();
        let mut held = Vec::new();
        for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
        {
            let link = e.path();
            let target = std::fs::read_link(&link).unwrap_or_default();
            let Ok(meta) = std::fs::metadata(&link) else {
                continue;
            };
            held.push(format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            ));
            if meta.is_dir() {
                let fs = nix::sys::statfs::statfs(&link).unwrap();
                assert_eq!(
                    fs.filesystem_type(),
                    nix::sys::statfs::PROC_SUPER_MAGIC,
                    "{} init holds the directory {}",
                    kind(wasm),
                    target.display()
                );
            }
        }
        assert!(!held.is_empty());
        env.amphi(&["delete", "--force", &id]).ok();
        env.assert_clean(&id, &b.cgroup());
    }
}

/// An image without a procfs mount plants `/proc/sys/...` as a symlink to a
/// host file bound into the container (a root-owned file its user cannot
/// write): amphi's sysctl write must not land there, and must reach the
/// kernel.
#[test]
fn sysctls_never_follow_an_image_planted_proc() {
    let env = Env::new();
    let (victim, content) = host_file(&env, "hostfile");
    for wasm in [false, true] {
        let name = format!("sysctl{}", kind(wasm));
        let mut b = idle(&env, &name, wasm);
        b.spec["mounts"]
            .as_array_mut()
            .unwrap()
            .retain(|m| m["destination"] != "/proc");
        bind_rw(&mut b, "/hostfile", &victim);
        b.spec["linux"]["sysctl"] = json!({"kernel.shmmni": "3210"});
        b.spec["process"]["user"] = json!({"uid": 1000, "gid": 1000});
        let kernel = b.rootfs().join("proc/sys/kernel");
        std::fs::create_dir_all(&kernel).unwrap();
        std::os::unix::fs::symlink("/hostfile", kernel.join("shmmni")).unwrap();
        b.write();
        let id = env.id(&name);
        env.amphi(&["run", "-d", "--bundle", b.path(), &id]).ok();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), content);
        // The value reached the container's IPC namespace.
        let r = env.amphi(&[
            "exec",
            "--user",
            "0",
            "--cap",
            "CAP_SYS_ADMIN",
            &id,
            "sh",
            "-c",
            "mkdir -p /realproc && mount -t proc proc /realproc && cat /realproc/sys/kernel/shmmni",
        ]);
        assert_eq!(r.ok().stdout.trim(), "3210", "{}", kind(wasm));
        env.amphi(&["delete", "--force", &id]).ok();
        env.assert_clean(&id, &b.cgroup());
    }
}

/// A running container with CAP_SYS_ADMIN covers its /proc with a tmpfs
/// and plants `/proc/self/oom_score_adj` as a symlink to a host file bound
/// into it; a process `exec` then adds with an `oomScoreAdj` must get the
/// score, and the file must stay as it was.
#[test]
fn exec_oom_score_never_follows_a_container_planted_proc() {
    let env = Env::new();
    let (victim, content) = host_file(&env, "hostfile");
    for wasm in [false, true] {
        let name = format!("oom{}", kind(wasm));
        let mut b = idle(&env, &name, wasm);
        bind_rw(&mut b, "/hostfile", &victim);
        b.grant("CAP_SYS_ADMIN");
        b.write();
        let id = env.id(&name);
        env.amphi(&["run", "-d", "--bundle", b.path(), &id]).ok();
        env.amphi(&[
            "exec",
            &id,
            "sh",
            "-c",
            "mount -t tmpfs hostile /proc && mkdir -p /proc/self /proc/thread-self && \
             ln -s /hostfile /proc/self/oom_score_adj && ln -s /hostfile /proc/self/setgroups",
        ])
        .ok();
        let args = if wasm {
            json!(["/app/idle.wasm", "600"])
        } else {
            json!(["sleep", "600"])
        };
        let process = env.tmp.path().join(format!("process-{name}.json"));
        std::fs::write(
            &process,
            json!({"args": args, "cwd": "/", "user": {"uid": 0, "gid": 0},
                "env": ["PATH=/bin:/usr/bin"], "oomScoreAdj": 765})
            .to_string(),
        )
        .unwrap();
        let pid_file = env.tmp.path().join(format!("exec-{name}.pid"));
        env.amphi(&[
            "exec",
            "-d",
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--process",
            process.to_str().unwrap(),
            &id,
        ])
        .ok();
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        amphi_tests::remember_init(pid);
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            content,
            "{}",
            kind(wasm)
        );
        let score = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
        assert_eq!(score.trim(), "765", "{}", kind(wasm));
        env.amphi(&["delete", "--force", &id]).ok();
        env.assert_clean(&id, &b.cgroup());
    }
}

/// A pid file in a directory a running container can write: the container
/// plants the final name and every temporary name amphi could pick as
/// symlinks to a host file. Neither `run -d` nor `exec -d` may write
/// through them.
#[test]
fn pid_files_never_follow_a_container_planted_symlink() {
    let env = Env::new();
    let (victim, content) = host_file(&env, "victim");
    let shared = env.tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut attacker = env.bundle("attacker", &["sleep", "600"]);
    bind_rw(&mut attacker, "/shared", &shared);
    attacker.write();
    let attacker_id = env.id("attacker");
    env.amphi(&["run", "-d", "--bundle", attacker.path(), &attacker_id])
        .ok();
    // The final names, and runc's temporary ones, planted by the container.
    let plant = format!(
        "cd /shared && for n in create exec; do ln -s {v} $n.pid; ln -s {v} .$n.pid; done",
        v = victim.display()
    );
    env.amphi(&["exec", &attacker_id, "sh", "-c", &plant]).ok();
    // Every name a runtime that named its temporary file after its pid
    // (`NAME.tmpPID`) could take next: planted from here, as the container
    // could (a fork per link would move the pids past the range).
    let next: u64 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for n in ["create", "exec"] {
        for pid in next + 1..next + 3000 {
            std::os::unix::fs::symlink(&victim, shared.join(format!("{n}.tmp{pid}"))).unwrap();
        }
    }
    for wasm in [false, true] {
        let name = format!("pid{}", kind(wasm));
        let b = idle(&env, &name, wasm);
        b.write();
        let id = env.id(&name);
        let create_pid = shared.join("create.pid");
        env.amphi(&[
            "run",
            "-d",
            "--pid-file",
            create_pid.to_str().unwrap(),
            "--bundle",
            b.path(),
            &id,
        ])
        .ok();
        let exec_pid = shared.join("exec.pid");
        env.amphi(&[
            "exec",
            "-d",
            "--pid-file",
            exec_pid.to_str().unwrap(),
            &id,
            "sleep",
            "600",
        ])
        .ok();
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            content,
            "{}",
            kind(wasm)
        );
        let init = env.state(&id)["pid"].as_i64().unwrap();
        assert_eq!(read_pid(&create_pid), init, "{}", kind(wasm));
        let exec = read_pid(&exec_pid);
        amphi_tests::remember_init(exec as i32);
        assert!(Path::new(&format!("/proc/{exec}")).exists());
        for f in [&create_pid, &exec_pid] {
            let meta = std::fs::symlink_metadata(f).unwrap();
            assert!(meta.is_file() && meta.uid() == 0, "{}", f.display());
        }
        // Nothing of amphi's own is left beside them.
        let left: Vec<String> = std::fs::read_dir(&shared)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".create.pid.") || n.starts_with(".exec.pid."))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
        env.amphi(&["delete", "--force", &id]).ok();
        env.assert_clean(&id, &b.cgroup());
    }
    env.amphi(&["delete", "--force", &attacker_id]).ok();
    env.assert_clean(&attacker_id, &attacker.cgroup());
}

fn read_pid(path: &Path) -> i64 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An image whose /dev/console is a symlink (and no tmpfs on /dev): the
/// symlink is replaced, as runc does, never followed, and the container
/// starts with the pty as its console.
#[test]
fn a_dev_console_symlink_in_the_image_is_replaced_not_followed() {
    let env = Env::new();
    for wasm in [false, true] {
        let name = format!("console{}", kind(wasm));
        let mut b = bundle(
            &env,
            &name,
            wasm,
            &["sh", "-c", "stat -c %F /dev/console; tty"],
            &["/app/hello.wasm"],
        );
        b.spec["mounts"]
            .as_array_mut()
            .unwrap()
            .retain(|m| m["destination"] != "/dev");
        b.spec["process"]["terminal"] = json!(true);
        let dev = b.rootfs().join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        let _ = std::fs::remove_file(dev.join("console"));
        std::fs::write(b.rootfs().join("etc/console-target"), "image file\n").unwrap();
        std::os::unix::fs::symlink("/etc/console-target", dev.join("console")).unwrap();
        b.write();
        let id = env.id(&name);
        let sock = env.tmp.path().join(format!("{name}.sock"));
        let receiver = amphi_tests::console_receiver(&sock);
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
        if !wasm {
            assert!(out.contains("character special file"), "{out}");
            assert!(out.contains("/dev/pts/0"), "{out}");
        } else {
            assert!(out.contains("hello"), "{out}");
        }
        assert!(wait_for(10, || env.status(&id).as_deref() == Some("stopped")));
        assert_eq!(
            std::fs::read_to_string(b.rootfs().join("etc/console-target")).unwrap(),
            "image file\n"
        );
        env.amphi(&["delete", &id]).ok();
        env.assert_clean(&id, &b.cgroup());
    }
}

/// `amphi spec` writes no inheritable or ambient capabilities (runc since
/// 1.1.2, CVE-2022-29162), and a container made from it has none.
#[test]
fn amphi_spec_grants_no_inheritable_or_ambient_capabilities() {
    let env = Env::new();
    let b = env.bundle("spec", &["true"]);
    let r = env.amphi(&["spec", "--bundle", b.path()]);
    r.ok();
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.dir.join("config.json")).unwrap()).unwrap();
    let caps = &spec["process"]["capabilities"];
    assert!(
        caps.get("inheritable").is_none() && caps.get("ambient").is_none(),
        "{caps}"
    );
    spec["process"]["args"] = json!(["sh", "-c", "grep -E 'Cap(Inh|Amb)' /proc/self/status"]);
    spec["linux"]["cgroupsPath"] = json!(b.cgroup());
    std::fs::write(b.dir.join("config.json"), spec.to_string()).unwrap();
    let id = env.id("spec");
    let r = env.amphi(&["run", "--bundle", b.path(), &id]);
    let text = r.ok().stdout.clone();
    assert!(text.contains("CapInh:\t0000000000000000"), "{text}");
    assert!(text.contains("CapAmb:\t0000000000000000"), "{text}");
    env.assert_clean(&id, &b.cgroup());
}

/// `/dev/null` swapped for a symlink while the container is set up (a
/// createContainer hook stands in for a racing container sharing its
/// /dev, CVE-2025-31133): a masked file is bound to the null device or
/// `create` fails; never to what the symlink names.
#[test]
fn a_masked_file_is_never_bound_to_anything_but_the_null_device() {
    let env = Env::new();
    for wasm in [false, true] {
        let name = format!("null{}", kind(wasm));
        let mut b = bundle(
            &env,
            &name,
            wasm,
            &["cat", "/etc/masked"],
            &["/app/hello.wasm"],
        );
        std::fs::write(b.rootfs().join("etc/masked"), "masked content\n").unwrap();
        std::fs::write(b.rootfs().join("etc/exposed"), "exposed content\n").unwrap();
        b.spec["linux"]["maskedPaths"]
            .as_array_mut()
            .unwrap()
            .push(json!("/etc/masked"));
        // The hook runs in the container's mount namespace before
        // pivot_root: the rootfs is still at its host path there.
        let null = b.rootfs().join("dev/null");
        b.spec["hooks"] = json!({"createContainer": [{"path": "/bin/sh", "args": ["sh", "-c",
            format!("rm -f {n} && ln -s /etc/exposed {n}", n = null.display())]}]});
        b.write();
        let id = env.id(&name);
        let r = env.amphi(&["run", "--bundle", b.path(), &id]);
        assert!(!r.stdout.contains("exposed content"), "{}", r.stdout);
        assert_ne!(r.code, 0, "{}", kind(wasm));
        assert!(r.stderr.contains("null device"), "{}", r.stderr);
        env.assert_clean(&id, &b.cgroup());
    }
}
