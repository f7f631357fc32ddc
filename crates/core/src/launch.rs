//! The parent side of `create`: start the container's init process in its
//! namespaces, map its ids, put it in its cgroup, run the runtime-namespace
//! hooks when it asks, and return once it waits on the exec fifo.
//!
//! No helper binary is executed: the init is a clone of this process, so a
//! container costs one clone (two when namespaces are joined by path) and a
//! handful of messages.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{open, OFlag};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode as FileMode;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType};

use crate::cgroups::ContainerCgroup;
use crate::clone::{clone, clone_into_cgroup, CgroupTasks};
use crate::error::SysContext;
use crate::executor::Executor;
use crate::init::{self, InitArgs, Mode};
use crate::namespaces::Plan;
use crate::spec::Bundle;
use crate::sync::{Channel, Msg};
use crate::{Error, Result};

/// The cgroup the init goes into: made by `create`, or a running container's.
pub enum Cgroup<'a> {
    New(&'a ContainerCgroup),
    Existing(&'a [std::path::PathBuf]),
    /// Rootless without a delegated cgroup.
    None,
}

impl Cgroup<'_> {
    fn paths(&self) -> &[std::path::PathBuf] {
        match self {
            Cgroup::New(c) => &c.paths,
            Cgroup::Existing(p) => p,
            Cgroup::None => &[],
        }
    }

    /// On v1 (cgroupfs driver), each hierarchy's `tasks` file, opened here
    /// for the child to write "0" into first thing. A single thread moving
    /// itself skips the threadgroup lock whose writer waits for an RCU
    /// grace period (the kernel's `cgroup_procs_write_start`): moving the
    /// init from here costs milliseconds per hierarchy, this microseconds.
    /// The write is checked against the opener's credentials, so it works
    /// in the child's new user namespace too.
    fn v1_tasks(&self) -> Result<Vec<CgroupTasks>> {
        // A container's directories are all v1 or all v2: one statfs tells.
        if matches!(self, Cgroup::New(c) if c.systemd.is_some() || c.v2())
            || self
                .paths()
                .first()
                .is_some_and(|p| crate::cgroups::is_v2_dir(p))
        {
            return Ok(Vec::new());
        }
        self.paths()
            .iter()
            .map(|dir| {
                let path = dir.join("tasks");
                let fd = open(&path, OFlag::O_WRONLY | OFlag::O_CLOEXEC, FileMode::empty())
                    .sys(|| format!("open {}", path.display()))?;
                Ok(CgroupTasks { fd, path })
            })
            .collect()
    }

    fn attach(&self, pid: i32) -> Result<()> {
        match self {
            Cgroup::New(c) => c.attach(pid),
            Cgroup::Existing(p) => crate::cgroups::join(p, pid),
            Cgroup::None => Ok(()),
        }
    }

    /// On a pure cgroup v2 host, the container's one directory, opened for
    /// clone3's CLONE_INTO_CGROUP: the init is born in it, so it never
    /// migrates (a migration waits for an RCU grace period) and nothing it
    /// does is charged elsewhere first.
    fn v2_dir(&self) -> Option<OwnedFd> {
        let [dir] = self.paths() else { return None };
        if !crate::cgroups::is_v2_dir(dir) {
            return None;
        }
        open(
            dir.as_path(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            FileMode::empty(),
        )
        .ok()
    }
}

pub struct LaunchConfig<'a> {
    pub id: &'a str,
    pub bundle: &'a Bundle,
    pub state_dir: &'a Path,
    pub cgroup: Cgroup<'a>,
    /// A new container, or (`exec`) a process joining a running one whose
    /// namespaces the spec gives as paths: no rootfs work, no exec fifo.
    pub mode: Mode,
    pub preserve_fds: i32,
    /// Connected `--console-socket`, when `process.terminal` is set.
    pub console_socket: Option<&'a OwnedFd>,
    /// A fresh session keyring for the process (runc's default).
    pub new_keyring: bool,
    /// Where the seccomp profile's warnings go (syscalls it skips).
    pub warn: &'a dyn Fn(&str),
    /// The container's new network namespace, made ahead
    /// ([`crate::namespaces::NetworkAhead`]), for the init to join.
    pub network: Option<&'a OwnedFd>,
}

