//! What a running container's cgroup gives: `update`, `stats`, `events`,
//! `ps`, `pause` and `resume`.

use amphi_core::cgroups;
use amphi_core::state::{Status, StoredSpec};
use amphi_core::Result;
use oci_spec::runtime::LinuxResources;

use crate::{wrong_state, Runtime};

impl Runtime {
    /// Change a live container's cgroup limits. Only the fields given
    /// change; the container's recorded spec is updated to match.
    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        let (locked, mut state, status) = self.load(id)?;
        if status == Status::Stopped {
            return Err(wrong_state(
                id,
                status,
                "a stopped container has no cgroup to update",
            ));
        }
        let mut spec = state.spec()?;
        let mut linux = spec.linux().clone().unwrap_or_default();
        let cgroup = cgroups::ContainerCgroup::open(&state.cgroup_paths)?;
        if let Some(unit) = &state.systemd_unit {
            let writes = cgroups::resources::writes(
                resources,
                cgroups::resources::Hierarchy {
                    v2: true,
                    bfq: false,
                },
            )?;
            cgroups::systemd::set(unit, &writes)?;
        }
        cgroup.apply(resources)?;
        let merged = merge_json(
            serde_json::to_value(linux.resources()).expect("json"),
            serde_json::to_value(resources).expect("json"),
        );
        linux.set_resources(serde_json::from_value(merged).ok());
        spec.set_linux(Some(linux));
        state.spec = StoredSpec::new(&spec);
        locked.save(&state)
    }

    /// Cgroup statistics (runc's `events --stats` data), the number of OOM
    /// kills so far, and whether the container has stopped (its cgroup is
    /// still there until `delete`, so a last OOM kill can still be seen).
    pub fn stats(&self, id: &str) -> Result<(serde_json::Value, u64, bool)> {
        let (_locked, state, status) = self.load(id)?;
        Ok((
            cgroups::stats(&state.cgroup_paths),
            cgroups::oom_kills(&state.cgroup_paths),
            status == Status::Stopped,
        ))
    }

    /// A watch that wakes when the container's OOM counters change or its
    /// init exits; None where there is none to watch (no memory
    /// controller, or a stopped container).
    pub fn watch(&self, id: &str) -> Result<Option<cgroups::ContainerWatch>> {
        let (_locked, state, status) = self.load(id)?;
        let watch = cgroups::ContainerWatch::new(&state.cgroup_paths, state.pid);
        // The pid was the init's when the pidfd was taken only if the init
        // still is the recorded one now.
        Ok(watch.filter(|_| status != Status::Stopped && state.init_alive()))
    }

    /// Host pids of every process in the container.
    pub fn ps(&self, id: &str) -> Result<Vec<i32>> {
        let (_locked, state, status) = self.load(id)?;
        if status == Status::Stopped {
            return Ok(Vec::new());
        }
        Ok(cgroups::procs(&state.cgroup_paths))
    }

    /// Freeze every process of a running container.
    pub fn pause(&self, id: &str) -> Result<()> {
        self.set_paused(id, true)
    }

    /// Thaw a paused container.
    pub fn resume(&self, id: &str) -> Result<()> {
        self.set_paused(id, false)
    }

    fn set_paused(&self, id: &str, paused: bool) -> Result<()> {
        let (_locked, state, status) = self.load(id)?;
        let (from, why) = if paused {
            (Status::Running, "only a running container can be paused")
        } else {
            (Status::Paused, "only a paused container can be resumed")
        };
        if status != from {
            return Err(wrong_state(id, status, why));
        }
        cgroups::set_frozen(&state.cgroup_paths, paused)
    }
}

/// `update` on top of `base`: objects merge key by key, anything else is replaced.
fn merge_json(base: serde_json::Value, update: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (base, update) {
        (Value::Object(mut b), Value::Object(u)) => {
            for (k, v) in u {
                let merged = match b.remove(&k) {
                    Some(old) => merge_json(old, v),
                    None => v,
                };
                b.insert(k, merged);
            }
            Value::Object(b)
        }
        (b, Value::Null) => b,
        (_, u) => u,
    }
}
