#!/bin/busybox sh
# Stage 1, PID 1 of the initramfs (busybox only): mount the host root read-only over 9p with a
# tmpfs overlay, the run directory of vm-run.sh, the extra shares it lists, then switch_root.
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
fail() { echo "vm init: $*" >/dev/ttyS1; echo o >/proc/sysrq-trigger; sleep 30; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in $(cat /modules.order); do insmod "/modules/$module" 2>/dev/null; done

P9="trans=virtio,version=9p2000.L,msize=512000"
R=/newroot
mkdir -p /lower /rw $R
mount -t 9p -o "$P9,ro,cache=loose" hostroot /lower || fail "cannot mount the host root over 9p"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay $R || fail "cannot mount the overlay"
mount -t tmpfs -o mode=0755 tmpfs $R/run
mkdir -p $R/run/vmrun $R/run/netns $R/run/lock
mount -t 9p -o "$P9,cache=none" vmrun $R/run/vmrun || fail "cannot mount the run directory"
# Extra shares: one "TAG PATH" per line (the kernel's module tree, read-write directories).
if [ -f $R/run/vmrun/mounts ]; then
    while read -r tag path; do
        mkdir -p "$R$path" && mount -t 9p -o "$P9,cache=none" "$tag" "$R$path" || fail "cannot mount $tag at $path"
    done <$R/run/vmrun/mounts
fi
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount --move /dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
# devtmpfs has no /dev/fd: bash's <(...) needs it.
ln -sf /proc/self/fd $R/dev/fd
ln -sf /proc/self/fd/0 $R/dev/stdin
ln -sf /proc/self/fd/1 $R/dev/stdout
ln -sf /proc/self/fd/2 $R/dev/stderr
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
mount -t bpf bpf $R/sys/fs/bpf 2>/dev/null
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
# Stage 2 must not run anything from the 9p root once the machine powers off, so it gets its
# own busybox on tmpfs (under its own name: a renamed busybox finds no applet).
mkdir -p $R/run/vm
cp /bin/busybox $R/run/vm/busybox
cp /stage2.sh $R/run/vm/stage2.sh
umount /proc /sys
exec switch_root $R /run/vm/busybox sh /run/vm/stage2.sh
