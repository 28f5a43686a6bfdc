// SPDX-License-Identifier: GPL-2.0-only
//! vCPUs: KVM_CREATE_VCPU, the vCPU fd (ioctls, mmap of kvm_run and the PIO page)
//! and KVM_RUN's loop (upstream vcpu_run()/vcpu_enter_guest()), which enters the
//! guest through the vendor and handles exits in the kernel or hands them to
//! userspace through kvm_run.

use core::sync::atomic::{AtomicU32, Ordering};
use kernel::ffi::{c_long, c_uint, c_ulong, c_void};
use kernel::new_mutex;
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};

use crate::abi::{ioctl, uapi};
use crate::cpuid::{self, Entry};
use crate::pages::Pages;
use crate::sregs;
use crate::vm::Vm;
use crate::x86_ops::{exit, reg, Exit, GuestRegs, VendorVcpu, X86VendorOps};
use crate::{dev, glue, user, vendor};

const PAGE_SIZE: usize = 4096;

/// kvm_run field offsets (the union starts at 32 on every ABI).
mod run {
    pub(super) const IMMEDIATE_EXIT: usize = 1;
    pub(super) const EXIT_REASON: usize = 8;
    pub(super) const U: usize = 32;
    const _: () = assert!(core::mem::offset_of!(super::uapi::kvm_run, exit_reason) == EXIT_REASON);
    const _: () =
        assert!(core::mem::offset_of!(super::uapi::kvm_run, immediate_exit) == IMMEDIATE_EXIT);
    const _: () = assert!(core::mem::offset_of!(super::uapi::kvm_run, __bindgen_anon_1) == U);
}

/// A userspace-completed instruction: what to finish on the next KVM_RUN
/// (upstream's complete_userspace_io).
#[derive(Clone, Copy)]
enum Pending {
    None,
    /// IN/OUT of `size` bytes at `rip`; IN data comes from the PIO page.
    Pio {
        input: bool,
        size: u8,
        rip: u64,
        next_rip: u64,
    },
}

struct Vendor(VendorVcpu);
// SAFETY: the vendor state is only touched under the vCPU mutex.
unsafe impl Send for Vendor {}

struct Fpu(*mut c_void);
// SAFETY: as above.
unsafe impl Send for Fpu {}

struct State {
    vendor: Vendor,
    fpu: Fpu,
    regs: GuestRegs,
    pending: Pending,
    cpuid: KVec<Entry>,
    mp_state: u32,
    apic_base: u64,
    /// The VM's TLB generation this vCPU last flushed for.
    tlb_gen: u64,
}

#[pin_data(PinnedDrop)]
pub(crate) struct Vcpu {
    pub(crate) id: u32,
    run: Pages,
    pio: Pages,
    /// CPU number + 1 while in guest mode, 0 outside (see Vm::flush_all).
    guest_cpu: AtomicU32,
    #[pin]
    state: Mutex<State>,
}

fn ops() -> Result<&'static X86VendorOps> {
    vendor::current().ok_or(ENODEV)
}

/// The reset RFLAGS (bit 1 always set) and RIP (upstream kvm_vcpu_reset()).
const RESET_RIP: u64 = 0xfff0;
const RFLAGS_FIXED: u64 = 0x2;

impl Vcpu {
    pub(crate) fn new(id: u32) -> Result<Arc<Self>> {
        let ops = ops()?;
        // SAFETY: returns an owned vendor vCPU or null.
        let v = unsafe { (ops.vcpu_create)() };
        if v.is_null() {
            return Err(ENOMEM);
        }
        let vendor = Vendor(v);
        // SAFETY: a plain allocation, owned by State (freed in PinnedDrop).
        let fpu = Fpu(unsafe { glue::kvm_glue_fpu_alloc() });
        let regs = reset_regs(&[]);
        let state = State {
            vendor,
            fpu,
            regs,
            pending: Pending::None,
            cpuid: KVec::new(),
            mp_state: uapi::KVM_MP_STATE_RUNNABLE,
            apic_base: 0xfee0_0000 | 1 << 11 | if id == 0 { 1 << 8 } else { 0 },
            tlb_gen: 0,
        };
        if state.fpu.0.is_null() {
            drop_state(&state);
            return Err(ENOMEM);
        }
        Arc::pin_init(
            try_pin_init!(Vcpu {
                id,
                run: Pages::new(PAGE_SIZE)?,
                pio: Pages::new(PAGE_SIZE)?,
                guest_cpu: AtomicU32::new(0),
                state <- new_mutex!(state),
            }),
            GFP_KERNEL,
        )
    }

