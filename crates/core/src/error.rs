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
    #[error("function {function}: {field}: {why}")]
    Function {
        function: String,
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
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{op}: {source}")]
    Sys { op: String, source: nix::Error },
    #[error("cgroup {path}: {why}")]
    Cgroup { path: String, why: String },
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
            source,
        }
    }

    pub fn sys(op: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            op: op.into(),
            source,
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
