//! `amphi`: runc's command line over amphi's runtime API.

mod log;
mod spec_cmd;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use amphi_runtime::{CreateOptions, Runtime};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use nix::sys::signal::Signal;

#[derive(Parser)]
#[command(
    name = "amphi",
    about = "OCI runtime for native and WebAssembly containers",
    disable_version_flag = true,
    subcommand_required = false
)]
struct Cli {
    /// Print the version (as runc does: the runtime, then the spec and
    /// the engines, one a line).
    #[arg(short = 'v', long)]
    version: bool,
    /// Directory for container state (default /run/amphi; for other users
    /// $XDG_RUNTIME_DIR/amphi).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Also write errors and warnings to this file.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Format of the log file: text or json (as runc's --log-format).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: log::Format,
    /// Print the phases of the start path with their times on stderr.
    #[arg(long, global = true)]
    debug: bool,
    /// Directory of compiled WebAssembly modules (default: ROOT/wasm-cache).
    #[arg(long, global = true)]
    wasm_cache: Option<PathBuf>,
    /// The most the compiled modules may take (e.g. 512M, 4G); the least
    /// recently used not in use are evicted past it.
    #[arg(long, global = true, default_value = "2G", value_parser = parse_size_arg)]
    wasm_cache_max: u64,
    /// Manage cgroups through systemd: linux.cgroupsPath is
    /// slice:prefix:name, a transient prefix-name.scope unit in the slice.
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// Write the man pages, amphi(8) and amphi-COMMAND(8), into DIR
    /// (scripts/install.sh does).
    #[arg(long, hide = true, value_name = "DIR")]
    generate_man: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// amphi(8) and a page per subcommand, as runc-run(8) and its siblings.
fn generate_man(dir: &std::path::Path) -> Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    let amphi = Cli::command();
    let mut pages = vec![("amphi".to_owned(), amphi.clone())];
    for sub in amphi.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("amphi-{}", sub.get_name());
        // clap names a command with a &'static str; this process ends soon.
        let title: &'static str = Box::leak(name.clone().into_boxed_str());
        pages.push((name, sub.clone().name(title)));
    }
    for (name, command) in pages {
        let path = dir.join(format!("{name}.8"));
        let mut page = Vec::new();
        clap_mangen::Man::new(command)
            .section("8")
            .manual("amphi")
            .render(&mut page)?;
        std::fs::write(&path, page).with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}

