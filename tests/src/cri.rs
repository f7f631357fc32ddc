//! Playing kubelet: a private containerd 1.6 with its CRI plugin, runtime
//! handlers `amphi` (amphi's shim) and `runc` (containerd's runc shim),
//! driven over its socket with a CRI client generated from the CRI protos
//! (the `k8s-cri` crate), the calls kubelet makes, in kubelet's order.
//!
//! containerd runs in a mount namespace of its own with a fresh /run (its
//! shims put their sockets in /run/containerd/s whatever they are told);
//! pods get a network of loopback only (Debian's loopback CNI plugin,
//! through a wrapper that names the interface eth0, which containerd 1.6
//! insists on); the pause image is built here; the registry mirror is an
//! unused loopback port, so an accidental pull cannot leave the machine.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::clients::{daemon, kill_processes_mentioning, remove_cgroup_tree};
use crate::wait_for;

pub const PAUSE: &str = "docker.io/amphi/pause:test";
pub const BUSYBOX: &str = "docker.io/amphi/busybox:test";
/// busybox plus the wasm guests under /app; entrypoint /app/idle.wasm.
pub const WASM_POD: &str = "docker.io/amphi/wasm-pod:test";

/// How the node runs its cgroups, as kubelet's `cgroupDriver` says.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// cgroupfs: containerd a child of the test in a mount namespace with
    /// a fresh /run, pods below the test's own cgroup.
    Cgroupfs,
    /// systemd (kubeadm's default): containerd as a `containerd.service`
    /// would run (a transient unit with `Delegate=yes`, `KillMode=process`),
    /// both handlers with `SystemdCgroup = true`, pods in kubelet's
    /// `kubepods-*-pod*.slice`s. Where systemd is PID 1 (the VM lane).
    Systemd,
}

enum Daemon {
    Child(Child),
    Unit(String),
}

pub struct Cri {
    pub tmp: tempfile::TempDir,
    daemon: Daemon,
    pub node: Node,
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    /// Pods' cgroups go below this (the test's own cgroup).
    pub cgroup_parent: String,
    pods: std::sync::atomic::AtomicUsize,
}

impl Cri {
    /// Start containerd with the CRI plugin. The `amphi` handler's options
    /// table puts amphi's state and wasm cache in the test's directory, and
    /// adds `extra_options` (TOML lines).
    pub fn start(amphi: &Path, extra_options: &str) -> Cri {
        Cri::start_on(Node::Cgroupfs, amphi, extra_options)
    }

