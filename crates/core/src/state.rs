//! The state store: one directory per container under the runtime root,
//! holding `state.json` (written atomically) and, until `start`, the exec fifo.
//! Commands on one container are serialised by an exclusive `flock` on its
//! directory; commands on different containers never touch each other's files.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Hooks, Spec};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{paths, Error, Result};

pub const STATE_FILE: &str = "state.json";
/// The runtime-spec version of the state documents amphi writes.
pub const OCI_VERSION: &str = "1.2.0";
pub const EXEC_FIFO: &str = "exec.fifo";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // pad, not write_str: tables align on it.
        f.pad(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// What amphi remembers of a container between commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// Host pid of the init process; 0 while creating.
    pub pid: i32,
    /// Start time of `pid` in clock ticks since boot, to tell it from a reused pid.
    pub start_time: u64,
    pub created: String,
    /// The handler that runs the container ("native", "wasm"), chosen at
    /// create; every later command follows it.
    pub executor: String,
    /// `create --no-new-keyring`: exec'd processes keep the caller's keyring too.
    #[serde(default)]
    pub no_new_keyring: bool,
    /// With the systemd cgroup driver: the unit the container's cgroup is.
    #[serde(default)]
    pub systemd_unit: Option<String>,
    pub annotations: HashMap<String, String>,
    /// cgroup directories of the container, one per hierarchy.
    pub cgroup_paths: Vec<PathBuf>,
    /// cgroup directories that `create` made, deepest last, removed by `delete`.
    pub cgroup_created: Vec<PathBuf>,
    /// The config's hooks apart from the rest of it: `start` and `delete`
    /// run them and need nothing else of the config.
    #[serde(default)]
    pub hooks: Option<Hooks>,
    /// Whether `hooks` was recorded: a record from before it was has them
    /// only in `spec`.
    #[serde(default)]
    pub hooks_recorded: bool,
    /// The config as created (the bundle may be gone), as JSON: parsed only
    /// by the commands that need more than the hooks (exec, update,
    /// checkpoint), so that every `start`, `state`, `kill` and `delete`
    /// reads the record without parsing a config (a pod's seccomp profile
    /// alone is hundreds of entries).
    pub spec: StoredSpec,
}

/// A config kept in the record as the JSON it serialises to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StoredSpec(Box<RawValue>);

impl StoredSpec {
    pub fn new(spec: &Spec) -> StoredSpec {
        StoredSpec(serde_json::value::to_raw_value(spec).expect("a spec serialises"))
    }

    /// The config, parsed; `id` names the container in the error.
    pub fn parse(&self, id: &str) -> Result<Spec> {
        serde_json::from_str(self.0.get()).map_err(|e| Error::State {
            id: id.into(),
            path: PathBuf::from(STATE_FILE),
            why: format!("the recorded config: {e}"),
        })
    }
}

impl ContainerState {
    /// The config's hooks (from the config itself in a record that
    /// predates `hooks`).
    pub fn hooks(&self) -> Result<Option<Hooks>> {
        if self.hooks_recorded {
            return Ok(self.hooks.clone());
        }
        Ok(self.spec.parse(&self.id)?.hooks().clone())
    }

    /// The config as created.
    pub fn spec(&self) -> Result<Spec> {
        self.spec.parse(&self.id)
    }

    /// Whether the init process recorded at create still lives (a zombie or
    /// a reused pid does not count).
    pub fn init_alive(&self) -> bool {
        self.pid > 0
            && proc_stat(self.pid).is_some_and(|s| {
                s.start_time == self.start_time && s.state != 'Z' && s.state != 'X'
            })
    }

    /// Status as the kernel sees it now, not as last recorded.
    pub fn status(&self, dir: &Path) -> Status {
        if self.pid == 0 {
            Status::Creating
        } else if !self.init_alive() {
            Status::Stopped
        } else if dir.join(EXEC_FIFO).exists() {
            Status::Created
        } else if crate::cgroups::is_frozen(&self.cgroup_paths) {
            Status::Paused
        } else {
            Status::Running
        }
    }

    /// The runtime-spec state document. `annotations` are the config's
    /// (runtime.md, State); the executor is a field of amphi's own beside
    /// them, as runc adds `rootfs` and `created`.
    pub fn oci_state(&self, status: Status) -> serde_json::Value {
        let mut v = serde_json::json!({
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "status": status.to_string(),
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "annotations": self.annotations,
            "executor": self.executor,
        });
        if status != Status::Stopped && self.pid != 0 {
            v["pid"] = self.pid.into();
        }
        v
    }
}

pub struct ProcStat {
    pub state: char,
    pub start_time: u64,
}