#[derive(Subcommand)]
enum WasmCacheCommand {
    /// Every compiled module, least recently used first: its module's
    /// digest and size, the artifact's size, last use, whether in use.
    List {
        /// Output format: table or json.
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
    /// Remove the compiled modules no container runs, least recently used
    /// first, until at most --max is left (default: all of them).
    Prune {
        /// Keep at most this much (bytes, or with K, M, G, T).
        #[arg(long, default_value = "0", value_parser = parse_size_arg)]
        max: u64,
    },
}

fn parse_size_arg(s: &str) -> std::result::Result<u64, String> {
    amphi_core::util::parse_size(s)
        .ok_or_else(|| format!("{s:?} is not a size (bytes, or with K, M, G, T)"))
}

#[derive(Clone, Copy, ValueEnum)]
enum ListFormat {
    Table,
    Json,
}

#[derive(clap::Args)]
struct CreateArgs {
    id: String,
    /// Bundle directory (holding config.json).
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Write the process's pid to this file.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master when process.terminal is set.
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// chroot instead of pivot_root (for a rootfs on a ramdisk).
    #[arg(long)]
    no_pivot: bool,
    /// Pass this many fds beyond stdio (3, 4, ...) to the container.
    #[arg(long, default_value_t = 0)]
    preserve_fds: i32,
    /// Keep the caller's session keyring instead of a fresh one.
    #[arg(long)]
    no_new_keyring: bool,
}

/// runc's checkpoint flags (CRIU's where they only concern native
/// containers).
#[derive(clap::Args)]
struct CriuArgs {
    /// Where the image is written (checkpoint) or read (restore).
    #[arg(long, default_value = "checkpoint")]
    image_path: PathBuf,
    /// Where CRIU writes its logs (default: the image directory).
    #[arg(long)]
    work_path: Option<PathBuf>,
    /// Allow open TCP connections (CRIU).
    #[arg(long)]
    tcp_established: bool,
    /// Allow external unix sockets (CRIU).
    #[arg(long)]
    ext_unix_sk: bool,
    /// Allow shell jobs (CRIU).
    #[arg(long)]
    shell_job: bool,
    /// Handle file locks (CRIU).
    #[arg(long)]
    file_locks: bool,
    /// soft, full, strict or ignore.
    #[arg(long, value_parser = ["soft", "full", "strict", "ignore"])]
    manage_cgroups_mode: Option<String>,
    /// Accepted for runc's callers; namespaces are the bundle's.
    #[arg(long)]
    empty_ns: Vec<String>,
    /// Deduplicate the images (CRIU).
    #[arg(long)]
    auto_dedup: bool,
    /// Restore memory lazily, through a page server (CRIU).
    #[arg(long)]
    lazy_pages: bool,
}

impl CriuArgs {
    fn options(&self) -> amphi_core::executor::CheckpointOptions {
        amphi_core::executor::CheckpointOptions {
            image_path: self.image_path.clone(),
            work_path: self.work_path.clone(),
            tcp_established: self.tcp_established,
            ext_unix_sk: self.ext_unix_sk,
            shell_job: self.shell_job,
            file_locks: self.file_locks,
            manage_cgroups_mode: self.manage_cgroups_mode.clone(),
            ..Default::default()
        }
    }
}

#[derive(clap::Args)]
struct CheckpointArgs {
    id: String,
    #[command(flatten)]
    criu: CriuArgs,
    /// An incremental image: the previous dump's directory, relative to
    /// the image directory (native only).
    #[arg(long)]
    parent_path: Option<PathBuf>,
    /// Leave the container running after the checkpoint.
    #[arg(long)]
    leave_running: bool,
    /// Dump memory only, the container runs on (native only).
    #[arg(long)]
    pre_dump: bool,
    /// ADDRESS:PORT of a CRIU page server.
    #[arg(long)]
    page_server: Option<String>,
    /// Write a byte to this fd once the lazy pages server is ready (CRIU).
    #[arg(long)]
    status_fd: Option<i32>,
}

#[derive(clap::Args)]
struct RestoreArgs {
    #[command(flatten)]
    create: CreateArgs,
    #[command(flatten)]
    criu: CriuArgs,
    /// Return once the container runs.
    #[arg(short, long)]
    detach: bool,
    /// Do not make the runtime a child subreaper.
    #[arg(long)]
    no_subreaper: bool,
    /// LSM profile of the restored process (TYPE:NAME).
    #[arg(long)]
    lsm_profile: Option<String>,
    /// SELinux mount context of the restored container's mounts.
    #[arg(long)]
    lsm_mount_context: Option<String>,
}

#[derive(clap::Args)]
struct UpdateArgs {
    id: String,
    /// linux.resources as JSON ("-" for stdin); the flags below add to it.
    #[arg(short, long)]
    resources: Option<PathBuf>,
    /// Block IO weight (10 to 1000).
    #[arg(long)]
    blkio_weight: Option<u16>,
    /// CPU CFS period in microseconds.
    #[arg(long)]
    cpu_period: Option<u64>,
    /// CPU CFS quota in microseconds.
    #[arg(long)]
    cpu_quota: Option<i64>,
    /// CPU shares (relative weight).
    #[arg(long, alias = "cpu-share")]
    cpu_shares: Option<u64>,
    /// CPU realtime period in microseconds.
    #[arg(long)]
    cpu_rt_period: Option<u64>,
    /// CPU realtime runtime in microseconds.
    #[arg(long)]
    cpu_rt_runtime: Option<i64>,
    /// CPUs to use (e.g. 0-3,5).
    #[arg(long)]
    cpuset_cpus: Option<String>,
    /// Memory nodes to use (e.g. 0-1).
    #[arg(long)]
    cpuset_mems: Option<String>,
    /// Bytes, or with a k, m or g suffix.
    #[arg(long)]
    memory: Option<String>,
    /// Memory soft limit (bytes, or with K, M, G).
    #[arg(long)]
    memory_reservation: Option<String>,
    /// Memory plus swap; -1 for unlimited.
    #[arg(long)]
    memory_swap: Option<String>,
    /// Maximum number of processes.
    #[arg(long)]
    pids_limit: Option<i64>,
    /// Intel RDT (not supported).
    #[arg(long)]
    l3_cache_schema: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Write a default config.json into the bundle directory.
    Spec {
        /// Bundle directory (holding config.json).
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// Write a spec for a rootless container.
        #[arg(long)]
        rootless: bool,
    },
    /// Create a container: set up its envelope and wait for `start`.
    Create(CreateArgs),
    /// Start the workload of a created container.
    Start { id: String },
    /// Print a container's state as runtime-spec JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to a container's init or all its processes.
    Kill {
        id: String,
        /// The signal to send (name or number).
        #[arg(default_value = "SIGTERM")]
        signal: String,
        /// Send the signal to every process of the container.
        #[arg(short, long)]
        all: bool,
    },
    /// Remove a stopped container (--force: stop it first).
    Delete {
        id: String,
        /// Kill the container first if it runs.
        #[arg(short, long)]
        force: bool,
    },
    /// Create, start, wait for and delete a container; exit with its status.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Return once the container is started.
        #[arg(short, long)]
        detach: bool,
    },
    /// Write a running container's checkpoint image (wasm: amphi's own
    /// image; native: CRIU's), then remove the container unless
    /// --leave-running.
    Checkpoint(CheckpointArgs),
    /// Create and start a container from a checkpoint image (as `run`).
    Restore(RestoreArgs),
    /// Change a running container's cgroup limits.
    Update(UpdateArgs),
    /// Print cgroup statistics and OOM events as JSON lines.
    Events {
        id: String,
        /// Print one set of statistics and exit.
        #[arg(long)]
        stats: bool,
        /// Time between statistics (Go duration: 500ms, 5s, 1m).
        #[arg(long, default_value = "5s")]
        interval: String,
    },
    /// List containers.
    #[command(alias = "ls")]
    List {
        /// Output format: table or json.
        #[arg(short, long, value_enum, default_value = "table")]
        format: ListFormat,
        /// Print only the containers' ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Run another process in a running container.
    Exec {
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
    },
    /// List the processes of a container (host pids).
    Ps {
        id: String,
        /// Output format: table or json.
        #[arg(short, long, value_enum, default_value = "table")]
        format: ListFormat,
    },
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Print what this runtime supports, as runtime-spec features JSON.
    Features,
    /// The compiled WebAssembly modules cache.
    #[command(subcommand)]
    WasmCache(WasmCacheCommand),
    /// Serve HTTP functions (wasm modules, wasi:http components, native
    /// programs, OCI bundles), each invocation in the envelope.
    Serve {
        /// A function manifest (NAME.toml), or a directory of them.
        #[arg(long)]
        functions: PathBuf,
        /// Address the server listens on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where the functions' generated bundles go (default: a temporary
        /// directory).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// How long SIGTERM waits for in-flight requests.
        #[arg(long, default_value = "10s")]
        shutdown_timeout: String,
        /// How many envelopes are made at once (default: one per CPU).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
        keepers: Option<u16>,
    },
}

/// A signal by name (with or without SIG) or number; 0 only checks.
fn parse_signal(s: &str) -> Result<Option<Signal>> {
    if let Ok(n) = s.parse::<i32>() {
        if n == 0 {
            return Ok(None);
        }
        return Signal::try_from(n)
            .map(Some)
            .map_err(|_| anyhow!("unknown signal {s:?}"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name)
        .map(Some)
        .map_err(|_| anyhow!("unknown signal {s:?}: use a name such as TERM or KILL, or a number"))
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

fn create_options(a: &CreateArgs) -> CreateOptions<'_> {
    CreateOptions {
        id: &a.id,
        bundle: &a.bundle,
        pid_file: a.pid_file.as_deref(),
        console_socket: a.console_socket.as_deref(),
        no_pivot: a.no_pivot,
        preserve_fds: a.preserve_fds,
        no_new_keyring: a.no_new_keyring,
        restore: None,
    }
}

/// runc's `--version` shape: tools parse the first line and `spec:`.
fn version() -> String {
    format!(
        "amphi version {}\nspec: {}\nwasmtime: {}\n",
        env!("CARGO_PKG_VERSION"),
        amphi_core::state::OCI_VERSION,
        amphi_wasm::WASMTIME_VERSION
    )
}

/// The executors this command line runs, in the order they are asked.
fn handlers(wasm_cache: amphi_wasm::CacheDir) -> Vec<Box<dyn amphi_core::executor::Handler>> {
    vec![
        Box::new(amphi_wasm::Handler::new(wasm_cache)),
        Box::new(amphi_native::Handler),
    ]
}

/// runc's choice: /run for root, the user's runtime directory for a
/// rootless caller (another user, or root of a user namespace such as
/// rootless podman's).
fn default_root() -> PathBuf {
    if !amphi_core::util::rootless() {
        return "/run/amphi".into();
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("amphi"),
        None => std::env::temp_dir().join(format!("amphi-{}", nix::unistd::geteuid())),
    }
}

fn run(cli: &Cli) -> Result<ExitCode> {
    if cli.version {
        print!("{}", version());
        return Ok(ExitCode::SUCCESS);
    }
    let Some(command) = &cli.command else {
        use clap::CommandFactory;
        Cli::command().print_help()?;
        return Ok(ExitCode::from(2));
    };
    let root = cli.root.clone().unwrap_or_else(default_root);
    let wasm_cache = amphi_wasm::CacheDir {
        path: cli
            .wasm_cache
            .clone()
            .unwrap_or_else(|| root.join("wasm-cache")),
        max: cli.wasm_cache_max,
    };
    let runtime = || {
        let (log, format) = (cli.log.clone(), cli.log_format);
        let wasm_cache = wasm_cache.clone();
        let driver = if cli.systemd_cgroup {
            amphi_core::cgroups::Driver::Systemd
        } else {
            amphi_core::cgroups::Driver::Cgroupfs
        };
        Runtime::new(&root, handlers(wasm_cache))
            .map(|rt| rt.cgroup_driver(driver))
            .map(|rt| {
                rt.on_warning(move |msg| {
                    log::Logger::new(log.as_deref(), format).warn(msg);
                    eprintln!("amphi: warning: {msg}");
                })
            })
            .with_context(|| format!("runtime root {}", root.display()))
    };
    match command {
        Command::Spec { bundle, rootless } => spec_cmd::write(bundle, *rootless)?,
        Command::Create(a) => {
            runtime()?
                .create(&create_options(a))
                .with_context(|| format!("create {}", a.id))?;
        }
        Command::Start { id } => runtime()?
            .start(id)
            .with_context(|| format!("start {id}"))?,
        Command::State { id } => {
            let s = runtime()?
                .state(id)
                .with_context(|| format!("state {id}"))?;
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
        Command::Kill { id, signal, all } => {
            let sig = parse_signal(signal).with_context(|| format!("kill {id}"))?;
            runtime()?
                .kill(id, sig, *all)
                .with_context(|| format!("kill {id}"))?;
        }
        Command::Delete { id, force } => runtime()?
            .delete(id, *force)
            .with_context(|| format!("delete {id}"))?,
        Command::Checkpoint(a) => {
            let context = || format!("checkpoint {}", a.id);
            if a.criu.lazy_pages || a.page_server.is_some() {
                return Err(anyhow!("--lazy-pages and --page-server are not supported"))
                    .with_context(context);
            }
            let o = amphi_core::executor::CheckpointOptions {
                parent_path: a.parent_path.clone(),
                leave_running: a.leave_running,
                pre_dump: a.pre_dump,
                ..a.criu.options()
            };
            runtime()?.checkpoint(&a.id, &o).with_context(context)?;
        }
        Command::Restore(a) => {
            let rt = runtime()?;
            let image = a.criu.options();
            let mut o = create_options(&a.create);
            o.restore = Some(&image);
            let context = || format!("restore {}", a.create.id);
            if a.criu.lazy_pages {
                return Err(anyhow!("--lazy-pages is not supported")).with_context(context);
            }
            if a.detach {
                rt.run_detached(&o).with_context(context)?;
            } else {
                let code = rt.run(&o).with_context(context)?;
                return Ok(ExitCode::from(code.clamp(0, 255) as u8));
            }
        }
        Command::Run { create, detach } => {
            let rt = runtime()?;
            let o = create_options(create);
            let context = || format!("run {}", create.id);
            if *detach {
                rt.run_detached(&o).with_context(context)?;
            } else {
                let code = rt.run(&o).with_context(context)?;
                return Ok(ExitCode::from(code.clamp(0, 255) as u8));
            }
        }
        Command::Exec {
            id,
            process,
            tty,
            console_socket,
            pid_file,
            detach,
            cwd,
            env,
            user,
            cap,
            no_new_privs,
            preserve_fds,
            args,
        } => {
            let rt = runtime()?;
            let context = || format!("exec {id}");
            let process = match process {
                Some(file) => {
                    let data =
                        std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
                    amphi_core::spec::parse(file, &data).with_context(context)?
                }
                None => {
                    let user = user
                        .as_deref()
                        .map(parse_user)
                        .transpose()
                        .with_context(context)?;
                    rt.exec_process(
                        id,
                        amphi_runtime::ExecOverrides {
                            args: args.clone(),
                            env: env.clone(),
                            cwd: cwd.clone(),
                            user,
                            caps: cap.clone(),
                            no_new_privs: *no_new_privs,
                            tty: *tty,
                        },
                    )
                    .with_context(context)?
                }
            };
            let code = rt
                .exec(amphi_runtime::ExecOptions {
                    id,
                    process,
                    detach: *detach,
                    pid_file: pid_file.as_deref(),
                    console_socket: console_socket.as_deref(),
                    preserve_fds: *preserve_fds,
                })
                .with_context(context)?;
            return Ok(ExitCode::from(code.clamp(0, 255) as u8));
        }
        Command::Ps { id, format } => {
            let pids = runtime()?.ps(id).with_context(|| format!("ps {id}"))?;
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string(&pids)?),
                ListFormat::Table => {
                    println!("PID   CMD");
                    for pid in pids {
                        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                        println!("{pid:<5} {}", cmd.trim_end());
                    }
                }
            }
        }
        Command::Pause { id } => runtime()?
            .pause(id)
            .with_context(|| format!("pause {id}"))?,
        Command::Resume { id } => runtime()?
            .resume(id)
            .with_context(|| format!("resume {id}"))?,
        Command::Update(a) => {
            let resources = update_resources(a).with_context(|| format!("update {}", a.id))?;
            runtime()?
                .update(&a.id, &resources)
                .with_context(|| format!("update {}", a.id))?;
        }
        Command::Events {
            id,
            stats,
            interval,
        } => {
            let interval =
                parse_duration(interval).with_context(|| format!("events {id}: --interval"))?;
            events(&runtime()?, id, *stats, interval).with_context(|| format!("events {id}"))?;
        }
        Command::List { format, quiet } => list(&runtime()?, *format, *quiet)?,
        Command::Serve {
            functions,
            listen,
            work_dir,
            shutdown_timeout,
            keepers,
        } => {
            let shutdown_timeout =
                parse_duration(shutdown_timeout).context("--shutdown-timeout")?;
            let keepers = keepers.map(usize::from).unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |n| n.get().min(64))
            });
            amphi_serve::run(amphi_serve::Options {
                functions: functions.clone(),
                listen: *listen,
                root: root.clone(),
                wasm_cache: wasm_cache.clone(),
                work_dir: work_dir.clone(),
                shutdown_timeout,
                keepers,
            })
            .context("serve")?;
        }
        Command::Features => println!("{}", serde_json::to_string_pretty(&spec_cmd::features())?),
        Command::WasmCache(command) => wasm_cache_command(&wasm_cache.path, command)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `--resources` and the flags, as one linux.resources (flags win).
fn update_resources(a: &UpdateArgs) -> Result<oci_spec::runtime::LinuxResources> {
    use serde_json::{json, Value};
    if a.l3_cache_schema.is_some() {
        bail!("--l3-cache-schema: Intel RDT is not supported by amphi");
    }
    let mut r: Value = match &a.resources {
        Some(path) => {
            let data = if path.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                buf
            } else {
                std::fs::read(path).with_context(|| format!("read {}", path.display()))?
            };
            let parsed: oci_spec::runtime::LinuxResources = amphi_core::spec::parse(path, &data)?;
            serde_json::to_value(parsed)?
        }
        None => json!({}),
    };
    let mut set = |section: &str, key: &str, v: Value| {
        r.as_object_mut()
            .expect("object")
            .entry(section)
            .or_insert_with(|| json!({}))[key] = v;
    };
    if let Some(v) = a.blkio_weight {
        set("blockIO", "weight", v.into());
    }
    for (key, v) in [
        ("period", a.cpu_period.map(Value::from)),
        ("quota", a.cpu_quota.map(Value::from)),
        ("shares", a.cpu_shares.map(Value::from)),
        ("realtimePeriod", a.cpu_rt_period.map(Value::from)),
        ("realtimeRuntime", a.cpu_rt_runtime.map(Value::from)),
        ("cpus", a.cpuset_cpus.clone().map(Value::from)),
        ("mems", a.cpuset_mems.clone().map(Value::from)),
    ] {
        if let Some(v) = v {
            set("cpu", key, v);
        }
    }
    for (key, flag, v) in [
        ("limit", "--memory", &a.memory),
        ("reservation", "--memory-reservation", &a.memory_reservation),
        ("swap", "--memory-swap", &a.memory_swap),
    ] {
        if let Some(v) = v {
            set("memory", key, parse_bytes(v).with_context(|| flag)?.into());
        }
    }
    if let Some(v) = a.pids_limit {
        set("pids", "limit", v.into());
    }
    if r.as_object().is_some_and(|o| o.is_empty()) {
        bail!("nothing to update: give --resources FILE or a flag such as --memory");
    }
    serde_json::from_value(r).context("linux.resources")
}

