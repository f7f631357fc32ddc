//! Pre-initialization, as Wizer does it (upstream as `wasmtime-wizer`): a
//! module that exports an initialization function has it run once, when
//! amphi compiles it, and its memories and globals after that become the
//! module's initial state. Every instance then starts from the snapshot,
//! mapped copy-on-write from the cached artifact like any module's data,
//! instead of running its own initialization (an interpreter's start, a
//! table built at load).
//!
//! The initialization runs in a sandbox as Wizer's: WASI with no
//! arguments, no environment, no preopened directory and no socket, any
//! other import a trap, the container's memory limit on its memories, and
//! a fuel budget so that one that never returns fails instead of hanging
//! `create`. It runs in the container's init, single-threaded, before
//! the snapshot is compiled and cached under a key of the module and the
//! export run; a failure stores nothing.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use oci_spec::runtime::Spec;
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Config, Engine, Linker, Module, Store, StoreLimits};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wizer::{ComponentInstanceState, InstanceState, SnapshotVal, ValType, Wizer};

use crate::engine::Kind;
use crate::guest::add_wasi_p1;
use crate::source::Source;
use crate::Cache;

/// `io.github.amphi.preinit=true`: pre-initialize the bundle's module
/// (a function's manifest sets it with `preinit = true`).
pub const ANNOTATION: &str = amphi_function::PREINIT_ANNOTATION;

/// The export Wizer runs: its name today, then its older one.
pub const INIT_EXPORTS: [&str; 2] = ["wizer-initialize", "wizer.initialize"];

/// `io.github.amphi.preinit.fuel=N`: how many instructions (wasmtime's
/// fuel) the initialization may run, so that one that never returns fails
/// create instead of hanging it.
pub const FUEL_ANNOTATION: &str = "io.github.amphi.preinit.fuel";

/// The default budget: a couple of minutes of work here, far more than an
/// interpreter's start.
const DEFAULT_FUEL: u64 = 200_000_000_000;

/// The most of the initialization's stderr an error quotes.
const MAX_STDERR: usize = 4 << 10;

pub fn wanted(spec: &Spec) -> bool {
    annotation(spec, ANNOTATION).is_some_and(|v| v == "true")
}

fn annotation<'s>(spec: &'s Spec, name: &str) -> Option<&'s String> {
    spec.annotations().as_ref().and_then(|a| a.get(name))
}

/// The initialization's fuel, from [`FUEL_ANNOTATION`] or the default.
pub fn fuel(spec: &Spec) -> Result<u64, String> {
    match annotation(spec, FUEL_ANNOTATION) {
        None => Ok(DEFAULT_FUEL),
        Some(v) => v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            format!("{FUEL_ANNOTATION}={v:?}: give a positive number of instructions")
        }),
    }
}

/// The initialization export of `bytes`, a core module in binary or text;
/// None when it has none. Read up to the export section only: it comes
/// before the code, which a module's start need not walk.
fn init_export(bytes: &[u8]) -> Option<&'static str> {
    let bytes = wat::parse_bytes(bytes).ok()?;
    for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
        match payload.ok()? {
            wasmparser::Payload::ExportSection(exports) => {
                let names: Vec<&str> = exports
                    .into_iter()
                    .filter_map(|e| Some(e.ok()?.name))
                    .collect();
                return INIT_EXPORTS.into_iter().find(|name| names.contains(name));
            }
            wasmparser::Payload::CodeSectionStart { .. } => return None,
            _ => {}
        }
    }
    None
}

/// The initialization export of `bytes`, a component: a function of its
/// own (not of a component or module inside it) named `wizer-initialize`.
fn component_init_export(bytes: &[u8]) -> Option<&'static str> {
    const EXPORT: &str = INIT_EXPORTS[0];
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.ok()? {
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) if depth > 0 => depth -= 1,
            wasmparser::Payload::ComponentExportSection(exports) if depth == 0 => {
                let found = exports.into_iter().any(|e| {
                    e.is_ok_and(|e| {
                        e.name.name == EXPORT && e.kind == wasmparser::ComponentExternalKind::Func
                    })
                });
                if found {
                    return Some(EXPORT);
                }
            }
            _ => {}
        }
    }
    None
}

