#!/usr/bin/env bash
# vm-run.sh CMD [ARGS...]: runs CMD as root inside a throw-away VM that boots Debian's stock
# kernel (real WireGuard, IPIP, nftables) with the host's root filesystem shared read-only under
# a RAM overlay, so host binaries run unchanged. CMD runs in the current directory; its stdout,
# stderr and exit status are this script's. Also usable as a cargo runner:
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=scripts/vm/vm-run.sh cargo test --test NAME
#
# Exit status: CMD's; 124 when the VM timed out; 125 when the VM never ran CMD (then the
# kernel log's tail is printed). Inside the VM, VM_RUN_GUEST=1 is set.
#
# Environment:
#   VM_MEM (MiB, 1024)  VM_CPUS  VM_ACCEL (kvm|tcg; auto)  VM_TIMEOUT (s, 600)
#   VM_RW_DIRS  host directories (colon-separated) mounted read-write at the same path
#   VM_ENV      names of extra variables to pass into the VM (space-separated)
#   VM_VERBOSE=1 prints the QEMU command and the kernel log; VM_TIMING=1 the boot time
#   VM_CACHE (target/vm)  VM_KERNEL_ROOT (target/vm/kernel, else /)
set -euo pipefail
source "$(dirname "$0")/common.sh"

(($#)) || vm_die "usage: vm-run.sh CMD [ARGS...]"
[[ $(id -u) == 0 ]] || vm_die "vm-run.sh must run as root (it shares / with the VM as root)"
command -v qemu-system-x86_64 >/dev/null || vm_die "qemu-system-x86_64 is missing; run scripts/vm/vm-setup.sh"

kver=$(vm_kernel_version)
kernel_image=$VM_KERNEL_ROOT/boot/vmlinuz-$kver
mkdir -p "$VM_CACHE"

# One-time per kernel, under a lock so that parallel runs share the work: the initramfs, and
# the uncompressed vmlinux. QEMU boots the vmlinux through its PVH entry point, which skips
# real mode and the xz decompressor, both slow under emulation (about 2 s per boot).
initramfs=$VM_CACHE/initramfs-$kver.cpio.gz
vmlinux=$VM_CACHE/vmlinux-$kver
stamp=$(cat "$VM_SCRIPTS"/{mkinitramfs.sh,init.sh,stage2.sh} | sha256sum | cut -c1-16)
(
    flock 9
    if [[ ! -s $initramfs || $(cat "$initramfs.stamp" 2>/dev/null) != "$stamp" ]]; then
        "$VM_SCRIPTS/mkinitramfs.sh" "$kver" "$initramfs" "$VM_KERNEL_ROOT"
        echo "$stamp" >"$initramfs.stamp"
    fi
    if [[ ! -s $vmlinux ]]; then
        # The bzImage carries vmlinux as an xz stream; try each xz magic until one decompresses.
        for offset in $(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$kernel_image" | cut -d: -f1); do
            if { tail -c +$((offset + 1)) "$kernel_image" || true; } | xz -dc --single-stream >"$vmlinux.tmp" 2>/dev/null \
                && [[ $(head -c 4 "$vmlinux.tmp" | od -An -c | tr -d ' ') == 177ELF ]]; then
                mv "$vmlinux.tmp" "$vmlinux"
                break
            fi
        done
        rm -f "$vmlinux.tmp"
        [[ -s $vmlinux ]] || vm_die "cannot extract vmlinux from $kernel_image"
    fi
) 9>"$VM_CACHE/.lock"

# KVM only when it can run a stock kernel: a usable /dev/kvm, hardware virtualisation, and not
# PVM (whose /dev/kvm only runs PVM-enabled guests; QEMU hangs or pauses on Debian's kernel).
accel=${VM_ACCEL:-}
if [[ -z $accel ]]; then
    accel=tcg
    if [[ -r /dev/kvm && -w /dev/kvm && ! -e /sys/module/kvm_pvm ]] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
        accel=kvm
    fi
fi
if [[ $accel == kvm ]]; then
    machine=(-accel kvm -cpu host,-arch-capabilities -smp "${VM_CPUS:-2}")
else
    # One vCPU: about 3x faster per exec than two under multi-threaded TCG on two host cores.
    # `max` has BMI2/ADX, which Curve25519 uses.
    machine=(-accel tcg,thread=multi -cpu max -smp "${VM_CPUS:-1}")
fi

run=$(mktemp -d "${TMPDIR:-/tmp}/vm-run.XXXXXX")
cleanup() { rm -rf "$run"; }
trap cleanup EXIT

# The command, as bash sees it in the guest (printf %q may emit $'...').
{
    echo 'set -e'
    printf 'cd %q\n' "$PWD"
    echo 'export VM_RUN_GUEST=1'
    for name in RUST_BACKTRACE RUST_LOG RUST_TEST_THREADS CI TMPDIR CARGO_TARGET_DIR KTE_KEEP_DIR ${VM_ENV:-}; do
        [[ -n ${!name+set} ]] && printf 'export %s=%q\n' "$name" "${!name}"
    done
    echo 'set +e'
    printf 'exec'
    printf ' %q' "$@"
    printf '\n'
} >"$run/cmd.sh"

shares=()
: >"$run/mounts"
if [[ $VM_KERNEL_ROOT != / ]]; then
    # The guest's modprobe looks in /lib/modules/$(uname -r), which the host does not have.
    shares+=(-fsdev "local,id=kmods,path=$VM_KERNEL_ROOT/lib/modules/$kver,security_model=none,readonly=on"
        -device virtio-9p-pci,fsdev=kmods,mount_tag=kmods)
    echo "kmods /lib/modules/$kver" >>"$run/mounts"
fi
index=0
IFS=: read -ra rw_dirs <<<"${VM_RW_DIRS:-}"
for dir in "${rw_dirs[@]}"; do
    [[ -n $dir ]] || continue
    dir=$(cd "$dir" && pwd)
    shares+=(-fsdev "local,id=rw$index,path=$dir,security_model=none"
        -device "virtio-9p-pci,fsdev=rw$index,mount_tag=rw$index")
    echo "rw$index $dir" >>"$run/mounts"
    index=$((index + 1))
done

qemu=(qemu-system-x86_64 -machine q35 "${machine[@]}" -m "${VM_MEM:-1024}"
    -nodefaults -no-user-config -display none -no-reboot -nic none
    -chardev stdio,id=out,signal=off -serial chardev:out
    -chardev "file,id=err,path=$run/stderr" -serial chardev:err
    -chardev "file,id=klog,path=$run/console.log" -serial chardev:klog
    -kernel "$vmlinux" -initrd "$initramfs"
    -append 'console=ttyS2 quiet loglevel=4 panic=-1 oops=panic mitigations=off tsc=reliable no_timer_check'
    -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap
    -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot
    -fsdev "local,id=vmrun,path=$run,security_model=none" -device virtio-9p-pci,fsdev=vmrun,mount_tag=vmrun
    "${shares[@]}")
[[ -n ${VM_VERBOSE:-} ]] && printf 'vm: %s\n' "${qemu[*]}" >&2

# The command's stderr reaches ours through a FIFO and `cat`, live. QEMU reopening
# /proc/self/fd/2 instead would get its own file offset, and when our stderr is a file that
# others write too (a CI log) their writes would overwrite what the VM wrote.
mkfifo "$run/stderr"
cat "$run/stderr" >&2 &
relay=$!
exec 3>"$run/stderr" # our write end: `cat` sees the end of the stream only once we close it

started=$(date +%s.%N)
status=0
timeout -k 5 "${VM_TIMEOUT:-600}" "${qemu[@]}" </dev/null || status=$?
exec 3>&-
wait "$relay" || true
[[ -n ${VM_TIMING:-} ]] && printf 'vm: %s, %.1f s\n' "$accel" "$(echo "$(date +%s.%N) - $started" | bc)" >&2
[[ -n ${VM_VERBOSE:-} ]] && cat "$run/console.log" >&2

if ((status == 124)); then
    printf 'vm: timed out after %s s (VM_TIMEOUT); kernel log tail:\n' "${VM_TIMEOUT:-600}" >&2
    tail -n 20 "$run/console.log" >&2 2>/dev/null || true
    exit 124
fi
if [[ ! -s $run/rc ]]; then
    printf 'vm: the VM did not run the command (qemu exit status %s); kernel log tail:\n' "$status" >&2
    tail -n 30 "$run/console.log" >&2 2>/dev/null || true
    exit 125
fi
exit "$(cat "$run/rc")"
