//! The cases, by area of the runtime spec (config.md, config-linux.md,
//! runtime.md, runtime-linux.md) and of runc's command line that clients
//! rely on.

use std::time::Duration;

use serde_json::json;

use crate::{host_is_v2, Case, Ctx, Runc};

macro_rules! case {
    ($area:literal, $f:ident) => {
        Case {
            area: $area,
            name: stringify!($f),
            run: $f,
            runc: Runc::Passes,
        }
    };
    ($area:literal, $f:ident, runc_violates: $why:literal) => {
        Case {
            area: $area,
            name: stringify!($f),
            run: $f,
            runc: Runc::Violates($why),
        }
    };
    ($area:literal, $f:ident, amphi_differs: $why:literal) => {
        Case {
            area: $area,
            name: stringify!($f),
            run: $f,
            runc: Runc::Differs($why),
        }
    };
}

pub fn all() -> Vec<Case> {
    vec![
        case!("process", args_and_exit_status),
        case!("process", env_is_exactly_the_specs),
        case!("process", cwd_is_set),
        case!("user", uid_gid_and_additional_gids),
        case!("user", umask_applies),
        case!("capabilities", five_sets_for_a_non_root_user),
        case!("capabilities", root_gets_the_listed_set),
        case!("capabilities", unknown_capabilities_are_a_warning),
        case!("rlimits", rlimits_apply),
        case!("process", no_new_privileges_and_oom_score_adj),
        case!("hostname", hostname),
        case!("hostname", domainname,
            runc_violates: "config.md, Domainname: \"domainname (string, OPTIONAL) specifies the container's domainname as seen by processes running inside the container.\" runc 1.1.5 predates the field and leaves the domainname unset"),
        case!("mounts", tmpfs_and_bind_mounts_with_options),
        case!("mounts", readonly_root),
        case!("mounts", rootfs_propagation_private),
        case!("mounts", rootfs_propagation_shared,
            runc_violates: "config-linux.md, Rootfs Mount Propagation: \"rootfsPropagation (string, OPTIONAL) sets the rootfs's mount propagation. Its value is either shared, slave, private or unbindable.\" runc 1.1.5 leaves the root private"),
        case!("devices", default_devices_and_symlinks),
        case!("devices", linux_devices_are_created),
        case!("devices", device_cgroup_denies_unlisted),
        case!("devices", listed_devices_get_only_the_access_rules_give,
            amphi_differs: "config-linux.md lets linux.devices make nodes \"available\" and linux.resources.devices say who may use them; runc 1.1.5 also allows every listed node in the device cgroup, amphi allows only what the rules (and the default devices) allow: least privilege"),
        case!("paths", masked_paths),
        case!("paths", readonly_paths),
        case!("sysctl", namespaced_sysctl),
        case!("user", uid_gid_mappings),
        case!("namespaces", every_namespace_is_new),
        case!("namespaces", joined_by_path),
        case!("namespaces", user_namespace_joined_by_path,
            runc_violates: "config-linux.md, Namespaces: \"The runtime MUST place the container process in the namespace associated with that path.\" with uidMappings \"(array of objects, OPTIONAL)\"; runc 1.1.5 refuses a user namespace given by path unless mappings are given too"),
        case!("namespaces", time_namespace_offsets,
            runc_violates: "config-linux.md, Namespaces: \"time the container will be able to have its own clocks.\" and \"timeOffsets (object, OPTIONAL) sets the offset for Time Namespace.\" runc 1.1.5 rejects the time namespace"),
        case!("cgroups", memory_limit),
        case!("cgroups", cpu_shares_quota_period),
        case!("cgroups", cpuset),
        case!("cgroups", pids_limit),
        case!("cgroups", blkio_weight),
        case!("cgroups", blkio_throttle),
        case!("cgroups", hugepage_limits),
        case!("seccomp", errno_ret_and_argument_conditions),
        case!("seccomp", default_action_and_kill),
        case!("process", scheduler_and_io_priority,
            runc_violates: "config.md, Process: \"scheduler (object, OPTIONAL) is an object describing the scheduler properties for the process.\" and \"ioPriority (object, OPTIONAL) configures the I/O priority settings for the container's processes\"; runc 1.1.5 ignores both"),
        case!("process", personality_linux32,
            runc_violates: "config-linux.md, Personality: \"personality (object, OPTIONAL) sets the Linux execution personality.\" runc 1.1.5 ignores it"),
        case!("hooks", hooks_order_and_state),
        case!("hooks", failing_hook_fails_create),
        case!("hooks", start_container_hooks_run_in_the_container),
        case!(
            "hooks",
            start_container_hooks_under_a_profile_without_clone3
        ),
        case!("hooks", failing_poststop_hook_runs_the_rest,
            runc_violates: "runtime.md, Lifecycle 13: \"If any poststop hook fails, the runtime MUST log a warning, but the remaining hooks and lifecycle continue as if the hook had succeeded.\" runc 1.1.5 stops at the failing hook"),
        case!("state", state_machine_and_state_json),
        case!("state", start_only_from_created),
        case!("state", annotations_are_the_configs),
        case!("state", a_killed_create_never_hides_an_id,
            amphi_differs: "runtime.md, Operations: create MUST fail for an id not unique, and state MUST report a container that exists; a runc create killed midway leaves a directory that create refuses and state denies (whether a kill lands there depends on timing), amphi reclaims a directory whose creator is gone"),
        case!("kill", kill_signals_and_stopped_container),
        case!("delete", delete_semantics),
        case!("terminal", console_socket_gets_the_pty),
        case!("cli", log_format_json),
        case!("cli", exec_ps_pause_resume),
        case!("cli", update_and_events),
        case!("cli", pid_file_and_preserve_fds),
        case!("cli", version_reads_like_runcs),
        case!("process", session_keyring_is_fresh_unless_no_new_keyring),
    ]
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

const CAP_NUMBERS: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

fn cap_mask(names: &[&str]) -> String {
    let mask = names.iter().fold(0u64, |m, n| {
        let n = n.trim_start_matches("CAP_");
        m | 1 << CAP_NUMBERS.iter().position(|c| *c == n).expect("known cap")
    });
    format!("{mask:016x}")
}

// ---- process ----

fn args_and_exit_status(c: &mut Ctx) {
    let r = c.run("exit", "echo \"$0:$1\"; exit 3", |b| {
        b.spec["process"]["args"] = json!(["sh", "-c", "echo \"$0:$1\"; exit 3", "zero", "one"]);
    });
    c.eq(r.code, 3, "exit status of `run`");
    c.eq(r.stdout.trim(), "zero:one", "args reach the process");
}

fn env_is_exactly_the_specs(c: &mut Ctx) {
    let r = c.run("env", "env | sort", |b| {
        b.spec["process"]["env"] = json!(["PATH=/bin", "A=1", "B=two words"]);
    });
    c.eq(r.code, 0, "run");
    let env = lines(&r.stdout);
    c.check(env.contains(&"A=1"), format!("A=1 in {env:?}"));
    c.check(env.contains(&"B=two words"), "B with spaces");
    c.check(env.contains(&"PATH=/bin"), "PATH");
    // sh adds PWD, SHLVL and _; nothing else may come from the host.
    let foreign: Vec<&&str> = env
        .iter()
        .filter(|l| {
            !["A=", "B=", "PATH=", "PWD=", "SHLVL=", "_=", "HOME="]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    c.check(
        foreign.is_empty(),
        format!("no host variables, found {foreign:?}"),
    );
}

fn cwd_is_set(c: &mut Ctx) {
    let r = c.run("cwd", "pwd", |b| b.spec["process"]["cwd"] = json!("/tmp"));
    c.eq(r.stdout.trim(), "/tmp", "process.cwd");
}

// ---- user ----

fn uid_gid_and_additional_gids(c: &mut Ctx) {
    let r = c.run("user", "id -u; id -g; id -G", |b| {
        b.spec["process"]["user"] = json!({"uid": 1000, "gid": 1001, "additionalGids": [5, 6]});
    });
    c.eq(r.code, 0, "run");
    let l = lines(&r.stdout);
    c.eq(l.first().copied(), Some("1000"), "uid");
    c.eq(l.get(1).copied(), Some("1001"), "gid");
    let mut groups: Vec<&str> = l.get(2).unwrap_or(&"").split(' ').collect();
    groups.sort();
    c.eq(groups, vec!["1001", "5", "6"], "additional gids");
}

fn umask_applies(c: &mut Ctx) {
    let r = c.run("umask", "umask", |b| {
        b.spec["process"]["user"]["umask"] = json!(0o027);
    });
    c.eq(r.stdout.trim(), "0027", "process.user.umask");
}

// ---- capabilities ----

fn five_sets_for_a_non_root_user(c: &mut Ctx) {
    let r = c.run("caps", "cat /proc/self/status", |b| {
        b.spec["process"]["user"] = json!({"uid": 1000, "gid": 1000});
        b.spec["process"]["capabilities"] = json!({
            "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
            "effective": ["CAP_KILL"],
            "permitted": ["CAP_KILL", "CAP_CHOWN"],
            "inheritable": ["CAP_KILL"],
            "ambient": ["CAP_KILL"],
        });
    });
    c.eq(r.code, 0, "run");
    let s = r.stdout.as_str();
    c.eq(
        status_field(s, "CapBnd"),
        Some(cap_mask(&["CHOWN", "KILL", "NET_BIND_SERVICE"]).as_str()),
        "bounding",
    );
    let kill = cap_mask(&["KILL"]);
    c.eq(
        status_field(s, "CapInh"),
        Some(kill.as_str()),
        "inheritable",
    );
    c.eq(status_field(s, "CapAmb"), Some(kill.as_str()), "ambient");
    // Across execve a non-root user keeps the ambient set as permitted and
    // effective.
    c.eq(status_field(s, "CapPrm"), Some(kill.as_str()), "permitted");
    c.eq(status_field(s, "CapEff"), Some(kill.as_str()), "effective");
}

fn root_gets_the_listed_set(c: &mut Ctx) {
    let r = c.run("rootcaps", "cat /proc/self/status", |_| {});
    let want = cap_mask(&amphi_tests::DEFAULT_CAPS);
    c.eq(
        status_field(&r.stdout, "CapEff"),
        Some(want.as_str()),
        "effective",
    );
    c.eq(
        status_field(&r.stdout, "CapBnd"),
        Some(want.as_str()),
        "bounding",
    );
}

// ---- rlimits ----

fn rlimits_apply(c: &mut Ctx) {
    let r = c.run("rlimits", "cat /proc/self/limits", |b| {
        b.spec["process"]["rlimits"] = json!([
            {"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200},
            {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
        ]);
    });
    let row = |name: &str| {
        r.stdout.lines().find(|l| l.starts_with(name)).map(|l| {
            l.split_whitespace()
                .rev()
                .skip(1)
                .take(2)
                .collect::<Vec<_>>()
        })
    };
    c.eq(
        row("Max open files"),
        Some(vec!["200", "100"]),
        "RLIMIT_NOFILE",
    );
    c.eq(
        row("Max core file size"),
        Some(vec!["0", "0"]),
        "RLIMIT_CORE",
    );
}

fn no_new_privileges_and_oom_score_adj(c: &mut Ctx) {
    let r = c.run(
        "nnp",
        "grep NoNewPrivs /proc/self/status; cat /proc/self/oom_score_adj",
        |b| {
            b.spec["process"]["noNewPrivileges"] = json!(true);
            b.spec["process"]["oomScoreAdj"] = json!(500);
        },
    );
    let l = lines(&r.stdout);
    c.eq(
        l.first().map(|s| s.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["NoNewPrivs:", "1"]),
        "noNewPrivileges",
    );
    c.eq(l.get(1).copied(), Some("500"), "oomScoreAdj");
}

fn hostname(c: &mut Ctx) {
    let r = c.run("uts", "hostname", |b| {
        b.spec["hostname"] = json!("conformance")
    });
    c.eq(r.stdout.trim(), "conformance", "hostname");
    let host = nix::unistd::gethostname().unwrap();
    c.check(host != "conformance", "the host's hostname is unchanged");
}

fn domainname(c: &mut Ctx) {
    let r = c.run("domain", "cat /proc/sys/kernel/domainname", |b| {
        b.spec["domainname"] = json!("example.org");
    });
    c.eq(r.stdout.trim(), "example.org", "domainname");
}

// ---- mounts ----

fn tmpfs_and_bind_mounts_with_options(c: &mut Ctx) {
    let shared = c.tmp().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("hello"), "from the host").unwrap();
    let r = c.run(
        "mounts",
        "cat /data/hello; echo x > /data/new; echo rc=$?; grep -E ' /(data|scratch) ' /proc/self/mountinfo; stat -c %a /scratch",
        |b| {
            let m = b.spec["mounts"].as_array_mut().unwrap();
            m.push(json!({"destination": "/data", "type": "bind", "source": shared, "options": ["rbind", "ro"]}));
            m.push(json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=1m", "mode=710"]}));
        },
    );
    c.eq(r.code, 0, "run");
    c.check(
        r.stdout.starts_with("from the host"),
        "bind mount shows the host file",
    );
    c.check(
        r.stdout.contains("rc=1") || r.stdout.contains("rc=2"),
        "read-only bind refuses writes",
    );
    let data = r.stdout.lines().find(|l| l.contains(" /data "));
    c.check(
        data.is_some_and(|l| {
            l.split(' ')
                .nth(5)
                .unwrap_or("")
                .split(',')
                .any(|o| o == "ro")
        }),
        format!("/data mounted ro: {data:?}"),
    );
    let scratch = r.stdout.lines().find(|l| l.contains(" /scratch "));
    c.check(
        scratch.is_some_and(|l| {
            l.contains(" - tmpfs ") && l.contains("nosuid") && l.contains("size=1024k")
        }),
        format!("/scratch tmpfs with options: {scratch:?}"),
    );
    c.eq(r.stdout.lines().last(), Some("710"), "tmpfs mode");
    c.check(
        !shared.join("new").exists(),
        "nothing written through the ro bind",
    );
}

fn readonly_root(c: &mut Ctx) {
    let r = c.run(
        "roroot",
        "touch /x; echo rc=$?; touch /tmp/y; echo tmp=$?",
        |b| {
            b.spec["root"]["readonly"] = json!(true);
            b.spec["mounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}));
        },
    );
    c.check(
        r.stdout.contains("rc=1"),
        format!("root.readonly refuses writes: {}", r.stdout),
    );
    c.check(
        r.stdout.contains("tmp=0"),
        "a mount on a read-only root is writable",
    );
}

fn rootfs_propagation_private(c: &mut Ctx) {
    let r = c.run("prop", "awk '$5 == \"/\"' /proc/self/mountinfo", |b| {
        b.spec["linux"]["rootfsPropagation"] = json!("private");
    });
    c.eq(r.code, 0, "run");
    c.check(
        !r.stdout.contains("shared:") && !r.stdout.contains("master:"),
        format!("/ is private: {}", r.stdout),
    );
}

// ---- devices ----

fn default_devices_and_symlinks(c: &mut Ctx) {
    let r = c.run(
        "devs",
        "for d in null zero full random urandom tty; do stat -c '%n %F %t:%T' /dev/$d; done; for l in fd stdin stdout stderr ptmx; do echo $l=$(readlink /dev/$l); done; head -c 4 /dev/zero | wc -c",
        |_| {},
    );
    c.eq(r.code, 0, "run");
    for (d, num) in [
        ("null", "1:3"),
        ("zero", "1:5"),
        ("full", "1:7"),
        ("random", "1:8"),
        ("urandom", "1:9"),
        ("tty", "5:0"),
    ] {
        c.check(
            r.stdout
                .contains(&format!("/dev/{d} character special file {num}")),
            format!("/dev/{d} is {num}: {}", r.stdout),
        );
    }
    for (l, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        c.check(
            r.stdout.contains(&format!("{l}={target}")),
            format!("/dev/{l} -> {target}"),
        );
    }
    c.check(r.stdout.trim_end().ends_with('4'), "/dev/zero readable");
}

fn linux_devices_are_created(c: &mut Ctx) {
    let r = c.run("mydev", "stat -c '%F %t:%T %a %u:%g' /dev/mydev; head -c 3 /dev/mydev | wc -c", |b| {
        b.spec["linux"]["devices"] = json!([{"path": "/dev/mydev", "type": "c", "major": 1, "minor": 5, "fileMode": 0o640, "uid": 1000, "gid": 1001}]);
        b.spec["linux"]["resources"] = json!({"devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"}
        ]});
    });
    c.eq(r.code, 0, "run");
    c.eq(
        lines(&r.stdout),
        vec!["character special file 1:5 640 1000:1001", "3"],
        "linux.devices node",
    );
}

fn device_cgroup_denies_unlisted(c: &mut Ctx) {
    // /dev/mem (1:1) made by mknod inside: creating it is allowed, opening
    // it is not, since no rule allows it.
    let r = c.run("devcg", "mknod /tmp/mem c 1 1 && echo made; head -c 1 /tmp/mem >/dev/null; echo rc=$?; head -c 1 /dev/null; echo null=$?", |b| {
        b.spec["linux"]["resources"] = json!({"devices": [{"allow": false, "access": "rwm"}]});
    });
    c.check(
        r.stdout.contains("made"),
        format!("mknod allowed: {}{}", r.stdout, r.stderr),
    );
    c.check(r.stdout.contains("rc=1"), "unlisted device denied");
    c.check(
        r.stderr.contains("Operation not permitted"),
        format!("EPERM: {}", r.stderr),
    );
    c.check(r.stdout.contains("null=0"), "default devices still allowed");
}

fn masked_paths(c: &mut Ctx) {
    let r = c.run(
        "masked",
        "wc -c < /proc/timer_list; ls /proc/irq | wc -l; stat -c %F /proc/timer_list",
        |b| {
            b.spec["linux"]["maskedPaths"] =
                json!(["/proc/timer_list", "/proc/irq", "/no/such/path"]);
        },
    );
    c.eq(r.code, 0, "run (a missing masked path is skipped)");
    let l = lines(&r.stdout);
    c.eq(
        l.first().map(|s| s.trim()),
        Some("0"),
        "masked file reads empty",
    );
    c.eq(
        l.get(1).map(|s| s.trim()),
        Some("0"),
        "masked directory is empty",
    );
    c.eq(
        l.get(2).copied(),
        Some("character special file"),
        "masked file is /dev/null",
    );
}

fn readonly_paths(c: &mut Ctx) {
    let r = c.run(
        "ropaths",
        "echo 1 > /proc/sys/kernel/domainname; echo rc=$?",
        |b| {
            b.spec["linux"]["readonlyPaths"] = json!(["/proc/sys"]);
        },
    );
    c.check(
        r.stdout.contains("rc=1"),
        format!("write refused: {}", r.stdout),
    );
    c.check(
        r.stderr.contains("Read-only file system"),
        format!("EROFS: {}", r.stderr),
    );
}

fn namespaced_sysctl(c: &mut Ctx) {
    let r = c.run(
        "sysctl",
        "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmni",
        |b| {
            b.spec["linux"]["sysctl"] =
                json!({"net.ipv4.ip_forward": "1", "kernel.shmmni": "1234"});
        },
    );
    c.eq(lines(&r.stdout), vec!["1", "1234"], "sysctls set");
    let host = std::fs::read_to_string("/proc/sys/kernel/shmmni").unwrap();
    c.check(host.trim() != "1234", "the host's value is unchanged");
}

fn uid_gid_mappings(c: &mut Ctx) {
    let (b, pid) = c.start_sleeper("userns", |b| {
        b.own_user_namespace();
    });
    let _ = b;
    let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    c.eq(
        uid_map.split_whitespace().collect::<Vec<_>>(),
        vec!["0", "100000", "65536"],
        "uid_map",
    );
    let gid_map = std::fs::read_to_string(format!("/proc/{pid}/gid_map")).unwrap();
    c.eq(
        gid_map.split_whitespace().collect::<Vec<_>>(),
        vec!["0", "100000", "65536"],
        "gid_map",
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    c.eq(
        status_field(&status, "Uid").map(|u| u.split_whitespace().next().unwrap_or("").to_owned()),
        Some("100000".into()),
        "container root is host uid 100000",
    );
    let id = c.env.id("userns");
    c.env.amphi(&["delete", "--force", &id]);
}

fn every_namespace_is_new(c: &mut Ctx) {
    let kinds = ["pid", "net", "ipc", "uts", "mnt", "cgroup", "user"];
    let (_b, pid) = c.start_sleeper("allns", |b| {
        b.own_user_namespace();
    });
    for k in kinds {
        let inside = std::fs::read_link(format!("/proc/{pid}/ns/{k}")).unwrap();
        let host = std::fs::read_link(format!("/proc/self/ns/{k}")).unwrap();
        c.check(
            inside != host,
            format!("{k} namespace is the container's own"),
        );
    }
    let id = c.env.id("allns");
    c.env.amphi(&["delete", "--force", &id]);
}

fn joined_by_path(c: &mut Ctx) {
    let (_a, pid) = c.start_sleeper("nsa", |_| {});
    let kinds = [
        ("pid", "pid"),
        ("network", "net"),
        ("ipc", "ipc"),
        ("uts", "uts"),
        ("cgroup", "cgroup"),
    ];
    let script = kinds
        .map(|(_, f)| format!("readlink /proc/self/ns/{f}"))
        .join("; ");
    let r = c.run("nsb", &script, |b| {
        let mut nss: Vec<_> = kinds
            .iter()
            .map(|(t, f)| json!({"type": t, "path": format!("/proc/{pid}/ns/{f}")}))
            .collect();
        nss.push(json!({"type": "mount"}));
        b.spec["linux"]["namespaces"] = json!(nss);
        b.spec.as_object_mut().unwrap().remove("hostname");
    });
    c.eq(r.code, 0, format!("run joining by path: {}", r.stderr));
    let got = lines(&r.stdout);
    for (i, (_, f)) in kinds.iter().enumerate() {
        let want = std::fs::read_link(format!("/proc/{pid}/ns/{f}")).unwrap();
        c.eq(
            got.get(i).copied(),
            Some(want.to_str().unwrap()),
            format!("{f} joined"),
        );
    }
    let id = c.env.id("nsa");
    c.env.amphi(&["delete", "--force", &id]);
}

fn user_namespace_joined_by_path(c: &mut Ctx) {
    let (_a, pid) = c.start_sleeper("usera", |b| {
        b.own_user_namespace();
    });
    let r = c.run("userb", "readlink /proc/self/ns/user; id -u", |b| {
        b.spec["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user", "path": format!("/proc/{pid}/ns/user")}));
    });
    c.eq(r.code, 0, format!("run: {}", r.stderr));
    let want = std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
    c.eq(
        lines(&r.stdout),
        vec![want.to_str().unwrap(), "0"],
        "user namespace joined",
    );
    let id = c.env.id("usera");
    c.env.amphi(&["delete", "--force", &id]);
}

fn time_namespace_offsets(c: &mut Ctx) {
    let r = c.run("timens", "cut -d' ' -f1 /proc/uptime", |b| {
        b.spec["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "time"}));
        b.spec["linux"]["timeOffsets"] = json!({"boottime": {"secs": 86400 * 365, "nanosecs": 0}});
    });
    c.eq(r.code, 0, format!("run: {}", r.stderr));
    let up: f64 = r.stdout.trim().parse().unwrap_or(0.0);
    c.check(
        up > 86400.0 * 365.0,
        format!("boottime offset seen in /proc/uptime: {up}"),
    );
}

// ---- cgroups ----

fn memory_limit(c: &mut Ctx) {
    let (b, _) = c.start_sleeper("mem", |b| {
        b.spec["linux"]["resources"] =
            json!({"memory": {"limit": 64 << 20, "reservation": 32 << 20}});
    });
    let limit = c.cgroup_file(
        &b,
        if host_is_v2() {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        },
    );
    c.eq(limit, Some((64u64 << 20).to_string()), "memory limit");
    let low = c.cgroup_file(
        &b,
        if host_is_v2() {
            "memory.low"
        } else {
            "memory.soft_limit_in_bytes"
        },
    );
    c.eq(low, Some((32u64 << 20).to_string()), "memory reservation");
    let id = c.env.id("mem");
    c.env.amphi(&["delete", "--force", &id]);
}

fn cpu_shares_quota_period(c: &mut Ctx) {
    let (b, _) = c.start_sleeper("cpu", |b| {
        b.spec["linux"]["resources"] =
            json!({"cpu": {"shares": 512, "quota": 50000, "period": 100000}});
    });
    if host_is_v2() {
        c.eq(
            c.cgroup_file(&b, "cpu.max"),
            Some("50000 100000".into()),
            "cpu.max",
        );
        c.eq(
            c.cgroup_file(&b, "cpu.weight"),
            Some("20".into()),
            "cpu.weight from shares",
        );
    } else {
        c.eq(
            c.cgroup_file(&b, "cpu.shares"),
            Some("512".into()),
            "cpu.shares",
        );
        c.eq(
            c.cgroup_file(&b, "cpu.cfs_quota_us"),
            Some("50000".into()),
            "quota",
        );
        c.eq(
            c.cgroup_file(&b, "cpu.cfs_period_us"),
            Some("100000".into()),
            "period",
        );
    }
    let id = c.env.id("cpu");
    c.env.amphi(&["delete", "--force", &id]);
}

fn cpuset(c: &mut Ctx) {
    let (b, pid) = c.start_sleeper("cpuset", |b| {
        b.spec["linux"]["resources"] = json!({"cpu": {"cpus": "0", "mems": "0"}});
    });
    c.eq(
        c.cgroup_file(&b, "cpuset.cpus"),
        Some("0".into()),
        "cpuset.cpus",
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    c.eq(
        status_field(&status, "Cpus_allowed_list"),
        Some("0"),
        "the process runs on cpu 0 only",
    );
    let id = c.env.id("cpuset");
    c.env.amphi(&["delete", "--force", &id]);
}

fn pids_limit(c: &mut Ctx) {
    let r = c.run(
        "pids",
        "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; echo started",
        |b| {
            b.spec["linux"]["resources"] = json!({"pids": {"limit": 4}});
        },
    );
    c.check(
        r.stderr.contains("Resource temporarily unavailable") || r.stderr.contains("can't fork"),
        format!("fork beyond pids.limit fails: {}", r.stderr),
    );
    let (b, _) = c.start_sleeper("pids2", |b| {
        b.spec["linux"]["resources"] = json!({"pids": {"limit": 4}});
    });
    c.eq(c.cgroup_file(&b, "pids.max"), Some("4".into()), "pids.max");
    let id = c.env.id("pids2");
    c.env.amphi(&["delete", "--force", &id]);
}

fn blkio_weight(c: &mut Ctx) {
    let v2 = host_is_v2();
    let probe = c.env.bundle("probe", &["true"]);
    let dirs = amphi_tests::cgroup_dirs("");
    let file = if v2 { "io.bfq.weight" } else { "blkio.weight" };
    if !dirs.iter().any(|d| d.join(file).exists()) {
        // Without a proportional I/O scheduler the kernel has no weight file.
        let _ = probe;
        c.skip(format!("{file} not offered by this kernel"));
        return;
    }
    let (b, _) = c.start_sleeper("blkio", |b| {
        b.spec["linux"]["resources"] = json!({"blockIO": {"weight": 300}});
    });
    let got = c.cgroup_file(&b, file);
    c.check(
        got.as_deref().is_some_and(|w| w.contains("300")),
        format!("{file}: {got:?}"),
    );
    let id = c.env.id("blkio");
    c.env.amphi(&["delete", "--force", &id]);
}

fn blkio_throttle(c: &mut Ctx) {
    use std::os::unix::fs::MetadataExt;
    // The device holding the bundle: a real major:minor on this machine.
    let dev = std::fs::metadata(c.tmp()).unwrap().dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let v2 = host_is_v2();
    let file = if v2 {
        "io.max"
    } else {
        "blkio.throttle.read_bps_device"
    };
    if !amphi_tests::cgroup_dirs("")
        .iter()
        .any(|d| d.join(file).exists())
    {
        c.skip(format!("{file} not offered by this kernel"));
        return;
    }
    let (b, _) = c.start_sleeper("throttle", |b| {
        b.spec["linux"]["resources"] = json!({"blockIO": {
            "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1048576}],
            "throttleWriteIOPSDevice": [{"major": major, "minor": minor, "rate": 100}]
        }});
    });
    let got = c.cgroup_file(&b, file).unwrap_or_default();
    let want = if v2 {
        format!("{major}:{minor} rbps=1048576")
    } else {
        format!("{major}:{minor} 1048576")
    };
    c.check(got.contains(&want), format!("{file}: {got:?} has {want:?}"));
    let iops_file = if v2 {
        "io.max"
    } else {
        "blkio.throttle.write_iops_device"
    };
    let got = c.cgroup_file(&b, iops_file).unwrap_or_default();
    let want = if v2 {
        "wiops=100".to_string()
    } else {
        format!("{major}:{minor} 100")
    };
    c.check(
        got.contains(&want),
        format!("{iops_file}: {got:?} has {want:?}"),
    );
    let id = c.env.id("throttle");
    c.env.amphi(&["delete", "--force", &id]);
}

fn hugepage_limits(c: &mut Ctx) {
    let file = if host_is_v2() {
        "hugetlb.2MB.max"
    } else {
        "hugetlb.2MB.limit_in_bytes"
    };
    if !amphi_tests::cgroup_dirs("")
        .iter()
        .any(|d| d.join(file).exists())
    {
        c.skip("no 2MB hugetlb controller on this host");
        return;
    }
    let (b, _) = c.start_sleeper("huge", |b| {
        b.spec["linux"]["resources"] =
            json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 21}]});
    });
    c.eq(
        c.cgroup_file(&b, file),
        Some((4u64 << 21).to_string()),
        "hugetlb limit",
    );
    let id = c.env.id("huge");
    c.env.amphi(&["delete", "--force", &id]);
}

// ---- seccomp ----

fn seccomp_json(syscalls: serde_json::Value, default: &str) -> serde_json::Value {
    json!({
        "defaultAction": default,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls
    })
}

fn errno_ret_and_argument_conditions(c: &mut Ctx) {
    let script = "mkdir /tmp/d; echo mkdir=$?; touch /tmp/f; chmod 777 /tmp/f; echo c777=$?; chmod 755 /tmp/f; echo c755=$?; chmod 4755 /tmp/f; echo c4755=$?";
    let r = c.run("seccomp", script, |b| {
        b.spec["linux"]["seccomp"] = seccomp_json(
            json!([
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["chmod"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 1, "value": 0o777, "op": "SCMP_CMP_EQ"}]},
                {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 2, "value": 0o777, "op": "SCMP_CMP_EQ"}]},
                {"names": ["chmod"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 1, "value": 0o4000, "valueTwo": 0o4000, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 2, "value": 0o4000, "valueTwo": 0o4000, "op": "SCMP_CMP_MASKED_EQ"}]},
            ]),
            "SCMP_ACT_ALLOW",
        );
    });
    c.check(
        r.stdout.contains("mkdir=1"),
        format!("mkdir denied: {}", r.stdout),
    );
    c.check(
        r.stderr.contains("Function not implemented"),
        format!("errnoRet 38 (ENOSYS): {}", r.stderr),
    );
    c.check(
        r.stdout.contains("c777=1"),
        "chmod 777 denied by SCMP_CMP_EQ",
    );
    c.check(r.stdout.contains("c755=0"), "chmod 755 allowed");
    c.check(
        r.stdout.contains("c4755=1"),
        "setuid bit denied by SCMP_CMP_MASKED_EQ",
    );
}

