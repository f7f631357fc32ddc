//! The seam between the envelope and what runs inside it.
//!
//! A [`Handler`] answers "can I run this bundle?" and builds the
//! [`Executor`] that does; each frontend hands the runtime the handlers it
//! wants, in order, and the first that says yes runs the container (its
//! name is recorded in the state). The core itself knows no executor.
//!
//! An executor works in two phases, both inside the container's init.

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Process, Spec};

use crate::state::ContainerState;
use crate::Result;

/// A handler's answer to "can you run this?"; a "no" says why, so that a
/// bundle no handler takes gets an error naming every reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Yes,
    No(String),
}

/// Chooses and builds one kind of workload.
pub trait Handler {
    /// The name `state` reports for containers this handler runs.
    fn name(&self) -> &'static str;

    /// Whether this handler runs `spec`, whose root filesystem is `rootfs`
    /// (a host path; read it only through [`crate::paths::open_in_root`]).
    /// Called once per create or exec, before anything exists.
    fn can_handle(&self, spec: &Spec, rootfs: &Path) -> Verdict;

    /// The executor of container `id`'s process (its init at create, or a
    /// process `exec` adds), built in the runtime while host paths are
    /// still reachable.
    fn executor(&self, id: &str, spec: &Spec) -> Result<Box<dyn Executor>>;

    /// Writes container `state`'s checkpoint image (`amphi checkpoint`);
    /// `state_dir` is its state directory. Returns once the image is
    /// complete; without `leave_running` the container's processes are
    /// then gone or going (the runtime removes the container).
    fn checkpoint(
        &self,
        _state: &ContainerState,
        _state_dir: &Path,
        _o: &CheckpointOptions,
    ) -> Result<()> {
        Err(crate::Error::Unsupported(format!(
            "the {} executor cannot checkpoint containers",
            self.name()
        )))
    }

    /// Whether `amphi restore` of this handler's containers is CRIU's
    /// (the runtime runs `criu restore` in place of an init).
    fn restores_through_criu(&self) -> bool {
        false
    }

    /// The executor of container `id`'s init continuing from the
    /// checkpoint image in `image` (`amphi restore`), which it reads and
    /// checks here, before anything exists.
    fn restoring_executor(
        &self,
        _id: &str,
        _spec: &Spec,
        image: &Path,
    ) -> Result<Box<dyn Executor>> {
        Err(crate::Error::Unsupported(format!(
            "--image-path {}: the {} executor cannot restore from an image",
            image.display(),
            self.name()
        )))
    }
}

/// `amphi checkpoint`'s options, runc's names.
#[derive(Debug, Default, Clone)]
pub struct CheckpointOptions {
    pub image_path: PathBuf,
    pub work_path: Option<PathBuf>,
    pub parent_path: Option<PathBuf>,
    pub leave_running: bool,
    pub pre_dump: bool,
    pub tcp_established: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    /// `--manage-cgroups-mode`: soft, full, strict or ignore.
    pub manage_cgroups_mode: Option<String>,
}

/// What an executor may look at while preparing.
pub struct PrepareContext<'a> {
    pub spec: &'a Spec,
    pub process: &'a Process,
    /// The rootfs as a host path (still reachable: this is before pivot_root).
    pub rootfs: &'a Path,
    /// The rootfs, opened; resolve paths with [`crate::paths::open_in_root`]
    /// so symlinks cannot lead outside it.
    pub root_fd: BorrowedFd<'a>,
    /// The container's state directory (O_PATH), for a container's init;
    /// none for a process `exec` adds.
    pub state_dir: Option<BorrowedFd<'a>>,
}

impl PrepareContext<'_> {
    /// `process.args[0]`, which validation guarantees is there.
    pub fn program(&self) -> &str {
        program(self.process)
    }
}

/// `process.args[0]`, or "" (which no lookup finds) if there is none.
pub fn program(process: &Process) -> &str {
    process
        .args()
        .as_ref()
        .and_then(|a| a.first())
        .map_or("", String::as_str)
}

pub trait Executor {
    /// Fds the executor opened in the runtime and needs in the init; every
    /// other fd beyond the preserved ones is closed there first thing.
    fn inherited_fds(&self) -> Vec<std::os::fd::RawFd> {
        Vec::new()
    }

    /// Whether the handlers of SIGSEGV, SIGBUS, SIGILL and SIGFPE in the
    /// process that clones the init are the executor's and must stay: a
    /// wasm module loaded there before the clone came with wasmtime's trap
    /// handlers, which the init would otherwise reset to the default,
    /// turning a guest's trap into the end of the process.
    fn keeps_trap_handlers(&self) -> bool {
        false
    }

    /// Runs after namespaces, cgroup and mounts are set up and before
    /// pivot_root. Errors here fail `create`.
    fn prepare(&mut self, ctx: &PrepareContext) -> Result<()>;

    /// Runs after `start` released the container, with credentials,
    /// capabilities and no_new_privs applied. Never returns on success.
    fn exec(self: Box<Self>, process: &Process) -> crate::Error;
}

/// The first handler that takes `spec`, or an error with every "no".
pub fn choose<'h>(
    handlers: &'h [Box<dyn Handler>],
    spec: &Spec,
    rootfs: &Path,
) -> Result<&'h dyn Handler> {
    let mut reasons = Vec::new();
    for h in handlers {
        match h.can_handle(spec, rootfs) {
            Verdict::Yes => return Ok(h.as_ref()),
            Verdict::No(why) => reasons.push(format!("{}: {why}", h.name())),
        }
    }
    Err(crate::Error::Unsupported(if reasons.is_empty() {
        "no executor is configured to run containers".into()
    } else {
        format!("no executor runs this bundle ({})", reasons.join("; "))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(&'static str, bool);

    impl Handler for Fixed {
        fn name(&self) -> &'static str {
            self.0
        }
        fn can_handle(&self, _: &Spec, _: &Path) -> Verdict {
            if self.1 {
                Verdict::Yes
            } else {
                Verdict::No("not mine".into())
            }
        }
        fn executor(&self, _: &str, _: &Spec) -> Result<Box<dyn Executor>> {
            unreachable!()
        }
    }

    #[test]
    fn the_first_yes_wins_and_every_no_is_named() {
        let spec = Spec::default();
        let hs: Vec<Box<dyn Handler>> = vec![
            Box::new(Fixed("a", false)),
            Box::new(Fixed("b", true)),
            Box::new(Fixed("c", true)),
        ];
        assert_eq!(choose(&hs, &spec, Path::new("/")).unwrap().name(), "b");
        let e = choose(&hs[..1], &spec, Path::new("/"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("a: not mine"), "{e}");
    }
}
