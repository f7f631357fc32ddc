//! The command executor: a module or component run once as the
//! container's process (see the crate's documentation).

use sha2::Digest;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use amphi_core::executor::{Executor, PrepareContext};
use amphi_core::{Error, Result};
use oci_spec::runtime::Process;
use wasmtime::component::ResourceTable;
use wasmtime::{InstancePre, Linker, Store, StoreLimits};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::engine::{engine, Kind};
use crate::guest::{add_wasi_p1, compile_error, fail, flavor, store_limits, Flavor, TRAP_EXIT};
use crate::source::ModuleFile;
use crate::Cache;

/// What `prepare` hands to `exec`.
enum Linked {
    Module(InstancePre<P1State>),
    Component(CommandPre<P2State>),
    /// A `wasi:cli/command@0.3` component: its `run` is an async export,
    /// called in the store's event loop.
    ComponentP3(wasmtime_wasi::p3::bindings::CommandPre<P2State>),
    /// A `wasi:http/proxy` component, served on a port.
    Service(Box<crate::function::Function>, u16),
    /// A module in checkpointable form (see [`crate::checkpoint`]).
    Checkpointable(InstancePre<CheckpointState>),
}

/// What a checkpointable container has beyond a plain one.
struct Checkpointing {
    /// The image to continue from (`amphi restore`).
    image: Option<crate::checkpoint::Image>,
    listener: Option<std::os::unix::net::UnixListener>,
    module_sha256: String,
    instrumentation: String,
}

struct CheckpointState {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
    session: crate::checkpoint::guest::Session,
}

impl crate::checkpoint::guest::HasSession for CheckpointState {
    fn session(&mut self) -> &mut crate::checkpoint::guest::Session {
        &mut self.session
    }
}

struct P1State {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
}

struct P2State {
    ctx: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    limits: StoreLimits,
}

/// `wasi:http`'s client for commands, as `wasmtime run -S http` links it:
/// requests go out through the container's network, like its sockets.
impl WasiHttpView for P2State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

impl WasiView for P2State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

pub struct Wasm {
    cache: Cache,
    /// `linux.resources.memory.limit`: also the cap of the guest's memories.
    memory_limit: Option<u64>,
    readonly_root: bool,
    /// Writable mounts under a read-only root: preopened read-write.
    writable: Vec<PathBuf>,
    /// The guest's preopens as [`DIRS_ANNOTATION`] gives them (container
    /// path, the name the guest sees); None: the container's `/` as `/`.
    dirs: Option<Vec<(PathBuf, String)>>,
    linked: Option<Linked>,
    checkpoint: Option<Checkpointing>,
}

impl Wasm {
    pub fn new(cache: Cache, memory_limit: Option<u64>, readonly_root: bool) -> Wasm {
        Wasm {
            cache,
            memory_limit,
            readonly_root,
            writable: Vec::new(),
            dirs: None,
            linked: None,
            checkpoint: None,
        }
    }

    /// Runs the module in checkpointable form; with `image`, continuing
    /// from it.
    pub fn checkpointable(mut self, image: Option<crate::checkpoint::Image>) -> Wasm {
        self.checkpoint = Some(Checkpointing {
            image,
            listener: None,
            module_sha256: String::new(),
            instrumentation: String::new(),
        });
        self
    }

    pub(crate) fn read_module(ctx: &PrepareContext, arg0: &str) -> Result<(PathBuf, ModuleFile)> {
        let path = ctx.process.cwd().join(arg0);
        let bytes = Self::read_module_at(ctx.root_fd, &path, &format!("process.args[0] {arg0:?}"))?;
        Ok((path, bytes))
    }

    /// Map module `path` below `root`, bounded, and only if it is a
    /// regular file (a FIFO would hang the read). `what` names it in errors.
    pub(crate) fn read_module_at(root: BorrowedFd, path: &Path, what: &str) -> Result<ModuleFile> {
        let (f, size) = amphi_core::paths::open_regular_in_root(root, path)
            .map_err(|e| fail(format!("{what}: {e}")))?;
        // Bounded: compiling copies it whole into memory.
        if size > MAX_MODULE {
            return Err(fail(format!(
                "{what}: {size} bytes; modules of at most {MAX_MODULE} bytes are run"
            )));
        }
        ModuleFile::map(f, size).map_err(|e| fail(format!("{what}: {e}")))
    }

