#!/usr/bin/env bash
# `make check`: everything CI runs, in order of cost. Stops at the first failing stage;
# the reference selftest run reports its table without failing the check.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/env.sh"
cd "$root"
stage() { printf '\n=== %s\n' "$*"; }
t0=$(date +%s)
lap() { echo "--- $1: $(( $(date +%s) - t0 ))s since start"; }

stage "host: cargo test (no_std logic, ABI)"
cargo test --workspace --quiet
lap host-test

stage "lint: rustfmt, clippy, module build with warnings as errors"
make -s fmt-check
make -s clippy
lap lint

stage "modules"
make -s modules
lap modules

stage "VM runner self-test: it must report FAIL, SKIP and TIMEOUT"
tests/vm-check.sh runner-selftest
lap runner-selftest

stage "VM (QEMU TCG, AMD SVM): smoke, unload/reload x20, in-tree reference"
tests/vm-check.sh qemu-amd
lap qemu-amd

stage "VM (Bochs, Intel VMX): load, smoke, unload"
tests/vm-check.sh bochs-intel
lap bochs-intel

stage "reference run: KVM selftests, in-tree vs ours (report only)"
tests/selftests.sh --list tests/selftests/check.list --modules both --report-only | tee out/selftests.table
lap selftests
