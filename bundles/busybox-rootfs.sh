#!/usr/bin/env bash
# Make a minimal root filesystem from Debian's busybox-static:
#   bundles/busybox-rootfs.sh DIR
# DIR/bin holds busybox and one symlink per applet; the usual mount points
# exist so that a read-only rootfs can still be mounted on.
set -euo pipefail
dir=${1:?usage: busybox-rootfs.sh DIR}
busybox=${BUSYBOX:-/bin/busybox}
# A dynamic busybox would need the host's libc inside the rootfs.
if ! "$busybox" --list >/dev/null 2>&1 || ldd "$busybox" >/dev/null 2>&1; then
    echo "busybox-rootfs.sh: $busybox is not a static busybox; install Debian's busybox-static" >&2
    exit 1
fi
mkdir -p "$dir"/{bin,dev,proc,sys,tmp,etc,root,run,var}
cp "$busybox" "$dir/bin/busybox"
# One link per applet, made by busybox itself in one process (a process per
# link costs seconds under emulation). In the chroot it cannot read
# /proc/self/exe, so the links point at its argv[0], /bin/busybox.
if [ "$(id -u)" = 0 ]; then
    chroot "$dir" /bin/busybox --install -s /bin
else
    for applet in $("$busybox" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$dir/bin/$applet"
    done
fi
ln -sfn bin "$dir/sbin"
mkdir -p "$dir/usr"
ln -sfn ../bin "$dir/usr/bin"
ln -sfn ../bin "$dir/usr/sbin"
chmod 1777 "$dir/tmp"
echo "root:x:0:0:root:/root:/bin/sh" > "$dir/etc/passwd"
echo "root:x:0:" > "$dir/etc/group"
