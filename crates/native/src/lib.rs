//! The native executor: the workload is `process.args`, found the way
//! execvp would find it, but inside the container's rootfs.

use std::ffi::CString;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use amphi_core::executor::{Executor, PrepareContext, Verdict};
use amphi_core::paths::{open_in_root, Create};
use amphi_core::rootfs::cstring;
use amphi_core::{process, Error, Result};
use nix::sys::stat::{fstat, SFlag};
use oci_spec::runtime::{Process, Spec};

/// Runs any bundle: put it last, after the handlers that take some.
pub struct Handler;

impl amphi_core::executor::Handler for Handler {
    fn name(&self) -> &'static str {
        "native"
    }

    fn can_handle(&self, _: &Spec, _: &Path) -> Verdict {
        Verdict::Yes
    }

    fn checkpoint(
        &self,
        state: &amphi_core::state::ContainerState,
        _state_dir: &Path,
        o: &amphi_core::executor::CheckpointOptions,
    ) -> Result<()> {
        amphi_core::criu::dump(state, o)
    }

    fn restores_through_criu(&self) -> bool {
        true
    }

    fn executor(&self, _id: &str, _: &Spec) -> Result<Box<dyn Executor>> {
        Ok(Box::new(Native::new()))
    }
}

#[derive(Default)]
pub struct Native {
    program: Option<CString>,
}

impl Native {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Native {
    /// Become `p` running the prepared program: for the container's
    /// process, or for each child a long-lived process forks (`amphi
    /// serve`'s worker runs an invocation so).
    pub fn execve(&self, p: &Process) -> Error {
        let Some(program) = &self.program else {
            return Error::Init("the native executor ran before prepare".into());
        };
        let (args, env) = match (process::args(p), process::env(p)) {
            (Ok(a), Ok(e)) => (a, e),
            (Err(e), _) | (_, Err(e)) => return e,
        };
        let e = nix::unistd::execve(program, &args, &env).unwrap_err();
        Error::sys(format!("exec {program:?}"), e)
    }
}

/// The search path when `process.env` has no PATH (as crun does).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where `arg0` is found inside the rootfs, as a container path: names with
/// a slash are taken as they are (relative to the cwd), others searched in
/// the container's PATH (nothing of the host's).
pub fn lookup(ctx: &PrepareContext, arg0: &str) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = if arg0.contains('/') {
        vec![ctx.process.cwd().join(arg0)]
    } else {
        process::path_var(ctx.process)
            .unwrap_or(DEFAULT_PATH)
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new("/").join(d).join(arg0))
            .collect()
    };
    let mut last = None;
    for c in &candidates {
        match is_executable(ctx, c) {
            Ok(()) => return Ok(c.clone()),
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Init(match (arg0.contains('/'), last) {
        (true, Some(e)) => format!("process.args[0] {arg0:?}: {e}"),
        _ => {
            format!("process.args[0] {arg0:?}: executable file not found in the container's $PATH")
        }
    }))
}

fn is_executable(ctx: &PrepareContext, path: &Path) -> std::result::Result<(), String> {
    let fd = open_in_root(ctx.root_fd, path, Create::Nothing).map_err(|e| match e {
        Error::Sys { errno, .. } => errno.desc().to_string(),
        e => e.to_string(),
    })?;
    let st = fstat(fd.as_fd()).map_err(|e| e.desc().to_string())?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err("not a regular file".into());
    }
    if st.st_mode & 0o111 == 0 {
        return Err("permission denied: not executable".into());
    }
    Ok(())
}

impl Executor for Native {
    fn prepare(&mut self, ctx: &PrepareContext) -> Result<()> {
        let path = lookup(ctx, ctx.program())?;
        self.program = Some(cstring(&path.to_string_lossy())?);
        Ok(())
    }

    fn exec(self: Box<Self>, p: &Process) -> Error {
        self.execve(p)
    }
}
