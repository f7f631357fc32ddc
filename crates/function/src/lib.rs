//! Function manifests for `amphi serve`: a small TOML file that binds a
//! route to a wasm module, a native program or an OCI bundle, with the
//! envelope's limits. A manifest becomes an ordinary OCI spec here, so a
//! function runs in the same envelope as any container.
//!
//! ```toml
//! route = "/hello"          # default: /<file stem>
//! module = "hello.wasm"     # or program = "bin/hello", or bundle = "dir"
//! interface = "cgi"         # or "http": a wasi:http/proxy component
//! memory = "64Mi"
//! timeout = "5s"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, UserBuilder,
};
use serde::Deserialize;

/// What a manifest's code is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A wasm module or component (`module = ...`).
    Module,
    /// A native program (`program = ...`).
    Program,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("function {function}: {field}: {why}")]
    Invalid {
        function: String,
        field: String,
        why: String,
    },
    #[error("{0}")]
    Core(#[from] amphi_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The annotation on an envelope's spec naming its function: the function
/// host's handler takes exactly the containers that carry it.
pub const FUNCTION_ANNOTATION: &str = "io.github.amphi.function";

/// The annotation `preinit = true` sets on a module's envelope (the wasm
/// executor's `preinit::ANNOTATION`, which this crate cannot import).
pub const PREINIT_ANNOTATION: &str = "io.github.amphi.preinit";

/// The path `amphi serve` answers itself; no function may take it.
pub const METRICS_ROUTE: &str = "/metrics";

/// The largest manifest read: a manifest is a few lines.
const MAX_MANIFEST: u64 = 64 << 10;

/// Where a module or program given as a host file appears in the envelope.
pub const MODULE_PATH: &str = "/function.wasm";
pub const PROGRAM_PATH: &str = "/function";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interface {
    /// CGI (RFC 3875, as WAGI runs modules): variables in the environment,
    /// the body on stdin, headers and body on stdout.
    Cgi,
    /// A component exporting `wasi:http/incoming-handler`.
    Http,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A module or program on the host, mounted read-only into an empty root.
    File { path: PathBuf, kind: Kind },
    /// A module or program inside a root filesystem used read-only.
    InRoot {
        rootfs: PathBuf,
        path: PathBuf,
        kind: Kind,
    },
    /// An OCI bundle: its config.json says what runs and how.
    Bundle(PathBuf),
}

impl Source {
    /// Module or program; `None` for a bundle (its config.json says).
    pub fn kind(&self) -> Option<Kind> {
        match self {
            Source::File { kind, .. } | Source::InRoot { kind, .. } => Some(*kind),
            Source::Bundle(_) => None,
        }
    }
}

/// How far apart a function's invocations are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// An envelope (container) per invocation, from a warm pool: nothing
    /// but the function's files is shared between invocations.
    Envelope,
    /// A fresh process (native) or instance (wasm) per invocation in the
    /// function's shared envelope: memory is never shared; the envelope's
    /// kernel objects (its cgroup, namespaces, the page cache) are.
    Instance,
    /// A `wasi:http` instance kept for up to `requests` requests: what a
    /// request leaves in linear memory, globals, tables and the instance's
    /// `/tmp`, a later request on the same instance sees. A WASI 0.3
    /// instance serves up to `concurrency` of them at once (its handler is
    /// async); a 0.2 instance one at a time.
    Reuse { requests: u32, concurrency: u32 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub name: String,
    pub route: String,
    pub source: Source,
    pub interface: Interface,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// cgroup memory limit of the envelope, bytes.
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<i64>,
    pub timeout: Duration,
    /// Invocations running at once; more wait in a queue of `queue`.
    pub concurrency: usize,
    pub queue: usize,
    pub max_body: u64,
    /// Size of the tmpfs each invocation gets at /tmp (0: none).
    pub tmp: u64,
    pub isolation: Isolation,
    /// Envelopes kept warm for `Isolation::Envelope`.
    pub pool: usize,
    /// Envelopes idle this long are removed (scale to zero).
    pub idle: Duration,
    /// Where the function's outgoing `wasi:http` requests may go; the host
    /// makes them (the envelope has no network) and refuses the rest.
    pub allowed_outbound_hosts: Vec<OutboundPrefix>,
    /// The first host uid and gid of the function's user namespace (its
    /// ids 0 to 65535), or `None` when it runs in the host's.
    pub user_namespace: Option<u32>,
    /// A port of the function's own: its envelope's worker accepts and
    /// serves these connections itself, with no hop through the server.
    pub listen: Option<std::net::SocketAddr>,
    /// Run the module's `wizer.initialize` once, when it is compiled, and
    /// start every instance from the snapshot (`io.github.amphi.preinit`).
    pub preinit: bool,
}

/// Functions' user namespaces map 65536 ids each onto host ids from here
/// up, in one of 16383 slots picked by the function's name: far from the
/// ids of the host's users and of rootless containers (`/etc/subuid`
/// ranges start at 100000 and are small).
pub const USERNS_HOST_BASE: u32 = 0x4000_0000;
pub const USERNS_SIZE: u32 = 65536;

/// The host id that a function's id 0 maps to.
pub fn userns_host_base(name: &str) -> u32 {
    // FNV-1a: stable across builds, unlike std's hasher.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    USERNS_HOST_BASE + (hash % 16383) as u32 * USERNS_SIZE
}

/// One `allowed_outbound_hosts` entry: `scheme://host[:port][/path]`. A
/// request is allowed when scheme, host and port are equal and its path is
/// the entry's path or below it (at a `/`). A host `*.example.com` stands
/// for every name below `example.com` (not that name itself, and never an
/// address); a port `*` for every port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundPrefix {
    pub scheme: String,
    /// Lower case, as DNS compares names; `*.` then a domain for a
    /// wildcard.
    pub host: String,
    /// `None`: any port.
    pub port: Option<u16>,
    /// Empty for every path; else starts with / and does not end with one.
    pub path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    route: Option<String>,
    module: Option<PathBuf>,
    program: Option<PathBuf>,
    rootfs: Option<PathBuf>,
    bundle: Option<PathBuf>,
    interface: Option<String>,
    args: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    memory: Option<Quantity>,
    cpus: Option<f64>,
    pids: Option<i64>,
    timeout: Option<Quantity>,
    concurrency: Option<i64>,
    queue: Option<i64>,
    max_body: Option<Quantity>,
    tmp: Option<Quantity>,
    isolation: Option<String>,
    reuse: Option<i64>,
    /// Isolation "reuse": requests in flight at once in one kept WASI 0.3
    /// instance.
    reuse_concurrency: Option<i64>,
    /// The older spelling of `isolation = "envelope"`.
    strict: Option<bool>,
    pool: Option<i64>,
    idle: Option<Quantity>,
    allowed_outbound_hosts: Option<Vec<String>>,
    user_namespace: Option<bool>,
    listen: Option<String>,
    preinit: Option<bool>,
}

