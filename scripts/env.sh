# Sourced by the kvm-rs scripts and Makefile: the toolchain and cache locations.
export KSRC_VERSION=${KSRC_VERSION:-7.2}
export KVM_RS_CACHE=${KVM_RS_CACHE:-$HOME/.cache/kvm-rs}
# Debian's LLVM 19 keeps unversioned names (clang, ld.lld, llvm-ar...) here, so LLVM=1
# builds with it; libclang for bindgen comes from the same install.
export LIBCLANG_PATH=${LIBCLANG_PATH:-/usr/lib/llvm-19/lib}
case ":$PATH:" in *":/usr/lib/llvm-19/bin:"*) ;; *) export PATH="/usr/lib/llvm-19/bin:$PATH" ;; esac
case ":$PATH:" in *":$HOME/.cargo/bin:"*) ;; *) export PATH="$HOME/.cargo/bin:$PATH" ;; esac
