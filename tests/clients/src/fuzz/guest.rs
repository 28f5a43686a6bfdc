//! Hostile guests: random register state and CPU mode, and code that is random
//! bytes or a storm aimed at one part of KVM (port I/O to the in-kernel PIC/PIT,
//! MMIO to the LAPIC/IOAPIC and to nothing, IPIs including INIT and SIPI, page
//! tables rewritten under the guest's own feet, MSRs, triple faults).

use std::cell::Cell;
use std::ptr;

use kvm_abi::ioctl::{KVM_CREATE_IRQCHIP, KVM_RUN, KVM_SET_CPUID2, KVM_SET_USER_MEMORY_REGION};
use kvm_abi::uapi;

use super::exec::{table_cmd, Fuzzer, Res, CHUNK, VCPUS, VMS};
use super::report::errno;
use super::rng::Rng;
use super::table::MSR_POOL;

/// Guest-physical layout inside memslot 0 (gpa 0, backed by chunk 0).
const GDT: u64 = 0x500;
const CODE: u64 = 0x1000;
const STACK: u64 = 0x8000;
const PML4: u64 = 0x10000;
const PDPT: u64 = 0x11000;
/// Four page directories of 2 MiB pages (PAE and long mode), or the one 32-bit
/// page directory of 4 MiB pages at PML4's place.
const PDS: u64 = 0x12000;
const BASE_SLOT: u64 = 2 << 20;
/// Where a template tells the fuzzer it is done: `out 0xe9, al`.
const DONE_PORT: u16 = 0xe9;
const LAPIC: u32 = 0xfee0_0000;
const IOAPIC: u32 = 0xfec0_0000;
/// A KVM_RUN longer than this is interrupted (a guest that loops without exits).
const RUN_LIMIT_NS: i64 = 50_000_000;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Real,
    Prot16,
    Prot32,
    Paged32,
    Pae,
    Long,
}

impl Mode {
    fn bits16(self) -> bool {
        matches!(self, Mode::Real | Mode::Prot16)
    }
    fn paged(self) -> bool {
        matches!(self, Mode::Paged32 | Mode::Pae | Mode::Long)
    }
}

/// x86 encodings the templates are built from; absolute addresses through a SIB
/// byte with no base, which means the same in 32- and 64-bit mode.
struct Code {
    b: Vec<u8>,
    bits16: bool,
}

impl Code {
    fn mov_dx(&mut self, v: u16) {
        if !self.bits16 {
            self.b.push(0x66);
        }
        self.b.push(0xba);
        self.b.extend(v.to_le_bytes());
    }
    fn mov_al(&mut self, v: u8) {
        self.b.extend([0xb0, v]);
    }
    fn mov_r32(&mut self, opcode: u8, v: u32) {
        if self.bits16 {
            self.b.push(0x66);
        }
        self.b.push(opcode);
        self.b.extend(v.to_le_bytes());
    }
    fn store(&mut self, addr: u32, v: u32) {
        self.b.extend([0xc7, 0x04, 0x25]);
        self.b.extend(addr.to_le_bytes());
        self.b.extend(v.to_le_bytes());
    }
    fn load(&mut self, addr: u32) {
        self.b.extend([0x8b, 0x04, 0x25]);
        self.b.extend(addr.to_le_bytes());
    }
    fn invlpg(&mut self, addr: u32) {
        self.b.extend([0x0f, 0x01, 0x3c, 0x25]);
        self.b.extend(addr.to_le_bytes());
    }
    fn done(&mut self) {
        self.b.extend([0xe6, DONE_PORT as u8, 0xf4, 0xeb, 0xfe]);
    }
}

/// The templates (names are what the log shows).
const TEMPLATES: &[&str] = &[
    "random",
    "random",
    "pio",
    "string-pio",
    "mmio",
    "ipi",
    "pagetable",
    "msr",
    "triple",
    "cpuid",
    "timer",
];

