//! Kubernetes pods through containerd 1.6's CRI plugin, driven the way
//! kubelet drives it, with the `amphi` runtime handler: pods mixing native
//! and wasm containers, pod-level wasm annotations, exit reasons, logs,
//! stats, runtime options, many pods at once, and a shim killed midway.
//! Each ends with nothing left: no pod, shim, process, cgroup or state.

use std::time::Duration;

use amphi_tests::cri::{container, Cri, BUSYBOX, WASM_POD};
use amphi_tests::{amphi_bin, wait_for};
use k8s_cri::v1::*;

fn ns(pid: i32, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// The executor amphi recorded for a container (in the shim's amphi root).
fn executor(cri: &Cri, id: &str) -> String {
    let out = std::process::Command::new(amphi_bin())
        .arg("--root")
        .arg(cri.tmp.path().join("amphi-root/k8s.io"))
        .args(["state", id])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let e = v["executor"].as_str().unwrap_or("").to_owned();
    assert!(
        !e.is_empty(),
        "amphi state {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    e
}

/// A container that fills its 32 MiB until the OOM killer ends it.
fn oom_container() -> ContainerConfig {
    let mut oom = container("oom", BUSYBOX, &["tail", "/dev/zero"]);
    oom.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 32 << 20,
        memory_swap_limit_in_bytes: 32 << 20,
        ..Default::default()
    });
    oom
}

fn running(cri: &Cri, id: &str) -> bool {
    cri.status(id).0.state == ContainerState::ContainerRunning as i32
}

fn exited(cri: &Cri, id: &str) -> ContainerStatus {
    assert!(
        wait_for(60, || cri.status(id).0.state
            == ContainerState::ContainerExited as i32),
        "{id} did not exit"
    );
    cri.status(id).0
}