/// Parse `/proc/PID/stat`; the command name may hold spaces and parentheses,
/// so fields are counted from the last `)`.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    // starttime is field 22 of the full line; `rest` starts at field 3.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

pub struct Store {
    root: PathBuf,
}

/// An open, locked container directory. The lock is held until drop.
pub struct Locked {
    pub id: String,
    pub dir: PathBuf,
    _lock: File,
}

impl Store {
    pub fn open(root: &Path) -> Result<Store> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| Error::io("create runtime root", root, e))?;
        Ok(Store { root: root.into() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Make the directory of a new container and lock it; an existing one is
    /// a duplicate id. The directory is made under a temporary name, locked,
    /// then renamed into place, so the directory an id names is locked from
    /// the instant it exists: one without a record and without a lock was
    /// left by a create that died, and is reclaimed here (no id may be
    /// refused by `create` while `list` and `state` say it does not exist).
    pub fn create(&self, id: &str) -> Result<Locked> {
        crate::id::validate(id)?;
        let dir = self.root.join(id);
        let tmp = self
            .root
            .join(format!(".creating-{}-{id}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o711)
            .create(&tmp)
            .map_err(|e| Error::io("create state directory", &tmp, e))?;
        let locked = self.lock_dir(id, tmp.clone())?;
        let placed = |locked: &Locked| {
            nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &locked.dir,
                nix::fcntl::AT_FDCWD,
                &dir,
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            )
        };
        let mut result = placed(&locked);
        if result == Err(nix::Error::EEXIST) && self.reclaim(id) {
            result = placed(&locked);
        }
        match result {
            Ok(()) => Ok(Locked { dir, ..locked }),
            Err(e) => {
                let _ = std::fs::remove_dir(&tmp);
                Err(match e {
                    nix::Error::EEXIST => Error::Exists(id.into()),
                    e => Error::sys(format!("create state directory {}", dir.display()), e),
                })
            }
        }
    }

    /// Remove `id`'s directory if it has no record and nobody holds its
    /// lock: what a `create` killed before its first save left.
    fn reclaim(&self, id: &str) -> bool {
        let dir = self.root.join(id);
        let Ok(f) = File::open(&dir) else {
            return false;
        };
        // SAFETY: flock on an fd this function owns.
        let free = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        free && !dir.join(STATE_FILE).exists() && std::fs::remove_dir_all(&dir).is_ok()
    }

    /// Lock an existing container's directory.
    pub fn lock(&self, id: &str) -> Result<Locked> {
        crate::id::validate(id)?;
        let dir = self.root.join(id);
        let locked = self.lock_dir(id, dir)?;
        // The holder before us may have deleted it.
        if !locked.dir.join(STATE_FILE).exists() && !locked.dir.exists() {
            return Err(Error::NotFound(id.into()));
        }
        Ok(locked)
    }

    fn lock_dir(&self, id: &str, dir: PathBuf) -> Result<Locked> {
        let f = File::open(&dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(id.into()),
            _ => Error::io("open state directory", &dir, e),
        })?;
        // SAFETY: flock on an fd this function owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::sys(
                format!("lock {}", dir.display()),
                nix::Error::last(),
            ));
        }
        Ok(Locked {
            id: id.into(),
            dir,
            _lock: f,
        })
    }

    /// Ids of all containers, sorted. A directory a create is still making
    /// (a dot name) is not a container; one whose maker died is removed.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.root)
            .map_err(|e| Error::io("read runtime root", &self.root, e))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| {
                if name.starts_with(".creating-") {
                    self.remove_abandoned(name);
                }
                !name.starts_with('.')
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// A temporary directory of a create that died before renaming it:
    /// its maker (the pid in its name) is gone. Its lock alone does not
    /// tell, since the maker takes it just after making the directory.
    fn remove_abandoned(&self, name: &str) {
        let maker = name
            .strip_prefix(".creating-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok());
        let gone = maker.is_some_and(|pid| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) == Err(nix::Error::ESRCH)
        });
        if gone {
            let _ = std::fs::remove_dir_all(self.root.join(name));
        }
    }
}

