//! `amphi delete`: remove a stopped container.

use std::process::ExitCode;

use anyhow::{Context, Result};

use super::Ctx;

#[derive(clap::Args)]
pub struct Args {
    id: String,
    /// Kill the container first if it runs.
    #[arg(short, long)]
    force: bool,
}

pub fn run(a: &Args, ctx: &Ctx) -> Result<ExitCode> {
    ctx.runtime()?
        .delete(&a.id, a.force)
        .with_context(|| format!("delete {}", a.id))?;
    Ok(ExitCode::SUCCESS)
}