/// A size or a duration: a bare number or a string with a unit.
#[derive(Deserialize)]
#[serde(untagged)]
enum Quantity {
    Number(i64),
    Text(String),
}

/// Every function of `path`: a manifest file, or each `*.toml` in a directory.
/// All of them parse and validate, or none is returned.
pub fn load(path: &Path) -> Result<Vec<Function>> {
    let io = |e| Error::Core(amphi_core::Error::io("read --functions", path, e));
    let meta = std::fs::metadata(path).map_err(io)?;
    let files = if meta.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::Core(amphi_core::Error::Unsupported(format!(
                "--functions {}: no *.toml manifest in this directory",
                path.display()
            ))));
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut functions: Vec<Function> = Vec::new();
    for file in files {
        let f = load_file(&file)?;
        if let Some(other) = functions.iter().find(|o| o.route == f.route) {
            return Err(bad(
                &f.name,
                "route",
                format!("{:?} is also the route of function {}", f.route, other.name),
            ));
        }
        if let Some(other) = functions
            .iter()
            .find(|o| o.listen.is_some_and(|a| a.port() != 0) && o.listen == f.listen)
        {
            return Err(bad(
                &f.name,
                "listen",
                format!(
                    "{} is also where function {} listens",
                    f.listen.expect("some"),
                    other.name
                ),
            ));
        }
        if let Some(other) = functions.iter().find(|o| o.name == f.name) {
            return Err(bad(
                &f.name,
                "name",
                format!("two manifests are named {}", other.name),
            ));
        }
        functions.push(f);
    }
    Ok(functions)
}

fn load_file(file: &Path) -> Result<Function> {
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let io = |e| Error::Core(amphi_core::Error::io("read manifest", file, e));
    let len = std::fs::metadata(file).map_err(io)?.len();
    if len > MAX_MANIFEST {
        return Err(bad(
            &name,
            "(manifest)",
            format!("{len} bytes; manifests of at most {MAX_MANIFEST} bytes are read"),
        ));
    }
    let text = std::fs::read_to_string(file).map_err(io)?;
    let dir = std::fs::canonicalize(file)
        .map_err(io)?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let f = parse(&name, &text)?;
    f.resolve(&dir)
}

fn bad(function: &str, field: &str, why: impl Into<String>) -> Error {
    Error::Invalid {
        function: function.into(),
        field: field.into(),
        why: why.into(),
    }
}

