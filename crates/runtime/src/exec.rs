//! A new process in a running container (`exec`).

use std::path::PathBuf;

use amphi_core::init::Mode;
use amphi_core::launch::{launch, Cgroup, LaunchConfig};
use amphi_core::spec::Bundle;
use amphi_core::state::Status;
use amphi_core::{paths, Error, Result};
use nix::sys::signal::SigSet;
use nix::unistd::Pid;
use oci_spec::runtime::{Capability, LinuxNamespaceBuilder, LinuxNamespaceType, Process};

use crate::create::{wait_forwarding, waited_signals, with_blocked, Chosen};
use crate::{wrong_state, ExecOptions, ExecOverrides, Runtime};

impl Runtime {
    /// The process `exec ID ARGS...` runs: the container's own process with
    /// the given overrides (as runc builds it).
    pub fn exec_process(&self, id: &str, o: ExecOverrides) -> Result<Process> {
        let (_locked, state, _status) = self.load(id)?;
        let Some(mut p) = state.spec()?.process().clone() else {
            return Err(Error::State {
                id: id.into(),
                path: PathBuf::from(amphi_core::state::STATE_FILE),
                why: "the recorded spec has no process".into(),
            });
        };
        if o.args.is_empty() {
            return Err(Error::Unsupported(format!(
                "exec {id}: give the command to run, or --process FILE"
            )));
        }
        p.set_args(Some(o.args));
        let mut env = p.env().clone().unwrap_or_default();
        for kv in o.env {
            let key = kv.split('=').next().unwrap_or("").to_owned();
            env.retain(|e| e.split('=').next() != Some(key.as_str()));
            env.push(kv);
        }
        p.set_env(Some(env));
        if let Some(cwd) = o.cwd {
            p.set_cwd(cwd);
        }
        if let Some((uid, gid)) = o.user {
            let mut u = p.user().clone();
            u.set_uid(uid);
            u.set_gid(gid.unwrap_or(0));
            u.set_additional_gids(None);
            p.set_user(u);
        }
        if !o.caps.is_empty() {
            let mut caps = p.capabilities().clone().unwrap_or_default();
            let parsed: Vec<Capability> = o
                .caps
                .iter()
                .map(|c| {
                    serde_json::from_value(serde_json::Value::String(c.clone())).map_err(|_| {
                        Error::Unsupported(format!("exec --cap {c:?}: unknown capability"))
                    })
                })
                .collect::<Result<_>>()?;
            let add = |set: &Option<oci_spec::runtime::Capabilities>| {
                let mut set = set.clone().unwrap_or_default();
                set.extend(parsed.iter().copied());
                Some(set)
            };
            let (b, e, pm) = (
                add(caps.bounding()),
                add(caps.effective()),
                add(caps.permitted()),
            );
            caps.set_bounding(b).set_effective(e).set_permitted(pm);
            p.set_capabilities(Some(caps));
        }
        if o.no_new_privs {
            p.set_no_new_privileges(Some(true));
        }
        p.set_terminal(Some(o.tty));
        Ok(p)
    }

    /// Run another process in a running container: in all its namespaces
    /// and its cgroup, with its own user, capabilities and rlimits. Native,
    /// or wasm when the program is a module, whatever the container runs.
    /// Returns the process's exit status (0 at once with `detach`).
    pub fn exec(&self, o: ExecOptions) -> Result<i32> {
        let (locked, state, status) = self.load(o.id)?;
        if status != Status::Running {
            return Err(wrong_state(o.id, status, "exec needs a running container"));
        }
        match o.process.args() {
            Some(a) if !a.is_empty() && !a[0].is_empty() => {}
            _ => {
                return Err(Error::Unsupported(format!(
                    "exec {}: process.args is empty",
                    o.id
                )))
            }
        }
        if !o.process.cwd().is_absolute() {
            return Err(Error::Unsupported(format!(
                "exec {}: process.cwd must be absolute",
                o.id
            )));
        }
        let mut spec = state.spec()?;
        let mut linux = spec.linux().clone().unwrap_or_default();
        let joined: Vec<_> = linux
            .namespaces()
            .iter()
            .flatten()
            .map(|ns| {
                let name = match ns.typ() {
                    LinuxNamespaceType::Mount => "mnt",
                    LinuxNamespaceType::Cgroup => "cgroup",
                    LinuxNamespaceType::Uts => "uts",
                    LinuxNamespaceType::Ipc => "ipc",
                    LinuxNamespaceType::User => "user",
                    LinuxNamespaceType::Pid => "pid",
                    LinuxNamespaceType::Network => "net",
                    LinuxNamespaceType::Time => "time",
                };
                LinuxNamespaceBuilder::default()
                    .typ(ns.typ())
                    .path(format!("/proc/{}/ns/{name}", state.pid))
                    .build()
                    .expect("namespace")
            })
            .collect();
        linux.set_namespaces(Some(joined));
        spec.set_linux(Some(linux));
        spec.set_hooks(None);
        // The executor follows the program, not the container's annotations:
        // a shell execs natively into a wasm container.
        spec.set_annotations(None);
        spec.set_process(Some(o.process));
        let Chosen {
            executor,
            console_socket,
            ..
        } = self.executor_and_console(o.id, &spec, &state.rootfs, o.console_socket, None)?;
        let bundle = Bundle::new(state.bundle.clone(), state.rootfs.clone(), spec)?;
        let blocked = if o.detach {
            SigSet::empty()
        } else {
            waited_signals()
        };
        with_blocked(&blocked, || {
            let pid = launch(
                &LaunchConfig {
                    id: o.id,
                    bundle: &bundle,
                    state_dir: &locked.dir,
                    cgroup: Cgroup::Existing(&state.cgroup_paths),
                    mode: Mode::Exec,
                    preserve_fds: o.preserve_fds,
                    console_socket: console_socket.as_ref(),
                    new_keyring: !state.no_new_keyring,
                    // The container's create warned about its profile.
                    warn: &|_| {},
                    network: None,
                },
                executor,
                &mut |_| Ok(()),
                &mut |_| Ok(()),
            )?;
            if let Some(f) = o.pid_file {
                paths::write_file(f, pid.to_string().as_bytes())?;
            }
            // Other commands on the container must not wait for this process.
            drop(locked);
            if o.detach {
                return Ok(0);
            }
            wait_forwarding(Pid::from_raw(pid), &blocked)
        })
    }
}
