//! `amphi spec`: a default config.json.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{ProcessBuilder, Spec};

#[derive(clap::Args)]
pub struct Args {
    /// Bundle directory (holding config.json).
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Write a spec for a rootless container.
    #[arg(long)]
    rootless: bool,
}

pub fn run(a: &Args) -> Result<ExitCode> {
    write(&a.bundle, a.rootless)?;
    Ok(ExitCode::SUCCESS)
}

/// Write a default config.json: runc's defaults (namespaces, masked and
/// read-only paths, a minimal capability set, no new privileges) plus a
/// seccomp profile like the common container default, running `sh` without
/// a terminal.
fn write(bundle: &Path, rootless: bool) -> Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        bail!(
            "{} exists already: remove it or choose another --bundle",
            path.display()
        );
    }
    let mut spec = if rootless {
        Spec::rootless(
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    } else {
        Spec::default()
    };
    let mut process = spec
        .process()
        .clone()
        .unwrap_or_else(|| ProcessBuilder::default().build().expect("default"));
    process.set_terminal(Some(false));
    // runc has written no inheritable or ambient set since 1.1.2: with
    // them, an exec'd program with file capabilities gains what the
    // bounding set allows (CVE-2022-29162).
    if let Some(mut caps) = process.capabilities().clone() {
        caps.set_inheritable(None);
        caps.set_ambient(None);
        process.set_capabilities(Some(caps));
    }
    spec.set_process(Some(process));
    spec.set_hostname(Some("amphi".into()));
    let mut json = serde_json::to_value(&spec)?;
    json["linux"]["seccomp"] = amphi_core::seccomp::default_profile_json();
    let json = serde_json::to_string_pretty(&json)?;
    std::fs::write(&path, json + "\n").with_context(|| format!("write {}", path.display()))
}
