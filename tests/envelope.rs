//! What a container sees from inside: the envelope, checked through `amphi run`.

use amphi_tests::{cgroup_dirs, Env};
use serde_json::json;

fn run_sh(
    env: &Env,
    name: &str,
    script: &str,
    patch: impl FnOnce(&mut serde_json::Value),
) -> (amphi_tests::Run, String, String) {
    run_sh_with(env, name, |_| {}, script, patch)
}

fn run_sh_with(
    env: &Env,
    name: &str,
    prepare: impl FnOnce(&amphi_tests::Bundle),
    script: &str,
    patch: impl FnOnce(&mut serde_json::Value),
) -> (amphi_tests::Run, String, String) {
    let mut b = env.bundle(name, &["sh", "-c", script]);
    prepare(&b);
    patch(&mut b.spec);
    b.write();
    let id = env.id(name);
    let r = env.amphi(&["run", "--bundle", b.path(), &id]);
    let cg = b.cgroup();
    (r, id, cg)
}

#[test]
fn hostname_pid1_and_no_host_processes() {
    let env = Env::new();
    let (r, id, cg) = run_sh(
        &env,
        "ns",
        "hostname; echo pid=$$; ls /proc | grep -c '^[0-9]'",
        |_| {},
    );
    r.ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], "amphi-test");
    assert_eq!(lines[1], "pid=1");
    // sh, ls and grep at most: nothing of the host's processes.
    let n: usize = lines[2].trim().parse().unwrap();
    assert!(n <= 3, "container sees {n} processes");
    env.assert_clean(&id, &cg);
}

#[test]
fn mount_table_is_the_containers() {
    let env = Env::new();
    let (r, id, cg) = run_sh(&env, "mounts", "cat /proc/self/mountinfo", |_| {});
    r.ok();
    let targets: Vec<&str> = r
        .stdout
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .collect();
    for want in [
        "/",
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
    ] {
        assert!(targets.contains(&want), "{want} not mounted: {targets:?}");
    }
    // No host path is visible.
    let tmp = env.tmp.path().to_string_lossy().into_owned();
    assert!(!r.stdout.contains("/work"), "{}", r.stdout);
    assert!(targets.iter().all(|t| !t.starts_with(&tmp)), "{targets:?}");
    env.assert_clean(&id, &cg);
}

#[test]
fn readonly_root_refuses_writes() {
    let env = Env::new();
    let (r, id, cg) = run_sh(
        &env,
        "ro",
        "touch /x 2>&1; echo rc=$?; touch /tmp/y 2>&1; echo rc=$?",
        |s| {
            s["root"]["readonly"] = json!(true);
        },
    );
    r.ok();
    assert!(r.stdout.contains("Read-only file system"), "{}", r.stdout);
    assert!(r.stdout.contains("rc=1"), "{}", r.stdout);
    env.assert_clean(&id, &cg);
}

#[test]
fn masked_and_readonly_paths() {
    let env = Env::new();
    let (r, id, cg) = run_sh_with(
        &env,
        "mask",
        |b| {
            std::fs::create_dir_all(b.rootfs().join("etc/secret")).unwrap();
            std::fs::write(b.rootfs().join("etc/secret/key"), "k").unwrap();
        },
        "wc -c < /proc/timer_list; ls /sys/firmware | wc -l; ls /etc/secret | wc -l; echo 1 > /proc/sys/kernel/ns_last_pid 2>&1; echo rc=$?",
        |s| {
            // A directory of the rootfs masked too, so the check does not
            // depend on what this kernel has in /proc and /sys.
            s["linux"]["maskedPaths"].as_array_mut().unwrap().push(json!("/etc/secret"));
        },
    );
    r.ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines[0].trim(),
        "0",
        "/proc/timer_list readable: {}",
        r.stdout
    );
    assert_eq!(
        lines[1].trim(),
        "0",
        "/sys/firmware not empty: {}",
        r.stdout
    );
    assert_eq!(
        lines[2].trim(),
        "0",
        "masked /etc/secret not empty: {}",
        r.stdout
    );
    assert!(
        r.stdout.contains("rc=1"),
        "/proc/sys writable: {}",
        r.stdout
    );
    env.assert_clean(&id, &cg);
}

fn cap_mask(names: &[&str]) -> u64 {
    let bit = |n: &str| match n {
        "CAP_CHOWN" => 0,
        "CAP_DAC_OVERRIDE" => 1,
        "CAP_FOWNER" => 3,
        "CAP_FSETID" => 4,
        "CAP_KILL" => 5,
        "CAP_SETGID" => 6,
        "CAP_SETUID" => 7,
        "CAP_SETPCAP" => 8,
        "CAP_NET_BIND_SERVICE" => 10,
        "CAP_NET_RAW" => 13,
        "CAP_SYS_CHROOT" => 18,
        "CAP_SYS_ADMIN" => 21,
        "CAP_MKNOD" => 27,
        "CAP_AUDIT_WRITE" => 29,
        "CAP_SETFCAP" => 31,
        _ => panic!("{n}"),
    };
    names.iter().map(|n| 1u64 << bit(n)).sum()
}

