//! `amphi serve`: HTTP functions, each invocation in the envelope.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::{parse_duration, Ctx};

#[derive(clap::Args)]
pub struct Args {
    /// A function manifest (NAME.toml), or a directory of them.
    #[arg(long)]
    functions: PathBuf,
    /// Address the server listens on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Where the functions' generated bundles go (default: a temporary
    /// directory).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// How long SIGTERM waits for in-flight requests.
    #[arg(long, default_value = "10s")]
    shutdown_timeout: String,
    /// How many envelopes are made at once (default: one per CPU).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    keepers: Option<u16>,
}

pub fn run(a: &Args, ctx: &Ctx) -> Result<ExitCode> {
    let shutdown_timeout = parse_duration(&a.shutdown_timeout).context("--shutdown-timeout")?;
    let keepers = a
        .keepers
        .map(usize::from)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(64)));
    amphi_serve::run(amphi_serve::Options {
        functions: a.functions.clone(),
        listen: a.listen,
        root: ctx.root.clone(),
        wasm_cache: ctx.wasm_cache.clone(),
        work_dir: a.work_dir.clone(),
        shutdown_timeout,
        keepers,
    })
    .context("serve")?;
    Ok(ExitCode::SUCCESS)
}
