#!/bin/sh
# In-VM, for make bench: N boots of unmodified QEMU (q35, one vCPU) on whatever
# /dev/kvm is loaded, through qemu-guest.sh, each reported as bench lines (ns):
#   qemu-boot-to-userspace  the guest's clock when its init ran
#   qemu-run-total          QEMU's start to its exit (boot, workload, power-off)
# usage: bench-boot.sh N BZIMAGE_PATH_ON_HOST ROOTFS_IMAGE
set -u
n=$1; k=$2; img=$3
i=0
while [ $i -lt "$n" ]; do
    out=$(sh "$(dirname "$0")/qemu-guest.sh" "$k" "$img" q35 1)
    st=$?
    if [ $st != 0 ]; then
        echo "$out" | tail -30
        echo "not ok - bench qemu boot $i: qemu-guest.sh exit status $st"
        exit 1
    fi
    total=$(echo "$out" | sed -n 's/^qemu .* after \([0-9.]*\) s$/\1/p')
    user=$(echo "$out" | sed -n 's/^guest reached userspace at \([0-9.]*\) s.*/\1/p')
    awk -v i=$i -v t="$total" -v u="$user" 'BEGIN {
        printf "bench qemu-boot-to-userspace %d %.0f 1\n", i, u * 1e9
        printf "bench qemu-run-total %d %.0f 1\n", i, t * 1e9 }'
    i=$((i + 1))
done
