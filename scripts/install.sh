#!/usr/bin/env bash
# Install amphi where podman, Docker and containerd find it:
#   bash scripts/install.sh [PREFIX]             # builds (release) and installs into PREFIX/bin
#   bash scripts/install.sh --uninstall [PREFIX] # removes what it installed
# PREFIX defaults to /usr/local; PROFILE=dev installs a debug build;
# BIN_DIR=DIR installs binaries already built there (the tests do: a
# `cargo build -p` selection unifies features differently from the
# workspace build and would compile the crates again). Installs `amphi` (the runtime: `podman
# --runtime`, Docker's daemon.json `runtimes`, containerd's runc shim with
# BinaryName), `amphi-wasm` (the same command line with the wasm engine,
# which amphi runs for wasm bundles) and `containerd-shim-amphi-v2`
# (containerd's runtime_type io.containerd.amphi.v2), side by side: amphi
# runs the amphi-wasm next to it, the shim the amphi next to it;
# and their man pages into PREFIX/share/man/man8 (amphi(8), amphi-run(8),
# ..., containerd-shim-amphi-v2(8)).
set -euo pipefail
cd "$(dirname "$0")/.."
uninstall=false
if [ "${1:-}" = --uninstall ]; then
    uninstall=true
    shift
fi
prefix=${1:-/usr/local}
bins=(amphi amphi-wasm containerd-shim-amphi-v2)
man8=$prefix/share/man/man8
if $uninstall; then
    for b in "${bins[@]}"; do
        rm -f "$prefix/bin/$b"
    done
    rm -f "$man8"/amphi.8 "$man8"/amphi-*.8 "$man8"/containerd-shim-amphi-v2.8
    echo "removed ${bins[*]} from $prefix/bin, their man pages from $man8"
    exit 0
fi
dir=${BIN_DIR:-}
if [ -z "$dir" ]; then
    profile=${PROFILE:-release}
    cargo build --profile "$profile" --locked -p amphi -p containerd-shim-amphi-v2
    [ "$profile" = dev ] && dir=target/debug || dir=target/$profile
fi
install -d "$prefix/bin"
for b in "${bins[@]}"; do
    install -m 0755 "$dir/$b" "$prefix/bin/$b"
done
install -d "$man8"
"$prefix/bin/amphi" --generate-man "$man8"
install -m 0644 shims/containerd-shim-amphi-v2/containerd-shim-amphi-v2.8 "$man8/"
echo "installed ${bins[*]} into $prefix/bin, their man pages into $man8"
