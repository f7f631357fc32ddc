//! The function host's executor handler: it takes the envelopes the keeper
//! creates (their spec carries [`FUNCTION_ANNOTATION`]) and builds their
//! process, the function [`Worker`], like any other executor. The keeper
//! hands it each envelope's control socket before asking the runtime to
//! create that envelope.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use amphi_core::executor::{Executor, Handler, Verdict};
use amphi_core::seccomp::Program;
use amphi_core::{Error, Result};
use amphi_function::{Interface, FUNCTION_ANNOTATION};
use oci_spec::runtime::{Process, Spec};

use crate::worker::{Worker, Workload};
use crate::Engine;

/// A wasm function's module as the server compiled it.
#[derive(Debug)]
pub struct Artifact {
    pub file: std::fs::File,
    pub flavor: amphi_wasm::Flavor,
}

/// What a function's envelope is made from: the keeper creates it, the
/// handler builds its worker.
#[derive(Clone)]
pub struct Plan {
    pub name: String,
    /// The bundle directory written for the worker (config.json).
    pub bundle: PathBuf,
    pub process: Process,
    pub seccomp: Option<Program>,
    pub tmp: u64,
    pub interface: Interface,
    pub engine: Engine,
    pub memory: Option<u64>,
    pub readonly_root: bool,
    /// Pooling allocator slots for a long-lived wasm envelope.
    pub pool_slots: Option<u32>,
    /// Isolation "reuse": requests per kept instance, and at once in one.
    pub reuse: Option<(u32, u32)>,
    /// Whether outgoing requests may leave (an allow-list is given).
    pub outbound: bool,
    /// For a function with a port of its own.
    pub direct: Option<std::sync::Arc<crate::direct::Plan>>,
    /// A wasm function's artifact, compiled by the server at start.
    pub artifact: Option<std::sync::Arc<Artifact>>,
}

/// Control sockets waiting for their envelope, by container id.
pub type Pending = Rc<RefCell<HashMap<String, OwnedFd>>>;

pub struct FunctionHandler {
    plans: Rc<Vec<Plan>>,
    /// Each plan's artifact as this process loaded it, for the envelopes
    /// it clones to inherit.
    loaded: Vec<Option<amphi_wasm::function::Loaded>>,
    wasm_cache: amphi_wasm::CacheDir,
    pending: Pending,
}

impl FunctionHandler {
    pub fn new(
        plans: Rc<Vec<Plan>>,
        wasm_cache: amphi_wasm::CacheDir,
        pending: Pending,
    ) -> FunctionHandler {
        let loaded = load_artifacts(&plans);
        FunctionHandler {
            plans,
            loaded,
            wasm_cache,
            pending,
        }
    }

    fn plan_of(&self, spec: &Spec) -> Option<(usize, &Plan)> {
        let name = spec.annotations().as_ref()?.get(FUNCTION_ANNOTATION)?;
        self.plans.iter().enumerate().find(|(_, p)| &p.name == name)
    }
}

/// Every wasm function's artifact, loaded once in the keeper so that the
/// envelopes it clones inherit it (copy-on-write) instead of each making
/// an engine and loading it. One engine serves them all, so its pool has
/// the most slots any function needs; a function that needs the on-demand
/// allocator (more than 128 at once) keeps every function on the old way.
fn load_artifacts(plans: &[Plan]) -> Vec<Option<amphi_wasm::function::Loaded>> {
    let mut slots = 1;
    for plan in plans.iter().filter(|p| p.engine == Engine::Wasm) {
        match (plan.pool_slots, &plan.direct) {
            (Some(n), _) => slots = slots.max(n),
            // An envelope per invocation: one instance at a time.
            (None, None) => {}
            (None, Some(_)) => return vec![None; plans.len()],
        }
    }
    plans
        .iter()
        .map(|plan| {
            let a = plan
                .artifact
                .as_ref()
                .filter(|_| plan.engine == Engine::Wasm)?;
            let precompiled = amphi_wasm::function::Precompiled {
                artifact: a.file.try_clone().ok()?,
                flavor: a.flavor,
            };
            // What wasmtime opens as it loads (the artifact it maps memory
            // images from, memfds) the envelopes' inits must not close.
            let before = open_fds();
            let loaded = precompiled.load_here(Some(slots)).map_err(|e| {
                eprintln!(
                    "amphi serve: envelope keeper: function {}: {e}; its envelopes load it",
                    plan.name
                )
            });
            let opened = open_fds().difference(&before).copied().collect();
            Some(loaded.ok()?.keeping(opened))
        })
        .collect()
}

/// This process's open fds (the keeper's own, outside any container).
fn open_fds() -> std::collections::BTreeSet<std::os::fd::RawFd> {
    let listed: Vec<std::os::fd::RawFd> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // The listing's own fd is closed by now.
    listed
        .into_iter()
        // SAFETY: F_GETFD only asks whether the number is open.
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0)
        .collect()
}

impl Handler for FunctionHandler {
    fn name(&self) -> &'static str {
        "function"
    }

    fn can_handle(&self, spec: &Spec, _rootfs: &Path) -> Verdict {
        match self.plan_of(spec) {
            Some(_) => Verdict::Yes,
            None => Verdict::No("not the envelope of a function this server serves".into()),
        }
    }

    fn executor(&self, id: &str, spec: &Spec) -> Result<Box<dyn Executor>> {
        let (index, plan) = self
            .plan_of(spec)
            .ok_or_else(|| Error::Unsupported(format!("envelope {id}: no such function")))?;
        let control = self.pending.borrow_mut().remove(id).ok_or_else(|| {
            Error::Unsupported(format!("envelope {id}: no control socket was handed over"))
        })?;
        let workload = match (plan.engine, plan.interface) {
            (Engine::Native, _) => Workload::Native(amphi_native::Native::new()),
            (Engine::Wasm, interface) => {
                let function = amphi_wasm::function::Function::new(
                    self.wasm_cache.open(),
                    match interface {
                        Interface::Http => Interface::Http,
                        Interface::Cgi => Interface::Cgi,
                    },
                    plan.memory,
                    plan.readonly_root,
                    plan.pool_slots,
                );
                let function = match (&self.loaded[index], &plan.artifact) {
                    (Some(loaded), _) => function.with_loaded(loaded.clone()),
                    (None, Some(a)) => {
                        function.with_precompiled(amphi_wasm::function::Precompiled {
                            artifact: a.file.try_clone().map_err(|e| {
                                Error::io("dup", std::path::Path::new("the compiled artifact"), e)
                            })?,
                            flavor: a.flavor,
                        })
                    }
                    (None, None) => function,
                };
                Workload::Wasm(Box::new(match plan.reuse {
                    // Each kept instance's /tmp goes in the envelope's.
                    Some((max, concurrency)) => {
                        function.with_reuse(max, concurrency, (plan.tmp > 0).then(|| "/tmp".into()))
                    }
                    None => function,
                }))
            }
        };
        Ok(Box::new(Worker {
            workload,
            control,
            process: plan.process.clone(),
            seccomp: plan.seccomp.clone(),
            tmp: plan.tmp,
            outbound: plan.outbound,
            direct: plan.direct.clone(),
        }))
    }
}
