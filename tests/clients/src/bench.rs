//! `kvm-guests --bench [--reps N] [--scale F] [--only NAME]`: micro-benchmarks of
//! what a VMM pays KVM for, run the same way against the in-tree modules and ours
//! (scripts/bench.sh interleaves them in one boot and computes the ratios).
//!
//! Every VM has the in-kernel irqchip, as QEMU's do (its per-entry work is part of
//! every exit's cost). Each benchmark is a tiny guest (or a loop of ioctls) that checks every exit it
//! gets, so a wrong result fails the run instead of timing something else. Output,
//! one line per repetition, for scripts/bench-report.py:
//!
//!     bench NAME REP NS_PER_OP OPS
//!     bench-stat NAME STAT DELTA      vCPU statistics over the repetition
//!
//! No timing is asserted anywhere: the figures are reported, never checked.

use std::thread;
use std::time::Instant;

use super::irq::{wrmsr, x2apic_on};
use super::*;

const KVM_SET_MP_STATE: u32 = iow::<uapi::kvm_mp_state>(0x99);

/// The port every benchmark guest reports "done" on, and the one its loop body uses.
const DONE_PORT: u8 = 0x10;
const LOOP_PORT: u8 = 0x12;
/// A GPA no memslot covers: accesses there are MMIO exits.
const MMIO_GPA: u32 = 0xd000_0000;
/// Where the page-touch and dirty-log benchmarks' memory sits in the guest.
const TOUCH_GPA: u64 = 0x1000_0000;
const DIRTY_GPA: u64 = 0x4000_0000;
const GIB: u64 = 1 << 30;
/// Master 8259's data port (IMR): a PIO the in-kernel PIC answers.
const PIC_MASTER_IMR: u8 = 0x21;
/// x2APIC MSRs (SDM vol. 3 table 11-6).
const X2APIC_EOI: u32 = 0x80b;
const X2APIC_ICR: u32 = 0x830;
const X2APIC_LVTT: u32 = 0x832;
const X2APIC_TMICT: u32 = 0x838;
const X2APIC_TDCR: u32 = 0x83e;
const MSR_IA32_APICBASE: u32 = 0x1b;
/// The LAPIC timer period of the halt benchmark: long enough that the vCPU really
/// blocks under nested TCG (an entry costs microseconds there), 50 µs at KVM's
/// 1 GHz APIC bus with divide-by-1.
const HLT_TIMER_NS: u32 = 50_000;
const TIMER_VECTOR: u8 = 0x40;
const PONG_VECTOR: u8 = 0x41;
const PING_VECTOR: u8 = 0x42;
const STOP_VECTOR: u8 = 0x43;
/// The flag the second vCPU sets once its LAPIC takes interrupts.
const READY_FLAG: u16 = 0x500;

/// One benchmark: how many operations it does at scale 1, and its body, which
/// returns the seconds the timed part took and the operations it did.
struct Bench {
    name: &'static str,
    ops: u32,
    run: fn(RawFd, u32, &mut Stats) -> Result<f64, String>,
}

