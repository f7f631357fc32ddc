//! `amphi events`: cgroup statistics and OOM events as JSON lines.

use std::process::ExitCode;

use amphi_runtime::Runtime;
use anyhow::{bail, Context, Result};

use super::{parse_duration, Ctx};

#[derive(clap::Args)]
pub struct Args {
    id: String,
    /// Print one set of statistics and exit.
    #[arg(long)]
    stats: bool,
    /// Time between statistics (Go duration: 500ms, 5s, 1m).
    #[arg(long, default_value = "5s")]
    interval: String,
}

pub fn run(a: &Args, ctx: &Ctx) -> Result<ExitCode> {
    let id = &a.id;
    let interval =
        parse_duration(&a.interval).with_context(|| format!("events {id}: --interval"))?;
    events(&ctx.runtime()?, id, a.stats, interval).with_context(|| format!("events {id}"))?;
    Ok(ExitCode::SUCCESS)
}

/// runc's `events`: statistics every interval and an event per OOM kill,
/// as JSON lines, until the container stops.
fn events(rt: &Runtime, id: &str, once: bool, interval: std::time::Duration) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // Taken before the baseline is told: whoever waits for that line (the
    // shim, before it starts the container) may let an OOM kill, and the
    // removal of a systemd scope, come right after it.
    let watch = if once { None } else { rt.watch(id)? };
    let (data, mut ooms, stopped) = rt.stats(id)?;
    if stopped {
        bail!("container {id} is stopped");
    }
    writeln!(
        out,
        "{}",
        serde_json::json!({"type": "stats", "id": id, "data": data})
    )?;
    out.flush()?;
    if once {
        return Ok(());
    }
    // Woken by the kernel (an OOM kill, the init's exit), stats at the
    // interval and no polling; polled only without a memory controller.
    let tick = interval.min(std::time::Duration::from_millis(100));
    let mut next_stats = std::time::Instant::now() + interval;
    let mut tell = |out: &mut std::io::StdoutLock, count: u64| -> Result<()> {
        for _ in ooms..count {
            writeln!(out, "{}", serde_json::json!({"type": "oom", "id": id}))?;
        }
        ooms = ooms.max(count);
        Ok(out.flush()?)
    };
    loop {
        let seen = match &watch {
            Some(w) => w.wait(next_stats.saturating_duration_since(std::time::Instant::now())),
            None => {
                std::thread::sleep(tick);
                None
            }
        };
        // Told at once, before the stats are read: the shim waits for it
        // before it reports the exit the kill caused.
        tell(&mut out, seen.unwrap_or(0))?;
        let stats = rt.stats(id);
        // Once stopped, counted once more: the kill may have come after
        // the wake-up, and the cgroup may be gone by now.
        let stopped = !matches!(stats, Ok((_, _, false)));
        let last = stats.as_ref().map_or(0, |s| s.1);
        let last = last.max(watch.as_ref().filter(|_| stopped).map_or(0, |w| w.count()));
        tell(&mut out, last)?;
        let Ok((data, _, false)) = stats else {
            return Ok(());
        };
        if std::time::Instant::now() >= next_stats {
            writeln!(
                out,
                "{}",
                serde_json::json!({"type": "stats", "id": id, "data": data})
            )?;
            next_stats += interval;
        }
        out.flush()?;
    }
}