fn default_action_and_kill(c: &mut Ctx) {
    // SCMP_ACT_ERRNO without errnoRet is EPERM...
    let r = c.run("seckill", "ln -s a /tmp/b; echo rc=$?", |b| {
        b.spec["linux"]["seccomp"] = seccomp_json(
            json!([{"names": ["symlink", "symlinkat"], "action": "SCMP_ACT_ERRNO"}]),
            "SCMP_ACT_ALLOW",
        );
    });
    c.check(
        r.stdout.contains("rc=1") && r.stderr.contains("Operation not permitted"),
        format!("symlink denied with EPERM: {}{}", r.stdout, r.stderr),
    );
    // ... and SCMP_ACT_KILL_PROCESS ends the process with SIGSYS.
    let r = c.run("seckill2", "exec ln -s a /tmp/b", |b| {
        b.spec["linux"]["seccomp"] = seccomp_json(
            json!([{"names": ["symlink", "symlinkat"], "action": "SCMP_ACT_KILL_PROCESS"}]),
            "SCMP_ACT_ALLOW",
        );
    });
    c.eq(r.code, 128 + 31, "killed by SIGSYS");
    // A default action that denies: nothing runs, the error says why.
    let r = c.run("secdeny", "true", |b| {
        b.spec["linux"]["seccomp"] = seccomp_json(json!([]), "SCMP_ACT_ERRNO");
    });
    c.check(r.code != 0, "default SCMP_ACT_ERRNO stops the container");
}

