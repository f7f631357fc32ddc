//! The conformance suite: one case per area of the OCI runtime spec, run
//! through the command line of any runc-compatible runtime.
//!
//! ```sh
//! cargo test -p amphi-tests --test conformance                   # amphi and runc
//! cargo test -p amphi-tests --test conformance -- --runtime /usr/sbin/runc
//! cargo test -p amphi-tests --test conformance -- seccomp       # cases matching a filter
//! ```
//!
//! Every case runs against every runtime given (default: amphi and
//! Debian's runc). A runtime fails a case when any check fails. The suite
//! fails when amphi fails a case, or when runc fails a case that does not
//! name the spec sentence runc violates, or when runc passes one that says
//! it does (the note would be stale). The results table is printed and
//! written to `target/conformance.md`.

mod cases;

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use amphi_tests::{cgroup_dirs, Bundle, Env, Run};

/// What is known about runc on a case.
#[derive(Clone, Copy)]
pub enum Runc {
    Passes,
    /// runc fails this case; the text quotes the spec sentence it violates.
    Violates(&'static str),
    /// Where the spec leaves room and amphi chooses otherwise than runc
    /// (docs/conformance.md says why); runc may fail the case, and where its result
    /// depends on timing, may pass it too.
    Differs(&'static str),
}

pub struct Case {
    pub area: &'static str,
    pub name: &'static str,
    pub run: fn(&mut Ctx),
    pub runc: Runc,
}

/// One case's run against one runtime.
pub struct Ctx {
    pub env: Env,
    pub runtime_name: String,
    checks: usize,
    failures: Vec<String>,
    skipped: Option<String>,
}

impl Ctx {
    /// The host cannot exercise this case; the table says so.
    pub fn skip(&mut self, why: impl Display) {
        self.skipped = Some(why.to_string());
    }

    pub fn is_amphi(&self) -> bool {
        self.runtime_name == "amphi"
    }

    /// Record a check; a failed one fails the case but the case goes on.
    #[track_caller]
    pub fn check(&mut self, ok: bool, what: impl Display) {
        self.checks += 1;
        if !ok {
            let at = std::panic::Location::caller();
            self.failures.push(format!("{what} (line {})", at.line()));
        }
    }

    #[track_caller]
    pub fn eq<T: PartialEq + std::fmt::Debug>(&mut self, got: T, want: T, what: impl Display) {
        let ok = got == want;
        self.check(ok, format!("{what}: got {got:?}, want {want:?}"));
    }

    /// A busybox bundle running `sh -c script`.
    pub fn sh_bundle(&self, name: &str, script: &str) -> Bundle {
        self.env.bundle(name, &["sh", "-c", script])
    }

    /// `RUNTIME run` of the bundle, after `patch`; output and exit code.
    pub fn run(&self, name: &str, script: &str, patch: impl FnOnce(&mut Bundle)) -> Run {
        let mut b = self.sh_bundle(name, script);
        patch(&mut b);
        b.write();
        self.env
            .amphi(&["run", "--bundle", b.path(), &self.env.id(name)])
    }

    /// Create and start a long-running container (`sleep`); its host pid.
    pub fn start_sleeper(&self, name: &str, patch: impl FnOnce(&mut Bundle)) -> (Bundle, i32) {
        let mut b = self.env.bundle(name, &["sleep", "600"]);
        patch(&mut b);
        b.write();
        let id = self.env.id(name);
        let r = self.env.amphi(&["create", "--bundle", b.path(), &id]);
        assert_eq!(r.code, 0, "create {id}: {}", r.stderr);
        let r = self.env.amphi(&["start", &id]);
        assert_eq!(r.code, 0, "start {id}: {}", r.stderr);
        let pid = self.env.state(&id)["pid"].as_i64().expect("pid") as i32;
        (b, pid)
    }

    /// A file of the container's cgroup read from the host, from whichever
    /// hierarchy holds it.
    pub fn cgroup_file(&self, b: &Bundle, file: &str) -> Option<String> {
        cgroup_dirs(&b.cgroup())
            .iter()
            .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
            .map(|s| s.trim().to_owned())
    }

    pub fn tmp(&self) -> &Path {
        self.env.tmp.path()
    }
}

/// `cgroup2 at /sys/fs/cgroup`: the container's limits are v2 files.
pub fn host_is_v2() -> bool {
    nix::sys::statfs::statfs("/sys/fs/cgroup")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

struct Outcome {
    checks: usize,
    failures: Vec<String>,
    skipped: Option<String>,
}

fn run_case(case: &Case, runtime: &Path, runtime_name: &str) -> Outcome {
    let env = Env::for_runtime(runtime.to_path_buf());
    // A mapped root in a user namespace must reach the bundle.
    let _ = std::fs::set_permissions(
        env.tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    );
    let mut ctx = Ctx {
        env,
        runtime_name: runtime_name.to_owned(),
        checks: 0,
        failures: Vec::new(),
        skipped: None,
    };
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (case.run)(&mut ctx)));
    if let Err(p) = panicked {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        ctx.failures.push(format!("aborted: {msg}"));
    }
    Outcome {
        checks: ctx.checks,
        failures: ctx.failures,
        skipped: ctx.skipped,
    }
}

fn runc_path() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("runc"))
        .find(|p| p.exists())
}

