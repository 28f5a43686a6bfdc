#!/bin/sh
# In-VM: QEMU's gdbstub on whatever /dev/kvm is loaded (KVM_SET_GUEST_DEBUG). The
# host's gdb attaches to a guest started with -s -S, stops at start_kernel with a
# hardware breakpoint (under QEMU TCG a guest INT3 never reaches the #BP intercept, so
# software breakpoints are not tried here), single-steps one instruction, and
# continues; the guest boots to userspace and powers off, and QEMU exits 0.
# usage: qemu-gdb.sh BZIMAGE_PATH_ON_HOST ROOTFS_IMAGE START_KERNEL_ADDRESS
set -u
k=$1; img=$2; addr=$3
. "$(dirname "$0")/nested.sh"
host_root
ip link set lo up
cp "$img" /host/tmp/guest-rootfs.img
log=/tmp/qemu-gdb.log
timeout -k 10 400 chroot /host /usr/bin/qemu-system-x86_64 -accel kvm -cpu host \
    -machine pc -smp 1 -m 512M -nodefaults -no-reboot -display none -serial stdio \
    -drive file=/tmp/guest-rootfs.img,if=virtio,format=raw,readonly=on -s -S \
    -kernel "$k" -append "console=ttyS0 panic=-1 root=/dev/vda ro rootfstype=ext2 init=/init" \
    >$log 2>&1 &
qemu=$!
sleep 2
timeout -k 10 400 chroot /host /usr/bin/gdb -nx -batch \
    -ex 'set architecture i386:x86-64' -ex 'target remote 127.0.0.1:1234' \
    -ex "hbreak *$addr" -ex continue -ex 'info registers rip' \
    -ex stepi -ex 'info registers rip' -ex delete -ex continue >/tmp/gdb.log 2>&1
wait $qemu
st=$?
sed -i 's/\r$//' $log
echo "qemu exit status $st"
echo "--- gdb"; cat /tmp/gdb.log
echo "--- guest"; grep kvmrs-guest $log
ok=1
rips=$(sed -n 's/^rip *\(0x[0-9a-f]*\).*/\1/p' /tmp/gdb.log)
first=$(echo "$rips" | sed -n 1p); second=$(echo "$rips" | sed -n 2p)
[ "$first" = "$addr" ] || { echo "not stopped at start_kernel ($addr): rip '$first'"; ok=0; }
[ -n "$second" ] && [ "$second" != "$first" ] || { echo "stepi did not move: '$second'"; ok=0; }
grep -q 'kvmrs-guest: workload done' $log || { echo "the guest did not finish after continue"; ok=0; }
[ "$st" = 0 ] || ok=0
[ $ok = 1 ]
