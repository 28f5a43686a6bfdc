#!/bin/sh
# In-VM, for `BENCH_PERF=NAME scripts/bench.sh`: one micro-benchmark under perf
# (the host's, run in the read-only host root), profiled with the cpu-clock
# software event since TCG has no PMU; prints the hottest kernel symbols and who
# takes the locks (lockdep makes every lock dear in the test kernel).
# usage: bench-perf.sh intree|ours BENCHMARK
set -u
. "$(dirname "$0")/nested.sh"
host_root
sh "$(dirname "$0")/with-modules.sh" "$1" kvm-amd true || exit 1
cp /kvm-rs/bin/kvm-guests /host/tmp/
perf="chroot /host /usr/bin/perf"
$perf record -q -e cpu-clock -F 2000 -a -g -o /tmp/perf.data -- \
    /tmp/kvm-guests --bench --reps 3 --scale 0.5 --only "$2" || exit 1
cat /proc/kallsyms > /host/tmp/kallsyms
report="$perf report -i /tmp/perf.data --kallsyms /tmp/kallsyms --stdio --no-children"
$report --sort sym --percent-limit 0.5 -g none 2>/dev/null | grep '%'
$report --symbols lock_acquire,lock_release,lock_is_held_type \
    -g caller,0.5,callee,function,percent --max-stack 3 2>/dev/null | grep -v '^#' | grep -v '^$'
