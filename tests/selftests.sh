#!/usr/bin/env bash
# Builds the kernel's KVM selftests from the pinned source (static, cached) and runs
# them in the TCG VM against the in-tree modules, ours, or both, in one boot.
#   selftests.sh [--tests "a x86/b ..."] [--list FILE] [--modules ours|intree|both]
#                [--report-only]
# Prints one row per test, `<test> <in-tree> <ours>` (PASS FAIL SKIP TIMEOUT, or - when
# not run), and a summary line. Exit 0 when ours passes every listed test that in-tree
# passes (always 0 with --report-only: the gap is reported, not a failure).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/env.sh"
list="$root/tests/selftests/tier1.list"; tests=""; modules=both; report_only=0
while [ $# -gt 0 ]; do
    case "$1" in
    --tests) tests=$2; shift 2 ;;
    --list) list=$2; shift 2 ;;
    --modules) modules=$2; shift 2 ;;
    --report-only) report_only=1; shift ;;
    *) echo "usage: $0 [--tests T] [--list F] [--modules ours|intree|both] [--report-only]" >&2; exit 2 ;;
    esac
done
case "$modules" in ours|intree|both) ;; *) echo "bad --modules $modules" >&2; exit 2 ;; esac

kdir=$("$root/scripts/kernel.sh")
src=$(readlink -f "$kdir/source")
out="$root/out"; mkdir -p "$out"

# The test list: every line of the list file, or the named ones (args from the list
# when it has them).
declare -a names timeouts argss
while read -r name timeout args; do
    case "$name" in ''|'#'*) continue ;; esac
    if [ -n "$tests" ] && [[ " $tests " != *" $name "* ]]; then continue; fi
    names+=("$name"); timeouts+=("$timeout"); argss+=("$args")
done < "$list"
for t in $tests; do
    [[ " ${names[*]} " == *" $t "* ]] || { names+=("$t"); timeouts+=(120); argss+=(""); }
done

# Build (cached per kernel build): static, so the binaries need nothing from the VM.
sdir="$KVM_RS_CACHE/selftests-$(basename "$kdir")"
targets=(); for n in "${names[@]}"; do targets+=("$sdir/$n"); done
missing=0; for t in "${targets[@]}"; do [ -x "$t" ] || missing=1; done
if [ $missing = 1 ]; then
    echo "selftests: building ${#targets[@]} tests into $sdir" >&2
    make -s -C "$src/tools/testing/selftests/kvm" OUTPUT="$sdir" \
        KHDR_INCLUDES="-isystem $kdir/usr/include" EXTRA_CFLAGS=-static \
        -j"$(nproc)" "${targets[@]}" >&2
fi

# One plan, one boot: in-tree first (the reference), then ours. The VM sees the host's
# root read-only at /host.
plan="$out/selftests.plan"; : > "$plan"
sets=(); case "$modules" in both) sets=(intree ours) ;; *) sets=("$modules") ;; esac
for set in "${sets[@]}"; do
    for i in "${!names[@]}"; do
        echo "$set:${names[$i]} ${timeouts[$i]} cd /host$sdir/$(dirname "${names[$i]}") && sh /kvm-rs/tests/with-modules.sh $set kvm-amd /host$sdir/${names[$i]} ${argss[$i]}" >> "$plan"
    done
done

tap="$out/selftests.tap"
set +e
python3 "$root/tests/vm.py" --emulator qemu --kernel "$kdir/arch/x86/boot/bzImage" --host-root \
    --plan "$plan" --mem 4G --log "$out/selftests.log" \
    --add "$root/kvm.ko=/kvm-rs/ours/kvm.ko" --add "$root/kvm-amd.ko=/kvm-rs/ours/kvm-amd.ko" \
    --add "$kdir/virt/lib/irqbypass.ko=/kvm-rs/intree/irqbypass.ko" \
    --add "$kdir/arch/x86/kvm/kvm.ko=/kvm-rs/intree/kvm.ko" \
    --add "$kdir/arch/x86/kvm/kvm-amd.ko=/kvm-rs/intree/kvm-amd.ko" \
    --add "$root/tests/vm/with-modules.sh=/kvm-rs/tests/with-modules.sh" > "$tap"
set -e

python3 - "$tap" "$report_only" "${names[@]}" <<'PY'
import re, sys
tap, report_only, names = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
res = {}
for line in open(tap):
    m = re.match(r"(?:not )?ok \d+ - (\w+):(\S+) # (\w+)", line)
    if m:
        res[(m.group(1), m.group(2))] = m.group(3)
w = max(len(n) for n in names)
print(f"{'test':<{w}}  {'in-tree':<8} ours")
gap = 0
count = {"intree": {}, "ours": {}}
for n in names:
    a, b = res.get(("intree", n), "-"), res.get(("ours", n), "-")
    count["intree"][a] = count["intree"].get(a, 0) + 1
    count["ours"][b] = count["ours"].get(b, 0) + 1
    if a == "PASS" and b != "PASS" and b != "-":
        gap += 1
    print(f"{n:<{w}}  {a:<8} {b}")
fmt = lambda c: ", ".join(f"{v} {k}" for k, v in sorted(c.items()))
print(f"summary: {len(names)} tests; in-tree: {fmt(count['intree'])}; ours: {fmt(count['ours'])}; "
      f"ours misses {gap} that in-tree passes")
sys.exit(0 if report_only or gap == 0 else 1)
PY