fn scheduler_and_io_priority(c: &mut Ctx) {
    let r = c.run(
        "sched",
        "cut -d' ' -f19,41 /proc/self/stat; ionice -p $$",
        |b| {
            b.spec["process"]["scheduler"] = json!({"policy": "SCHED_BATCH", "nice": 5});
            b.spec["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_BE", "priority": 6});
        },
    );
    c.eq(r.code, 0, format!("run: {}", r.stderr));
    let l = lines(&r.stdout);
    c.eq(
        l.first().copied(),
        Some("5 3"),
        "nice 5, policy SCHED_BATCH (3)",
    );
    c.check(
        l.get(1)
            .is_some_and(|s| s.contains("best-effort") && s.contains('6')),
        format!("io priority: {:?}", l.get(1)),
    );
}

fn personality_linux32(c: &mut Ctx) {
    let r = c.run("persona", "uname -m", |b| {
        b.spec["linux"]["personality"] = json!({"domain": "LINUX32"});
    });
    c.eq(r.stdout.trim(), "i686", "uname -m under LINUX32");
}

// ---- hooks ----

fn hooks_order_and_state(c: &mut Ctx) {
    let log = c.tmp().join("hooks.log");
    let logs = c.tmp().to_path_buf();
    let hook = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("read -r s; echo {name} \"$s\" >> {}", log.display())]});
    let in_container = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("read -r s; echo {name} \"$s\" >> /hooklog/hooks.log")]});
    let mut b = c.sh_bundle("hooks", "echo workload >> /hooklog/hooks.log");
    b.spec["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/hooklog", "type": "bind", "source": logs, "options": ["bind"]
    }));
    b.spec["hooks"] = json!({
        "prestart": [hook("prestart")],
        "createRuntime": [hook("createRuntime")],
        "createContainer": [hook("createContainer")],
        "startContainer": [in_container("startContainer")],
        "poststart": [hook("poststart")],
        "poststop": [hook("poststop")],
    });
    b.write();
    let id = c.env.id("hooks");
    c.env.amphi(&["create", "--bundle", b.path(), &id]);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    c.check(
        !text.contains("startContainer") && text.contains("createContainer"),
        "create runs the create hooks only",
    );
    c.env.amphi(&["start", &id]);
    amphi_tests::wait_for(10, || c.env.status(&id).as_deref() == Some("stopped"));
    c.env.amphi(&["delete", &id]);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let order: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    let pos = |n: &str| order.iter().position(|o| *o == n);
    for n in [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
        "workload",
    ] {
        c.check(pos(n).is_some(), format!("{n} ran: {text}"));
    }
    c.check(
        pos("createRuntime") < pos("createContainer"),
        "createRuntime before createContainer",
    );
    c.check(
        pos("createContainer") < pos("startContainer"),
        "createContainer before startContainer",
    );
    c.check(
        pos("startContainer") < pos("workload"),
        "startContainer before the workload",
    );
    c.check(
        pos("poststart") < pos("poststop") && pos("workload") < pos("poststop"),
        "poststop last",
    );
    for line in text.lines().filter(|l| !l.starts_with("workload")) {
        let state: serde_json::Value =
            serde_json::from_str(line.split_once(' ').unwrap().1).unwrap_or_default();
        c.eq(
            state["id"].as_str(),
            Some(id.as_str()),
            format!("state on stdin: {line}"),
        );
    }
}

