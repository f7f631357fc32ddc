#!/usr/bin/env bash
# Install what building and testing amphi needs on a Debian machine, as root.
# Idempotent: installs only what is missing.
set -euo pipefail

packages=()
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || packages+=(busybox-static)
command -v runc >/dev/null || packages+=(runc)
command -v containerd >/dev/null || packages+=(containerd)
command -v cc >/dev/null || packages+=(gcc)
# The real clients the tests drive amphi through, and what they need: a
# private podman (with its default seccomp profile from containers-common)
# and a private dockerd; newuidmap for rootless podman.
command -v podman >/dev/null || packages+=(podman)
command -v dockerd >/dev/null || packages+=(docker.io)
command -v newuidmap >/dev/null || packages+=(uidmap)
# containerd's CRI plugin wants a CNI network: the loopback plugin only;
# the CRI client's protobuf bindings are generated with protoc.
[ -x /usr/lib/cni/loopback ] || packages+=(containernetworking-plugins)
command -v protoc >/dev/null || packages+=(protobuf-compiler)
# The cgroup v2 lane: QEMU boots Debian's kernel with this machine's root
# (systemd and D-Bus from it as the guest's PID 1 and bus).
command -v qemu-system-x86_64 >/dev/null || packages+=(qemu-system-x86)
command -v xz >/dev/null || packages+=(xz-utils)
command -v strings >/dev/null || packages+=(binutils)
[ -x /lib/systemd/systemd ] || packages+=(systemd)
command -v dbus-daemon >/dev/null || packages+=(dbus)
# What clone paths amphi takes is checked with strace; CRIU runs in the lane.
command -v strace >/dev/null || packages+=(strace)
# The man pages scripts/install.sh installs are rendered in a test.
command -v man >/dev/null || packages+=(man-db)
# The benchmark's plots are rendered to PNG in their layout test, in
# DejaVu Sans (the width the layout reserves for a text is checked there).
command -v rsvg-convert >/dev/null || packages+=(librsvg2-bin)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || packages+=(fonts-dejavu-core)
command -v criu >/dev/null || packages+=(criu)
# Binaryen's wasm-opt instruments checkpointable wasm modules (Asyncify).
command -v wasm-opt >/dev/null || packages+=(binaryen)
# The lane indexes its kernel's modules (depmod) so CRIU's probes can load them.
command -v depmod >/dev/null || [ -x /usr/sbin/depmod ] || packages+=(kmod)
# The reference of the seccomp compiler's differential test; static libc
# for the conformance suite's keyring probe.
[ -e /usr/include/seccomp.h ] || packages+=(libseccomp-dev)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ "$(uname -m)" != x86_64 ] || packages+=(libc6-dev)
# The wasm corpus fetches pinned programs from PyPI, npm and crates.io.
command -v curl >/dev/null || packages+=(curl ca-certificates)
command -v python3 >/dev/null || packages+=(python3)
if [ ${#packages[@]} -gt 0 ]; then
    echo "deps.sh: installing ${packages[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    echo "deps.sh: no cargo on PATH: install a Rust toolchain (rustup) first" >&2
    exit 1
fi
# The toolchain rust-toolchain.toml pins, with its components and the
# WASI targets the wasm guests and the corpus's crates are built for
# (rustup installs what the file lists; it is a no-op once there).
rustup toolchain install
# The wasm corpus builds rustpython 0.4.0 with the Rust it builds with
# (tests/src/corpus.rs says why).
rustup toolchain install 1.95.0 --profile minimal -t wasm32-wasip1
