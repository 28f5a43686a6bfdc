#!/usr/bin/env bash
# Installs everything kvm-rs needs on a Debian 12 (bookworm) host. Idempotent.
#  - trixie-backports is added pinned at priority 1, so only linux-source-7.2 comes from it.
#  - bookworm-backports gives QEMU 10 (QEMU 7.2 from bookworm is too old for the selftest VM).
set -euo pipefail
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
KSRC_VERSION=${KSRC_VERSION:-7.2}
BINDGEN_VERSION=${BINDGEN_VERSION:-0.72.1}

src=/etc/apt/sources.list.d/kvm-rs-backports.sources
pin=/etc/apt/preferences.d/kvm-rs
want_src='Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports trixie-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg'
want_pin="Package: *
Pin: release n=trixie-backports
Pin-Priority: 1

Package: linux-source-$KSRC_VERSION
Pin: release n=trixie-backports
Pin-Priority: 500"
changed=0
if [ "$(cat $src 2>/dev/null)" != "$want_src" ]; then echo "$want_src" | $SUDO tee $src >/dev/null; changed=1; fi
if [ "$(cat $pin 2>/dev/null)" != "$want_pin" ]; then echo "$want_pin" | $SUDO tee $pin >/dev/null; changed=1; fi
stamp=/var/lib/apt/periodic/kvm-rs-update
if [ $changed = 1 ] || [ ! -e $stamp ] || [ -n "$(find $stamp -mmin +1440)" ]; then
    $SUDO apt-get update -qq
    $SUDO mkdir -p "$(dirname $stamp)"; $SUDO touch $stamp
fi

pkgs=(
  "linux-source-$KSRC_VERSION"
  build-essential bc bison flex libelf-dev libssl-dev dwarves cpio kmod xz-utils zstd rsync python3
  clang-19 lld-19 llvm-19 libclang-19-dev
  busybox-static e2fsprogs gdb
  python3-matplotlib linux-perf
  bochs bochsbios vgabios bochs-term isolinux syslinux-common xorriso
)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# QEMU 10 from bookworm-backports (bookworm's 7.2 lacks what the test VM needs).
if ! dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null | grep -q '^1:10\.'; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        -t bookworm-backports qemu-system-x86 qemu-system-data qemu-system-common
fi

# Rust: the machine's rustup stable plus rust-src (the kernel builds core/alloc itself).
if command -v rustup >/dev/null; then
    rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src
fi
if ! command -v bindgen >/dev/null || \
   [ "$(bindgen --version | awk '{print $2}')" != "$BINDGEN_VERSION" ]; then
    cargo install --locked bindgen-cli --version "$BINDGEN_VERSION"
fi
echo "setup-host: ok"
