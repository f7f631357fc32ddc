//! `amphi run`: create, start, wait for and delete a container.

use std::process::ExitCode;

use anyhow::{Context, Result};

use super::{exit_status, Ctx};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    create: super::create::Args,
    /// Return once the container is started.
    #[arg(short, long)]
    detach: bool,
}

pub fn run(a: &Args, ctx: &Ctx) -> Result<ExitCode> {
    let rt = ctx.runtime()?;
    let o = a.create.options();
    let context = || format!("run {}", a.create.id);
    if a.detach {
        rt.run_detached(&o).with_context(context)?;
        return Ok(ExitCode::SUCCESS);
    }
    Ok(exit_status(rt.run(&o).with_context(context)?))
}
