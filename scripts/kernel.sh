#!/usr/bin/env bash
# Builds (once) the pinned kvm-rs test kernel and prints its build directory.
#   kernel.sh          build if needed, print the dir
#   kernel.sh --dir    print the dir only (what KDIR defaults to)
#   kernel.sh --source unpack the source if needed and print its dir (host tests
#                      bindgen the uapi headers from it)
# Cached outside the repo in $KVM_RS_CACHE (default ~/.cache/kvm-rs), keyed by the
# linux-source package version, the config fragment and the toolchain versions, so a
# changed fragment or compiler gives a new build and an unchanged one is reused.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/scripts/env.sh"
frag="$here/tests/kernel/kvm-rs.config"
pkgver=$(dpkg-query -W -f='${Version}' "linux-source-$KSRC_VERSION")
key=$( { echo "$pkgver"; cat "$frag"; clang-19 --version | head -1; rustc --version; bindgen --version; } \
       | sha256sum | cut -c1-16)
src="$KVM_RS_CACHE/linux-source-$KSRC_VERSION-$pkgver"
out="$KVM_RS_CACHE/kernel-$KSRC_VERSION-$key"
log() { echo "kernel: $*" >&2; }

if [ "${1:-}" = --dir ]; then echo "$out"; exit 0; fi

unpack() {
    [ -e "$src/.kvm-rs-unpacked" ] && return
    mkdir -p "$KVM_RS_CACHE"
    exec 8>"$src.lock"; flock 8
    [ -e "$src/.kvm-rs-unpacked" ] && { exec 8>&-; return; }
    log "unpacking linux-source-$KSRC_VERSION $pkgver"
    rm -rf "$src" "$src.tmp"; mkdir -p "$src.tmp"
    tar -C "$src.tmp" -xf "/usr/src/linux-source-$KSRC_VERSION.tar.xz"
    mv "$src.tmp/linux-source-$KSRC_VERSION" "$src"; rmdir "$src.tmp"
    touch "$src/.kvm-rs-unpacked"
    exec 8>&-
}
if [ "${1:-}" = --source ]; then unpack; echo "$src"; exit 0; fi

built() { [ -e "$out/.kvm-rs-done" ] && [ -e "$out/usr/include/linux/kvm.h" ]; }
if built; then echo "$out"; exit 0; fi
# One build at a time per cache: a second caller waits and then finds it done.
mkdir -p "$KVM_RS_CACHE"
exec 9>"$out.lock"
flock 9
if built; then echo "$out"; exit 0; fi

unpack

mkdir -p "$out"
kmake() { make -C "$src" O="$out" LLVM=1 "$@"; }
log "configuring $out"
kmake -s tinyconfig >/dev/null
"$src/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" "$frag" >/dev/null
kmake -s olddefconfig
# Every line of the fragment must have survived olddefconfig: a silently dropped option
# (renamed, unmet dependency) would give a kernel that boots but cannot test KVM.
bad=0
while IFS= read -r l; do
    case "$l" in CONFIG_*) ;; *) continue ;; esac
    k=${l%%=*}; v=${l#*=}
    if [ "$v" = n ]; then
        ! grep -q "^$k=" "$out/.config" || { log "wanted $l, got $(grep "^$k=" "$out/.config")"; bad=1; }
    else
        grep -qx "$l" "$out/.config" || { log "wanted $l, got '$(grep "^$k=" "$out/.config")'"; bad=1; }
    fi
done < "$frag"
[ $bad = 0 ] || { log "config fragment not satisfied"; exit 1; }

log "building (bzImage, modules, uapi headers) with $(nproc) jobs; long on a cold cache"
kmake -j"$(nproc)" -s bzImage modules headers >&2
touch "$out/.kvm-rs-done"
# Builds under other keys are stale (older fragment or toolchain): reclaim their space.
for d in "$KVM_RS_CACHE"/kernel-"$KSRC_VERSION"-* "$KVM_RS_CACHE"/selftests-kernel-"$KSRC_VERSION"-*; do
    case "$d" in "$out"|"$out.lock"|*"/selftests-$(basename "$out")") continue ;; esac
    log "removing stale $d"; rm -rf "$d"
done
echo "$out"
