//! `amphi pause`: freeze every process of a container.

use std::process::ExitCode;

use anyhow::{Context, Result};

use super::{Ctx, Id};

pub fn run(Id { id }: &Id, ctx: &Ctx) -> Result<ExitCode> {
    ctx.runtime()?
        .pause(id)
        .with_context(|| format!("pause {id}"))?;
    Ok(ExitCode::SUCCESS)
}
