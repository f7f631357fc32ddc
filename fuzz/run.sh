#!/usr/bin/env bash
# A short fuzzing pass of every target (SECONDS_PER_TARGET each, default 20),
# as CI runs it; longer campaigns: `cargo +nightly fuzz run TARGET`.
# Needs the nightly toolchain and cargo-fuzz (installed when missing).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
secs=${SECONDS_PER_TARGET:-20}
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cd "$here"
# New inputs go to a scratch directory; the kept corpus (minimised with
# `cargo +nightly fuzz cmin TARGET`) only seeds the run.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export AMPHI_FUZZ_DIR=$scratch
# Every target in one build (each `fuzz run` would otherwise link its own
# afterwards); `--build-only` stops there (tests/run.sh builds ahead).
cargo +nightly fuzz build
[ "${1:-}" = --build-only ] && exit 0
for target in config executor_choice state_file seccomp function_manifest paths; do
    mkdir -p "$scratch/$target" "corpus/$target"
    cargo +nightly fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$secs" -max_len=4096
done
