#!/usr/bin/env bash
# `make check`: everything CI runs, in order of cost. Stops at the first failing stage.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/env.sh"
cd "$root"
stage() { printf '\n=== %s\n' "$*"; }
# Everything the gating stages print also goes to $log, to count the checks at the end.
mkdir -p out
log=out/check.log; : > "$log"
t0=$(date +%s)
lap() { echo "--- $1: $(( $(date +%s) - t0 ))s since start"; }

stage "test kernel (built once, then cached in $KVM_RS_CACHE)"
scripts/kernel.sh
lap kernel

stage "host: cargo test (no_std logic, ABI)"
cargo test --workspace --quiet 2>&1 | tee -a "$log"
lap host-test

stage "lint: rustfmt, clippy, module build with warnings as errors"
make -s fmt-check
make -s clippy
lap lint

stage "modules"
make -s modules
lap modules

stage "VM runner self-test: it must report FAIL, SKIP and TIMEOUT"
tests/vm-check.sh runner-selftest | tee -a "$log"
lap runner-selftest

stage "VM (QEMU TCG, AMD SVM): smoke, unload/reload x20, in-tree reference"
tests/vm-check.sh qemu-amd | tee -a "$log"
# make bench's report, from the tiny benchmark runs above: proves the pipeline.
if /usr/bin/python3 scripts/bench-report.py --out out/bench-tiny tcg=out/vm-qemu-amd.log > out/bench-tiny.txt; then
    echo "ok - bench report from the tiny run (out/bench-tiny/)" | tee -a "$log"
else
    echo "not ok - bench report from the tiny run" | tee -a "$log"
fi
lap qemu-amd

stage "make run's job (one-vCPU guests): unmodified QEMU boots Linux to userspace, gdb, migration; ours, then in-tree"
tests/vm-check.sh run-check | tee -a "$log"
lap run

stage "VM (Bochs, Intel VMX): load, smoke, unload"
tests/vm-check.sh bochs-intel | tee -a "$log"
lap bochs-intel

stage "KVM selftests, in-tree vs ours: ours must pass what in-tree passes"
tests/selftests.sh --list tests/selftests/check.list --modules both | tee out/selftests.table
# One check per test, for the closing count (rows: test in-tree ours).
awk 'NF == 3 && $1 != "test" && $1 != "summary:" {
        print (($2 != "PASS" || $3 == "PASS") ? "ok - selftest " : "not ok - selftest ") $1 }' \
    out/selftests.table >> "$log"
lap selftests

# One closing line over the gating checks: cargo's test counts and the VM TAP lines.
passed=$(( $(sed -n 's/^test result: ok\. \([0-9]*\) passed.*/\1/p' "$log" | awk '{s += $1} END {print s + 0}') \
           + $(grep -cE '^ok ' "$log") ))
failed=$(grep -cE '^not ok ' "$log" || true)
echo
echo "check: $passed passed, $failed failed"
[ "$failed" = 0 ]
