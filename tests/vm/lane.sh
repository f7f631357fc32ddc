#!/usr/bin/env bash
# The cgroup v2 lane: Debian's own kernel under QEMU (TCG: KVM is not
# usable here), the host's root as the guest's (read-only over 9p, a tmpfs
# overlay for writes), pure cgroup v2 (cgroup_no_v1=all) and systemd 252 as
# PID 1, and in it the tests that concern cgroups (tests/vm/tests.list).
# A failure fails the lane with the guest's output; a guest that does not
# finish fails it with QEMU's and the kernel's last lines.
#   bash tests/vm/lane.sh             # build what it needs, boot, run
#   bash tests/vm/lane.sh --prepare   # build what it needs, list it, stop
#   bash tests/vm/lane.sh --prepared  # boot and run what --prepare listed
#   AMPHI_SKIP_VM=1 bash tests/run.sh # skip it (a machine without QEMU)
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
if [ "${AMPHI_SKIP_VM:-0}" = 1 ]; then
    echo "vm lane: skipped (AMPHI_SKIP_VM=1)"
    exit 0
fi
if [ "$(uname -m)" != x86_64 ]; then
    echo "vm lane: skipped: the lane boots an x86_64 guest" >&2
    exit 0
fi
cache=$repo/target/vm
mkdir -p "$cache"

# Debian's kernel, as the package ships it (no install into /boot): its
# xz payload, unpacked to the ELF vmlinux QEMU boots through the PVH entry
# (no decompression under emulation), and the modules the lane needs.
pkg=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*\)/\1/p' | head -n 1)
[ -n "$pkg" ] || { echo "vm lane: apt-cache knows no linux-image-amd64 (apt-get update?)" >&2; exit 1; }
kdir=$cache/$pkg
if [ ! -s "$kdir/vmlinux" ]; then
    rm -rf "$kdir" && mkdir -p "$kdir"
    (cd "$kdir" && apt-get download "$pkg" >/dev/null 2>&1 && dpkg-deb -x ./*.deb tree && rm -f ./*.deb)
    vmlinuz=$(ls "$kdir"/tree/boot/vmlinuz-*)
    offset=$(LC_ALL=C grep -obUaP '\xfd\x37\x7a\x58\x5a\x00' "$vmlinuz" | head -n 1 | cut -d: -f1)
    tail -c +$((offset + 1)) "$vmlinuz" | xz -dc > "$kdir/vmlinux.part" 2>/dev/null || true
    [ -s "$kdir/vmlinux.part" ] || { echo "vm lane: no xz payload in $vmlinuz" >&2; exit 1; }
    mv "$kdir/vmlinux.part" "$kdir/vmlinux"
fi
kver=$(ls "$kdir/tree/lib/modules")

# The initramfs: busybox, the lane's init, and the modules for 9p and the
# overlay, in dependency order (from each module's own `depends=`).
work=$(mktemp -d)
results=$(mktemp -d)
qemu_pid=
cleanup() {
    # TERM, which `timeout` passes on to QEMU; a KILL would end `timeout`
    # alone and leave QEMU running.
    [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null
    # The last run's logs stay for a look: target/vm/results.
    rm -rf "$cache/results" && mv "$results" "$cache/results" 2>/dev/null
    rm -rf "$work" "$results"
}
trap cleanup EXIT
# Stopped by tests/run.sh (a failed stage): clean up on the way out.
trap 'exit 143' TERM INT
ir=$work/initramfs
mkdir -p "$ir"/{bin,proc,sys,dev,host,rw,merged,modules}
cp /bin/busybox "$ir/bin/busybox"
cp tests/vm/init "$ir/init"
chmod +x "$ir/init"
loaded=" "
load() {
    local m=$1 f dep
    case $loaded in *" $m "*) return ;; esac
    f=$(find "$kdir/tree/lib/modules/$kver" -name "$m.ko" | head -n 1)
    [ -n "$f" ] || { echo "vm lane: no module $m in $pkg" >&2; exit 1; }
    for dep in $(strings "$f" | sed -n 's/^depends=//p' | tr ',' ' '); do
        load "$dep"
    done
    cp "$f" "$ir/modules/"
    echo "$m" >> "$ir/modules/order"
    loaded="$loaded$m "
}
for m in virtio_pci 9pnet_virtio 9p overlay; do
    load "$m"
done
(cd "$ir" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > "$work/initramfs.gz")

# What runs in the guest: test executables built here, with their filters.
# `--prepare` builds them and lists them, and stops there; `--prepared`
# boots with that list and runs no cargo (to boot again and again while
# changing nothing it runs).
prepared=$cache/prepared.list
if [ "${1:-}" = --prepared ]; then
    cp "$prepared" "$results/tests.list"
else
    bash bundles/wasm/build.sh
    cargo build --workspace --locked >/dev/null
    list=${AMPHI_VM_TESTS:-tests/vm/tests.list}
    # shellcheck disable=SC2046 # one word per test name
    mapfile -t exes < <(bash tests/test-exe.sh $(awk '$1 !~ /^#/ && NF { print $2 }' "$list"))
    i=0
    while read -r name test filter; do
        case $name in ''|'#'*) continue ;; esac
        echo "$name ${exes[$i]} ${filter:-}" >> "$results/tests.list"
        i=$((i + 1))
    done < "$list"
    if [ "${1:-}" = --prepare ]; then
        cp "$results/tests.list" "$prepared"
        exit 0
    fi
fi

# What systemd would do at boot that the lane needs not (udev, journald,
# tmpfiles...) costs minutes under emulation.
masks=$(sed 's/^/systemd.mask=/' tests/vm/masked-units | tr '\n' ' ')
echo "vm lane: booting $pkg under QEMU (TCG) with $(wc -l < "$results/tests.list") test runs" >&2
started=$(date +%s)
timeout "${AMPHI_VM_TIMEOUT:-1500}" qemu-system-x86_64 \
    -machine q35,accel=tcg -cpu max -m 4096 -smp 1 \
    -nographic -no-reboot -nic none \
    -kernel "$kdir/vmlinux" -initrd "$work/initramfs.gz" \
    -append "console=ttyS0 quiet panic=-1 cgroup_no_v1=all amphi.repo=$repo fstab=0 $masks systemd.unit=amphi-lane.service" \
    -fsdev local,id=root,path=/,security_model=none,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=root,mount_tag=hostroot \
    -fsdev local,id=results,path="$results",security_model=none \
    -device virtio-9p-pci,fsdev=results,mount_tag=results \
    > "$results/console.log" 2>&1 &
qemu_pid=$!
wait "$qemu_pid" || true
qemu_pid=
echo "vm lane: the guest ran for $(( $(date +%s) - started )) s" >&2
cat "$results/guest.txt" >&2 2>/dev/null || true
if [ ! -e "$results/done" ]; then
    echo "vm lane: the guest did not finish; QEMU's and the kernel's last lines:" >&2
    tail -n 60 "$results/console.log" >&2
    exit 1
fi
failed=0
while read -r name _; do
    case $name in ''|'#'*) continue ;; esac
    status=$(cat "$results/$name.status" 2>/dev/null || echo none)
    if [ "$status" != 0 ]; then
        echo "vm lane: $name failed ($status):" >&2
        tail -n 80 "$results/$name.log" >&2
        failed=1
    fi
done < "$results/tests.list"
[ -e "$results/conformance.md" ] && cp "$results/conformance.md" "$repo/target/conformance-v2.md"
grep -h "^test result" "$results"/*.log || true
exit $failed
