#!/bin/sh
# In-VM: start the host's unmodified QEMU (from the read-only host root at /host) with
# -accel kvm on whatever /dev/kvm is loaded, booting the test kernel with its root file
# system on virtio-blk (guest-rootfs.sh: an init that checksums a file on the disk,
# runs a CPU-bound loop on every vCPU and powers off), with QEMU's defaults for the
# in-kernel devices (the irqchip and the PIT in the kernel).
# usage: qemu-guest.sh BZIMAGE_PATH_ON_HOST ROOTFS_IMAGE [MACHINE [SMP [IRQCHIP]]]
#        (defaults: pc 1 on; IRQCHIP is QEMU's kernel-irqchip: on, split or off)
# Prints QEMU's run time, the guest clock at userspace and the guest console's last
# lines (its panics renamed so that the harness does not take them for this VM's);
# exits 0 when QEMU exited 0 after the workload ran on every vCPU.
set -u
k=$1; img=$2; machine=${3:-pc}; smp=${4:-1}; irqchip=${5:-on}
for d in dev proc sys tmp; do grep -q " /host/$d " /proc/mounts && continue
    case $d in
    dev) mount --bind /dev /host/dev ;;
    proc) mount -t proc proc /host/proc ;;
    sys) mount -t sysfs sys /host/sys ;;
    tmp) mount -t tmpfs tmp /host/tmp ;;
    esac
done
cp "$img" /host/tmp/guest-rootfs.img
log=/tmp/qemu-guest.log
t0=$(cut -d' ' -f1 /proc/uptime)
timeout 420 chroot /host /usr/bin/qemu-system-x86_64 -accel kvm -cpu host \
    -machine "$machine,kernel-irqchip=$irqchip" -smp "$smp" -m 512M -nodefaults -no-reboot -display none \
    -serial stdio -drive file=/tmp/guest-rootfs.img,if=virtio,format=raw,readonly=on \
    -kernel "$k" -append "console=ttyS0 panic=-1 root=/dev/vda ro rootfstype=ext2 init=/init" \
    >$log 2>&1
st=$?
t1=$(cut -d' ' -f1 /proc/uptime)
# The serial console ends its lines with CR LF.
sed -i 's/\r$//' $log
echo "qemu ($machine, $smp vCPUs, kernel-irqchip=$irqchip) exit status $st after $(awk "BEGIN { print $t1 - $t0 }") s"
sed -e 's/Kernel panic/guest kernel panic/' -e 's/RIP: /guest RIP /' $log | tail -20
ok=1
grep -q 'kvmrs-guest: checksum ok' $log || { echo "no checksum ok"; ok=0; }
i=0
while [ $i -lt "$smp" ]; do
    grep -q "kvmrs-guest: loop done on cpu $i\$" $log || { echo "no loop on cpu $i"; ok=0; }
    i=$((i + 1))
done
grep -q 'kvmrs-guest: workload done' $log || { echo "workload did not finish"; ok=0; }
[ "$st" = 0 ] || ok=0
echo "guest reached userspace at $(sed -n 's/^kvmrs-guest: userspace at \([0-9.]*\) s.*/\1/p' $log) s (guest clock)"
[ $ok = 1 ]
