//! `amphi wasm-cache`: the compiled WebAssembly modules cache (run by
//! `amphi-wasm`: [`crate::wasmtime`]).

use super::{parse_size_arg, ListFormat};

#[derive(clap::Subcommand)]
pub enum Args {
    /// Every compiled module, least recently used first: its module's
    /// digest and size, the artifact's size, last use, whether in use.
    List {
        /// Output format: table or json.
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
    /// Remove the compiled modules no container runs, least recently used
    /// first, until at most --max is left (default: all of them).
    Prune {
        /// Keep at most this much (bytes, or with K, M, G, T).
        #[arg(long, default_value = "0", value_parser = parse_size_arg)]
        max: u64,
    },
}
