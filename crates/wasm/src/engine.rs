//! The two wasmtime engines: one runs a container's command, one runs
//! `amphi serve`'s function invocations (epoch interruption, async and,
//! for a long-lived envelope, the pooling allocator: its compiled code
//! differs, so containers run by `amphi run` pay for none of that).
//!
//! Both start from wasmtime's own defaults, the configuration `wasmtime
//! run` uses, so a module that runs there runs here: every proposal the
//! pinned wasmtime enables by default (exceptions, GC and typed function
//! references, tail calls, SIMD and relaxed SIMD, threads, memory64,
//! multi-memory, wide arithmetic, ...) given the cargo features amphi
//! builds it with, which are the CLI's (the tests below check both against
//! the CLI's own option parser, `wasmtime-cli-flags` of the same version).
//! The checkpoint engine alone also lets modules define a shared memory:
//! its instrumentation's flag is one (`checkpoint/instrument.rs`).
//!
//! The engines that run guests never compile in parallel: they live in
//! the container's init, whose credentials and capabilities are per
//! thread until it drops them. Compiling happens in a helper process
//! with an engine of the same configuration that may use every core.

use std::sync::OnceLock;

use wasmtime::{Config, Engine};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A container's process (`amphi run`, the shim).
    Command,
    /// An invocation of `amphi serve`.
    Function,
    /// A container's process instrumented for checkpoints (its module
    /// polls at loop back-edges once the runtime raises a flag in a shared
    /// memory of the instrumentation's).
    Checkpoint,
}

/// Instance slots of the pooling allocator for function envelopes, when
/// they use one: set by the first function prepared, before the engine
/// exists.
pub(crate) static POOL_SLOTS: OnceLock<Option<u32>> = OnceLock::new();

pub(crate) fn config(kind: Kind) -> Config {
    let mut config = Config::new();
    if kind == Kind::Checkpoint {
        config.shared_memory(true);
    }
    if kind == Kind::Function {
        config.epoch_interruption(true);
        if let Some(slots) = POOL_SLOTS.get().copied().flatten() {
            let mut pool = wasmtime::PoolingAllocationConfig::default();
            // A component holds a few core instances, memories and tables
            // (its adapters): room for that many per slot. A freed slot is
            // decommitted (wasmtime's default), not kept resident. With
            // `linear_memory_keep_resident` (8 MiB) and `PAGEMAP_SCAN` the
            // Python function's 269 page faults a request fall to 26 and a
            // warm request takes 1.33 ms instead of 1.6 (CPU 1.44 ms
            // instead of 1.73), but every free copies back each page any
            // earlier request wrote (the scan reports every private page
            // as written without userfaultfd write-protection): 4 to 8 MB,
            // where one request writes about 1 MB. And the scan's
            // `/proc/self/pagemap` would have to be the envelope's own,
            // which its init cannot open once it is in its user namespace
            // and not dumpable (EACCES): its parent would open it and pass
            // it in.
            pool.total_component_instances(slots)
                .total_core_instances(slots * 8)
                .total_memories(slots * 4)
                .total_tables(slots * 4)
                .total_stacks(slots);
            // Nothing is kept resident, so the scan has nothing to do; and
            // its file, opened once per process, would be the keeper's in
            // every envelope cloned from a keeper that loaded a module.
            pool.pagemap_scan(wasmtime::Enabled::No);
            config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        }
    }
    config
}

static COMMAND: OnceLock<Engine> = OnceLock::new();
static FUNCTION: OnceLock<Engine> = OnceLock::new();
static CHECKPOINT: OnceLock<Engine> = OnceLock::new();

/// Whether this process made an engine, and with it installed wasmtime's
/// handlers of the signals a guest's fault raises (once per process: a
/// process cloned from this one has them only if its init keeps them).
pub fn trap_handlers_installed() -> bool {
    [&COMMAND, &FUNCTION, &CHECKPOINT]
        .iter()
        .any(|cell| cell.get().is_some())
}

/// The engine guests of `kind` run on, created on first use so a native
/// container never pays for one.
pub fn engine(kind: Kind) -> &'static Engine {
    let cell = match kind {
        Kind::Command => &COMMAND,
        Kind::Function => &FUNCTION,
        Kind::Checkpoint => &CHECKPOINT,
    };
    cell.get_or_init(|| {
        let mut config = config(kind);
        config.parallel_compilation(false);
        Engine::new(&config).expect("wasmtime's default config is valid")
    })
}

/// An engine whose artifacts [`engine`] loads, compiling on every core the
/// process may use (the cgroup's cpu quota and cpuset included). Only for
/// a process that may have threads: the compile helper, or a test.
pub(crate) fn compiling_engine(kind: Kind) -> wasmtime::Result<Engine> {
    Engine::new(&config(kind))
}

/// A proposal the wasmtime CLI leaves off by default is off here too; a
/// module that needs one fails validation or translation with wasmparser's
/// words ("... support is not enabled", "... feature required for ..."),
/// which name the proposal but not what to do.
pub(crate) fn explain(error: &wasmtime::Error) -> Option<&'static str> {
    let text = format!("{error:#}");
    [
        "not enabled",
        "not supported without",
        "proposal must be enabled",
        "feature required for",
    ]
    .iter()
    .any(|phrase| text.contains(phrase))
    .then_some(
        "the proposal is off in the wasmtime CLI's defaults too, and amphi enables only those",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime_cli_flags::CommonOptions;

    /// What `wasmtime run` configures when given no option.
    fn cli_defaults() -> Engine {
        use clap::Parser;
        let mut options = CommonOptions::try_parse_from(["wasmtime"]).unwrap();
        Engine::new(&options.config(None).unwrap()).unwrap()
    }

    #[test]
    fn the_engines_enable_what_the_wasmtime_cli_enables() {
        let cli = cli_defaults().get_wasm_features();
        for kind in [Kind::Command, Kind::Function, Kind::Checkpoint] {
            let ours = engine(kind).get_wasm_features();
            assert_eq!(
                ours,
                cli,
                "{kind:?}: amphi enables {:?} the CLI does not, and lacks {:?}",
                ours - cli,
                cli - ours
            );
            assert_eq!(compiling_engine(kind).unwrap().get_wasm_features(), cli);
        }
    }

    /// The proposals a wasmtime built with its default cargo features
    /// turns on (wasmtime's `Config::features`): a feature amphi's
    /// manifest lacks would leave one off in both engines above alike.
    #[test]
    fn the_cargo_features_are_the_clis() {
        use wasmtime::WasmFeatures as F;
        let ours = engine(Kind::Command).get_wasm_features();
        for (feature, flag) in [
            ("gc", F::GC_TYPES),
            ("gc", F::EXCEPTIONS),
            ("threads", F::THREADS),
            ("component-model", F::COMPONENT_MODEL),
            ("component-model-async", F::CM_ASYNC),
        ] {
            assert!(
                ours.contains(flag),
                "wasmtime's cargo feature {feature:?} is off"
            );
        }
        assert!(ours.contains(F::WASM3), "{ours:?}");
    }
}
