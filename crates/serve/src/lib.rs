//! `amphi serve`: HTTP functions in the envelope.
//!
//! Each function gets envelopes (containers made through the runtime API,
//! with the function's namespaces, cgroup limits and read-only root) whose
//! process is a function worker ([`worker`]); every invocation is a fresh
//! process (native) or a fresh instance (wasm) forked inside one. At
//! isolation `instance` (the default) a function's invocations share its
//! warm envelope; at `envelope` each invocation takes an envelope of its
//! own from a warm pool; at `reuse` a `wasi:http` instance serves up to N
//! requests in turn.
//! Envelopes idle for `idle` are removed: an idle function holds no process.
//!
//! Layout: [`keeper`] (a single-threaded child that creates and deletes
//! envelopes), [`handler`] (the runtime's executor handler for envelopes:
//! it builds their worker), [`worker`] (inside the envelope), [`server`]
//! (HTTP, limits, metrics), [`cgi`] (the CGI/1.1 mapping).

pub mod cgi;
mod connection;
mod direct;
pub mod handler;
mod in_process;
mod invocation;
pub mod keeper;
pub mod log;
pub mod metrics;
mod outbound;
pub mod protocol;
pub mod server;
pub mod trace;
pub mod worker;

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use amphi_function::{Function, Interface, Isolation, Source, FUNCTION_ANNOTATION};
use amphi_wasm::detect::{is_wasm, Wasm};
use anyhow::{bail, Context, Result};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use oci_spec::runtime::{Capability, MountBuilder, Spec};

use handler::Plan;
use keeper::Keeper;

pub struct Options {
    pub functions: PathBuf,
    pub listen: SocketAddr,
    /// The runtime's state root (envelopes are containers there).
    pub root: PathBuf,
    /// Where compiled wasm modules are cached.
    pub wasm_cache: amphi_wasm::CacheDir,
    /// Where the functions' generated bundles go (default: a temporary
    /// directory, removed at exit).
    pub work_dir: Option<PathBuf>,
    pub shutdown_timeout: Duration,
    /// Envelope keepers: how many envelopes are made at once.
    pub keepers: usize,
}

/// Capabilities the worker keeps beyond the function's own, to give each
/// invocation a private /tmp (SYS_ADMIN) and then become the function's
/// process (SETPCAP for the bounding set, SETUID/SETGID for its user).
/// The invocation drops them before any function code runs.
const WORKER_CAPS: [Capability; 4] = [
    Capability::SysAdmin,
    Capability::Setpcap,
    Capability::Setuid,
    Capability::Setgid,
];

/// Run the server until SIGTERM. Must be called while the process is
/// still single-threaded: it forks the envelope keeper first.
pub fn run(o: Options) -> Result<()> {
    // Errors are logged as messages, never with a backtrace; with
    // RUST_BACKTRACE=1 in the environment, capturing one for each error
    // a warm wasi:http request meets inside wasmtime showed in profiles
    // of the worker. Panics still honour RUST_BACKTRACE. Set while the
    // process has one thread: envelopes' workers inherit it.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    let functions = amphi_function::load(&o.functions)?;
    let work = match &o.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("--work-dir {}", d.display()))?;
            tempfile::Builder::new()
                .prefix("amphi-serve.")
                .tempdir_in(d)
        }
        None => tempfile::Builder::new().prefix("amphi-serve.").tempdir(),
    }
    .context("make the work directory")?;
    let mut plans = Vec::new();
    let mut engines = Vec::new();
    for f in &functions {
        let plan = plan(f, work.path(), &functions)?;
        engines.push(plan.engine);
        plans.push(plan);
    }
    precompile(&mut plans, &o.wasm_cache)?;
    let keeper = Keeper::spawn(o.keepers, o.root.clone(), o.wasm_cache.clone(), plans)?;
    if let Err(e) = trace::init() {
        keeper.shutdown();
        return Err(e);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let server = server::Server::new(functions, &engines, keeper);
    let result = runtime.block_on(server::serve(
        server,
        server::Settings {
            listen: o.listen,
            shutdown_timeout: o.shutdown_timeout,
        },
    ));
    runtime.shutdown_timeout(Duration::from_secs(1));
    trace::shutdown();
    drop(work);
    result
}

/// Compile every wasm function's module before any envelope needs it,
/// and give each plan the artifact, which its envelopes map instead of
/// reading, hashing and looking up the module (20 ms of a cold start for
/// a 20 MB interpreter). An envelope's init runs as the function's own
/// user (its user namespace), which may not write the host's cache: left
/// to the envelopes, a module not cached yet would be compiled, and
/// pre-initialized, again by every cold one. Each in a child of its own,
/// which sends the artifact back: the compile's memory, and a
/// pre-initialization's guest, never stay in the server (still
/// single-threaded here), nor count against the next function's memory
/// limit.
fn precompile(plans: &mut [Plan], cache: &amphi_wasm::CacheDir) -> Result<()> {
    for plan in plans.iter_mut().filter(|p| p.engine == Engine::Wasm) {
        let artifact =
            precompile_one(plan, cache).with_context(|| format!("function {}", plan.name))?;
        plan.artifact = Some(std::sync::Arc::new(artifact));
    }
    Ok(())
}

