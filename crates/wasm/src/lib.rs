//! amphi's WebAssembly executor: a core module (WASI preview 1) or a
//! component (WASI 0.2 `wasi:cli/command`) runs on wasmtime inside the
//! container's init process, so it has the container's namespaces, cgroup
//! and rootfs like any native workload.
//!
//! [`Handler`] takes the bundles [`detect`] calls wasm. `prepare` (before
//! pivot_root) reads the module from the rootfs, loads its compiled form
//! from a host-side cache or compiles and caches it, and links it against
//! WASI, so that `start` pays neither compile nor link.
//!
//! Exit status: `proc_exit(N)` and `wasi:cli/exit` give N; returning from
//! `_start` gives 0; a trap gives 134 with the trap on stderr; a signal S
//! that would end a native process (TERM, INT, HUP, ...) ends the guest at
//! once with 128+S, even in a loop that never calls the host.
//!
//! Without the `engine` feature only [`detect`] is built (the fuzz target
//! takes it alone).

pub mod detect;

/// Where the compiled modules' cache is and how much it may hold (a
/// frontend without the engine passes it on to the binary with one).
#[derive(Clone, Debug)]
pub struct CacheDir {
    pub path: std::path::PathBuf,
    /// The bytes of artifacts kept (`--wasm-cache-max`).
    pub max: u64,
}

/// The wasmtime release amphi is built with (pinned in Cargo.toml).
pub const WASMTIME_VERSION: &str = "50.0.1";

#[cfg(test)]
#[test]
fn the_version_matches_the_pin() {
    let manifest = include_str!("../Cargo.toml");
    assert!(manifest.contains(&format!("wasmtime = {{ version = \"={WASMTIME_VERSION}\"")));
}

#[cfg(feature = "engine")]
pub mod cache;
#[cfg(feature = "engine")]
pub mod checkpoint;
#[cfg(feature = "engine")]
mod compile;
#[cfg(feature = "engine")]
pub mod engine;
#[cfg(feature = "engine")]
mod executor;
#[cfg(feature = "engine")]
pub mod function;
#[cfg(feature = "engine")]
mod guest;
#[cfg(feature = "engine")]
pub mod outbound;
#[cfg(feature = "engine")]
pub mod preinit;
#[cfg(feature = "engine")]
pub mod service;
#[cfg(feature = "engine")]
pub mod source;

#[cfg(feature = "engine")]
pub use cache::Cache;
#[cfg(feature = "engine")]
pub use compile::CompilerKilled;
#[cfg(feature = "engine")]
pub use executor::*;
#[cfg(feature = "engine")]
pub use guest::{flavor, guest_memory_cap, Flavor, RUNTIME_HEADROOM, TRAP_EXIT};

#[cfg(feature = "engine")]
pub use handler::Handler;

/// Lower-case hex of a digest, as artifact names and sums spell it.
#[cfg(feature = "engine")]
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(feature = "engine")]
mod handler {
    use amphi_core::executor::{Executor, Verdict};
    use amphi_core::Result;
    use oci_spec::runtime::Spec;

    use crate::{CacheDir, Wasm as Executor_};

    /// Runs the bundles [`crate::detect`] calls wasm, with compiled
    /// modules cached in one directory.
    pub struct Handler {
        cache: CacheDir,
    }

    impl Handler {
        pub fn new(cache: CacheDir) -> Handler {
            Handler { cache }
        }

        fn plain(&self, spec: &Spec) -> Executor_ {
            let memory_limit = spec
                .linux()
                .as_ref()
                .and_then(|l| l.resources().as_ref())
                .and_then(|r| r.memory().as_ref())
                .and_then(|m| m.limit())
                .and_then(|l| u64::try_from(l).ok().filter(|l| *l > 0));
            let readonly = spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false);
            Executor_::new(self.cache.open(), memory_limit, readonly)
        }
    }

    impl amphi_core::executor::Handler for Handler {
        fn name(&self) -> &'static str {
            crate::detect::EXECUTOR_NAME
        }

        fn can_handle(&self, spec: &Spec, rootfs: &std::path::Path) -> Verdict {
            crate::detect::verdict(spec, rootfs)
        }

        fn executor(&self, _id: &str, spec: &Spec) -> Result<Box<dyn Executor>> {
            let executor = self.plain(spec);
            Ok(Box::new(if crate::checkpoint::wanted(spec) {
                executor.checkpointable(None)
            } else {
                executor
            }))
        }

        fn checkpoint(
            &self,
            state: &amphi_core::state::ContainerState,
            state_dir: &std::path::Path,
            o: &amphi_core::executor::CheckpointOptions,
        ) -> Result<()> {
            if o.pre_dump || o.parent_path.is_some() {
                return Err(amphi_core::Error::Unsupported(
                    "--pre-dump and --parent-path: a wasm image is always whole (its memory's \
                     non-zero pages); checkpoint without them"
                        .into(),
                ));
            }
            if !crate::checkpoint::wanted(&state.spec()?)
                && !state_dir.join(crate::checkpoint::SOCKET).exists()
            {
                return Err(amphi_core::Error::Unsupported(format!(
                    "container {}: its bundle lacks the annotation {}=true, which runs the \
                     module in checkpointable form; create it with that annotation",
                    state.id,
                    crate::checkpoint::ANNOTATION
                )));
            }
            crate::checkpoint::checkpoint(state_dir, &o.image_path, o.leave_running)
                .map_err(|e| amphi_core::Error::Init(format!("container {}: {e}", state.id)))
        }

        fn restoring_executor(
            &self,
            _id: &str,
            spec: &Spec,
            image: &std::path::Path,
        ) -> Result<Box<dyn Executor>> {
            let image =
                crate::checkpoint::Image::load(image).map_err(amphi_core::Error::Unsupported)?;
            Ok(Box::new(self.plain(spec).checkpointable(Some(image))))
        }
    }
}