/// A manifest's text, checked for everything but the files it names (their
/// paths are still relative to the manifest's directory).
pub fn parse(name: &str, text: &str) -> Result<Function> {
    check_name(name)?;
    let raw: Raw = toml::from_str(text).map_err(|e| {
        let field = e
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].lines().count().max(1);
                format!("line {line}")
            })
            .unwrap_or_else(|| "(manifest)".into());
        bad(name, &field, e.message().to_string())
    })?;
    let route = raw.route.unwrap_or_else(|| format!("/{name}"));
    check_route(name, &route)?;
    let interface = match raw.interface.as_deref() {
        None | Some("cgi") => Interface::Cgi,
        Some("http") => Interface::Http,
        Some(other) => {
            return Err(bad(
                name,
                "interface",
                format!("{other:?}; give \"cgi\" or \"http\" (a wasi:http/proxy component)"),
            ))
        }
    };
    let source = what_runs(
        name,
        (raw.module, raw.program, raw.bundle, raw.rootfs),
        interface,
    )?;
    let env = raw.env.unwrap_or_default();
    for k in env.keys() {
        if k.is_empty() || k.contains(['=', '\0']) {
            return Err(bad(
                name,
                &format!("env.{k}"),
                "a variable name is non-empty, without = or NUL",
            ));
        }
    }
    let memory = raw.memory.map(|q| size(name, "memory", q)).transpose()?;
    if let Some(m) = memory {
        if m < 8 << 20 {
            return Err(bad(name, "memory", format!("{m} bytes; give at least 8Mi")));
        }
    }
    if let Some(c) = raw.cpus {
        if !(c > 0.0 && c <= 1024.0) {
            return Err(bad(
                name,
                "cpus",
                format!("{c}; give a number of CPUs in (0, 1024]"),
            ));
        }
    }
    if let Some(p) = raw.pids {
        if p < 1 {
            return Err(bad(name, "pids", format!("{p}; give at least 1")));
        }
    }
    let timeout = duration(name, "timeout", raw.timeout, Duration::from_secs(10))?;
    if timeout.is_zero() || timeout > Duration::from_secs(3600) {
        return Err(bad(name, "timeout", "give a duration in (0, 1h]"));
    }
    let isolation = isolation(
        name,
        raw.isolation.as_deref(),
        raw.strict,
        (raw.reuse, raw.reuse_concurrency),
        interface,
    )?;
    let idle = duration(name, "idle", raw.idle, Duration::from_secs(60))?;
    let allowed_outbound_hosts = raw
        .allowed_outbound_hosts
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            OutboundPrefix::parse(entry).map_err(|why| {
                bad(
                    name,
                    &format!("allowed_outbound_hosts[{i}]"),
                    format!("{entry:?}: {why}"),
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if !allowed_outbound_hosts.is_empty()
        && interface == Interface::Cgi
        && source.kind() == Some(Kind::Module)
    {
        return Err(bad(
            name,
            "allowed_outbound_hosts",
            "a wasm CGI module has no sockets to make requests with; use interface = \"http\" (wasi:http) or a native program",
        ));
    }
    let user_namespace =
        match (raw.user_namespace, &source) {
            (Some(true), Source::Bundle(_)) => return Err(bad(
                name,
                "user_namespace",
                "a bundle's config.json says its namespaces and id mappings; drop user_namespace",
            )),
            (_, Source::Bundle(_)) | (Some(false), _) => None,
            (None | Some(true), _) => Some(userns_host_base(name)),
        };
    let strict = isolation == Isolation::Envelope;
    let listen = own_port(name, raw.listen, strict, &source)?;
    let preinit = raw.preinit.unwrap_or(false);
    if preinit && source.kind() != Some(Kind::Module) {
        return Err(bad(
            name,
            "preinit",
            "pre-initialization is for wasm modules and components (module = FILE); a native program has no wizer.initialize to run",
        ));
    }
    Ok(Function {
        name: name.into(),
        route,
        source,
        interface,
        args: raw.args.unwrap_or_default(),
        env: env.into_iter().collect(),
        memory,
        cpus: raw.cpus,
        pids: raw.pids,
        timeout,
        concurrency: count(name, "concurrency", raw.concurrency, 16, 1, 4096)?,
        queue: count(name, "queue", raw.queue, 64, 0, 1 << 20)?,
        max_body: match raw.max_body {
            None => 1 << 20,
            Some(q) => size(name, "max_body", q)?,
        },
        tmp: match raw.tmp {
            None => 16 << 20,
            Some(q) => size(name, "tmp", q)?,
        },
        isolation,
        pool: count(name, "pool", raw.pool, if strict { 2 } else { 0 }, 0, 256)?,
        idle,
        allowed_outbound_hosts,
        user_namespace,
        listen,
        preinit,
    })
}

/// The manifest's file name names the function.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || name.starts_with(['.', '-'])
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(bad(
            name,
            "name",
            "the manifest's file name (without .toml) names the function: 1 to 64 of \
             A-Z a-z 0-9 . _ -, not starting with . or -",
        ));
    }
    Ok(())
}

/// The one of `module`, `program` and `bundle` the manifest gives, and
/// whether `interface` can run it.
fn what_runs(
    name: &str,
    // module, program, bundle, rootfs
    given: (
        Option<PathBuf>,
        Option<PathBuf>,
        Option<PathBuf>,
        Option<PathBuf>,
    ),
    interface: Interface,
) -> Result<Source> {
    let source = match given {
        (Some(m), None, None, rootfs) => source(m, rootfs, Kind::Module),
        (None, Some(p), None, rootfs) => source(p, rootfs, Kind::Program),
        (None, None, Some(b), None) => Source::Bundle(b),
        (None, None, Some(_), Some(_)) => {
            return Err(bad(
                name,
                "rootfs",
                "a bundle has its own root filesystem; drop rootfs",
            ))
        }
        (None, None, None, _) => {
            return Err(bad(
                name,
                "module",
                "say what runs: module = FILE (wasm), program = FILE (native) or bundle = DIR",
            ))
        }
        _ => {
            return Err(bad(
                name,
                "module",
                "give only one of module, program and bundle",
            ))
        }
    };
    if interface == Interface::Http && source.kind() == Some(Kind::Program) {
        return Err(bad(
            name,
            "interface",
            "\"http\" runs wasi:http/proxy components; give module = FILE, or use \"cgi\" for a native program",
        ));
    }
    Ok(source)
}

/// `listen`: a port of the function's own, for a wasm function with a
/// warm envelope.
fn own_port(
    name: &str,
    listen: Option<String>,
    strict: bool,
    source: &Source,
) -> Result<Option<std::net::SocketAddr>> {
    let listen = listen
        .map(|l| {
            l.parse::<std::net::SocketAddr>().map_err(|_| {
                bad(
                    name,
                    "listen",
                    format!("{l:?}; give an address and port, e.g. \"127.0.0.1:8081\""),
                )
            })
        })
        .transpose()?;
    if listen.is_some() && strict {
        return Err(bad(
            name,
            "listen",
            "a port of its own is served by the function's one warm envelope; isolation = \"envelope\" makes an envelope per request: drop listen or use \"instance\"",
        ));
    }
    if listen.is_some() && source.kind() == Some(Kind::Program) {
        return Err(bad(
            name,
            "listen",
            "a port of its own is for wasm functions (module = FILE); a native program is served through the server's port",
        ));
    }
    Ok(listen)
}

