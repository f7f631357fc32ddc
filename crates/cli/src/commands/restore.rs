//! `amphi restore`: create and start a container from a checkpoint image.

use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};

use super::checkpoint::Criu;
use super::{exit_status, Ctx};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    create: super::create::Args,
    #[command(flatten)]
    criu: Criu,
    /// Return once the container runs.
    #[arg(short, long)]
    detach: bool,
    /// Do not make the runtime a child subreaper.
    #[arg(long)]
    no_subreaper: bool,
    /// LSM profile of the restored process (TYPE:NAME).
    #[arg(long)]
    lsm_profile: Option<String>,
    /// SELinux mount context of the restored container's mounts.
    #[arg(long)]
    lsm_mount_context: Option<String>,
}

pub fn run(a: &Args, ctx: &Ctx) -> Result<ExitCode> {
    let rt = ctx.runtime()?;
    let image = a.criu.options();
    let mut o = a.create.options();
    o.restore = Some(&image);
    let context = || format!("restore {}", a.create.id);
    if a.criu.lazy_pages {
        return Err(anyhow!("--lazy-pages is not supported")).with_context(context);
    }
    if a.detach {
        rt.run_detached(&o).with_context(context)?;
        return Ok(ExitCode::SUCCESS);
    }
    Ok(exit_status(rt.run(&o).with_context(context)?))
}