#[test]
fn a_pod_of_native_and_wasm_containers() {
    let cri = Cri::start(&amphi_bin(), "");
    let config = cri.pod_config("mixed", &[], true);
    let pod = cri.run_pod(&config, "amphi").expect("RunPodSandbox");
    let sidecar = cri
        .start_container(
            &pod,
            &config,
            container(
                "sidecar",
                BUSYBOX,
                &[
                    "sh",
                    "-c",
                    "echo hello-log; echo to-stderr >&2; exec sleep 600",
                ],
            ),
        )
        .expect("native sidecar");
    let module = cri
        .start_container(
            &pod,
            &config,
            container("module", WASM_POD, &["/app/idle.wasm", "600"]),
        )
        .expect("wasm module container");
    let component = cri
        .start_container(
            &pod,
            &config,
            container("component", WASM_POD, &["/app/idle-component.wasm", "600"]),
        )
        .expect("wasm component container");
    for id in [&sidecar, &module, &component] {
        assert!(wait_for(20, || running(&cri, id)), "{id} running");
    }
    assert_eq!(executor(&cri, &sidecar), "native");
    assert_eq!(executor(&cri, &module), "wasm");
    assert_eq!(executor(&cri, &component), "wasm");

    // ListContainers, as kubelet polls it.
    let listed = cri
        .block_on(cri.runtime().list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        }))
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 3);
    assert!(listed
        .iter()
        .all(|c| c.state == ContainerState::ContainerRunning as i32));

    // The pod's namespaces: network, IPC and (shareProcessNamespace) pid.
    let sandbox = cri.sandbox_pid(&pod);
    for id in [&sidecar, &module, &component] {
        let pid = cri.pid(id);
        for kind in ["net", "ipc", "pid"] {
            assert_eq!(
                ns(pid, kind),
                ns(sandbox, kind),
                "{id} shares the pod's {kind} namespace"
            );
        }
        // Its own cgroup, below the pod's parent.
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let parent = config.linux.as_ref().unwrap().cgroup_parent.clone();
        assert!(
            cgroup
                .lines()
                .any(|l| l.contains(&format!("{parent}/{id}"))),
            "{id} in its cgroup below {parent}: {cgroup}"
        );
    }

    // ExecSync: a shell into the native and the wasm container (amphi runs
    // it natively), a module into the native one (amphi runs it on wasm).
    for id in [&sidecar, &module] {
        let r = cri
            .exec_sync(id, &["sh", "-c", "echo exec-ok; exit 4"])
            .expect("ExecSync");
        assert_eq!(
            (r.exit_code, String::from_utf8_lossy(&r.stdout).as_ref()),
            (4, "exec-ok\n")
        );
    }
    let r = cri.exec_sync(&sidecar, &["/bin/true"]).unwrap();
    assert_eq!(r.exit_code, 0);
    let r = cri.exec_sync(&module, &["/app/hello.wasm"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&r.stdout), "hello from wasm\n");

    // Logs: the CRI format (timestamp, stream, tag), and ReopenContainerLog.
    let log_dir = std::path::PathBuf::from(&config.log_directory);
    let log = log_dir.join("sidecar.log");
    assert!(wait_for(10, || std::fs::read_to_string(&log)
        .is_ok_and(|l| l.contains("to-stderr"))));
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.ends_with("hello-log"))
        .expect("stdout line");
    let fields: Vec<&str> = line.splitn(4, ' ').collect();
    assert!(
        fields[0].contains('T') && fields[1] == "stdout" && fields[2] == "F",
        "{line}"
    );
    assert!(text.lines().any(|l| l.split(' ').nth(1) == Some("stderr")));
    std::fs::rename(&log, log_dir.join("sidecar.log.1")).unwrap();
    cri.block_on(
        cri.runtime()
            .reopen_container_log(ReopenContainerLogRequest {
                container_id: sidecar.clone(),
            }),
    )
    .expect("ReopenContainerLog");
    // The pod shares its pid namespace: the sidecar's process is `sleep`.
    cri.exec_sync(
        &sidecar,
        &["sh", "-c", "echo after-reopen > /proc/$(pidof sleep)/fd/1"],
    )
    .unwrap();
    assert!(
        wait_for(10, || std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("after-reopen"))),
        "output after ReopenContainerLog goes to the new file"
    );

    // Stats: CPU and memory for native and wasm containers, and the pod's.
    for id in [&sidecar, &module, &component] {
        let s = cri
            .block_on(cri.runtime().container_stats(ContainerStatsRequest {
                container_id: id.clone(),
            }))
            .expect("ContainerStats")
            .into_inner()
            .stats
            .unwrap();
        let mem = s.memory.unwrap().working_set_bytes.map_or(0, |v| v.value);
        let cpu = s
            .cpu
            .unwrap()
            .usage_core_nano_seconds
            .map_or(0, |v| v.value);
        assert!(mem > 0 && cpu > 0, "{id}: memory {mem}, cpu {cpu}");
    }
    let all = cri
        .block_on(
            cri.runtime()
                .list_container_stats(ListContainerStatsRequest { filter: None }),
        )
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(all.len(), 3, "ListContainerStats");
    let pod_stats = cri.block_on(cri.runtime().pod_sandbox_stats(PodSandboxStatsRequest {
        pod_sandbox_id: pod.clone(),
    }));
    match pod_stats {
        Ok(s) => assert!(s.into_inner().stats.is_some()),
        // containerd 1.6 implements PodSandboxStats only from 1.7 on.
        Err(e) => assert_eq!(e.code(), tonic::Code::Unimplemented, "{e}"),
    }

    cri.remove_pod(&pod);
    cri.assert_clean();
}

#[test]
fn a_pod_annotated_for_wasm() {
    let cri = Cri::start(&amphi_bin(), "");
    // compat at pod level reaches every container, the sandbox included:
    // the sandbox still runs natively, the wasm containers as wasm.
    let config = cri.pod_config("compat", &[("module.wasm.image/variant", "compat")], false);
    let pod = cri
        .run_pod(&config, "amphi")
        .expect("RunPodSandbox of a wasm-annotated pod");
    let app = cri
        .start_container(
            &pod,
            &config,
            container("app", WASM_POD, &["/app/idle.wasm", "600"]),
        )
        .unwrap();
    assert!(wait_for(20, || running(&cri, &app)));
    assert_eq!(executor(&cri, &app), "wasm");
    cri.remove_pod(&pod);

    // compat-smart: a native sidecar stays native beside a wasm container.
    let config = cri.pod_config(
        "smart",
        &[("module.wasm.image/variant", "compat-smart")],
        false,
    );
    let pod = cri.run_pod(&config, "amphi").unwrap();
    let sidecar = cri
        .start_container(
            &pod,
            &config,
            container("sidecar", BUSYBOX, &["sleep", "600"]),
        )
        .unwrap();
    let app = cri
        .start_container(
            &pod,
            &config,
            container("app", WASM_POD, &["/app/idle.wasm", "600"]),
        )
        .unwrap();
    assert!(wait_for(20, || running(&cri, &sidecar) && running(&cri, &app)));
    assert_eq!(executor(&cri, &sidecar), "native");
    assert_eq!(executor(&cri, &app), "wasm");

    // A wasm container whose module is broken fails CreateContainer with
    // amphi's reason; the pod and its other containers run on.
    let bad = cri.start_container(
        &pod,
        &config,
        container("bad", WASM_POD, &["/bin/busybox.wasm"]),
    );
    let e = bad.expect_err("a missing module");
    assert!(
        e.message().contains("busybox.wasm"),
        "amphi's error in the CRI's: {}",
        e.message()
    );
    assert!(running(&cri, &sidecar) && running(&cri, &app));
    cri.remove_pod(&pod);
    cri.assert_clean();
}

