#!/bin/sh
# Host side: builds the nested guest's root file system for qemu-guest.sh, an ext2
# image (on virtio-blk in the guest, so ioeventfd and irqfd carry its I/O) holding
# static busybox, an init that runs the workload and powers off, and a file of random
# data with its checksum computed here.
# usage: guest-rootfs.sh OUT_IMAGE
set -eu
img=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/bin" "$dir/dev" "$dir/proc" "$dir/sys" "$dir/data"
cp /bin/busybox "$dir/bin/busybox"
# The applets as links here: the guest mounts its root read-only.
for a in $(/bin/busybox --list); do
    [ -e "$dir/bin/$a" ] || ln -s busybox "$dir/bin/$a"
done
head -c 4194304 /dev/urandom > "$dir/data/blob"
md5sum < "$dir/data/blob" | cut -d' ' -f1 > "$dir/data/blob.md5"
cat > "$dir/init" <<'EOF'
#!/bin/busybox sh
# The nested guest's init: report boot-to-userspace time, read the disk, load every
# vCPU, power off (QEMU then exits 0).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
n=$(grep -c ^processor /proc/cpuinfo)
echo "kvmrs-guest: userspace at $(cut -d' ' -f1 /proc/uptime) s (guest clock), $n cpus"
# The paravirtual clock (KVM_CPUID_FEATURES): Linux prefers kvm-clock where offered.
echo "kvmrs-guest: clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
# kvmrs.ticks=N (the migration test): N seconds of ticks with the guest clock first.
ticks=$(sed -n 's/.*kvmrs\.ticks=\([0-9]*\).*/\1/p' /proc/cmdline)
t=0
while [ $t -lt "${ticks:-0}" ]; do
    t=$((t + 1))
    echo "kvmrs-guest: tick $t at $(cut -d' ' -f1 /proc/uptime)"
    sleep 1
done
sum=$(md5sum /data/blob | cut -d' ' -f1)
if [ "$sum" = "$(cat /data/blob.md5)" ]; then
    echo "kvmrs-guest: checksum ok"
else
    echo "kvmrs-guest: checksum wrong: $sum"
fi
i=0
while [ $i -lt "$n" ]; do
    taskset -c $i sh -c 'j=0; while [ $j -lt 20000 ]; do j=$((j + 1)); done
        echo "kvmrs-guest: loop done on cpu $(cut -d" " -f39 /proc/self/stat)"' &
    i=$((i + 1))
done
wait
# Steal time (MSR_KVM_STEAL_TIME), in USER_HZ ticks: informational.
echo "kvmrs-guest: steal $(awk '/^cpu / { print $9 }' /proc/stat) ticks"
echo "kvmrs-guest: workload done at $(cut -d' ' -f1 /proc/uptime) s"
poweroff -f
EOF
chmod +x "$dir/init"
rm -f "$img"
mke2fs -q -t ext2 -L kvmrs-guest -d "$dir" "$img" 16M
