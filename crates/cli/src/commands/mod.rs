//! One module per subcommand, as runc's and youki's: each has its
//! arguments (`Args`) and `run`, which [`crate::run`] dispatches to.

use std::path::PathBuf;
use std::process::ExitCode;

use amphi_runtime::Runtime;
use anyhow::{anyhow, Context as _, Result};
use clap::ValueEnum;

use crate::Engine;

pub mod checkpoint;
pub mod create;
pub mod delete;
pub mod events;
pub mod exec;
pub mod features;
pub mod kill;
pub mod list;
pub mod pause;
pub mod ps;
pub mod restore;
pub mod resume;
pub mod run;
pub mod serve;
pub mod spec;
pub mod start;
pub mod state;
pub mod update;
pub mod wasm_cache;

/// What the subcommands take from the global flags, and the engine of
/// this binary.
pub struct Ctx<'e> {
    pub root: PathBuf,
    pub wasm_cache: amphi_wasm::CacheDir,
    engine: &'e dyn Engine,
    log: Option<PathBuf>,
    log_format: crate::log::Format,
    systemd_cgroup: bool,
}

impl<'e> Ctx<'e> {
    pub fn new(cli: &crate::Cli, engine: &'e dyn Engine) -> Ctx<'e> {
        let root = cli.root.clone().unwrap_or_else(default_root);
        Ctx {
            wasm_cache: amphi_wasm::CacheDir {
                path: cli
                    .wasm_cache
                    .clone()
                    .unwrap_or_else(|| root.join("wasm-cache")),
                max: cli.wasm_cache_max,
            },
            root,
            engine,
            log: cli.log.clone(),
            log_format: cli.log_format,
            systemd_cgroup: cli.systemd_cgroup,
        }
    }

    /// The runtime API over `--root`, with the executors this command line
    /// runs, the cgroup driver chosen, and warnings logged.
    pub fn runtime(&self) -> Result<Runtime> {
        let (log, format) = (self.log.clone(), self.log_format);
        let driver = if self.systemd_cgroup {
            amphi_core::cgroups::Driver::Systemd
        } else {
            amphi_core::cgroups::Driver::Cgroupfs
        };
        Runtime::new(&self.root, self.engine.handlers(&self.wasm_cache))
            .map(|rt| rt.cgroup_driver(driver))
            .map(|rt| {
                rt.on_warning(move |msg| {
                    crate::log::Logger::new(log.as_deref(), format).warn(msg);
                    eprintln!("amphi: warning: {msg}");
                })
            })
            .with_context(|| format!("runtime root {}", self.root.display()))
    }
}

/// runc's choice: /run for root, the user's runtime directory for a
/// rootless caller (another user, or root of a user namespace such as
/// rootless podman's).
fn default_root() -> PathBuf {
    if !amphi_core::util::rootless() {
        return "/run/amphi".into();
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("amphi"),
        None => std::env::temp_dir().join(format!("amphi-{}", nix::unistd::geteuid())),
    }
}

/// A container's status as this process's own: 0 to 255.
pub fn exit_status(code: i32) -> ExitCode {
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// A container id, the one argument of many subcommands.
#[derive(clap::Args)]
pub struct Id {
    pub id: String,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

/// A Go duration as runc takes it: 100ms, 5s, 1m, 1h, 1m30s.
pub fn parse_duration(s: &str) -> Result<std::time::Duration> {
    amphi_core::util::parse_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow!("{s:?} is not a duration (e.g. 500ms, 5s, 1m)"))
}

pub fn parse_size_arg(s: &str) -> std::result::Result<u64, String> {
    amphi_core::util::parse_size(s)
        .ok_or_else(|| format!("{s:?} is not a size (bytes, or with K, M, G, T)"))
}