    /// If the vCPU is in guest mode, makes it exit and waits until it has.
    pub(crate) fn kick(&self) {
        let c = self.guest_cpu.load(Ordering::SeqCst);
        if c != 0 {
            // SAFETY: an online CPU number; waits for an IPI only.
            unsafe { glue::kvm_glue_kick_cpu(c - 1) };
        }
    }

    fn run_ptr(&self, off: usize) -> *mut u8 {
        // Callers pass offsets inside the page (constants below PAGE_SIZE).
        self.run.as_ptr().wrapping_add(off % PAGE_SIZE)
    }

    fn run_write<T: Copy>(&self, off: usize, v: T) {
        // SAFETY: inside the kvm_run page (run_ptr), naturally aligned per the ABI; userspace may access it concurrently, hence volatile.
        unsafe { self.run_ptr(off).cast::<T>().write_volatile(v) }
    }

    fn run_read_u8(&self, off: usize) -> u8 {
        // SAFETY: as run_write.
        unsafe { self.run_ptr(off).read_volatile() }
    }

    fn set_exit(&self, reason: u32) {
        self.run_write(run::EXIT_REASON, reason);
    }

    fn pio_data(&self) -> *mut u8 {
        self.pio.as_ptr()
    }

    fn ioctl(&self, vm: &Vm, cmd: u32, arg: usize) -> Result<isize> {
        vm.check_owner()?;
        let ops = ops()?;
        let mut st = self.state.lock();
        match cmd {
            ioctl::KVM_RUN => {
                if arg != 0 {
                    return Err(EINVAL);
                }
                self.vcpu_run(vm, ops, &mut st)
            }
            ioctl::KVM_GET_REGS => {
                user::write(arg, &get_regs(&st.regs))?;
                Ok(0)
            }
            ioctl::KVM_SET_REGS => {
                let r: uapi::kvm_regs = user::read(arg)?;
                set_regs(&mut st.regs, &r);
                Ok(0)
            }
            ioctl::KVM_GET_SREGS => {
                let mut s = uapi::kvm_sregs::default();
                // SAFETY: a live vendor vCPU under the mutex; `s` is a kvm_sregs.
                unsafe { (ops.get_sregs)(st.vendor.0, core::ptr::from_mut(&mut s).cast()) };
                s.apic_base = st.apic_base;
                user::write(arg, &s)?;
                Ok(0)
            }
            ioctl::KVM_SET_SREGS => {
                let s: uapi::kvm_sregs = user::read(arg)?;
                let l1 = cpuid::find(&st.cpuid, 1, 0).map_or(0, |e| e.ecx);
                let (b7, c7) = cpuid::find(&st.cpuid, 7, 0).map_or((0, 0), |e| (e.ebx, e.ecx));
                let ok = sregs::sregs_valid(
                    s.cr0,
                    s.cr3,
                    s.cr4,
                    s.efer,
                    s.cs.l != 0,
                    sregs::cr4_allowed(l1, b7, c7),
                    cpuid::maxphyaddr(&st.cpuid),
                ) && s.efer & !cpuid::efer_allowed(&st.cpuid) == 0;
                if !ok {
                    return Err(EINVAL);
                }
                // SAFETY: as KVM_GET_SREGS.
                let r = unsafe { (ops.set_sregs)(st.vendor.0, core::ptr::from_ref(&s).cast()) };
                if r != 0 {
                    return Err(Error::from_errno(r));
                }
                st.apic_base = s.apic_base;
                Ok(0)
            }
            ioctl::KVM_SET_CPUID2 => {
                let h: CpuidHeader = user::read(arg)?;
                if h.nent as usize > cpuid::MAX_ENTRIES {
                    return Err(E2BIG);
                }
                let raw: KVec<uapi::kvm_cpuid_entry2> =
                    user::read_array(arg + size_of::<CpuidHeader>(), h.nent as usize)?;
                let mut entries = KVec::with_capacity(raw.len(), GFP_KERNEL)?;
                for e in raw.iter() {
                    entries.push(from_uapi(e), GFP_KERNEL)?;
                }
                st.cpuid = entries;
                Ok(0)
            }
            ioctl::KVM_GET_CPUID2 => {
                let mut h: CpuidHeader = user::read(arg)?;
                if (h.nent as usize) < st.cpuid.len() {
                    return Err(E2BIG);
                }
                let mut out = KVec::with_capacity(st.cpuid.len(), GFP_KERNEL)?;
                for e in st.cpuid.iter() {
                    out.push(to_uapi(e), GFP_KERNEL)?;
                }
                user::write_array(arg + size_of::<CpuidHeader>(), &out)?;
                h.nent = st.cpuid.len() as u32;
                user::write(arg, &h)?;
                Ok(0)
            }
            ioctl::KVM_GET_MP_STATE => {
                user::write(
                    arg,
                    &uapi::kvm_mp_state {
                        mp_state: st.mp_state,
                    },
                )?;
                Ok(0)
            }
            ioctl::KVM_SET_MP_STATE => {
                let m: uapi::kvm_mp_state = user::read(arg)?;
                // Without an in-kernel LAPIC only RUNNABLE is a state KVM can be in.
                if m.mp_state != uapi::KVM_MP_STATE_RUNNABLE {
                    return Err(EINVAL);
                }
                st.mp_state = m.mp_state;
                Ok(0)
            }
            // kvm_arch_vcpu_ioctl() answers unknown commands with -EINVAL.
            _ => Err(EINVAL),
        }
    }
}

