//! `amphi ps`: the processes of a container (host pids).

use std::process::ExitCode;

use anyhow::{Context, Result};

use super::{Ctx, ListFormat};

#[derive(clap::Args)]
pub struct Args {
    id: String,
    /// Output format: table or json.
    #[arg(short, long, value_enum, default_value = "table")]
    format: ListFormat,
}

pub fn run(a: &Args, ctx: &Ctx) -> Result<ExitCode> {
    let id = &a.id;
    let pids = ctx.runtime()?.ps(id).with_context(|| format!("ps {id}"))?;
    match a.format {
        ListFormat::Json => println!("{}", serde_json::to_string(&pids)?),
        ListFormat::Table => {
            println!("PID   CMD");
            for pid in pids {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                println!("{pid:<5} {}", cmd.trim_end());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
