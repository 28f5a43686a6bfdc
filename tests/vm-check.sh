#!/usr/bin/env bash
# Runs a VM test plan (tests/vm/plan-*) against the freshly built modules:
#   tests/vm-check.sh qemu-amd | bochs-intel | run | run-check | bench | fuzz | runner-selftest   [extra vm.py args]
# Needs: make (modules), make kernel. Prints TAP; exit status is the runner's.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/env.sh"
which=$1; shift
kdir=$("$root/scripts/kernel.sh")
out="$root/out"; mkdir -p "$out"

# Userspace clients: static, so they run from the initramfs (Bochs has no 9p).
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet -p kvm-rs-clients \
    --manifest-path "$root/Cargo.toml"
bin="$root/target/release"

adds=(--add "$root/kvm.ko=/kvm-rs/ours/kvm.ko" --add "$root/kvm-amd.ko=/kvm-rs/ours/kvm-amd.ko"
      --add "$root/kvm-intel.ko=/kvm-rs/ours/kvm-intel.ko"
      --add "$bin/kvm-smoke=/kvm-rs/bin/kvm-smoke"
      --add "$bin/kvm-guests=/kvm-rs/bin/kvm-guests"
      --add "$bin/kvm-fuzz=/kvm-rs/bin/kvm-fuzz"
      --add "$root/tests/vm/fuzz.sh=/kvm-rs/tests/fuzz.sh"
      --add "$root/tests/vm/load-cycles.sh=/kvm-rs/tests/load-cycles.sh"
      --add "$root/tests/fuzz/known-divergences=/kvm-rs/tests/known-divergences"
      --add "$root/tests/vm/leak-loop.sh=/kvm-rs/tests/leak-loop.sh"
      --add "$root/tests/vm/qemu-guest.sh=/kvm-rs/tests/qemu-guest.sh"
      --add "$root/tests/vm/hmp.py=/kvm-rs/tests/hmp.py"
      --add "$root/tests/vm/nested.sh=/kvm-rs/tests/nested.sh"
      --add "$root/tests/vm/with-modules.sh=/kvm-rs/tests/with-modules.sh"
      --add "$root/tests/vm/bench-boot.sh=/kvm-rs/tests/bench-boot.sh"
      --add "$root/tests/vm/bench-perf.sh=/kvm-rs/tests/bench-perf.sh")
case "$which" in
qemu-amd)
    adds+=(--add "$kdir/virt/lib/irqbypass.ko=/kvm-rs/intree/irqbypass.ko"
           --add "$kdir/arch/x86/kvm/kvm.ko=/kvm-rs/intree/kvm.ko"
           --add "$kdir/arch/x86/kvm/kvm-amd.ko=/kvm-rs/intree/kvm-amd.ko")
    exec python3 "$root/tests/vm.py" --emulator qemu --kernel "$kdir/arch/x86/boot/bzImage" \
        --plan "$root/tests/vm/plan-qemu-amd" "${adds[@]}" --mem 1G --append kmemleak=on \
        --log "$out/vm-qemu-amd.log" "$@" ;;
runner-selftest)
    tap=$(python3 "$root/tests/vm.py" --emulator qemu --kernel "$kdir/arch/x86/boot/bzImage" \
        --plan "$root/tests/vm/plan-runner-selftest" --mem 512M --boot-timeout 120 \
        --log "$out/vm-runner-selftest.log" "$@" || true)
    echo "$tap" | sed 's/^/# /'
    # Each test's name starts with the status it must get.
    bad=0; n=0
    while read -r name; do
        n=$((n + 1)); want=${name%%-*}; want=${want^^}
        echo "$tap" | grep -q "^.*ok $n - $name # $want" || { echo "not ok - $name: want $want"; bad=1; }
    done < <(grep -Ev '^(#|$)' "$root/tests/vm/plan-runner-selftest" | awk '{print $1}')
    [ $bad = 0 ] && echo "ok - runner reports PASS, FAIL, SKIP and TIMEOUT as it should"
    exit $bad ;;
