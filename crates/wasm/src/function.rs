//! Function invocations for `amphi serve`: a module or component compiled
//! and pre-instantiated once in the function's envelope, then a fresh
//! instance per invocation, in the envelope's process.
//!
//! Three interfaces: a WASI preview 1 module or a `wasi:cli/command`
//! component run as a CGI program (variables in the environment, the body
//! on stdin, headers and body on stdout), and a `wasi:http/proxy`
//! component, whose response is rendered in the same CGI form so the host
//! reads every function's answer alike.
//!
//! Instances run on an engine with epoch interruption and async support:
//! an invocation is a future that yields at every epoch tick and at every
//! host call, so dropping it (a timeout) ends the guest at once, even in a
//! loop or a sleep. Invocations share nothing: each has its own store,
//! memory cap, in-memory stdio and, when the host gives one, a scratch
//! directory of its own as `/tmp`.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use amphi_core::executor::PrepareContext;
use amphi_core::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime::component::{Accessor, ResourceTable};
use wasmtime::{Engine, InstancePre, Linker, Store, StoreLimits};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::engine::{Kind, POOL_SLOTS};
use crate::guest::{add_wasi_p1, compile_error, fail, flavor, store_limits, Flavor, TRAP_EXIT};
use crate::source::Source;
use crate::Cache;

/// How often running guests yield (and notice that they were cancelled).
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The most an invocation may write to stdout (its response) and the most
/// of its stderr kept.
pub const MAX_STDOUT: usize = 16 << 20;
pub const MAX_STDERR: usize = 64 << 10;

/// The engine of function invocations (see [`crate::engine`]).
pub fn engine() -> &'static Engine {
    crate::engine::engine(Kind::Function)
}

/// Guests running now; the epoch thread sleeps while there are none (an
/// idle envelope wakes nothing).
static RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static TICKER: OnceLock<std::thread::Thread> = OnceLock::new();

/// Start the thread that advances the engine's epoch every tick while
/// guests run. Call once threads may exist (after the process's
/// credentials are final).
pub fn start_epoch_ticker() {
    TICKER.get_or_init(|| {
        std::thread::Builder::new()
            .name("epoch".into())
            .spawn(|| loop {
                if RUNNING.load(std::sync::atomic::Ordering::Acquire) == 0 {
                    std::thread::park();
                    continue;
                }
                std::thread::sleep(EPOCH_TICK);
                engine().increment_epoch();
            })
            .expect("spawn the epoch thread")
            .thread()
            .clone()
    });
}

/// Counts a running guest for the epoch thread, from creation to drop
/// (a cancelled invocation's future is dropped too).
struct Running;

