//! What every guest is made of, whether it runs once as a container's
//! process, as a container service or as a function: its flavor, its
//! store's limits, its WASI preview 1 imports, and how its failures read.

use amphi_core::Error;
use wasmtime::{Linker, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::I32Exit;

/// Exit status of a guest that trapped (as for a native abort).
pub const TRAP_EXIT: i32 = 134;

pub(crate) fn fail(what: impl std::fmt::Display) -> Error {
    Error::Init(what.to_string())
}

/// Why `what` could not be compiled, and what to do about it.
pub(crate) fn compile_error(what: &str, e: &wasmtime::Error, memory_limit: Option<u64>) -> Error {
    if let Some(killed) = e.downcast_ref::<crate::CompilerKilled>() {
        let limit = match memory_limit {
            Some(limit) => format!(
                "compiling it needs more memory than linux.resources.memory.limit allows ({} MiB)",
                limit >> 20
            ),
            None => "compiling it ran out of memory".to_owned(),
        };
        return fail(format!(
            "{what}: {limit}: {killed}; raise the limit, or start it once with a larger one \
             (the compiled module is cached for the containers after it)"
        ));
    }
    match crate::engine::explain(e) {
        Some(why) => fail(format!("{what}: {e:#} ({why})")),
        None => fail(format!("{what}: {e:#}")),
    }
}

/// A core module or a component, told apart by the header's layer field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Module,
    Component,
}

pub fn flavor(bytes: &[u8]) -> Option<Flavor> {
    if bytes.starts_with(b"\0asm") && bytes.len() >= 8 {
        return match bytes[6..8] {
            [0, 0] => Some(Flavor::Module),
            [1, 0] => Some(Flavor::Component),
            _ => None,
        };
    }
    let text = std::str::from_utf8(bytes).ok()?.trim_start();
    // Skip leading ;; comments of a .wat file.
    let body = text
        .lines()
        .map(str::trim_start)
        .find(|l| !l.is_empty() && !l.starts_with(";;"))?;
    if body.starts_with("(component") {
        Some(Flavor::Component)
    } else if body.starts_with("(module") {
        Some(Flavor::Module)
    } else {
        None
    }
}

/// Limits of a guest's store, computed when it is instantiated (the cap
/// depends on what the runtime holds by then). Tables live in the runtime's
/// own memory (8 bytes an element): a guest that grows them without bound
/// fails its table.grow, as one that grows memory past the cap fails its
/// memory.grow.
pub(crate) fn store_limits(memory_limit: Option<u64>) -> StoreLimits {
    store_limits_builder(memory_limit).build()
}

pub(crate) fn store_limits_builder(memory_limit: Option<u64>) -> StoreLimitsBuilder {
    let b = StoreLimitsBuilder::new().table_elements(MAX_TABLE_ELEMENTS);
    match memory_limit {
        Some(limit) => b.memory_size(guest_memory_cap(limit, anon_rss()) as usize),
        None => b,
    }
}

/// Room kept in the cgroup for the runtime around the guest: wasmtime's own
/// allocations while running, WASI buffers, stacks and page tables.
pub const RUNTIME_HEADROOM: u64 = 16 << 20;

/// The most elements a guest's tables may hold together (8 MiB of them).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// The guest shares the cgroup with the runtime that hosts it, so its
/// memories get what the limit leaves after the runtime's own anonymous
/// memory and a headroom: growth past that fails inside the guest (an
/// allocation failure it can handle) instead of the cgroup's OOM killer
/// ending the whole container.
pub fn guest_memory_cap(limit: u64, runtime_anon: u64) -> u64 {
    limit.saturating_sub(runtime_anon + RUNTIME_HEADROOM)
}

/// This process's anonymous resident memory (what the cgroup charges it),
/// read at most once per [`ANON_RSS_FRESH`]: a function worker makes
/// thousands of stores a second, and reading /proc/self/status for each
/// cost more than its guest ran (the cap is a margin below the cgroup's
/// limit, which stays the hard bound).
fn anon_rss() -> u64 {
    static LAST: std::sync::Mutex<Option<(std::time::Instant, u64)>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, rss)) = *last {
        if at.elapsed() < ANON_RSS_FRESH {
            return rss;
        }
    }
    let rss = read_anon_rss();
    *last = Some((std::time::Instant::now(), rss));
    rss
}

const ANON_RSS_FRESH: std::time::Duration = std::time::Duration::from_millis(20);

fn read_anon_rss() -> u64 {
    amphi_core::procfs::handle()
        .ok()
        .and_then(|p| p.self_status_number("RssAnon"))
        .map_or(0, |kib| kib * 1024)
}

/// WASI preview 1, with `proc_exit` taking any status. wasmtime-wasi
/// refuses 126 and up (its CLI's shell convention) with an error that
/// would read as a trap, but the status is the guest's own (every
/// AssemblyScript `abort()` is `proc_exit(255)`): 0 to 255 is the
/// container's exit status, as `exit(N)` is a native process's; a larger
/// one, which no process status can hold, is 1 with the status named.
pub(crate) fn add_wasi_p1<T: Send + 'static>(
    linker: &mut Linker<T>,
    wasi: fn(&mut T) -> &mut WasiP1Ctx,
) -> wasmtime::Result<()> {
    wasmtime_wasi::p1::add_to_linker_async(linker, wasi)?;
    linker.allow_shadowing(true);
    let shadowed = linker
        .func_wrap(
            "wasi_snapshot_preview1",
            "proc_exit",
            |status: i32| -> wasmtime::Result<()> {
                let status = status as u32;
                if status > 255 {
                    eprintln!(
                    "amphi: wasm guest exited with status {status}, beyond 0..=255: exit status 1"
                );
                    return Err(I32Exit(1).into());
                }
                Err(I32Exit(status as i32).into())
            },
        )
        .map(drop);
    linker.allow_shadowing(false);
    shadowed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_cap_leaves_room_for_the_runtime() {
        assert_eq!(guest_memory_cap(64 << 20, 8 << 20), 40 << 20);
        assert_eq!(guest_memory_cap(8 << 20, 8 << 20), 0);
    }

    #[test]
    fn tells_modules_components_and_text_apart() {
        assert_eq!(flavor(b"\0asm\x01\0\0\0rest"), Some(Flavor::Module));
        assert_eq!(flavor(b"\0asm\x0d\0\x01\0rest"), Some(Flavor::Component));
        assert_eq!(flavor(b";; hi\n(module)"), Some(Flavor::Module));
        assert_eq!(flavor(b"  (component)"), Some(Flavor::Component));
        assert_eq!(flavor(b"\x7fELF\x02\x01"), None);
        assert_eq!(flavor(b"#!/bin/sh\necho"), None);
    }
}
