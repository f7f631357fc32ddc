//! Running the `amphi` binary. The shim is multi-threaded (ttrpc), so it
//! never forks to set up a container itself: every container operation is
//! an `amphi` command, as runc's shim runs runc.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::options::Options;
use crate::reaper::REAPER;

/// Where `amphi` is: $AMPHI_BIN, else next to the shim, else on PATH.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("AMPHI_BIN") {
        return p.into();
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("amphi")))
        .filter(|p| p.exists())
    {
        return sibling;
    }
    PathBuf::from("amphi")
}

/// amphi's state root for a containerd namespace: $AMPHI_ROOT/NS, by
/// default /run/containerd/amphi/NS (as runc's shim uses
/// /run/containerd/runc/NS).
pub fn root(namespace: &str) -> PathBuf {
    std::env::var_os("AMPHI_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/containerd/amphi"))
        .join(namespace)
}

#[derive(Clone)]
pub struct Amphi {
    pub root: PathBuf,
    /// JSON log: the last error line is what a failed command reports.
    pub log: PathBuf,
    binary: PathBuf,
    /// Global flags from the runtime options (`--wasm-cache`, `--wasm-cache-max`, `--systemd-cgroup`).
    flags: Vec<String>,
}

/// The container's stdio for a command that makes a process (create,
/// exec); the others get /dev/null.
#[derive(Default)]
pub struct Stdio3 {
    pub stdin: Option<std::fs::File>,
    pub stdout: Option<std::fs::File>,
    pub stderr: Option<std::fs::File>,
}

impl Amphi {
    pub fn new(namespace: &str, bundle: &Path, options: &Options) -> Amphi {
        let mut flags = Vec::new();
        if let Some(cache) = &options.wasm_cache {
            flags.extend(["--wasm-cache".to_string(), cache.display().to_string()]);
        }
        if let Some(max) = options.wasm_cache_max {
            flags.extend(["--wasm-cache-max".to_string(), max.to_string()]);
        }
        if options.systemd_cgroup {
            flags.push("--systemd-cgroup".into());
        }
        Amphi {
            // As runc's shim: the root option is per namespace too.
            root: options
                .root
                .as_ref()
                .map_or_else(|| root(namespace), |r| r.join(namespace)),
            log: bundle.join("amphi-log.json"),
            binary: options.binary_name.clone().unwrap_or_else(binary),
            flags,
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root").arg(&self.root).args(&self.flags);
        c
    }

    /// Run `amphi ARGS`; stdout on success, the logged error otherwise.
    pub fn run(
        &self,
        args: &[&str],
        stdio: Stdio3,
        input: Option<&[u8]>,
    ) -> Result<String, String> {
        let out = tempfile::tempfile().map_err(|e| format!("temp file: {e}"))?;
        let mut c = self.command();
        c.arg("--log")
            .arg(&self.log)
            .arg("--log-format")
            .arg("json")
            .args(args);
        let input_file = match input {
            Some(data) => {
                let mut f = tempfile::tempfile().map_err(|e| format!("temp file: {e}"))?;
                std::io::Write::write_all(&mut f, data).map_err(|e| e.to_string())?;
                std::io::Seek::rewind(&mut f).map_err(|e| e.to_string())?;
                Some(f)
            }
            None => None,
        };
        c.stdin(match (input_file, stdio.stdin) {
            (Some(f), _) | (None, Some(f)) => Stdio::from(f),
            (None, None) => Stdio::null(),
        });
        // A command that makes no process writes what it prints to a file we
        // read back; one that does gives the process its stdio.
        let capture = stdio.stdout.is_none();
        c.stdout(match stdio.stdout {
            Some(f) => Stdio::from(f),
            None => Stdio::from(out.try_clone().map_err(|e| e.to_string())?),
        });
        c.stderr(match stdio.stderr {
            Some(f) => Stdio::from(f),
            None => Stdio::null(),
        });
        // The shim's signal mask and dispositions are not the container's.
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            c.pre_exec(|| {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
        let child = c
            .spawn()
            .map_err(|e| format!("run {}: {e}", self.binary.display()))?;
        REAPER.kick();
        let pid = child.id() as i32;
        // The reaper thread collects it; Child is not waited on here.
        drop(child);
        let exit = REAPER.wait(pid);
        REAPER.forget(pid);
        if exit.code != 0 {
            return Err(self.last_error().unwrap_or_else(|| {
                format!("amphi {} exited with status {}", args.join(" "), exit.code)
            }));
        }
        if !capture {
            return Ok(String::new());
        }
        let mut out = out;
        let mut s = String::new();
        std::io::Seek::rewind(&mut out).map_err(|e| e.to_string())?;
        std::io::Read::read_to_string(&mut out, &mut s).map_err(|e| e.to_string())?;
        Ok(s)
    }

    fn last_error(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        text.lines().rev().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["level"] == "error").then(|| v["msg"].as_str().unwrap_or("").to_owned())
        })
    }

    /// Start a long-lived `amphi` process (the OOM monitor); its exit is
    /// ignored.
    pub fn spawn_monitor(&self, args: &[&str]) -> Option<(i32, std::process::ChildStdout)> {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        REAPER.kick();
        let pid = child.id() as i32;
        REAPER.ignore(pid);
        Some((pid, child.stdout.take()?))
    }
}
