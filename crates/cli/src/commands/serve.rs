//! `amphi serve`: HTTP functions, each invocation in the envelope (run by
//! `amphi-wasm`: [`crate::wasmtime`]).

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A function manifest (NAME.toml), or a directory of them.
    #[arg(long)]
    pub functions: PathBuf,
    /// Address the server listens on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Where the functions' generated bundles go (default: a temporary
    /// directory).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// How long SIGTERM waits for in-flight requests.
    #[arg(long, default_value = "10s")]
    pub shutdown_timeout: String,
    /// How many envelopes are made at once (default: one per CPU).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub keepers: Option<u16>,
}
