//! amphi's isolation core: everything a container needs before its workload
//! runs, for every executor alike. The core knows nothing of any particular
//! executor; executors plug in through [`executor::Handler`].

pub mod capabilities;
pub mod cgroups;
pub mod clone;
pub mod console;
pub mod criu;
pub mod devices;
pub mod error;
pub mod executor;
pub mod hooks;
pub mod id;
pub mod init;
pub mod launch;
pub mod lsm;
pub mod namespaces;
pub mod paths;
pub mod process;
pub mod procfs;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod state;
pub mod sync;
pub mod util;

pub use error::{Error, Result};
