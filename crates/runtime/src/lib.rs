//! amphi's runtime API: the container lifecycle (create, start, state, kill,
//! delete, run, list) that every frontend drives. Frontends translate their
//! protocol to these calls and hold no container logic of their own; each
//! passes the executor handlers it wants, in order, and the first that
//! takes a bundle runs it.

use std::path::{Path, PathBuf};

use amphi_core::cgroups;
use amphi_core::executor::{self, Handler};
use amphi_core::state::{ContainerState, Locked, Status, Store};
use amphi_core::{Error, Result};
use oci_spec::runtime::Process;

mod checkpoint;
mod create;
mod delete;
mod exec;
mod resources;

pub use amphi_core::state::Status as ContainerStatus;

pub struct CreateOptions<'a> {
    pub id: &'a str,
    pub bundle: &'a Path,
    pub pid_file: Option<&'a Path>,
    pub console_socket: Option<&'a Path>,
    pub no_pivot: bool,
    pub preserve_fds: i32,
    /// Keep the caller's session keyring instead of a fresh one (runc's
    /// `--no-new-keyring`).
    pub no_new_keyring: bool,
    /// Continue from the checkpoint image these options name (`amphi
    /// restore`).
    pub restore: Option<&'a executor::CheckpointOptions>,
}

pub struct ExecOptions<'a> {
    pub id: &'a str,
    pub process: Process,
    pub detach: bool,
    pub pid_file: Option<&'a Path>,
    pub console_socket: Option<&'a Path>,
    pub preserve_fds: i32,
}

/// What `exec ID ARGS...` may change of the container's own process.
#[derive(Default)]
pub struct ExecOverrides {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// uid and optional gid.
    pub user: Option<(u32, Option<u32>)>,
    pub caps: Vec<String>,
    pub no_new_privs: bool,
    pub tty: bool,
}

pub struct Runtime {
    store: Store,
    handlers: Vec<Box<dyn Handler>>,
    cgroups: cgroups::Driver,
    warn: Box<dyn Fn(&str)>,
}

impl Runtime {
    /// A runtime keeping state in `root`, running containers with the
    /// first of `handlers` that takes them.
    pub fn new(root: &Path, handlers: Vec<Box<dyn Handler>>) -> Result<Runtime> {
        Ok(Runtime {
            store: Store::open(root)?,
            handlers,
            cgroups: cgroups::Driver::Cgroupfs,
            warn: Box::new(|m| eprintln!("amphi: warning: {m}")),
        })
    }

    /// Who makes the containers' cgroups (`--systemd-cgroup`: systemd).
    pub fn cgroup_driver(mut self, driver: cgroups::Driver) -> Runtime {
        self.cgroups = driver;
        self
    }

    /// Where warnings go (what the spec asks for and this host cannot do,
    /// where the spec allows going on): stderr unless set.
    pub fn on_warning(mut self, f: impl Fn(&str) + 'static) -> Runtime {
        self.warn = Box::new(f);
        self
    }

    fn load(&self, id: &str) -> Result<(Locked, ContainerState, Status)> {
        let locked = self.store.lock(id)?;
        let state = locked.load()?;
        let status = state.status(&locked.dir);
        Ok((locked, state, status))
    }

    /// The runtime-spec state document of a container.
    pub fn state(&self, id: &str) -> Result<serde_json::Value> {
        let (_locked, state, status) = self.load(id)?;
        Ok(state.oci_state(status))
    }

    /// Every container with its current status. Reads without locking (state
    /// files are replaced atomically), so a long command elsewhere never
    /// stalls `list`; a container still being created is left out.
    pub fn list(&self) -> Result<Vec<(ContainerState, Status)>> {
        let mut out = Vec::new();
        for id in self.store.list()? {
            let dir = self.store.root().join(&id);
            let Ok(data) = std::fs::read(dir.join(amphi_core::state::STATE_FILE)) else {
                continue;
            };
            let Ok(state) = serde_json::from_slice::<ContainerState>(&data) else {
                continue;
            };
            let status = state.status(&dir);
            out.push((state, status));
        }
        Ok(out)
    }
}

pub(crate) fn wrong_state(id: &str, status: Status, why: &str) -> Error {
    Error::WrongState {
        id: id.into(),
        status: status.to_string(),
        why: why.into(),
    }
}