/// The core module of `bytes` for guests of `kind`, from the cache or
/// compiled into it: pre-initialized when `spec` asks, under a key of the
/// module and the export run, so a second start runs no initialization.
pub(crate) fn module(
    cache: &mut Cache,
    kind: Kind,
    spec: &Spec,
    source: Source,
    memory_limit: Option<u64>,
) -> wasmtime::Result<Module> {
    if !wanted(spec) {
        return cache.module(kind, source);
    }
    let export = init_export(source.bytes).ok_or_else(|| {
        wasmtime::format_err!(
            "{ANNOTATION}=true: the module exports no initialization function ({}); \
             export one, or drop the annotation",
            INIT_EXPORTS.join(" or ")
        )
    })?;
    let fuel = fuel(spec).map_err(|e| wasmtime::format_err!("{e}"))?;
    cache.derived(kind, source, &format!("preinit:{export}"), |original| {
        amphi_core::util::trace::phase("wasm: pre-initialize");
        snapshot(original, export, memory_limit, fuel)
            .map_err(|e| e.context(format!("pre-initialization ({ANNOTATION}=true)")))
    })
}

/// [`module`] for a component: its `wizer-initialize` export run once,
/// the component snapshotted (Wizer's component support).
pub(crate) fn component(
    cache: &mut Cache,
    kind: Kind,
    spec: &Spec,
    source: Source,
    memory_limit: Option<u64>,
) -> wasmtime::Result<Component> {
    if !wanted(spec) {
        return cache.component(kind, source);
    }
    let binary = wat::parse_bytes(source.bytes)?;
    let export = component_init_export(&binary).ok_or_else(|| {
        wasmtime::format_err!(
            "{ANNOTATION}=true: the component exports no initialization function \
             (`{}: func()`); export one, or drop the annotation",
            INIT_EXPORTS[0]
        )
    })?;
    let fuel = fuel(spec).map_err(|e| wasmtime::format_err!("{e}"))?;
    cache.derived(kind, source, &format!("preinit:{export}"), |original| {
        amphi_core::util::trace::phase("wasm: pre-initialize");
        snapshot_component(&wat::parse_bytes(original)?, export, memory_limit, fuel)
            .map_err(|e| e.context(format!("pre-initialization ({ANNOTATION}=true)")))
    })
}

struct Sandbox {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
}

/// A component's sandbox: WASI 0.2 with nothing granted.
struct ComponentSandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for ComponentSandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The sandbox's engine: fuel, so an initialization that never returns
/// fails; compiled on this thread.
fn sandbox_engine() -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config.consume_fuel(true).parallel_compilation(false);
    Engine::new(&config)
}

/// Give back what compiling the instrumented guest freed: the guest's
/// memory cap is what the limit leaves after this process's resident
/// memory, and a compile's freed heap (hundreds of MB for an
/// interpreter) would otherwise count as held.
fn trim() {
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe { libc::malloc_trim(0) };
}

/// One initialization's run: the export, the memory share and fuel it
/// runs under, and its stderr, kept to quote in an error.
struct Run<'a> {
    export: &'a str,
    memory_limit: Option<u64>,
    fuel: u64,
    stderr: MemoryOutputPipe,
    runtime: tokio::runtime::Runtime,
}