fn isolation(
    name: &str,
    level: Option<&str>,
    strict: Option<bool>,
    (reuse, reuse_concurrency): (Option<i64>, Option<i64>),
    interface: Interface,
) -> Result<Isolation> {
    let level = match (level, strict) {
        (Some(level), Some(strict)) if (level == "envelope") != strict => {
            return Err(bad(
                name,
                "strict",
                format!(
                    "strict = {strict} contradicts isolation = {level:?}; give isolation alone"
                ),
            ))
        }
        (Some(level), _) => level,
        (None, Some(true)) => "envelope",
        (None, _) => "instance",
    };
    let isolation = match level {
        "envelope" => Isolation::Envelope,
        "instance" => Isolation::Instance,
        "reuse" => {
            if interface != Interface::Http {
                return Err(bad(
                    name,
                    "isolation",
                    "\"reuse\" keeps a wasi:http instance between requests; a CGI program runs once per instance: use \"instance\" or \"envelope\"",
                ));
            }
            // wasmtime serve's default for WASI 0.3.
            Isolation::Reuse {
                requests: count(name, "reuse", reuse, 1000, 1, 1 << 20)? as u32,
                concurrency: count(name, "reuse_concurrency", reuse_concurrency, 16, 1, 1024)?
                    as u32,
            }
        }
        other => {
            return Err(bad(
                name,
                "isolation",
                format!("{other:?}; give \"envelope\", \"instance\" or \"reuse\""),
            ))
        }
    };
    if reuse.is_some() && !matches!(isolation, Isolation::Reuse { .. }) {
        return Err(bad(
            name,
            "reuse",
            "requests per instance apply to isolation = \"reuse\" only",
        ));
    }
    if reuse_concurrency.is_some() && !matches!(isolation, Isolation::Reuse { .. }) {
        return Err(bad(
            name,
            "reuse_concurrency",
            "requests at once per kept instance apply to isolation = \"reuse\" only",
        ));
    }
    Ok(isolation)
}

impl Function {
    /// An envelope per invocation.
    pub fn strict(&self) -> bool {
        self.isolation == Isolation::Envelope
    }

    /// Whether an outgoing request to `scheme://host:port/path` is allowed.
    pub fn allows_outbound(&self, scheme: &str, host: &str, port: u16, path: &str) -> bool {
        self.allowed_outbound_hosts
            .iter()
            .any(|p| p.allows(scheme, host, port, path))
    }
}

impl OutboundPrefix {
    pub fn parse(entry: &str) -> std::result::Result<OutboundPrefix, String> {
        const FORM: &str =
            "give a URL prefix: http:// or https://, a host, an optional :port and path";
        let (scheme, rest) = entry
            .split_once("://")
            .ok_or_else(|| format!("no scheme; {FORM}"))?;
        let default_port = match scheme {
            "http" => 80,
            "https" => 443,
            _ => return Err(format!("scheme {scheme:?}; {FORM}")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if rest.contains(['?', '#', '%', ' ', '\\', '\0']) || !rest.is_ascii() {
            return Err(format!("no query, fragment, escapes or spaces; {FORM}"));
        }
        if authority.contains('@') {
            return Err(format!("no user name or password; {FORM}"));
        }
        // An IPv6 address is bracketed, so the port follows the last ']'.
        let port_colon = match authority.rfind(']') {
            Some(end) => authority[end..].find(':').map(|i| end + i),
            None => authority.find(':'),
        };
        let (host, port) = match port_colon {
            Some(i) if &authority[i + 1..] == "*" => (&authority[..i], None),
            Some(i) => {
                let p = &authority[i + 1..];
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("port {p:?}; {FORM}"))?;
                (&authority[..i], Some(port))
            }
            None => (authority, Some(default_port)),
        };
        if let Some(domain) = host.strip_prefix("*.") {
            // At least two labels, one with a letter: a domain, not an
            // address's tail and not a whole top-level domain.
            let labels: Vec<&str> = domain.split('.').collect();
            if labels.len() < 2
                || labels.iter().any(|l| l.is_empty() || l.contains('*'))
                || !domain.bytes().any(|b| b.is_ascii_alphabetic())
            {
                return Err(format!(
                    "a wildcard host is *. then a domain of two or more labels (*.example.com); {FORM}"
                ));
            }
        } else if host.contains('*') {
            return Err(format!(
                "a wildcard stands for the first labels of a host (*.example.com) or for the port (:*); {FORM}"
            ));
        }
        if path.contains('*') {
            return Err(format!("no wildcard in the path; {FORM}"));
        }
        if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
            return Err(format!("an IPv6 address goes in brackets; {FORM}"));
        }
        if host.is_empty() {
            return Err(format!("no host; {FORM}"));
        }
        if path.split('/').any(|s| s == "." || s == "..") {
            return Err(format!("no . or .. segments; {FORM}"));
        }
        Ok(OutboundPrefix {
            scheme: scheme.into(),
            host: host.to_ascii_lowercase(),
            port,
            path: path.trim_end_matches('/').into(),
        })
    }