fn main() {
    let mut runtimes: Vec<(String, PathBuf)> = Vec::new();
    let mut filter: Option<String> = None;
    // libtest's `--skip PATTERN`, as `cargo test --workspace -- --skip X`
    // passes it to every test binary: its value is no filter.
    let mut skip: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runtime" => {
                let p = PathBuf::from(args.next().expect("--runtime PATH"));
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                runtimes.push((name, p));
            }
            "--skip" => skip.extend(args.next()),
            // Flags cargo's test runner passes along.
            s if s.starts_with("--") => {}
            s => filter = Some(s.to_owned()),
        }
    }
    if runtimes.is_empty() {
        runtimes.push(("amphi".into(), amphi_tests::amphi_bin()));
        match runc_path() {
            Some(p) => runtimes.push(("runc".into(), p)),
            None => {
                eprintln!("conformance: runc not found on PATH; install Debian's runc (scripts/deps.sh) or pass --runtime");
                std::process::exit(1);
            }
        }
    }
    let cases: Vec<Case> = cases::all()
        .into_iter()
        .filter(|c| {
            filter
                .as_deref()
                .is_none_or(|f| c.name.contains(f) || c.area.contains(f))
                && !skip.iter().any(|s| c.name.contains(s.as_str()))
        })
        .collect();

    // (case index, runtime index) pairs, a few at a time.
    let jobs: Vec<(usize, usize)> = (0..cases.len())
        .flat_map(|c| (0..runtimes.len()).map(move |r| (c, r)))
        .collect();
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get() * 2);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(c, r)) = jobs.get(i) else { break };
                let (name, path) = &runtimes[r];
                let out = run_case(&cases[c], path, name);
                results.lock().unwrap()[i] = Some(out);
            });
        }
    });
    let results: Vec<Outcome> = results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|o| o.expect("every job ran"))
        .collect();

    let mut table = String::from("| area | case |");
    for (name, _) in &runtimes {
        table += &format!(" {name} |");
    }
    table += "\n|---|---|";
    table += &"---|".repeat(runtimes.len());
    table += "\n";
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let mut total_checks = 0;
    for (ci, case) in cases.iter().enumerate() {
        table += &format!("| {} | {} |", case.area, case.name);
        for (ri, (name, _)) in runtimes.iter().enumerate() {
            let o = &results[ci * runtimes.len() + ri];
            if ri == 0 {
                total_checks += o.checks;
            }
            let passed = o.failures.is_empty();
            let cell = if let Some(why) = o.skipped.as_deref().filter(|_| passed) {
                format!("skip: {why}")
            } else if passed {
                format!("pass ({})", o.checks)
            } else {
                format!("**fail** ({}/{})", o.checks - o.failures.len(), o.checks)
            };
            table += &format!(" {cell} |");
            let known = if name == "runc" {
                case.runc
            } else {
                Runc::Passes
            };
            match (passed, known) {
                (true, Runc::Violates(_)) => problems.push(format!(
                    "{name} passes {}, which says runc violates the spec: the note is stale",
                    case.name
                )),
                (false, Runc::Violates(why)) => notes.push(format!(
                    "- `{}`: runc fails ({}). Spec: {why}",
                    case.name,
                    o.failures.join("; ")
                )),
                (false, Runc::Differs(why)) => notes.push(format!(
                    "- `{}`: runc fails ({}). amphi's choice: {why}",
                    case.name,
                    o.failures.join("; ")
                )),
                (false, Runc::Passes) => problems.push(format!(
                    "{name} fails {}:\n    {}",
                    case.name,
                    o.failures.join("\n    ")
                )),
                (true, _) => {}
            }
        }
        table += "\n";
    }
    let report = format!(
        "{table}\n{} cases, {total_checks} checks per runtime (counted on {}).\n\n{}\n",
        cases.len(),
        runtimes[0].0,
        notes.join("\n")
    );
    println!("{report}");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .join("conformance.md");
    let _ = std::fs::write(&out, &report);
    if !problems.is_empty() {
        eprintln!("conformance problems:\n{}", problems.join("\n"));
        std::process::exit(1);
    }
}
