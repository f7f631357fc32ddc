//! Ending a container: `kill` and `delete`.

use std::time::{Duration, Instant};

use amphi_core::cgroups;
use amphi_core::hooks;
use amphi_core::state::{ContainerState, Status};
use amphi_core::{util, Error, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{wrong_state, Runtime};

impl Runtime {
    /// Send `signal` (None: only check that the process exists, like kill -0).
    pub fn kill(&self, id: &str, signal: Option<Signal>, all: bool) -> Result<()> {
        let (_locked, state, status) = self.load(id)?;
        // A stopped container may still have processes with --all: those
        // its init left in a pid namespace it did not own (runc allows it;
        // the containerd shim relies on it).
        if status == Status::Creating || (status == Status::Stopped && !all) {
            return Err(wrong_state(id, status, "no process to signal"));
        }
        if all {
            for pid in cgroups::procs(&state.cgroup_paths) {
                let _ = kill(Pid::from_raw(pid), signal);
            }
            return Ok(());
        }
        kill(Pid::from_raw(state.pid), signal).map_err(|e| {
            let name = signal.map_or("0", Signal::as_str);
            Error::sys(format!("kill {name} of container {id}"), e)
        })
    }

    /// Remove a container. With `force`, a running one is killed first and
    /// one that does not exist is no error (as with runc).
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let locked = match self.store.lock(id) {
            Err(Error::NotFound(_)) if force => return Ok(()),
            r => r?,
        };
        let state = match locked.load() {
            Ok(s) => s,
            // A directory without a readable record (a create killed before
            // its first save, or a corrupt file): with --force, remove it.
            Err(Error::State { .. } | Error::NotFound(_)) if force => return locked.remove(),
            Err(e) => return Err(e),
        };
        // Read before anything is removed: a record that cannot give them
        // fails delete with the container whole.
        let recorded_hooks = state.hooks()?;
        let status = state.status(&locked.dir);
        match status {
            Status::Stopped => {}
            // As runc: a container that never started is removed on delete
            // (containerd relies on it).
            Status::Created | Status::Creating => kill_all(&state),
            Status::Running | Status::Paused if force => kill_all(&state),
            _ => {
                return Err(wrong_state(
                    id,
                    status,
                    "stop it first, or use delete --force",
                ))
            }
        }
        util::failpoint("delete:killed");
        util::trace::phase("delete: state loaded");
        wait_gone(&state);
        util::trace::phase("delete: processes gone");
        let mut errors = Vec::new();
        if let Some(unit) = &state.systemd_unit {
            errors.extend(cgroups::systemd::stop(unit).err());
        }
        let cgroup_errors = cgroups::remove(&state.cgroup_created, &state.cgroup_paths);
        if let Some(e) = cgroup_errors.into_iter().next() {
            // Keep the record: a cgroup left without one could never be
            // found again. Busy is usually a dead process its parent has
            // not reaped yet; the next delete finishes the job.
            return Err(Error::Init(format!(
                "container {id}: {e}; the container is kept, run delete again \
                 once its processes are reaped"
            )));
        }
        util::failpoint("delete:cgroup");
        util::trace::phase("delete: cgroup removed");
        let json = serde_json::to_vec(&state.oci_state(Status::Stopped)).expect("json");
        let poststop = recorded_hooks.as_ref().and_then(|h| h.poststop().as_ref());
        // runtime.md, Lifecycle: a failed poststop hook is a warning, and
        // "the remaining hooks and lifecycle continue".
        for e in hooks::run_every(poststop, "poststop", &json) {
            (self.warn)(&format!("container {id}: {e}"));
        }
        locked.remove()?;
        match errors.pop() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// SIGKILL the init and everything in the container's cgroup (a container
/// without a pid namespace does not die with its init).
pub(crate) fn kill_all(state: &ContainerState) {
    if state.init_alive() {
        let _ = kill(Pid::from_raw(state.pid), Signal::SIGKILL);
    }
    // A frozen cgroup's processes die only once thawed.
    if cgroups::is_frozen(&state.cgroup_paths) {
        let _ = cgroups::set_frozen(&state.cgroup_paths, false);
    }
    for pid in cgroups::procs(&state.cgroup_paths) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Wait (bounded) until the init is dead and the cgroup is empty.
pub(crate) fn wait_gone(state: &ContainerState) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pause = Duration::from_micros(100);
    while Instant::now() < deadline
        && (state.init_alive() || !cgroups::procs(&state.cgroup_paths).is_empty())
    {
        for pid in cgroups::procs(&state.cgroup_paths) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}
