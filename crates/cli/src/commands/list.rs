//! `amphi list`: the containers under `--root`.

use std::process::ExitCode;

use anyhow::Result;

use super::{Ctx, ListFormat};

#[derive(clap::Args)]
pub struct Args {
    /// Output format: table or json.
    #[arg(short, long, value_enum, default_value = "table")]
    format: ListFormat,
    /// Print only the containers' ids.
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(a: &Args, ctx: &Ctx) -> Result<ExitCode> {
    let all = ctx.runtime()?.list()?;
    if a.quiet {
        for (s, _) in &all {
            println!("{}", s.id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    match a.format {
        ListFormat::Json => {
            let v: Vec<_> = all.iter().map(|(s, st)| s.oci_state(*st)).collect();
            println!("{}", serde_json::to_string(&v)?);
        }
        ListFormat::Table => {
            println!(
                "{:<24} {:<8} {:<10} {:<40} CREATED",
                "ID", "PID", "STATUS", "BUNDLE"
            );
            for (s, st) in &all {
                let pid = if *st == amphi_runtime::ContainerStatus::Stopped {
                    0
                } else {
                    s.pid
                };
                println!(
                    "{:<24} {:<8} {:<10} {:<40} {}",
                    s.id,
                    pid,
                    st,
                    s.bundle.display(),
                    s.created
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
