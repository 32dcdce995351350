#!/usr/bin/env bash
# mkinitramfs.sh KVER OUT [KROOT]: a tiny initramfs for vm-run.sh. A static busybox, the modules
# needed to mount the host's root over virtio-9p with a RAM overlay (decompressed, in load
# order), and the two boot stages. Everything else (WireGuard, IPIP, nftables) is loaded on
# demand from the shared module tree by the guest's modprobe.
set -euo pipefail
kver=$1 out=$2 kroot=${3:-/}
here=$(cd "$(dirname "$0")" && pwd)

ldd /bin/busybox >/dev/null 2>&1 && { echo "mkinitramfs: /bin/busybox is not static (install busybox-static)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{bin,dev,proc,sys,modules}
cp /bin/busybox "$work/bin/busybox"
mknod -m 600 "$work/dev/console" c 5 1

# `--show-depends` lists dependencies first; built-in modules print as "builtin NAME".
: >"$work/modules.order"
modprobe -a -d "$kroot" -S "$kver" --show-depends virtio_pci 9pnet_virtio 9p overlay \
    | awk '$1 == "insmod" { print $2 }' | awk '!seen[$0]++' | while read -r module; do
    name=$(basename "$module")
    case $name in
        *.ko.xz) name=${name%.xz}; xz -dc "$module" >"$work/modules/$name" ;;
        *.ko.zst) name=${name%.zst}; zstd -qdc "$module" >"$work/modules/$name" ;;
        *) cp "$module" "$work/modules/$name" ;;
    esac
    echo "$name" >>"$work/modules.order"
done
install -m 755 "$here/init.sh" "$work/init"
install -m 755 "$here/stage2.sh" "$work/stage2.sh"
(cd "$work" && find . | cpio -o -H newc --quiet | gzip -1) >"$out.tmp.$$"
mv "$out.tmp.$$" "$out"