    fn wasi(&self, p: &Process) -> Result<WasiCtxBuilder> {
        let mut b = WasiCtxBuilder::new();
        // One guest per process: file I/O may block this thread rather
        // than go to a pool of blocking threads.
        b.inherit_stdio().allow_blocking_current_thread(true);
        // The container's network, as a native process in it has (its own
        // namespace, or the host's when the bundle shares it): wasi:sockets
        // and name lookup, as runwasi's wasmtime shim and `wasmtime run -S
        // inherit-network,allow-ip-name-lookup` give.
        b.inherit_network()
            .allow_tcp(true)
            .allow_udp(true)
            .allow_ip_name_lookup(true);
        b.args(p.args().as_deref().unwrap_or_default());
        let env: Vec<(&str, &str)> = p
            .env()
            .iter()
            .flatten()
            .filter_map(|kv| kv.split_once('='))
            .collect();
        b.envs(&env);
        let perms = if self.readonly_root {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        if let Some(dirs) = &self.dirs {
            for (path, name) in dirs {
                let perms =
                    if self.readonly_root && !self.writable.iter().any(|w| path.starts_with(w)) {
                        FsPerms::ReadOnly
                    } else {
                        FsPerms::ReadWrite
                    };
                b.preopened_dir(path, name, perms).map_err(|e| {
                    fail(format!(
                        "{DIRS_ANNOTATION}: preopen {}: {e}",
                        path.display()
                    ))
                })?;
            }
            return Ok(b);
        }
        // `/` is the container's root by now (after pivot_root); the guest
        // cannot leave a preopen, through `..` or symlinks alike.
        b.preopened_dir("/", "/", perms)
            .map_err(|e| fail(format!("preopen /: {e}")))?;
        // A read-only root with a writable tmpfs or bind on it: the guest
        // writes there as a native process would (wasi-libc resolves a path
        // against the longest matching preopen).
        for dir in self.writable.iter().filter(|d| d.is_dir()) {
            b.preopened_dir(dir, dir.to_string_lossy(), FsPerms::ReadWrite)
                .map_err(|e| fail(format!("preopen mount {}: {e}", dir.display())))?;
        }
        // No preopen for process.cwd: wasi-libc strips "/" and "." to the
        // same empty prefix, so a "." preopen would shadow the root and
        // every absolute path would land in the cwd. Relative paths resolve
        // against "/", as under runwasi and `wasmtime run --dir /`.
        Ok(b)
    }

    fn run(mut self, p: &Process) -> Result<i32> {
        let service = self.linked.take_if(|l| matches!(l, Linked::Service(..)));
        if let Some(Linked::Service(function, port)) = service {
            return Err(crate::service::serve(*function, port, p));
        }
        amphi_core::util::trace::phase("wasm: WASI context");
        let limits = store_limits(self.memory_limit);
        let wasi = self.wasi(p)?;
        let engine = engine(if self.checkpoint.is_some() {
            Kind::Checkpoint
        } else {
            Kind::Command
        });
        amphi_core::util::trace::phase("wasm: instantiate and run");
        // wasmtime-wasi's synchronous API would start a multi-threaded
        // tokio runtime of its own for every guest (worker threads sized
        // from the cgroup's CPU quota); the guest runs on the asynchronous
        // API under a runtime on this thread instead.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| fail(format!("wasm: tokio runtime: {e}")))?;
        let linked = self.linked.expect("prepare ran");
        let status = runtime.block_on(async move {
            match linked {
                Linked::Module(pre) => {
                    let mut wasi = wasi;
                    let mut store = Store::new(
                        engine,
                        P1State {
                            wasi: wasi.build_p1(),
                            limits,
                        },
                    );
                    store.limiter(|s| &mut s.limits);
                    let result = async {
                        let instance = pre.instantiate_async(&mut store).await?;
                        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                        start.call_async(&mut store, ()).await
                    }
                    .await;
                    status_of(result.map(|()| 0))
                }
                Linked::Service(..) => unreachable!("served above"),
                Linked::Checkpointable(pre) => {
                    let plan = self.checkpoint.expect("set with the module");
                    let mut wasi = wasi;
                    let mut store = Store::new(
                        engine,
                        CheckpointState {
                            wasi: wasi.build_p1(),
                            limits,
                            session: crate::checkpoint::guest::Session::new(
                                plan.listener,
                                plan.module_sha256,
                                plan.instrumentation,
                            ),
                        },
                    );
                    store.limiter(|s| &mut s.limits);
                    let result = async {
                        let instance = pre.instantiate_async(&mut store).await?;
                        crate::checkpoint::guest::run(&mut store, instance, plan.image.as_ref())
                            .await
                    }
                    .await;
                    match result {
                        Ok(crate::checkpoint::guest::Outcome::Returned) => 0,
                        // As a native process CRIU dumped: killed.
                        Ok(crate::checkpoint::guest::Outcome::Checkpointed) => 128 + libc::SIGKILL,
                        Err(e) => status_of(Err(e)),
                    }
                }
                Linked::Component(pre) => {
                    let mut store = component_store(engine, wasi, limits);
                    let result = async {
                        let cmd = pre.instantiate_async(&mut store).await?;
                        cmd.wasi_cli_run().call_run(&mut store).await
                    }
                    .await;
                    status_of(result.map(|r| if r.is_ok() { 0 } else { 1 }))
                }
                Linked::ComponentP3(pre) => {
                    let mut store = component_store(engine, wasi, limits);
                    let result = async {
                        let cmd = pre.instantiate_async(&mut store).await?;
                        store
                            .run_concurrent(async |store| cmd.wasi_cli_run().call_run(store).await)
                            .await?
                    }
                    .await;
                    status_of(result.map(|r| if r.is_ok() { 0 } else { 1 }))
                }
            }
        });
        Ok(status)
    }
}

/// A store for a command component, 0.2's or 0.3's.
fn component_store(
    engine: &wasmtime::Engine,
    mut wasi: WasiCtxBuilder,
    limits: StoreLimits,
) -> Store<P2State> {
    let mut store = Store::new(
        engine,
        P2State {
            ctx: wasi.build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            limits,
        },
    );
    store.limiter(|s| &mut s.limits);
    store
}

/// Destinations of the spec's mounts a guest may write to: not read-only,
/// and not the kernel's or the runtime's own (/proc, /sys, /dev).
/// The guest's preopened directories, as `wasmtime run --dir HOST::GUEST`
/// gives them: a comma-separated list of container directories, each
/// `PATH` or `PATH::NAME` (the name the guest sees it by); empty for none
/// at all. Without the annotation the guest gets the container's `/` as `/`.
pub const DIRS_ANNOTATION: &str = "io.github.amphi.wasm.dirs";

/// [`DIRS_ANNOTATION`], each path checked to be a directory inside the
/// rootfs (resolved there, as the guest will see it).
fn guest_dirs(ctx: &PrepareContext) -> Result<Option<Vec<(PathBuf, String)>>> {
    let Some(list) = ctx
        .spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(DIRS_ANNOTATION))
    else {
        return Ok(None);
    };
    let mut dirs = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (path, name) = entry.split_once("::").unwrap_or((entry, entry));
        let bad = |why: &str| fail(format!("annotation {DIRS_ANNOTATION}: {path:?}: {why}"));
        if !path.starts_with('/') || name.is_empty() {
            return Err(bad("give an absolute container path, or PATH::NAME"));
        }
        let fd = amphi_core::paths::open_in_root(
            ctx.root_fd,
            Path::new(path),
            amphi_core::paths::Create::Nothing,
        )
        .map_err(|e| match e {
            Error::Sys { errno, .. } => bad(&format!("{} in the container", errno.desc())),
            e => bad(&e.to_string()),
        })?;
        let st = nix::sys::stat::fstat(&fd).map_err(|e| bad(e.desc()))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(bad("not a directory in the container"));
        }
        dirs.push((PathBuf::from(path), name.to_owned()));
    }
    Ok(Some(dirs))
}