    /// `path` is the request's, still percent-encoded: a path that could
    /// name something else once the backend decodes or normalises it
    /// (dot segments, encoded dots or slashes) is below no prefix.
    pub fn allows(&self, scheme: &str, host: &str, port: u16, path: &str) -> bool {
        if self.scheme != scheme || !self.allows_host(host) || self.port.is_some_and(|p| p != port)
        {
            return false;
        }
        if self.path.is_empty() {
            return true;
        }
        let lower = path.to_ascii_lowercase();
        let ambiguous = path.split('/').any(|s| s == "." || s == "..")
            || lower.contains("%2e")
            || lower.contains("%2f")
            || lower.contains("%5c")
            || path.contains('\\');
        !ambiguous
            && path
                .strip_prefix(&self.path)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

impl OutboundPrefix {
    fn allows_host(&self, host: &str) -> bool {
        let Some(domain) = self.host.strip_prefix("*.") else {
            return self.host.eq_ignore_ascii_case(host);
        };
        let host = host.to_ascii_lowercase();
        // A name ending in the domain's labels could still be an address
        // (an IPv4 literal's tail): those never match a wildcard.
        host.parse::<std::net::Ipv4Addr>().is_err()
            && !host.starts_with('[')
            && host
                .strip_suffix(domain)
                .is_some_and(|below| below.len() > 1 && below.ends_with('.'))
    }
}

impl std::fmt::Display for OutboundPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}://{}:{port}{}", self.scheme, self.host, self.path),
            None => write!(f, "{}://{}:*{}", self.scheme, self.host, self.path),
        }
    }
}

fn source(path: PathBuf, rootfs: Option<PathBuf>, kind: Kind) -> Source {
    match rootfs {
        None => Source::File { path, kind },
        Some(rootfs) => Source::InRoot {
            rootfs,
            path: Path::new("/").join(path),
            kind,
        },
    }
}

fn check_route(name: &str, route: &str) -> Result<()> {
    let why = if !route.starts_with('/') {
        "a route is a path starting with /"
    } else if route.contains(['?', '#', '%', ' ', '\0']) || !route.is_ascii() {
        "a route is a plain ASCII path: no ? # % or spaces"
    } else if route.split('/').any(|s| s == "." || s == "..") {
        "a route has no . or .. segments"
    } else if route.len() > 1 && route.ends_with('/') {
        "a route does not end with / (it also matches the paths below it)"
    } else if route == METRICS_ROUTE || route.starts_with("/metrics/") {
        "/metrics is amphi serve's own"
    } else {
        return Ok(());
    };
    Err(bad(name, "route", format!("{route:?}: {why}")))
}

fn count(
    name: &str,
    field: &str,
    v: Option<i64>,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize> {
    let Some(v) = v else { return Ok(default) };
    usize::try_from(v)
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| bad(name, field, format!("{v}; give a number in [{min}, {max}]")))
}

/// Bytes from `1048576`, `"512Ki"`, `"64Mi"`, `"1Gi"` (powers of 1024,
/// the units `amphi update --memory` takes).
fn size(name: &str, field: &str, q: Quantity) -> Result<u64> {
    match q {
        Quantity::Number(n) => {
            u64::try_from(n).map_err(|_| bad(name, field, format!("{n}; sizes are not negative")))
        }
        Quantity::Text(t) => amphi_core::util::parse_size(&t).ok_or_else(|| {
            bad(
                name,
                field,
                format!("{t:?}; give bytes, or a number with Ki, Mi or Gi"),
            )
        }),
    }
}

/// A duration from seconds (`5`) or `"250ms"`, `"5s"`, `"2m"`, `"1m30s"`.
fn duration(name: &str, field: &str, q: Option<Quantity>, default: Duration) -> Result<Duration> {
    let d = match q {
        None => return Ok(default),
        Some(Quantity::Number(n)) => u64::try_from(n).map(Duration::from_secs).ok(),
        Some(Quantity::Text(ref t)) => amphi_core::util::parse_duration(t),
    };
    d.filter(|d| *d <= Duration::from_secs(365 * 24 * 3600))
        .ok_or_else(|| {
            let given = match q {
                Some(Quantity::Text(t)) => format!("{t:?}"),
                Some(Quantity::Number(n)) => n.to_string(),
                None => String::new(),
            };
            bad(
                name,
                field,
                format!("{given}; give a duration like 250ms, 5s, 2m or 1h"),
            )
        })
}

impl Function {
    /// Paths made absolute against the manifest's directory and checked to exist.
    fn resolve(mut self, dir: &Path) -> Result<Function> {
        let abs = |p: &Path| dir.join(p);
        let name = self.name.clone();
        let exists = |field: &str, p: &Path, want_dir: bool| -> Result<PathBuf> {
            let meta = std::fs::metadata(p)
                .map_err(|e| bad(&name, field, format!("{}: {e}", p.display())))?;
            if meta.is_dir() != want_dir {
                let what = if want_dir {
                    "a directory"
                } else {
                    "a regular file"
                };
                return Err(bad(&name, field, format!("{}: not {what}", p.display())));
            }
            std::fs::canonicalize(p).map_err(|e| bad(&name, field, format!("{}: {e}", p.display())))
        };
        let field = |kind: Kind| {
            if kind == Kind::Module {
                "module"
            } else {
                "program"
            }
        };
        self.source = match self.source {
            Source::File { path, kind } => Source::File {
                path: exists(field(kind), &abs(&path), false)?,
                kind,
            },
            Source::InRoot { rootfs, path, kind } => {
                let rootfs = exists("rootfs", &abs(&rootfs), true)?;
                if self.tmp > 0 && !rootfs.join("tmp").is_dir() {
                    return Err(bad(
                        &name,
                        "tmp",
                        format!(
                            "{} has no /tmp directory for the invocation's tmpfs; create it or set tmp = 0",
                            rootfs.display()
                        ),
                    ));
                }
                Source::InRoot { rootfs, path, kind }
            }
            Source::Bundle(b) => {
                let b = exists("bundle", &abs(&b), true)?;
                exists("bundle", &b.join(amphi_core::spec::CONFIG), false)?;
                Source::Bundle(b)
            }
        };
        Ok(self)
    }

