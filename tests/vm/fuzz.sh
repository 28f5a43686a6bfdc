#!/bin/sh
# In-VM driver of kvm-fuzz (make fuzz, and make check's short campaign).
#   fuzz.sh diff-run MODULES FIRST_SEED SEEDS OPS   one log per seed in /tmp/fuzz/MODULES
#   fuzz.sh diff FIRST_SEED SEEDS KNOWN             in-tree vs ours, every seed
#   fuzz.sh campaign FIRST_SEED SEEDS OPS THREADS   ours, a child per seed; fails on
#                                                   any kernel report
# Every step fails if the kernel logged a WARNING, BUG, lockdep splat, ... (kvm-fuzz
# reads /dev/kmsg) or the fuzzer crashed.
set -u
bin=/kvm-rs/bin/kvm-fuzz
what=$1; shift
case $what in
diff-run)
    mods=$1; first=$2; n=$3; ops=$4
    mkdir -p /tmp/fuzz/$mods
    s=$first; bad=0
    while [ $s -lt $((first + n)) ]; do
        $bin campaign --seed $s --seeds 1 --ops $ops --logdir /tmp/fuzz/$mods-run || bad=1
        mv /tmp/fuzz/$mods-run/seed-$s.log /tmp/fuzz/$mods/seed-$s.log 2>/dev/null
        s=$((s + 1))
    done
    exit $bad ;;
diff)
    first=$1; n=$2; known=$3
    s=$first; bad=0
    while [ $s -lt $((first + n)) ]; do
        echo "== seed $s"
        $bin diff /tmp/fuzz/intree/seed-$s.log /tmp/fuzz/ours/seed-$s.log --known $known || bad=1
        s=$((s + 1))
    done
    exit $bad ;;
campaign)
    first=$1; n=$2; ops=$3; threads=$4
    exec $bin campaign --seed $first --seeds $n --ops $ops --threads $threads --logdir /tmp/fuzz/campaign ;;
*) echo "usage: fuzz.sh diff-run|diff|campaign ..." >&2; exit 2 ;;
esac
