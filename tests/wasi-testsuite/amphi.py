"""The WASI test suite's runtime adapter for amphi (WebAssembly/wasi-testsuite).

Each test runs as a container: `run.py` makes a bundle of the test's module,
arguments, environment and directory, and runs it with `amphi run`. See
README.md beside this file.
"""
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
AMPHI = shlex.split(os.getenv("AMPHI", str(HERE.parents[1] / "target/debug/amphi")))


def get_name() -> str:
    return "amphi"


def get_version() -> str:
    out = subprocess.run(AMPHI + ["--version"], encoding="UTF-8",
                         capture_output=True, check=True).stdout
    return out.splitlines()[0].split(" ")[-1]


def get_wasi_versions() -> List[str]:
    return ["wasm32-wasip1", "wasm32-wasip3"]


def get_wasi_worlds() -> List[str]:
    return ["wasi:cli/command"]


def get_timeout_seconds() -> float:
    # A first start compiles the module (a few MB of Rust): the cache is
    # per container root, and each test has its own.
    return 30.0


def compute_argv(test_path: str,
                 args_env_root: Tuple[List[str], Dict[str, str], Optional[str]],
                 proposals: List[str],
                 wasi_world: str,
                 wasi_version: str) -> List[str]:
    args, env, root = args_env_root
    argv = [sys.executable, str(HERE / "run.py")]
    for k, v in env.items():
        argv += ["--env", f"{k}={v}"]
    if root:
        argv += ["--root", str(root)]
    return argv + ["--", test_path] + list(args)