/// The header of `struct kvm_cpuid2` (its entries follow).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct CpuidHeader {
    pub(crate) nent: u32,
    pub(crate) padding: u32,
}
// SAFETY: two u32s.
unsafe impl user::Pod for CpuidHeader {}

pub(crate) fn from_uapi(e: &uapi::kvm_cpuid_entry2) -> Entry {
    Entry {
        function: e.function,
        index: e.index,
        flags: e.flags,
        eax: e.eax,
        ebx: e.ebx,
        ecx: e.ecx,
        edx: e.edx,
    }
}

pub(crate) fn to_uapi(e: &Entry) -> uapi::kvm_cpuid_entry2 {
    uapi::kvm_cpuid_entry2 {
        function: e.function,
        index: e.index,
        flags: e.flags,
        eax: e.eax,
        ebx: e.ebx,
        ecx: e.ecx,
        edx: e.edx,
        padding: [0; 3],
    }
}

/// Registers after RESET or INIT (upstream kvm_vcpu_reset()).
fn reset_regs(cpuid: &[Entry]) -> GuestRegs {
    let mut regs = GuestRegs {
        rip: RESET_RIP,
        rflags: RFLAGS_FIXED,
        ..Default::default()
    };
    // EDX holds the CPU signature (family/model/stepping).
    regs.gpr[reg::RDX] = cpuid::find(cpuid, 1, 0).map_or(0x600, |e| e.eax.into());
    regs
}

fn get_regs(g: &GuestRegs) -> uapi::kvm_regs {
    let r = &g.gpr;
    uapi::kvm_regs {
        rax: r[0],
        rcx: r[1],
        rdx: r[2],
        rbx: r[3],
        rsp: r[4],
        rbp: r[5],
        rsi: r[6],
        rdi: r[7],
        r8: r[8],
        r9: r[9],
        r10: r[10],
        r11: r[11],
        r12: r[12],
        r13: r[13],
        r14: r[14],
        r15: r[15],
        rip: g.rip,
        rflags: g.rflags,
    }
}

fn set_regs(g: &mut GuestRegs, r: &uapi::kvm_regs) {
    g.gpr = [
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ];
    g.rip = r.rip;
    // As kvm_set_rflags(): bit 1 always reads as 1.
    g.rflags = r.rflags | RFLAGS_FIXED;
}

