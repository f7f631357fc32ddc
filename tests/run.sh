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

stage deps bash scripts/deps.sh
stage fmt cargo fmt --all --check
stage clippy cargo clippy --workspace --all-targets --locked -- -D warnings
# The integration tests drive the amphi binary: build it first, and fail here
# rather than test a stale one.
stage build cargo build --workspace --locked
stage test cargo test --workspace --locked -- --skip corpus_
# Two long passes side by side: the real third-party wasm programs
# (tests/wasm_corpus.rs: fetching, and compiling a 68 MB module, use the
# cores) and the pure cgroup v2 lane in a VM (tests/vm/lane.sh: QEMU's one
# vCPU; AMPHI_SKIP_VM=1 skips it on a machine without QEMU).
# The lane's QEMU keeps one core busy and the corpus often leaves the other
# idle: the fuzzing pass's build (minutes of release compiling) starts
# there, niced below both, once the corpus is done.
corpus_started=$SECONDS
corpus_status_file=$(mktemp)
(
    status=0
    cargo test -p amphi-tests --test wasm_corpus --locked >"$corpus_log" 2>&1 || status=$?
    echo "$status $((SECONDS - corpus_started))" > "$corpus_status_file"
    nice -n 19 bash fuzz/run.sh --build-only >/dev/null 2>&1 || true
) &
beside=$!
lane_status=0
stage vm-lane bash tests/vm/lane.sh || lane_status=$?
wait "$beside" || true
read -r corpus_status corpus_took < "$corpus_status_file" || corpus_status=1
rm -f "$corpus_status_file"
echo "wasm-corpus ${corpus_took:-?} (beside the lane)" >> "$times"
echo "beside-lane $((SECONDS - corpus_started)) (the corpus, then the fuzz build)" >> "$times"
cat "$corpus_log"
[ "$lane_status" = 0 ] || { echo "tests/run.sh: the cgroup v2 lane failed" >&2; exit "$lane_status"; }
[ "$corpus_status" = 0 ] || { echo "tests/run.sh: the wasm corpus failed" >&2; exit "$corpus_status"; }
# A short fuzzing pass of every cargo-fuzz target (nightly; built above,
# beside the lane, a failed build fails here); longer campaigns:
# SECONDS_PER_TARGET=600 bash fuzz/run.sh.
export SECONDS_PER_TARGET=${SECONDS_PER_TARGET:-15}
stage fuzz bash fuzz/run.sh