const PORTS: &[u16] = &[
    0x20, 0x21, 0xa0, 0xa1, 0x40, 0x41, 0x42, 0x43, 0x61, 0x70, 0x71, 0x80, 0x92, 0x3f8, 0x4d0,
    0x4d1, 0xcf8, 0xcfc, 0xffff,
];
const LAPIC_REGS: &[u32] = &[
    0x20, 0x30, 0x80, 0x90, 0xa0, 0xb0, 0xd0, 0xe0, 0xf0, 0x100, 0x200, 0x280, 0x2f0, 0x300, 0x310,
    0x320, 0x330, 0x340, 0x350, 0x360, 0x370, 0x380, 0x390, 0x3e0, 0x3f0, 0x3fc, 0xff0,
];

fn template(r: &mut Rng, mode: Mode, which: &str) -> Vec<u8> {
    let mut c = Code {
        b: Vec::new(),
        bits16: mode.bits16(),
    };
    let n = 4 + r.below(28);
    let wide = !mode.bits16();
    match which {
        "pio" => {
            for _ in 0..n {
                let port = if r.chance(7, 8) {
                    *r.pick(PORTS)
                } else {
                    r.below(0x10000) as u16
                };
                c.mov_dx(port);
                c.mov_al(r.next() as u8);
                c.b.push(*r.pick(&[0xee, 0xec, 0xef, 0xed]));
            }
        }
        "string-pio" => {
            let port = *r.pick(PORTS);
            c.mov_dx(port);
            c.mov_r32(0xb9, *r.pick(&[0, 1, 2, 16, 0x1000, 0x1_0000]));
            c.mov_r32(
                0xbe,
                *r.pick(&[0x2000, 0x1f_ff00, 0x20_0000 - 1, 0xffff_0000]),
            );
            c.mov_r32(0xbf, *r.pick(&[0x3000, 0x1f_ff00, LAPIC, 0x4000_0000]));
            // rep outs/ins (byte or dword), or rep movs into MMIO.
            let op = *r.pick(&[0x6e, 0x6f, 0x6c, 0x6d, 0xa4, 0xa5]);
            c.b.extend([0xf3, op]);
        }
        "mmio" if wide => {
            for _ in 0..n {
                let addr = match r.below(6) {
                    0..=2 => LAPIC + *r.pick(LAPIC_REGS) + if r.chance(1, 10) { 1 } else { 0 },
                    3 => IOAPIC + *r.pick(&[0, 0x10, 0x20, 0x40]),
                    4 => *r.pick(&[0xd000_0000, 0xfed0_0000, 0x4000_0000, BASE_SLOT as u32]),
                    _ => r.next() as u32 & !3,
                };
                if r.chance(2, 3) {
                    c.store(addr, r.int() as u32);
                } else {
                    c.load(addr);
                }
            }
        }
        "ipi" if wide => {
            c.store(LAPIC + 0xf0, 0x1ff);
            for _ in 0..n {
                let mode = *r.pick(&[0u32, 1, 2, 4, 5, 5, 6, 6, 7]);
                let dest = *r.pick(&[0u32, 1, 2, 3, 0xff]);
                let short = r.below(4) as u32;
                let lo = r.below(256) as u32
                    | mode << 8
                    | (r.below(2) as u32) << 14
                    | (r.below(2) as u32) << 15
                    | short << 18;
                c.store(LAPIC + 0x310, dest << 24);
                c.store(LAPIC + 0x300, lo);
            }
        }
        "pagetable" if mode.paged() => {
            let (pd, step, shift) = if mode == Mode::Paged32 {
                (PML4, 4u32, 22u32)
            } else {
                (PDS, 8, 21)
            };
            for _ in 0..n {
                let i = *r.pick(&[0u32, 1, 2, 3, 7, 0x1f7])
                    % if mode == Mode::Paged32 { 1024 } else { 512 };
                let v = match r.below(5) {
                    0 => 0,
                    1 => (i << shift) | 0x83,
                    2 => LAPIC | 0x83,
                    3 => (i << shift) | 0x83 | 0x1000,
                    _ => r.next() as u32,
                };
                c.store(pd as u32 + i * step, v);
                if !mode.bits16() && step == 8 && r.chance(1, 3) {
                    // High half of a PAE/long entry: reserved bits, NX.
                    c.store(
                        pd as u32 + i * step + 4,
                        *r.pick(&[0x8000_0000, 0x000f_0000, 1]),
                    );
                }
                c.invlpg(i << shift);
                c.load((i << shift) + 0x2000);
            }
            if r.chance(1, 2) {
                // mov eax, cr3; mov cr3, eax: a full flush.
                c.b.extend([0x0f, 0x20, 0xd8, 0x0f, 0x22, 0xd8]);
            }
        }
        "msr" => {
            for _ in 0..n.min(8) {
                c.mov_r32(0xb9, *r.pick(MSR_POOL));
                if r.chance(1, 2) {
                    c.b.extend([0x0f, 0x32]);
                } else {
                    c.mov_r32(0xb8, r.int() as u32);
                    c.mov_r32(0xba, if r.chance(1, 2) { 0 } else { r.int() as u32 });
                    c.b.extend([0x0f, 0x30]);
                }
            }
        }
        "triple" => {
            c.b.extend(*r.pick(&[&[0x0f, 0x0b][..], &[0xcc], &[0xcd, 0x80], &[0xf4]]));
        }
        "cpuid" => {
            for _ in 0..n.min(8) {
                c.mov_r32(
                    0xb8,
                    *r.pick(&[
                        0,
                        1,
                        7,
                        0xb,
                        0xd,
                        0x8000_0000,
                        0x8000_0001,
                        0x4000_0000,
                        0x4000_0001,
                        0xffff_ffff,
                    ]),
                );
                c.mov_r32(0xb9, r.below(3) as u32);
                c.b.extend([0x0f, 0xa2]);
            }
        }
        "timer" if wide => {
            c.store(LAPIC + 0xf0, 0x1ff);
            c.store(LAPIC + 0x3e0, *r.pick(&[0, 0xb, 3]));
            c.store(LAPIC + 0x320, 0x30 | (r.below(3) as u32) << 17);
            c.store(LAPIC + 0x380, *r.pick(&[1, 16, 1000, 0x10_0000]));
            // sti; hlt: the interrupt meets an IDT of limit 0 (or the IVT).
            c.b.extend([0xfb, 0xf4]);
        }
        _ => {
            let mut b = vec![0u8; 16 + r.index(496)];
            r.fill(&mut b);
            c.b.extend(b);
        }
    }
    c.done();
    c.b
}