/// "-1" (unlimited), or a size as runc takes it (bytes, k, m, g, t).
fn parse_bytes(s: &str) -> Result<i64> {
    if s == "-1" {
        return Ok(-1);
    }
    amphi_core::util::parse_size(s)
        .and_then(|n| i64::try_from(n).ok())
        .ok_or_else(|| anyhow!("{s:?}: not a size (use bytes or a k, m, g or t suffix)"))
}

/// A Go duration as runc takes it: 100ms, 5s, 1m, 1h, 1m30s.
fn parse_duration(s: &str) -> Result<std::time::Duration> {
    amphi_core::util::parse_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow!("{s:?} is not a duration (e.g. 500ms, 5s, 1m)"))
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

fn list(rt: &Runtime, format: ListFormat, quiet: bool) -> Result<()> {
    let all = rt.list()?;
    if quiet {
        for (s, _) in &all {
            println!("{}", s.id);
        }
        return Ok(());
    }
    match format {
        ListFormat::Json => {
            let v: Vec<_> = all.iter().map(|(s, st)| s.oci_state(*st)).collect();
            println!("{}", serde_json::to_string(&v)?);
        }
        ListFormat::Table => {
            println!(
                "{:<24} {:<8} {:<10} {:<40} CREATED",
                "ID", "PID", "STATUS", "BUNDLE"
            );
            for (s, st) in &all {
                let pid = if *st == amphi_runtime::ContainerStatus::Stopped {
                    0
                } else {
                    s.pid
                };
                println!(
                    "{:<24} {:<8} {:<10} {:<40} {}",
                    s.id,
                    pid,
                    st,
                    s.bundle.display(),
                    s.created
                );
            }
        }
    }
    Ok(())
}