impl Locked {
    pub fn load(&self) -> Result<ContainerState> {
        let path = self.dir.join(STATE_FILE);
        let data = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(self.id.clone()),
            _ => Error::io("read", &path, e),
        })?;
        serde_json::from_slice(&data).map_err(|e| Error::State {
            id: self.id.clone(),
            path,
            why: format!("{e}; `delete --force` removes what is left of it"),
        })
    }

    pub fn save(&self, state: &ContainerState) -> Result<()> {
        self.stage(state)?.commit()
    }

    /// `save` up to the last step: the record takes effect on commit.
    pub fn stage(&self, state: &ContainerState) -> Result<paths::Staged> {
        let data = serde_json::to_vec(state).expect("state serialises");
        paths::stage_file(&self.dir.join(STATE_FILE), &data)
    }

    #[cfg(test)]
    fn save_raw(&self, data: &[u8]) -> Result<()> {
        paths::write_file(&self.dir.join(STATE_FILE), data)
    }

    pub fn fifo(&self) -> PathBuf {
        self.dir.join(EXEC_FIFO)
    }

    /// Remove the directory and everything in it; the lock goes with it.
    pub fn remove(self) -> Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove state directory", &self.dir, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_stat_parses() {
        let me = proc_stat(std::process::id() as i32).unwrap();
        assert!(matches!(me.state, 'R' | 'S'), "{}", me.state);
        assert!(me.start_time > 0);
    }

    #[test]
    fn create_is_exclusive_and_lock_finds_missing() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let c = store.create("a").unwrap();
        c.save_raw(b"{}").unwrap();
        drop(c);
        assert!(matches!(store.create("a"), Err(Error::Exists(_))));
        assert!(matches!(store.lock("b"), Err(Error::NotFound(_))));
        assert!(matches!(store.create("../x"), Err(Error::InvalidId { .. })));
        assert_eq!(store.list().unwrap(), vec!["a".to_string()]);
    }

    fn record(spec: serde_json::Value, hooks: Option<serde_json::Value>) -> Vec<u8> {
        let mut v = serde_json::json!({
            "id": "c", "bundle": "/b", "rootfs": "/b/rootfs", "pid": 1,
            "start_time": 0, "created": "", "executor": "native",
            "annotations": {}, "cgroup_paths": [], "cgroup_created": [],
            "spec": spec,
        });
        if let Some(h) = hooks {
            v["hooks"] = h;
            v["hooks_recorded"] = true.into();
        }
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn reading_a_record_parses_no_config() {
        // A config no command but exec, update and checkpoint reads: a
        // record with one that does not parse still gives state, start and
        // delete all they need.
        let poststop = serde_json::json!({"poststop": [{"path": "/bin/true"}]});
        let data = record(serde_json::json!({"ociVersion": 5}), Some(poststop));
        let state: ContainerState = serde_json::from_slice(&data).unwrap();
        let hooks = state.hooks().unwrap().unwrap();
        assert_eq!(hooks.poststop().as_ref().unwrap().len(), 1);
        let e = state.spec().unwrap_err().to_string();
        assert!(e.contains("the recorded config"), "{e}");
        // Saved and read again, the config is the same JSON.
        let again: ContainerState =
            serde_json::from_slice(&serde_json::to_vec(&state).unwrap()).unwrap();
        assert_eq!(again.spec.0.get(), r#"{"ociVersion":5}"#);
    }

    #[test]
    fn a_record_from_before_hooks_were_kept_apart_finds_them_in_its_config() {
        let spec = serde_json::json!({
            "ociVersion": "1.2.0",
            "hooks": {"poststop": [{"path": "/bin/true"}, {"path": "/bin/false"}]},
        });
        let state: ContainerState = serde_json::from_slice(&record(spec, None)).unwrap();
        assert!(!state.hooks_recorded);
        let hooks = state.hooks().unwrap().unwrap();
        assert_eq!(hooks.poststop().as_ref().unwrap().len(), 2);
    }

    #[test]
    fn a_directory_left_by_a_dead_create_is_reclaimed() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        // What a create killed between mkdir and its first save leaves.
        std::fs::create_dir(root.path().join("lost")).unwrap();
        let c = store.create("lost").unwrap();
        // While its creator holds it, the id is taken.
        assert!(matches!(store.create("lost"), Err(Error::Exists(_))));
        drop(c);
        // Dead creator, no record: reclaimed. With a record, it is a container.
        let c = store.create("lost").unwrap();
        c.save_raw(b"{}").unwrap();
        drop(c);
        assert!(matches!(store.create("lost"), Err(Error::Exists(_))));
        // An abandoned temporary directory goes at the next list; one whose
        // maker lives stays.
        let dead = ".creating-2147483646-x";
        let live = format!(".creating-{}-y", std::process::id());
        std::fs::create_dir(root.path().join(dead)).unwrap();
        std::fs::create_dir(root.path().join(&live)).unwrap();
        assert_eq!(store.list().unwrap(), vec!["lost".to_string()]);
        assert!(!root.path().join(dead).exists());
        assert!(root.path().join(&live).exists());
    }
}