#[test]
fn capability_sets_are_the_specs() {
    let env = Env::new();
    let (r, id, cg) = run_sh(&env, "caps", "grep ^Cap /proc/self/status", |s| {
        let c = &mut s["process"]["capabilities"];
        c["bounding"] = json!(["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW", "CAP_SETUID"]);
        c["permitted"] = json!(["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW"]);
        c["effective"] = json!(["CAP_CHOWN", "CAP_KILL"]);
        c["inheritable"] = json!(["CAP_KILL", "CAP_NET_RAW"]);
        c["ambient"] = json!(["CAP_KILL"]);
    });
    r.ok();
    let get = |k: &str| {
        let line = r.stdout.lines().find(|l| l.starts_with(k)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    // After exec as root, permitted and effective are recomputed from the
    // bounding set (file capabilities of root); inheritable and ambient stay.
    assert_eq!(
        get("CapBnd:"),
        cap_mask(&["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW", "CAP_SETUID"])
    );
    assert_eq!(get("CapInh:"), cap_mask(&["CAP_KILL", "CAP_NET_RAW"]));
    assert_eq!(get("CapAmb:"), cap_mask(&["CAP_KILL"]));
    env.assert_clean(&id, &cg);
}

#[test]
fn non_root_user_gets_only_ambient_capabilities() {
    let env = Env::new();
    let (r, id, cg) = run_sh(
        &env,
        "user",
        "id; grep -E '^Cap(Eff|Prm|Amb)' /proc/self/status; umask",
        |s| {
            s["process"]["user"] =
                json!({"uid": 1000, "gid": 1001, "additionalGids": [2000, 2001], "umask": 63});
            let c = &mut s["process"]["capabilities"];
            for set in ["bounding", "permitted", "effective", "inheritable"] {
                c[set] = json!(["CAP_KILL", "CAP_CHOWN"]);
            }
            c["ambient"] = json!(["CAP_KILL"]);
        },
    );
    r.ok();
    assert!(
        r.stdout.contains("uid=1000 gid=1001 groups=2000,2001"),
        "{}",
        r.stdout
    );
    let kill = format!("{:016x}", cap_mask(&["CAP_KILL"]));
    for set in ["CapEff", "CapPrm", "CapAmb"] {
        assert!(
            r.stdout.contains(&format!("{set}:\t{kill}")),
            "{set}: {}",
            r.stdout
        );
    }
    assert!(r.stdout.contains("0077"), "umask: {}", r.stdout);
    env.assert_clean(&id, &cg);
}

#[test]
fn rlimits_are_applied() {
    let env = Env::new();
    let (r, id, cg) = run_sh(&env, "rlim", "ulimit -Sn; ulimit -Hn; ulimit -Hs", |s| {
        s["process"]["rlimits"] = json!([
            {"type": "RLIMIT_NOFILE", "soft": 512, "hard": 768},
            {"type": "RLIMIT_STACK", "soft": 4194304, "hard": 4194304}
        ]);
    });
    r.ok();
    assert_eq!(
        r.stdout.split_whitespace().collect::<Vec<_>>(),
        ["512", "768", "4096"]
    );
    env.assert_clean(&id, &cg);
}

#[test]
fn memory_limit_oom_kills() {
    let env = Env::new();
    // dd's 128 MiB buffer does not fit in 32 MiB.
    let (r, id, cg) = run_sh(
        &env,
        "oom",
        "dd if=/dev/zero of=/dev/null bs=128M count=1; echo dd=$?",
        |s| {
            s["linux"]["resources"] = json!({"memory": {"limit": 33554432}});
        },
    );
    r.ok();
    assert!(
        r.stdout.contains("dd=137"),
        "dd was not OOM-killed: {} {}",
        r.stdout,
        r.stderr
    );
    env.assert_clean(&id, &cg);
}

#[test]
fn memory_limit_lands_in_the_cgroup() {
    let env = Env::new();
    let mut b = env.bundle("memcg", &["sleep", "30"]);
    b.spec["linux"]["resources"] = json!({"memory": {"limit": 67108864}, "pids": {"limit": 20}, "cpu": {"shares": 512, "quota": 50000, "period": 100000}});
    b.write();
    let id = env.id("memcg");
    env.amphi(&["create", "--bundle", b.path(), &id]).ok();
    let dirs = cgroup_dirs(&b.cgroup());
    let read = |file: &str| {
        dirs.iter()
            .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
            .unwrap_or_else(|| panic!("{file} in none of {dirs:?}"))
    };
    let v2 = dirs.iter().any(|d| d.join("memory.max").exists());
    if v2 {
        assert_eq!(read("memory.max").trim(), "67108864");
        assert_eq!(read("cpu.max").trim(), "50000 100000");
    } else {
        assert_eq!(read("memory.limit_in_bytes").trim(), "67108864");
        assert_eq!(read("cpu.shares").trim(), "512");
        assert_eq!(read("cpu.cfs_quota_us").trim(), "50000");
    }
    assert_eq!(read("pids.max").trim(), "20");
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    assert!(read("cgroup.procs").lines().any(|l| l == pid.to_string()));
    env.amphi(&["delete", "--force", &id]).ok();
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn pids_limit_stops_forks() {
    let env = Env::new();
    // sh and five sleeps fill a limit of 6; the next fork must fail.
    let (r, id, cg) = run_sh(
        &env,
        "pids",
        "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 2 & done; echo forked",
        |s| s["linux"]["resources"] = json!({"pids": {"limit": 6}}),
    );
    assert!(
        r.stderr.contains("Resource temporarily unavailable"),
        "fork did not fail under pids.limit: {} {}",
        r.stdout,
        r.stderr
    );
    env.assert_clean(&id, &cg);
}

#[test]
fn env_and_cwd_are_the_specs_only() {
    let env = Env::new();
    std::env::set_var("AMPHI_HOST_SECRET", "leak");
    let (r, id, cg) = run_sh(&env, "env", "env | sort; pwd", |s| {
        s["process"]["env"] = json!(["PATH=/bin", "A=1", "B=two words"]);
        s["process"]["cwd"] = json!("/tmp");
    });
    r.ok();
    assert!(!r.stdout.contains("AMPHI_HOST_SECRET"));
    assert!(
        r.stdout.contains("A=1\n") && r.stdout.contains("B=two words\n"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.ends_with("/tmp\n"), "{}", r.stdout);
    env.assert_clean(&id, &cg);
}

#[test]
fn bind_mounts_and_symlinked_destinations_stay_inside() {
    let env = Env::new();
    let host_dir = env.tmp.path().join("shared");
    std::fs::create_dir(&host_dir).unwrap();
    std::fs::write(host_dir.join("f"), "from host").unwrap();
    let mut b = env.bundle(
        "bind",
        &[
            "sh",
            "-c",
            "cat /data/f; echo x > /data/g; ls -d /escape/evil",
        ],
    );
    // A destination through an absolute symlink must land inside the rootfs.
    let outside = env.tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, b.rootfs().join("escape")).unwrap();
    std::fs::create_dir_all(b.rootfs().join(outside.strip_prefix("/").unwrap())).unwrap();
    b.spec["mounts"].as_array_mut().unwrap().extend([
        json!({"destination": "/data", "type": "bind", "source": host_dir, "options": ["rbind", "rw"]}),
        json!({"destination": "/escape/evil", "type": "tmpfs", "source": "tmpfs"}),
    ]);
    b.write();
    let id = env.id("bind");
    let r = env.amphi(&["run", "--bundle", b.path(), &id]);
    r.ok();
    assert!(r.stdout.starts_with("from host"), "{}", r.stdout);
    assert_eq!(std::fs::read_to_string(host_dir.join("g")).unwrap(), "x\n");
    assert!(
        !outside.join("evil").exists(),
        "mount destination escaped the rootfs"
    );
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn user_namespace_maps_ids() {
    let env = Env::new();
    let (r, id, cg) = run_sh(
        &env,
        "userns",
        "id -u; cat /proc/self/uid_map; touch /tmp/owned",
        |s| {
            s["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "user"}));
            s["linux"]["uidMappings"] =
                json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
            s["linux"]["gidMappings"] =
                json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
        },
    );
    r.ok();
    let mut lines = r.stdout.lines();
    assert_eq!(lines.next(), Some("0"));
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["0", "200000", "65536"]
    );
    env.assert_clean(&id, &cg);
}

#[test]
fn joins_namespaces_by_path() {
    let env = Env::new();
    let a = env.bundle("a", &["sleep", "60"]);
    a.write();
    let ida = env.id("a");
    env.amphi(&["run", "--detach", "--bundle", a.path(), &ida])
        .ok();
    let pid = env.state(&ida)["pid"].as_i64().unwrap();
    let mut b = env.bundle("b", &["sh", "-c", "for n in net uts pid; do readlink /proc/self/ns/$n; done; hostname; ps -o comm | grep -c sleep"]);
    let mut nss = Vec::new();
    for (t, f) in [("network", "net"), ("uts", "uts"), ("pid", "pid")] {
        nss.push(json!({"type": t, "path": format!("/proc/{pid}/ns/{f}")}));
    }
    nss.extend([json!({"type": "mount"}), json!({"type": "ipc"})]);
    b.spec["linux"]["namespaces"] = json!(nss);
    b.spec.as_object_mut().unwrap().remove("hostname");
    b.write();
    let idb = env.id("b");
    let r = env.amphi(&["run", "--bundle", b.path(), &idb]);
    r.ok();
    let want: Vec<String> = ["net", "uts", "pid"]
        .iter()
        .map(|f| {
            std::fs::read_link(format!("/proc/{pid}/ns/{f}"))
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let got: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        &got[..3],
        &want.iter().map(String::as_str).collect::<Vec<_>>()[..]
    );
    assert_eq!(got[3], "amphi-test");
    assert_eq!(
        got[4], "1",
        "container a's sleep not visible in the joined pid namespace"
    );
    env.amphi(&["delete", "--force", &ida]).ok();
    env.assert_clean(&ida, &a.cgroup());
    env.assert_clean(&idb, &b.cgroup());
}

#[test]
fn same_bundle_same_view_as_runc() {
    let Ok(runc) = which("runc") else {
        eprintln!("runc not installed: skipping the comparison");
        return;
    };
    let env = Env::new();
    let b = env.bundle("cmp", &["sh", "-c", "hostname; id; grep ^Cap /proc/self/status; ulimit -n; cat /proc/self/mountinfo | cut -d' ' -f5 | sort; ls /dev | sort"]);
    b.write();
    let id = env.id("cmp");
    let ours = env.amphi(&["run", "--bundle", b.path(), &id]);
    ours.ok();
    let runc_root = env.tmp.path().join("runc-root");
    let theirs = std::process::Command::new(runc)
        .arg("--root")
        .arg(&runc_root)
        .args(["run", "--bundle", b.path(), &format!("{id}-runc")])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let theirs = String::from_utf8_lossy(&theirs.stdout);
    assert_eq!(
        ours.stdout, theirs,
        "amphi and runc disagree on the same bundle"
    );
    env.assert_clean(&id, &b.cgroup());
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.exists())
        .ok_or(())
}

#[test]
fn devices_dev_symlinks_and_process_knobs() {
    let env = Env::new();
    let (r, id, cg) = run_sh(
        &env,
        "knobs",
        "ls -l /dev/null /dev/zero /dev/fuse-like | cut -c1; for l in fd stdin ptmx; do readlink /dev/$l; done; \
         grep NoNewPrivs /proc/self/status; cat /proc/self/oom_score_adj; cat /proc/sys/kernel/domainname",
        |s| {
            s["linux"]["devices"] = json!([{"path": "/dev/fuse-like", "type": "c", "major": 1, "minor": 3, "fileMode": 438}]);
            s["process"]["oomScoreAdj"] = json!(500);
            s["domainname"] = json!("example.test");
        },
    );
    r.ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(&lines[..3], ["c", "c", "c"], "{}", r.stdout);
    assert_eq!(
        &lines[3..6],
        ["/proc/self/fd", "/proc/self/fd/0", "pts/ptmx"]
    );
    assert_eq!(lines[6], "NoNewPrivs:\t1");
    assert_eq!(lines[7], "500");
    assert_eq!(lines[8], "example.test");
    env.assert_clean(&id, &cg);
}

#[test]
fn no_pivot_and_preserved_fds() {
    let env = Env::new();
    let b = env.bundle(
        "nopivot",
        &[
            "sh",
            "-c",
            "cat <&3; ls /proc/self/fd | sort -n | tr '\\n' ' '",
        ],
    );
    b.write();
    let id = env.id("nopivot");
    let data = env.tmp.path().join("fd3");
    std::fs::write(&data, "through fd 3\n").unwrap();
    let file = std::fs::File::open(&data).unwrap();
    // Hand the file to amphi as fd 3 (and an extra fd 4 that must not leak).
    let extra = std::fs::File::open(&data).unwrap();
    let mut cmd = env.command(&[
        "run",
        "--no-pivot",
        "--preserve-fds",
        "1",
        "--bundle",
        b.path(),
        &id,
    ]);
    let (fd3, fd4) = (
        std::os::fd::AsRawFd::as_raw_fd(&file),
        std::os::fd::AsRawFd::as_raw_fd(&extra),
    );
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            // dup2 onto itself would keep close-on-exec: clear it instead.
            for (from, to) in [(fd3, 3), (fd4, 4)] {
                let r = if from == to {
                    libc::fcntl(to, libc::F_SETFD, 0)
                } else {
                    libc::dup2(from, to)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("through fd 3\n"), "{stdout}");
    // 0-2, the preserved 3, and the directory fd ls itself opens (the
    // lowest free number: 4, since amphi's own fd 4 did not get through).
    assert_eq!(
        stdout.lines().nth(1).unwrap().trim(),
        "0 1 2 3 4",
        "{stdout}"
    );
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn cgroup_mount_shows_the_containers_own_cgroup() {
    let env = Env::new();
    let (r, id, cg) = run_sh(
        &env,
        "cgmount",
        "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max",
        |s| {
            s["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]
        }));
            s["linux"]["resources"] = json!({"pids": {"limit": 42}});
        },
    );
    r.ok();
    assert_eq!(r.stdout.trim(), "42");
    env.assert_clean(&id, &cg);
}

#[test]
fn joins_a_user_namespace_by_path() {
    let env = Env::new();
    let mut a = env.bundle("usera", &["sleep", "60"]);
    a.spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    a.spec["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 300000, "size": 65536}]);
    a.spec["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 300000, "size": 65536}]);
    a.write();
    let ida = env.id("usera");
    env.amphi(&["run", "-d", "--bundle", a.path(), &ida]).ok();
    let pid = env.state(&ida)["pid"].as_i64().unwrap();
    let mut b = env.bundle(
        "userb",
        &[
            "sh",
            "-c",
            "readlink /proc/self/ns/user; cat /proc/self/uid_map; id -u",
        ],
    );
    let mut nss = vec![json!({"type": "user", "path": format!("/proc/{pid}/ns/user")})];
    nss.extend(["pid", "mount", "uts", "ipc", "network"].map(|t| json!({"type": t})));
    b.spec["linux"]["namespaces"] = json!(nss);
    b.write();
    let idb = env.id("userb");
    let r = env.amphi(&["run", "--bundle", b.path(), &idb]);
    r.ok();
    let want = std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], want.to_str().unwrap());
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["0", "300000", "65536"]
    );
    assert_eq!(lines[2], "0");
    env.amphi(&["delete", "--force", &ida]).ok();
    env.assert_clean(&ida, &a.cgroup());
    env.assert_clean(&idb, &b.cgroup());
}

#[test]
fn namespaced_sysctls_are_set_and_host_ones_refused() {
    let env = Env::new();
    let (r, id, cg) = run_sh(
        &env,
        "sysctl",
        "cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shmmni",
        |s| {
            s["linux"]["sysctl"] =
                json!({"net.ipv4.ip_unprivileged_port_start": "80", "kernel.shmmni": "1234"});
        },
    );
    r.ok();
    assert_eq!(r.stdout, "80\n1234\n");
    env.assert_clean(&id, &cg);
    let mut b = env.bundle("hostsysctl", &["true"]);
    b.spec["linux"]["sysctl"] = json!({"vm.swappiness": "1"});
    b.write();
    let id = env.id("hostsysctl");
    env.amphi(&["create", "--bundle", b.path(), &id])
        .fails_with("linux.sysctl.vm.swappiness");
    env.assert_clean(&id, &b.cgroup());
}

#[test]
fn the_init_is_born_in_its_cgroup_where_v2_allows() {
    // On a pure cgroup v2 host amphi clones the init straight into its
    // cgroup (clone3 with CLONE_INTO_CGROUP: no migration); on v1 and
    // hybrid hosts the init moves itself, thread by thread ("0" into each
    // hierarchy's `tasks`, which spares the grace period a move by pid
    // waits for). Either way the container's process is in its cgroup.
    // strace shows which path ran.
    let env = Env::new();
    let b = env.bundle("born", &["sh", "-c", "cat /proc/self/cgroup"]);
    b.write();
    let id = env.id("born");
    let trace = env.tmp.path().join("clone.trace");
    let out = std::process::Command::new("strace")
        .args(["-f", "-qq", "-y", "-e", "trace=clone,clone3,write", "-o"])
        .arg(&trace)
        .arg(amphi_tests::amphi_bin())
        .arg("--root")
        .arg(&env.root)
        .args(["run", "--bundle", b.path(), &id])
        .output()
        .expect("strace (scripts/deps.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v2 = nix::sys::statfs::statfs("/sys/fs/cgroup")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    let calls = std::fs::read_to_string(&trace).unwrap();
    assert_eq!(
        calls.contains("CLONE_INTO_CGROUP"),
        v2,
        "clone3 with CLONE_INTO_CGROUP exactly on a v2 host:\n{calls}"
    );
    let own_tasks = format!("{}/tasks>, \"0\", 1) = 1", b.cgroup());
    let moved_itself = calls.lines().filter(|l| l.contains(&own_tasks)).count();
    let moved_by_pid = calls.lines().any(|l| l.contains("/cgroup.procs>"));
    if v2 {
        assert_eq!((moved_itself, moved_by_pid), (0, false), "{calls}");
    } else {
        assert!(moved_itself > 0, "{calls}");
        assert!(!moved_by_pid, "no migration by pid:\n{calls}");
    }
    // Its own cgroup namespace is rooted at its cgroup: "/" inside.
    let cgroup = String::from_utf8_lossy(&out.stdout);
    assert!(
        cgroup
            .lines()
            .any(|l| l.ends_with("::/") || l.ends_with(":/")),
        "{cgroup}"
    );
    env.assert_clean(&id, &b.cgroup());
}

/// A network namespace the container creates has its loopback up, as
/// runc brings it up: 127.0.0.1 works inside (runc is the reference).
#[test]
fn a_new_network_namespace_has_loopback_up() {
    for runtime in [amphi_tests::amphi_bin(), "/usr/sbin/runc".into()] {
        let env = Env::for_runtime(runtime.clone());
        let (r, id, cg) = run_sh(
            &env,
            "lo",
            "cat /sys/class/net/lo/flags; nc -l -p 7000 -e echo served & \
             for i in $(seq 100); do nc 127.0.0.1 7000 </dev/null 2>/dev/null && break; sleep 0.1; done",
            |_| {},
        );
        r.ok();
        assert_eq!(
            r.stdout,
            "0x9\nserved\n",
            "{}: {}",
            runtime.display(),
            r.stderr
        );
        env.assert_clean(&id, &cg);
    }
}

/// A new network namespace is made on a thread of the runtime while it
/// makes the container's state and cgroup, not in the init's clone;
/// unless the container has a user namespace, which must own its network
/// namespace (mounting sysfs, for one, depends on it). Either way each
/// container's namespace is its own, and owned by the user namespace its
/// processes run in, as one made by the clone would be.
#[test]
fn a_new_network_namespace_is_the_containers_own_and_its_user_namespaces() {
    use std::os::unix::fs::MetadataExt;
    /// The inode of the user namespace that owns `pid`'s network namespace.
    fn owner_of_network(pid: i32) -> u64 {
        const NS_GET_USERNS: libc::c_ulong = 0xb701;
        let net = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
        // SAFETY: NS_GET_USERNS takes no argument and returns a new fd.
        let fd = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&net), NS_GET_USERNS) };
        assert!(
            fd >= 0,
            "NS_GET_USERNS: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: the kernel just gave us this fd, owned by nobody else.
        let owner = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        owner.metadata().unwrap().ino()
    }
    let ns = |pid: &str, kind: &str| {
        std::fs::metadata(format!("/proc/{pid}/ns/{kind}"))
            .unwrap()
            .ino()
    };
    let env = Env::new();
    for userns in [false, true] {
        // All alive at once: the kernel numbers a new namespace with a
        // freed one's inode.
        let mut seen = vec![ns("self", "net")];
        let mut made = Vec::new();
        for n in 0..2 {
            let name = format!("net{}{n}", if userns { "u" } else { "" });
            let mut b = env.bundle(&name, &["sleep", "600"]);
            if userns {
                b.own_user_namespace();
            }
            b.write();
            let id = env.id(&name);
            env.amphi(&["create", "--bundle", b.path(), &id]).ok();
            let pid = env.state(&id)["pid"].as_i64().expect("pid") as i32;
            let net = ns(&pid.to_string(), "net");
            assert!(
                !seen.contains(&net),
                "{name}: network namespace {net} not new"
            );
            seen.push(net);
            assert_eq!(
                owner_of_network(pid),
                ns(&pid.to_string(), "user"),
                "{name}: the network namespace's owner is the container's user namespace"
            );
            made.push((id, b.cgroup()));
        }
        for (id, cgroup) in made {
            env.amphi(&["delete", "--force", &id]).ok();
            env.assert_clean(&id, &cgroup);
        }
    }
}

/// `amphi run` as a kernel before Linux 5.12 would see it: a seccomp
/// filter (inherited by amphi) answers `mount_setattr` with ENOSYS, as a
/// kernel without it does. (`open_tree` and `move_mount` came in 5.2,
/// before the `openat2` amphi needs, so every kernel amphi runs on has them.)
fn run_without_new_mount_api(env: &Env, args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut c = env.command(args);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
            const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
            let stmt = |code: u16, k: u32| libc::sock_filter {
                code,
                jt: 0,
                jf: 0,
                k,
            };
            let jump = |k: u32, jt: u8, jf: u8| libc::sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                jt,
                jf,
                k,
            };
            let load = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
            let ret = (libc::BPF_RET | libc::BPF_K) as u16;
            let mut filter = [
                stmt(load, 4), // seccomp_data.arch
                jump(AUDIT_ARCH_X86_64, 0, 2),
                stmt(load, 0), // seccomp_data.nr
                jump(libc::SYS_mount_setattr as u32, 1, 0),
                stmt(ret, libc::SECCOMP_RET_ALLOW),
                stmt(ret, ENOSYS),
            ];
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_mut_ptr(),
            };
            if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.output().expect("spawn amphi")
}