    /// Start containerd with the CRI plugin on a node of `node`'s kind.
    pub fn start_on(node: Node, amphi: &Path, extra_options: &str) -> Cri {
        crate::become_subreaper();
        let tmp = tempfile::Builder::new()
            .prefix("amphi-cri")
            .tempdir()
            .unwrap();
        let t = tmp.path();
        let bin = t.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(
            amphi.with_file_name("containerd-shim-amphi-v2"),
            bin.join("containerd-shim-amphi-v2"),
        )
        .unwrap();
        std::os::unix::fs::symlink(amphi, bin.join("amphi")).unwrap();
        // The pod network: loopback only, named eth0 in the plugin's result.
        let cni_bin = t.join("cni/bin");
        let cni_conf = t.join("cni/net.d");
        std::fs::create_dir_all(&cni_bin).unwrap();
        std::fs::create_dir_all(&cni_conf).unwrap();
        std::fs::write(
            cni_bin.join("amphi-loopback"),
            "#!/bin/sh\n# containerd 1.6 wants an eth0 with an address in the result; the pod stays on loopback.\n\
             /usr/lib/cni/loopback | sed 's/\"lo\"/\"eth0\"/'\n",
        )
        .unwrap();
        std::fs::set_permissions(
            cni_bin.join("amphi-loopback"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        // containerd brings up every pod's lo with the plugin itself.
        std::os::unix::fs::symlink("/usr/lib/cni/loopback", cni_bin.join("loopback")).unwrap();
        std::fs::write(
            cni_conf.join("10-amphi.conflist"),
            r#"{"cniVersion": "0.4.0", "name": "amphi-loopback", "plugins": [{"type": "amphi-loopback"}]}"#,
        )
        .unwrap();
        let cgroup_parent = format!(
            "{}/amphi-cri-{}",
            crate::own_cgroup().trim_end_matches('/'),
            t.file_name().unwrap().to_string_lossy()
        );
        // containerd 1.6 passes a non-runc runtime's options only as a
        // runtimeoptions.v1.Options: amphi's own keys go in a file it names.
        std::fs::write(
            t.join("amphi-options.toml"),
            format!(
                "Root = \"{t}/amphi-root\"\nWasmCache = \"{t}/amphi-root/wasm-cache\"\n{extra_options}",
                t = t.display()
            ),
        )
        .unwrap();
        let systemd = node == Node::Systemd;
        if systemd {
            let mut o = std::fs::OpenOptions::new()
                .append(true)
                .open(t.join("amphi-options.toml"))
                .unwrap();
            std::io::Write::write_all(&mut o, b"\nSystemdCgroup = true\n").unwrap();
        }
        let amphi_options = format!(
            "        ConfigPath = \"{}/amphi-options.toml\"",
            t.display()
        );
        let runc_options = if systemd {
            "    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n      SystemdCgroup = true\n"
        } else {
            ""
        };
        let config = format!(
            r#"version = 2
root = "{t}/root"
state = "{t}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{t}/c.sock"
[ttrpc]
  address = "{t}/c.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
    endpoint = ["http://127.0.0.1:9"]
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
{runc_options}    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.amphi]
      runtime_type = "io.containerd.amphi.v2"
      pod_annotations = ["module.wasm.image/*", "run.oci.handler"]
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.amphi.options]
{amphi_options}
"#,
            t = t.display(),
            cni_bin = cni_bin.display(),
            cni_conf = cni_conf.display(),
        );
        std::fs::write(t.join("config.toml"), config).unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let daemon = if systemd {
            // As Debian's containerd.service runs it; /run stays the
            // machine's (a fresh VM's), where systemd's bus is.
            let unit = format!(
                "amphi-test-containerd-{}.service",
                t.file_name().unwrap().to_string_lossy()
            );
            let st = Command::new("systemd-run")
                .arg(format!("--unit={unit}"))
                .args([
                    "--property=Delegate=yes",
                    "--property=KillMode=process",
                    "--collect",
                ])
                .arg(format!(
                    "--property=StandardOutput=file:{}/containerd.log",
                    t.display()
                ))
                .arg(format!(
                    "--property=StandardError=file:{}/containerd.err",
                    t.display()
                ))
                .arg(format!("--setenv=PATH={path}"))
                .args(["containerd", "--config"])
                .arg(t.join("config.toml"))
                .stdin(Stdio::null())
                .status()
                .expect("systemd-run");
            assert!(st.success(), "systemd-run containerd");
            Daemon::Unit(unit)
        } else {
            // The node's own shared mount for volumes whose propagation is
            // asked for (kubelet keeps its pods' directory shared).
            let script = format!(
                "mount -t tmpfs -o mode=755 tmpfs /run && mkdir -p {t}/shared && \
                 mount -t tmpfs shared {t}/shared && mount --make-shared {t}/shared && \
                 exec containerd --config {t}/config.toml",
                t = t.display()
            );
            Daemon::Child(
                daemon("unshare")
                    .args(["--mount", "--propagation", "private", "sh", "-c", &script])
                    .env("PATH", path)
                    .stdin(Stdio::null())
                    .stdout(std::fs::File::create(t.join("containerd.log")).unwrap())
                    .stderr(std::fs::File::create(t.join("containerd.err")).unwrap())
                    .spawn()
                    .expect("containerd (Debian's containerd package)"),
            )
        };
        // Threads of a test call through it at once (many pods).
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let sock = t.join("c.sock");
        assert!(
            wait_for(30, || sock.exists()),
            "containerd did not come up: {}",
            std::fs::read_to_string(t.join("containerd.err")).unwrap_or_default()
        );
        // Connected on first use: the socket may exist before containerd
        // listens on it; the Status loop below waits for it.
        let channel = {
            let _guard = rt.enter();
            Endpoint::try_from("http://[::]")
                .unwrap()
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let sock = sock.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(sock).await?,
                        ))
                    }
                }))
        };
        let cri = Cri {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            tmp,
            daemon,
            node,
            rt,
            cgroup_parent,
            pods: Default::default(),
        };
        assert!(
            wait_for(30, || cri
                .block_on(cri.runtime().status(StatusRequest { verbose: false }))
                .is_ok()),
            "the CRI plugin did not come up: {}",
            std::fs::read_to_string(cri.tmp.path().join("containerd.err")).unwrap_or_default()
        );
        for kind in ["pause", "busybox", "wasm-pod"] {
            cri.import(kind);
        }
        cri
    }

    /// containerd's pid (its mount namespace is the node's, in cgroupfs
    /// mode).
    pub fn daemon_pid(&self) -> Option<i32> {
        match &self.daemon {
            Daemon::Child(c) => Some(c.id() as i32),
            Daemon::Unit(_) => None,
        }
    }

    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        self.runtime.clone()
    }

    /// Build the image and import it into the CRI's namespace.
    fn import(&self, kind: &str) {
        let tar = crate::containerd::image(kind, self.tmp.path());
        let out = self.ctr(&["images", "import", tar.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "ctr import {kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let name = format!("docker.io/amphi/{kind}:test");
        let found = self.block_on(self.images.clone().image_status(ImageStatusRequest {
            image: Some(ImageSpec {
                image: name.clone(),
                ..Default::default()
            }),
            verbose: false,
        }));
        assert!(
            found.is_ok_and(|r| r.into_inner().image.is_some()),
            "CRI sees {name}"
        );
    }

    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("-a")
            .arg(self.tmp.path().join("c.sock"))
            .args(["-n", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// A pod config as kubelet sends it: a cgroup parent below the test's,
    /// namespaces shared as asked, logs in the test's directory.
    pub fn pod_config(
        &self,
        name: &str,
        annotations: &[(&str, &str)],
        share_pid: bool,
    ) -> PodSandboxConfig {
        let n = self.pods.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let uid = format!("{name}-{n}");
        // kubelet's layout on each driver: a directory per pod below the
        // parent, or a pod slice (a dash in a slice's name is a level, so
        // kubelet writes the uid's dashes as underscores).
        let cgroup_parent = match self.node {
            Node::Cgroupfs => format!("{}/pod-{uid}", self.cgroup_parent),
            Node::Systemd => format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
                uid.replace('-', "_")
            ),
        };
        let logs = self.tmp.path().join("logs").join(&uid);
        std::fs::create_dir_all(&logs).unwrap();
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: uid.clone(),
                namespace: "amphi-test".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: logs.display().to_string(),
            annotations: to_map(annotations),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent,
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod as i32,
                        pid: if share_pid {
                            NamespaceMode::Pod
                        } else {
                            NamespaceMode::Container
                        } as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn run_pod(
        &self,
        config: &PodSandboxConfig,
        handler: &str,
    ) -> Result<String, tonic::Status> {
        self.block_on(self.runtime().run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        }))
        .map(|r| r.into_inner().pod_sandbox_id)
    }

    /// CreateContainer then StartContainer, as kubelet does.
    pub fn start_container(
        &self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        config: ContainerConfig,
    ) -> Result<String, tonic::Status> {
        let id = self
            .block_on(self.runtime().create_container(CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(config),
                sandbox_config: Some(pod_config.clone()),
            }))?
            .into_inner()
            .container_id;
        self.block_on(self.runtime().start_container(StartContainerRequest {
            container_id: id.clone(),
        }))?;
        Ok(id)
    }

    /// ContainerStatus with its verbose info (`pid` among it).
    pub fn status(&self, id: &str) -> (ContainerStatus, serde_json::Value) {
        let r = self
            .block_on(self.runtime().container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            }))
            .unwrap()
            .into_inner();
        let info = r
            .info
            .get("info")
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or_default();
        (r.status.unwrap(), info)
    }

    /// The pod's pause process, from PodSandboxStatus's verbose info.
    pub fn sandbox_pid(&self, pod: &str) -> i32 {
        let r = self
            .block_on(self.runtime().pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.into(),
                verbose: true,
            }))
            .unwrap()
            .into_inner();
        let info: serde_json::Value = r
            .info
            .get("info")
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or_default();
        info["pid"].as_i64().unwrap_or(0) as i32
    }

    pub fn pid(&self, id: &str) -> i32 {
        self.status(id).1["pid"].as_i64().unwrap_or(0) as i32
    }

    pub fn exec_sync(&self, id: &str, cmd: &[&str]) -> Result<ExecSyncResponse, tonic::Status> {
        self.block_on(self.runtime().exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 30,
        }))
        .map(|r| r.into_inner())
    }

    /// StopPodSandbox and RemovePodSandbox (which stop and remove its
    /// containers), as kubelet does when a pod goes.
    pub fn remove_pod(&self, pod: &str) {
        let stop = self.block_on(self.runtime().stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        }));
        assert!(stop.is_ok(), "StopPodSandbox: {stop:?}");
        let rm = self.block_on(self.runtime().remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        }));
        assert!(rm.is_ok(), "RemovePodSandbox: {rm:?}");
    }

    /// Shim processes of this containerd.
    pub fn shims(&self) -> Vec<i32> {
        let needle = self.tmp.path().join("c.sock").display().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("containerd-shim") && c.contains(&needle)
                })
            })
            .collect()
    }

    /// Nothing of any pod is left: no sandbox or container the CRI knows,
    /// no shim, no process rooted in the test's directories, no cgroup
    /// below the pods' parent, no amphi state.
    #[track_caller]
    pub fn assert_clean(&self) {
        let pods = self
            .block_on(
                self.runtime()
                    .list_pod_sandbox(ListPodSandboxRequest { filter: None }),
            )
            .unwrap()
            .into_inner()
            .items;
        assert!(pods.is_empty(), "pods left: {pods:?}");
        // A shim leaves once containerd told it to shut down; in the VM
        // lane (QEMU without KVM) next to the wasm corpus's compile that
        // took more than 20 s once.
        if !wait_for(60, || self.shims().is_empty()) {
            // Which shim, and what containerd said about its tasks.
            let left: Vec<String> = self
                .shims()
                .iter()
                .map(|pid| {
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    String::from_utf8_lossy(&cmdline).replace('\0', " ")
                })
                .collect();
            // Where each thread of a left shim waits.
            let threads: Vec<String> = self
                .shims()
                .iter()
                .flat_map(|pid| {
                    std::fs::read_dir(format!("/proc/{pid}/task"))
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(move |t| {
                            let read = |f: &str| {
                                std::fs::read_to_string(t.path().join(f)).unwrap_or_default()
                            };
                            let stack = read("stack");
                            format!(
                                "{pid}/{} {} in {}: {}",
                                t.file_name().to_string_lossy(),
                                read("comm").trim(),
                                read("wchan"),
                                stack.lines().take(4).collect::<Vec<_>>().join(" < ")
                            )
                        })
                })
                .collect();
            let log =
                std::fs::read_to_string(self.tmp.path().join("containerd.err")).unwrap_or_default();
            let said: Vec<&str> = log
                .lines()
                .filter(|l| {
                    left.iter()
                        .any(|s| s.split(' ').any(|w| w.len() == 64 && l.contains(w)))
                })
                .collect();
            panic!(
                "shims left: {left:?}\ntheir threads:\n{}\ncontainerd on them:\n{}",
                threads.join("\n"),
                said.join("\n")
            );
        }
        assert!(
            wait_for(10, || crate::processes_rooted_in(self.tmp.path())
                .is_empty()),
            "processes left"
        );
        let below: Vec<PathBuf> = crate::cgroup_mounts()
            .into_iter()
            .map(|m| m.join(self.cgroup_parent.trim_start_matches('/')))
            .filter(|d| {
                std::fs::read_dir(d)
                    .is_ok_and(|e| e.flatten().any(|e| e.file_type().is_ok_and(|t| t.is_dir())))
            })
            .collect();
        if !below.is_empty() {
            // What is left, with its processes, and what containerd said of
            // the clean-up (a dead shim's `delete` reports there).
            let mut left = Vec::new();
            for dir in &below {
                for e in crate::cgroup_subdirs(dir) {
                    let procs = std::fs::read_to_string(e.join("cgroup.procs")).unwrap_or_default();
                    left.push(format!(
                        "{} procs [{}]",
                        e.display(),
                        procs.split_whitespace().collect::<Vec<_>>().join(" ")
                    ));
                }
            }
            let log =
                std::fs::read_to_string(self.tmp.path().join("containerd.err")).unwrap_or_default();
            let said: Vec<&str> = log
                .lines()
                .filter(|l| {
                    ["level=error", "level=warn", "cleanup", "dead shim"]
                        .iter()
                        .any(|w| l.contains(w))
                })
                .collect();
            panic!(
                "pod cgroups left below {below:?}:\n{}\ncontainerd's errors and clean-ups:\n{}",
                left.join("\n"),
                said.join("\n")
            );
        }
        let state = self.tmp.path().join("amphi-root");
        let left: Vec<_> = std::fs::read_dir(&state)
            .map(|e| {
                e.flatten()
                    .filter(|e| e.file_name() != "wasm-cache")
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            left.iter()
                .all(|ns| std::fs::read_dir(ns).is_ok_and(|mut e| e.next().is_none())),
            "amphi state left: {left:?}"
        );
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        if let Ok(pods) = self.block_on(
            self.runtime()
                .list_pod_sandbox(ListPodSandboxRequest { filter: None }),
        ) {
            for p in pods.into_inner().items {
                let _ = self.block_on(self.runtime().stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: p.id.clone(),
                }));
                let _ = self.block_on(self.runtime().remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: p.id,
                }));
            }
        }
        match &mut self.daemon {
            Daemon::Child(daemon) => {
                // SAFETY: signalling the daemon we started (its sh exec'd it).
                unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
                wait_for(20, || matches!(daemon.try_wait(), Ok(Some(_))));
                let _ = daemon.kill();
                let _ = daemon.wait();
            }
            Daemon::Unit(unit) => {
                let _ = Command::new("systemctl")
                    .args(["stop", unit.as_str()])
                    .status();
            }
        }
        kill_processes_mentioning(self.tmp.path());
        crate::reap_inits();
        remove_cgroup_tree(&self.cgroup_parent);
    }
}

pub fn to_map(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A container config as kubelet sends it, with the RuntimeDefault seccomp
/// profile and a log path in the pod's log directory.
pub fn container(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                seccomp: Some(SecurityProfile {
                    profile_type: security_profile::ProfileType::RuntimeDefault as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