fn write_guest(f: &Fuzzer, gpa: u64, bytes: &[u8]) {
    if !f.chunks[0].mapped || gpa as usize + bytes.len() > CHUNK {
        return;
    }
    // SAFETY: inside chunk 0, mapped (checked); no vCPU runs while we write.
    unsafe {
        ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            (f.chunks[0].addr + gpa) as *mut u8,
            bytes.len(),
        )
    };
}

fn page_tables(f: &Fuzzer, mode: Mode) {
    let gdt: [u64; 5] = [
        0,
        0x00cf_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        0x00af_9b00_0000_ffff,
        0x008f_9b00_0000_ffff,
    ];
    let b: Vec<u8> = gdt.iter().flat_map(|e| e.to_le_bytes()).collect();
    write_guest(f, GDT, &b);
    match mode {
        Mode::Paged32 => {
            let pd: Vec<u8> = (0..1024u32)
                .flat_map(|i| ((i << 22) | 0x83).to_le_bytes())
                .collect();
            write_guest(f, PML4, &pd);
        }
        Mode::Pae | Mode::Long => {
            let flags = if mode == Mode::Long { 3 } else { 1 };
            let pdpt: Vec<u8> = (0..4u64)
                .flat_map(|k| ((PDS + k * 0x1000) | flags).to_le_bytes())
                .collect();
            write_guest(f, PDPT, &pdpt);
            write_guest(f, PML4, &(PDPT | 3).to_le_bytes());
            let pds: Vec<u8> = (0..2048u64)
                .flat_map(|i| ((i << 21) | 0x83).to_le_bytes())
                .collect();
            write_guest(f, PDS, &pds);
        }
        _ => {}
    }
}