impl Running {
    fn new() -> Running {
        if RUNNING.fetch_add(1, std::sync::atomic::Ordering::AcqRel) == 0 {
            if let Some(t) = TICKER.get() {
                t.unpark();
            }
        }
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

pub use amphi_function::Interface;

/// The request line and headers of one `wasi:http` invocation.
pub struct RequestHead {
    pub method: String,
    /// Path and query, as the client sent them.
    pub uri: String,
    pub headers: Vec<(String, String)>,
}

pub struct Invocation {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub body: Bytes,
    /// For `wasi:http` functions.
    pub head: Option<RequestHead>,
    /// A directory of this invocation's own, preopened as `/tmp`.
    pub scratch: Option<PathBuf>,
}

pub struct Outcome {
    /// The exit status, as for a command: `proc_exit(N)`, 0, or
    /// [`TRAP_EXIT`] for a trap (or an `http` guest that answered nothing).
    pub exit: i32,
    pub stdout: Bytes,
    pub stderr: Bytes,
    /// When the instance was made and the guest ran (for traces).
    pub phases: Vec<Phase>,
}

/// A timed step of an invocation: `instance` (instantiation) or `guest`.
pub type Phase = (&'static str, SystemTime, SystemTime);

/// Time `step` as phase `name`, whether it succeeds or not.
async fn timed<T>(
    phases: &mut Vec<Phase>,
    name: &'static str,
    step: impl std::future::Future<Output = T>,
) -> T {
    let from = SystemTime::now();
    let out = step.await;
    phases.push((name, from, SystemTime::now()));
    out
}

struct P1State {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
}

struct P2State {
    ctx: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: crate::outbound::Hooks,
    limits: StoreLimits,
}

impl WasiView for P2State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for P2State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

enum Linked {
    Module(InstancePre<P1State>),
    Command(CommandPre<P2State>),
    Proxy(ProxyPre<P2State>),
    /// A `wasi:http@0.3` service: `handle` is an async export, the bodies
    /// are 0.3 streams, driven in the store's event loop.
    ServiceP3(wasmtime_wasi_http::p3::bindings::ServicePre<P2State>),
}

pub struct Function {
    cache: Cache,
    interface: Interface,
    memory_limit: Option<u64>,
    readonly_root: bool,
    pool_slots: Option<u32>,
    linked: Option<Linked>,
    reuse: Option<Box<Reuse>>,
    outbound: crate::outbound::Hooks,
    /// Whether the guest imports a way to find or use preopened
    /// directories: a guest without one gets none made (no `/` preopen,
    /// no scratch `/tmp`), which cost 14% of a small `wasi:http`
    /// request's throughput in one measurement.
    sees_files: bool,
    /// The artifact the server compiled, run instead of the rootfs's module.
    precompiled: Option<Precompiled>,
    /// That artifact, loaded by the process the envelope was cloned from.
    loaded: Option<Loaded>,
}

/// A function's module as the server compiled it, for its envelopes.
pub struct Precompiled {
    /// The artifact: a cache file (locked shared) or a memfd.
    pub artifact: std::fs::File,
    pub flavor: Flavor,
}

#[derive(Clone)]
enum Compiled {
    Module(wasmtime::Module),
    Component(wasmtime::component::Component),
}

/// A function's artifact loaded where its envelopes are cloned from (the
/// server's envelope keeper): each envelope inherits it, copy-on-write,
/// instead of making an engine and loading the artifact itself, which took
/// 2.7 ms of the Python function's 13 ms cold start (wasmtime reading the
/// metadata of 15,000 functions).
#[derive(Clone)]
pub struct Loaded {
    compiled: Compiled,
    /// The fds wasmtime opened as it loaded (the artifact it maps memory
    /// images from, memfds of images): the init must keep them open.
    fds: Vec<std::os::fd::RawFd>,
}

impl Loaded {
    /// Say which fds loading opened (the caller can tell: it knows what
    /// else its process has open).
    pub fn keeping(mut self, fds: Vec<std::os::fd::RawFd>) -> Loaded {
        self.fds = fds;
        self
    }
}

impl Precompiled {
    /// Load the artifact in this process, on the function engine with a
    /// pool of `pool_slots` (the first load in a process decides: a
    /// process that loads several passes the most any of them needs).
    pub fn load_here(&self, pool_slots: Option<u32>) -> Result<Loaded> {
        POOL_SLOTS.get_or_init(|| pool_slots);
        let engine = engine();
        amphi_core::util::trace::phase("wasm: engine");
        let load = |e: wasmtime::Error| fail(format!("load the compiled artifact: {e:#}"));
        // SAFETY: the server compiled it for an engine of this kind, in
        // the cache (replaced only by rename) or a memfd of its own;
        // wasmtime checks the engine's compatibility as it loads.
        let compiled = unsafe {
            match self.flavor {
                Flavor::Module => Compiled::Module(
                    <wasmtime::Module as crate::cache::Artifact>::load(engine, &self.artifact)
                        .map_err(load)?,
                ),
                Flavor::Component => Compiled::Component(
                    <wasmtime::component::Component as crate::cache::Artifact>::load(
                        engine,
                        &self.artifact,
                    )
                    .map_err(load)?,
                ),
            }
        };
        Ok(Loaded {
            compiled,
            fds: Vec::new(),
        })
    }
}

/// Isolation "reuse": `wasi:http` instances kept between requests and
/// retired after `max`; a 0.2 instance serves one request at a time, a
/// 0.3 instance up to `concurrency` at once. What one request leaves in
/// the instance (linear memory, globals, tables, its `/tmp`) the next
/// request on it sees.
struct Reuse {
    max: u32,
    concurrency: u32,
    /// Where each instance's own `/tmp` is made (none when `None`).
    scratch_base: Option<PathBuf>,
    idle: std::sync::Mutex<Vec<Warm>>,
    /// 0.3 instances taking requests.
    serving: std::sync::Mutex<Vec<std::sync::Arc<KeptP3>>>,
    made: std::sync::atomic::AtomicU64,
}

/// A kept WASI 0.3 instance: its store runs on a task of its own, in its
/// event loop, where each request is a task of the instance's.
struct KeptP3 {
    jobs: tokio::sync::mpsc::UnboundedSender<(hyper::Request<Full<Bytes>>, Reply)>,
    /// Requests in flight on it at most.
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    accepted: std::sync::atomic::AtomicU32,
    /// Trapped (every request after a trap would fail): not given more.
    broken: std::sync::atomic::AtomicBool,
    stderr: MemoryOutputPipe,
    stderr_seen: std::sync::Mutex<usize>,
}

type Reply = tokio::sync::oneshot::Sender<wasmtime::Result<hyper::Response<Bytes>>>;

/// An instance between requests.
struct Warm {
    store: Store<P2State>,
    proxy: wasmtime_wasi_http::p2::bindings::Proxy,
    served: u32,
    stderr: MemoryOutputPipe,
    stderr_seen: usize,
    scratch: Option<PathBuf>,
}

impl Drop for Warm {
    fn drop(&mut self) {
        remove_scratch(&self.scratch);
    }
}

impl Function {
    /// `pool_slots`: instances that may exist at once when the envelope
    /// should use the pooling allocator (see [`engine`]).
    pub fn new(
        cache: Cache,
        interface: Interface,
        memory_limit: Option<u64>,
        readonly_root: bool,
        pool_slots: Option<u32>,
    ) -> Function {
        Function {
            cache,
            interface,
            memory_limit,
            readonly_root,
            pool_slots,
            linked: None,
            reuse: None,
            outbound: Default::default(),
            sees_files: true,
            precompiled: None,
            loaded: None,
        }
    }

    /// Run `loaded`, the server's artifact as the process that clones the
    /// envelope loaded it ([`Precompiled::load_here`]).
    pub fn with_loaded(mut self, loaded: Loaded) -> Function {
        self.loaded = Some(loaded);
        self
    }

    /// Whether the init must keep the trap handlers it was cloned with:
    /// wasmtime installs them once per process, when the process makes its
    /// first engine, and the keeper did.
    pub fn keeps_trap_handlers(&self) -> bool {
        crate::engine::trap_handlers_installed()
    }

    /// Isolation "reuse": keep instances between requests, each for up to
    /// `max` requests (a 0.3 one up to `concurrency` at once), with a
    /// `/tmp` of their own below `scratch_base`.
    pub fn with_reuse(
        mut self,
        max: u32,
        concurrency: u32,
        scratch_base: Option<PathBuf>,
    ) -> Function {
        self.reuse = Some(Box::new(Reuse {
            max,
            concurrency: concurrency.max(1),
            scratch_base,
            idle: std::sync::Mutex::new(Vec::new()),
            serving: std::sync::Mutex::new(Vec::new()),
            made: std::sync::atomic::AtomicU64::new(0),
        }));
        self
    }

    /// Let outgoing `wasi:http` requests out through `dial` (without it
    /// every one is denied).
    pub fn with_outbound(mut self, dial: crate::outbound::Dialer) -> Function {
        self.outbound.dial = Some(dial);
        self
    }

    /// Whether instances outlive requests (the worker then makes no
    /// per-invocation `/tmp`: each instance has its own).
    /// Whether invocations get preopened directories (`/`, a scratch
    /// `/tmp`): only a guest that imports the means to find them does.
    pub fn sees_files(&self) -> bool {
        self.sees_files
    }

    pub fn reuses(&self) -> bool {
        self.reuse.is_some()
    }

    pub fn inherited_fds(&self) -> Vec<std::os::fd::RawFd> {
        let artifact = self
            .precompiled
            .as_ref()
            .map(|p| std::os::fd::AsRawFd::as_raw_fd(&p.artifact));
        let loaded = self.loaded.iter().flat_map(|l| l.fds.iter().copied());
        self.cache
            .raw_fd()
            .into_iter()
            .chain(artifact)
            .chain(loaded)
            .collect()
    }

    /// Compile `spec`'s module (rootfs at `rootfs`) into `cache`, as an
    /// envelope of the function would, pre-initialized when it asks, and
    /// check that it links. For the host's process, ahead of the
    /// function's envelopes: each runs as a user of its own, which may not
    /// write the host's cache, so a module not there already would be
    /// compiled (and pre-initialized) again by every cold envelope.
    ///
    /// A module bind-mounted over `process.args[0]` (a manifest's
    /// `module`) is read from the mount's source, the host file the
    /// operator named; any other from the rootfs, resolved inside it.
    pub fn precompile(
        cache: Cache,
        interface: Interface,
        spec: &oci_spec::runtime::Spec,
        rootfs: &Path,
        memory_limit: Option<u64>,
    ) -> Result<Precompiled> {
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| fail("config.json has no process"))?;
        let inside = process.cwd().join(amphi_core::executor::program(process));
        let bound = spec.mounts().iter().flatten().find(|m| {
            m.destination() == &inside && m.typ().as_deref() == Some("bind") && m.source().is_some()
        });
        let (path, bytes) = match bound.and_then(|m| m.source().as_ref()) {
            // A host path, as the bind's source is: resolved from the
            // host's root, through the same bounded regular-file read.
            Some(source) => {
                let host_root =
                    open_dir(Path::new("/")).map_err(|e| fail(format!("open /: {e}")))?;
                let what = format!("mounts[].source {}", source.display());
                let bytes = crate::Wasm::read_module_at(host_root.as_fd(), source, &what)?;
                (source.clone(), bytes)
            }
            None => {
                let root = open_dir(rootfs)
                    .map_err(|e| fail(format!("root.path {}: {e}", rootfs.display())))?;
                let ctx = PrepareContext {
                    spec,
                    process,
                    rootfs,
                    root_fd: root.as_fd(),
                    state_dir: None,
                };
                crate::Wasm::read_module(&ctx, ctx.program())?
            }
        };
        let mut function = Function::new(cache, interface, memory_limit, false, None);
        function.link(spec, &path, bytes.source())?;
        let artifact = function
            .cache
            .last_artifact()
            .and_then(|f| f.try_clone().ok())
            .ok_or_else(|| fail(format!("{}: no artifact to hand on", path.display())))?;
        Ok(Precompiled {
            artifact,
            flavor: flavor(&bytes).expect("linked"),
        })
    }

    /// Run `precompiled`, the artifact [`Function::precompile`] gave, instead
    /// of the module the envelope's rootfs holds: the envelope neither
    /// reads nor hashes the module (20 ms for a 20 MB interpreter), it maps
    /// the artifact.
    pub fn with_precompiled(mut self, precompiled: Precompiled) -> Function {
        self.precompiled = Some(precompiled);
        self
    }

    /// Compile (or load from the cache) and link the module named by
    /// `process.args[0]`, for the function's interface.
    pub fn prepare(&mut self, ctx: &PrepareContext) -> Result<()> {
        if let Some(Loaded { compiled, .. }) = self.loaded.take() {
            self.precompiled = None;
            POOL_SLOTS.get_or_init(|| self.pool_slots);
            amphi_core::util::trace::phase("wasm: artifact loaded by the keeper");
            let what = format!("process.args[0] {} (compiled by the server)", ctx.program());
            return self.link_compiled(compiled, &what);
        }
        if let Some(p) = self.precompiled.take() {
            let what = format!("process.args[0] {} (compiled by the server)", ctx.program());
            return self.link_precompiled(p, &what);
        }
        let (path, bytes) = crate::Wasm::read_module(ctx, ctx.program())?;
        self.link(ctx.spec, &path, bytes.source())
    }

    /// Compile (or load from the cache) and link `bytes`, the module at
    /// `path`, for the function's interface.
    pub(crate) fn link(
        &mut self,
        spec: &oci_spec::runtime::Spec,
        path: &Path,
        source: Source,
    ) -> Result<()> {
        let what = format!("process.args[0] {}", path.display());
        POOL_SLOTS.get_or_init(|| self.pool_slots);
        let flavor = flavor(source.bytes)
            .ok_or_else(|| fail(format!("{what}: not a WebAssembly module or component")))?;
        if (self.interface, flavor) == (Interface::Http, Flavor::Module) {
            return Err(fail(format!(
                "{what}: a core module; interface \"http\" runs components of the wasi:http/proxy world"
            )));
        }
        let memory_limit = self.memory_limit;
        let compiled = match flavor {
            Flavor::Module => {
                crate::preinit::module(&mut self.cache, Kind::Function, spec, source, memory_limit)
                    .map(Compiled::Module)
            }
            Flavor::Component => crate::preinit::component(
                &mut self.cache,
                Kind::Function,
                spec,
                source,
                memory_limit,
            )
            .map(Compiled::Component),
        };
        self.link_compiled(
            compiled.map_err(|e| compile_error(&what, &e, memory_limit))?,
            &what,
        )
    }

    /// Link the artifact the server compiled.
    fn link_precompiled(&mut self, p: Precompiled, what: &str) -> Result<()> {
        let Loaded { compiled, .. } = p
            .load_here(self.pool_slots)
            .map_err(|e| fail(format!("{what}: {e}")))?;
        amphi_core::util::trace::phase("wasm: artifact loaded");
        self.link_compiled(compiled, what)
    }

    fn link_compiled(&mut self, compiled: Compiled, what: &str) -> Result<()> {
        let engine = engine();
        let linked = match (self.interface, compiled) {
            (Interface::Cgi, Compiled::Module(module)) => {
                // Directories are found (fd_prestat_*) and used (path_*,
                // fd_readdir) by name or by a known fd number.
                self.sees_files = module.imports().any(|i| {
                    i.module() == "wasi_snapshot_preview1"
                        && (i.name().starts_with("path_")
                            || i.name().starts_with("fd_prestat")
                            || i.name() == "fd_readdir")
                });
                let mut linker: Linker<P1State> = Linker::new(engine);
                add_wasi_p1(&mut linker, |s| &mut s.wasi)
                    .map_err(|e| fail(format!("link WASI: {e:#}")))?;
                Linked::Module(linker.instantiate_pre(&module).map_err(|e| {
                    fail(format!("{what}: {e:#}; amphi provides wasi_snapshot_preview1 only"))
                })?)
            }
            (Interface::Cgi, Compiled::Component(c)) => {
                self.sees_files = imports_filesystem(&c, engine);
                let mut linker = wasmtime::component::Linker::<P2State>::new(engine);
                wasmtime_wasi::p2::add_to_linker_async(&mut linker)
                    .map_err(|e| fail(format!("link WASI: {e:#}")))?;
                Linked::Command(linker.instantiate_pre(&c).and_then(CommandPre::new).map_err(|e| {
                    fail(format!("{what}: {e:#}; a CGI component is of the wasi:cli/command world"))
                })?)
            }
            (Interface::Http, Compiled::Component(c)) => {
                self.sees_files = imports_filesystem(&c, engine);
                // wasi:http 0.2 and 0.3 both, as `wasmtime serve` links them.
                let mut linker = wasmtime::component::Linker::<P2State>::new(engine);
                wasmtime_wasi::p2::add_to_linker_async(&mut linker)
                    .and_then(|()| wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker))
                    .and_then(|()| wasmtime_wasi::p3::add_to_linker(&mut linker))
                    .and_then(|()| wasmtime_wasi_http::p3::add_to_linker(&mut linker))
                    .map_err(|e| fail(format!("link wasi:http: {e:#}")))?;
                let pre = linker.instantiate_pre(&c);
                if let Some(p3) = pre.as_ref().ok().and_then(|pre| {
                    wasmtime_wasi_http::p3::bindings::ServicePre::new(pre.clone()).ok()
                }) {
                    Linked::ServiceP3(p3)
                } else {
                    Linked::Proxy(pre.and_then(ProxyPre::new).map_err(|e| {
                        fail(format!(
                            "{what}: {e:#}; interface \"http\" runs components of the wasi:http/proxy world"
                        ))
                    })?)
                }
            }
            (Interface::Http, Compiled::Module(_)) => {
                return Err(fail(format!(
                    "{what}: a core module; interface \"http\" runs components of the wasi:http/proxy world"
                )))
            }
        };
        self.linked = Some(linked);
        amphi_core::util::trace::phase("wasm: linked");
        // The envelope keeps nothing of the host's.
        self.cache.close();
        Ok(())
    }

    fn wasi(
        &self,
        inv: &Invocation,
        stdout: &MemoryOutputPipe,
        stderr: &MemoryOutputPipe,
    ) -> Result<WasiCtxBuilder> {
        let mut b = WasiCtxBuilder::new();
        b.stdin(MemoryInputPipe::new(inv.body.clone()))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .args(&inv.args);
        b.envs(
            &inv.env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
        );
        let root = if self.readonly_root {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        if !self.sees_files {
            return Ok(b);
        }
        b.preopened_dir("/", "/", root)
            .map_err(|e| fail(format!("preopen /: {e}")))?;
        if let Some(scratch) = &inv.scratch {
            b.preopened_dir(scratch, "/tmp", FsPerms::ReadWrite)
                .map_err(|e| fail(format!("preopen {}: {e}", scratch.display())))?;
        }
        Ok(b)
    }

    /// Run one invocation to its end. Cancel it by dropping the future.
    pub async fn invoke(&self, inv: Invocation) -> Outcome {
        let _running = Running::new();
        match (&self.reuse, &self.linked) {
            (Some(reuse), Some(Linked::Proxy(pre))) => {
                return self.invoke_reused(reuse, pre, inv).await
            }
            (Some(reuse), Some(Linked::ServiceP3(pre))) => {
                return self.invoke_kept_p3(reuse, pre, inv).await
            }
            _ => {}
        }
        let stdout = MemoryOutputPipe::new(MAX_STDOUT);
        let stderr = MemoryOutputPipe::new(MAX_STDERR);
        let mut phases = Vec::new();
        let (exit, response) = match self.run(&inv, &stdout, &stderr, &mut phases).await {
            Ok(r) => r,
            Err(e) => match e.downcast_ref::<I32Exit>() {
                Some(I32Exit(code)) => (*code, None),
                None => {
                    let mut outcome = guest_failed(stderr.contents(), e, phases);
                    outcome.stdout = stdout.contents();
                    return outcome;
                }
            },
        };
        Outcome {
            exit,
            stdout: response.unwrap_or_else(|| stdout.contents()),
            stderr: stderr.contents(),
            phases,
        }
    }

    /// One request on a kept instance (a new one when none is idle). An
    /// instance that trapped, or whose stderr is half full, is not kept;
    /// one cancelled mid-request is dropped with the future.
    async fn invoke_reused(
        &self,
        reuse: &Reuse,
        pre: &ProxyPre<P2State>,
        inv: Invocation,
    ) -> Outcome {
        let mut phases = Vec::new();
        let idle = reuse.idle.lock().expect("reuse pool").pop();
        let mut warm = match idle {
            Some(w) => w,
            None => match timed(&mut phases, "instance", self.warm(reuse, pre, &inv)).await {
                Ok(w) => w,
                Err(e) => return guest_failed(Bytes::new(), e, phases),
            },
        };
        let Some(head) = inv.head.as_ref() else {
            return guest_failed(
                Bytes::new(),
                wasmtime::Error::msg("http invocation without a request head"),
                phases,
            );
        };
        let result = timed(
            &mut phases,
            "guest",
            respond(&mut warm.store, &warm.proxy, head, inv.body),
        )
        .await;
        let all = warm.stderr.contents();
        let stderr = all.slice(warm.stderr_seen.min(all.len())..);
        warm.stderr_seen = all.len();
        match result {
            Ok(response) => {
                warm.served += 1;
                if warm.served < reuse.max && warm.stderr_seen < MAX_STDERR / 2 {
                    reuse.idle.lock().expect("reuse pool").push(warm);
                }
                Outcome {
                    exit: 0,
                    stdout: response,
                    stderr,
                    phases,
                }
            }
            Err(e) => guest_failed(stderr, e, phases),
        }
    }

    /// One request on a kept 0.3 instance with a free slot (a new one when
    /// none has): requests on one instance run at once, each a task in
    /// its event loop. One that traps breaks the instance for the requests
    /// in flight on it too, as in `wasmtime serve`; none is given to it
    /// after.
    async fn invoke_kept_p3(
        &self,
        reuse: &Reuse,
        pre: &wasmtime_wasi_http::p3::bindings::ServicePre<P2State>,
        inv: Invocation,
    ) -> Outcome {
        use std::sync::atomic::Ordering;
        let mut phases = Vec::new();
        let Some(head) = inv.head.as_ref() else {
            return guest_failed(
                Bytes::new(),
                wasmtime::Error::msg("http invocation without a request head"),
                phases,
            );
        };
        let request = match http_request(head, inv.body.clone()) {
            Ok(r) => r,
            Err(e) => return guest_failed(Bytes::new(), e, phases),
        };
        // A free slot of a serving instance, else a new instance.
        let taken = {
            let mut serving = reuse.serving.lock().expect("kept instances");
            serving.retain(|k| {
                !k.broken.load(Ordering::Relaxed) && k.accepted.load(Ordering::Relaxed) < reuse.max
            });
            serving.iter().find_map(|k| {
                let slot = k.slots.clone().try_acquire_owned().ok()?;
                k.accepted.fetch_add(1, Ordering::Relaxed);
                Some((k.clone(), slot))
            })
        };
        let (kept, _slot) = match taken {
            Some(t) => t,
            None => {
                let kept = match timed(
                    &mut phases,
                    "instance",
                    self.start_kept_p3(reuse, pre, &inv),
                )
                .await
                {
                    Ok(k) => std::sync::Arc::new(k),
                    Err(e) => return guest_failed(Bytes::new(), e, phases),
                };
                let slot = kept
                    .slots
                    .clone()
                    .try_acquire_owned()
                    .expect("a new instance's slot");
                kept.accepted.fetch_add(1, Ordering::Relaxed);
                reuse
                    .serving
                    .lock()
                    .expect("kept instances")
                    .push(kept.clone());
                (kept, slot)
            }
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let sent = kept.jobs.send((request, reply)).is_ok();
        let result = timed(&mut phases, "guest", async {
            match (sent, answer.await) {
                (true, Ok(r)) => r,
                _ => Err(wasmtime::Error::msg("the kept instance ended")),
            }
        })
        .await;
        let stderr = {
            let all = kept.stderr.contents();
            let mut seen = kept.stderr_seen.lock().expect("stderr");
            let new = all.slice((*seen).min(all.len())..);
            *seen = all.len();
            if *seen >= MAX_STDERR / 2 {
                kept.broken.store(true, Ordering::Relaxed);
            }
            new
        };
        match result.and_then(cgi_output) {
            Ok(response) => Outcome {
                exit: 0,
                stdout: response,
                stderr,
                phases,
            },
            Err(e) => {
                kept.broken.store(true, Ordering::Relaxed);
                guest_failed(stderr, e, phases)
            }
        }
    }

    /// A kept 0.3 instance, instantiated, its event loop on a task of its
    /// own taking requests until every handle to it is gone.
    async fn start_kept_p3(
        &self,
        reuse: &Reuse,
        pre: &wasmtime_wasi_http::p3::bindings::ServicePre<P2State>,
        inv: &Invocation,
    ) -> wasmtime::Result<KeptP3> {
        let stderr = MemoryOutputPipe::new(MAX_STDERR);
        let (mut store, scratch) = self.kept_store(reuse, inv, &stderr)?;
        let service = match pre.instantiate_async(&mut store).await {
            Ok(s) => std::sync::Arc::new(s),
            Err(e) => {
                remove_scratch(&scratch);
                return Err(e);
            }
        };
        let (jobs, mut requests) =
            tokio::sync::mpsc::unbounded_channel::<(hyper::Request<Full<Bytes>>, Reply)>();
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(reuse.concurrency as usize));
        let all_slots = reuse.concurrency;
        let done = slots.clone();
        tokio::spawn(async move {
            let _ = store
                .run_concurrent(async |accessor| {
                    while let Some((request, reply)) = requests.recv().await {
                        let service = service.clone();
                        let job = async move |accessor: &Accessor<P2State>| {
                            let _ = reply.send(serve_p3(accessor, &service, request).await);
                            Ok(())
                        };
                        if accessor.spawn(job).is_err() {
                            break;
                        }
                    }
                    // Retired: the requests still in flight finish first.
                    let _ = done.acquire_many(all_slots).await;
                    wasmtime::Result::<()>::Ok(())
                })
                .await;
            drop(store);
            remove_scratch(&scratch);
        });
        Ok(KeptP3 {
            jobs,
            slots,
            accepted: Default::default(),
            broken: Default::default(),
            stderr,
            stderr_seen: Default::default(),
        })
    }

    /// A kept instance's store: the function's arguments and environment,
    /// its own `/tmp` (made here, returned to be removed with it), stdout
    /// unused (responses go through wasi:http).
    fn kept_store(
        &self,
        reuse: &Reuse,
        inv: &Invocation,
        stderr: &MemoryOutputPipe,
    ) -> wasmtime::Result<(Store<P2State>, Option<PathBuf>)> {
        let n = reuse
            .made
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let scratch = reuse
            .scratch_base
            .as_ref()
            .filter(|_| self.sees_files)
            .map(|b| b.join(format!(".amphi-instance-{n}")));
        if let Some(dir) = &scratch {
            std::fs::create_dir(dir)
                .map_err(|e| wasmtime::Error::msg(format!("{}: {e}", dir.display())))?;
        }
        let at_start = Invocation {
            args: inv.args.clone(),
            env: inv.env.clone(),
            body: Bytes::new(),
            head: None,
            scratch: scratch.clone(),
        };
        let mut wasi = match self.wasi(&at_start, &MemoryOutputPipe::new(0), stderr) {
            Ok(wasi) => wasi,
            Err(e) => {
                remove_scratch(&scratch);
                return Err(wasmtime::Error::msg(e));
            }
        };
        Ok((
            self.p2_store(wasi.build(), store_limits(self.memory_limit)),
            scratch,
        ))
    }

    /// A new kept instance: the function's arguments and environment, its
    /// own `/tmp`, stdout unused (responses go through wasi:http).
    async fn warm(
        &self,
        reuse: &Reuse,
        pre: &ProxyPre<P2State>,
        inv: &Invocation,
    ) -> wasmtime::Result<Warm> {
        let stderr = MemoryOutputPipe::new(MAX_STDERR);
        let (mut store, scratch) = self.kept_store(reuse, inv, &stderr)?;
        match pre.instantiate_async(&mut store).await {
            Ok(proxy) => Ok(Warm {
                store,
                proxy,
                served: 0,
                stderr,
                stderr_seen: 0,
                scratch,
            }),
            Err(e) => {
                remove_scratch(&scratch);
                Err(e)
            }
        }
    }

    /// The exit status, and for a proxy the response (in CGI form).
    async fn run(
        &self,
        inv: &Invocation,
        stdout: &MemoryOutputPipe,
        stderr: &MemoryOutputPipe,
        phases: &mut Vec<Phase>,
    ) -> wasmtime::Result<(i32, Option<Bytes>)> {
        let mut wasi = self
            .wasi(inv, stdout, stderr)
            .map_err(wasmtime::Error::msg)?;
        let limits = store_limits(self.memory_limit);
        match self.linked.as_ref().expect("prepare ran") {
            Linked::Module(pre) => {
                let mut store = Store::new(
                    engine(),
                    P1State {
                        wasi: wasi.build_p1(),
                        limits,
                    },
                );
                store.limiter(|s| &mut s.limits);
                store.epoch_deadline_async_yield_and_update(1);
                let instance = timed(phases, "instance", pre.instantiate_async(&mut store)).await?;
                let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                timed(phases, "guest", start.call_async(&mut store, ())).await?;
                Ok((0, None))
            }
            Linked::Command(pre) => {
                let mut store = self.p2_store(wasi.build(), limits);
                let cmd = timed(phases, "instance", pre.instantiate_async(&mut store)).await?;
                let r = timed(phases, "guest", cmd.wasi_cli_run().call_run(&mut store)).await?;
                Ok((if r.is_ok() { 0 } else { 1 }, None))
            }
            Linked::ServiceP3(pre) => {
                let head = inv.head.as_ref().ok_or_else(|| {
                    wasmtime::Error::msg("http invocation without a request head")
                })?;
                let mut store = self.p2_store(wasi.build(), limits);
                let service = timed(phases, "instance", pre.instantiate_async(&mut store)).await?;
                let request = http_request(head, inv.body.clone())?;
                store.data_mut().hooks.traceparent = request.headers().get("traceparent").cloned();
                let response =
                    timed(phases, "guest", handle_p3(&mut store, service, request)).await?;
                Ok((0, Some(cgi_output(response)?)))
            }
            Linked::Proxy(pre) => {
                let head = inv.head.as_ref().ok_or_else(|| {
                    wasmtime::Error::msg("http invocation without a request head")
                })?;
                let mut store = self.p2_store(wasi.build(), limits);
                let proxy = timed(phases, "instance", pre.instantiate_async(&mut store)).await?;
                let response = timed(
                    phases,
                    "guest",
                    respond(&mut store, &proxy, head, inv.body.clone()),
                )
                .await?;
                Ok((0, Some(response)))
            }
        }
    }

    /// One request to a container service (`service.rs`): a fresh
    /// instance, whose response streams back as the guest writes it.
    pub(crate) async fn handle(
        &self,
        wasi: WasiCtx,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> wasmtime::Result<hyper::Response<wasmtime_wasi_http::p2::body::HyperOutgoingBody>> {
        let pre = match self.linked.as_ref() {
            Some(Linked::Proxy(pre)) => pre,
            Some(Linked::ServiceP3(pre)) => {
                let _running = Running::new();
                let mut store = self.p2_store(wasi, store_limits(self.memory_limit));
                let service = pre.instantiate_async(&mut store).await?;
                let response = handle_p3(&mut store, service, request).await?;
                return Ok(response.map(|body| {
                    Full::new(body)
                        .map_err(|never| match never {})
                        .boxed_unsync()
                }));
            }
            _ => wasmtime::bail!("not a wasi:http/proxy component"),
        };
        let running = Running::new();
        let store = self.p2_store(wasi, store_limits(self.memory_limit));
        let (guest, rx) = handle_in_guest(pre.clone(), store, request)?;
        // A task of its own: the guest keeps writing the body after it has
        // set the response the server is already sending.
        let guest = tokio::task::spawn(async move {
            let _running = running;
            guest.await
        });
        match rx.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(code)) => wasmtime::bail!("the guest answered with error {code:?}"),
            Err(_) => match guest.await {
                Ok(Err(e)) => Err(e),
                _ => wasmtime::bail!("the guest never set a response"),
            },
        }
    }

    fn p2_store(&self, ctx: WasiCtx, limits: StoreLimits) -> Store<P2State> {
        let mut store = Store::new(
            engine(),
            P2State {
                ctx,
                table: ResourceTable::new(),
                http: WasiHttpCtx::new(),
                hooks: self.outbound.clone(),
                limits,
            },
        );
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_async_yield_and_update(1);
        store
    }
}

/// The guest's handling of `request` (a future to drive), and where its
/// response arrives.
#[allow(clippy::type_complexity)]
fn handle_in_guest<B>(
    pre: ProxyPre<P2State>,
    mut store: Store<P2State>,
    request: hyper::Request<B>,
) -> wasmtime::Result<(
    impl std::future::Future<Output = wasmtime::Result<()>> + Send + 'static,
    tokio::sync::oneshot::Receiver<
        Result<
            hyper::Response<wasmtime_wasi_http::p2::body::HyperOutgoingBody>,
            wasmtime_wasi_http::p2::bindings::http::types::ErrorCode,
        >,
    >,
)>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let req = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)?;
    let out = store.data_mut().http().new_response_outparam(tx)?;
    let guest = async move {
        let proxy = pre.instantiate_async(&mut store).await?;
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, req, out)
            .await
    };
    Ok((guest, rx))
}

