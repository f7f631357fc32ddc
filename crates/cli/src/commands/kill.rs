//! `amphi kill`: signal a container's init or all its processes.

use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{anyhow, Context, Result};
use nix::sys::signal::Signal;

use super::Ctx;

#[derive(clap::Args)]
pub struct Args {
    id: String,
    /// The signal to send (name or number).
    #[arg(default_value = "SIGTERM")]
    signal: String,
    /// Send the signal to every process of the container.
    #[arg(short, long)]
    all: bool,
}

pub fn run(a: &Args, ctx: &Ctx) -> Result<ExitCode> {
    let context = || format!("kill {}", a.id);
    let signal = parse_signal(&a.signal).with_context(context)?;
    ctx.runtime()?
        .kill(&a.id, signal, a.all)
        .with_context(context)?;
    Ok(ExitCode::SUCCESS)
}

/// A signal by name (with or without SIG) or number; 0 only checks.
fn parse_signal(s: &str) -> Result<Option<Signal>> {
    if let Ok(n) = s.parse::<i32>() {
        if n == 0 {
            return Ok(None);
        }
        return Signal::try_from(n)
            .map(Some)
            .map_err(|_| anyhow!("unknown signal {s:?}"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name)
        .map(Some)
        .map_err(|_| anyhow!("unknown signal {s:?}: use a name such as TERM or KILL, or a number"))
}
