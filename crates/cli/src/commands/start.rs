//! `amphi start`: run the workload of a created container.

use std::process::ExitCode;

use anyhow::{Context, Result};

use super::{Ctx, Id};

pub fn run(Id { id }: &Id, ctx: &Ctx) -> Result<ExitCode> {
    ctx.runtime()?
        .start(id)
        .with_context(|| format!("start {id}"))?;
    Ok(ExitCode::SUCCESS)
}