impl<'a> Run<'a> {
    fn new(export: &'a str, memory_limit: Option<u64>, fuel: u64) -> wasmtime::Result<Run<'a>> {
        Ok(Run {
            export,
            memory_limit,
            fuel,
            stderr: MemoryOutputPipe::new(MAX_STDERR),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    /// WASI with nothing granted: no arguments, environment, directories
    /// or sockets; stderr is kept.
    fn wasi(&self) -> WasiCtxBuilder {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stderr(self.stderr.clone())
            .allow_blocking_current_thread(true);
        wasi
    }

    /// A store of `data` (made with the run's limits) under its fuel. A
    /// memory that cannot grow fails the initialization (with its reason)
    /// instead of leaving a state the guest may not expect.
    fn store<T: 'static>(
        &self,
        engine: &Engine,
        data: impl FnOnce(StoreLimits) -> T,
        limits: fn(&mut T) -> &mut StoreLimits,
    ) -> wasmtime::Result<Store<T>> {
        let store_limits = crate::guest::store_limits_builder(self.memory_limit)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(engine, data(store_limits));
        store.limiter(move |s| limits(s));
        store.set_fuel(self.fuel)?;
        Ok(store)
    }

    /// Drive `init` to its end on this thread; a failure says why.
    fn run<T, R>(
        &self,
        store: &mut Store<T>,
        init: impl AsyncFnOnce(&mut Store<T>) -> wasmtime::Result<R>,
    ) -> wasmtime::Result<R> {
        let result = self.runtime.block_on(init(store));
        let out_of_fuel = store.get_fuel().is_ok_and(|f| f == 0);
        result.map_err(|e| self.failure(&e, out_of_fuel))
    }

    /// Why the initialization failed, in one line: the trap or error
    /// itself, without the wasm backtrace (the guest's own frames, which
    /// the export's name stands for), and what it wrote to stderr.
    fn failure(&self, e: &wasmtime::Error, out_of_fuel: bool) -> wasmtime::Error {
        let Run {
            export,
            memory_limit,
            fuel,
            ..
        } = self;
        let said = String::from_utf8_lossy(&self.stderr.contents())
            .trim()
            .to_owned();
        let why = if out_of_fuel {
            format!(
                "`{export}` ran {fuel} instructions without returning (raise {FUEL_ANNOTATION})"
            )
        } else {
            let cause = e.root_cause().to_string();
            match memory_limit.filter(|_| cause.contains("growing memory")) {
                Some(limit) => format!(
                    "`{export}` failed: {cause}, past the guest's share of \
                     linux.resources.memory.limit ({} MiB)",
                    limit >> 20
                ),
                None => format!("`{export}` failed: {cause}"),
            }
        };
        match said.is_empty() {
            true => wasmtime::format_err!("{why}"),
            false => wasmtime::format_err!("{why}; it wrote to stderr: {said}"),
        }
    }
}

/// Run component `bytes`' initialization `export` in the sandbox and
/// return the component with the state it left.
fn snapshot_component(
    bytes: &[u8],
    export: &str,
    memory_limit: Option<u64>,
    fuel: u64,
) -> wasmtime::Result<Vec<u8>> {
    let mut wizer = Wizer::new();
    // Kept: the component lifts the export from its core instance, which
    // a snapshot without it would no longer provide.
    wizer.init_func(export).keep_init_func(true);
    let (cx, instrumented) = wizer.instrument_component(bytes)?;
    let engine = sandbox_engine()?;
    let component = Component::new(&engine, &instrumented)?;
    trim();
    let mut linker = wasmtime::component::Linker::<ComponentSandbox>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    linker.define_unknown_imports_as_traps(&component)?;
    let run = Run::new(export, memory_limit, fuel)?;
    let wasi = run.wasi().build();
    let mut store = run.store(
        &engine,
        |limits| ComponentSandbox {
            wasi,
            table: ResourceTable::new(),
            limits,
        },
        |s| &mut s.limits,
    )?;
    let instance = run.run(&mut store, async |store| {
        let instance = linker.instantiate_async(&mut *store, &component).await?;
        instance
            .get_typed_func::<(), ()>(&mut *store, export)?
            .call_async(&mut *store, ())
            .await?;
        Ok(instance)
    })?;
    let mut state = ComponentInstance {
        store: &mut store,
        instance,
    };
    run.runtime
        .block_on(wizer.snapshot_component(&cx, &mut state))
}

/// Run `bytes`' initialization `export` in the sandbox and return the
/// module with the state it left.
fn snapshot(
    bytes: &[u8],
    export: &str,
    memory_limit: Option<u64>,
    fuel: u64,
) -> wasmtime::Result<Vec<u8>> {
    let bytes = wat::parse_bytes(bytes)?;
    let mut wizer = Wizer::new();
    wizer.init_func(export);
    let (cx, instrumented) = wizer.instrument(&bytes)?;

    let engine = sandbox_engine()?;
    let module = Module::new(&engine, &instrumented)?;
    trim();
    let mut linker: Linker<Sandbox> = Linker::new(&engine);
    add_wasi_p1(&mut linker, |s| &mut s.wasi)?;
    linker.define_unknown_imports_as_traps(&module)?;
    let run = Run::new(export, memory_limit, fuel)?;
    let wasi = run.wasi().build_p1();
    let mut store = run.store(
        &engine,
        |limits| Sandbox { wasi, limits },
        |s| &mut s.limits,
    )?;
    let instance = run.run(&mut store, async |store| {
        let instance = linker.instantiate_async(&mut *store, &module).await?;
        // A reactor's own initialization first, as Wizer does.
        if let Ok(reactor) = instance.get_typed_func::<(), ()>(&mut *store, "_initialize") {
            reactor.call_async(&mut *store, ()).await?;
        }
        instance
            .get_typed_func::<(), ()>(&mut *store, export)?
            .call_async(&mut *store, ())
            .await?;
        Ok(instance)
    })?;
    let mut state = Instance {
        store: &mut store,
        instance,
    };
    ready(wizer.snapshot(&cx, &mut state))
}

/// The instance as Wizer reads it.
struct Instance<'a> {
    store: &'a mut Store<Sandbox>,
    instance: wasmtime::Instance,
}

impl InstanceState for Instance<'_> {
    fn global_get(&mut self, name: &str, _: ValType) -> impl Future<Output = SnapshotVal> + Send {
        let global = self
            .instance
            .get_global(&mut *self.store, name)
            .expect("wizer's instrumentation exports every global");
        let value = match global.get(&mut *self.store) {
            wasmtime::Val::I32(x) => SnapshotVal::I32(x),
            wasmtime::Val::I64(x) => SnapshotVal::I64(x),
            wasmtime::Val::F32(x) => SnapshotVal::F32(x),
            wasmtime::Val::F64(x) => SnapshotVal::F64(x),
            wasmtime::Val::V128(x) => SnapshotVal::V128(x.as_u128()),
            other => panic!("wizer snapshots numeric globals only, not {other:?}"),
        };
        std::future::ready(value)
    }

    fn memory_contents(
        &mut self,
        name: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) -> impl Future<Output = ()> + Send {
        let memory = self
            .instance
            .get_memory(&mut *self.store, name)
            .expect("wizer's instrumentation exports every memory");
        contents(memory.data(&*self.store));
        std::future::ready(())
    }
}

/// A component instance as Wizer reads it: through the accessor
/// functions its instrumentation exported.
struct ComponentInstance<'a> {
    store: &'a mut Store<ComponentSandbox>,
    instance: wasmtime::component::Instance,
}