/// Frees what State owns outside Rust (vendor vCPU, guest FPU).
fn drop_state(st: &State) {
    if let Some(ops) = vendor::current() {
        // SAFETY: created for this vCPU, freed once (the vCPU is going away).
        unsafe { (ops.vcpu_free)(st.vendor.0) };
    }
    // SAFETY: allocated by kvm_glue_fpu_alloc (or null), freed once.
    unsafe { glue::kvm_glue_fpu_free(st.fpu.0) };
}

#[pinned_drop]
impl PinnedDrop for Vcpu {
    fn drop(self: Pin<&mut Self>) {
        drop_state(&self.state.lock());
    }
}

/// What an exit handler decided.
enum Next {
    /// Re-enter the guest.
    Guest,
    /// Return to userspace with this KVM_RUN result (kvm_run filled in).
    User(Result<isize>),
}

impl Vcpu {
    fn vcpu_run(&self, vm: &Vm, ops: &X86VendorOps, st: &mut State) -> Result<isize> {
        self.complete_userspace(st);
        if self.run_read_u8(run::IMMEDIATE_EXIT) != 0 {
            return Err(EINTR);
        }
        // SAFETY: the guest FPU state is this vCPU's; swapped back below.
        unsafe { glue::kvm_glue_fpu_load(st.fpu.0, 1) };
        let r = loop {
            // SAFETY: plain queries of the current task.
            if unsafe { glue::kvm_glue_signal_pending() } != 0 {
                self.set_exit(uapi::KVM_EXIT_INTR);
                break Err(EINTR);
            }
            // SAFETY: process context, no locks held but our own mutex.
            unsafe { glue::kvm_glue_cond_resched() };
            let nested_cr3 = vm.mmu.lock().root_pa();
            let mut ex = Exit::default();
            // SAFETY: interrupts off from here to the enable below, as VMRUN needs.
            unsafe { glue::kvm_glue_irq_disable() };
            // SAFETY: interrupts are off, so the CPU number is stable.
            let cpu = unsafe { glue::kvm_glue_smp_processor_id() };
            self.guest_cpu.store(cpu + 1, Ordering::SeqCst);
            // Read after publishing guest mode: a zap either sees us in the guest
            // and kicks, or bumped the generation before this load.
            let gen = vm.tlb_gen.load(Ordering::SeqCst);
            let flush = gen != st.tlb_gen;
            st.tlb_gen = gen;
            // SAFETY: interrupts off, this task's FPU is the guest's.
            unsafe { glue::kvm_glue_fpu_prepare_entry() };
            // SAFETY: the vendor vCPU and registers are ours (mutex held).
            unsafe { (ops.run)(st.vendor.0, &mut st.regs, nested_cr3, flush, &mut ex) };
            self.guest_cpu.store(0, Ordering::Release);
            // SAFETY: pairs with the disable above; pending host interrupts run now.
            unsafe { glue::kvm_glue_irq_enable() };
            match self.handle_exit(vm, ops, st, &ex) {
                Next::Guest => {}
                Next::User(r) => break r,
            }
        };
        // SAFETY: pairs with the load above.
        unsafe { glue::kvm_glue_fpu_load(st.fpu.0, 0) };
        r
    }

    /// Finishes an instruction whose data userspace provided (complete_fast_pio_*).
    fn complete_userspace(&self, st: &mut State) {
        let p = core::mem::replace(&mut st.pending, Pending::None);
        if let Pending::Pio {
            input,
            size,
            rip,
            next_rip,
        } = p
        {
            // Userspace moved RIP: the instruction is no longer there to finish.
            if st.regs.rip != rip {
                return;
            }
            if input {
                let mut buf = [0u8; 8];
                // SAFETY: the PIO page is ours and at least `size` (<= 4) bytes long.
                unsafe {
                    core::ptr::copy_nonoverlapping(self.pio_data(), buf.as_mut_ptr(), size as usize)
                };
                let val = u64::from_le_bytes(buf);
                let rax = &mut st.regs.gpr[reg::RAX];
                // 8/16-bit IN merges into RAX, 32-bit zero-extends.
                *rax = match size {
                    1 => (*rax & !0xff) | (val & 0xff),
                    2 => (*rax & !0xffff) | (val & 0xffff),
                    _ => val & 0xffff_ffff,
                };
            }
            st.regs.rip = next_rip;
        }
    }

