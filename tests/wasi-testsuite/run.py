"""Runs one WASI test program as an amphi container, as `wasmtime run
[--env K=V]... [--dir ROOT::/] TEST ARGS...` runs it: the module in the
rootfs under its own name, which is the guest's argv[0] as under
wasmtime (looked up in `process.cwd`, /app), a copy of ROOT
bind-mounted and preopened as `/` (none without it), the host's network
(the suite's servers listen on its loopback). The copy: the suite's
runner removes what a test leaves (`*.cleanup`) but not symlinks, which
a later test of the same directory would list. Exits with the
container's status; leaves nothing behind."""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from amphi import AMPHI


def bundle(base: Path, module: Path, args, env, root) -> Path:
    rootfs = base / "rootfs"
    (rootfs / "app").mkdir(parents=True)
    (rootfs / "data").mkdir()
    shutil.copy(module, rootfs / "app" / module.name)
    mounts = []
    if root:
        shutil.copytree(root, base / "data", symlinks=True)
        mounts.append({"destination": "/data", "type": "bind", "source": str(base / "data"),
                       "options": ["rbind", "rw"]})
    config = {
        "ociVersion": "1.2.0",
        "root": {"path": "rootfs", "readonly": False},
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0},
                    "args": [module.name] + args, "env": env, "cwd": "/app"},
        "mounts": mounts,
        "linux": {"namespaces": [{"type": t} for t in ("mount", "pid", "ipc", "uts")]},
        "annotations": {"io.github.amphi.wasm.dirs": "/data::/" if root else ""},
    }
    (base / "config.json").write_text(json.dumps(config))
    return base


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--root")
    p.add_argument("module")
    p.add_argument("args", nargs=argparse.REMAINDER)
    o = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="amphi-wasi-test-"))
    try:
        b = bundle(base / "bundle", Path(o.module), o.args, o.env, o.root)
        state = base / "state"
        child = subprocess.Popen(AMPHI + ["--root", str(state), "run", "--bundle", str(b),
                                          f"wasi-test-{os.getpid()}"])
        # The runner's timeout ends this process: the container goes too.
        signal.signal(signal.SIGTERM, lambda *_: child.kill())
        return child.wait()
    finally:
        subprocess.run(AMPHI + ["--root", str(base / "state"), "delete", "--force",
                                f"wasi-test-{os.getpid()}"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
