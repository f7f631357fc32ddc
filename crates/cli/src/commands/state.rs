//! `amphi state`: a container's state as runtime-spec JSON.

use std::process::ExitCode;

use anyhow::{Context, Result};

use super::{Ctx, Id};

pub fn run(Id { id }: &Id, ctx: &Ctx) -> Result<ExitCode> {
    let state = ctx
        .runtime()?
        .state(id)
        .with_context(|| format!("state {id}"))?;
    println!("{}", serde_json::to_string_pretty(&state)?);
    Ok(ExitCode::SUCCESS)
}
