#!/bin/sh
# Generates the Rust view of a C header with bindgen.
#   gen-bindings.sh uapi SRCTREE OUT   the KVM userspace ABI (include/uapi/linux/kvm.h)
#   gen-bindings.sh glue HEADER OUT    the kvm-rs C glue header (include/kvm_rs_glue.h)
# Only self-contained headers go through here: uapi headers and our own glue header need
# no kernel-internal flags, so their layout does not depend on the kernel's c_flags
# (kernel-internal structs are reached through the kernel crate's `bindings` instead).
# `core::ffi` types let the same output compile in the modules and in host tests.
set -eu
kind=$1; in=$2; out=$3
: "${BINDGEN:=bindgen}"
: "${LIBCLANG_PATH:=/usr/lib/llvm-19/lib}"
export LIBCLANG_PATH
common="--use-core --ctypes-prefix core::ffi --no-layout-tests --rust-target 1.85
        --with-derive-default --no-prepend-enum-name --merge-extern-blocks"
tmp="$out.tmp.$$"
trap 'rm -rf "$tmp" "$tmp.inc"' EXIT
case "$kind" in
uapi)
    # The asm-generic fallbacks that Kbuild would generate under
    # arch/x86/include/generated/uapi: a shim for each mandatory header x86 lacks.
    # linux/compiler.h is what headers_install strips from the installed copies.
    shim="$tmp.inc"; mkdir -p "$shim/asm" "$shim/linux"
    printf '#define __user\n#define __force\n#define __iomem\n' > "$shim/linux/compiler.h"
    for h in $(sed -n 's/^mandatory-y += //p' "$in/include/uapi/asm-generic/Kbuild"); do
        [ -e "$in/arch/x86/include/uapi/asm/$h" ] ||
            echo "#include <asm-generic/$h>" > "$shim/asm/$h"
    done
    # shellcheck disable=SC2086
    $BINDGEN "$in/include/uapi/linux/kvm.h" $common \
        --allowlist-file '.*/linux/kvm\.h' --allowlist-file '.*/asm/kvm\.h' \
        --allowlist-var 'KVM_.*' \
        -o "$tmp" -- -nostdinc -target x86_64-linux-gnu -D__EXPORTED_HEADERS__ \
        -I"$in/arch/x86/include/uapi" -I"$shim" -I"$in/include/uapi" ;;
glue)
    # shellcheck disable=SC2086
    $BINDGEN "$in" $common --allowlist-function 'kvm_glue_.*' --allowlist-var 'KVM_GLUE_.*' \
        --allowlist-type 'kvm_glue_.*' \
        -o "$tmp" -- -nostdinc -target x86_64-linux-gnu -D__KVM_RS_BINDGEN__ ;;
*) echo "gen-bindings.sh: unknown kind $kind" >&2; exit 2 ;;
esac
mv "$tmp" "$out"
