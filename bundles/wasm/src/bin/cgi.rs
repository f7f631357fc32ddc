//! A CGI function for `amphi serve`, built both for wasm32-wasip1 and as a
//! static native program; what it does depends on PATH_INFO:
//! `/` greets, `/echo` returns what it was given, `/tmp?ID` shows what an
//! invocation sees of /tmp while it writes there, `/sleep?MS`, `/alloc?MIB`,
//! `/crash`, `/status?CODE`, `/location` and `/garbage` exercise the host,
//! `/residue` tells what an instance finds in its memory of the invocation
//! before it (wasm only),
//! `/self` shows the invocation's credentials and user namespace (native
//! only: /proc), `/env?NAME` a variable, `/read?PATH` whether it may read a file, `/fetch?URL` a
//! GET of an http URL through `http_proxy` and `/tunnel?HOST:PORT/PATH` a
//! GET through a CONNECT tunnel of `https_proxy` (native only: sockets).
use std::io::{Read, Write};

fn var(k: &str) -> String {
    std::env::var(k).unwrap_or_default()
}

fn list_tmp() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/tmp")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn main() {
    let kind = if cfg!(target_family = "wasm") { "wasm" } else { "native" };
    let query = var("QUERY_STRING");
    let mut out = std::io::stdout().lock();
    match var("PATH_INFO").as_str() {
        "/echo" => {
            let mut body = Vec::new();
            std::io::stdin().read_to_end(&mut body).unwrap();
            write!(out, "Status: 201 Created\r\nContent-Type: text/plain\r\nX-Echo: {kind}\r\n\r\n").unwrap();
            writeln!(out, "method={}", var("REQUEST_METHOD")).unwrap();
            writeln!(out, "script={}", var("SCRIPT_NAME")).unwrap();
            writeln!(out, "query={query}").unwrap();
            writeln!(out, "x-test={}", var("HTTP_X_TEST")).unwrap();
            writeln!(out, "content-type={}", var("CONTENT_TYPE")).unwrap();
            writeln!(out, "content-length={}", var("CONTENT_LENGTH")).unwrap();
            writeln!(out, "greeting={}", var("GREETING")).unwrap();
            write!(out, "body=").unwrap();
            out.write_all(&body).unwrap();
        }
        "/tmp" => {
            let before = list_tmp();
            std::fs::write(format!("/tmp/{query}"), query.as_bytes()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(400));
            let after = list_tmp();
            write!(out, "Content-Type: text/plain\n\nbefore={}\nafter={}\n", before.join(","), after.join(",")).unwrap();
        }
        "/residue" => {
            write!(out, "Content-Type: text/plain\n\n{}\n", residue::check_then_dirty()).unwrap();
        }
        "/sleep" => {
            let ms: u64 = query.parse().unwrap_or(1000);
            std::thread::sleep(std::time::Duration::from_millis(ms));
            write!(out, "Content-Type: text/plain\n\nslept {ms} ms\n").unwrap();
        }
        "/alloc" => {
            let mib: usize = query.parse().unwrap_or(64);
            let mut v: Vec<Vec<u8>> = Vec::new();
            for _ in 0..mib {
                v.push(vec![1u8; 1 << 20]);
            }
            write!(out, "Content-Type: text/plain\n\nallocated {} MiB\n", v.len()).unwrap();
        }
        "/crash" => {
            eprintln!("cgi: crashing on purpose");
            std::process::abort();
        }
        "/status" => {
            write!(out, "Status: {query} Custom\nContent-Type: text/plain\n\ncustom status\n").unwrap();
        }
        "/location" => {
            write!(out, "Location: /elsewhere\n\n").unwrap();
        }
        "/self" => {
            // What the invocation's process is: credentials and confinement.
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            write!(out, "Content-Type: text/plain\n\n").unwrap();
            for l in status.lines().filter(|l| {
                ["Uid:", "CapEff:", "CapPrm:", "CapBnd:", "NoNewPrivs:", "Seccomp:"].iter().any(|k| l.starts_with(k))
            }) {
                writeln!(out, "{}", l.split_whitespace().collect::<Vec<_>>().join(" ")).unwrap();
            }
            let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
            for l in map.lines() {
                writeln!(out, "uid_map: {}", l.split_whitespace().collect::<Vec<_>>().join(" ")).unwrap();
            }
        }
        "/fetch" => {
            write!(out, "Content-Type: text/plain\n\n").unwrap();
            let host = query.trim_start_matches("http://").split('/').next().unwrap_or("");
            let request = format!("GET {query} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            match through_proxy("http_proxy", &[request.as_bytes()]) {
                Ok(answer) => out.write_all(&answer).unwrap(),
                Err(e) => write!(out, "error: {e}").unwrap(),
            }
        }
        "/tunnel" => {
            write!(out, "Content-Type: text/plain\n\n").unwrap();
            let (target, path) = query.split_at(query.find('/').unwrap_or(query.len()));
            let connect = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
            let get = format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
            match through_proxy("https_proxy", &[connect.as_bytes(), get.as_bytes()]) {
                Ok(answer) => out.write_all(&answer).unwrap(),
                Err(e) => write!(out, "error: {e}").unwrap(),
            }
        }
        "/env" => {
            write!(out, "Content-Type: text/plain\n\n{}", var(&query)).unwrap();
        }
        "/read" => {
            write!(out, "Content-Type: text/plain\n\n").unwrap();
            match std::fs::read_to_string(&query) {
                Ok(text) => write!(out, "read: {text}").unwrap(),
                Err(e) => write!(out, "error: {}", e.raw_os_error().unwrap_or(0)).unwrap(),
            }
        }
        "/garbage" => {
            write!(out, "this is not a CGI response").unwrap();
        }
        _ => {
            write!(out, "Content-Type: text/plain\n\nhello from {kind}\n").unwrap();
        }
    }
}

