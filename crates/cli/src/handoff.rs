//! `amphi`'s engine: none. What needs wasmtime is handed to `amphi-wasm`
//! by re-executing this command line there, before anything of the
//! container exists, so `amphi-wasm` does the whole command as if it had
//! been called. Which bundles are wasm is decided here, without the
//! engine, by the same rules ([`amphi_wasm::detect`]).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use amphi_core::executor::{CheckpointOptions, Executor, Handler, Verdict};
use amphi_core::state::ContainerState;
use anyhow::Result;
use oci_spec::runtime::Spec;

use crate::commands::{serve, wasm_cache, Ctx};

/// The binary with the engine in, installed beside `amphi`.
pub const AMPHI_WASM: &str = "amphi-wasm";

pub struct HandOff;

impl crate::Engine for HandOff {
    fn handlers(&self, _: &amphi_wasm::CacheDir) -> Vec<Box<dyn Handler>> {
        vec![Box::new(WasmHandOff), Box::new(amphi_native::Handler)]
    }

    fn serve(&self, _: &serve::Args, _: &Ctx) -> Result<ExitCode> {
        Err(hand_off("amphi serve").into())
    }

    fn wasm_cache(&self, _: &wasm_cache::Args, _: &Ctx) -> Result<ExitCode> {
        Err(hand_off("amphi wasm-cache").into())
    }
}

/// The wasm handler's seat: it takes what the wasm handler takes and, at
/// the first question only an engine can answer, hands the command over.
struct WasmHandOff;

impl Handler for WasmHandOff {
    fn name(&self) -> &'static str {
        amphi_wasm::detect::EXECUTOR_NAME
    }

    fn can_handle(&self, spec: &Spec, rootfs: &Path) -> Verdict {
        amphi_wasm::detect::verdict(spec, rootfs)
    }

    fn executor(&self, _: &str, _: &Spec) -> amphi_core::Result<Box<dyn Executor>> {
        Err(hand_off("a WebAssembly workload"))
    }

    fn checkpoint(
        &self,
        _: &ContainerState,
        _: &Path,
        _: &CheckpointOptions,
    ) -> amphi_core::Result<()> {
        Err(hand_off("a WebAssembly checkpoint"))
    }

    fn restoring_executor(
        &self,
        _: &str,
        _: &Spec,
        _: &Path,
    ) -> amphi_core::Result<Box<dyn Executor>> {
        Err(hand_off("a WebAssembly restore"))
    }
}

/// Re-executes this process's command line as `amphi-wasm`, with the same
/// arguments, environment, fds and signal mask (a signal already pending
/// stays pending); returns only if that fails, with what to do.
fn hand_off(needs: &str) -> amphi_core::Error {
    amphi_core::util::trace::phase("hand off to amphi-wasm");
    let binary = match beside_this_binary() {
        Ok(binary) => binary,
        Err(e) => {
            return amphi_core::Error::Unsupported(format!(
                "{needs} needs {AMPHI_WASM} beside amphi, and /proc/self/exe is unreadable: {e}"
            ))
        }
    };
    let args: Vec<CString> = std::iter::once(binary.as_os_str().to_owned())
        .chain(std::env::args_os().skip(1))
        .map(|a| CString::new(a.as_bytes()).expect("arguments have no NUL"))
        .collect();
    let path = CString::new(binary.as_os_str().as_bytes()).expect("a path has no NUL");
    let Err(errno) = nix::unistd::execv(&path, &args);
    amphi_core::Error::Unsupported(format!(
        "{needs} needs {}: {errno} (install amphi-wasm beside amphi, as scripts/install.sh does)",
        binary.display()
    ))
}

/// `amphi-wasm` in the directory of the running `amphi` (its real path,
/// so a symlink to amphi finds the binary beside the real one).
fn beside_this_binary() -> std::io::Result<PathBuf> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    Ok(exe.with_file_name(AMPHI_WASM))
}
