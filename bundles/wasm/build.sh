#!/usr/bin/env bash
# Build the guest programs: core modules (wasm32-wasip1) for every program
# and a component (wasm32-wasip2) of hello, into bundles/out/wasm/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$here/../out/wasm
for target in wasm32-wasip1 wasm32-wasip2; do
    rustup target list --installed | grep -qx "$target" || rustup target add "$target"
done
export CARGO_TARGET_DIR=$here/../out/wasm-target
cargo build --quiet --release --manifest-path "$here/Cargo.toml" --target wasm32-wasip1
cargo build --quiet --release --manifest-path "$here/Cargo.toml" --target wasm32-wasip2 --bin hello
mkdir -p "$out"
for bin in hello probe trap spin alloc cpu; do
    cp "$CARGO_TARGET_DIR/wasm32-wasip1/release/$bin.wasm" "$out/$bin.wasm"
done
cp "$CARGO_TARGET_DIR/wasm32-wasip2/release/hello.wasm" "$out/hello-component.wasm"
