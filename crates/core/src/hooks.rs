//! OCI hooks: a program run with the container's state JSON on stdin,
//! killed when its timeout passes.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

use crate::{Error, Result};

/// Run the hooks in order; the first that fails stops the rest and is the error.
pub fn run_all(hooks: Option<&Vec<Hook>>, kind: &str, state: &[u8]) -> Result<()> {
    for hook in hooks.into_iter().flatten() {
        run(hook, state).map_err(|e| named(kind, e))?;
    }
    Ok(())
}

/// Run every hook, whether or not one before it failed (poststop hooks);
/// the failures, in order.
pub fn run_every(hooks: Option<&Vec<Hook>>, kind: &str, state: &[u8]) -> Vec<Error> {
    hooks
        .into_iter()
        .flatten()
        .filter_map(|hook| run(hook, state).err().map(|e| named(kind, e)))
        .collect()
}

fn named(kind: &str, e: Error) -> Error {
    match e {
        Error::Hook { path, why } => Error::Hook {
            path,
            why: format!("{kind}: {why}"),
        },
        e => e,
    }
}

pub fn run(hook: &Hook, state: &[u8]) -> Result<()> {
    let path = hook.path();
    let fail = |why: String| Error::Hook {
        path: path.clone(),
        why,
    };
    let mut cmd = Command::new(path);
    if let Some(args) = hook.args() {
        if let Some((arg0, rest)) = args.split_first() {
            cmd.arg0(arg0).args(rest);
        }
    }
    cmd.env_clear();
    for kv in hook.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    // Hook output goes to the runtime's stderr (and so to its log), never to
    // the container's stdout.
    let stdout = Stdio::from(
        std::io::stderr()
            .as_fd_owned()
            .map_err(|e| fail(e.to_string()))?,
    );
    // A hook may be spawned under the container's seccomp filter
    // (startContainer, without no_new_privs), and a profile may deny
    // clone3 with EPERM, where glibc's posix_spawn falls back to clone only
    // on ENOSYS. A pre_exec step makes std fork (clone) instead.
    // SAFETY: the closure does nothing, so nothing unsafe runs after fork.
    unsafe { cmd.pre_exec(|| Ok(())) };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(stdout)
        .spawn()
        .map_err(|e| fail(format!("start: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is not an error.
        let _ = stdin.write_all(state);
    }
    let deadline = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    let mut pause = Duration::from_micros(200);
    loop {
        if let Some(status) = child.try_wait().map_err(|e| fail(format!("wait: {e}")))? {
            return if status.success() {
                Ok(())
            } else {
                Err(fail(format!("failed: {status}")))
            };
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!(
                "timed out after {}s and was killed",
                hook.timeout().unwrap_or_default()
            )));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

trait StderrFd {
    fn as_fd_owned(&self) -> std::io::Result<std::os::fd::OwnedFd>;
}

impl StderrFd for std::io::Stderr {
    fn as_fd_owned(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.as_fd().try_clone_to_owned()
    }
}
