#!/usr/bin/env bash
# Host-side fuzzing of the no_std logic: tests/fuzz-host's targets under libFuzzer
# (coverage-guided, stable Rust: the sancov passes are codegen options), each for
# SECONDS. A crash leaves its input in out/fuzz/host/TARGET/ and fails the script.
# usage: scripts/fuzz-host.sh [SECONDS] [TARGET...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/env.sh"
secs=${1:-60}; shift || true
targets=("${@:-decoder page_walker irqchips memslots}")
dir=$root/tests/fuzz-host/libfuzzer
export CARGO_TARGET_DIR=$root/target/libfuzzer
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# --target: RUSTFLAGS then instrument the targets only, not the build scripts.
cargo build --release --quiet --target x86_64-unknown-linux-gnu --manifest-path "$dir/Cargo.toml"
rc=0
for t in ${targets[*]}; do
    out=$root/out/fuzz/host/$t; mkdir -p "$out/corpus"
    if "$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/$t" -max_total_time="$secs" -artifact_prefix="$out/" \
        -print_final_stats=1 "$out/corpus" > "$out/log.txt" 2>&1; then
        echo "ok - host fuzz $t: $(grep -o 'stat::number_of_executed_units: [0-9]*' "$out/log.txt" | awk '{print $2}') runs, no crash"
    else
        echo "not ok - host fuzz $t: see $out/log.txt"; tail -20 "$out/log.txt"; rc=1
    fi
done
exit $rc