fn writable_mounts(spec: &oci_spec::runtime::Spec) -> Vec<PathBuf> {
    spec.mounts()
        .iter()
        .flatten()
        .filter(|m| {
            let d = m.destination();
            !(d.starts_with("/proc") || d.starts_with("/sys") || d.starts_with("/dev"))
                && d != Path::new("/")
                && !m.options().iter().flatten().any(|o| o == "ro")
        })
        .map(|m| m.destination().clone())
        .collect()
}

/// Requests a wasi:http container service handles at once.
const SERVICE_POOL_SLOTS: u32 = 64;

/// The largest module or component read (a compiled one is larger still).
const MAX_MODULE: u64 = 256 << 20;

fn status_of(result: wasmtime::Result<i32>) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<I32Exit>() {
            Some(I32Exit(code)) => *code,
            None => {
                eprintln!("amphi: wasm guest trapped: {e:?}");
                TRAP_EXIT
            }
        },
    }
}

impl Wasm {
    /// Instruments (or finds in the cache) the module, checks an image to
    /// continue from against it, and binds the init's checkpoint socket.
    fn prepare_checkpointable(
        &mut self,
        ctx: &PrepareContext,
        what: &str,
        bytes: &[u8],
    ) -> Result<()> {
        use crate::checkpoint::{instrument, instrumentation, ANNOTATION};
        let refused = |why: String| {
            fail(format!(
                "{what}: cannot be checkpointed ({ANNOTATION}=true): {why}; drop the annotation \
                 to run it as it is"
            ))
        };
        // A text module is checkpointed as the binary module it stands for;
        // a private copy, so that the image's digest is that of what runs.
        let binary = wat::parse_bytes(bytes)
            .map_err(|e| refused(e.to_string()))?
            .into_owned();
        let bytes = &*binary;
        let module_sha256 = crate::hex(&sha2::Sha256::digest(bytes));
        let instrumentation = instrumentation().map_err(refused)?;
        amphi_core::util::trace::phase("wasm: load instrumented module");
        let module = self
            .cache
            .derived::<wasmtime::Module>(Kind::Checkpoint, bytes.into(), &instrumentation, |m| {
                instrument::instrument(m).map_err(|e| wasmtime::format_err!("{e}"))
            })
            .map_err(|e| refused(format!("{e:#}")))?;
        amphi_core::util::trace::phase("wasm: link");
        let mut linker: Linker<CheckpointState> = Linker::new(engine(Kind::Checkpoint));
        add_wasi_p1(&mut linker, |s| &mut s.wasi)
            .and_then(|_| crate::checkpoint::guest::link(&mut linker))
            .map_err(|e| fail(format!("link WASI: {e:#}")))?;
        let pre = linker.instantiate_pre(&module).map_err(|e| {
            fail(format!(
                "{what}: {e:#}; amphi provides wasi_snapshot_preview1 only"
            ))
        })?;
        let plan = self.checkpoint.as_mut().expect("checked by the caller");
        if let Some(image) = &plan.image {
            let m = &image.manifest;
            if m.module_sha256 != module_sha256 {
                return Err(fail(format!(
                    "--image-path {}: made from the module with SHA-256 {}, and {what} has \
                     {module_sha256}; restore it with the bundle it was taken from",
                    image.dir.display(),
                    m.module_sha256
                )));
            }
            if m.instrumentation != instrumentation {
                return Err(fail(format!(
                    "--image-path {}: made with instrumentation {:?}, and this amphi has {:?}",
                    image.dir.display(),
                    m.instrumentation,
                    instrumentation
                )));
            }
        }
        if let Some(dir) = ctx.state_dir {
            plan.listener = Some(crate::checkpoint::guest::listen(dir)?);
        }
        plan.module_sha256 = module_sha256;
        plan.instrumentation = instrumentation;
        self.linked = Some(Linked::Checkpointable(pre));
        Ok(())
    }
}

