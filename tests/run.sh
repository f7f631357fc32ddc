#!/usr/bin/env bash
# The whole test suite: lint, unit tests, and integration tests that run real
# containers. Run as root on a Debian machine; installs what it needs.
# Ends with a table of each stage's wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "tests/run.sh: run as root (the tests create namespaces, cgroups and mounts)" >&2
    exit 1
fi
corpus_log=$(mktemp)
times=$(mktemp)
report() {
    echo "tests/run.sh: stage times (s)" >&2
    column -t "$times" >&2 2>/dev/null || cat "$times" >&2
    rm -f "$corpus_log" "$times"
}
trap report EXIT
# stage NAME COMMAND...: run it, and note how long it took.
stage() {
    local name=$1 started=$SECONDS status=0
    shift
    "$@" || status=$?
    echo "$name $((SECONDS - started))" >> "$times"
    return "$status"
}

# A fresh clone builds everything once: incremental compilation's
# bookkeeping would only slow the workspace's crates down and fill the disk.
export CARGO_INCREMENTAL=0
stage deps bash scripts/deps.sh
stage fmt cargo fmt --all --check
stage clippy cargo clippy --workspace --all-targets --locked -- -D warnings
# The integration tests drive the amphi binary: build it first, and fail here
# rather than test a stale one.
stage build cargo build --workspace --locked
# The fuzzing pass's build (minutes of release compiling, its own target
# directory) soaks up what the next two stages leave idle: the host tests
# wait on containers, and the lane's QEMU keeps only one core busy. Niced
# below everything else, it takes no time from them; the fuzz stage waits
# for it. A process group of its own (job control, for the kill on exit)
# but not a session: a new session is a new scheduler autogroup, which
# would get half the CPU whatever its nice value.
set -m
nice -n 19 bash fuzz/run.sh --build-only </dev/null >/dev/null 2>&1 &
fuzz_build=$!
set +m
stop_fuzz_build() { kill -- "-$fuzz_build" 2>/dev/null || true; }
trap 'stop_fuzz_build; report' EXIT
stage test cargo test --workspace --locked -- --skip corpus_
# Two long passes side by side: the real third-party wasm programs
# (tests/wasm_corpus.rs: fetching, and compiling a 68 MB module, use the
# cores) and the pure cgroup v2 lane in a VM (tests/vm/lane.sh: QEMU's one
# vCPU; AMPHI_SKIP_VM=1 skips it on a machine without QEMU).
corpus_started=$SECONDS
cargo test -p amphi-tests --test wasm_corpus --locked >"$corpus_log" 2>&1 &
corpus=$!
lane_status=0
stage vm-lane bash tests/vm/lane.sh || lane_status=$?
corpus_status=0
wait "$corpus" || corpus_status=$?
echo "wasm-corpus $((SECONDS - corpus_started)) (beside the lane)" >> "$times"
cat "$corpus_log"
[ "$lane_status" = 0 ] || { echo "tests/run.sh: the cgroup v2 lane failed" >&2; exit "$lane_status"; }
[ "$corpus_status" = 0 ] || { echo "tests/run.sh: the wasm corpus failed" >&2; exit "$corpus_status"; }
# A short fuzzing pass of every cargo-fuzz target (nightly; built beside
# the stages above, and a failed build fails here); longer campaigns:
# SECONDS_PER_TARGET=600 bash fuzz/run.sh.
stage fuzz-build-wait wait "$fuzz_build" || true
export SECONDS_PER_TARGET=${SECONDS_PER_TARGET:-10}
stage fuzz bash fuzz/run.sh