/// One request through a `wasi:http@0.3` service's fresh instance.
async fn handle_p3<B>(
    store: &mut Store<P2State>,
    service: wasmtime_wasi_http::p3::bindings::Service,
    request: hyper::Request<B>,
) -> wasmtime::Result<hyper::Response<Bytes>>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    store
        .run_concurrent(async move |accessor| serve_p3(accessor, &service, request).await)
        .await?
}

/// One request through a 0.3 service's instance, whole, in its event
/// loop: the guest writes the body from a task of its own after it
/// returned the response, so the body is read there too.
async fn serve_p3<B>(
    accessor: &Accessor<P2State>,
    service: &wasmtime_wasi_http::p3::bindings::Service,
    request: hyper::Request<B>,
) -> wasmtime::Result<hyper::Response<Bytes>>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type RequestIo = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    >;
    let (request, request_io) = accessor.with(|mut store| {
        let (request, io) =
            wasmtime_wasi_http::p3::Request::from_http(store.get().http().hooks, request);
        // Boxed: the future is 'static, which its opaque type hides.
        (request, Box::pin(io) as RequestIo)
    });
    let response = match service.handle(accessor, request).await? {
        Ok(response) => response,
        Err(code) => wasmtime::bail!("the guest answered with error {code:?}"),
    };
    let response = accessor.with(|mut store| response.into_http(&mut store, request_io))?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    if body.len() > MAX_STDOUT {
        wasmtime::bail!("response over {MAX_STDOUT} bytes");
    }
    Ok(hyper::Response::from_parts(parts, body))
}

