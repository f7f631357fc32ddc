//! Checkpoint and restore: the executor's own image, or CRIU's for a
//! native container.

use amphi_core::cgroups;
use amphi_core::executor::{self, Handler};
use amphi_core::spec::Bundle;
use amphi_core::state::{ContainerState, Locked, Status};
use amphi_core::{Error, Result};

use crate::create::{new_state, record_init, CreateGuard};
use crate::delete::wait_gone;
use crate::{wrong_state, CreateOptions, Runtime};

impl Runtime {
    /// Writes a running container's checkpoint image through its
    /// executor; without `leave_running` the container is then removed,
    /// as runc does.
    pub fn checkpoint(&self, id: &str, o: &executor::CheckpointOptions) -> Result<()> {
        let (locked, state, status) = self.load(id)?;
        if status != Status::Running {
            return Err(wrong_state(
                id,
                status,
                "only a running container can be checkpointed",
            ));
        }
        let handler = self
            .handlers
            .iter()
            .find(|h| h.name() == state.executor)
            .ok_or_else(|| {
                Error::Unsupported(format!(
                    "container {id} runs on the {} executor, which this frontend lacks",
                    state.executor
                ))
            })?;
        handler.checkpoint(&state, &locked.dir, o)?;
        drop(locked);
        if !o.leave_running && !o.pre_dump {
            wait_gone(&state);
            self.delete(id, true)?;
        }
        Ok(())
    }

    /// create's counterpart for an image CRIU restores: the state
    /// directory and cgroup as for create, then `criu restore` in place
    /// of an init; the container runs at once (no `start`). Returns as
    /// create does: still locked, with the record written.
    pub(crate) fn restore_through_criu(
        &self,
        o: &CreateOptions,
        bundle: &Bundle,
        handler: &dyn Handler,
        image: &executor::CheckpointOptions,
    ) -> Result<(Locked, ContainerState)> {
        let spec = &bundle.spec;
        let locked = self.store.create(o.id)?;
        let mut guard = CreateGuard::new(locked);
        let locked = guard.locked.as_ref().expect("set above");
        let planned = cgroups::plan(o.id, spec.linux().as_ref(), self.cgroups)?;
        if planned.systemd.is_some() {
            return Err(Error::Unsupported(
                "restoring through CRIU with the systemd cgroup driver: use the cgroupfs driver"
                    .into(),
            ));
        }
        let mut state = new_state(o, bundle, handler, &planned);
        locked.save(&state)?;
        planned.make()?;
        guard.cgroup_created = state.cgroup_created.clone();
        guard.cgroup_paths = state.cgroup_paths.clone();
        planned.limit()?;
        // CRIU's own process exits once the tree is restored: as its
        // subreaper this process inherits the restored init and can wait
        // for it (`restore` without --detach).
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let pid = amphi_core::criu::restore(&amphi_core::criu::Restore {
            options: image,
            spec,
            rootfs: &bundle.rootfs,
            state_dir: &locked.dir,
            cgroup_paths: &state.cgroup_paths,
        })?;
        record_init(locked, &mut state, pid, o.pid_file)?;
        let locked = guard.locked.take().expect("set above");
        Ok((locked, state))
    }
}