fn failing_hook_fails_create(c: &mut Ctx) {
    let mut b = c.env.bundle("badhook", &["true"]);
    b.spec["hooks"] = json!({"createRuntime": [{"path": "/bin/false"}]});
    b.write();
    let id = c.env.id("badhook");
    let r = c.env.amphi(&["create", "--bundle", b.path(), &id]);
    c.check(r.code != 0, "a failing createRuntime hook fails create");
    c.check(c.env.status(&id).is_none(), "no container is left");
    let mut b = c.env.bundle("slowhook", &["true"]);
    b.spec["hooks"] =
        json!({"prestart": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]});
    b.write();
    let id = c.env.id("slowhook");
    let r = c.env.amphi(&["create", "--bundle", b.path(), &id]);
    c.check(r.code != 0, "a hook past its timeout fails create");
    let why = r.stderr.to_lowercase();
    c.check(
        why.contains("timeout") || why.contains("timed out"),
        format!("because of its timeout: {}", r.stderr),
    );
}

// ---- runtime.md: state and operations ----

fn state_machine_and_state_json(c: &mut Ctx) {
    let b = c.env.bundle("sm", &["sleep", "600"]);
    let mut b = b;
    b.spec["annotations"] = json!({"org.example.key": "value"});
    b.write();
    let id = c.env.id("sm");
    c.eq(
        c.env.amphi(&["create", "--bundle", b.path(), &id]).code,
        0,
        "create",
    );
    let s = c.env.state(&id);
    c.eq(s["status"].as_str(), Some("created"), "status after create");
    c.eq(s["id"].as_str(), Some(id.as_str()), "state.id");
    c.check(
        s["ociVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "state.ociVersion",
    );
    c.check(
        s["pid"].as_i64().is_some_and(|p| p > 0),
        "state.pid while created",
    );
    c.eq(
        s["bundle"].as_str(),
        Some(b.path()),
        "state.bundle is the absolute bundle path",
    );
    c.eq(
        s["annotations"]["org.example.key"].as_str(),
        Some("value"),
        "state.annotations",
    );
    c.eq(c.env.amphi(&["start", &id]).code, 0, "start");
    c.eq(
        c.env.status(&id).as_deref(),
        Some("running"),
        "status after start",
    );
    c.eq(c.env.amphi(&["kill", &id, "KILL"]).code, 0, "kill");
    c.check(
        amphi_tests::wait_for(10, || c.env.status(&id).as_deref() == Some("stopped")),
        "stopped once the process exits",
    );
    c.eq(c.env.amphi(&["delete", &id]).code, 0, "delete");
    c.check(
        c.env.status(&id).is_none(),
        "state of a deleted container is an error",
    );
}

fn start_only_from_created(c: &mut Ctx) {
    let b = c.env.bundle("once", &["true"]);
    b.write();
    let id = c.env.id("once");
    c.env.amphi(&["create", "--bundle", b.path(), &id]);
    c.eq(c.env.amphi(&["start", &id]).code, 0, "first start");
    amphi_tests::wait_for(10, || c.env.status(&id).as_deref() == Some("stopped"));
    c.check(
        c.env.amphi(&["start", &id]).code != 0,
        "start of a stopped container fails",
    );
    c.check(
        c.env.amphi(&["start", "no-such-container"]).code != 0,
        "start of an unknown id fails",
    );
    c.check(
        c.env.amphi(&["create", "--bundle", b.path(), &id]).code != 0,
        "create with an id in use fails",
    );
}

fn kill_signals_and_stopped_container(c: &mut Ctx) {
    let b = c.env.bundle(
        "kill",
        &[
            "sh",
            "-c",
            "trap 'echo got-usr1 > /tmp/usr1; exit 7' USR1; while :; do sleep 0.1; done",
        ],
    );
    b.write();
    let id = c.env.id("kill");
    c.env.amphi(&["create", "--bundle", b.path(), &id]);
    c.env.amphi(&["start", &id]);
    std::thread::sleep(Duration::from_millis(300));
    c.eq(c.env.amphi(&["kill", &id, "USR1"]).code, 0, "kill by name");
    c.check(
        amphi_tests::wait_for(10, || c.env.status(&id).as_deref() == Some("stopped")),
        "the signal reached the process",
    );
    c.check(b.rootfs().join("tmp/usr1").exists(), "the trap ran");
    c.check(
        c.env.amphi(&["kill", &id, "KILL"]).code != 0,
        "kill of a stopped container fails",
    );
    c.env.amphi(&["delete", &id]);
    let b = c.env.bundle("kill9", &["sleep", "600"]);
    b.write();
    let id = c.env.id("kill9");
    c.env.amphi(&["create", "--bundle", b.path(), &id]);
    c.env.amphi(&["start", &id]);
    c.eq(c.env.amphi(&["kill", &id, "9"]).code, 0, "kill by number");
    c.check(
        amphi_tests::wait_for(10, || c.env.status(&id).as_deref() == Some("stopped")),
        "SIGKILL by number",
    );
    c.env.amphi(&["delete", &id]);
}

fn delete_semantics(c: &mut Ctx) {
    let b = c.env.bundle("del", &["sleep", "600"]);
    b.write();
    let id = c.env.id("del");
    c.env.amphi(&["create", "--bundle", b.path(), &id]);
    let pid = c.env.state(&id)["pid"].as_i64().unwrap_or(0) as i32;
    c.env.amphi(&["start", &id]);
    c.check(
        c.env.amphi(&["delete", &id]).code != 0,
        "delete of a running container fails",
    );
    c.eq(
        c.env.status(&id).as_deref(),
        Some("running"),
        "and leaves it running",
    );
    c.eq(
        c.env.amphi(&["delete", "--force", &id]).code,
        0,
        "delete --force",
    );
    c.check(c.env.status(&id).is_none(), "gone after delete --force");
    c.check(
        amphi_tests::wait_for(5, || {
            amphi_tests::reap_inits();
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
        }),
        "its process is gone",
    );
    c.check(
        amphi_tests::cgroup_dirs(&b.cgroup())
            .iter()
            .all(|d| !d.exists()),
        "its cgroup is removed",
    );
    // A created, never started container can be deleted; its process goes.
    let id = c.env.id("del2");
    c.env.amphi(&["create", "--bundle", b.path(), &id]);
    c.eq(
        c.env.amphi(&["delete", &id]).code,
        0,
        "delete of a created container",
    );
    c.check(c.env.status(&id).is_none(), "created container gone");
}

fn console_socket_gets_the_pty(c: &mut Ctx) {
    use std::io::Read;

    let sock = c.tmp().join("console.sock");
    let receiver = amphi_tests::console_receiver(&sock);
    // config-linux.md, Default Devices: "/dev/console is set up if terminal
    // is enabled in the config by bind mounting the pseudoterminal pty to
    // /dev/console."
    let mut b = c.env.bundle(
        "tty",
        &["sh", "-c", "tty; stty size; [ $(stat -Lc %t:%T /dev/console) = $(stat -Lc %t:%T $(tty)) ] && echo console-is-the-pty"],
    );
    b.spec["process"]["terminal"] = json!(true);
    b.spec["process"]["consoleSize"] = json!({"height": 30, "width": 100});
    b.write();
    let id = c.env.id("tty");
    let r = c.env.amphi(&[
        "create",
        "--console-socket",
        sock.to_str().unwrap(),
        "--bundle",
        b.path(),
        &id,
    ]);
    c.eq(r.code, 0, format!("create with a terminal: {}", r.stderr));
    let Some(master) = receiver.join().unwrap() else {
        c.check(false, "no pty master received");
        return;
    };
    c.check(
        nix::unistd::isatty(&master).unwrap_or(false),
        "the fd is a terminal",
    );
    c.env.amphi(&["start", &id]);
    let mut master = std::fs::File::from(master);
    let mut out = Vec::new();
    let mut chunk = [0u8; 1024];
    while let Ok(n) = master.read(&mut chunk) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    let out = String::from_utf8_lossy(&out).replace('\r', "");
    c.check(
        out.starts_with("/dev/pts/"),
        format!("stdio is the pty: {out:?}"),
    );
    c.check(out.contains("30 100"), "process.consoleSize applied");
    c.check(
        out.contains("console-is-the-pty"),
        format!("/dev/console is the pty: {out:?}"),
    );
}

fn log_format_json(c: &mut Ctx) {
    let log = c.tmp().join("log.json");
    let r = c.env.amphi(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "start",
        "no-such-container",
    ]);
    c.check(r.code != 0, "start of an unknown id fails");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let last: serde_json::Value = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    c.eq(
        last["level"].as_str(),
        Some("error"),
        format!("level in {text:?}"),
    );
    c.check(last["msg"].as_str().is_some_and(|m| !m.is_empty()), "msg");
    c.check(last["time"].as_str().is_some(), "time");
}