    /// The function's OCI spec: for a bundle, its config.json with the
    /// manifest's limits; otherwise a spec made here, locked down like
    /// `amphi spec`'s (no capabilities, no new privileges, the default
    /// seccomp profile, masked paths, a read-only root, no network).
    /// `rootfs` is where an empty root is made for a host file.
    pub fn spec(&self, rootfs: &Path) -> Result<Spec> {
        let mut spec = match &self.source {
            Source::Bundle(dir) => {
                amphi_core::spec::Bundle::load(dir)
                    .map_err(|e| bad(&self.name, "bundle", e.to_string()))?
                    .spec
            }
            Source::File { path, kind } => {
                for d in ["proc", "dev", "tmp", "sys"] {
                    std::fs::create_dir_all(rootfs.join(d))
                        .map_err(|e| amphi_core::Error::io("create", rootfs.join(d), e))?;
                }
                let inside = self.inside(*kind);
                let mountpoint = rootfs.join(inside.trim_start_matches('/'));
                std::fs::write(&mountpoint, b"")
                    .map_err(|e| amphi_core::Error::io("create", &mountpoint, e))?;
                let bind = MountBuilder::default()
                    .destination(inside)
                    .typ("bind")
                    .source(path)
                    .options(vec![
                        "rbind".into(),
                        "ro".into(),
                        "nosuid".into(),
                        "nodev".into(),
                    ])
                    .build()
                    .expect("bind mount");
                self.generated(rootfs, inside, *kind, vec![bind])
            }
            Source::InRoot { rootfs, path, kind } => {
                self.generated(rootfs, &path.to_string_lossy(), *kind, Vec::new())
            }
        };
        self.apply_limits(&mut spec);
        if let Some(p) = spec.process().clone() {
            let mut p = p;
            let mut env = p.env().clone().unwrap_or_default();
            env.extend(self.env.iter().map(|(k, v)| format!("{k}={v}")));
            p.set_env(Some(env));
            if !self.args.is_empty() {
                let mut args = p.args().clone().unwrap_or_default();
                args.extend(self.args.iter().cloned());
                p.set_args(Some(args));
            }
            spec.set_process(Some(p));
        }
        Ok(spec)
    }

