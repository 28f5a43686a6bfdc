#!/bin/sh
# In-VM: load and unload our modules N times, creating VMs each time, and fail if
# kmemleak finds anything new or a module count/device node is left behind.
# usage: leak-loop.sh VENDOR_KO N
set -u
vendor_ko=$1; n=$2
vendor=$(basename "$vendor_ko" .ko | tr - _)
km=/sys/kernel/debug/kmemleak
[ -w $km ] || { echo "kmemleak not available (boot with kmemleak=on)"; exit 1; }
echo clear > $km
i=0
while [ $i -lt "$n" ]; do
    i=$((i + 1))
    insmod /kvm-rs/ours/kvm.ko || { echo "insmod kvm.ko failed at $i"; exit 1; }
    insmod "$vendor_ko" || { echo "insmod $vendor_ko failed at $i"; exit 1; }
    /kvm-rs/bin/kvm-smoke --ours >/tmp/smoke.out || { cat /tmp/smoke.out; exit 1; }
    # Guests too: vCPUs, the LAPIC timer, stats fds and the emulator allocate.
    /kvm-rs/bin/kvm-guests >/tmp/guests.out || { cat /tmp/guests.out; exit 1; }
    rmmod "$vendor" && rmmod kvm || { echo "rmmod failed at $i"; exit 1; }
    [ ! -e /dev/kvm ] || { echo "/dev/kvm left behind at $i"; exit 1; }
done
# kmemleak reports objects unreferenced for at least 5 s, found by two scans.
sleep 6
echo scan > $km; echo scan > $km
leaks=$(cat $km)
if [ -n "$leaks" ]; then echo "$leaks" | head -60; exit 1; fi
echo "$n load/unload cycles, no leak reported"