impl Executor for Wasm {
    fn inherited_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.cache.raw_fd().into_iter().collect()
    }

    fn keeps_trap_handlers(&self) -> bool {
        crate::engine::trap_handlers_installed()
    }

    fn prepare(&mut self, ctx: &PrepareContext) -> Result<()> {
        let arg0 = ctx.program();
        let (path, bytes) = Self::read_module(ctx, arg0)?;
        let what = format!("process.args[0] {}", path.display());
        let flavor = flavor(&bytes).ok_or_else(|| {
            fail(format!(
                "{what}: not a WebAssembly module or component (no \\0asm header, no .wat text); \
                 drop the wasm annotation to run it natively"
            ))
        })?;
        amphi_core::util::trace::phase("wasm: engine");
        let engine = engine(Kind::Command);
        amphi_core::util::trace::phase("wasm: load module");
        if self.readonly_root {
            self.writable = writable_mounts(ctx.spec);
        }
        self.dirs = guest_dirs(ctx)?;
        if self.checkpoint.is_some() && self.dirs.is_some() {
            return Err(fail(format!(
                "{what}: {DIRS_ANNOTATION} and {}=true together: a checkpointable guest \
                 reopens its files under the container's /; drop one",
                crate::checkpoint::ANNOTATION
            )));
        }
        if crate::preinit::wanted(ctx.spec) && self.checkpoint.is_some() {
            return Err(fail(format!(
                "{what}: {}=true and {}=true together: a checkpointable module \
                 restores its own state; drop one",
                crate::preinit::ANNOTATION,
                crate::checkpoint::ANNOTATION
            )));
        }
        if self.checkpoint.is_some() {
            self.prepare_checkpointable(ctx, &what, &bytes)?;
            self.cache.close();
            return Ok(());
        }
        self.linked =
            Some(match flavor {
                Flavor::Module => {
                    let module = crate::preinit::module(
                        &mut self.cache,
                        Kind::Command,
                        ctx.spec,
                        bytes.source(),
                        self.memory_limit,
                    )
                    .map_err(|e| compile_error(&what, &e, self.memory_limit))?;
                    amphi_core::util::trace::phase("wasm: link");
                    let mut linker: Linker<P1State> = Linker::new(engine);
                    add_wasi_p1(&mut linker, |s| &mut s.wasi)
                        .map_err(|e| fail(format!("link WASI: {e:#}")))?;
                    let pre = linker.instantiate_pre(&module).map_err(|e| {
                        fail(format!(
                            "{what}: {e:#}; amphi provides wasi_snapshot_preview1 only"
                        ))
                    })?;
                    Linked::Module(pre)
                }
                Flavor::Component if crate::service::exports_incoming_handler(&bytes) => {
                    let port = crate::service::port(ctx.spec)?;
                    // The service's instances come from the pooling allocator
                    // of the functions' engine, a slot per request in flight.
                    let cache = std::mem::replace(&mut self.cache, Cache::detached());
                    let mut function = crate::function::Function::new(
                        cache,
                        crate::function::Interface::Http,
                        self.memory_limit,
                        self.readonly_root,
                        Some(SERVICE_POOL_SLOTS),
                    );
                    // The module read above, not read (and hashed) again.
                    function.link(ctx.spec, &path, bytes.source())?;
                    Linked::Service(Box::new(function), port)
                }
                Flavor::Component => {
                    let component = crate::preinit::component(
                        &mut self.cache,
                        Kind::Command,
                        ctx.spec,
                        bytes.source(),
                        self.memory_limit,
                    )
                    .map_err(|e| compile_error(&what, &e, self.memory_limit))?;
                    // Both WASI 0.2 and 0.3, as `wasmtime run` links them: a 0.3
                    // command is run as one, anything else as 0.2's. wasi:http
                    // too, for commands that make requests.
                    let mut linker = wasmtime::component::Linker::<P2State>::new(engine);
                    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
                        .and_then(|()| {
                            wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
                        })
                        .and_then(|()| wasmtime_wasi::p3::add_to_linker(&mut linker))
                        .and_then(|()| wasmtime_wasi_http::p3::add_to_linker(&mut linker))
                        .map_err(|e| fail(format!("link WASI: {e:#}")))?;
                    let pre = linker.instantiate_pre(&component);
                    if let Some(p3) = pre.as_ref().ok().and_then(|pre| {
                        wasmtime_wasi::p3::bindings::CommandPre::new(pre.clone()).ok()
                    }) {
                        self.linked = Some(Linked::ComponentP3(p3));
                        self.cache.close();
                        return Ok(());
                    }
                    let pre = pre.and_then(CommandPre::new).map_err(|e| {
                        let exports: Vec<String> = component
                            .component_type()
                            .exports(engine)
                            .map(|(name, _)| name.to_owned())
                            .collect();
                        fail(format!(
                            "{what}: {e:#} (it exports [{}]); amphi runs components of the \
                             wasi:cli/command (0.2 and 0.3) and wasi:http/proxy worlds",
                            exports.join(", ")
                        ))
                    })?;
                    Linked::Component(pre)
                }
            });
        // The guest gets nothing of the host's, not even a handle it cannot name.
        self.cache.close();
        Ok(())
    }

    fn exec(self: Box<Self>, p: &Process) -> Error {
        stop_on_signals();
        match (*self).run(p) {
            // SAFETY: leave without running the parent's destructors.
            Ok(code) => unsafe { libc::_exit(code) },
            Err(e) => e,
        }
    }
}

/// A guest has no signal handlers of its own; a signal that would end a
/// native process ends it here too, wherever the guest is (a tight loop, a
/// blocking host call). The init is its pid namespace's PID 1, for which the
/// kernel would otherwise drop such signals.
fn stop_on_signals() {
    extern "C" fn stop(sig: libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + sig) }
    }
    for sig in [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGALRM,
    ] {
        // SAFETY: installing a handler that only calls _exit.
        unsafe { libc::signal(sig, stop as *const () as libc::sighandler_t) };
    }
}