/// Start the init; returns its host pid once it is `created`.
/// `runtime_hooks` runs the prestart and createRuntime hooks given the pid;
/// `meanwhile`, given the pid too, runs while the init sets itself up.
pub fn launch(
    cfg: &LaunchConfig,
    executor: Box<dyn Executor>,
    runtime_hooks: &mut dyn FnMut(i32) -> Result<()>,
    meanwhile: &mut dyn FnMut(i32) -> Result<()>,
) -> Result<i32> {
    let spec = &cfg.bundle.spec;
    let linux = spec.linux().as_ref();
    let mut plan = Plan::from_spec(
        linux
            .and_then(|l| l.namespaces().as_deref())
            .unwrap_or_default(),
    )?;
    if let Some(network) = cfg.network {
        plan.join_network_made_ahead(network)?;
    }
    let intermediate = plan.needs_intermediate();
    let (parent_ch, child_ch) = Channel::pair()?;
    let state_dir: OwnedFd = open(
        cfg.state_dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        FileMode::empty(),
    )
    .sys(|| format!("open {}", cfg.state_dir.display()))?;
    let clone_flags = if intermediate {
        CloneFlags::empty()
    } else {
        plan.clone_flags()
    };

    let cgroup_tasks = cfg.cgroup.v1_tasks()?;
    crate::util::trace::phase("clone");
    let into_cgroup = cfg.cgroup.v2_dir();
    let (first, needs_attach) = match into_cgroup
        .as_ref()
        .map(|fd| clone_into_cgroup(clone_flags, fd))
    {
        Some(Ok(Some(pid))) => (pid, false),
        Some(Err(e)) => return Err(e),
        None | Some(Ok(None)) => (clone(clone_flags)?, cgroup_tasks.is_empty()),
    };
    drop(into_cgroup);
    if first == 0 {
        drop(parent_ch);
        init::run(
            child_ch,
            InitArgs {
                id: cfg.id,
                bundle: cfg.bundle,
                plan: &plan,
                mode: cfg.mode,
                state_dir,
                cgroup_paths: cfg.cgroup.paths(),
                cgroup_tasks,
                preserve_fds: cfg.preserve_fds,
                console_socket: cfg.console_socket.map(AsRawFd::as_raw_fd),
                new_keyring: cfg.new_keyring,
                executor,
            },
        );
    }
    drop(child_ch);
    drop(state_dir);
    drop(cgroup_tasks);
    let stage = match cfg.mode {
        Mode::Exec => "exec",
        Mode::Create { .. } => "create",
    };
    crate::util::failpoint(&format!("{stage}:clone"));

    let mut init_pid = first;
    let result = (|| -> Result<i32> {
        if intermediate {
            loop {
                match parent_ch.recv()? {
                    Some(Msg::MapIds) => {
                        write_id_maps(first, linux)?;
                        send(&parent_ch, &Msg::MapsDone)?;
                    }
                    Some(Msg::InitPid(p)) => {
                        init_pid = p;
                        break;
                    }
                    Some(Msg::Failed(e)) => return Err(Error::Init(e)),
                    other => return Err(unexpected(other)),
                }
            }
            let _ = waitpid(Pid::from_raw(first), None);
        } else if plan.creates(LinuxNamespaceType::User) {
            write_id_maps(first, linux)?;
        }
        // A migration by another process waits for an RCU grace period
        // (milliseconds): the init mounts its rootfs meanwhile and waits
        // for `Joined` only before anything that must be charged to, or
        // scoped by, its cgroup. A systemd unit's cgroup does not exist
        // until systemd has started the unit, and the rootfs's `cgroup`
        // mount (which runc spec, containerd, podman and Docker all
        // write) binds it: there the init is moved first.
        let unit_made_by_systemd = matches!(cfg.cgroup, Cgroup::New(c) if c.systemd.is_some());
        if !unit_made_by_systemd {
            send(&parent_ch, &Msg::Go)?;
        }
        // Born there, moved there by itself (and its intermediate's
        // children with it), or moved now.
        if needs_attach {
            crate::util::trace::phase("cgroup attach");
            cfg.cgroup.attach(init_pid)?;
            crate::util::trace::phase("cgroup attached");
        }
        if unit_made_by_systemd {
            send(&parent_ch, &Msg::Go)?;
        }
        crate::util::failpoint(&format!("{stage}:attached"));
        // What the init needs only once its rootfs is mounted is made while
        // it mounts, on the other core: the cgroup's limits (its device
        // rules went in with its directories) and the seccomp program.
        // Neither is in force before `Joined`, and no workload runs before it.
        if let Cgroup::New(c) = &cfg.cgroup {
            c.limit()?;
        }
        let mut warnings = Vec::new();
        let seccomp = cfg.bundle.compile_seccomp(&mut warnings)?;
        warnings.iter().for_each(|w| (cfg.warn)(w));
        crate::util::trace::phase("limits set, seccomp compiled");
        send(&parent_ch, &Msg::Joined(seccomp))?;
        meanwhile(init_pid)?;
        loop {
            match parent_ch.recv()? {
                Some(Msg::RunHooks) => {
                    runtime_hooks(init_pid)?;
                    send(&parent_ch, &Msg::HooksDone)?;
                }
                Some(Msg::Ready) => {
                    crate::util::trace::phase("init ready");
                    return Ok(init_pid);
                }
                Some(Msg::Failed(e)) => return Err(Error::Init(e)),
                other => return Err(unexpected(other)),
            }
        }
    })();
    if result.is_err() {
        for pid in [init_pid, first] {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid), None);
        }
    }
    result
}

/// Send to the init; if it is gone, its last word (why it failed) is the error.
fn send(ch: &Channel, msg: &Msg) -> Result<()> {
    ch.send(msg).map_err(|e| match ch.recv() {
        Ok(Some(Msg::Failed(why))) => Error::Init(why),
        _ => e,
    })
}

fn unexpected(m: Option<Msg>) -> Error {
    match m {
        None => Error::Init("container init exited during set-up".into()),
        Some(m) => Error::Init(format!("container init sent {m:?} out of turn")),
    }
}

fn write_id_maps(pid: i32, linux: Option<&oci_spec::runtime::Linux>) -> Result<()> {
    // Unprivileged, the kernel takes a gid map only once setgroups(2) is
    // denied in the new namespace (else a user could drop groups that
    // deny it access).
    if !nix::unistd::geteuid().is_root() {
        let path = format!("/proc/{pid}/setgroups");
        std::fs::write(&path, "deny").map_err(|e| Error::io("write", &path, e))?;
    }
    let fmt = |m: Option<&Vec<LinuxIdMapping>>| -> String {
        m.into_iter()
            .flatten()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect()
    };
    for (file, maps) in [
        (
            "uid_map",
            fmt(linux.and_then(|l| l.uid_mappings().as_ref())),
        ),
        (
            "gid_map",
            fmt(linux.and_then(|l| l.gid_mappings().as_ref())),
        ),
    ] {
        if maps.is_empty() {
            continue;
        }
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, maps).map_err(|e| {
            Error::Init(format!(
                "linux.{}: write {path}: {e}",
                if file == "uid_map" {
                    "uidMappings"
                } else {
                    "gidMappings"
                }
            ))
        })?;
    }
    Ok(())
}