fn segment(sel: u16, type_: u8, db: u8, l: u8) -> uapi::kvm_segment {
    uapi::kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: sel,
        type_,
        present: 1,
        dpl: 0,
        db,
        s: 1,
        l,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn sregs_for(mut s: uapi::kvm_sregs, mode: Mode, r: &mut Rng) -> uapi::kvm_sregs {
    s.gdt.base = GDT;
    s.gdt.limit = 0x27;
    s.idt.base = 0;
    s.idt.limit = if r.chance(3, 4) { 0 } else { 0x3ff };
    let pe = 1 | 0x10 | 0x20;
    match mode {
        Mode::Real => {
            let mut cs = s.cs;
            cs.base = 0;
            cs.selector = 0;
            s.cs = cs;
            s.cr0 = 0x10;
        }
        Mode::Prot16 => {
            s.cs = segment(0x20, 0xb, 0, 0);
            s.cr0 = pe;
        }
        _ => {
            s.cs = segment(0x08, 0xb, 1, 0);
            s.cr0 = pe;
        }
    }
    if !matches!(mode, Mode::Real) {
        let d = segment(0x10, 0x3, 1, 0);
        (s.ds, s.es, s.fs, s.gs, s.ss) = (d, d, d, d, d);
    }
    match mode {
        Mode::Paged32 => {
            s.cr0 |= 1 << 31;
            s.cr4 = 0x10;
            s.cr3 = PML4;
        }
        Mode::Pae => {
            s.cr0 |= 1 << 31;
            s.cr4 = 0x20;
            s.cr3 = PDPT;
        }
        Mode::Long => {
            s.cr0 |= 1 << 31;
            s.cr4 = 0x20;
            s.cr3 = PML4;
            s.efer = 0x500;
            s.cs = segment(0x18, 0xb, 0, 1);
        }
        _ => {}
    }
    if r.chance(1, 8) {
        // Mode bits the hardware may refuse: EFER.NX/SCE, CR4 extras, CR0.WP/CD.
        s.efer |= *r.pick(&[1, 0x800, 0x1000, 0x4000]);
        s.cr4 |= *r.pick(&[0x80, 0x200, 0x400, 0x4_0000, 0x10_0000, 0x20_0000]);
        s.cr0 |= *r.pick(&[0x1_0000, 0x4000_0000, 0x2000_0000]);
    }
    s
}

thread_local! {
    static TIMER: Cell<Option<libc::timer_t>> = const { Cell::new(None) };
}

extern "C" fn on_kick(_: libc::c_int) {}

/// SIGUSR1 without SA_RESTART: it only makes a blocked KVM_RUN return EINTR.
pub fn install_kick() {
    // SAFETY: installing a handler that does nothing.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as usize;
        libc::sigaction(libc::SIGUSR1, &sa, ptr::null_mut());
    }
}

/// Arms (ns > 0) or disarms this thread's one-shot kick timer.
pub fn kick_after(ns: i64) {
    let t = TIMER.with(|t| {
        if t.get().is_none() {
            // SAFETY: a per-thread POSIX timer that signals this thread.
            unsafe {
                let mut ev: libc::sigevent = std::mem::zeroed();
                ev.sigev_notify = libc::SIGEV_THREAD_ID;
                ev.sigev_signo = libc::SIGUSR1;
                ev.sigev_notify_thread_id = libc::gettid();
                let mut id: libc::timer_t = ptr::null_mut();
                if libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut id) == 0 {
                    t.set(Some(id));
                }
            }
        }
        t.get()
    });
    let Some(t) = t else { return };
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: ns / 1_000_000_000,
            tv_nsec: ns % 1_000_000_000,
        },
    };
    // SAFETY: arming the timer created above.
    unsafe { libc::timer_settime(t, 0, &spec, ptr::null_mut()) };
}

