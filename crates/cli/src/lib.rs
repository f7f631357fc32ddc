//! runc's command line over amphi's runtime API, as two binaries.
//!
//! `amphi` is this command line without wasmtime linked in: containerd
//! and podman run it three times per container (create, start, delete),
//! and a binary with the engine and the function host in took 2.2 ms to
//! start here against 1.3 ms without (the loader's relocations and page
//! faults of five times the code). `amphi-wasm` is the same command line with the
//! engine in; `amphi` re-executes the command line as `amphi-wasm`
//! (installed beside it) where wasmtime is needed: a wasm bundle's create,
//! `exec` of a module, a wasm checkpoint or restore, `serve` and
//! `wasm-cache`. Every other command of a wasm container (start, state,
//! kill, delete, ...) needs no engine and stays in `amphi`.

mod commands;
mod handoff;
mod log;
mod wasmtime;

use std::path::PathBuf;
use std::process::ExitCode;

use amphi_core::executor::Handler;
use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};

use commands::{
    checkpoint, create, delete, events, exec, features, kill, list, pause, ps, restore, resume,
    run, serve, spec, start, state, update, wasm_cache, Ctx, Id,
};

#[derive(Parser)]
#[command(
    name = "amphi",
    about = "OCI runtime for native and WebAssembly containers",
    disable_version_flag = true,
    subcommand_required = false
)]
pub struct Cli {
    /// Print the version (as runc does: the runtime, then the spec and
    /// the engines, one a line).
    #[arg(short = 'v', long)]
    pub version: bool,
    /// Directory for container state (default /run/amphi; for other users
    /// $XDG_RUNTIME_DIR/amphi).
    #[arg(long, global = true)]
    pub root: Option<PathBuf>,
    /// Also write errors and warnings to this file.
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Format of the log file: text or json (as runc's --log-format).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: log::Format,
    /// Print the phases of the start path with their times on stderr.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Directory of compiled WebAssembly modules (default: ROOT/wasm-cache).
    #[arg(long, global = true)]
    pub wasm_cache: Option<PathBuf>,
    /// The most the compiled modules may take (e.g. 512M, 4G); the least
    /// recently used not in use are evicted past it.
    #[arg(long, global = true, default_value = "2G", value_parser = commands::parse_size_arg)]
    pub wasm_cache_max: u64,
    /// Manage cgroups through systemd: linux.cgroupsPath is
    /// slice:prefix:name, a transient prefix-name.scope unit in the slice.
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// Write the man pages, amphi(8) and amphi-COMMAND(8), into DIR
    /// (scripts/install.sh does).
    #[arg(long, hide = true, value_name = "DIR")]
    pub generate_man: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Write a default config.json into the bundle directory.
    Spec(spec::Args),
    /// Create a container: set up its envelope and wait for `start`.
    Create(create::Args),
    /// Start the workload of a created container.
    Start(Id),
    /// Print a container's state as runtime-spec JSON.
    State(Id),
    /// Send a signal (default SIGTERM) to a container's init or all its processes.
    Kill(kill::Args),
    /// Remove a stopped container (--force: stop it first).
    Delete(delete::Args),
    /// Create, start, wait for and delete a container; exit with its status.
    Run(run::Args),
    /// Write a running container's checkpoint image (wasm: amphi's own
    /// image; native: CRIU's), then remove the container unless
    /// --leave-running.
    Checkpoint(checkpoint::Args),
    /// Create and start a container from a checkpoint image (as `run`).
    Restore(restore::Args),
    /// Change a running container's cgroup limits.
    Update(update::Args),
    /// Print cgroup statistics and OOM events as JSON lines.
    Events(events::Args),
    /// List containers.
    #[command(alias = "ls")]
    List(list::Args),
    /// Run another process in a running container.
    Exec(exec::Args),
    /// List the processes of a container (host pids).
    Ps(ps::Args),
    /// Freeze every process of a container.
    Pause(Id),
    /// Thaw a paused container.
    Resume(Id),
    /// Print what this runtime supports, as runtime-spec features JSON.
    Features,
    /// The compiled WebAssembly modules cache.
    #[command(subcommand)]
    WasmCache(wasm_cache::Args),
    /// Serve HTTP functions (wasm modules, wasi:http components, native
    /// programs, OCI bundles), each invocation in the envelope.
    Serve(serve::Args),
}

/// What needs wasmtime: `amphi-wasm` runs it ([`wasmtime::Wasmtime`]),
/// `amphi` re-executes its command line as `amphi-wasm`
/// ([`handoff::HandOff`]).
trait Engine {
    /// The executors, in the order they are asked.
    fn handlers(&self, wasm_cache: &amphi_wasm::CacheDir) -> Vec<Box<dyn Handler>>;
    fn serve(&self, a: &serve::Args, ctx: &Ctx) -> Result<ExitCode>;
    fn wasm_cache(&self, a: &wasm_cache::Args, ctx: &Ctx) -> Result<ExitCode>;
}

/// Each subcommand's module runs it.
fn run(cli: &Cli, engine: &dyn Engine) -> Result<ExitCode> {
    if cli.version {
        print!("{}", version());
        return Ok(ExitCode::SUCCESS);
    }
    let Some(command) = &cli.command else {
        Cli::command().print_help()?;
        return Ok(ExitCode::from(2));
    };
    let ctx = Ctx::new(cli, engine);
    match command {
        Command::Spec(a) => spec::run(a),
        Command::Create(a) => create::run(a, &ctx),
        Command::Start(a) => start::run(a, &ctx),
        Command::State(a) => state::run(a, &ctx),
        Command::Kill(a) => kill::run(a, &ctx),
        Command::Delete(a) => delete::run(a, &ctx),
        Command::Run(a) => run::run(a, &ctx),
        Command::Checkpoint(a) => checkpoint::run(a, &ctx),
        Command::Restore(a) => restore::run(a, &ctx),
        Command::Update(a) => update::run(a, &ctx),
        Command::Events(a) => events::run(a, &ctx),
        Command::List(a) => list::run(a, &ctx),
        Command::Exec(a) => exec::run(a, &ctx),
        Command::Ps(a) => ps::run(a, &ctx),
        Command::Pause(a) => pause::run(a, &ctx),
        Command::Resume(a) => resume::run(a, &ctx),
        Command::Features => features::run(),
        Command::WasmCache(a) => engine.wasm_cache(a, &ctx),
        Command::Serve(a) => engine.serve(a, &ctx),
    }
}

/// amphi(8) and a page per subcommand, as runc-run(8) and its siblings.
fn generate_man(dir: &std::path::Path) -> Result<()> {
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

/// runc's `--version` shape: tools parse the first line and `spec:`.
fn version() -> String {
    format!(
        "amphi version {}\nspec: {}\nwasmtime: {}\n",
        env!("CARGO_PKG_VERSION"),
        amphi_core::state::OCI_VERSION,
        amphi_wasm::WASMTIME_VERSION
    )
}

/// `amphi`'s `main`.
pub fn amphi() -> ExitCode {
    main(&handoff::HandOff)
}

/// `amphi-wasm`'s `main`.
pub fn amphi_wasm() -> ExitCode {
    main(&wasmtime::Wasmtime)
}

fn main(engine: &dyn Engine) -> ExitCode {
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
    match run(&cli, engine) {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("{e:#}");
            logger.error(&msg);
            eprintln!("amphi: {msg}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
#[test]
fn the_command_line_is_well_formed() {
    Cli::command().debug_assert();
}
