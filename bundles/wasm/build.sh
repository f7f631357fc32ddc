#!/usr/bin/env bash
# Build the guest programs: core modules (wasm32-wasip1) for every program
# (preinit: a start that Wizer's pre-initialization removes), components
# (wasm32-wasip2) of hello, idle, counter, net (wasi:sockets), http-get
# (wasi:http's client) and preinit (a wizer-initialize export), WASI 0.3
# guests (p3-hello, p3-http),
# into bundles/out/wasm/; and the
# benchmark and CGI programs for the host too (static, to run in a busybox rootfs),
# into bundles/out/bin/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$here/../out/wasm
for target in wasm32-wasip1 wasm32-wasip2; do
    rustup target list --installed | grep -qx "$target" || rustup target add "$target"
done
# put FROM TO: copy, then rename into place, so that a test process reading
# a program while another process runs this script never sees half of it.
put() {
    cp "$1" "$2.part.$$"
    mv -f "$2.part.$$" "$2"
}
export CARGO_TARGET_DIR=$here/../out/wasm-target
cargo build --quiet --release --manifest-path "$here/Cargo.toml" --target wasm32-wasip1
cargo build --quiet --release --manifest-path "$here/Cargo.toml" --target wasm32-wasip2 --bin hello --bin idle --bin counter --bin net
mkdir -p "$out"
for bin in hello probe trap spin spinsum counter alloc cpu bench idle cgi preinit; do
    put "$CARGO_TARGET_DIR/wasm32-wasip1/release/$bin.wasm" "$out/$bin.wasm"
done
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release \
    --manifest-path "$here/Cargo.toml" --target "$host" --bin bench --bin cgi
mkdir -p "$here/../out/bin"
put "$CARGO_TARGET_DIR/$host/release/bench" "$here/../out/bin/bench"
put "$CARGO_TARGET_DIR/$host/release/cgi" "$here/../out/bin/cgi"
cargo build --quiet --release --manifest-path "$here/http-hello/Cargo.toml" --target wasm32-wasip2
put "$CARGO_TARGET_DIR/wasm32-wasip2/release/http_hello.wasm" "$out/http-hello.wasm"
put "$CARGO_TARGET_DIR/wasm32-wasip2/release/http-get.wasm" "$out/http-get.wasm"
cargo build --quiet --release --manifest-path "$here/p3-hello/Cargo.toml" --target wasm32-wasip2
put "$CARGO_TARGET_DIR/wasm32-wasip2/release/p3_hello.wasm" "$out/p3-hello.wasm"
cargo build --quiet --release --manifest-path "$here/p3-http/Cargo.toml" --target wasm32-wasip2
put "$CARGO_TARGET_DIR/wasm32-wasip2/release/p3_http.wasm" "$out/p3-http.wasm"
cargo build --quiet --release --manifest-path "$here/preinit-component/Cargo.toml" --target wasm32-wasip2
put "$CARGO_TARGET_DIR/wasm32-wasip2/release/preinit-component.wasm" "$out/preinit-component.wasm"
put "$CARGO_TARGET_DIR/wasm32-wasip2/release/hello.wasm" "$out/hello-component.wasm"
put "$CARGO_TARGET_DIR/wasm32-wasip2/release/idle.wasm" "$out/idle-component.wasm"
put "$CARGO_TARGET_DIR/wasm32-wasip2/release/counter.wasm" "$out/counter-component.wasm"
put "$CARGO_TARGET_DIR/wasm32-wasip2/release/net.wasm" "$out/net-component.wasm"
