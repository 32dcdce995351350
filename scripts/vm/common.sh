# Shared by the VM scripts: where things live. Sourced, not run.
# shellcheck shell=bash

VM_SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VM_REPO=$(cd "$VM_SCRIPTS/../.." && pwd)
# Everything the scripts build or download lives here, so `cargo clean` removes it.
target_dir=${CARGO_TARGET_DIR:-$VM_REPO/target}
case $target_dir in /*) ;; *) target_dir=$VM_REPO/$target_dir ;; esac
VM_CACHE=${VM_CACHE:-$target_dir/vm}
# The root under which boot/vmlinuz-* and lib/modules/* are found: the extracted Debian kernel
# package (vm-setup.sh), else the host's own /boot.
if [[ -z ${VM_KERNEL_ROOT:-} ]]; then
    if [[ -d $VM_CACHE/kernel/boot ]]; then VM_KERNEL_ROOT=$VM_CACHE/kernel; else VM_KERNEL_ROOT=/; fi
fi

vm_die() { printf 'vm: %s\n' "$*" >&2; exit 125; }

# The newest kernel under VM_KERNEL_ROOT whose modules include 9p (to mount the host root) and
# WireGuard (what the tests are for); prints its version.
vm_kernel_version() {
    local image version modules best=
    for image in "$VM_KERNEL_ROOT"/boot/vmlinuz-*; do
        [[ -e $image ]] || continue
        version=${image##*/vmlinuz-}
        modules=$VM_KERNEL_ROOT/lib/modules/$version
        compgen -G "$modules/kernel/fs/9p/9p.ko*" >/dev/null || continue
        compgen -G "$modules/kernel/drivers/net/wireguard/wireguard.ko*" >/dev/null || continue
        best=$version
    done
    [[ -n $best ]] || vm_die "no kernel with 9p and wireguard modules under $VM_KERNEL_ROOT/boot; run scripts/vm/vm-setup.sh"
    printf '%s\n' "$best"
}
