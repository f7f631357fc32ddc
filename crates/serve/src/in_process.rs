//! A wasm function's invocations run as tasks of the worker itself (not
//! forked children): what those tasks share, and one invocation's run.

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use crate::protocol::{epoch_ns, Done, Head};

/// What the tasks of an in-process worker share.
pub struct InProcess {
    pub(crate) function: amphi_wasm::function::Function,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    /// Where invocations' scratch directories go (the envelope's /tmp).
    pub(crate) scratch: Option<std::path::PathBuf>,
    pub(crate) cancels: std::sync::Mutex<HashMap<u64, std::sync::Arc<tokio::sync::Notify>>>,
}

impl InProcess {
    /// One invocation with its body in memory. Dropping the future ends
    /// the guest (at its next epoch tick or host call) and removes its
    /// scratch directory.
    pub async fn run(
        &self,
        id: u64,
        env: Vec<(String, String)>,
        head: Option<Head>,
        body: bytes::Bytes,
    ) -> std::result::Result<amphi_wasm::function::Outcome, String> {
        let scratch = match self.scratch.as_ref().filter(|_| self.function.sees_files()) {
            Some(base) => {
                let dir = amphi_wasm::function::scratch_dir(base, id);
                std::fs::create_dir(&dir)
                    .map_err(|e| format!("scratch directory {}: {e}", dir.display()))?;
                Some(Scratch(dir))
            }
            None => None,
        };
        let mut all_env = self.env.clone();
        all_env.extend(env);
        let invocation = amphi_wasm::function::Invocation {
            args: self.args.clone(),
            env: all_env,
            body,
            head: head.map(|h| amphi_wasm::function::RequestHead {
                method: h.method,
                uri: h.uri,
                headers: h.headers,
            }),
            scratch: scratch.as_ref().map(|s| s.0.clone()),
        };
        Ok(self.function.invoke(invocation).await)
    }

    /// An invocation the server routed: body in on its stream socket, the
    /// response out on it, stderr on its pipe.
    pub(crate) async fn invoke(
        &self,
        id: u64,
        env: Vec<(String, String)>,
        head: Option<Head>,
        fds: Vec<OwnedFd>,
        cancel: std::sync::Arc<tokio::sync::Notify>,
    ) -> Done {
        let report = |exit: Option<i32>, signal: Option<i32>, error: Option<String>| Done {
            id,
            exit,
            signal,
            error,
            phases: Vec::new(),
        };
        let mut fds = fds.into_iter();
        let (Some(io), Some(err)) = (fds.next(), fds.next()) else {
            return report(None, None, Some("invocation without its sockets".into()));
        };
        let streams = (|| -> std::io::Result<_> {
            let io = std::os::unix::net::UnixStream::from(io);
            io.set_nonblocking(true)?;
            nix::fcntl::fcntl(
                &err,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )?;
            Ok((
                tokio::net::UnixStream::from_std(io)?,
                tokio::net::unix::pipe::Sender::from_owned_fd(err)?,
            ))
        })();
        let (mut io, mut err) = match streams {
            Ok(s) => s,
            Err(e) => return report(None, None, Some(format!("invocation streams: {e}"))),
        };
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut body = Vec::new();
        if let Err(e) = io.read_to_end(&mut body).await {
            return report(None, None, Some(format!("reading the request body: {e}")));
        }
        let outcome = tokio::select! {
            o = self.run(id, env, head, body.into()) => Some(o),
            _ = cancel.notified() => None,
        };
        match outcome {
            // Cancelled: ended as if killed.
            None => report(None, Some(libc::SIGKILL), None),
            Some(Err(e)) => report(None, None, Some(e)),
            Some(Ok(o)) => {
                let _ = io.write_all(&o.stdout).await;
                let _ = io.shutdown().await;
                let _ = err.write_all(&o.stderr).await;
                Done {
                    phases: phases(&o.phases),
                    ..report(Some(o.exit), None, None)
                }
            }
        }
    }
}

/// A wasm invocation's phases, for the server.
pub fn phases(phases: &[amphi_wasm::function::Phase]) -> Vec<(String, u64, u64)> {
    phases
        .iter()
        .map(|(name, from, to)| (name.to_string(), epoch_ns(*from), epoch_ns(*to)))
        .collect()
}

/// An invocation's scratch directory, removed with it.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        // Most invocations write nothing: one rmdir, no walk.
        if std::fs::remove_dir(&self.0).is_err() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