    fn handle_exit(&self, vm: &Vm, ops: &X86VendorOps, st: &mut State, ex: &Exit) -> Next {
        match ex.kind {
            exit::NONE | exit::UD => {
                if ex.next_rip != 0 {
                    st.regs.rip = ex.next_rip;
                }
                Next::Guest
            }
            exit::IO if ex.flags & exit::IO_STRING == 0 => {
                let input = ex.flags & exit::IO_IN != 0;
                let size = ex.info2 as u8;
                if !input {
                    let bytes = st.regs.gpr[reg::RAX].to_le_bytes();
                    // SAFETY: the PIO page is ours; size <= 4.
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            bytes.as_ptr(),
                            self.pio_data(),
                            size as usize,
                        )
                    };
                }
                st.pending = Pending::Pio {
                    input,
                    size,
                    rip: st.regs.rip,
                    next_rip: ex.next_rip,
                };
                self.set_exit(uapi::KVM_EXIT_IO);
                let u = run::U;
                self.run_write(
                    u,
                    if input {
                        uapi::KVM_EXIT_IO_IN
                    } else {
                        uapi::KVM_EXIT_IO_OUT
                    } as u8,
                );
                self.run_write(u + 1, size);
                self.run_write(u + 2, ex.info as u16);
                self.run_write(u + 4, 1u32);
                self.run_write(
                    u + 8,
                    u64::from(uapi::KVM_PIO_PAGE_OFFSET) * PAGE_SIZE as u64,
                );
                Next::User(Ok(0))
            }
            exit::HLT => {
                st.regs.rip = ex.next_rip;
                self.set_exit(uapi::KVM_EXIT_HLT);
                Next::User(Ok(0))
            }
            exit::SHUTDOWN => {
                // The vendor put the vCPU in its INIT state; so are the registers.
                st.regs = reset_regs(&st.cpuid);
                st.pending = Pending::None;
                self.set_exit(uapi::KVM_EXIT_SHUTDOWN);
                Next::User(Ok(0))
            }
            exit::NPF => self.page_fault(vm, ex),
            exit::CPUID => {
                let (f, i) = (st.regs.gpr[reg::RAX] as u32, st.regs.gpr[reg::RCX] as u32);
                let e = cpuid::find(&st.cpuid, f, i).copied().unwrap_or_default();
                st.regs.gpr[reg::RAX] = e.eax.into();
                st.regs.gpr[reg::RBX] = e.ebx.into();
                st.regs.gpr[reg::RCX] = e.ecx.into();
                st.regs.gpr[reg::RDX] = e.edx.into();
                st.regs.rip = ex.next_rip;
                Next::Guest
            }
            exit::RDMSR | exit::WRMSR => {
                let index = st.regs.gpr[reg::RCX] as u32;
                let ok = if ex.kind == exit::RDMSR {
                    let v = self.get_msr(ops, st, index);
                    if let Some(v) = v {
                        st.regs.gpr[reg::RAX] = v & 0xffff_ffff;
                        st.regs.gpr[reg::RDX] = v >> 32;
                    }
                    v.is_some()
                } else {
                    let v = (st.regs.gpr[reg::RDX] << 32) | (st.regs.gpr[reg::RAX] & 0xffff_ffff);
                    self.set_msr(ops, st, index, v)
                };
                if ok {
                    st.regs.rip = ex.next_rip;
                } else {
                    // Unknown MSRs fault, as upstream with ignore_msrs=0.
                    // SAFETY: a live vendor vCPU under the mutex.
                    unsafe { (ops.queue_exception)(st.vendor.0, 13, true, 0) };
                }
                Next::Guest
            }
            exit::VMMCALL => {
                // No hypercalls yet: -KVM_ENOSYS, as upstream for an unknown one.
                st.regs.gpr[reg::RAX] = (-KVM_ENOSYS) as u64;
                st.regs.rip = ex.next_rip;
                Next::Guest
            }
            exit::FAIL_ENTRY => {
                self.set_exit(uapi::KVM_EXIT_FAIL_ENTRY);
                self.run_write(run::U, ex.hw_reason);
                // SAFETY: reads the CPU number only.
                self.run_write(run::U + 8, unsafe { glue::kvm_glue_smp_processor_id() });
                Next::User(Ok(0))
            }
            exit::IO => self.emulation_failure(),
            _ => {
                self.set_exit(uapi::KVM_EXIT_INTERNAL_ERROR);
                self.run_write(run::U, uapi::KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON);
                self.run_write(run::U + 4, 2u32);
                self.run_write(run::U + 8, ex.hw_reason);
                // SAFETY: reads the CPU number only.
                // SAFETY: reads the CPU number only.
                let cpu = unsafe { glue::kvm_glue_smp_processor_id() };
                self.run_write(run::U + 16, u64::from(cpu));
                Next::User(Ok(0))
            }
        }
    }

    /// An access kvm-rs would have to emulate (MMIO, string I/O): there is no
    /// instruction emulator yet, so report it as upstream reports a failed emulation.
    fn emulation_failure(&self) -> Next {
        self.set_exit(uapi::KVM_EXIT_INTERNAL_ERROR);
        self.run_write(run::U, uapi::KVM_INTERNAL_ERROR_EMULATION);
        self.run_write(run::U + 4, 0u32);
        Next::User(Ok(0))
    }

    /// NPF: map the page backing the GPA, or report what cannot be mapped.
    fn page_fault(&self, vm: &Vm, ex: &Exit) -> Next {
        let gfn = ex.info >> 12;
        let write = ex.flags & exit::PF_WRITE != 0;
        let (slot, gen) = vm.find_slot(gfn);
        let Some(slot) = slot else {
            return self.emulation_failure();
        };
        if write && slot.readonly() {
            return self.emulation_failure();
        }
        let writable = !slot.readonly();
        let mut hpa = 0u64;
        let (hva, w) = (slot.hva(gfn), i32::from(writable));
        // SAFETY: the VM's owner mm is current (checked by the ioctl); pins one page.
        let r = unsafe { glue::kvm_glue_pin_user_page(hva, w, &mut hpa) };
        if r != 0 {
            return Next::User(Err(EFAULT));
        }
        let mut mmu = vm.mmu.lock();
        let mapped = if vm.slots_gen.load(Ordering::SeqCst) == gen {
            mmu.map(gfn, hpa, writable)
        } else {
            // Slots changed while we pinned: fault again with the new ones.
            Ok(false)
        };
        drop(mmu);
        match mapped {
            Ok(true) => Next::Guest,
            other => {
                // SAFETY: our pin, not handed to the MMU.
                unsafe { glue::kvm_glue_unpin_phys(hpa, 0) };
                match other {
                    Err(e) => Next::User(Err(e)),
                    _ => Next::Guest,
                }
            }
        }
    }

    fn get_msr(&self, ops: &X86VendorOps, st: &State, index: u32) -> Option<u64> {
        match index {
            MSR_IA32_APICBASE => Some(st.apic_base),
            _ => {
                let mut v = 0;
                // SAFETY: a live vendor vCPU under the mutex.
                (unsafe { (ops.get_msr)(st.vendor.0, index, &mut v) } == 0).then_some(v)
            }
        }
    }

    fn set_msr(&self, ops: &X86VendorOps, st: &mut State, index: u32, v: u64) -> bool {
        match index {
            MSR_EFER => {
                // Reserved (by the guest's CPUID) bits fault; LMA is the CPU's.
                if v & !cpuid::efer_allowed(&st.cpuid) != 0 {
                    return false;
                }
                let mut old = 0;
                // SAFETY: a live vendor vCPU under the mutex.
                unsafe { (ops.get_msr)(st.vendor.0, MSR_EFER, &mut old) };
                let v = (v & !EFER_LMA) | (old & EFER_LMA);
                // SAFETY: as above.
                unsafe { (ops.set_msr)(st.vendor.0, MSR_EFER, v) == 0 }
            }
            // SAFETY: a live vendor vCPU under the mutex.
            _ => unsafe { (ops.set_msr)(st.vendor.0, index, v) == 0 },
        }
    }
}