/// One KVM_RUN with the kick timer; Err(errno) or the exit reason.
pub fn run_once(fd: i32) -> Result<u32, i32> {
    kick_after(RUN_LIMIT_NS);
    // SAFETY: KVM_RUN takes no argument.
    let r = unsafe { libc::ioctl(fd, KVM_RUN as libc::c_ulong, 0) };
    let e = errno();
    kick_after(0);
    if r < 0 {
        Err(e)
    } else {
        Ok(0)
    }
}

fn exit_desc(run: *mut uapi::kvm_run) -> (String, bool) {
    // SAFETY: the vCPU's kvm_run mapping, read after KVM_RUN returned.
    let rs = unsafe { ptr::read_volatile(run) };
    match rs.exit_reason {
        uapi::KVM_EXIT_IO => {
            // SAFETY: the io member is valid for KVM_EXIT_IO.
            let io = unsafe { rs.__bindgen_anon_1.io };
            let d = if io.direction == uapi::KVM_EXIT_IO_OUT as u8 {
                "out"
            } else {
                "in"
            };
            let done = io.port == DONE_PORT;
            (
                format!("io {d} {:#x} size {} count {}", io.port, io.size, io.count),
                done,
            )
        }
        uapi::KVM_EXIT_MMIO => {
            // SAFETY: the mmio member is valid for KVM_EXIT_MMIO.
            let m = unsafe { rs.__bindgen_anon_1.mmio };
            (
                format!(
                    "mmio {} {:#x} len {}",
                    if m.is_write != 0 { "w" } else { "r" },
                    m.phys_addr,
                    m.len
                ),
                false,
            )
        }
        uapi::KVM_EXIT_HLT => ("hlt".into(), true),
        uapi::KVM_EXIT_SHUTDOWN => ("shutdown".into(), true),
        uapi::KVM_EXIT_FAIL_ENTRY => ("fail_entry".into(), true),
        uapi::KVM_EXIT_INTERNAL_ERROR => {
            // SAFETY: the internal member is valid for this exit.
            let s = unsafe { rs.__bindgen_anon_1.internal.suberror };
            (format!("internal {s}"), true)
        }
        uapi::KVM_EXIT_DEBUG => ("debug".into(), false),
        uapi::KVM_EXIT_IRQ_WINDOW_OPEN => ("irq_window".into(), false),
        uapi::KVM_EXIT_X86_RDMSR | uapi::KVM_EXIT_X86_WRMSR => {
            (format!("msr {}", rs.exit_reason), true)
        }
        r => (format!("exit {r}"), true),
    }
}