impl ComponentInstance<'_> {
    async fn call<R: wasmtime::component::Lift + 'static, T>(
        &mut self,
        instance: &str,
        func: &str,
        value: impl FnOnce(&Store<ComponentSandbox>, R) -> T,
    ) -> T {
        let (_, within) = self
            .instance
            .get_export(&mut *self.store, None, instance)
            .expect("wizer's instrumentation exports its accessors");
        let (_, index) = self
            .instance
            .get_export(&mut *self.store, Some(&within), func)
            .expect("wizer's instrumentation exports its accessors");
        let f = self
            .instance
            .get_typed_func::<(), (R,)>(&mut *self.store, index)
            .expect("wizer's accessors have the types it gives them");
        let (r,) = f
            .call_async(&mut *self.store, ())
            .await
            .expect("wizer's accessors only read");
        value(self.store, r)
    }
}

impl ComponentInstanceState for ComponentInstance<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        self.call(
            instance,
            func,
            |store, list: wasmtime::component::WasmList<u8>| contents(list.as_le_slice(store)),
        )
        .await
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func, |_, r| r).await
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func, |_, r| r).await
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call(instance, func, |_, r: f32| r.to_bits()).await
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call(instance, func, |_, r: f64| r.to_bits()).await
    }
}

/// The value of a future that does not wait: Wizer's snapshot is async
/// only for runtimes whose reads are.
fn ready<T>(f: impl Future<Output = T>) -> T {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(t) => t,
        Poll::Pending => unreachable!("the snapshot's reads are all ready"),
    }
}
