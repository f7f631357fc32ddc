use std::path::PathBuf;

/// Every error names what it was about (a field, a path, a container) and
/// what went wrong, so the CLI can print it as one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid container id {id:?}: {why}")]
    InvalidId { id: String, why: &'static str },
    #[error("{file}: {field}: {why}")]
    InvalidSpec {
        file: PathBuf,
        field: String,
        why: String,
    },
    #[error("container {0:?} already exists")]
    Exists(String),
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("container {id:?} is {status}: {why}")]
    WrongState {
        id: String,
        status: String,
        why: String,
    },
    // The cause is part of the message and not also a `source()`: a
    // caller printing the whole chain would say it twice.
    #[error("{op} {path}: {err}")]
    Io {
        op: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("{op}: {errno}")]
    Sys { op: String, errno: nix::Error },
    #[error("cgroup {path}: {why}")]
    Cgroup {
        path: String,
        why: String,
        /// The kernel's answer, when a cgroup file or directory refused.
        errno: Option<i32>,
    },
    #[error("hook {path}: {why}")]
    Hook { path: PathBuf, why: String },
    #[error("state of container {id:?} ({path}): {why}")]
    State {
        id: String,
        path: PathBuf,
        why: String,
    },
    /// An error reported by the container's init process, already formatted there.
    #[error("{0}")]
    Init(String),
    #[error("{0}")]
    Unsupported(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            err: source,
        }
    }

    pub fn sys(op: impl Into<String>, errno: nix::Error) -> Self {
        Error::Sys {
            op: op.into(),
            errno,
        }
    }

    /// The kernel refused for lack of privilege (EPERM, EACCES, EROFS), as
    /// it does to a rootless caller on a cgroup nobody delegated to it.
    pub fn is_permission_denied(&self) -> bool {
        let denied = |errno: i32| matches!(errno, libc::EPERM | libc::EACCES | libc::EROFS);
        match self {
            Error::Io { err, .. } => err.raw_os_error().is_some_and(denied),
            Error::Sys { errno, .. } => denied(*errno as i32),
            Error::Cgroup { errno, .. } => errno.is_some_and(denied),
            _ => false,
        }
    }
}

/// Attach a syscall description to a nix result.
pub trait SysContext<T> {
    fn sys(self, op: impl FnOnce() -> String) -> Result<T>;
}

impl<T> SysContext<T> for nix::Result<T> {
    fn sys(self, op: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::sys(op(), e))
    }
}