/// vCPU statistics the benchmark wants reported, as (name, delta).
type Stats = Vec<(&'static str, u64)>;

const BENCHES: [Bench; 13] = [
    Bench {
        name: "pio-exit",
        ops: 4000,
        run: pio_exit,
    },
    Bench {
        name: "mmio-exit",
        ops: 4000,
        run: mmio_exit,
    },
    Bench {
        name: "cpuid",
        ops: 20000,
        run: cpuid,
    },
    Bench {
        name: "rdmsr",
        ops: 20000,
        run: rdmsr,
    },
    Bench {
        name: "pio-in-kernel",
        ops: 20000,
        run: pio_in_kernel,
    },
    Bench {
        name: "hlt-timer",
        ops: 1000,
        run: hlt_timer,
    },
    Bench {
        name: "ipi",
        ops: 1000,
        run: ipi,
    },
    Bench {
        name: "fault-first-4k",
        ops: 8192,
        run: fault_first,
    },
    Bench {
        name: "fault-again-4k",
        ops: 8192,
        run: fault_again,
    },
    Bench {
        name: "fault-dirty-log-4k",
        ops: 8192,
        run: fault_dirty_log,
    },
    Bench {
        name: "get-dirty-log-1g",
        ops: 20,
        run: get_dirty_log,
    },
    Bench {
        name: "memslot-add-delete",
        ops: 200,
        run: memslot_add_delete,
    },
    Bench {
        name: "run-immediate-exit",
        ops: 20000,
        run: immediate_exit_run,
    },
];

/// Emits `jnz` back to `target` (a rel8 jump: loop bodies are short).
fn jnz_to(code: &mut Vec<u8>, target: usize) {
    let rel = target as isize - (code.len() as isize + 2);
    code.extend([0x75, rel as i8 as u8]);
}

/// Real mode: `mov esi, n`, then `body` n times (esi counts: CPUID and the MSR
/// instructions clobber the others), then `out DONE_PORT, al`.
fn counted_loop(n: u32, body: &[u8]) -> Vec<u8> {
    let mut c = vec![0x66, 0xbe];
    c.extend(n.to_le_bytes());
    let top = c.len();
    c.extend(body);
    c.extend([0x66, 0x4e]); // dec esi
    jnz_to(&mut c, top);
    c.extend([0xe6, DONE_PORT, 0xeb, 0xfe]); // out DONE_PORT, al; jmp $
    c
}

/// Runs the vCPU until its guest reports done; every exit before that is an error.
pub(crate) fn run_to_done(g: &Guest, what: &str) -> Result<(), String> {
    match g.step() {
        Exit::Io { port, .. } if port == u16::from(DONE_PORT) => Ok(()),
        e => Err(format!("{what}: got {e}, want OUT to {DONE_PORT:#x}")),
    }
}

/// A guest loop that runs `n` times in the kernel, timed from KVM_RUN to the exit.
fn timed_loop(g: &Guest, n: u32, body: &[u8], what: &str) -> Result<f64, String> {
    g.mem.write(0x1000, &counted_loop(n, body));
    g.real_mode(0x1000, 0)?;
    let t = Instant::now();
    run_to_done(g, what)?;
    Ok(t.elapsed().as_secs_f64())
}

/// KVM_EXIT_IO to userspace and back: `out LOOP_PORT, al` in a loop.
fn pio_exit(kvm: RawFd, n: u32, _: &mut Stats) -> Result<f64, String> {
    let g = Guest::with_irqchip(kvm)?;
    g.mem.write(0x1000, &[0xe6, LOOP_PORT, 0xeb, 0xfc]); // out; jmp back
    g.real_mode(0x1000, 0)?;
    let t = Instant::now();
    for _ in 0..n {
        match g.step() {
            Exit::Io { port, .. } if port == u16::from(LOOP_PORT) => {}
            e => return Err(format!("pio-exit: got {e}")),
        }
    }
    Ok(t.elapsed().as_secs_f64())
}

/// KVM_EXIT_MMIO to userspace and back: a store to an unbacked GPA, in a loop.
fn mmio_exit(kvm: RawFd, n: u32, _: &mut Stats) -> Result<f64, String> {
    let g = Guest::with_irqchip(kvm)?;
    let mut code = vec![0xa3]; // mov [MMIO_GPA], eax
    code.extend(MMIO_GPA.to_le_bytes());
    code.extend([0xeb, 0xf9]); // jmp back
    g.mem.write(0x1000, &code);
    g.flat32(0x1000)?;
    let t = Instant::now();
    for _ in 0..n {
        match g.step() {
            Exit::Mmio {
                addr, write: true, ..
            } if addr == u64::from(MMIO_GPA) => {}
            e => return Err(format!("mmio-exit: got {e}")),
        }
    }
    Ok(t.elapsed().as_secs_f64())
}

/// CPUID leaf 0, handled in the kernel.
fn cpuid(kvm: RawFd, n: u32, _: &mut Stats) -> Result<f64, String> {
    let g = Guest::with_irqchip(kvm)?;
    timed_loop(&g, n, &[0x66, 0x31, 0xc0, 0x0f, 0xa2], "cpuid") // xor eax, eax; cpuid
}

/// RDMSR of IA32_APICBASE, which both intercept and handle in the kernel.
fn rdmsr(kvm: RawFd, n: u32, _: &mut Stats) -> Result<f64, String> {
    let g = Guest::with_irqchip(kvm)?;
    let mut body = vec![0x66, 0xb9]; // mov ecx, MSR_IA32_APICBASE
    body.extend(MSR_IA32_APICBASE.to_le_bytes());
    body.extend([0x0f, 0x32]); // rdmsr
    timed_loop(&g, n, &body, "rdmsr")
}

/// IN from the master PIC's IMR: a PIO exit the in-kernel PIC completes.
fn pio_in_kernel(kvm: RawFd, n: u32, _: &mut Stats) -> Result<f64, String> {
    let g = Guest::with_irqchip(kvm)?;
    timed_loop(&g, n, &[0xe4, PIC_MASTER_IMR], "pio-in-kernel") // in al, 0x21
}

/// Deltas of the named statistics of a vCPU stats fd between two snapshots.
fn stat_deltas(fd: RawFd, names: &[&'static str], before: &[Option<u64>], out: &mut Stats) {
    for (name, b) in names.iter().zip(before) {
        if let (Some(b), Some(a)) = (b, read_stat(fd, name)) {
            out.push((name, a.saturating_sub(*b)));
        }
    }
}

const HALT_STATS: [&str; 4] = [
    "halt_exits",
    "halt_wakeup",
    "halt_attempted_poll",
    "halt_successful_poll",
];

/// HLT with interrupts on, woken by a one-shot LAPIC timer: the period plus what
/// blocking and waking costs (halt polling shortens the latter).
fn hlt_timer(kvm: RawFd, n: u32, stats: &mut Stats) -> Result<f64, String> {
    let g = Guest::with_irqchip(kvm)?;
    timer_halts(&g, n, HLT_TIMER_NS)?;
    let fd = sys("KVM_GET_STATS_FD", ioctl(g.vcpu, KVM_GET_STATS_FD, 0))?;
    let before: Vec<_> = HALT_STATS.iter().map(|s| read_stat(fd, s)).collect();
    let t = Instant::now();
    let r = run_to_done(&g, "hlt-timer");
    let secs = t.elapsed().as_secs_f64();
    stat_deltas(fd, &HALT_STATS, &before, stats);
    close(fd);
    r.map(|()| secs)
}

/// Sets up a guest that halts `n` times, each woken by a one-shot LAPIC timer of
/// `period_ns`, then reports done (also kvm-guests' halt-poll case).
pub(crate) fn timer_halts(g: &Guest, n: u32, period_ns: u32) -> Result<(), String> {
    g.set_supported_cpuid()?;
    let mut code = x2apic_on();
    code.extend(wrmsr(X2APIC_TDCR, 0xb)); // divide by 1
    code.extend(wrmsr(X2APIC_LVTT, TIMER_VECTOR.into())); // one-shot
    let mut body = vec![0xfa]; // cli: the timer must not fire before the HLT
    body.extend(wrmsr(X2APIC_TMICT, period_ns));
    body.extend([0xfb, 0xf4]); // sti; hlt (the STI shadow covers the HLT)
    code.extend(counted_loop(n, &body));
    let mut handler = wrmsr(X2APIC_EOI, 0);
    handler.push(0xcf); // iret
    irq::setup(g, &code, &[(TIMER_VECTOR, 0x2000, handler)])
}

/// `wrmsr` of the x2APIC ICR: a fixed IPI with `vector` to APIC `dest`.
fn send_ipi(vector: u8, dest: u32) -> Vec<u8> {
    let mut c = vec![0x66, 0xb9];
    c.extend(X2APIC_ICR.to_le_bytes()); // mov ecx, ICR
    c.extend([0x66, 0xb8]);
    c.extend(u32::from(vector).to_le_bytes()); // mov eax, vector (fixed, physical)
    c.extend([0x66, 0xba]);
    c.extend(dest.to_le_bytes()); // mov edx, dest
    c.extend([0x0f, 0x30]); // wrmsr
    c
}

/// A vCPU beyond the Guest's vCPU 0: its fd and kvm_run mapping.
struct Vcpu {
    fd: RawFd,
    run: *mut kvm_run,
    size: usize,
}

impl Vcpu {
    fn new(g: &Guest, id: u64) -> Result<Vcpu, String> {
        let fd = sys("KVM_CREATE_VCPU", ioctl(g.vm, KVM_CREATE_VCPU, id))?;
        let size = g.run_size;
        let run = map_run(fd, size).inspect_err(|_| close(fd))?;
        Ok(Vcpu { fd, run, size })
    }
}

/// KVM_RUN of the vCPU `fd` (its kvm_run mapped at `run`) until the guest's OUT
/// to `port`, which ends its part. Plain integers, so that a thread can take them.
fn run_to(fd: RawFd, run: usize, port: u8) -> Result<(), String> {
    ioctl(fd, KVM_RUN, 0).map_err(|e| format!("KVM_RUN: {}", show(Err(e))))?;
    // SAFETY: `run` maps a whole kvm_run; only this thread runs the vCPU.
    let r = unsafe { ptr::read_volatile(run as *const kvm_run) };
    // The port is used only for KVM_EXIT_IO, whose member it is.
    // SAFETY: the union's members are plain integers.
    let port_field = unsafe { r.__bindgen_anon_1.io.port };
    let io_port = (r.exit_reason == uapi::KVM_EXIT_IO).then_some(port_field);
    if io_port == Some(port.into()) {
        Ok(())
    } else {
        Err(format!(
            "exit {} port {io_port:?}, want OUT to {port:#x}",
            r.exit_reason
        ))
    }
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping this struct owns.
        unsafe { libc::munmap(self.run.cast(), self.size) };
        close(self.fd);
    }
}

/// An IPI round trip between two vCPUs, each halted while it waits: vCPU 0 sends
/// PING and halts, vCPU 1's handler answers with PONG.
fn ipi(kvm: RawFd, n: u32, stats: &mut Stats) -> Result<f64, String> {
    let g = Guest::with_irqchip(kvm)?;
    g.set_supported_cpuid()?;
    let ap = Vcpu::new(&g, 1)?;
    set_supported_cpuid(kvm, ap.fd)?;
    // With an in-kernel LAPIC an AP waits for SIPI; start it as QEMU does.
    let mut mp = uapi::kvm_mp_state {
        mp_state: uapi::KVM_MP_STATE_RUNNABLE,
    };
    sys(
        "KVM_SET_MP_STATE",
        ioctl_ref(ap.fd, KVM_SET_MP_STATE, &mut mp),
    )?;

    // vCPU 0: wait for vCPU 1, then n pings, each answered before the next.
    let [flo, fhi] = READY_FLAG.to_le_bytes();
    let mut bsp = x2apic_on();
    let wait = bsp.len();
    bsp.extend([0x80, 0x3e, flo, fhi, 1]); // cmp byte [READY_FLAG], 1
    jnz_to(&mut bsp, wait);
    let mut body = vec![0xfa]; // cli: the answer must not come before the HLT
    body.extend(send_ipi(PING_VECTOR, 1));
    body.extend([0xfb, 0xf4]); // sti; hlt
    let mut tail = counted_loop(n, &body);
    // Before the final report, tell vCPU 1 to stop.
    let done = tail.len() - 4;
    tail.splice(done..done, send_ipi(STOP_VECTOR, 1));
    bsp.extend(tail);
    let mut pong = wrmsr(X2APIC_EOI, 0);
    pong.push(0xcf); // iret
    let mut ping = wrmsr(X2APIC_EOI, 0);
    ping.extend(send_ipi(PONG_VECTOR, 0));
    ping.push(0xcf);
    let stop = vec![0xe6, DONE_PORT, 0xeb, 0xfe]; // out DONE_PORT, al; jmp $
    irq::setup(
        &g,
        &bsp,
        &[
            (PONG_VECTOR, 0x2000, pong),
            (PING_VECTOR, 0x2100, ping),
            (STOP_VECTOR, 0x2200, stop),
        ],
    )?;
    // vCPU 1: LAPIC on, say so, then idle with interrupts on.
    let mut apc = x2apic_on();
    apc.extend([0xc6, 0x06, flo, fhi, 1]); // mov byte [READY_FLAG], 1
    apc.extend(irq::IDLE);
    g.mem.write(0x3000, &apc);
    let mut s = kvm_sregs::default();
    sys("KVM_GET_SREGS", ioctl_ref(ap.fd, KVM_GET_SREGS, &mut s))?;
    (s.cs.base, s.cs.selector, s.ss.base, s.ss.selector) = (0, 0, 0, 0);
    sys("KVM_SET_SREGS", ioctl_ref(ap.fd, KVM_SET_SREGS, &mut s))?;
    let mut r = kvm_regs {
        rip: 0x3000,
        rsp: 0x7000,
        rflags: 2,
        ..Default::default()
    };
    sys("KVM_SET_REGS", ioctl_ref(ap.fd, KVM_SET_REGS, &mut r))?;

    let fd = sys("KVM_GET_STATS_FD", ioctl(g.vcpu, KVM_GET_STATS_FD, 0))?;
    let before: Vec<_> = HALT_STATS.iter().map(|s| read_stat(fd, s)).collect();
    let t = Instant::now();
    let r = thread::scope(|sc| {
        let (fd, run) = (ap.fd, ap.run as usize);
        let h = sc.spawn(move || run_to(fd, run, DONE_PORT));
        let bsp = run_to_done(&g, "ipi (vCPU 0)");
        let secs = t.elapsed().as_secs_f64();
        let apr = h
            .join()
            .unwrap_or_else(|_| Err("vCPU 1 thread panicked".into()));
        bsp.and(apr.map_err(|e| format!("ipi (vCPU 1): {e}")))
            .map(|()| secs)
    });
    stat_deltas(fd, &HALT_STATS, &before, stats);
    close(fd);
    r
}

/// Guest memory for the touch benchmarks, in 4 KiB pages: without THP a sparse
/// touch of a large slot allocates only what it touches, and a fault is one page.
fn touch_slot(g: &Guest, slot: u32, gpa: u64, len: u64, flags: u32) -> Result<Mem, String> {
    let m = Mem::new(len as usize)?;
    // SAFETY: advice on our own mapping; no memory is freed or moved.
    if unsafe { libc::madvise(m.ptr.cast(), m.len, libc::MADV_NOHUGEPAGE) } != 0 {
        return Err(format!("madvise: {}", Error::last_os_error()));
    }
    let mut region = kvm_userspace_memory_region {
        slot,
        flags,
        guest_phys_addr: gpa,
        memory_size: len,
        userspace_addr: m.addr(),
    };
    sys(
        "KVM_SET_USER_MEMORY_REGION",
        ioctl_ref(g.vm, KVM_SET_USER_MEMORY_REGION, &mut region),
    )?;
    Ok(m)
}

/// Flat 32-bit code that writes one dword every `stride` bytes from `gpa`, `n` times.
fn touch_code(gpa: u64, n: u32, stride: u32) -> Vec<u8> {
    let mut c = vec![0xbf]; // mov edi, gpa
    c.extend((gpa as u32).to_le_bytes());
    c.push(0xb9); // mov ecx, n
    c.extend(n.to_le_bytes());
    let top = c.len();
    c.extend([0x89, 0x07, 0x81, 0xc7]); // mov [edi], eax; add edi, stride
    c.extend(stride.to_le_bytes());
    let rel = top as isize - (c.len() as isize + 2);
    c.extend([0xe2, rel as i8 as u8]); // loop top
    c.extend([0xe6, DONE_PORT, 0xeb, 0xfe]);
    c
}

/// Which pass of [`touch`] is timed.
#[derive(PartialEq)]
enum Pass {
    /// The first write of fresh pages.
    First,
    /// A second write: the pages are mapped writable.
    Again,
    /// A write after KVM_GET_DIRTY_LOG write-protected the pages again.
    Logged,
}

/// Writes `n` fresh pages once (timed for [`Pass::First`]), then once more.
fn touch(kvm: RawFd, n: u32, pass: Pass, stats: &mut Stats) -> Result<f64, String> {
    let g = Guest::with_irqchip(kvm)?;
    let flags = if pass == Pass::Logged {
        KVM_MEM_LOG_DIRTY_PAGES
    } else {
        0
    };
    let _m = touch_slot(&g, 1, TOUCH_GPA, u64::from(n) * PAGE, flags)?;
    g.mem.write(0x1000, &touch_code(TOUCH_GPA, n, PAGE as u32));
    let fd = sys("KVM_GET_STATS_FD", ioctl(g.vcpu, KVM_GET_STATS_FD, 0))?;
    let before = [read_stat(fd, "pf_fixed")];
    g.flat32(0x1000)?;
    let t = Instant::now();
    run_to_done(&g, "fault-first-4k")?;
    let mut secs = t.elapsed().as_secs_f64();
    if pass == Pass::Logged {
        let mut bitmap = vec![0u64; (n as usize).div_ceil(64)];
        let mut d = uapi::kvm_dirty_log {
            slot: 1,
            ..Default::default()
        };
        d.__bindgen_anon_1.padding2 = bitmap.as_mut_ptr() as u64;
        sys(
            "KVM_GET_DIRTY_LOG",
            ioctl_ref(g.vm, KVM_GET_DIRTY_LOG, &mut d),
        )?;
        let dirty: u32 = bitmap.iter().map(|w| w.count_ones()).sum();
        if dirty != n {
            return Err(format!("fault-dirty-log: {dirty} pages dirty, want {n}"));
        }
    }
    if pass != Pass::First {
        let before = [read_stat(fd, "pf_fixed")];
        g.flat32(0x1000)?;
        let t = Instant::now();
        run_to_done(&g, "touch again")?;
        secs = t.elapsed().as_secs_f64();
        stat_deltas(fd, &["pf_fixed"], &before, stats);
    } else {
        stat_deltas(fd, &["pf_fixed"], &before, stats);
    }
    close(fd);
    Ok(secs)
}

/// First touch of fresh 4 KiB pages: the host's page fault and KVM's (NPT) fault.
fn fault_first(kvm: RawFd, n: u32, stats: &mut Stats) -> Result<f64, String> {
    touch(kvm, n, Pass::First, stats)
}

/// The same pages again: mapped, so no fault at all; the loop's own cost.
fn fault_again(kvm: RawFd, n: u32, stats: &mut Stats) -> Result<f64, String> {
    touch(kvm, n, Pass::Again, stats)
}

/// The pages written again after KVM_GET_DIRTY_LOG: one write-protection fault
/// each, which logs the page (dirty_log_perf_test's "dirty memory time").
fn fault_dirty_log(kvm: RawFd, n: u32, stats: &mut Stats) -> Result<f64, String> {
    touch(kvm, n, Pass::Logged, stats)
}

/// KVM_GET_DIRTY_LOG of a 1 GiB logged slot after the guest dirtied 4096 pages of
/// it (one every 256 KiB): fetch, clear and write-protect again.
fn get_dirty_log(kvm: RawFd, n: u32, _: &mut Stats) -> Result<f64, String> {
    const DIRTIED: u32 = 4096;
    let g = Guest::with_irqchip(kvm)?;
    let _m = touch_slot(&g, 1, DIRTY_GPA, GIB, KVM_MEM_LOG_DIRTY_PAGES)?;
    g.mem.write(
        0x1000,
        &touch_code(DIRTY_GPA, DIRTIED, (GIB / u64::from(DIRTIED)) as u32),
    );
    let mut bitmap = vec![0u64; (GIB / PAGE / 64) as usize];
    let mut d = uapi::kvm_dirty_log {
        slot: 1,
        ..Default::default()
    };
    d.__bindgen_anon_1.padding2 = bitmap.as_mut_ptr() as u64;
    let mut total = 0.0;
    for i in 0..n {
        g.flat32(0x1000)?;
        run_to_done(&g, "get-dirty-log")?;
        let t = Instant::now();
        sys(
            "KVM_GET_DIRTY_LOG",
            ioctl_ref(g.vm, KVM_GET_DIRTY_LOG, &mut d),
        )?;
        total += t.elapsed().as_secs_f64();
        let dirty: u32 = bitmap.iter().map(|w| w.count_ones()).sum();
        // The first pass also counts what the guest's first touch logged; later
        // ones exactly the pages written again.
        if dirty != DIRTIED {
            return Err(format!(
                "get-dirty-log pass {i}: {dirty} pages dirty, want {DIRTIED}"
            ));
        }
    }
    // The log was cleared: with no write since, nothing is dirty.
    sys(
        "KVM_GET_DIRTY_LOG",
        ioctl_ref(g.vm, KVM_GET_DIRTY_LOG, &mut d),
    )?;
    let dirty: u32 = bitmap.iter().map(|w| w.count_ones()).sum();
    if dirty != 0 {
        return Err(format!(
            "get-dirty-log: {dirty} pages dirty with no write since"
        ));
    }
    Ok(total)
}

/// A 2 MiB memslot added and deleted again, on a VM with a vCPU.
fn memslot_add_delete(kvm: RawFd, n: u32, _: &mut Stats) -> Result<f64, String> {
    let g = Guest::with_irqchip(kvm)?;
    let m = Mem::new(MEM_SIZE)?;
    let mut region = kvm_userspace_memory_region {
        slot: 1,
        flags: 0,
        guest_phys_addr: TOUCH_GPA,
        memory_size: MEM_SIZE as u64,
        userspace_addr: m.addr(),
    };
    let t = Instant::now();
    for _ in 0..n {
        region.memory_size = MEM_SIZE as u64;
        sys(
            "add",
            ioctl_ref(g.vm, KVM_SET_USER_MEMORY_REGION, &mut region),
        )?;
        region.memory_size = 0;
        sys(
            "delete",
            ioctl_ref(g.vm, KVM_SET_USER_MEMORY_REGION, &mut region),
        )?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// KVM_RUN with immediate_exit set: the ioctl's own entry and exit.
fn immediate_exit_run(kvm: RawFd, n: u32, stats: &mut Stats) -> Result<f64, String> {
    let g = Guest::with_irqchip(kvm)?;
    g.real_mode(0x1000, 0)?;
    g.set_immediate_exit(1);
    let fd = sys("KVM_GET_STATS_FD", ioctl(g.vcpu, KVM_GET_STATS_FD, 0))?;
    let before = [read_stat(fd, "exits"), read_stat(fd, "signal_exits")];
    let t = Instant::now();
    for _ in 0..n {
        match ioctl(g.vcpu, KVM_RUN, 0) {
            Err(libc::EINTR) => {}
            r => return Err(format!("KVM_RUN: {}, want -EINTR", show(r))),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    stat_deltas(fd, &["exits", "signal_exits"], &before, stats);
    close(fd);
    Ok(secs)
}

/// Parses `--reps N --scale F --only NAME` after `--bench`.
fn parse(args: &[String]) -> Result<(u32, f64, Option<String>), String> {
    let (mut reps, mut scale, mut only) = (5, 1.0, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().ok_or(format!("{a} needs a value"))?;
        match a.as_str() {
            "--reps" => reps = v.parse().map_err(|_| format!("--reps {v}"))?,
            "--scale" => scale = v.parse().map_err(|_| format!("--scale {v}"))?,
            "--only" => only = Some(v.clone()),
            _ => return Err(format!("unknown option {a}")),
        }
    }
    if let Some(o) = &only {
        if !BENCHES.iter().any(|b| b.name == o) {
            return Err(format!("no benchmark {o}"));
        }
    }
    Ok((reps, scale, only))
}

/// The `--bench` entry point: every benchmark `reps` times; exits 1 on any error.
pub(crate) fn main(kvm: RawFd, args: &[String]) -> i32 {
    let (reps, scale, only) = match parse(args) {
        Ok(p) => p,
        Err(e) => {
            let names: Vec<_> = BENCHES.iter().map(|b| b.name).collect();
            eprintln!("kvm-guests --bench: {e}\nusage: kvm-guests --bench [--reps N] [--scale F] [--only {}]", names.join("|"));
            return 2;
        }
    };
    let mut failed = 0;
    for b in BENCHES
        .iter()
        .filter(|b| only.as_deref().is_none_or(|o| o == b.name))
    {
        let ops = ((f64::from(b.ops) * scale) as u32).max(1);
        for rep in 0..reps {
            let mut stats = Vec::new();
            match (b.run)(kvm, ops, &mut stats) {
                Ok(secs) => {
                    println!(
                        "bench {} {rep} {:.1} {ops}",
                        b.name,
                        secs * 1e9 / f64::from(ops)
                    );
                    for (s, v) in stats {
                        println!("bench-stat {} {s} {v}", b.name);
                    }
                }
                Err(e) => {
                    println!("not ok - bench {}: {e}", b.name);
                    failed += 1;
                    break;
                }
            }
        }
    }
    println!("bench: {} benchmarks, {failed} failed", BENCHES.len());
    i32::from(failed != 0)
}
