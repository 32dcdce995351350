# Stage 2, PID 1 after switch_root: run the command with stdout on ttyS0 and stderr on ttyS1
# (the kernel log has ttyS2), record its exit status, power off. Only builtins and the busybox
# copy on tmpfs are used here: the 9p root may be gone while the machine powers off.
B=/run/vm/busybox
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
$B hostname vm
$B ip link set lo up
# Raw ttys: no \n -> \r\n, no echo.
$B stty -F /dev/ttyS0 raw -echo -onlcr
$B stty -F /dev/ttyS1 raw -echo -onlcr
/bin/bash /run/vmrun/cmd.sh </dev/null >/dev/ttyS0 2>/dev/ttyS1
echo $? >/run/vmrun/rc
$B sync
echo o >/proc/sysrq-trigger
while :; do $B sleep 1; done