fn exec_ps_pause_resume(c: &mut Ctx) {
    let (_b, pid) = c.start_sleeper("ex", |_| {});
    let id = c.env.id("ex");
    let r = c.env.amphi(&[
        "exec",
        "--env",
        "X=1",
        "--cwd",
        "/tmp",
        &id,
        "sh",
        "-c",
        "echo $X $(pwd); readlink /proc/1/exe; exit 4",
    ]);
    c.eq(r.code, 4, "exec's exit status");
    c.eq(
        lines(&r.stdout).first().copied(),
        Some("1 /tmp"),
        "exec --env --cwd",
    );
    let r = c.env.amphi(&["ps", "--format", "json", &id]);
    let pids: Vec<i64> = serde_json::from_str(&r.stdout).unwrap_or_default();
    c.check(
        pids.contains(&(pid as i64)),
        format!("ps lists the init: {pids:?}"),
    );
    c.eq(c.env.amphi(&["pause", &id]).code, 0, "pause");
    c.eq(c.env.status(&id).as_deref(), Some("paused"), "state paused");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
    c.check(
        state == Some('D') || state == Some('S') || state == Some('T'),
        format!("frozen process state {state:?}"),
    );
    c.eq(c.env.amphi(&["resume", &id]).code, 0, "resume");
    c.eq(
        c.env.status(&id).as_deref(),
        Some("running"),
        "state running",
    );
    c.env.amphi(&["delete", "--force", &id]);
}

