#!/usr/bin/env bash
# Run the benchmarks end to end on a Debian machine, as root: install what
# they compare against (runc; crun as a lower bound), then the harness.
# The results in docs/benchmarks.md and benchmarks/results/ are rewritten.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/../scripts/deps.sh"
if ! command -v crun >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq crun >/dev/null
fi
cd "$here/.."
cargo build --release -p amphi -p amphi-bench -p containerd-shim-amphi-v2
exec target/release/amphi-bench "${@:-all}"
