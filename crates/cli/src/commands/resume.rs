//! `amphi resume`: thaw a paused container.

use std::process::ExitCode;

use anyhow::{Context, Result};

use super::{Ctx, Id};

pub fn run(Id { id }: &Id, ctx: &Ctx) -> Result<ExitCode> {
    ctx.runtime()?
        .resume(id)
        .with_context(|| format!("resume {id}"))?;
    Ok(ExitCode::SUCCESS)
}
