//! `amphi-wasm`'s engine: wasmtime runs wasm bundles, functions and the
//! compiled modules' cache in this process.

use std::process::ExitCode;

use amphi_core::executor::Handler;
use anyhow::{Context, Result};

use crate::commands::{parse_duration, serve, wasm_cache, Ctx, ListFormat};

pub struct Wasmtime;

impl crate::Engine for Wasmtime {
    fn handlers(&self, wasm_cache: &amphi_wasm::CacheDir) -> Vec<Box<dyn Handler>> {
        vec![
            Box::new(amphi_wasm::Handler::new(wasm_cache.clone())),
            Box::new(amphi_native::Handler),
        ]
    }

    fn serve(&self, a: &serve::Args, ctx: &Ctx) -> Result<ExitCode> {
        serve(a, ctx)
    }

    fn wasm_cache(&self, a: &wasm_cache::Args, ctx: &Ctx) -> Result<ExitCode> {
        wasm_cache(a, ctx)
    }
}

fn serve(a: &serve::Args, ctx: &Ctx) -> Result<ExitCode> {
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

fn wasm_cache(command: &wasm_cache::Args, ctx: &Ctx) -> Result<ExitCode> {
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
        wasm_cache::Args::List { format } => {
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
        wasm_cache::Args::Prune { max } => {
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