#[test]
fn exit_codes_and_reasons() {
    let cri = Cri::start(&amphi_bin(), "");
    let config = cri.pod_config("exits", &[], false);
    let pod = cri.run_pod(&config, "amphi").unwrap();
    let done = cri
        .start_container(&pod, &config, container("done", BUSYBOX, &["true"]))
        .unwrap();
    let three = cri
        .start_container(
            &pod,
            &config,
            container("three", BUSYBOX, &["sh", "-c", "exit 3"]),
        )
        .unwrap();
    let oom = cri.start_container(&pod, &config, oom_container()).unwrap();
    let s = exited(&cri, &done);
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    let s = exited(&cri, &three);
    assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"));
    let s = exited(&cri, &oom);
    assert_eq!((s.exit_code, s.reason.as_str()), (137, "OOMKilled"));

    // StopContainer with a grace period: TERM, then KILL after it. A native
    // process that ignores TERM dies by KILL; a wasm guest spinning without
    // host calls ends on TERM itself.
    let stubborn = cri
        .start_container(
            &pod,
            &config,
            container(
                "stubborn",
                BUSYBOX,
                &["sh", "-c", "trap '' TERM; while true; do sleep 1; done"],
            ),
        )
        .unwrap();
    let spin = cri
        .start_container(
            &pod,
            &config,
            container("spin", WASM_POD, &["/app/spin.wasm"]),
        )
        .unwrap();
    assert!(wait_for(20, || running(&cri, &stubborn) && running(&cri, &spin)));
    for (id, want) in [(&stubborn, 137), (&spin, 143)] {
        cri.block_on(cri.runtime().stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 3,
        }))
        .expect("StopContainer");
        assert_eq!(exited(&cri, id).exit_code, want, "{id}");
    }
    cri.remove_pod(&pod);
    cri.assert_clean();
}

#[test]
fn runtime_options_reach_the_shim() {
    // The handler's options table: amphi's root and wasm cache (the other
    // tests run with them in their directories), an unknown key, and
    // SystemdCgroup, which a host without systemd cannot honour.
    let cri = Cri::start(&amphi_bin(), "");
    let config = cri.pod_config("opts", &[], false);
    let pod = cri.run_pod(&config, "amphi").unwrap();
    let app = cri
        .start_container(
            &pod,
            &config,
            container("app", WASM_POD, &["/app/idle.wasm", "600"]),
        )
        .unwrap();
    assert!(wait_for(20, || running(&cri, &app)));
    assert!(
        cri.tmp.path().join("amphi-root/k8s.io").join(&app).exists(),
        "Root honoured"
    );
    let cached =
        std::fs::read_dir(cri.tmp.path().join("amphi-root/wasm-cache")).map_or(0, |d| d.count());
    assert!(cached > 0, "WasmCache honoured");
    cri.remove_pod(&pod);
    cri.assert_clean();
    drop(cri);

    for (extra, needle) in [
        ("Bogus = 1\n", "Bogus"),
        ("SystemdCgroup = true\n", "systemd"),
    ] {
        let cri = Cri::start(&amphi_bin(), extra);
        let config = cri.pod_config("badopts", &[], false);
        let e = cri.run_pod(&config, "amphi").expect_err(extra);
        assert!(e.message().contains(needle), "{extra}: {}", e.message());
        cri.assert_clean();
    }
}

