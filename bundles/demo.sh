#!/usr/bin/env bash
# amphi's main job: build amphi and run a native and a wasm container with it,
# side by side, each in its own namespaces, cgroup and read-only rootfs.
# Run as root on a Debian machine; installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bash bundles/wasm/build.sh
cargo build --release --locked -p amphi
amphi=$PWD/target/release/amphi

out=$PWD/bundles/out
root=$(mktemp -d /tmp/amphi-demo.XXXXXX)
cleanup() {
    for id in demo-native demo-wasm; do
        "$amphi" --root "$root" delete --force "$id" >/dev/null 2>&1 || true
    done
    rm -rf "$root"
}
trap cleanup EXIT

# bundle DIR NAME ARGS_JSON: a busybox rootfs (plus the wasm guests under
# /app) with a config that runs ARGS_JSON.
bundle() {
    local dir=$1 name=$2 args=$3
    rm -rf "$dir"
    bash bundles/busybox-rootfs.sh "$dir/rootfs"
    mkdir -p "$dir/rootfs/app"
    cp bundles/out/wasm/*.wasm "$dir/rootfs/app/"
    cat > "$dir/config.json" <<JSON
{
  "ociVersion": "1.0.2",
  "process": {
    "user": {"uid": 0, "gid": 0},
    "args": $args,
    "env": ["PATH=/bin", "GREETING=hello"],
    "cwd": "/",
    "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
    "noNewPrivileges": true
  },
  "root": {"path": "rootfs", "readonly": true},
  "hostname": "$name",
  "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
             {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}],
  "linux": {
    "cgroupsPath": "amphi-$name",
    "resources": {"memory": {"limit": 67108864}, "pids": {"limit": 64}},
    "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
    "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list"],
    "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
  }
}
JSON
}

bundle "$out/demo-native" demo-native '["sh", "-c", "echo \"native: $GREETING from $(hostname), pid $$, $(ls /proc | grep -c ^[0-9]) processes visible\""]'
# No annotation needed: the entrypoint's \0asm header picks the wasm executor.
bundle "$out/demo-wasm" demo-wasm '["/app/hello.wasm"]'

# Side by side: both created (envelopes set up, workloads not yet started),
# then both started.
"$amphi" --root "$root" create --bundle "$out/demo-native" demo-native
"$amphi" --root "$root" create --bundle "$out/demo-wasm" demo-wasm
"$amphi" --root "$root" list
"$amphi" --root "$root" start demo-native
"$amphi" --root "$root" start demo-wasm
for id in demo-native demo-wasm; do
    while [ "$("$amphi" --root "$root" state "$id" | grep -o '"status": "[a-z]*"')" != '"status": "stopped"' ]; do
        sleep 0.05
    done
    "$amphi" --root "$root" delete "$id"
done
echo "both containers ran and were removed"
