#!/bin/sh
# In-VM: run a command with one module set loaded (ours or intree), loading it (and
# unloading the other) first if needed, so that each test line stands alone even in a
# VM restarted after a crash or timeout.
# usage: with-modules.sh ours|intree VENDOR COMMAND...
set -u
want=$1; vendor=$2; shift 2
have=$(cat /tmp/kvm-modules 2>/dev/null)
if [ "$have" != "$want" ]; then
    if [ -n "$have" ]; then
        rmmod kvm_amd kvm_intel 2>/dev/null; rmmod kvm 2>/dev/null; rmmod irqbypass 2>/dev/null
    fi
    rm -f /tmp/kvm-modules
    dir=/kvm-rs/$want
    [ -e $dir/irqbypass.ko ] && { insmod $dir/irqbypass.ko || exit 1; }
    insmod $dir/kvm.ko || { echo "insmod $dir/kvm.ko failed"; exit 1; }
    insmod $dir/$vendor.ko || { echo "insmod $dir/$vendor.ko failed"; exit 1; }
    echo "$want" > /tmp/kvm-modules
fi
exec "$@"
