//! `amphi exec`: another process in a running container.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};

use super::{exit_status, Ctx};

#[derive(clap::Args)]
pub struct Args {
    id: String,
    /// The process as runtime-spec JSON (instead of ARGS).
    #[arg(short, long)]
    process: Option<PathBuf>,
    /// Allocate a pseudo-TTY.
    #[arg(short, long)]
    tty: bool,
    /// Unix socket that receives the pty master.
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Write the process's pid to this file.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Detach from the container's process.
    #[arg(short, long)]
    detach: bool,
    /// Working directory of the process inside the container.
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// KEY=VALUE, repeatable.
    #[arg(short, long)]
    env: Vec<String>,
    /// UID[:GID]
    #[arg(short, long)]
    user: Option<String>,
    /// Add a capability, repeatable.
    #[arg(long)]
    cap: Vec<String>,
    /// Set no_new_privs for the process.
    #[arg(long)]
    no_new_privs: bool,
    /// Pass this many fds beyond stdio (3, 4, ...) to the process.
    #[arg(long, default_value_t = 0)]
    preserve_fds: i32,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(a: &Args, ctx: &Ctx) -> Result<ExitCode> {
    let rt = ctx.runtime()?;
    let id = &a.id;
    let context = || format!("exec {id}");
    let process = match &a.process {
        Some(file) => {
            let data = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
            amphi_core::spec::parse(file, &data).with_context(context)?
        }
        None => {
            let user = a
                .user
                .as_deref()
                .map(parse_user)
                .transpose()
                .with_context(context)?;
            rt.exec_process(
                id,
                amphi_runtime::ExecOverrides {
                    args: a.args.clone(),
                    env: a.env.clone(),
                    cwd: a.cwd.clone(),
                    user,
                    caps: a.cap.clone(),
                    no_new_privs: a.no_new_privs,
                    tty: a.tty,
                },
            )
            .with_context(context)?
        }
    };
    let code = rt
        .exec(amphi_runtime::ExecOptions {
            id,
            process,
            detach: a.detach,
            pid_file: a.pid_file.as_deref(),
            console_socket: a.console_socket.as_deref(),
            preserve_fds: a.preserve_fds,
        })
        .with_context(context)?;
    Ok(exit_status(code))
}

/// `UID[:GID]`
fn parse_user(s: &str) -> Result<(u32, Option<u32>)> {
    let bad = || anyhow!("--user {s:?}: use UID or UID:GID (numbers)");
    let (uid, gid) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    Ok((
        uid.parse().map_err(|_| bad())?,
        gid.map(|g| g.parse().map_err(|_| bad())).transpose()?,
    ))
}