/// Send each of `messages` to the proxy `var` names, the next after the
/// answer to the last has begun, and return all it answered.
fn through_proxy(var: &str, messages: &[&[u8]]) -> std::io::Result<Vec<u8>> {
    let proxy = std::env::var(var).map_err(|_| std::io::Error::other(format!("no {var}")))?;
    let addr = proxy.trim_start_matches("http://").trim_end_matches('/');
    let mut conn = std::net::TcpStream::connect(addr)?;
    let mut answer = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        conn.write_all(m)?;
        if i + 1 < messages.len() {
            // The proxy's answer to CONNECT: up to its blank line.
            let mut byte = [0u8; 1];
            while !answer.ends_with(b"\r\n\r\n") {
                if conn.read(&mut byte)? == 0 {
                    return Ok(answer);
                }
                answer.push(byte[0]);
            }
        }
    }
    conn.read_to_end(&mut answer)?;
    Ok(answer)
}

/// A fresh instance must find its module's image in its memory, whatever
/// the instance before it in the same slot wrote: a static with a value in
/// the module's data, a zeroed static, and the pages memory grows by. Each
/// is checked, then written all over, for the next invocation to check.
mod residue {
    // Four pages each: enough to span pages, small enough that the data
    // static does not weigh on the module the benchmark's CGI rows load.
    const LEN: usize = 16 << 10;
    static mut DATA: [u8; LEN] = [0x5a; LEN];
    static mut ZEROED: [u8; LEN] = [0; LEN];

    /// Bytes of `len` at `at` that are not `want`, then all set to 0xa5.
    fn differing_then_dirty(at: *mut u8, len: usize, want: u8) -> usize {
        (0..len)
            .filter(|i| {
                // SAFETY: `at` holds `len` bytes of this instance's memory;
                // volatile, so the reads and writes are not elided.
                unsafe {
                    let byte = at.add(*i);
                    let was = byte.read_volatile();
                    byte.write_volatile(0xa5);
                    was != want
                }
            })
            .count()
    }

    #[cfg(target_family = "wasm")]
    fn grown() -> usize {
        let pages = 16;
        let before = core::arch::wasm32::memory_grow(0, pages);
        assert_ne!(before, usize::MAX, "memory.grow");
        differing_then_dirty((before * 65536) as *mut u8, pages * 65536, 0)
    }

    #[cfg(not(target_family = "wasm"))]
    fn grown() -> usize {
        0
    }

    pub fn check_then_dirty() -> String {
        let data = differing_then_dirty(std::ptr::addr_of_mut!(DATA).cast(), LEN, 0x5a);
        let zeroed = differing_then_dirty(std::ptr::addr_of_mut!(ZEROED).cast(), LEN, 0);
        let grown = grown();
        if data + zeroed + grown == 0 {
            "clean".into()
        } else {
            format!("dirty: {data} bytes of data, {zeroed} zeroed, {grown} grown")
        }
    }
}