fuzz)
    # make fuzz's knobs (scripts/fuzz.sh sets them).
    adds+=(--add "$kdir/virt/lib/irqbypass.ko=/kvm-rs/intree/irqbypass.ko"
           --add "$kdir/arch/x86/kvm/kvm.ko=/kvm-rs/intree/kvm.ko"
           --add "$kdir/arch/x86/kvm/kvm-amd.ko=/kvm-rs/intree/kvm-amd.ko")
    sed -e "s|\$FUZZ_SEED|${FUZZ_SEED:-1}|" -e "s|\$FUZZ_DIFF_SEEDS|${FUZZ_DIFF_SEEDS:-10}|" \
        -e "s|\$FUZZ_SEEDS|${FUZZ_SEEDS:-400}|" -e "s|\$FUZZ_OPS|${FUZZ_OPS:-3000}|" \
        -e "s|\$FUZZ_THREADS|${FUZZ_THREADS:-2}|" -e "s|\$FUZZ_CYCLES|${FUZZ_CYCLES:-100}|" \
        "$root/tests/vm/plan-fuzz" > "$out/fuzz.plan"
    exec python3 "$root/tests/vm.py" --emulator qemu --kernel "$kdir/arch/x86/boot/bzImage" \
        --plan "$out/fuzz.plan" "${adds[@]}" --mem 1G --append kmemleak=on \
        --log "${VM_LOG:-$out/vm-fuzz.log}" -v "$@" ;;
run|run-check|bench|bench-perf)
    plan=$root/tests/vm/plan-${which#run-}
    log=$out/vm-${which%-check}.log
    adds+=(--add "$kdir/virt/lib/irqbypass.ko=/kvm-rs/intree/irqbypass.ko"
           --add "$kdir/arch/x86/kvm/kvm.ko=/kvm-rs/intree/kvm.ko"
           --add "$kdir/arch/x86/kvm/kvm-amd.ko=/kvm-rs/intree/kvm-amd.ko")
    export KVMRS_BZIMAGE="$kdir/arch/x86/boot/bzImage"
    # The nested guest's root file system, on virtio-blk.
    sh "$root/tests/vm/guest-rootfs.sh" "$out/guest-rootfs.img"
    adds+=(--add "$out/guest-rootfs.img=/kvm-rs/guest-rootfs.img")
    # Where gdb stops the nested guest (the test kernel has no KASLR).
    start_kernel=0x$(awk '$3 == "start_kernel" { print $1 }' "$kdir/System.map")
    adds+=(--add "$root/tests/vm/qemu-gdb.sh=/kvm-rs/tests/qemu-gdb.sh"
           --add "$root/tests/vm/qemu-migrate.sh=/kvm-rs/tests/qemu-migrate.sh")
    # make bench's knobs (scripts/bench.sh sets them).
    sed -e "s|\$KVMRS_BZIMAGE|$KVMRS_BZIMAGE|" -e "s|\$KVMRS_START_KERNEL|$start_kernel|" \
        -e "s|\$BENCH_REPS|${BENCH_REPS:-5}|" -e "s|\$BENCH_SCALE|${BENCH_SCALE:-1}|" \
        -e "s|\$BENCH_BOOT_REPS|${BENCH_BOOT_REPS:-2}|" -e "s|\$BENCH_PERF|${BENCH_PERF:-}|" "$plan" > "$out/$which.plan"
    exec python3 "$root/tests/vm.py" --emulator qemu --kernel "$kdir/arch/x86/boot/bzImage" \
        --plan "$out/$which.plan" "${adds[@]}" --host-root --mem 1G --log "${VM_LOG:-$log}" -v "$@" ;;
bochs-intel)
    # One CPU: with two, kvm-intel's load hung once in three runs (no console output
    # for 300 s, Bochs or us: not yet diagnosed); SMP is covered under QEMU.
    exec python3 "$root/tests/vm.py" --emulator bochs --kernel "$kdir/arch/x86/boot/bzImage" \
        --plan "$root/tests/vm/plan-bochs-intel" "${adds[@]}" --mem 512M --smp 1 \
        --boot-timeout 600 --log "$out/vm-bochs-intel.log" "$@" ;;
*) echo "usage: $0 qemu-amd|bochs-intel|run|run-check|bench|fuzz|runner-selftest" >&2; exit 2 ;;
esac