fn precompile_one(plan: &Plan, cache: &amphi_wasm::CacheDir) -> Result<handler::Artifact> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("socketpair for the compiler")?;
    // SAFETY: single-threaded (see `run`); the child compiles and exits.
    match unsafe { nix::unistd::fork() }.context("fork the compiler")? {
        nix::unistd::ForkResult::Child => {
            drop(ours);
            let msg = match compile(plan, cache) {
                Ok(compiled) => {
                    let component = compiled.flavor == amphi_wasm::Flavor::Component;
                    let fd = compiled.artifact.as_raw_fd();
                    protocol::send(theirs.as_fd(), &Compiled::Artifact { component }, &[fd])
                }
                Err(why) => protocol::send(theirs.as_fd(), &Compiled::Failed(why), &[]),
            };
            // SAFETY: the end of the child; nothing of the server's to
            // run at exit.
            unsafe { libc::_exit(i32::from(msg.is_err())) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(theirs);
            let mut buf = vec![0u8; 64 << 10];
            let got = protocol::recv(ours.as_fd(), &mut buf).context("read the compiler");
            let status = nix::sys::wait::waitpid(child, None).context("wait for the compiler")?;
            let Some((n, mut fds)) = got? else {
                bail!("the compiler ended ({status:?}) without a word");
            };
            match serde_json::from_slice(&buf[..n]).context("the compiler's message")? {
                Compiled::Artifact { component } => Ok(handler::Artifact {
                    file: std::fs::File::from(fds.pop().context("the compiler sent no artifact")?),
                    flavor: if component {
                        amphi_wasm::Flavor::Component
                    } else {
                        amphi_wasm::Flavor::Module
                    },
                }),
                Compiled::Failed(why) => bail!("{why}"),
            }
        }
    }
}

/// What the compiler child says.
#[derive(serde::Serialize, serde::Deserialize)]
enum Compiled {
    /// The artifact comes with this message.
    Artifact {
        component: bool,
    },
    Failed(String),
}

fn compile(
    plan: &Plan,
    cache: &amphi_wasm::CacheDir,
) -> std::result::Result<amphi_wasm::function::Precompiled, String> {
    let spec = Spec::load(plan.bundle.join("config.json")).map_err(|e| e.to_string())?;
    let rootfs = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_default();
    amphi_wasm::function::Function::precompile(
        cache.open(),
        plan.interface,
        &spec,
        &rootfs,
        plan.memory,
    )
    .map_err(|e| e.to_string())
}

/// What runs a function's invocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Wasm,
    Native,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Wasm => "wasm",
            Engine::Native => "native",
        }
    }
}

/// Write the function's worker bundle and say what the keeper needs
/// (`all`: every function, whose routes may take paths below `f`'s).
fn plan(f: &Function, work: &Path, all: &[Function]) -> Result<Plan> {
    let dir = work.join(&f.name);
    std::fs::create_dir_all(dir.join("rootfs"))
        .with_context(|| format!("create {}", dir.display()))?;
    let spec = f.spec(&dir.join("rootfs"))?;
    let bad = |field: &str, why: &str| amphi_function::Error::Invalid {
        function: f.name.clone(),
        field: field.into(),
        why: why.into(),
    };
    let process = spec
        .process()
        .clone()
        .ok_or_else(|| bad("bundle", "config.json has no process"))?;
    if process.terminal() == Some(true) {
        return Err(bad(
            "bundle",
            "process.terminal is true; a function's stdio is its request and response",
        )
        .into());
    }
    let mut warnings = Vec::new();
    let seccomp = spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .map(|s| {
            amphi_core::seccomp::compile(s, amphi_core::seccomp::UnknownNames::Skip, &mut warnings)
        })
        .transpose()
        .map_err(|e| bad("linux.seccomp", &e.to_string()))?;
    for w in warnings {
        eprintln!("amphi serve: warning: function {}: {w}", f.name);
    }
    let rootfs = match &f.source {
        Source::Bundle(b) => {
            let root = spec
                .root()
                .as_ref()
                .map(|r| r.path().clone())
                .unwrap_or_default();
            b.join(root)
        }
        _ => spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_default(),
    };
    let engine = match (f.interface, is_wasm(&spec, &rootfs)) {
        (Interface::Http, _) | (_, Wasm::Yes) => Engine::Wasm,
        (_, Wasm::No(_)) => Engine::Native,
    };
    // Wasm invocations take their /tmp as a directory of the envelope's
    // /tmp, so it holds all that may run at once; native ones mount their
    // own over it.
    let worker_tmp = match (f.tmp, engine) {
        (0, _) => 0,
        (tmp, Engine::Wasm) => tmp.saturating_mul(f.concurrency as u64),
        (_, Engine::Native) => 64 << 10,
    };
    let worker = worker_spec(&spec, &rootfs, worker_tmp, &f.name)?;
    let json = serde_json::to_vec_pretty(&worker)?;
    std::fs::write(dir.join("config.json"), json)
        .with_context(|| format!("write {}", dir.join("config.json").display()))?;
    let memory = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .and_then(|l| u64::try_from(l).ok());
    if f.interface == Interface::Http && engine != Engine::Wasm {
        bail!(
            "function {}: interface: \"http\" needs a wasm component",
            f.name
        );
    }
    if f.interface == Interface::Cgi
        && engine == Engine::Wasm
        && !f.allowed_outbound_hosts.is_empty()
    {
        return Err(bad(
            "allowed_outbound_hosts",
            "the bundle runs a wasm CGI module, which has no sockets to make requests with",
        )
        .into());
    }
    if f.listen.is_some() && engine == Engine::Native {
        return Err(bad(
            "listen",
            "the bundle runs a native program; a port of its own is for wasm functions",
        )
        .into());
    }
    Ok(Plan {
        name: f.name.clone(),
        bundle: dir,
        process,
        seccomp,
        tmp: f.tmp,
        interface: f.interface,
        engine,
        memory,
        readonly_root: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        // Twice the concurrency: a cancelled invocation may still hold
        // its slot when the next one starts. Beyond 128 concurrent
        // invocations the reservation grows past what it saves.
        pool_slots: (!f.strict() && f.concurrency <= 128).then(|| 2 * f.concurrency as u32),
        reuse: match f.isolation {
            Isolation::Reuse {
                requests,
                concurrency,
            } => Some((requests, concurrency)),
            _ => None,
        },
        outbound: !f.allowed_outbound_hosts.is_empty(),
        // A wasm function's worker serves connections itself: its own
        // port's and those of the server's port handed to it.
        direct: (engine == Engine::Wasm && !f.strict()).then(|| {
            std::sync::Arc::new(direct::Plan {
                name: f.name.clone(),
                route: f.route.clone(),
                elsewhere: routes_below(f, all),
                interface: f.interface,
                timeout: f.timeout,
                max_body: f.max_body,
                concurrency: f.concurrency,
                queue: f.queue,
            })
        }),
        artifact: None,
    })
}