/// A hostile guest: memory, maybe an irqchip and CPUID, a mode, code, and up to
/// 16 runs.
pub fn hostile_guest(f: &mut Fuzzer, r: &mut Rng) {
    let (k, j) = (r.index(VMS), r.index(VCPUS));
    let Some(vm) = f.ensure_vm(k) else { return };
    let vname = format!("vm{k}");
    if !f.chunks[0].mapped {
        let res = f.remap(0);
        f.log("chunk0", "remap", "", &res, None);
    }
    let region = uapi::kvm_userspace_memory_region {
        slot: 0,
        flags: if r.chance(1, 4) {
            uapi::KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        },
        guest_phys_addr: 0,
        memory_size: BASE_SLOT,
        userspace_addr: f.chunks[0].addr,
    };
    // SAFETY: viewing a plain C struct as bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            &region as *const _ as *const u8,
            std::mem::size_of_val(&region),
        )
    };
    let p = f.stage(bytes);
    let res = f.ioctl(vm, KVM_SET_USER_MEMORY_REGION, p);
    f.log(
        &vname,
        "SET_USER_MEMORY_REGION",
        &format!("base flags={}", region.flags),
        &res,
        None,
    );
    if r.chance(1, 3) {
        let res = f.ioctl(vm, KVM_CREATE_IRQCHIP, 0);
        f.log(&vname, "CREATE_IRQCHIP", "", &res, None);
    }
    let Some(vcpu) = f.ensure_vcpu(k, j) else {
        return;
    };
    let cname = format!("vcpu{k}.{j}");
    if r.chance(1, 2) {
        if let Some(c) = f.supported_cpuid() {
            let p = f.stage(&c);
            let res = f.ioctl(vcpu, KVM_SET_CPUID2, p);
            f.log(&cname, "SET_CPUID2", "supported", &res, None);
        }
    }
    let mode = *r.pick(&[
        Mode::Real,
        Mode::Prot16,
        Mode::Prot32,
        Mode::Paged32,
        Mode::Pae,
        Mode::Long,
        Mode::Long,
    ]);
    let which = *r.pick(TEMPLATES);
    page_tables(f, mode);
    let code = template(r, mode, which);
    write_guest(f, CODE, &code);

    let mut s = uapi::kvm_sregs::default();
    let sp = &mut s as *mut _ as u64;
    let got = f.ioctl(vcpu, table_cmd("GET_SREGS"), sp);
    if let Res::Ok(_) = got {
        let s2 = sregs_for(s, mode, r);
        let res = f.ioctl(vcpu, table_cmd("SET_SREGS"), &s2 as *const _ as u64);
        let d = format!(
            "{mode:?} cr0={:#x} cr4={:#x} efer={:#x} idt={:#x}",
            s2.cr0, s2.cr4, s2.efer, s2.idt.limit
        );
        f.log(&cname, "SET_SREGS", &d, &res, None);
    }
    let regs = uapi::kvm_regs {
        rip: CODE + if r.chance(1, 10) { r.below(16) } else { 0 },
        rsp: STACK,
        rflags: 2
            | if r.chance(1, 4) { 0x200 } else { 0 }
            | if r.chance(1, 16) { 0x100 } else { 0 },
        rax: r.int(),
        rcx: r.int(),
        rsi: 0x2000,
        rdi: 0x3000,
        ..Default::default()
    };
    let res = f.ioctl(vcpu, table_cmd("SET_REGS"), &regs as *const _ as u64);
    let d = format!("{which} rip={:#x} rflags={:#x}", regs.rip, regs.rflags);
    f.log(&cname, "SET_REGS", &d, &res, None);

    let Some(run) = f.ensure_run(k, j) else {
        return;
    };
    f.guest_runs += 1;
    let runs = 1 + r.below(16);
    for _ in 0..runs {
        let imm = r.chance(1, 16);
        // SAFETY: the kvm_run mapping of this vCPU; no KVM_RUN is in flight.
        unsafe { ptr::addr_of_mut!((*run).immediate_exit).write_volatile(imm as u8) };
        if r.chance(1, 8) {
            // NMI only: SMIs need SMM, which kvm-rs does not have (docs/fuzz.md).
            let cmd = table_cmd("NMI");
            let res = f.ioctl(vcpu, cmd, 0);
            f.log(&cname, "inject", "", &res, None);
        }
        f.ioctls += 1;
        f.kvm_runs += 1;
        match run_once(vcpu) {
            Err(libc::EINTR) if !imm => {
                // Interrupted somewhere in the guest: its state is timing's.
                f.taint(k, j);
                f.log(
                    &cname,
                    "KVM_RUN",
                    "",
                    &Res::Err(libc::EINTR),
                    Some((0, false)),
                );
                break;
            }
            Err(e) => {
                f.log(&cname, "KVM_RUN", "", &Res::Err(e), None);
                if !imm {
                    break;
                }
            }
            Ok(_) => {
                let (d, stop) = exit_desc(run);
                f.log(&cname, "KVM_RUN", &d, &Res::Ok(0), None);
                if stop {
                    break;
                }
            }
        }
    }
    // SAFETY: as above.
    unsafe { ptr::addr_of_mut!((*run).immediate_exit).write_volatile(0) };
}