/// Read-only binds, `readonlyPaths` and the recursive options, with the
/// new mount API and on a kernel without it. With it, a read-only path
/// is read-only all the way down (runc's remount leaves submounts
/// writable, as amphi's fallback still does); `rro` needs it and says so.
#[test]
fn read_only_mounts_with_and_without_the_new_mount_api() {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    let env = Env::new();
    let shared = env.tmp.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let script =
        "for f in /data/x /opt/inner/x /deep/inner/x; do touch $f 2>/dev/null; echo $f=$?; done";
    let bundle = |name: &str, recursive: bool| {
        let mut b = env.bundle(name, &["sh", "-c", script]);
        let deep = b.rootfs().join("deep");
        for d in ["data", "opt", "deep"] {
            std::fs::create_dir_all(b.rootfs().join(d)).unwrap();
        }
        let mounts = b.spec["mounts"].as_array_mut().unwrap();
        mounts.push(json!({"destination": "/data", "type": "bind",
                           "source": shared, "options": ["rbind", "ro", "nosuid"]}));
        for top in ["/opt", "/deep"] {
            mounts.push(json!({"destination": top, "type": "tmpfs", "source": "tmpfs"}));
            mounts.push(
                json!({"destination": format!("{top}/inner"), "type": "tmpfs", "source": "tmpfs"}),
            );
        }
        if recursive {
            // /deep (with the tmpfs mounts on it by now) bound onto itself
            // read-only all the way down.
            mounts.push(json!({"destination": "/deep", "type": "bind",
                               "source": deep, "options": ["rbind", "rro"]}));
        }
        b.spec["linux"]["readonlyPaths"]
            .as_array_mut()
            .unwrap()
            .push(json!("/opt"));
        b.write();
        b
    };

    let b = bundle("new-api", false);
    let id = env.id("new-api");
    let r = env.amphi(&["run", "--bundle", b.path(), &id]);
    r.ok();
    assert!(
        r.stdout.contains("/data/x=1"),
        "ro bind writable: {}",
        r.stdout
    );
    assert!(
        r.stdout.contains("/opt/inner/x=1"),
        "submount of a read-only path writable: {}",
        r.stdout
    );
    env.assert_clean(&id, &b.cgroup());

    let b = bundle("old-kernel", false);
    let id = env.id("old-kernel");
    let out = run_without_new_mount_api(&env, &["run", "--bundle", b.path(), &id]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("/data/x=1"), "ro bind writable: {stdout}");
    // runc's behaviour: the remount reaches the top mount only.
    assert!(stdout.contains("/opt/inner/x=0"), "{stdout}");
    env.assert_clean(&id, &b.cgroup());

    let b = bundle("rro", true);
    let id = env.id("rro");
    let r = env.amphi(&["run", "--bundle", b.path(), &id]);
    r.ok();
    assert!(
        r.stdout.contains("/deep/inner/x=1"),
        "rro did not reach the submount: {}",
        r.stdout
    );
    env.assert_clean(&id, &b.cgroup());
    let id = env.id("rro-old");
    let out = run_without_new_mount_api(&env, &["run", "--bundle", b.path(), &id]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("mount_setattr"),
        "{stderr}"
    );
    env.assert_clean(&id, &b.cgroup());
}

