//! `amphi checkpoint`: write a running container's image (wasm: amphi's
//! own; native: CRIU's).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};

use super::Ctx;

#[derive(clap::Args)]
pub struct Args {
    id: String,
    #[command(flatten)]
    criu: Criu,
    /// An incremental image: the previous dump's directory, relative to
    /// the image directory (native only).
    #[arg(long)]
    parent_path: Option<PathBuf>,
    /// Leave the container running after the checkpoint.
    #[arg(long)]
    leave_running: bool,
    /// Dump memory only, the container runs on (native only).
    #[arg(long)]
    pre_dump: bool,
    /// ADDRESS:PORT of a CRIU page server.
    #[arg(long)]
    page_server: Option<String>,
    /// Write a byte to this fd once the lazy pages server is ready (CRIU).
    #[arg(long)]
    status_fd: Option<i32>,
}

/// runc's checkpoint flags (CRIU's where they only concern native
/// containers).
#[derive(clap::Args)]
pub struct Criu {
    /// Where the image is written (checkpoint) or read (restore).
    #[arg(long, default_value = "checkpoint")]
    image_path: PathBuf,
    /// Where CRIU writes its logs (default: the image directory).
    #[arg(long)]
    work_path: Option<PathBuf>,
    /// Allow open TCP connections (CRIU).
    #[arg(long)]
    tcp_established: bool,
    /// Allow external unix sockets (CRIU).
    #[arg(long)]
    ext_unix_sk: bool,
    /// Allow shell jobs (CRIU).
    #[arg(long)]
    shell_job: bool,
    /// Handle file locks (CRIU).
    #[arg(long)]
    file_locks: bool,
    /// soft, full, strict or ignore.
    #[arg(long, value_parser = ["soft", "full", "strict", "ignore"])]
    manage_cgroups_mode: Option<String>,
    /// Accepted for runc's callers; namespaces are the bundle's.
    #[arg(long)]
    empty_ns: Vec<String>,
    /// Deduplicate the images (CRIU).
    #[arg(long)]
    auto_dedup: bool,
    /// Restore memory lazily, through a page server (CRIU).
    #[arg(long)]
    pub lazy_pages: bool,
}

impl Criu {
    pub fn options(&self) -> amphi_core::executor::CheckpointOptions {
        amphi_core::executor::CheckpointOptions {
            image_path: self.image_path.clone(),
            work_path: self.work_path.clone(),
            tcp_established: self.tcp_established,
            ext_unix_sk: self.ext_unix_sk,
            shell_job: self.shell_job,
            file_locks: self.file_locks,
            manage_cgroups_mode: self.manage_cgroups_mode.clone(),
            ..Default::default()
        }
    }
}

pub fn run(a: &Args, ctx: &Ctx) -> Result<ExitCode> {
    let context = || format!("checkpoint {}", a.id);
    if a.criu.lazy_pages || a.page_server.is_some() {
        return Err(anyhow!("--lazy-pages and --page-server are not supported"))
            .with_context(context);
    }
    let o = amphi_core::executor::CheckpointOptions {
        parent_path: a.parent_path.clone(),
        leave_running: a.leave_running,
        pre_dump: a.pre_dump,
        ..a.criu.options()
    };
    ctx.runtime()?.checkpoint(&a.id, &o).with_context(context)?;
    Ok(ExitCode::SUCCESS)
}