/// The paths under `f`'s route that the server's router gives to another
/// function (a longer route) or answers itself (`/metrics`).
fn routes_below(f: &Function, all: &[Function]) -> Vec<String> {
    all.iter()
        .map(|o| o.route.as_str())
        .filter(|r| r.len() > f.route.len())
        .chain([amphi_function::METRICS_ROUTE])
        .filter(|r| invocation::routed(&f.route, r))
        .map(str::to_string)
        .collect()
}

/// The envelope's own spec: the function's, but its process is the worker,
/// which runs as root with [`WORKER_CAPS`] added, without seccomp, LSM
/// label or no_new_privs (each invocation, or for wasm the worker itself
/// once, applies the function's), with a tmpfs on /tmp of `tmp` bytes, and
/// annotated as the envelope of function `name` (so that the function
/// handler, and only it, takes it).
fn worker_spec(spec: &Spec, rootfs: &Path, tmp: u64, name: &str) -> Result<Spec> {
    let mut spec = spec.clone();
    let mut annotations = spec.annotations().clone().unwrap_or_default();
    annotations.insert(FUNCTION_ANNOTATION.into(), name.into());
    spec.set_annotations(Some(annotations));
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(rootfs.to_path_buf());
    spec.set_root(Some(root));
    let mut p = spec.process().clone().expect("checked");
    let mut user = p.user().clone();
    user.set_uid(0);
    user.set_gid(0);
    user.set_additional_gids(None);
    p.set_user(user);
    let mut caps = p.capabilities().clone().unwrap_or_default();
    let add = |set: Option<&std::collections::HashSet<Capability>>| {
        let mut s = set.cloned().unwrap_or_default();
        s.extend(WORKER_CAPS);
        Some(s)
    };
    caps.set_bounding(add(caps.bounding().as_ref()));
    caps.set_permitted(add(caps.permitted().as_ref()));
    caps.set_effective(add(caps.effective().as_ref()));
    caps.set_inheritable(None);
    caps.set_ambient(None);
    p.set_capabilities(Some(caps));
    p.set_no_new_privileges(Some(false));
    p.set_apparmor_profile(None);
    p.set_selinux_label(None);
    spec.set_process(Some(p));
    if let Some(mut linux) = spec.linux().clone() {
        linux.set_seccomp(None);
        // Each envelope gets a cgroup named after it, below the server's.
        linux.set_cgroups_path(None);
        spec.set_linux(Some(linux));
    }
    if tmp > 0 {
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        if !mounts.iter().any(|m| m.destination() == Path::new("/tmp")) {
            mounts.push(
                MountBuilder::default()
                    .destination("/tmp")
                    .typ("tmpfs")
                    .source("tmpfs")
                    .options(vec![
                        "nosuid".into(),
                        "nodev".into(),
                        format!("size={tmp}"),
                        "mode=1777".into(),
                    ])
                    .build()?,
            );
            spec.set_mounts(Some(mounts));
        }
    }
    Ok(spec)
}