/// Mount propagation as kubelet asks for it, against runc: a volume bound
/// `rshared` under `rootfsPropagation: rshared` (CRI's Bidirectional, what
/// CSI node plugins need) carries a mount made inside the container out to
/// the host; one bound `rslave` (HostToContainer) shows the container a
/// mount the host makes below it. The "host" is a mount namespace of the
/// test's own (unshare), where the volume is a shared tmpfs: the machine's
/// mounts are never touched.
#[test]
fn bidirectional_and_host_to_container_propagation_as_runc() {
    let Ok(runc) = which("runc") else {
        eprintln!("runc not installed: skipping the comparison");
        return;
    };
    let mut seen = Vec::new();
    for runtime in [amphi_tests::amphi_bin(), runc] {
        let env = Env::for_runtime(runtime.clone());
        let vol = env.tmp.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        let bundle = |name: &str, propagation: &str, args: &[&str]| {
            let mut b = env.bundle(name, args);
            b.spec["mounts"].as_array_mut().unwrap().push(json!({"destination": "/vol",
                "type": "bind", "source": vol.to_str().unwrap(), "options": ["rbind", propagation]}));
            b.spec["linux"]["rootfsPropagation"] = json!(propagation);
            // A CSI node plugin is privileged: it mounts.
            b.grant("CAP_SYS_ADMIN");
            b.write();
            b
        };
        let bidi = bundle(
            "bidi",
            "rshared",
            &["mount", "-t", "tmpfs", "inner", "/vol/inner"],
        );
        let h2c = bundle("h2c", "rslave", &["sleep", "600"]);
        let (bidi_id, h2c_id) = (env.id("bidi"), env.id("h2c"));
        let script = r#"set -e
mount -t tmpfs vol "$VOL" && mount --make-shared "$VOL" && mkdir "$VOL/inner" "$VOL/fromhost"
"$RT" --root "$ROOT" run --bundle "$BIDI" "$BIDI_ID"
echo "bidirectional: $(grep -c " $VOL/inner " /proc/self/mountinfo || true)"
"$RT" --root "$ROOT" run -d --bundle "$H2C" "$H2C_ID" </dev/null >/dev/null 2>&1
mount -t tmpfs fromhost "$VOL/fromhost"
echo "host-to-container: $("$RT" --root "$ROOT" exec "$H2C_ID" grep -c " /vol/fromhost " /proc/self/mountinfo || true)"
"$RT" --root "$ROOT" delete --force "$H2C_ID"
"#;
        let out = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", script])
            .env("VOL", &vol)
            .env("RT", &runtime)
            .env("ROOT", &env.root)
            .env("BIDI", bidi.path())
            .env("BIDI_ID", &bidi_id)
            .env("H2C", h2c.path())
            .env("H2C_ID", &h2c_id)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{}: {text}{}",
            runtime.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        seen.push((runtime, text));
        amphi_tests::reap_inits();
        env.assert_clean(&bidi_id, &bidi.cgroup());
        env.assert_clean(&h2c_id, &h2c.cgroup());
    }
    for (runtime, text) in &seen {
        assert!(
            text.contains("bidirectional: 1\n") && text.contains("host-to-container: 1\n"),
            "{}: {text}",
            runtime.display()
        );
    }
}

