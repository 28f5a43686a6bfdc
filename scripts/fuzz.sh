#!/usr/bin/env bash
# `make fuzz`: kvm-fuzz in one TCG boot of the test kernel (tests/vm/plan-fuzz): the
# differential run (FUZZ_DIFF_SEEDS seeds on in-tree, then ours, compared step by
# step against tests/fuzz/known-divergences), a campaign on ours (FUZZ_SEEDS seeds
# of FUZZ_OPS operations, FUZZ_THREADS racing threads), FUZZ_CYCLES load/unload
# cycles with VMs open; then the host-side harnesses (scripts/fuzz-host.sh) for
# FUZZ_HOST_SECONDS each. Output: out/fuzz/ (the VM log, the divergence tables).
#   FUZZ_SEED (1)  FUZZ_DIFF_SEEDS (10)  FUZZ_SEEDS (400)  FUZZ_OPS (3000)
#   FUZZ_THREADS (2)  FUZZ_CYCLES (100)  FUZZ_HOST_SECONDS (60)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/env.sh"
out=$root/out/fuzz; mkdir -p "$out"
rc=0
VM_LOG=$out/vm-fuzz.log "$root/tests/vm-check.sh" fuzz | tee "$out/tap.txt" || rc=1
# The divergence tables and the campaign's counts, from the console.
sed -n 's/^# //p' "$out/vm-fuzz.log" | grep -E '^(== seed|\||# differential|# [0-9]+ rows|kvm-fuzz)' > "$out/divergences.md" || true
grep -h 'kvm-fuzz seed' "$out/vm-fuzz.log" | awk '{for (i=1;i<=NF;i++) {if ($(i+1)=="ioctls") io+=$i; if ($(i+1)=="guests,") g+=$i; if ($(i+1)=="KVM_RUNs") k+=$i}} END {printf "campaign totals: %d ioctls, %d guests, %d KVM_RUNs\n", io, g, k}' | tee "$out/totals.txt"
"$root/scripts/fuzz-host.sh" "${FUZZ_HOST_SECONDS:-60}" || rc=1
exit $rc
