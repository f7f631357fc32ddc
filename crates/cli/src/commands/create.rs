//! `amphi create`: set up a container's envelope and wait for `start`.

use std::path::PathBuf;
use std::process::ExitCode;

use amphi_runtime::CreateOptions;
use anyhow::{Context, Result};

use super::Ctx;

/// Flattened into `run` and `restore` too: its group needs a name of its own.
#[derive(clap::Args)]
#[group(id = "create")]
pub struct Args {
    pub id: String,
    /// Bundle directory (holding config.json).
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Write the process's pid to this file.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master when process.terminal is set.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// chroot instead of pivot_root (for a rootfs on a ramdisk).
    #[arg(long)]
    pub no_pivot: bool,
    /// Pass this many fds beyond stdio (3, 4, ...) to the container.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: i32,
    /// Keep the caller's session keyring instead of a fresh one.
    #[arg(long)]
    pub no_new_keyring: bool,
}

impl Args {
    pub fn options(&self) -> CreateOptions<'_> {
        CreateOptions {
            id: &self.id,
            bundle: &self.bundle,
            pid_file: self.pid_file.as_deref(),
            console_socket: self.console_socket.as_deref(),
            no_pivot: self.no_pivot,
            preserve_fds: self.preserve_fds,
            no_new_keyring: self.no_new_keyring,
            restore: None,
        }
    }
}

pub fn run(a: &Args, ctx: &Ctx) -> Result<ExitCode> {
    ctx.runtime()?
        .create(&a.options())
        .with_context(|| format!("create {}", a.id))?;
    Ok(ExitCode::SUCCESS)
}
