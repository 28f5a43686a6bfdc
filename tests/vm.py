#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""Boot the kvm-rs test kernel in an emulator, run a list of tests inside, report TAP.

    vm.py [--emulator qemu|bochs] --kernel BZIMAGE --plan PLAN [--add SRC=DST ...]

PLAN is a text file, one test a line:  NAME TIMEOUT_SECONDS COMMAND...
(blank lines and # comments ignored). COMMAND runs under /bin/sh inside the VM, in an
initramfs that holds busybox, the files given with --add, and (QEMU only) the host's
root file system read-only at /host.

A test passes when its command exits 0 (exit status 4 is kselftest's SKIP) and the kernel logged no oops, BUG, WARNING,
lockdep, KASAN or kmemleak report while it ran. A test that outlives its timeout is
killed from the host (an in-guest `timeout` does not always fire under emulation):
the VM is stopped, the test reported TIMEOUT, and a fresh VM runs the remaining tests.

Output: TAP on stdout (one line per test with the status PASS/FAIL/TIMEOUT/SKIP as a
directive), the whole console log in --log. Exit 0 when every test passed.
"""

import argparse
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

BEGIN = "KVMRS-BEGIN "
END = "KVMRS-END "
READY = "KVMRS-READY"
DONE = "KVMRS-DONE"

# Kernel reports that fail the test during which they appear.
KERNEL_TROUBLE = re.compile(
    r"(BUG: |WARNING: |Oops|Kernel panic|general protection fault|"
    r"unable to handle|kernel BUG at|possible circular locking|possible recursive locking|"
    r"inconsistent lock state|suspicious RCU usage|KASAN|UBSAN|"
    r"kmemleak: \d+ new suspected memory leaks|rcu_sched self-detected stall|"
    r"INFO: task .* blocked for more than|RIP: )"
)

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mkdir -p /proc /sys /dev /tmp /host /root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mkdir -p /dev/shm && mount -t tmpfs shm /dev/shm
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
if grep -q hostroot /sys/bus/virtio/drivers/9pnet_virtio/*/mount_tag 2>/dev/null; then
    mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /host
fi
start=0
for a in $(cat /proc/cmdline); do case "$a" in kvmrs.start=*) start=${a#kvmrs.start=} ;; esac; done
echo KVMRS-READY
cd /kvm-rs
i=0
while read -r name timeout cmd; do
    case "$name" in ''|'#'*) continue ;; esac
    i=$((i + 1))
    [ $i -le $start ] && continue
    echo "KVMRS-BEGIN $i $name"
    sh -c "$cmd" </dev/null 2>&1
    rc=$?
    # Let late kernel messages (deferred work, RCU callbacks) land inside the test.
    sleep 1
    echo "KVMRS-END $i $name $rc"
done < /kvm-rs/plan
echo KVMRS-DONE
sync
case "$(cat /proc/cmdline)" in *kvmrs.bochs*) sh /kvm-rs/bochs-shutdown ;; esac
reboot -f
"""

# Bochs stops when "Shutdown" is written to port 0x8900, one byte at a time.
BOCHS_SHUTDOWN = r"""for c in 83 104 117 116 100 111 119 110; do
    printf "\\$(printf %o $c)" | dd of=/dev/port bs=1 seek=$((0x8900)) count=1 2>/dev/null
done
"""


def read_plan(path):
    tests = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, timeout, cmd = line.split(None, 2)
            tests.append((name, int(timeout), cmd))
    return tests


def build_initramfs(workdir, plan_path, adds, emulator):
    root = os.path.join(workdir, "root")
    for d in ("bin", "kvm-rs", "dev", "proc", "sys", "tmp", "host"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(root, "bin/busybox"))
    with open(os.path.join(root, "init"), "w") as f:
        f.write(INIT)
    os.chmod(os.path.join(root, "init"), 0o755)
    shutil.copy(plan_path, os.path.join(root, "kvm-rs/plan"))
    with open(os.path.join(root, "kvm-rs/bochs-shutdown"), "w") as f:
        f.write(BOCHS_SHUTDOWN)
    for spec in adds:
        src, dst = spec.split("=", 1)
        dst = os.path.join(root, dst.lstrip("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.isdir(src):
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy(src, dst)
    cpio = os.path.join(workdir, "initramfs.cpio")
    files = subprocess.run(["find", "."], cwd=root, check=True, capture_output=True).stdout
    with open(cpio, "wb") as out:
        subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"], cwd=root,
                       input=files, stdout=out, check=True)
    return cpio


def qemu_cmd(args, initrd, start):
    append = f"console=ttyS0 panic=-1 kvmrs.start={start} {args.append}".strip()
    # -icount: virtual time counts guest instructions (one per ns), so that timings
    # do not depend on the host's load; it needs single-threaded TCG.
    accel = ["-accel", "tcg", "-icount", "shift=0,sleep=off"] if args.icount else \
        ["-accel", "tcg,thread=multi"]
    cmd = [
        "qemu-system-x86_64", *accel, "-cpu", args.cpu,
        "-smp", str(args.smp), "-m", args.mem, "-nodefaults", "-no-reboot",
        "-display", "none", "-serial", "stdio", "-kernel", args.kernel, "-initrd", initrd,
        "-append", append,
    ]
    if args.host_root:
        cmd += ["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on"]
    # For debugging a hang by hand, e.g. KVMRS_QEMU_EXTRA="-monitor unix:/tmp/m,server,nowait".
    cmd += os.environ.get("KVMRS_QEMU_EXTRA", "").split()
    return cmd


class Bochs:
    """Bochs with a serial console in a file: the kernel boots from an ISO (Bochs
    cannot load a bzImage directly). The term display library opens a pty for the
    screen that must be read, or Bochs blocks."""

    def __init__(self, args, initrd, start, workdir):
        self.workdir = workdir
        iso_dir = os.path.join(workdir, f"iso{start}")
        os.makedirs(os.path.join(iso_dir, "isolinux"), exist_ok=True)
        for f in ("isolinux.bin",):
            shutil.copy(f"/usr/lib/ISOLINUX/{f}", os.path.join(iso_dir, "isolinux", f))
        shutil.copy("/usr/lib/syslinux/modules/bios/ldlinux.c32",
                    os.path.join(iso_dir, "isolinux"))
        shutil.copy(args.kernel, os.path.join(iso_dir, "bzImage"))
        shutil.copy(initrd, os.path.join(iso_dir, "initrd"))
        khz = args.bochs_ips // 1000
        append = (f"console=ttyS0 panic=-1 kvmrs.start={start} kvmrs.bochs "
                  f"clearcpuid=xsaves,xsavec tsc_early_khz={khz} {args.append}").strip()
        with open(os.path.join(iso_dir, "isolinux", "isolinux.cfg"), "w") as f:
            f.write(f"default k\nprompt 0\ntimeout 0\nlabel k\n  kernel /bzImage\n"
                    f"  append initrd=/initrd {append}\n")
        self.iso = os.path.join(workdir, f"boot{start}.iso")
        subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", self.iso,
                        "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
                        "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table", iso_dir],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.serial = os.path.join(workdir, f"serial{start}.txt")
        open(self.serial, "w").close()
        rc = os.path.join(workdir, f"bochsrc{start}")
        mem = int(args.mem.rstrip("MG")) * (1024 if args.mem.endswith("G") else 1)
        with open(rc, "w") as f:
            f.write(f"""megs: {mem}
cpu: model=corei7_skylake_x, count={args.smp}, ips={args.bochs_ips}, reset_on_triple_fault=1
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/vgabios/vgabios.bin
ata0-master: type=cdrom, path={self.iso}, status=inserted
boot: cdrom
clock: sync=none, time0=local
com1: enabled=1, mode=file, dev={self.serial}
display_library: term
log: {os.path.join(workdir, f'bochs{start}.log')}
panic: action=fatal
error: action=report
info: action=ignore
debug: action=ignore
port_e9_hack: enabled=1
""")
        self.dbg = os.path.join(workdir, "bochs-dbg")
        with open(self.dbg, "w") as f:
            f.write("c\nq\n")
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(
            ["bochs", "-q", "-f", rc, "-rc", self.dbg], stdin=slave, stdout=slave, stderr=slave,
            cwd=workdir, start_new_session=True)
        os.close(slave)
        self.pos = 0

    def read(self, timeout):
        # Drain the screen pty (it blocks Bochs when full), then read the serial file.
        end = time.time() + timeout
        while True:
            r, _, _ = select.select([self.master], [], [], 0.2)
            if r:
                try:
                    os.read(self.master, 65536)
                except OSError:
                    pass
            with open(self.serial, "rb") as f:
                f.seek(self.pos)
                data = f.read()
            if data:
                self.pos += len(data)
                return data
            if self.proc.poll() is not None:
                return b""
            if time.time() >= end:
                return None

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
        self.proc.wait()
        os.close(self.master)


class Qemu:
    def __init__(self, args, initrd, start):
        self.proc = subprocess.Popen(qemu_cmd(args, initrd, start), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def read(self, timeout):
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            return None
        return os.read(self.proc.stdout.fileno(), 65536)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
        self.proc.wait()


def run(args):
    tests = read_plan(args.plan)
    results = {}  # index -> (status, reason, seconds)
    # Line-buffered, so that a hung run shows where it is.
    log = open(args.log, "w", buffering=1) if args.log else open(os.devnull, "w")
    workdir = tempfile.mkdtemp(prefix="kvm-rs-vm-")
    initrd = build_initramfs(workdir, args.plan, args.add, args.emulator)
    start = 0
    boots = 0
    try:
        while start < len(tests):
            boots += 1
            vm = (Bochs(args, initrd, start, workdir) if args.emulator == "bochs"
                  else Qemu(args, initrd, start))
            current = None  # (index, name, began, trouble)
            deadline = time.time() + args.boot_timeout
            buf = b""
            stop_reason = None
            while True:
                data = vm.read(1.0)
                now = time.time()
                if data == b"":
                    stop_reason = "VM exited"
                    break
                if data:
                    buf += data
                    *lines, buf = buf.split(b"\n")
                    for raw in lines:
                        line = raw.decode("utf-8", "replace").rstrip("\r")
                        log.write(line + "\n")
                        if args.verbose:
                            print("# " + line, file=sys.stderr)
                        pos = line.find(BEGIN)
                        if pos >= 0:
                            _, idx, name = line[pos:].split(None, 2)
                            i = int(idx) - 1
                            current = [i, name, now, None]
                            deadline = now + tests[i][1]
                            continue
                        pos = line.find(END)
                        if pos >= 0 and current:
                            _, idx, name, rc = line[pos:].split()
                            i = current[0]
                            trouble = current[3]
                            secs = now - current[2]
                            if trouble:
                                results[i] = ("FAIL", f"kernel: {trouble}", secs)
                            elif rc == "4":  # KSFT_SKIP
                                results[i] = ("SKIP", "", secs)
                            elif rc != "0":
                                results[i] = ("FAIL", f"exit status {rc}", secs)
                            else:
                                results[i] = ("PASS", "", secs)
                            start = i + 1
                            current = None
                            deadline = now + args.boot_timeout
                            continue
                        if READY in line:
                            deadline = now + args.boot_timeout
                        if DONE in line:
                            stop_reason = "done"
                        m = KERNEL_TROUBLE.search(line)
                        if m and current and not current[3]:
                            current[3] = line.strip()[:200]
                    if stop_reason == "done":
                        break
                if now > deadline:
                    stop_reason = "timeout"
                    break
            vm.stop()
            if stop_reason == "done":
                break
            if current:
                i = current[0]
                secs = time.time() - current[2]
                if stop_reason == "timeout":
                    results[i] = ("TIMEOUT", f"after {tests[i][1]} s", secs)
                else:
                    results[i] = ("FAIL", f"{stop_reason}: {current[3] or 'no report'}", secs)
                start = i + 1
            else:
                # The VM died or hung outside any test (boot, or between tests).
                for i in range(start, len(tests)):
                    results[i] = ("FAIL", f"VM {stop_reason} before the test ran", 0.0)
                break
            if boots > len(tests) + 1:
                break
    finally:
        log.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"1..{len(tests)}")
    failed = 0
    for i, (name, _, _) in enumerate(tests):
        status, reason, secs = results.get(i, ("FAIL", "not run", 0.0))
        ok = status in ("PASS", "SKIP")
        failed += not ok
        detail = f" {reason}" if reason else ""
        print(f"{'ok' if ok else 'not ok'} {i + 1} - {name} # {status}{detail} ({secs:.1f}s)")
    print(f"# {len(tests) - failed} passed, {failed} failed")
    return 0 if failed == 0 else 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--emulator", choices=("qemu", "bochs"), default="qemu")
    p.add_argument("--kernel", required=True)
    p.add_argument("--plan", required=True)
    p.add_argument("--add", action="append", default=[], help="SRC=DST file for the initramfs")
    p.add_argument("--host-root", action="store_true", help="share / read-only at /host (QEMU)")
    p.add_argument("--cpu", default="max")
    p.add_argument("--smp", type=int, default=2)
    p.add_argument("--mem", default="2G")
    p.add_argument("--append", default="")
    p.add_argument("--boot-timeout", type=int, default=300)
    p.add_argument("--bochs-ips", type=int, default=45000000)
    p.add_argument("--icount", action="store_true",
                   help="QEMU: -icount shift=0,sleep=off (time in guest instructions)")
    p.add_argument("--log")
    p.add_argument("--keep", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    sys.exit(run(args))


if __name__ == "__main__":
    main()
