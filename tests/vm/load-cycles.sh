#!/bin/sh
# In-VM: N load/unload cycles of our modules; in each, a process holds a VM open
# and rmmod must be refused (the VM pins the modules), then succeed once it closed.
# Ends with a kmemleak scan (boot with kmemleak=on).
# usage: load-cycles.sh N
set -u
n=$1
[ "$(cat /tmp/kvm-modules 2>/dev/null)" = "" ] || { rmmod kvm_amd kvm_intel 2>/dev/null; rmmod kvm 2>/dev/null; rmmod irqbypass 2>/dev/null; rm -f /tmp/kvm-modules; }
km=/sys/kernel/debug/kmemleak
[ -w $km ] && echo clear > $km
i=0
while [ $i -lt "$n" ]; do
    i=$((i + 1))
    insmod /kvm-rs/ours/kvm.ko && insmod /kvm-rs/ours/kvm-amd.ko || { echo "insmod failed at $i"; exit 1; }
    # A short fuzz run leaves VMs and vCPUs open until it is told to go on.
    /kvm-rs/bin/kvm-fuzz run --seed $i --ops 50 --hold /tmp/hold-$i --log /dev/null &
    pid=$!
    t=0; while [ ! -e /tmp/hold-$i ] && [ $t -lt 600 ]; do sleep 0.1; t=$((t + 1)); done
    [ -e /tmp/hold-$i ] || { echo "fuzzer did not reach its hold at $i"; exit 1; }
    rmmod kvm_amd 2>/dev/null && { echo "rmmod kvm_amd succeeded with a VM open at $i"; exit 1; }
    rmmod kvm 2>/dev/null && { echo "rmmod kvm succeeded with a VM open at $i"; exit 1; }
    rm -f /tmp/hold-$i; wait $pid
    rmmod kvm_amd && rmmod kvm || { echo "rmmod failed after the VM closed at $i"; exit 1; }
    [ ! -e /dev/kvm ] || { echo "/dev/kvm left behind at $i"; exit 1; }
done
if [ -w $km ]; then
    sleep 6; echo scan > $km; echo scan > $km
    leaks=$(cat $km)
    [ -z "$leaks" ] || { echo "$leaks" | head -60; exit 1; }
fi
dmesg | grep -E 'WARNING:|BUG:|Call Trace' && exit 1
echo "$n load/unload cycles with VMs open in between: rmmod refused while open, no leak"
