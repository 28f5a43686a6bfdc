# Sourced by the in-VM scripts that run the host's QEMU (qemu-guest.sh, qemu-gdb.sh,
# qemu-migrate.sh).

# The host's root file system at /host, with this VM's /dev, /proc and /sys and a
# tmpfs /tmp, for chroot'ing the host's QEMU, gdb and python3.
host_root() {
    for d in dev proc sys tmp; do grep -q " /host/$d " /proc/mounts && continue
        case $d in
        dev) mount --bind /dev /host/dev ;;
        proc) mount -t proc proc /host/proc ;;
        sys) mount -t sysfs sys /host/sys ;;
        tmp) mount -t tmpfs tmp /host/tmp ;;
        esac
    done
}

# A nested guest's console, its panics and warnings renamed so that the harness does
# not take them for this VM's.
guest_lines() {
    sed -e 's/Kernel panic/guest kernel panic/' -e 's/RIP: /guest RIP /' \
        -e 's/WARNING:/guest warning:/' -e 's/BUG:/guest bug:/' "$@"
}
