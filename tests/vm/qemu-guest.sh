#!/bin/sh
# In-VM: start the host's unmodified QEMU (from the read-only host root at /host) with
# -accel kvm on whatever /dev/kvm is loaded, booting the test kernel as the guest.
# usage: qemu-guest.sh BZIMAGE_PATH_ON_HOST
set -u
k=$1
for d in dev proc sys tmp; do grep -q " /host/$d " /proc/mounts && continue
    case $d in
    dev) mount --bind /dev /host/dev ;;
    proc) mount -t proc proc /host/proc ;;
    sys) mount -t sysfs sys /host/sys ;;
    tmp) mount -t tmpfs tmp /host/tmp ;;
    esac
done
timeout 240 chroot /host /usr/bin/qemu-system-x86_64 -accel kvm -cpu host -smp 1 -m 128 \
    -nodefaults -no-reboot -display none -serial stdio \
    -kernel "$k" -append "console=ttyS0 panic=-1 rdinit=/nonexistent" 2>&1 | tail -20