/// An invocation whose guest failed (a trap, an instance that could not be
/// made): its stderr so far, and why.
fn guest_failed(stderr: Bytes, e: wasmtime::Error, phases: Vec<Phase>) -> Outcome {
    let note = Bytes::from(format!("amphi: wasm guest failed: {e:?}\n"));
    Outcome {
        exit: TRAP_EXIT,
        stdout: Bytes::new(),
        stderr: [stderr, note].concat().into(),
        phases,
    }
}

/// A kept instance's own `/tmp`, gone with it.
fn remove_scratch(scratch: &Option<PathBuf>) {
    if let Some(dir) = scratch {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A function's request as hyper's, from the head the server routed.
fn http_request(head: &RequestHead, body: Bytes) -> wasmtime::Result<hyper::Request<Full<Bytes>>> {
    let mut request = hyper::Request::builder()
        .method(head.method.as_str())
        .uri(head.uri.as_str());
    for (k, v) in &head.headers {
        request = request.header(k.as_str(), v.as_str());
    }
    Ok(request.body(Full::new(body))?)
}

/// A whole response in CGI form: the status, the headers, the body.
fn cgi_output(response: hyper::Response<Bytes>) -> wasmtime::Result<Bytes> {
    let (parts, body) = response.into_parts();
    let mut out = format!("Status: {}\r\n", parts.status.as_u16()).into_bytes();
    for (k, v) in &parts.headers {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if out.len() + body.len() > MAX_STDOUT {
        wasmtime::bail!("response over {MAX_STDOUT} bytes");
    }
    out.extend_from_slice(&body);
    Ok(Bytes::from(out))
}

/// One request through an instance of a proxy component; the response as
/// CGI output.
async fn respond(
    store: &mut Store<P2State>,
    proxy: &wasmtime_wasi_http::p2::bindings::Proxy,
    head: &RequestHead,
    body: Bytes,
) -> wasmtime::Result<Bytes> {
    let mut request = hyper::Request::builder()
        .method(head.method.as_str())
        .uri(head.uri.as_str());
    for (k, v) in &head.headers {
        request = request.header(k.as_str(), v.as_str());
    }
    let request = request.body(Full::new(body))?;
    // What this request's outgoing requests carry unless the guest says.
    store.data_mut().hooks.traceparent = request.headers().get("traceparent").cloned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let req = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)?;
    let out = store.data_mut().http().new_response_outparam(tx)?;
    let guest = proxy
        .wasi_http_incoming_handler()
        .call_handle(&mut *store, req, out);
    // The guest writes the body after it set the response: run both.
    let collect = async move {
        let resp = match rx.await {
            Ok(Ok(resp)) => resp,
            Ok(Err(code)) => wasmtime::bail!("the guest answered with error {code:?}"),
            Err(_) => wasmtime::bail!("the guest never set a response"),
        };
        let (parts, mut body) = resp.into_parts();
        let mut out = format!("Status: {}\r\n", parts.status.as_u16()).into_bytes();
        for (k, v) in &parts.headers {
            out.extend_from_slice(k.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                if out.len() + data.len() > MAX_STDOUT {
                    wasmtime::bail!("response over {MAX_STDOUT} bytes");
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(out))
    };
    // A guest that traps never drops what it held (the response outparam,
    // its body's sender), and the store outlives this call: stop at its
    // error rather than wait for a response that cannot come.
    tokio::pin!(guest, collect);
    tokio::select! {
        g = &mut guest => {
            g?;
            collect.await
        }
        r = &mut collect => {
            guest.await?;
            r
        }
    }
}

/// A scratch directory's path for invocation `id` below `base`.
pub fn scratch_dir(base: &Path, id: u64) -> PathBuf {
    base.join(format!(".amphi-invocation-{id}"))
}

/// Whether a component imports `wasi:filesystem` (its preopens are how a
/// guest finds a directory).
fn imports_filesystem(c: &wasmtime::component::Component, engine: &Engine) -> bool {
    c.component_type()
        .imports(engine)
        .any(|(name, _)| name.starts_with("wasi:filesystem/"))
}

/// A directory, opened to resolve paths below it.
fn open_dir(dir: &Path) -> nix::Result<std::os::fd::OwnedFd> {
    nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
}