/// v1 controllers: the device rules become the cgroup's list, exactly (the
/// spec's, then the defaults every runtime adds), and hold: /dev/null
/// opens, a /dev/mem made with mknod does not; `update` replaces them.
#[test]
fn device_rules_are_the_cgroups_list_on_v1_controllers() {
    let env = Env::new();
    let Some((_, own)) = amphi_tests::cgroup_dirs_by_hierarchy("")
        .into_iter()
        .find(|(ctrls, _)| ctrls.split(',').any(|c| c == "devices"))
    else {
        eprintln!("skipped: no v1 devices controller on this host");
        return;
    };
    let mut b = env.bundle("devices", &["sleep", "600"]);
    b.spec["linux"]["resources"] = json!({"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rw"},
    ]});
    b.write();
    let id = env.id("devices");
    env.amphi(&["create", "--bundle", b.path(), &id]).ok();
    let list = || std::fs::read_to_string(own.join(b.cgroup()).join("devices.list")).unwrap();
    let want = [
        "c *:* m",
        "b *:* m",
        "c 1:3 rwm",
        "c 1:5 rwm",
        "c 1:7 rwm",
        "c 1:8 rwm",
        "c 1:9 rwm",
        "c 5:0 rwm",
        "c 5:1 rwm",
        "c 5:2 rwm",
        "c 10:200 rw",
        "c 136:* rwm",
    ];
    let mut have: Vec<String> = list().lines().map(str::to_owned).collect();
    have.sort();
    let mut sorted = want.map(str::to_owned).to_vec();
    sorted.sort();
    assert_eq!(have, sorted);
    // Allowing kmsg (1:11) adds exactly it; denying it again removes it.
    let resources = env.tmp.path().join("devices.json");
    for allow in [true, false] {
        let rules = json!({"devices": [
            {"allow": false, "access": "rwm"},
            {"allow": allow, "type": "c", "major": 1, "minor": 11, "access": "rwm"},
        ]});
        std::fs::write(&resources, rules.to_string()).unwrap();
        env.amphi(&["update", "--resources", resources.to_str().unwrap(), &id])
            .ok();
        assert_eq!(list().contains("c 1:11 rwm"), allow, "{}", list());
    }
    env.amphi(&["start", &id]).ok();
    let script = "head -c 1 /dev/null && echo null-ok; mknod /tmp/mem c 1 1 && head -c 1 /tmp/mem; echo mem=$?";
    let r = env.amphi(&["exec", &id, "sh", "-c", script]);
    assert!(
        r.stdout.contains("null-ok") && r.stdout.contains("mem=1"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    env.amphi(&["delete", "--force", &id]).ok();
    env.assert_clean(&id, &b.cgroup());
}