#[test]
fn many_pods_at_once() {
    let cri = Cri::start(&amphi_bin(), "");
    let errors = std::sync::Mutex::new(Vec::<String>::new());
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // kubelet's polling meanwhile.
        s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let c = cri.block_on(
                    cri.runtime()
                        .list_containers(ListContainersRequest { filter: None }),
                );
                let p = cri.block_on(
                    cri.runtime()
                        .list_pod_sandbox(ListPodSandboxRequest { filter: None }),
                );
                if let Err(e) = c.and(p.map(|_| ())) {
                    errors.lock().unwrap().push(format!("polling: {e}"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let workers: Vec<_> = (0..20)
            .map(|i| {
                let (cri, errors) = (&cri, &errors);
                s.spawn(move || {
                    let run = || -> Result<(), String> {
                        let config = cri.pod_config(&format!("many{i}"), &[], false);
                        let pod = cri.run_pod(&config, "amphi").map_err(|e| e.to_string())?;
                        let a = cri
                            .start_container(
                                &pod,
                                &config,
                                container("native", BUSYBOX, &["sleep", "600"]),
                            )
                            .map_err(|e| e.to_string())?;
                        let b = cri
                            .start_container(
                                &pod,
                                &config,
                                container("wasm", WASM_POD, &["/app/idle.wasm", "600"]),
                            )
                            .map_err(|e| e.to_string())?;
                        if !wait_for(60, || running(cri, &a) && running(cri, &b)) {
                            return Err(format!("pod {i} not running"));
                        }
                        cri.remove_pod(&pod);
                        Ok(())
                    };
                    if let Err(e) = run() {
                        errors.lock().unwrap().push(format!("pod {i}: {e}"));
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let errors = errors.into_inner().unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    cri.assert_clean();
}

#[test]
fn a_killed_shim_is_cleaned_up() {
    let cri = Cri::start(&amphi_bin(), "");
    let config = cri.pod_config("killed", &[], false);
    let pod = cri.run_pod(&config, "amphi").unwrap();
    let app = cri
        .start_container(&pod, &config, container("app", BUSYBOX, &["sleep", "600"]))
        .unwrap();
    assert!(wait_for(20, || running(&cri, &app)));
    let shims = cri.shims();
    assert_eq!(shims.len(), 1, "one shim per pod: {shims:?}");
    let workload = cri.pid(&app);
    // SAFETY: the shim this test's containerd started.
    unsafe { libc::kill(shims[0], libc::SIGKILL) };
    // containerd notices, runs `shim delete`, and the containers are gone.
    assert!(
        wait_for(30, || {
            // An orphaned init comes to this test (a subreaper) to be reaped.
            amphi_tests::containerd::reap_zombies(0);
            std::fs::read_to_string(format!("/proc/{workload}/stat")).is_err()
        }),
        "the container's process went with the shim's clean-up"
    );
    cri.remove_pod(&pod);
    cri.assert_clean();
    // The same pod can be made again.
    let pod = cri.run_pod(&config, "amphi").expect("the pod again");
    let app = cri
        .start_container(&pod, &config, container("app", BUSYBOX, &["sleep", "600"]))
        .unwrap();
    assert!(wait_for(20, || running(&cri, &app)));
    cri.remove_pod(&pod);
    cri.assert_clean();
}

/// A node as kubeadm deploys it (the VM lane: systemd 252 as PID 1, pure
/// cgroup v2): containerd as a delegated service, kubelet's systemd cgroup
/// driver, `SystemdCgroup = true` on both handlers. Per handler: a pod with
/// a native container (and, on amphi, a wasm module) under limits, exec,
/// logs, v2 stats, stop and remove; every container's scope read back from
/// systemd and from its cgroup files, and nothing left.
#[test]
fn a_systemd_node_runs_pods_on_both_handlers() {
    if !std::path::Path::new("/run/systemd/system").is_dir() {
        eprintln!("systemd is not PID 1 here: the VM lane runs this");
        return;
    }
    let cri = Cri::start_on(amphi_tests::cri::Node::Systemd, &amphi_bin(), "");
    for handler in ["amphi", "runc"] {
        let config = cri.pod_config(&format!("sd{handler}"), &[], true);
        let slice = config
            .linux
            .as_ref()
            .unwrap()
            .cgroup_parent
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned();
        let pod = cri.run_pod(&config, handler).unwrap();
        let limited = |mut c: ContainerConfig, memory: i64| {
            c.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
                memory_limit_in_bytes: memory,
                cpu_period: 100_000,
                cpu_quota: 50_000,
                ..Default::default()
            });
            c
        };
        let native = limited(
            container(
                "app",
                BUSYBOX,
                &["sh", "-c", "echo hello from app; exec sleep 600"],
            ),
            64 << 20,
        );
        let mut ids = vec![cri.start_container(&pod, &config, native).unwrap()];
        if handler == "amphi" {
            let wasm = limited(
                container("guest", WASM_POD, &["/app/idle.wasm", "600"]),
                64 << 20,
            );
            ids.push(cri.start_container(&pod, &config, wasm).unwrap());
        }
        for id in &ids {
            assert!(wait_for(30, || running(&cri, id)), "{handler} {id}");
            let unit = format!("cri-containerd-{id}.scope");
            assert_eq!(
                amphi_tests::systemctl_show(&unit, "ActiveState"),
                "active",
                "{handler} {unit}"
            );
            assert_eq!(
                amphi_tests::systemctl_show(&unit, "Slice"),
                slice,
                "{handler} {unit}"
            );
            assert_eq!(
                amphi_tests::systemctl_show(&unit, "Delegate"),
                "yes",
                "{handler} {unit}"
            );
            assert_eq!(
                amphi_tests::systemctl_show(&unit, "MemoryMax"),
                "67108864",
                "{handler} {unit}"
            );
            assert_eq!(
                amphi_tests::systemctl_show(&unit, "CPUQuotaPerSecUSec"),
                "500ms",
                "{handler} {unit}"
            );
            let dir =
                format!("/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/{slice}/{unit}");
            let file = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).unwrap_or_default();
            assert_eq!(file("memory.max").trim(), "67108864", "{handler} {dir}");
            assert_eq!(file("cpu.max").trim(), "50000 100000", "{handler} {dir}");
            let pid = cri.pid(id);
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            assert!(
                cgroup.trim().ends_with(&format!("/{slice}/{unit}")),
                "{handler}: {cgroup}"
            );
        }
        let r = cri
            .exec_sync(&ids[0], &["sh", "-c", "echo in exec"])
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&r.stdout), "in exec\n", "{handler}");
        let log = std::path::Path::new(&config.log_directory).join("app.log");
        assert!(
            wait_for(10, || std::fs::read_to_string(&log)
                .is_ok_and(|l| l.contains(" stdout F hello from app"))),
            "{handler}: CRI log {}",
            log.display()
        );
        let stats = cri
            .block_on(cri.runtime().container_stats(ContainerStatsRequest {
                container_id: ids[0].clone(),
            }))
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        assert!(
            stats
                .memory
                .and_then(|m| m.working_set_bytes)
                .is_some_and(|w| w.value > 0),
            "{handler}: v2 memory stats"
        );
        // An OOM kill's reason. systemd removes a scope as soon as its last
        // process died, often before the kill's count in its
        // `memory.events` can be read (runc issue 5071; containerd skips
        // this case of critest on this driver): amphi reads the kernel's
        // log too. runc's shim missed it in the lane runs looked at: its
        // reason is shown, not asserted.
        let oom = cri.start_container(&pod, &config, oom_container()).unwrap();
        let s = exited(&cri, &oom);
        if handler == "amphi" {
            assert_eq!((s.exit_code, s.reason.as_str()), (137, "OOMKilled"));
        } else {
            eprintln!(
                "{handler}: an OOM kill's reason: {} {}",
                s.exit_code, s.reason
            );
        }
        cri.remove_pod(&pod);
        for id in &ids {
            let unit = format!("cri-containerd-{id}.scope");
            assert!(
                wait_for(20, || amphi_tests::systemctl_show(&unit, "LoadState")
                    == "not-found"),
                "{handler}: {unit} left"
            );
        }
        let _ = std::process::Command::new("systemctl")
            .args(["stop", &slice])
            .status();
    }
    // A pod whose sandbox cannot start (a sysctl this kernel does not have)
    // leaves nothing in containerd (checked below) or systemd.
    let units = || {
        let out = std::process::Command::new("systemctl")
            .args([
                "list-units",
                "--all",
                "--plain",
                "--no-legend",
                "cri-containerd-*",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    for handler in ["amphi", "runc"] {
        let mut config = cri.pod_config(&format!("nosb{handler}"), &[], true);
        config.linux.as_mut().unwrap().sysctls =
            [("net.ipv4.amphi_no_such".to_owned(), "1".to_owned())].into();
        let e = cri
            .run_pod(&config, handler)
            .expect_err("a sysctl the kernel does not have");
        assert!(
            e.message().contains("amphi_no_such"),
            "{handler}: the runtime's error in the CRI's: {}",
            e.message()
        );
        assert!(
            wait_for(20, || units().is_empty()),
            "{handler}: units left: {}",
            units()
        );
        let slice = config
            .linux
            .as_ref()
            .unwrap()
            .cgroup_parent
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned();
        let _ = std::process::Command::new("systemctl")
            .args(["stop", &slice])
            .status();
    }
    cri.assert_clean();
}

/// Volume propagation as kubelet asks for it, through CRI, against the
/// runc handler: a `Bidirectional` volume (what CSI node plugins need)
/// carries a mount made in the container out to the node, and a
/// `HostToContainer` one shows the container a mount the node makes below
/// it. The node is containerd's own mount namespace, where the volume is a
/// shared tmpfs.
#[test]
fn volume_propagation_both_ways_on_both_handlers() {
    let cri = Cri::start(&amphi_bin(), "");
    let node = cri.daemon_pid().unwrap();
    let shared = cri.tmp.path().join("shared");
    let node_has = |path: &std::path::Path| {
        std::fs::read_to_string(format!("/proc/{node}/mountinfo"))
            .unwrap_or_default()
            .contains(&format!(" {} ", path.display()))
    };
    for handler in ["amphi", "runc"] {
        let vol = shared.join(handler);
        let st = std::process::Command::new("nsenter")
            .args(["-t", &node.to_string(), "-m", "mkdir", "-p"])
            .arg(vol.join("inner"))
            .arg(vol.join("fromhost"))
            .status()
            .unwrap();
        assert!(st.success());
        let mut config = cri.pod_config(&format!("prop{handler}"), &[], false);
        let sandbox = config
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap();
        sandbox.privileged = true;
        let pod = cri.run_pod(&config, handler).unwrap();
        let with_volume = |name: &str, command: &[&str], propagation: MountPropagation| {
            let mut c = container(name, BUSYBOX, command);
            c.mounts = vec![Mount {
                container_path: "/vol".into(),
                host_path: vol.display().to_string(),
                propagation: propagation as i32,
                ..Default::default()
            }];
            let linux = c.linux.as_mut().unwrap();
            linux.security_context.as_mut().unwrap().privileged = true;
            c
        };
        let csi = with_volume(
            "csi",
            &[
                "sh",
                "-c",
                "mount -t tmpfs inner /vol/inner && exec sleep 600",
            ],
            MountPropagation::PropagationBidirectional,
        );
        cri.start_container(&pod, &config, csi).unwrap();
        assert!(
            wait_for(20, || node_has(&vol.join("inner"))),
            "{handler}: the container's mount did not reach the node"
        );
        let reader = with_volume(
            "reader",
            &["sleep", "600"],
            MountPropagation::PropagationHostToContainer,
        );
        let reader = cri.start_container(&pod, &config, reader).unwrap();
        assert!(wait_for(20, || running(&cri, &reader)));
        let st = std::process::Command::new("nsenter")
            .args([
                "-t",
                &node.to_string(),
                "-m",
                "mount",
                "-t",
                "tmpfs",
                "fromhost",
            ])
            .arg(vol.join("fromhost"))
            .status()
            .unwrap();
        assert!(st.success());
        let r = cri
            .exec_sync(
                &reader,
                &["grep", "-c", " /vol/fromhost ", "/proc/self/mountinfo"],
            )
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&r.stdout).trim(),
            "1",
            "{handler}: the node's mount did not reach the container"
        );
        cri.remove_pod(&pod);
        // runc leaves the pod's parent cgroup to its maker, as kubelet is.
        let parent = &config.linux.as_ref().unwrap().cgroup_parent;
        for d in amphi_tests::cgroup_mounts() {
            let d = d.join(parent.trim_start_matches('/'));
            wait_for(5, || std::fs::remove_dir(&d).is_ok() || !d.exists());
        }
    }
    cri.assert_clean();
}
