#!/usr/bin/env bash
# Build an OCI image-layout tarball locally (no registry needed), for
# `ctr images import`:
#   bundles/oci-image.sh busybox OUT.tar   # busybox rootfs, entrypoint sh
#   bundles/oci-image.sh wasm OUT.tar      # one layer holding /hello.wasm
#                                          # (and /idle.wasm), a "compat" wasm image
#   bundles/oci-image.sh pause OUT.tar     # a pod's sandbox: /pause (bundles/pause.c)
#   bundles/oci-image.sh wasm-pod OUT.tar  # busybox and the guests (/app/*.wasm,
#                                          # modules and components), entrypoint
#                                          # /app/idle.wasm: a wasm pod container
#                                          # a shell can be exec'd into
# The image is named docker.io/amphi/KIND:test.
set -euo pipefail
kind=${1:?usage: oci-image.sh busybox|wasm OUT.tar}
out=${2:?usage: oci-image.sh busybox|wasm OUT.tar}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

case $(uname -m) in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    *) arch=$(uname -m) ;;
esac

mkdir -p "$work/rootfs" "$work/layout/blobs/sha256"
# The wasm guests: built here, or given already built (the VM lane has no
# cargo: AMPHI_GUESTS names the host's build).
guests() {
    if [ -n "${AMPHI_GUESTS:-}" ]; then
        echo "$AMPHI_GUESTS"
    else
        bash "$here/wasm/build.sh" >&2
        echo "$here/out/wasm"
    fi
}
case $kind in
    busybox)
        bash "$here/busybox-rootfs.sh" "$work/rootfs"
        entrypoint='["/bin/sh"]'
        labels='{}'
        annotations='{}'
        ;;
    wasm)
        g=$(guests)
        cp "$g/hello.wasm" "$g/idle.wasm" "$work/rootfs/"
        entrypoint='["/hello.wasm"]'
        labels='{"module.wasm.image/variant":"compat"}'
        annotations='{"module.wasm.image/variant":"compat"}'
        ;;
    pause)
        cc -static -Os -o "$work/rootfs/pause" "$here/pause.c"
        entrypoint='["/pause"]'
        labels='{}'
        annotations='{}'
        ;;
    wasm-pod)
        bash "$here/busybox-rootfs.sh" "$work/rootfs"
        g=$(guests)
        mkdir -p "$work/rootfs/app"
        cp "$g"/*.wasm "$work/rootfs/app/"
        entrypoint='["/app/idle.wasm"]'
        labels='{}'
        annotations='{}'
        ;;
    *) echo "oci-image.sh: unknown kind $kind (busybox, wasm, pause or wasm-pod)" >&2; exit 1 ;;
esac

blob() { # file -> prints digest, moves it into the layout
    local d
    d=$(sha256sum "$1" | cut -d' ' -f1)
    mv "$1" "$work/layout/blobs/sha256/$d"
    echo "$d"
}
size() { stat -c %s "$work/layout/blobs/sha256/$1"; }

tar -C "$work/rootfs" --numeric-owner -cf "$work/layer.tar" .
layer=$(blob "$work/layer.tar")

printf '{"architecture":"%s","os":"linux","config":{"Entrypoint":%s,"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Labels":%s},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$arch" "$entrypoint" "$labels" "$layer" > "$work/config.json"
config=$(blob "$work/config.json")

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}],"annotations":%s}' \
    "$config" "$(size "$config")" "$layer" "$(size "$layer")" "$annotations" > "$work/manifest.json"
manifest=$(blob "$work/manifest.json")

printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"docker.io/amphi/%s:test","org.opencontainers.image.ref.name":"test"}}]}' \
    "$manifest" "$(size "$manifest")" "$arch" "$kind" > "$work/layout/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/layout/oci-layout"
tar -C "$work/layout" -cf "$out" .
