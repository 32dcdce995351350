#!/usr/bin/env bash
# Installs what scripts/vm/vm-run.sh needs on a fresh Debian machine (as root): QEMU, a static
# busybox for the initramfs, and Debian's stock kernel (linux-image-amd64, which has WireGuard,
# IPIP and 9p as modules). The kernel package is extracted into the cache rather than installed,
# so /boot and /lib/modules of the machine stay untouched and no initramfs hook runs.
#
#   scripts/vm/vm-setup.sh            install packages, extract the kernel into target/vm/kernel
#   scripts/vm/vm-setup.sh --check    only say whether everything is in place (exit 0 if so)
set -euo pipefail
source "$(dirname "$0")/common.sh"

packages=(qemu-system-x86 busybox-static kmod xz-utils cpio)
kernel_root=$VM_CACHE/kernel

have_everything() {
    command -v qemu-system-x86_64 >/dev/null && [[ -x /bin/busybox ]] && command -v modprobe >/dev/null \
        && command -v cpio >/dev/null && (vm_kernel_version >/dev/null 2>&1)
}

if [[ ${1:-} == --check ]]; then
    have_everything && { echo "vm: ready (kernel $(vm_kernel_version) under $VM_KERNEL_ROOT)"; exit 0; }
    echo "vm: not set up; run scripts/vm/vm-setup.sh as root" >&2
    exit 1
fi

[[ $(id -u) == 0 ]] || vm_die "vm-setup.sh must run as root (it installs packages)"
export DEBIAN_FRONTEND=noninteractive
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if ((${#missing[@]})); then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! compgen -G "$kernel_root/boot/vmlinuz-*" >/dev/null; then
    # linux-image-amd64 is a metapackage; the image is its versioned dependency.
    image=$(apt-cache depends linux-image-amd64 | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
    [[ -n $image ]] || { apt-get update -qq; image=$(apt-cache depends linux-image-amd64 | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'); }
    [[ -n $image ]] || vm_die "cannot find the package behind linux-image-amd64"
    download=$(mktemp -d)
    trap 'rm -rf "$download"' EXIT
    (cd "$download" && apt-get download -qq -o APT::Sandbox::User=root "$image")
    rm -rf "$kernel_root.tmp" && mkdir -p "$kernel_root.tmp"
    dpkg-deb -x "$download"/*.deb "$kernel_root.tmp"
    version=${image#linux-image-}
    depmod -b "$kernel_root.tmp" "$version"
    rm -rf "$kernel_root" && mv "$kernel_root.tmp" "$kernel_root"
fi
VM_KERNEL_ROOT=$kernel_root
echo "vm: ready (kernel $(vm_kernel_version) under $kernel_root)"
