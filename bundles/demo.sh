#!/usr/bin/env bash
# amphi's main job: build amphi and run a container with it.
# Run as root on a Debian machine; installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release --locked -p amphi
amphi=$PWD/target/release/amphi

out=$PWD/bundles/out
root=$(mktemp -d /tmp/amphi-demo.XXXXXX)
trap '"$amphi" --root "$root" delete --force demo-native >/dev/null 2>&1 || true; rm -rf "$root"' EXIT

native=$out/busybox
rm -rf "$native"
bash bundles/busybox-rootfs.sh "$native/rootfs"
cat > "$native/config.json" <<JSON
{
  "ociVersion": "1.0.2",
  "process": {
    "user": {"uid": 0, "gid": 0},
    "args": ["sh", "-c", "echo \"native: hello from \$(hostname), pid \$\$, \$(ls /proc | grep -c '^[0-9]') processes visible, cgroup \$(cat /proc/self/cgroup | head -1)\""],
    "env": ["PATH=/bin"],
    "cwd": "/",
    "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
    "noNewPrivileges": true
  },
  "root": {"path": "rootfs", "readonly": true},
  "hostname": "native-box",
  "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
             {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}],
  "linux": {
    "cgroupsPath": "amphi-demo-native",
    "resources": {"memory": {"limit": 67108864}, "pids": {"limit": 64}},
    "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
    "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list"],
    "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
  }
}
JSON
"$amphi" --root "$root" run --bundle "$native" demo-native