const MSR_IA32_APICBASE: u32 = 0x1b;
/// include/uapi/linux/kvm_para.h
const KVM_ENOSYS: i64 = 1000;
const MSR_EFER: u32 = 0xc000_0080;
const EFER_LMA: u64 = 1 << 10;

/// Both references a vCPU fd holds.
struct VcpuFile {
    vm: Arc<Vm>,
    vcpu: Arc<Vcpu>,
}

/// Creates the fd of a new vCPU.
pub(crate) fn create_fd(vm: Arc<Vm>, vcpu: Arc<Vcpu>) -> Result<isize> {
    let id = vcpu.id;
    let f = KBox::into_raw(KBox::new(VcpuFile { vm, vcpu }, GFP_KERNEL)?);
    // SAFETY: on success the file owns `f` (see kvm_rs_vcpu_release).
    let fd = unsafe { glue::kvm_glue_vcpu_fd(f.cast(), id) };
    if fd < 0 {
        // SAFETY: not handed over.
        drop(unsafe { KBox::from_raw(f) });
        return Err(Error::from_errno(fd));
    }
    Ok(fd as isize)
}

fn file<'a>(p: *mut c_void) -> &'a VcpuFile {
    // SAFETY: private_data of a vCPU file, alive while its fops run.
    unsafe { &*p.cast_const().cast::<VcpuFile>() }
}

