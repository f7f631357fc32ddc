//! Compiling in a helper process.
//!
//! The container's init prepares the guest while it still holds the
//! credentials and capabilities it will drop, which are per thread: it
//! must stay single-threaded, and a parallel compile would start a thread
//! per core. So the init forks a helper that compiles on every core the
//! container's cgroup allows and writes the artifact to a file the init
//! gave it (the cache's temporary file, else a memfd); the init then maps
//! it. Nothing of the compile's memory (1.7 GB for a 68 MB C++ module)
//! stays in the init.
//!
//! The helper is in the container's cgroup, so compiling is charged to
//! the container, where an operator sees it, and is bounded by its memory
//! limit: the helper makes itself the OOM killer's first choice, and a
//! helper killed so is an error naming the limit and what compiling took.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use nix::sys::memfd::{memfd_create, MFdFlags};
use sha2::{Digest, Sha256};

use crate::engine::{compiling_engine, Kind};
use crate::hex;
use crate::Flavor;

pub(crate) enum How {
    /// In the file given; the artifact's SHA-256.
    File { artifact_digest: String },
    /// In the memfd.
    Memfd,
}

pub(crate) struct Written {
    pub how: How,
    pub memfd: File,
    /// Why the file given was not used.
    pub why_not_stored: Option<String>,
}

/// The compiler died of a signal (SIGKILL: the OOM killer, most likely).
#[derive(Debug)]
pub struct CompilerKilled {
    pub signal: i32,
    /// The most memory the compiler held.
    pub peak: u64,
}

impl std::fmt::Display for CompilerKilled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the compiler was killed by signal {} after reaching {} MiB",
            self.signal,
            self.peak >> 20
        )
    }
}

impl std::error::Error for CompilerKilled {}

/// Compile `bytes`, into `file` when given and writable, else into a
/// memfd: in a helper process when this one is single-threaded (the
/// init), in this process when it has threads already (a test harness,
/// where a fork could inherit a lock another thread holds).
pub(crate) fn compile_in_helper(
    kind: Kind,
    flavor: Flavor,
    bytes: &[u8],
    file: Option<&File>,
) -> wasmtime::Result<Written> {
    let memfd = File::from(memfd_create("amphi-wasm-artifact", MFdFlags::MFD_CLOEXEC)?);
    if !single_threaded() {
        let report = compile_to(kind, flavor, bytes, file, &memfd);
        return parse(report, 0, 0, memfd);
    }
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: this process is single-threaded; the child only computes
    // and writes, then leaves with _exit.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            drop(report_r);
            helper(kind, flavor, bytes, file, &memfd, report_w)
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(report_w);
            let mut report = String::new();
            let _ = File::from(report_r).read_to_string(&mut report);
            let (status, peak) = wait(child.as_raw())?;
            parse(report, status, peak, memfd)
        }
    }
}

fn single_threaded() -> bool {
    amphi_core::procfs::handle()
        .ok()
        .and_then(|p| p.self_status_number("Threads"))
        .is_none_or(|n| n == 1)
}

fn helper(
    kind: Kind,
    flavor: Flavor,
    bytes: &[u8],
    file: Option<&File>,
    memfd: &File,
    report: OwnedFd,
) -> ! {
    // SAFETY: prctl with integer arguments: die with the init.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // Of the container's processes, the compiler is the one to kill when
    // the cgroup runs out of memory.
    if let Ok(p) = amphi_core::procfs::handle() {
        let _ = p.write_self("oom_score_adj", "1000");
    }
    let line = compile_to(kind, flavor, bytes, file, memfd);
    let _ = File::from(report).write_all(line.as_bytes());
    // SAFETY: leave without running the init's destructors.
    unsafe { libc::_exit(0) }
}

/// Compile and write the artifact; the report `parse` reads.
fn compile_to(
    kind: Kind,
    flavor: Flavor,
    bytes: &[u8],
    file: Option<&File>,
    memfd: &File,
) -> String {
    let outcome = (|| -> Result<String, String> {
        let engine = compiling_engine(kind).map_err(|e| format!("{e:#}"))?;
        let artifact = match flavor {
            Flavor::Module => engine.precompile_module(bytes),
            Flavor::Component => engine.precompile_component(bytes),
        }
        .map_err(|e| format!("{e:#}"))?;
        let mut why_not = String::new();
        if let Some(mut f) = file {
            match f.write_all(&artifact) {
                Ok(()) => return Ok(format!("file {}", hex(&Sha256::digest(&artifact)))),
                Err(e) => {
                    let _ = f.set_len(0);
                    why_not = e.to_string();
                }
            }
        }
        (&*memfd)
            .write_all(&artifact)
            .map_err(|e| format!("write the artifact to memory: {e}"))?;
        Ok(format!("memfd {why_not}"))
    })();
    match outcome {
        Ok(done) => format!("ok {done}"),
        Err(e) => format!("error {e}"),
    }
}

/// The child's wait status and peak resident memory.
fn wait(pid: libc::pid_t) -> std::io::Result<(libc::c_int, u64)> {
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 on our own child, into locals.
        if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } == pid {
            return Ok((status, usage.ru_maxrss.max(0) as u64 * 1024));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn parse(report: String, status: libc::c_int, peak: u64, memfd: File) -> wasmtime::Result<Written> {
    if libc::WIFSIGNALED(status) {
        return Err(wasmtime::Error::new(CompilerKilled {
            signal: libc::WTERMSIG(status),
            peak,
        }));
    }
    if let Some(e) = report.strip_prefix("error ") {
        return Err(wasmtime::format_err!("{e}"));
    }
    if let Some(digest) = report.strip_prefix("ok file ") {
        return Ok(Written {
            how: How::File {
                artifact_digest: digest.to_owned(),
            },
            memfd,
            why_not_stored: None,
        });
    }
    if let Some(why) = report.strip_prefix("ok memfd") {
        let why = why.trim();
        return Ok(Written {
            how: How::Memfd,
            memfd,
            why_not_stored: (!why.is_empty()).then(|| why.to_owned()),
        });
    }
    Err(wasmtime::format_err!(
        "the compile helper ended without a word (wait status {status:#x})"
    ))
}
