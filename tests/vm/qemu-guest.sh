#!/bin/sh
# In-VM: start the host's unmodified QEMU (from the read-only host root at /host) with
# -accel kvm on whatever /dev/kvm is loaded, booting the test kernel as the guest to
# its "no init" panic. No PIT (pit=off): neither module set's PIT is needed for that,
# and kvm-rs has none yet. Prints QEMU's run time and the guest clock at init.
# usage: qemu-guest.sh BZIMAGE_PATH_ON_HOST [MACHINE [SMP]]   (default: pc 1)
# Prints the guest console's last lines (its panic renamed so that the harness does
# not take it for this VM's) and exits 0 when the guest kernel reached its init.
set -u
k=$1; machine=${2:-pc}; smp=${3:-1}
for d in dev proc sys tmp; do grep -q " /host/$d " /proc/mounts && continue
    case $d in
    dev) mount --bind /dev /host/dev ;;
    proc) mount -t proc proc /host/proc ;;
    sys) mount -t sysfs sys /host/sys ;;
    tmp) mount -t tmpfs tmp /host/tmp ;;
    esac
done
log=/tmp/qemu-guest.log
t0=$(cut -d' ' -f1 /proc/uptime)
timeout 240 chroot /host /usr/bin/qemu-system-x86_64 -accel kvm -cpu host \
    -machine "$machine",pit=off -smp "$smp" -m 128 -nodefaults -no-reboot -display none -serial stdio \
    -kernel "$k" -append "console=ttyS0 panic=-1 rdinit=/nonexistent" >$log 2>&1
st=$?
t1=$(cut -d' ' -f1 /proc/uptime)
echo "qemu exit status $st after $(awk "BEGIN { print $t1 - $t0 }") s"
sed 's/Kernel panic/guest kernel panic/' $log | tail -20
grep -q 'Run /sbin/init as init process' $log || exit 1
# The guest's own clock at its first init attempt: boot to userspace, in guest time.
echo "guest reached init at $(sed -n 's/^\[ *\([0-9.]*\)\] Run \/sbin\/init as init process.*/\1/p' $log) s (guest clock)"
