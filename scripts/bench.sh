#!/usr/bin/env bash
# `make bench`: the micro-benchmarks (kvm-guests --bench) and QEMU boots in one TCG
# boot of the test kernel, in-tree, ours, in-tree again (tests/vm/plan-bench); once
# with TCG's real time and once under -icount, whose virtual clock counts guest
# instructions and so does not drift with the host's load. Then the report:
# out/bench/bench.{md,csv,json,png}.
#   BENCH_REPS (5)  BENCH_SCALE (1: iteration counts)  BENCH_BOOT_REPS (2)
#   BENCH_MODES ("tcg icount")
# BENCH_PERF=NAME instead profiles one benchmark with perf on both (no report).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/env.sh"
out=$root/out/bench; mkdir -p "$out"
if [ -n "${BENCH_PERF:-}" ]; then
    VM_LOG=$out/vm-perf.log "$root/tests/vm-check.sh" bench-perf
    grep -v '^\[' "$out/vm-perf.log" | sed -n '/KVMRS-BEGIN/,$p'
    exit 0
fi
logs=()
for mode in ${BENCH_MODES:-tcg icount}; do
    case $mode in
    tcg) extra=(); boots=${BENCH_BOOT_REPS:-2} ;;
    # A nested QEMU boot under -icount (one host thread) did not reach the guest's
    # userspace in 6 minutes: the boots are measured in real time only.
    icount) extra=(--icount); boots=0 ;;
    *) echo "bench: unknown mode $mode" >&2; exit 2 ;;
    esac
    echo "=== bench: $mode"
    BENCH_BOOT_REPS=$boots VM_LOG=$out/vm-$mode.log "$root/tests/vm-check.sh" bench "${extra[@]}" | tee "$out/tap-$mode.txt"
    logs+=("$mode=$out/vm-$mode.log")
done
# Debian's python3, which has matplotlib (scripts/setup-host.sh installs it).
/usr/bin/python3 "$root/scripts/bench-report.py" --out "$out" "${logs[@]}"
