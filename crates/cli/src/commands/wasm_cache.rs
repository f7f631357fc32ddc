//! `amphi wasm-cache`: the compiled WebAssembly modules cache.

use std::process::ExitCode;

use anyhow::{Context, Result};

use super::{parse_size_arg, Ctx, ListFormat};

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

pub fn run(command: &Args, ctx: &Ctx) -> Result<ExitCode> {
    let dir = &ctx.wasm_cache.path;
    if !dir.is_dir() {
        anyhow::bail!("--wasm-cache {}: no such directory", dir.display());
    }
    let cache = amphi_wasm::Cache::new(dir, u64::MAX);
    let show = |entries: &[amphi_wasm::cache::Entry]| -> Vec<serde_json::Value> {
        entries
            .iter()
            .map(|e| {
                let last_use = e
                    .last_use
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                serde_json::json!({
                    "key": e.key,
                    "module": format!("sha256:{}", e.module_digest),
                    "moduleSize": e.module_size,
                    "kind": match e.flavor {
                        amphi_wasm::Flavor::Module => "module",
                        amphi_wasm::Flavor::Component => "component",
                    },
                    "size": e.size,
                    "lastUse": amphi_core::util::rfc3339(last_use, 0),
                    "inUse": e.in_use,
                })
            })
            .collect()
    };
    match command {
        Args::List { format } => {
            let entries = cache
                .list()
                .with_context(|| format!("list {}", dir.display()))?;
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string(&show(&entries))?),
                ListFormat::Table => {
                    println!(
                        "{:<71} {:<9} {:>12} {:>12} {:<20} IN USE",
                        "MODULE", "KIND", "MODULE SIZE", "SIZE", "LAST USE"
                    );
                    for (e, v) in entries.iter().zip(show(&entries)) {
                        println!(
                            "{:<71} {:<9} {:>12} {:>12} {:<20} {}",
                            v["module"].as_str().unwrap_or_default(),
                            v["kind"].as_str().unwrap_or_default(),
                            e.module_size,
                            e.size,
                            v["lastUse"].as_str().unwrap_or_default(),
                            if e.in_use { "yes" } else { "no" }
                        );
                    }
                }
            }
        }
        Args::Prune { max } => {
            let removed = cache
                .shrink_to(*max, None)
                .with_context(|| format!("prune {}", dir.display()))?;
            let freed: u64 = removed.iter().map(|e| e.size).sum();
            println!(
                "removed {} compiled modules, {} bytes",
                removed.len(),
                freed
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
