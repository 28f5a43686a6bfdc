#!/bin/sh
# In-VM: QEMU live migration on whatever /dev/kvm is loaded. A guest (as qemu-guest.sh's,
# with kvmrs.ticks=N: it prints the guest clock once a second before its workload)
# migrates over a unix socket to a second QEMU started with -incoming, while it ticks;
# the source then quits. The destination must carry on: later ticks, the guest clock
# never jumping by more than 20 s, the checksum and loops on every vCPU, poweroff,
# and QEMU exiting 0. That takes every piece of vCPU and VM state through KVM's GET
# and SET ioctls, and guest memory through the dirty log.
# usage: qemu-migrate.sh BZIMAGE_PATH_ON_HOST ROOTFS_IMAGE [MACHINE [SMP]]
set -u
k=$1; img=$2; machine=${3:-pc}; smp=${4:-2}
. "$(dirname "$0")/nested.sh"
host_root
cp "$img" /host/tmp/guest-rootfs.img
cp "$(dirname "$0")/hmp.py" /host/tmp/hmp.py
hmp() { timeout -k 5 30 chroot /host /usr/bin/python3 /tmp/hmp.py "$@" | sed 's/\x1b\[[0-9]*[A-Z]//g'; }
qemu() {
    chroot /host /usr/bin/qemu-system-x86_64 -accel kvm -cpu host -machine "$machine" \
        -smp "$smp" -m 512M -nodefaults -no-reboot -display none -serial stdio \
        -drive file=/tmp/guest-rootfs.img,if=virtio,format=raw,readonly=on \
        -kernel "$k" \
        -append "console=ttyS0 panic=-1 root=/dev/vda ro rootfstype=ext2 init=/init kvmrs.ticks=20" "$@"
}
attempt() {
    rm -f /host/tmp/mig.sock
    qemu -monitor unix:/tmp/src.sock,server,nowait >/tmp/src.log 2>&1 &
    src=$!
    qemu -monitor unix:/tmp/dst.sock,server,nowait -incoming unix:/tmp/mig.sock >/tmp/dst.log 2>&1 &
    dst=$!
    n=0
    until grep -q 'kvmrs-guest: tick 5 ' /tmp/src.log || ! kill -0 $src 2>/dev/null || [ $n -ge 200 ]; do
        sleep 1; n=$((n + 1))
    done
    grep -q 'kvmrs-guest: tick 5 ' /tmp/src.log || { kill -9 $src $dst; wait; return 1; }
    echo "source at tick 5 after $n s; migrating"
    hmp /tmp/src.sock "migrate -d unix:/tmp/mig.sock" >/dev/null
    n=0
    until hmp /tmp/src.sock "info migrate" | grep -q 'completed\|failed' || [ $n -ge 200 ]; do
        sleep 1; n=$((n + 1))
    done
    hmp /tmp/src.sock "info migrate" | grep -iE 'status|total time|downtime|transferred ram'
    hmp /tmp/src.sock quit >/dev/null
    n=0
    while kill -0 $dst 2>/dev/null && [ $n -lt 300 ]; do sleep 1; n=$((n + 1)); done
    kill -9 $src $dst 2>/dev/null
    wait $dst
    st=$?
    wait $src
}
# A source guest that dies before it ticks gets one more try, as in qemu-guest.sh.
if ! attempt; then
    sed -i 's/\r$//' /tmp/src.log
    echo "the source guest died before its ticks (first try), its last lines:"
    guest_lines /tmp/src.log | tail -30
    echo "retrying once"
    attempt
fi
sed -i 's/\r$//' /tmp/src.log /tmp/dst.log
echo "--- source"; grep 'kvmrs-guest' /tmp/src.log | tail -3
echo "--- destination (exit status $st)"; grep 'kvmrs-guest' /tmp/dst.log | sed -n '1,3p;$p'
ok=1
last_src=$(sed -n 's/^kvmrs-guest: tick \([0-9]*\) .*/\1/p' /tmp/src.log | tail -1)
first_dst=$(sed -n 's/^kvmrs-guest: tick \([0-9]*\) .*/\1/p' /tmp/dst.log | head -1)
[ -n "$first_dst" ] && [ "$first_dst" -gt "${last_src:-0}" ] ||
    { echo "no ticks after the migration (source's last ${last_src:-none}, destination's first ${first_dst:-none})"; ok=0; }
jump=$(cat /tmp/src.log /tmp/dst.log | sed -n 's/^kvmrs-guest: tick [0-9]* at \([0-9.]*\)$/\1/p' |
    awk 'NR > 1 && ($1 - p > m || $1 < p) { m = ($1 < p) ? 999 : $1 - p } { p = $1 } END { print m + 0 }')
echo "largest step of the guest clock between ticks: $jump s"
awk "BEGIN { exit !($jump < 20) }" || { echo "the guest clock jumped"; ok=0; }
grep -q 'kvmrs-guest: checksum ok' /tmp/dst.log || { echo "no checksum ok after the migration"; ok=0; }
i=0
while [ $i -lt "$smp" ]; do
    grep -q "kvmrs-guest: loop done on cpu $i\$" /tmp/dst.log || { echo "no loop on cpu $i"; ok=0; }
    i=$((i + 1))
done
grep -q 'kvmrs-guest: workload done' /tmp/dst.log || { echo "workload did not finish"; ok=0; }
[ "$st" = 0 ] || ok=0
[ $ok = 1 ] || { echo "--- destination's last lines"; guest_lines /tmp/dst.log | tail -15; }
[ $ok = 1 ]
