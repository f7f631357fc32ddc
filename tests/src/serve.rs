//! `amphi serve` under test: a server on a loopback port in the test's own
//! runtime root and work directory, a small HTTP/1.1 client, and the check
//! that nothing of the server is left once it stopped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::{cgroup_dirs, processes_rooted_in, reap_inits, repo_root, Env};

/// The native build of the CGI guest (bundles/wasm/src/bin/cgi.rs).
pub fn native_cgi() -> PathBuf {
    crate::guests_dir();
    repo_root().join("bundles/out/bin/cgi")
}

pub fn wasm_guest(name: &str) -> PathBuf {
    crate::guests_dir().join(name)
}

pub struct Serve {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub pid: i32,
    pub stderr: PathBuf,
    pub work_dir: PathBuf,
}

/// A server that did not come up: its exit code and stderr.
#[derive(Debug)]
pub struct Failed {
    pub pid: i32,
    pub code: Option<i32>,
    pub stderr: String,
}

impl Serve {
    /// `amphi --root ROOT serve --functions FUNCTIONS --listen 127.0.0.1:0`,
    /// up once it logs where it listens.
    pub fn start(env: &Env, functions: &Path, extra: &[&str]) -> Result<Serve, Failed> {
        Serve::start_with_env(env, functions, extra, &[])
    }

    /// [`Serve::start`] with variables added to the server's environment.
    pub fn start_with_env(
        env: &Env,
        functions: &Path,
        extra: &[&str],
        vars: &[(&str, &str)],
    ) -> Result<Serve, Failed> {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let stderr = env.tmp.path().join(format!("serve.{n}.log"));
        let work_dir = env.tmp.path().join("work");
        let mut child = env
            .command(&[
                "serve",
                "--functions",
                functions.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .args(["--work-dir", work_dir.to_str().unwrap()])
            .args(extra)
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn amphi serve");
        let pid = child.id() as i32;
        // The server compiles every function before it listens, and
        // pre-initializes those that ask: the corpus's Python function
        // takes 16 s of that on an idle machine and over a minute beside
        // the rest of the suite. The deadline is for a stuck server only.
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let log = std::fs::read_to_string(&stderr).unwrap_or_default();
            if let Some(addr) = log.lines().find_map(listening_address) {
                return Ok(Serve {
                    child: Some(child),
                    addr,
                    pid,
                    stderr,
                    work_dir,
                });
            }
            if let Some(st) = child.try_wait().unwrap() {
                return Err(Failed {
                    pid,
                    code: st.code(),
                    stderr: log,
                });
            }
            if Instant::now() >= deadline {
                // Stuck (a compile helper blocked, say): nothing it started
                // may outlive the test.
                for p in std::iter::once(pid).chain(descendants(pid)) {
                    // SAFETY: our child server and the processes it started.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
                let _ = child.wait();
                reap_inits();
                panic!("amphi serve did not come up:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }

    /// The address of function `name`'s own port (`listen`).
    pub fn port_of(&self, name: &str) -> SocketAddr {
        self.log_text()
            .lines()
            .find_map(|l| function_address(l, name))
            .unwrap_or_else(|| panic!("function {name} has no port of its own"))
    }

    pub fn get(&self, path: &str) -> Response {
        self.client().request("GET", path, &[], b"")
    }

    /// Every JSON line the server logged.
    pub fn log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.stderr)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Ids of this server's envelopes that exist now (state directories).
    pub fn envelopes(&self, env: &Env) -> Vec<String> {
        let prefix = format!("serve{}-", self.pid);
        let mut ids: Vec<String> = std::fs::read_dir(&env.root)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// SIGTERM, then the exit status.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                reap_inits();
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("amphi serve did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Nothing of this server is left: no envelope state, no cgroup named
    /// after its envelopes, no process rooted in its work directory, no
    /// work directory, no mount.
    #[track_caller]
    pub fn assert_clean(&self, env: &Env) {
        assert_eq!(
            self.envelopes(env),
            Vec::<String>::new(),
            "envelope state left"
        );
        let prefix = format!("serve{}-", self.pid);
        for dir in cgroup_dirs("") {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(
                    !name.starts_with(&prefix),
                    "cgroup {} left",
                    e.path().display()
                );
            }
        }
        let left = processes_rooted_in(&self.work_dir);
        assert!(
            left.is_empty(),
            "processes {left:?} still run in the work dir"
        );
        let work: Vec<_> = std::fs::read_dir(&self.work_dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(work.is_empty(), "work directory entries left: {work:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let tmp = env.tmp.path().to_string_lossy().into_owned();
        assert!(!mounts.contains(&tmp), "host mount under {tmp} left");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: a signal to our own child; its keeper cleans up on EOF.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        reap_inits();
    }
}

/// Where function `name` listens on a port of its own (`listen`).
fn function_address(line: &str, name: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["msg"] != "function listening" || v["function"] != name {
        return None;
    }
    v["address"].as_str()?.strip_prefix("http://")?.parse().ok()
}

fn listening_address(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["msg"] != "listening" {
        return None;
    }
    v["address"].as_str()?.strip_prefix("http://")?.parse().ok()
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A keep-alive HTTP/1.1 client for one server: enough for tests and the
/// load generator (responses carry Content-Length).
pub struct Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr, conn: None }
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.try_request(method, path, headers, body)
            .or_else(|_| {
                // A kept-alive connection the server closed: once more, fresh.
                self.conn = None;
                self.try_request(method, path, headers, body)
            })
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().expect("connected");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
        {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let s = conn.get_mut();
        s.write_all(req.as_bytes())?;
        s.write_all(body)?;
        let mut line = String::new();
        if conn.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let chunked = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        let body = if chunked {
            read_chunked(conn)?
        } else {
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            conn.read_exact(&mut body)?;
            body
        };
        if headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close"))
        {
            self.conn = None;
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// A chunked body (RFC 9112 section 7.1), trailers skipped.
fn read_chunked(conn: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        conn.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            loop {
                line.clear();
                if conn.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        conn.read_exact(&mut body[start..])?;
        line.clear();
        conn.read_line(&mut line)?;
    }
}

/// Write `NAME.toml` into `dir` (made if missing); returns `dir`.
pub fn manifest(dir: &Path, name: &str, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
    dir.to_path_buf()
}

/// Resident set (kB) of a process and its children (the keeper), from /proc.
pub fn rss_kib(pid: i32) -> u64 {
    let own = |p: i32| -> u64 {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    };
    own(pid) + children(pid).into_iter().map(own).sum::<u64>()
}

/// The children of `pid`'s main thread (where a single-threaded fork lands).
fn children(pid: i32) -> Vec<i32> {
    task_children(pid, &pid.to_string())
}

fn task_children(pid: i32, tid: &str) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// Every process below `pid` that forked from any of its threads.
fn descendants(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for child in task_children(pid, &task.file_name().to_string_lossy()) {
            found.push(child);
            found.extend(descendants(child));
        }
    }
    found
}