#[no_mangle]
pub(crate) extern "C" fn kvm_rs_vcpu_ioctl(p: *mut c_void, cmd: c_uint, arg: c_ulong) -> c_long {
    let f = file(p);
    dev::ioctl_ret(f.vcpu.ioctl(&f.vm, cmd, arg))
}

#[no_mangle]
pub(crate) extern "C" fn kvm_rs_vcpu_release(p: *mut c_void) {
    // SAFETY: handed to the file by create_fd(); release runs once.
    drop(unsafe { KBox::from_raw(p.cast::<VcpuFile>()) });
}

/// The page at `pgoff` of the vCPU mapping (struct page *), or null (SIGBUS).
#[no_mangle]
pub(crate) extern "C" fn kvm_rs_vcpu_page(p: *mut c_void, pgoff: c_ulong) -> *mut c_void {
    let v = &file(p).vcpu;
    let page = match pgoff as u32 {
        0 => v.run.as_ptr(),
        uapi::KVM_PIO_PAGE_OFFSET => v.pio.as_ptr(),
        _ => return core::ptr::null_mut(),
    };
    // SAFETY: a page of this vCPU, in the direct map.
    unsafe { glue::kvm_glue_virt_to_page(page.cast()) }
}

/// KVM_GET_SUPPORTED_CPUID on /dev/kvm.
pub(crate) fn get_supported_cpuid(arg: usize) -> Result<isize> {
    let mut h: CpuidHeader = user::read(arg)?;
    if h.nent < 1 {
        return Err(E2BIG);
    }
    let cap = (h.nent as usize).min(cpuid::MAX_ENTRIES);
    let mut buf = KVec::with_capacity(cap, GFP_KERNEL)?;
    for _ in 0..cap {
        buf.push(Entry::default(), GFP_KERNEL)?;
    }
    let host = |f: u32, i: u32| {
        let mut r = [0u32; 4];
        // SAFETY: `r` is a valid 4-element array.
        unsafe { glue::kvm_glue_cpuid(f, i, r.as_mut_ptr()) };
        r
    };
    let n = cpuid::supported(host, &mut buf).ok_or(E2BIG)?;
    let mut out = KVec::with_capacity(n, GFP_KERNEL)?;
    for e in buf.iter().take(n) {
        out.push(to_uapi(e), GFP_KERNEL)?;
    }
    h.nent = n as u32;
    user::write(arg, &h)?;
    user::write_array(arg + size_of::<CpuidHeader>(), &out)?;
    Ok(0)
}
