#!/bin/sh
# Inside the lane's VM (systemd as PID 1, pure cgroup v2): run the tests
# RESULTS/tests.list names, one a line ("NAME EXECUTABLE [ARGS...]"), each
# one's output to RESULTS/NAME.log and exit status to RESULTS/NAME.status.
set -u
repo=$1
results=$2
cd "$repo" || exit 1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root RUST_BACKTRACE=1
# The guests the host built: no cargo under emulation.
export AMPHI_GUESTS="$repo/bundles/out/wasm"
# Tests put their containers' cgroups below their own: they run in the root
# cgroup, which may hold processes and give its children every controller.
echo $$ > /sys/fs/cgroup/cgroup.procs
for c in cpuset cpu io memory hugetlb pids; do
    echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
done
# A fresh /tmp for the tests; a repository below /tmp (a clone in a temp
# dir) stays reachable at its own path, where the test list names it.
case $repo in
/tmp/*)
    # Private, so that the tmpfs below is not propagated into the copy.
    mkdir -p /run/host-repo
    mount --rbind "$repo" /run/host-repo
    mount --make-rprivate /run/host-repo
    mount -t tmpfs -o mode=1777 tmpfs /tmp
    mkdir -p "$repo"
    mount --rbind /run/host-repo "$repo"
    cd "$repo" || exit 1
    ;;
*)
    mount -t tmpfs -o mode=1777 tmpfs /tmp
    ;;
esac
# CRIU probes the kernel's features with modules (nftables, tun, veth):
# the lane kernel's own, from its package, indexed by depmod in an
# overlay (writes stay in the guest).
kmods=$(ls -d "$repo"/target/vm/linux-image-*/tree/lib/modules/"$(uname -r)" 2>/dev/null | head -n 1)
if [ -n "$kmods" ]; then
    mkdir -p /run/kmods/upper /run/kmods/work "/lib/modules/$(uname -r)"
    mount -t overlay overlay \
        -o "lowerdir=$kmods,upperdir=/run/kmods/upper,workdir=/run/kmods/work" \
        "/lib/modules/$(uname -r)" && depmod
fi
{
    echo "kernel: $(uname -r)"
    echo "cgroup: $(stat -fc %T /sys/fs/cgroup), controllers: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
    echo "pid 1: $(cat /proc/1/comm), up $(cut -d' ' -f1 /proc/uptime) s"
    # CRIU (for checkpoint/restore of native containers) needs this
    # kernel's features; the host's newer kernel breaks Debian's CRIU.
    echo "criu check: $(criu check 2>&1 | tail -n 1)"
    criu check -v4 -o "$results/criu.log" >/dev/null 2>&1
} > "$results/guest.txt"
while read -r name exe args; do
    [ -n "$name" ] || continue
    start=$(cut -d' ' -f1 /proc/uptime)
    # shellcheck disable=SC2086 # ARGS are words
    "$exe" $args > "$results/$name.log" 2>&1
    echo $? > "$results/$name.status"
    end=$(cut -d' ' -f1 /proc/uptime)
    echo "$name: $(cat "$results/$name.status") in $(echo "$end - $start" | bc 2>/dev/null || echo "$start..$end") s" >> "$results/guest.txt"
done < "$results/tests.list"
cp "$repo/target/conformance.md" "$results/conformance.md" 2>/dev/null
echo done > "$results/done"