fn wasm_cache_command(dir: &Path, command: &WasmCacheCommand) -> Result<()> {
    if !dir.is_dir() {
        anyhow::bail!("--wasm-cache {}: no such directory", dir.display());
    }
    let cache = amphi_wasm::Cache::new(dir, u64::MAX);
    let show = |entries: &[amphi_wasm::cache::Entry]| -> Vec<serde_json::Value> {
        entries
            .iter()
            .map(|e| {
                let last_use = e
                    .last_use
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                serde_json::json!({
                    "key": e.key,
                    "module": format!("sha256:{}", e.module_digest),
                    "moduleSize": e.module_size,
                    "kind": match e.flavor {
                        amphi_wasm::Flavor::Module => "module",
                        amphi_wasm::Flavor::Component => "component",
                    },
                    "size": e.size,
                    "lastUse": amphi_core::util::rfc3339(last_use, 0),
                    "inUse": e.in_use,
                })
            })
            .collect()
    };
    match command {
        WasmCacheCommand::List { format } => {
            let entries = cache
                .list()
                .with_context(|| format!("list {}", dir.display()))?;
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string(&show(&entries))?),
                ListFormat::Table => {
                    println!(
                        "{:<71} {:<9} {:>12} {:>12} {:<20} IN USE",
                        "MODULE", "KIND", "MODULE SIZE", "SIZE", "LAST USE"
                    );
                    for (e, v) in entries.iter().zip(show(&entries)) {
                        println!(
                            "{:<71} {:<9} {:>12} {:>12} {:<20} {}",
                            v["module"].as_str().unwrap_or_default(),
                            v["kind"].as_str().unwrap_or_default(),
                            e.module_size,
                            e.size,
                            v["lastUse"].as_str().unwrap_or_default(),
                            if e.in_use { "yes" } else { "no" }
                        );
                    }
                }
            }
        }
        WasmCacheCommand::Prune { max } => {
            let removed = cache
                .shrink_to(*max, None)
                .with_context(|| format!("prune {}", dir.display()))?;
            let freed: u64 = removed.iter().map(|e| e.size).sum();
            println!(
                "removed {} compiled modules, {} bytes",
                removed.len(),
                freed
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(dir) = &cli.generate_man {
        return match generate_man(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("amphi: man pages: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if cli.debug {
        amphi_core::util::trace::enable();
    }
    let logger = log::Logger::new(cli.log.as_deref(), cli.log_format);
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("{e:#}");
            logger.error(&msg);
            eprintln!("amphi: {msg}");
            ExitCode::FAILURE
        }
    }
}