    fn inside(&self, kind: Kind) -> &'static str {
        match kind {
            Kind::Module => MODULE_PATH,
            Kind::Program => PROGRAM_PATH,
        }
    }

    fn generated(&self, rootfs: &Path, arg0: &str, kind: Kind, extra: Vec<Mount>) -> Spec {
        let mut spec = Spec::default();
        spec.set_hostname(Some(self.name.chars().take(64).collect()));
        spec.set_root(Some(
            RootBuilder::default()
                .path(rootfs)
                .readonly(true)
                .build()
                .expect("root"),
        ));
        let process = ProcessBuilder::default()
            .terminal(false)
            .user(
                UserBuilder::default()
                    .uid(0u32)
                    .gid(0u32)
                    .build()
                    .expect("user"),
            )
            .args(vec![arg0.to_string()])
            .env(vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ])
            .cwd("/")
            .capabilities(
                oci_spec::runtime::LinuxCapabilitiesBuilder::default()
                    .bounding(oci_spec::runtime::Capabilities::new())
                    .effective(oci_spec::runtime::Capabilities::new())
                    .permitted(oci_spec::runtime::Capabilities::new())
                    .inheritable(oci_spec::runtime::Capabilities::new())
                    .ambient(oci_spec::runtime::Capabilities::new())
                    .build()
                    .expect("capabilities"),
            )
            .no_new_privileges(true)
            .rlimits(vec![PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .hard(1024u64)
                .soft(1024u64)
                .build()
                .expect("rlimit")])
            .build()
            .expect("process");
        spec.set_process(Some(process));
        let mut mounts: Vec<Mount> = spec
            .mounts()
            .clone()
            .unwrap_or_default()
            .into_iter()
            // No /sys/fs/cgroup: a function has no business with cgroups.
            .filter(|m| m.destination() != Path::new("/sys/fs/cgroup"))
            .collect();
        mounts.extend(extra);
        spec.set_mounts(Some(mounts));
        let default_linux = spec.linux().clone().unwrap_or_default();
        let mut namespaces = default_linux.namespaces().clone().unwrap_or_default();
        let mut mappings = Vec::new();
        if let Some(host_id) = self.user_namespace {
            namespaces.push(
                oci_spec::runtime::LinuxNamespaceBuilder::default()
                    .typ(oci_spec::runtime::LinuxNamespaceType::User)
                    .build()
                    .expect("namespace"),
            );
            mappings.push(
                oci_spec::runtime::LinuxIdMappingBuilder::default()
                    .container_id(0u32)
                    .host_id(host_id)
                    .size(USERNS_SIZE)
                    .build()
                    .expect("id mapping"),
            );
        }
        let linux = LinuxBuilder::default()
            .uid_mappings(mappings.clone())
            .gid_mappings(mappings)
            .namespaces(namespaces)
            .masked_paths(default_linux.masked_paths().clone().unwrap_or_default())
            .readonly_paths(default_linux.readonly_paths().clone().unwrap_or_default())
            .seccomp(amphi_core::seccomp::default_profile())
            .build()
            .expect("linux");
        spec.set_linux(Some(linux));
        if kind == Kind::Module {
            let mut a = std::collections::HashMap::new();
            a.insert("run.oci.handler".to_string(), "wasm".to_string());
            if self.preinit {
                a.insert(PREINIT_ANNOTATION.to_string(), "true".to_string());
            }
            spec.set_annotations(Some(a));
        }
        spec
    }

    fn apply_limits(&self, spec: &mut Spec) {
        if self.memory.is_none() && self.cpus.is_none() && self.pids.is_none() {
            return;
        }
        let mut linux = spec.linux().clone().unwrap_or_default();
        let mut r: LinuxResources = linux
            .resources()
            .clone()
            .unwrap_or_else(|| LinuxResourcesBuilder::default().build().expect("resources"));
        if let Some(m) = self.memory {
            r.set_memory(Some(
                LinuxMemoryBuilder::default()
                    .limit(m as i64)
                    .build()
                    .expect("memory"),
            ));
        }
        if let Some(c) = self.cpus {
            const PERIOD: u64 = 100_000;
            r.set_cpu(Some(
                LinuxCpuBuilder::default()
                    .period(PERIOD)
                    .quota((c * PERIOD as f64).round().max(1000.0) as i64)
                    .build()
                    .expect("cpu"),
            ));
        }
        if let Some(p) = self.pids {
            r.set_pids(Some(
                LinuxPidsBuilder::default().limit(p).build().expect("pids"),
            ));
        }
        linux.set_resources(Some(r));
        spec.set_linux(Some(linux));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_manifest() {
        let f = parse(
            "hello",
            r#"
            route = "/hi"
            module = "hello.wasm"
            interface = "http"
            memory = "64Mi"
            cpus = 0.5
            timeout = "250ms"
            max_body = 1024
            strict = true
            env = { GREETING = "hey" }
            "#,
        )
        .unwrap();
        assert_eq!(f.route, "/hi");
        assert_eq!(f.interface, Interface::Http);
        assert_eq!(f.memory, Some(64 << 20));
        assert_eq!(f.timeout, Duration::from_millis(250));
        assert_eq!(f.max_body, 1024);
        assert_eq!(f.pool, 2);
        assert_eq!(f.env, vec![("GREETING".into(), "hey".into())]);
        assert_eq!(f.user_namespace, Some(userns_host_base("hello")));
    }

    #[test]
    fn a_function_gets_a_user_namespace_of_its_own() {
        let f = parse("one", "module = \"m\"").unwrap();
        let base = userns_host_base("one");
        assert!((USERNS_HOST_BASE..=u32::MAX / 2 - USERNS_SIZE).contains(&base));
        assert_ne!(base, userns_host_base("two"));
        let spec = f.generated(Path::new("/r"), MODULE_PATH, Kind::Module, Vec::new());
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux
            .namespaces()
            .iter()
            .flatten()
            .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User));
        for maps in [linux.uid_mappings(), linux.gid_mappings()] {
            let m = &maps.as_ref().unwrap()[0];
            assert_eq!(
                (m.container_id(), m.host_id(), m.size()),
                (0, base, USERNS_SIZE)
            );
        }
        let off = parse("one", "module = \"m\"\nuser_namespace = false").unwrap();
        assert_eq!(off.user_namespace, None);
        let err = parse("b", "bundle = \"b\"\nuser_namespace = true").unwrap_err();
        assert!(err.to_string().contains("user_namespace"), "{err}");
        assert_eq!(parse("b", "bundle = \"b\"").unwrap().user_namespace, None);
    }

    #[test]
    fn a_port_of_its_own() {
        let f = parse("f", "module = \"m\"\nlisten = \"127.0.0.1:8081\"").unwrap();
        assert_eq!(f.listen, Some("127.0.0.1:8081".parse().unwrap()));
        let err = |text: &str| parse("f", text).unwrap_err().to_string();
        assert!(err("module = \"m\"\nlisten = \"8081\"").contains("listen"));
        assert!(
            err("module = \"m\"\nlisten = \"127.0.0.1:8081\"\nisolation = \"envelope\"")
                .contains("listen")
        );
        assert!(err("program = \"p\"\nlisten = \"127.0.0.1:8081\"").contains("listen"));
    }

    #[test]
    fn names_the_bad_field() {
        let err = |text: &str| parse("f", text).unwrap_err().to_string();
        assert!(err("module = \"m\"\nmemroy = 1").contains("unknown field `memroy`"));
        assert!(err("module = \"m\"\nmemory = \"lots\"").contains("memory"));
        assert!(err("module = \"m\"\nroute = \"/metrics\"").contains("route"));
        assert!(err("module = \"m\"\nroute = \"/a/../b\"").contains("route"));
        assert!(err("program = \"p\"\ninterface = \"http\"").contains("interface"));
        assert!(err("module = \"m\"\nprogram = \"p\"").contains("only one"));
        assert!(err("route = \"/x\"").contains("say what runs"));
        assert!(err("module = \"m\"\ntimeout = \"0s\"").contains("timeout"));
        assert!(err("module = \"m\"\nconcurrency = 0").contains("concurrency"));
        assert!(parse("../x", "module = \"m\"").is_err());
        assert!(err("module = \"m\"\nisolation = \"shared\"").contains("isolation"));
        assert!(err("module = \"m\"\nisolation = \"reuse\"").contains("wasi:http"));
        assert!(err("module = \"m\"\nreuse = 5").contains("reuse"));
        assert!(err("module = \"m\"\nreuse_concurrency = 4").contains("reuse_concurrency"));
        assert!(err(
            "module = \"m\"\ninterface = \"http\"\nisolation = \"reuse\"\nreuse_concurrency = 0"
        )
        .contains("reuse_concurrency"));
        assert!(err("module = \"m\"\nstrict = true\nisolation = \"instance\"").contains("strict"));
        let outbound = |entry: &str| {
            err(&format!(
                "module = \"m\"\ninterface = \"http\"\nallowed_outbound_hosts = [\"http://ok\", {entry:?}]"
            ))
        };
        for entry in [
            "example.com",
            "ftp://example.com",
            "http://",
            "http://example.com:0",
            "http://example.com:http",
            "http://u:p@example.com",
            "http://*.com",
            "http://example.com/a?b",
            "http://example.com/a/../b",
            "http://::1:80",
        ] {
            let e = outbound(entry);
            assert!(e.contains("allowed_outbound_hosts[1]"), "{entry}: {e}");
        }
        assert!(
            err("module = \"m\"\nallowed_outbound_hosts = [\"http://x\"]").contains("wasm CGI")
        );
        assert!(parse(
            "p",
            "program = \"p\"\nallowed_outbound_hosts = [\"http://x\"]"
        )
        .is_ok());
    }

    #[test]
    fn outbound_prefixes_match_at_path_segments() {
        let p = |s: &str| OutboundPrefix::parse(s).unwrap();
        let api = p("https://API.example.com/v1/");
        assert_eq!(api.to_string(), "https://api.example.com:443/v1");
        assert!(api.allows("https", "api.example.com", 443, "/v1"));
        assert!(api.allows("https", "Api.Example.com", 443, "/v1/users"));
        assert!(!api.allows("https", "api.example.com", 443, "/v10"));
        assert!(!api.allows("http", "api.example.com", 443, "/v1"));
        assert!(!api.allows("https", "api.example.com", 8443, "/v1"));
        assert!(!api.allows("https", "api.example.com.evil", 443, "/v1"));
        assert!(!api.allows("https", "api.example.com", 443, "/v1/../admin"));
        assert!(!api.allows("https", "api.example.com", 443, "/v1/%2e%2e/admin"));
        assert!(!api.allows("https", "api.example.com", 443, "/v1%2F..%2Fadmin"));
        let any = p("http://127.0.0.1:9000");
        assert!(any.allows("http", "127.0.0.1", 9000, "/"));
        assert!(any.allows("http", "127.0.0.1", 9000, "/a/../b"));
        assert!(!any.allows("http", "127.0.0.1", 9001, "/"));
        assert_eq!(p("http://[::1]").port, Some(80));
    }

    #[test]
    fn outbound_wildcards_stand_for_subdomains_and_ports() {
        let p = |s: &str| OutboundPrefix::parse(s).unwrap();
        let sub = p("https://*.Example.com");
        assert_eq!(sub.to_string(), "https://*.example.com:443");
        assert!(sub.allows("https", "api.example.com", 443, "/"));
        assert!(sub.allows("https", "a.b.EXAMPLE.com", 443, "/x"));
        assert!(!sub.allows("https", "example.com", 443, "/"));
        assert!(!sub.allows("https", "evilexample.com", 443, "/"));
        assert!(!sub.allows("https", "api.example.com.evil", 443, "/"));
        assert!(!sub.allows("https", "api.example.com", 8443, "/"));
        let ports = p("http://127.0.0.1:*/api");
        assert_eq!(ports.to_string(), "http://127.0.0.1:*/api");
        assert!(ports.allows("http", "127.0.0.1", 9000, "/api/x"));
        assert!(ports.allows("http", "127.0.0.1", 80, "/api"));
        assert!(!ports.allows("http", "127.0.0.1", 80, "/apix"));
        let ip_tail = p("http://*.0.0.1.example");
        assert!(!ip_tail.allows("http", "127.0.0.1", 80, "/"));
        for bad in [
            "http://*",
            "http://*.com",
            "http://*.0.0.1",
            "http://api.*.com",
            "http://a*.example.com",
            "http://*.example.com/a*",
            "http://example.com:8*",
        ] {
            assert!(OutboundPrefix::parse(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn isolation_levels() {
        let level = |extra: &str| {
            parse(
                "f",
                &format!("module = \"m\"\ninterface = \"http\"\n{extra}"),
            )
            .unwrap()
            .isolation
        };
        assert_eq!(level(""), Isolation::Instance);
        assert_eq!(level("strict = true"), Isolation::Envelope);
        assert_eq!(level("isolation = \"envelope\""), Isolation::Envelope);
        assert_eq!(
            level("isolation = \"reuse\""),
            Isolation::Reuse {
                requests: 1000,
                concurrency: 16
            }
        );
        assert_eq!(
            level("isolation = \"reuse\"\nreuse = 3"),
            Isolation::Reuse {
                requests: 3,
                concurrency: 16
            }
        );
    }
}