fn update_and_events(c: &mut Ctx) {
    let (b, _) = c.start_sleeper("upd", |b| {
        b.spec["linux"]["resources"] =
            json!({"memory": {"limit": 64 << 20}, "pids": {"limit": 100}});
    });
    let id = c.env.id("upd");
    let r = c
        .env
        .amphi(&["update", "--memory", "96m", "--pids-limit", "50", &id]);
    c.eq(r.code, 0, format!("update: {}", r.stderr));
    let file = if host_is_v2() {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    c.eq(
        c.cgroup_file(&b, file),
        Some((96u64 << 20).to_string()),
        "memory limit updated",
    );
    c.eq(
        c.cgroup_file(&b, "pids.max"),
        Some("50".into()),
        "pids limit updated",
    );
    let res = c.tmp().join("res.json");
    std::fs::write(&res, r#"{"pids": {"limit": 60}}"#).unwrap();
    let r = c
        .env
        .amphi(&["update", "--resources", res.to_str().unwrap(), &id]);
    c.eq(r.code, 0, format!("update --resources: {}", r.stderr));
    c.eq(
        c.cgroup_file(&b, "pids.max"),
        Some("60".into()),
        "pids limit from --resources",
    );
    let r = c.env.amphi(&["events", "--stats", &id]);
    let ev: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap_or_default();
    c.eq(
        ev["type"].as_str(),
        Some("stats"),
        format!("events --stats: {}", r.stdout),
    );
    c.eq(ev["id"].as_str(), Some(id.as_str()), "event id");
    c.check(
        ev["data"]["memory"]["usage"]["usage"]
            .as_u64()
            .is_some_and(|u| u > 0),
        "memory usage",
    );
    c.eq(
        ev["data"]["memory"]["usage"]["limit"].as_u64(),
        Some(96 << 20),
        "memory limit in stats",
    );
    c.check(
        ev["data"]["pids"]["current"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "pids.current",
    );
    c.check(
        ev["data"]["cpu"]["usage"]["total"].as_u64().is_some(),
        "cpu usage",
    );
    c.env.amphi(&["delete", "--force", &id]);
}

fn pid_file_and_preserve_fds(c: &mut Ctx) {
    let b = c
        .env
        .bundle("pidf", &["sh", "-c", "ls /proc/self/fd; cat <&3"]);
    b.write();
    let id = c.env.id("pidf");
    let pidfile = c.tmp().join("pid");
    let extra = c.tmp().join("extra");
    std::fs::write(&extra, "via-fd-3\n").unwrap();
    let out = c.tmp().join("out");
    let f = std::fs::File::open(&extra).unwrap();
    use std::os::fd::AsRawFd;
    let mut cmd = c.env.command(&[
        "create",
        "--preserve-fds",
        "1",
        "--pid-file",
        pidfile.to_str().unwrap(),
        "--bundle",
        b.path(),
        &id,
    ]);
    cmd.stdout(std::fs::File::create(&out).unwrap());
    let raw = f.as_raw_fd();
    // SAFETY: dup2 in the child before exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            // dup2 onto itself would keep close-on-exec: clear it explicitly.
            if libc::dup2(raw, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let st = cmd.status().unwrap();
    c.check(st.success(), "create --preserve-fds 1");
    let pid: i64 = std::fs::read_to_string(&pidfile)
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(0);
    c.eq(
        pid,
        c.env.state(&id)["pid"].as_i64().unwrap_or(-1),
        "--pid-file holds the init's pid",
    );
    c.env.amphi(&["start", &id]);
    amphi_tests::wait_for(10, || c.env.status(&id).as_deref() == Some("stopped"));
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let fds: Vec<&str> = text.lines().filter(|l| l.parse::<u32>().is_ok()).collect();
    c.check(fds.contains(&"3"), format!("fd 3 passed: {fds:?}"));
    c.check(
        !fds.iter().any(|f| f.parse::<u32>().unwrap() > 4),
        format!("nothing beyond: {fds:?}"),
    );
    c.check(text.contains("via-fd-3"), "fd 3 is the caller's file");
    c.env.amphi(&["delete", &id]);
}

// ---- found by an independent conformance run and by real clients ----

fn unknown_capabilities_are_a_warning(c: &mut Ctx) {
    // config.md, Linux Process: "Runtimes SHOULD NOT fail if the container
    // configuration requests capabilities that cannot be granted".
    let r = c.run("unkcap", "grep CapBnd /proc/self/status", |b| {
        let caps = json!(["CAP_CHOWN", "CAP_NOT_A_THING"]);
        for set in ["bounding", "effective", "permitted"] {
            b.spec["process"]["capabilities"][set] = caps.clone();
        }
        b.spec["process"]["capabilities"]["inheritable"] = json!([]);
        b.spec["process"]["capabilities"]["ambient"] = json!([]);
    });
    c.eq(
        r.code,
        0,
        format!("run with an unknown capability: {}", r.stderr),
    );
    c.check(
        r.stdout.contains(&cap_mask(&["CAP_CHOWN"])),
        format!("the known one is granted: {}", r.stdout),
    );
}

fn listed_devices_get_only_the_access_rules_give(c: &mut Ctx) {
    // A node in linux.devices is created; what it may be used for is what
    // linux.resources.devices (and the default devices) allow. fuse (10:229)
    // and tun (10:200) are no default devices; the device cgroup answers
    // EPERM before any driver is asked.
    let script = "(exec 3</dev/rfuse) 2>/tmp/r && echo r-ok; \
                  (exec 3>/dev/rfuse) 2>/tmp/w && echo w-ok; \
                  (exec 3</dev/rtun) 2>/tmp/t && echo t-ok; \
                  echo R:$(cat /tmp/r); echo W:$(cat /tmp/w); echo T:$(cat /tmp/t)";
    let r = c.run("devacc", script, |b| {
        b.spec["linux"]["devices"] = json!([
            {"path": "/dev/rfuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o666},
            {"path": "/dev/rtun", "type": "c", "major": 10, "minor": 200, "fileMode": 0o666}
        ]);
        b.spec["linux"]["resources"] = json!({"devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "r"}
        ]});
    });
    let line = |tag: &str| {
        r.stdout
            .lines()
            .find(|l| l.starts_with(tag))
            .unwrap_or("")
            .to_owned()
    };
    let denied = |l: &str| l.contains("not permitted");
    c.check(
        r.stdout.contains("r-ok") || !denied(&line("R:")),
        format!("read allowed by the r rule: {}", r.stdout),
    );
    c.check(
        !r.stdout.contains("w-ok") && denied(&line("W:")),
        format!("write denied, the rule says r only: {}", r.stdout),
    );
    c.check(
        !r.stdout.contains("t-ok") && denied(&line("T:")),
        format!("a listed device no rule allows is denied: {}", r.stdout),
    );
}

fn rootfs_propagation_shared(c: &mut Ctx) {
    let r = c.run("shprop", "awk '$5 == \"/\"' /proc/self/mountinfo", |b| {
        b.spec["linux"]["rootfsPropagation"] = json!("shared");
    });
    c.eq(r.code, 0, format!("run: {}", r.stderr));
    c.check(
        r.stdout.contains("shared:"),
        format!("/ is shared: {}", r.stdout),
    );
}

fn start_container_hooks_run_in_the_container(c: &mut Ctx) {
    // config.md, POSIX-platform Hooks: startContainer hooks "MUST be
    // executed in the container namespace" and their path "MUST resolve in
    // the container namespace"; what they create is the process's (umask).
    let b = c.sh_bundle("starthook", "cat /hook-ns; stat -c %a /hook-out");
    let mut b = b;
    b.spec["process"]["user"]["umask"] = json!(0o022);
    b.spec["hooks"] = json!({"startContainer": [{"path": "/bin/sh", "args": ["sh", "-c",
        "readlink /proc/self/ns/mnt > /hook-ns; echo in > /hook-out"]}]});
    b.write();
    let id = c.env.id("starthook");
    let r = c.env.amphi(&["run", "--bundle", b.path(), &id]);
    c.eq(r.code, 0, format!("run: {}", r.stderr));
    let host_ns = std::fs::read_link("/proc/self/ns/mnt").unwrap_or_default();
    let out = lines(&r.stdout);
    c.check(
        out.first()
            .is_some_and(|ns| ns.starts_with("mnt:") && *ns != host_ns.to_string_lossy()),
        format!(
            "the hook ran in the container's mount namespace: {}",
            r.stdout
        ),
    );
    c.check(
        b.rootfs().join("hook-out").exists(),
        "its absolute path landed in the container's root",
    );
    c.eq(
        out.get(1).copied(),
        Some("644"),
        "what it made follows the process's umask",
    );
}

fn start_container_hooks_under_a_profile_without_clone3(c: &mut Ctx) {
    // Older Docker profiles and runtime-tools' generator list no clone3
    // and deny what they do not list with EPERM (not ENOSYS): the runtime's
    // own spawn of a startContainer hook, under that filter, must not need it.
    let mut profile = amphi_core::seccomp::default_profile_json();
    profile["defaultAction"] = json!("SCMP_ACT_ERRNO");
    for rule in profile["syscalls"].as_array_mut().into_iter().flatten() {
        if let Some(names) = rule["names"].as_array_mut() {
            names.retain(|n| n != "clone3");
        }
    }
    let mut b = c.sh_bundle("noclone3", "cat /hook-ran");
    b.spec["process"]["noNewPrivileges"] = json!(false);
    b.spec["linux"]["seccomp"] = profile.clone();
    b.spec["hooks"] = json!({"startContainer": [{"path": "/bin/sh", "args": ["sh", "-c",
        "echo hooked > /hook-ran"]}]});
    b.write();
    let id = c.env.id("noclone3");
    let r = c.env.amphi(&["run", "--bundle", b.path(), &id]);
    c.eq(r.code, 0, format!("run: {}", r.stderr));
    c.eq(r.stdout.trim(), "hooked", "the hook ran before the process");
    // runtime.md, Lifecycle 7: a startContainer hook that fails stops the
    // container; its process never runs.
    let mut b = c.sh_bundle("failstart", "echo process-ran");
    b.spec["linux"]["seccomp"] = profile;
    b.spec["hooks"] = json!({"startContainer": [{"path": "/bin/false"}]});
    b.write();
    let id = c.env.id("failstart");
    let r = c.env.amphi(&["run", "--bundle", b.path(), &id]);
    c.check(r.code != 0, "a failing startContainer hook fails the run");
    c.check(
        !r.stdout.contains("process-ran"),
        format!("the process never ran: {}", r.stdout),
    );
}

fn failing_poststop_hook_runs_the_rest(c: &mut Ctx) {
    let marker = c.tmp().join("poststop-2");
    let mut b = c.env.bundle("poststop", &["true"]);
    b.spec["hooks"] = json!({"poststop": [
        {"path": "/bin/false"},
        {"path": "/bin/sh", "args": ["sh", "-c", format!("touch {}", marker.display())]}
    ]});
    b.write();
    let id = c.env.id("poststop");
    let r = c.env.amphi(&["run", "--bundle", b.path(), &id]);
    c.eq(r.code, 0, format!("the lifecycle continues: {}", r.stderr));
    c.check(marker.exists(), "the hook after the failing one ran");
    c.check(c.env.status(&id).is_none(), "the container is deleted");
}

fn annotations_are_the_configs(c: &mut Ctx) {
    // runtime.md, State: annotations "contains the list of annotations
    // associated with the container" (the config's, nothing added).
    let mut b = c.env.bundle("annot", &["sleep", "600"]);
    b.spec["annotations"] = json!({"org.example.a": "1", "org.example.b": "two"});
    b.write();
    let id = c.env.id("annot");
    c.env.amphi(&["create", "--bundle", b.path(), &id]);
    let state = c.env.state(&id);
    c.eq(
        state["annotations"].clone(),
        json!({"org.example.a": "1", "org.example.b": "two"}),
        "state.annotations",
    );
    c.env.amphi(&["delete", "--force", &id]);
}

fn a_killed_create_never_hides_an_id(c: &mut Ctx) {
    // Whenever `create` dies, the id is either a container `state` and
    // `list` show, or free for the next `create`: never refused while
    // invisible. Kill it at a spread of instants across its run, taken as
    // fractions of how long one create takes here (so the spread fits any
    // machine; a kill anywhere must keep the rule, so timing cannot fail
    // the case, only move where the kills land).
    let mut b = c.env.bundle("killed", &["sleep", "600"]);
    b.write();
    let probe = c.env.id("killed-probe");
    let t = std::time::Instant::now();
    c.env.amphi(&["create", "--bundle", b.path(), &probe]);
    let full = t.elapsed();
    c.env.amphi(&["delete", "--force", &probe]);
    for (i, delay_us) in (0..12u64)
        .map(|k| full.as_micros() as u64 * k / 10)
        .enumerate()
    {
        let id = c.env.id(&format!("killed{i}"));
        let cgroup = format!("{}-{i}", c.env.id("killed"));
        b.spec["linux"]["cgroupsPath"] = json!(cgroup);
        b.write();
        let mut child = c
            .env
            .command(&["create", "--bundle", b.path(), &id])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(delay_us));
        let _ = child.kill();
        let _ = child.wait();
        let visible = c.env.status(&id).is_some();
        let listed = c.env.amphi(&["list", "-q"]).stdout.lines().any(|l| l == id);
        c.eq(listed, visible, format!("list and state agree on {id}"));
        if !visible {
            let r = c.env.amphi(&["create", "--bundle", b.path(), &id]);
            c.eq(
                r.code,
                0,
                format!(
                    "an id state does not know is free ({delay_us} us): {}",
                    r.stderr
                ),
            );
        }
        c.env.amphi(&["delete", "--force", &id]);
        // What delete leaves of a killed create (runc: its cgroup, made
        // before its record) is the test's to remove; amphi leaves none.
        let left: Vec<_> = amphi_tests::cgroup_dirs(&cgroup)
            .into_iter()
            .filter(|d| d.exists())
            .collect();
        if c.is_amphi() {
            c.check(
                left.is_empty(),
                format!("delete removed the cgroup of {id}: {left:?}"),
            );
        }
        for d in left {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            amphi_tests::wait_for(5, || std::fs::remove_dir(&d).is_ok() || !d.exists());
        }
    }
    // An init a killed create left before recording it has no container
    // to be deleted with: end it here.
    for pid in amphi_tests::processes_rooted_in(c.tmp()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn version_reads_like_runcs(c: &mut Ctx) {
    let r = c.env.amphi(&["--version"]);
    c.eq(r.code, 0, "--version");
    let first = r.stdout.lines().next().unwrap_or("");
    let name = c
        .env
        .runtime
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    c.check(
        first.starts_with(&format!("{name} version ")),
        format!("first line is `{name} version X`: {first:?}"),
    );
    c.check(
        r.stdout.lines().any(|l| l.starts_with("spec: 1.")),
        format!("a `spec: 1.x` line: {}", r.stdout),
    );
}

fn session_keyring_is_fresh_unless_no_new_keyring(c: &mut Ctx) {
    // The caller's keys must not reach the container (runc's default); with
    // --no-new-keyring the container keeps the caller's session keyring.
    let mut b = c.env.bundle("keyring", &["/keyring"]);
    let st = std::process::Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(b.rootfs().join("keyring"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/conformance/keyring.c"
        ))
        .status();
    if !st.is_ok_and(|s| s.success()) {
        c.check(false, "cc -static keyring.c (libc6-dev)");
        return;
    }
    b.spec["process"]["args"] = json!(["/keyring"]);
    b.write();
    // SAFETY: keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, create).
    let ours = unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 1) };
    c.check(ours > 0, "the test has a session keyring");
    let id = c.env.id("keyring");
    let fresh = c.env.amphi(&["run", "--bundle", b.path(), &id]);
    c.eq(fresh.code, 0, format!("run: {}", fresh.stderr));
    let theirs: i64 = fresh.stdout.trim().parse().unwrap_or(-1);
    c.check(
        theirs > 0 && theirs != ours,
        format!("a fresh keyring: {theirs} vs ours {ours}"),
    );
    let id = c.env.id("keyring2");
    let kept = c
        .env
        .amphi(&["run", "--no-new-keyring", "--bundle", b.path(), &id]);
    c.eq(
        kept.code,
        0,
        format!("run --no-new-keyring: {}", kept.stderr),
    );
    c.eq(
        kept.stdout.trim().parse::<i64>().ok(),
        Some(ours),
        "--no-new-keyring keeps ours",
    );
}
