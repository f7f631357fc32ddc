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
    wasm_cache: amphi_wasm::CacheDir,
    pending: Pending,
}

impl FunctionHandler {
    pub fn new(
        plans: Rc<Vec<Plan>>,
        wasm_cache: amphi_wasm::CacheDir,
        pending: Pending,
    ) -> FunctionHandler {
        FunctionHandler {
            plans,
            wasm_cache,
            pending,
        }
    }

    fn plan_of(&self, spec: &Spec) -> Option<&Plan> {
        let name = spec.annotations().as_ref()?.get(FUNCTION_ANNOTATION)?;
        self.plans.iter().find(|p| &p.name == name)
    }
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
        let plan = self
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
                let function = match &plan.artifact {
                    Some(a) => function.with_precompiled(amphi_wasm::function::Precompiled {
                        artifact: a.file.try_clone().map_err(|e| {
                            Error::io("dup", std::path::Path::new("the compiled artifact"), e)
                        })?,
                        flavor: a.flavor,
                    }),
                    None => function,
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
