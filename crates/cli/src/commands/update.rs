//! `amphi update`: change a running container's cgroup limits.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};

use super::Ctx;

#[derive(clap::Args)]
pub struct Args {
    id: String,
    /// linux.resources as JSON ("-" for stdin); the flags below add to it.
    #[arg(short, long)]
    resources: Option<PathBuf>,
    /// Block IO weight (10 to 1000).
    #[arg(long)]
    blkio_weight: Option<u16>,
    /// CPU CFS period in microseconds.
    #[arg(long)]
    cpu_period: Option<u64>,
    /// CPU CFS quota in microseconds.
    #[arg(long)]
    cpu_quota: Option<i64>,
    /// CPU shares (relative weight).
    #[arg(long, alias = "cpu-share")]
    cpu_shares: Option<u64>,
    /// CPU realtime period in microseconds.
    #[arg(long)]
    cpu_rt_period: Option<u64>,
    /// CPU realtime runtime in microseconds.
    #[arg(long)]
    cpu_rt_runtime: Option<i64>,
    /// CPUs to use (e.g. 0-3,5).
    #[arg(long)]
    cpuset_cpus: Option<String>,
    /// Memory nodes to use (e.g. 0-1).
    #[arg(long)]
    cpuset_mems: Option<String>,
    /// Bytes, or with a k, m or g suffix.
    #[arg(long)]
    memory: Option<String>,
    /// Memory soft limit (bytes, or with K, M, G).
    #[arg(long)]
    memory_reservation: Option<String>,
    /// Memory plus swap; -1 for unlimited.
    #[arg(long)]
    memory_swap: Option<String>,
    /// Maximum number of processes.
    #[arg(long)]
    pids_limit: Option<i64>,
    /// Intel RDT (not supported).
    #[arg(long)]
    l3_cache_schema: Option<String>,
}

pub fn run(a: &Args, ctx: &Ctx) -> Result<ExitCode> {
    let context = || format!("update {}", a.id);
    let resources = resources(a).with_context(context)?;
    ctx.runtime()?
        .update(&a.id, &resources)
        .with_context(context)?;
    Ok(ExitCode::SUCCESS)
}

/// `--resources` and the flags, as one linux.resources (flags win).
fn resources(a: &Args) -> Result<oci_spec::runtime::LinuxResources> {
    use serde_json::{json, Value};
    if a.l3_cache_schema.is_some() {
        bail!("--l3-cache-schema: Intel RDT is not supported by amphi");
    }
    let mut r: Value = match &a.resources {
        Some(path) => {
            let data = if path.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                buf
            } else {
                std::fs::read(path).with_context(|| format!("read {}", path.display()))?
            };
            let parsed: oci_spec::runtime::LinuxResources = amphi_core::spec::parse(path, &data)?;
            serde_json::to_value(parsed)?
        }
        None => json!({}),
    };
    let mut set = |section: &str, key: &str, v: Value| {
        r.as_object_mut()
            .expect("object")
            .entry(section)
            .or_insert_with(|| json!({}))[key] = v;
    };
    if let Some(v) = a.blkio_weight {
        set("blockIO", "weight", v.into());
    }
    for (key, v) in [
        ("period", a.cpu_period.map(Value::from)),
        ("quota", a.cpu_quota.map(Value::from)),
        ("shares", a.cpu_shares.map(Value::from)),
        ("realtimePeriod", a.cpu_rt_period.map(Value::from)),
        ("realtimeRuntime", a.cpu_rt_runtime.map(Value::from)),
        ("cpus", a.cpuset_cpus.clone().map(Value::from)),
        ("mems", a.cpuset_mems.clone().map(Value::from)),
    ] {
        if let Some(v) = v {
            set("cpu", key, v);
        }
    }
    for (key, flag, v) in [
        ("limit", "--memory", &a.memory),
        ("reservation", "--memory-reservation", &a.memory_reservation),
        ("swap", "--memory-swap", &a.memory_swap),
    ] {
        if let Some(v) = v {
            set("memory", key, parse_bytes(v).with_context(|| flag)?.into());
        }
    }
    if let Some(v) = a.pids_limit {
        set("pids", "limit", v.into());
    }
    if r.as_object().is_some_and(|o| o.is_empty()) {
        bail!("nothing to update: give --resources FILE or a flag such as --memory");
    }
    serde_json::from_value(r).context("linux.resources")
}

/// "-1" (unlimited), or a size as runc takes it (bytes, k, m, g, t).
fn parse_bytes(s: &str) -> Result<i64> {
    if s == "-1" {
        return Ok(-1);
    }
    amphi_core::util::parse_size(s)
        .and_then(|n| i64::try_from(n).ok())
        .ok_or_else(|| anyhow!("{s:?}: not a size (use bytes or a k, m, g or t suffix)"))
}
