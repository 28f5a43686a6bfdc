// SPDX-License-Identifier: GPL-2.0-only
//! vCPUs: KVM_CREATE_VCPU, the vCPU fd (ioctls, mmap of kvm_run and the PIO page)
//! and KVM_RUN's loop (upstream vcpu_run()/vcpu_enter_guest()), which enters the
//! guest through the vendor and handles exits in the kernel or hands them to
//! userspace through kvm_run.

use core::sync::atomic::Ordering;
use kernel::ffi::{c_long, c_uint, c_ulong, c_void};
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex, SpinLock};
use kernel::{new_mutex, new_spinlock};

use crate::abi::{ioctl, uapi};
use crate::cpuid::{self, Entry};
use crate::emul::{self, Cpu, Failure};
use crate::emulate::{self, Insn, Op, WalkError};
use crate::lapic::{self, Action, Irq, Lapic};
use crate::pages::Pages;
use crate::sregs;
use crate::stats::{self, vcpu as st_, Counters};
use crate::vm::Vm;
use crate::x86_ops::{exit, reg, Exit, GuestRegs, VendorVcpu, X86VendorOps};
use crate::{dev, glue, user, vendor};

mod regs;
pub(crate) use regs::{host_xcr0, supported_xcr0, xsave2_size};

const PAGE_SIZE: usize = 4096;

/// kvm_run field offsets (the union starts at 32 on every ABI).
mod run {
    pub(super) const IMMEDIATE_EXIT: usize = 1;
    pub(super) const EXIT_REASON: usize = 8;
    pub(super) const U: usize = 32;
    pub(super) const READY_FOR_INTERRUPT_INJECTION: usize = 12;
    pub(super) const IF_FLAG: usize = 13;
    pub(super) const CR8: usize = 16;
    pub(super) const APIC_BASE: usize = 24;
    pub(super) const VALID_REGS: usize = 288;
    pub(super) const DIRTY_REGS: usize = 296;
    pub(super) const SYNC_REGS: usize = 304;
    pub(super) const SYNC_SREGS: usize = SYNC_REGS + size_of::<super::uapi::kvm_regs>();
    pub(super) const SYNC_EVENTS: usize = SYNC_SREGS + size_of::<super::uapi::kvm_sregs>();
    use super::uapi::{kvm_run, kvm_sync_regs};
    use core::mem::offset_of;
    const _: () = assert!(offset_of!(kvm_run, ready_for_interrupt_injection) == 12);
    const _: () = assert!(offset_of!(kvm_run, if_flag) == IF_FLAG);
    const _: () = assert!(offset_of!(kvm_run, cr8) == CR8);
    const _: () = assert!(offset_of!(kvm_run, apic_base) == APIC_BASE);
    const _: () = assert!(offset_of!(kvm_run, kvm_valid_regs) == VALID_REGS);
    const _: () = assert!(offset_of!(kvm_run, kvm_dirty_regs) == DIRTY_REGS);
    const _: () = assert!(offset_of!(kvm_run, s) == SYNC_REGS);
    const _: () = assert!(SYNC_EVENTS - SYNC_REGS == offset_of!(kvm_sync_regs, events));
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
    /// An MMIO read at `rip` that `insn` waits for (complete_emulated_mmio).
    MmioRead {
        insn: Insn,
        rip: u64,
        next_rip: u64,
        gpa: u64,
    },
    /// One OUTS element went out; advance and, with REP, run it again.
    StringOut {
        insn: Insn,
        rip: u64,
    },
    /// INS of `count` elements: store them at ES:rDI.
    StringIn {
        insn: Insn,
        rip: u64,
        count: u64,
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
    /// MSR_IA32_APICBASE without an in-kernel LAPIC (with one, the LAPIC's).
    apic_base: u64,
    /// The VM's TLB generation this vCPU last flushed for.
    tlb_gen: u64,
    /// KVM_GET/SET_TSC_KHZ (upstream virtual_tsc_khz).
    tsc_khz: u32,
    /// When the waiter's timer is armed for (0: not armed).
    armed_ns: u64,
    /// The vCPU has entered the guest (upstream kvm_vcpu_has_run()).
    ran: bool,
    /// MSR_IA32_MISC_ENABLE.
    misc_enable: u64,
    /// MSR_PLATFORM_INFO as userspace set it. Upstream starts it with the
    /// CPUID-faulting bit; kvm-rs does not emulate CPUID faulting, so 0.
    platform_info: u64,
    /// NMIs waiting for the guest to be able to take one.
    nmi_pending: u32,
    /// The guest's DR0-3, loaded into the hardware for entries while the guest
    /// has breakpoints enabled or accesses them without exits (`db_wont_exit`).
    db: [u64; 4],
    db_wont_exit: bool,
    /// The guest's XCR0 (loaded while it runs with CR4.OSXSAVE).
    xcr0: u64,
    /// The PAE PDPTRs as last loaded from guest memory or set by KVM_SET_SREGS2
    /// (upstream's cache: after an entry they are loaded again when read, and
    /// kept when guest memory holds invalid ones).
    pdptrs: [u64; 4],
    pdptrs_avail: bool,
}

/// A vCPU's glue waiter (see kvm_glue_waiter_* in the glue header).
struct Waiter(*mut c_void);
// SAFETY: the glue object is made for use from any thread (atomics, a waitqueue).
unsafe impl Send for Waiter {}
// SAFETY: as above.
unsafe impl Sync for Waiter {}

impl Waiter {
    fn poke(&self) {
        // SAFETY: a live waiter (freed in drop only).
        unsafe { glue::kvm_glue_waiter_poke(self.0) }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // SAFETY: allocated by kvm_glue_waiter_new (or null), freed once.
        unsafe { glue::kvm_glue_waiter_free(self.0) }
    }
}

#[pin_data]
pub(crate) struct Vcpu {
    pub(crate) id: u32,
    run: Pages,
    pio: Pages,
    /// Where the vCPU sleeps when halted; also says which CPU it is in guest mode
    /// on (see Vm::flush_all).
    waiter: Waiter,
    /// The in-kernel LAPIC (when the VM had an irqchip when this vCPU was
    /// created). Other vCPUs lock it briefly to deliver IPIs.
    #[pin]
    lapic: SpinLock<Option<Lapic>>,
    pub(crate) stats: Counters<{ stats::vcpu::DESCS.len() }>,
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
    pub(crate) fn new(id: u32, irqchip: bool, tsc_khz: u32) -> Result<Arc<Self>> {
        let ops = ops()?;
        // SAFETY: returns an owned vendor vCPU or null.
        let v = unsafe { (ops.vcpu_create)() };
        if v.is_null() {
            return Err(ENOMEM);
        }
        let vendor = Vendor(v);
        // SAFETY: a plain allocation, owned by State (freed by its Drop).
        let fpu = Fpu(unsafe { glue::kvm_glue_fpu_alloc() });
        let regs = reset_regs(&[]);
        let state = State {
            vendor,
            fpu,
            regs,
            pending: Pending::None,
            cpuid: KVec::new(),
            // Application processors wait for INIT/SIPI when the LAPIC is in the
            // kernel (kvm_arch_vcpu_create()).
            mp_state: if irqchip && id != 0 {
                uapi::KVM_MP_STATE_UNINITIALIZED
            } else {
                uapi::KVM_MP_STATE_RUNNABLE
            },
            apic_base: lapic::APIC_DEFAULT_BASE
                | lapic::MSR_APICBASE_ENABLE
                | if id == 0 { lapic::MSR_APICBASE_BSP } else { 0 },
            tlb_gen: 0,
            tsc_khz: 0,
            armed_ns: 0,
            ran: false,
            nmi_pending: 0,
            misc_enable: MISC_ENABLE_RESET,
            platform_info: 0,
            db: [0; 4],
            db_wont_exit: false,
            xcr0: crate::xstate::FP,
            pdptrs: [0; 4],
            pdptrs_avail: false,
        };
        // SAFETY: a plain allocation, owned by the Waiter.
        let waiter = Waiter(unsafe { glue::kvm_glue_waiter_new() });
        if state.fpu.0.is_null() || waiter.0.is_null() {
            return Err(ENOMEM);
        }
        let mut state = state;
        // As kvm_arch_vcpu_create(), whose kvm_set_tsc_khz() result is not checked.
        let _ = set_tsc_khz(&mut state, tsc_khz);
        let lapic = irqchip.then(|| Lapic::new(id, tsc_khz));
        Arc::pin_init(
            try_pin_init!(Vcpu {
                id,
                run: Pages::new(PAGE_SIZE)?,
                pio: Pages::new(PAGE_SIZE)?,
                waiter,
                lapic <- new_spinlock!(lapic),
                stats: Counters::new(),
                state <- new_mutex!(state),
            }),
            GFP_KERNEL,
        )
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

    /// A `T` inside the kvm_run page (offsets are constants of `run`, naturally
    /// aligned and ending inside the page).
    fn run_read<T: Copy>(&self, off: usize) -> T {
        // SAFETY: as run_write; T is a plain uapi type for which any bytes are valid.
        unsafe { self.run_ptr(off).cast::<T>().read_volatile() }
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
                user::write(arg, &self.get_sregs(ops, &st))?;
                Ok(0)
            }
            ioctl::KVM_SET_SREGS => {
                let sr: uapi::kvm_sregs = user::read(arg)?;
                self.set_sregs(ops, &mut st, &sr)?;
                self.update_pdptrs(vm, &mut st, &sr);
                Ok(0)
            }
            ioctl::KVM_SET_CPUID2 => {
                let h: ArrayHeader = user::read(arg)?;
                if h.n as usize > cpuid::MAX_ENTRIES {
                    return Err(E2BIG);
                }
                let raw: KVec<uapi::kvm_cpuid_entry2> =
                    user::read_array(arg + size_of::<ArrayHeader>(), h.n as usize)?;
                let mut entries = KVec::with_capacity(raw.len(), GFP_KERNEL)?;
                for e in raw.iter() {
                    entries.push(from_uapi(e), GFP_KERNEL)?;
                }
                // KVM owns the runtime bits, also for the comparison below: both
                // tables get the current ones.
                let r = self.cpuid_runtime(ops, &st);
                cpuid::update_runtime(&mut entries, &r);
                cpuid::update_runtime(&mut st.cpuid, &r);
                // After the first entry CPUID is frozen: only the same table is
                // accepted (kvm_cpuid_check_equal()).
                if st.ran {
                    return if entries.len() == st.cpuid.len()
                        && entries.iter().zip(st.cpuid.iter()).all(|(a, b)| a == b)
                    {
                        Ok(0)
                    } else {
                        Err(EINVAL)
                    };
                }
                st.cpuid = entries;
                // kvm_vcpu_after_set_cpuid(): the LAPIC follows the new CPUID.
                let l1 = cpuid::find(&st.cpuid, 1, 0).map_or(0, |e| e.ecx);
                if let Some(l) = (*self.lapic.lock()).as_mut() {
                    l.set_guest_caps(
                        l1 & cpuid::L1_ECX_X2APIC != 0,
                        l1 & cpuid::L1_ECX_TSC_DEADLINE != 0,
                        false,
                    );
                }
                Ok(0)
            }
            ioctl::KVM_GET_CPUID2 => {
                // The guest may have changed CR4 without an exit.
                let r = self.cpuid_runtime(ops, &st);
                cpuid::update_runtime(&mut st.cpuid, &r);
                let mut h: ArrayHeader = user::read(arg)?;
                if (h.n as usize) < st.cpuid.len() {
                    return Err(E2BIG);
                }
                let mut out = KVec::with_capacity(st.cpuid.len(), GFP_KERNEL)?;
                for e in st.cpuid.iter() {
                    out.push(to_uapi(e), GFP_KERNEL)?;
                }
                user::write_array(arg + size_of::<ArrayHeader>(), &out)?;
                h.n = st.cpuid.len() as u32;
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
                // kvm_arch_vcpu_ioctl_set_mpstate(): without an in-kernel LAPIC only
                // RUNNABLE is a state KVM can be in.
                let lapic = self.lapic.lock().is_some();
                st.mp_state = match m.mp_state {
                    uapi::KVM_MP_STATE_RUNNABLE => m.mp_state,
                    uapi::KVM_MP_STATE_UNINITIALIZED
                    | uapi::KVM_MP_STATE_HALTED
                    | uapi::KVM_MP_STATE_AP_RESET_HOLD
                    | uapi::KVM_MP_STATE_INIT_RECEIVED
                        if lapic =>
                    {
                        m.mp_state
                    }
                    // Obsolete: wait-for-SIPI. The SIPI itself is not re-pended (a
                    // vector is not part of the ABI); upstream re-sends the last one.
                    uapi::KVM_MP_STATE_SIPI_RECEIVED if lapic => uapi::KVM_MP_STATE_INIT_RECEIVED,
                    _ => return Err(EINVAL),
                };
                self.waiter.poke();
                Ok(0)
            }
            ioctl::KVM_GET_LAPIC => {
                let mut out = LapicState::default();
                let g = self.lapic.lock();
                let l = g.as_ref().ok_or(EINVAL)?;
                l.get_state(&mut out.0, false, now_ns());
                drop(g);
                user::write(arg, &out)?;
                Ok(0)
            }
            ioctl::KVM_SET_LAPIC => {
                if self.lapic.lock().is_none() {
                    return Err(EINVAL);
                }
                let inp: LapicState = user::read(arg)?;
                let mut g = self.lapic.lock();
                let l = (*g).as_mut().ok_or(EINVAL)?;
                l.set_state(&inp.0, false, now_ns()).map_err(|_| EINVAL)?;
                st.regs.cr8 = l.cr8();
                drop(g);
                self.waiter.poke();
                Ok(0)
            }
            ioctl::KVM_GET_TSC_KHZ => Ok(st.tsc_khz as isize),
            ioctl::KVM_PRE_FAULT_MEMORY => self.pre_fault(vm, arg),
            ioctl::KVM_GET_MSRS | ioctl::KVM_SET_MSRS => {
                self.msrs(vm, ops, &mut st, arg, cmd == ioctl::KVM_SET_MSRS)
            }
            ioctl::KVM_GET_VCPU_EVENTS => {
                user::write(arg, &get_events(ops, &st))?;
                Ok(0)
            }
            ioctl::KVM_SET_VCPU_EVENTS => {
                let e: uapi::kvm_vcpu_events = user::read(arg)?;
                set_events(ops, &mut st, &e)?;
                Ok(0)
            }
            ioctl::KVM_GET_DEBUGREGS => {
                let mut d = uapi::kvm_debugregs {
                    db: st.db,
                    ..Default::default()
                };
                // SAFETY: a live vendor vCPU under the mutex.
                d.dr6 = unsafe { (ops.get_dr)(st.vendor.0, 6) };
                // SAFETY: as above.
                d.dr7 = unsafe { (ops.get_dr)(st.vendor.0, 7) };
                user::write(arg, &d)?;
                Ok(0)
            }
            ioctl::KVM_SET_DEBUGREGS => {
                let d: uapi::kvm_debugregs = user::read(arg)?;
                // kvm_dr6_valid()/kvm_dr7_valid(): the upper halves are reserved.
                if d.flags != 0 || d.dr6 >> 32 != 0 || d.dr7 >> 32 != 0 {
                    return Err(EINVAL);
                }
                st.db = d.db;
                // SAFETY: a live vendor vCPU under the mutex.
                unsafe { (ops.set_dr)(st.vendor.0, 6, d.dr6) };
                // SAFETY: as above.
                unsafe { (ops.set_dr)(st.vendor.0, 7, d.dr7) };
                Ok(0)
            }
            ioctl::KVM_GET_XSAVE | ioctl::KVM_GET_XSAVE2 => {
                self.get_xsave(&st, arg, cmd == ioctl::KVM_GET_XSAVE2)?;
                Ok(0)
            }
            ioctl::KVM_SET_XSAVE => {
                self.set_xsave(&mut st, arg)?;
                Ok(0)
            }
            ioctl::KVM_GET_XCRS => {
                user::write(arg, &self.get_xcrs(&st))?;
                Ok(0)
            }
            ioctl::KVM_SET_XCRS => {
                let x: uapi::kvm_xcrs = user::read(arg)?;
                self.set_xcrs(&mut st, &x)?;
                Ok(0)
            }
            ioctl::KVM_GET_SREGS2 => {
                user::write(arg, &self.get_sregs2(vm, ops, &mut st))?;
                Ok(0)
            }
            ioctl::KVM_SET_SREGS2 => {
                let s: uapi::kvm_sregs2 = user::read(arg)?;
                self.set_sregs2(vm, ops, &mut st, &s)?;
                Ok(0)
            }
            ioctl::KVM_GET_FPU => {
                user::write(arg, &self.get_fpu(&st))?;
                Ok(0)
            }
            ioctl::KVM_SET_FPU => {
                let f: uapi::kvm_fpu = user::read(arg)?;
                self.set_fpu(&mut st, &f);
                Ok(0)
            }
            ioctl::KVM_TRANSLATE => {
                self.translate(vm, ops, &st, arg)?;
                Ok(0)
            }
            ioctl::KVM_SET_TSC_KHZ => {
                let khz = tsc_khz_arg(arg);
                if let Some(l) = (*self.lapic.lock()).as_mut() {
                    l.set_tsc_khz(khz);
                }
                set_tsc_khz(&mut st, khz)?;
                Ok(0)
            }
            // kvm_arch_vcpu_ioctl() answers unknown commands with -EINVAL.
            _ => Err(EINVAL),
        }
    }
}

/// KVM_GET_VCPU_EVENTS (kvm_vcpu_ioctl_x86_get_vcpu_events()).
fn get_events(ops: &X86VendorOps, st: &State) -> uapi::kvm_vcpu_events {
    let mut e = uapi::kvm_vcpu_events::default();
    // SAFETY: a live vendor vCPU under the mutex; `e` is a kvm_vcpu_events.
    unsafe { (ops.get_events)(st.vendor.0, core::ptr::from_mut(&mut e).cast()) };
    e.nmi.pending = u8::from(st.nmi_pending != 0);
    e.flags = uapi::KVM_VCPUEVENT_VALID_NMI_PENDING
        | uapi::KVM_VCPUEVENT_VALID_SHADOW
        | uapi::KVM_VCPUEVENT_VALID_SMM;
    e
}

/// KVM_SET_VCPU_EVENTS (kvm_vcpu_ioctl_x86_set_vcpu_events()): no exception
/// payloads and no SMM (neither is enabled or supported), exceptions below 32
/// but NMI.
fn set_events(ops: &X86VendorOps, st: &mut State, e: &uapi::kvm_vcpu_events) -> Result {
    let valid = uapi::KVM_VCPUEVENT_VALID_NMI_PENDING
        | uapi::KVM_VCPUEVENT_VALID_SIPI_VECTOR
        | uapi::KVM_VCPUEVENT_VALID_SHADOW
        | uapi::KVM_VCPUEVENT_VALID_SMM;
    if e.flags & !valid != 0
        || e.exception.injected != 0 && (e.exception.nr > 31 || e.exception.nr == 2)
        || e.flags & uapi::KVM_VCPUEVENT_VALID_SMM != 0 && e.smi.smm != 0
    {
        return Err(EINVAL);
    }
    // SAFETY: a live vendor vCPU under the mutex; `e` is a kvm_vcpu_events.
    unsafe { (ops.set_events)(st.vendor.0, core::ptr::from_ref(e).cast()) };
    if e.flags & uapi::KVM_VCPUEVENT_VALID_NMI_PENDING != 0 {
        st.nmi_pending = e.nmi.pending.into();
    }
    Ok(())
}

/// `struct kvm_lapic_state` as bytes (the uapi spells it with C chars).
#[repr(C)]
#[derive(Clone, Copy)]
struct LapicState([u8; lapic::STATE_SIZE]);
impl Default for LapicState {
    fn default() -> Self {
        LapicState([0; lapic::STATE_SIZE])
    }
}
// SAFETY: a byte array.
unsafe impl user::Pod for LapicState {}
const _: () = assert!(size_of::<LapicState>() == size_of::<uapi::kvm_lapic_state>());

/// kvm_apic_set_base(): x2APIC mode is reserved unless the guest's CPUID has it.
fn set_apic_base(l: &mut Lapic, cpuid: &[Entry], v: u64, host: bool) -> bool {
    let x2apic = cpuid::find(cpuid, 1, 0).is_some_and(|e| e.ecx & cpuid::L1_ECX_X2APIC != 0);
    if v & lapic::MSR_APICBASE_X2APIC != 0 && !x2apic {
        return false;
    }
    l.set_base(v, host, cpuid::maxphyaddr(cpuid)).is_ok()
}

fn now_ns() -> u64 {
    // SAFETY: reads the clock.
    unsafe { glue::kvm_glue_ktime_ns() }
}

/// The guest's TSC now (no TSC offset yet: the host's).
fn now_tsc() -> u64 {
    // SAFETY: reads the TSC.
    unsafe { glue::kvm_glue_rdtsc() }
}

/// `sizeof(struct kvm_xsave)`.
const XSAVE_SIZE: usize = 4096;

/// The MSRs KVM_GET_MSR_INDEX_LIST reports: those KVM_GET/SET_MSRS save and
/// restore (upstream msrs_to_save + emulated_msrs, as far as kvm-rs has them).
pub(crate) const MSRS_TO_SAVE: [u32; 14] = [
    MSR_IA32_SYSENTER_CS,
    MSR_IA32_SYSENTER_ESP,
    MSR_IA32_SYSENTER_EIP,
    MSR_STAR,
    MSR_CSTAR,
    MSR_KERNEL_GS_BASE,
    MSR_SYSCALL_MASK,
    MSR_LSTAR,
    MSR_IA32_TSC,
    MSR_IA32_CR_PAT,
    MSR_IA32_APICBASE,
    lapic::MSR_TSC_DEADLINE,
    MSR_IA32_MISC_ENABLE,
    MSR_PLATFORM_INFO,
];
const MSR_PLATFORM_INFO: u32 = 0xce;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_CR_PAT: u32 = 0x277;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// MSR_IA32_MISC_ENABLE's reset value: fast strings, PEBS and BTS unavailable
/// (upstream kvm_vcpu_reset()).
const MISC_ENABLE_RESET: u64 = 1 | 1 << 11 | 1 << 12;
/// upstream MAX_IO_MSRS.
const MAX_IO_MSRS: u32 = 256;

/// KVM_GET_MSR_INDEX_LIST on /dev/kvm (the -E2BIG protocol of upstream).
pub(crate) fn msr_index_list(arg: usize) -> Result<isize> {
    let n = MSRS_TO_SAVE.len() as u32;
    let want: u32 = user::read(arg)?;
    user::write(arg, &n)?;
    if want < n {
        return Err(E2BIG);
    }
    user::write_array(arg + 4, &MSRS_TO_SAVE)?;
    Ok(0)
}

/// kvm_set_tsc_khz() without TSC scaling: the rate is recorded either way (as
/// upstream's virtual_tsc_khz), but only one within upstream's 250 ppm tolerance
/// of the host's succeeds. Upstream "catches up" a faster guest TSC instead of
/// failing; kvm-rs does not emulate that.
fn set_tsc_khz(st: &mut State, khz: u32) -> Result {
    st.tsc_khz = khz;
    // SAFETY: reads a kernel variable.
    let host = u64::from(unsafe { glue::kvm_glue_tsc_khz() });
    let lo = host * (1_000_000 - 250) / 1_000_000;
    let hi = host * (1_000_000 + 250) / 1_000_000;
    if (lo..=hi).contains(&u64::from(khz)) {
        Ok(())
    } else {
        Err(EINVAL)
    }
}

/// The header of the uapi's counted arrays, `struct kvm_cpuid2` and `struct
/// kvm_msrs`: a u32 count and padding; the entries follow.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct ArrayHeader {
    pub(crate) n: u32,
    pub(crate) pad: u32,
}
// SAFETY: two u32s.
unsafe impl user::Pod for ArrayHeader {}

/// KVM_SET_TSC_KHZ's argument (VM and vCPU): the low 32 bits, 0 for the host's rate.
pub(crate) fn tsc_khz_arg(arg: usize) -> u32 {
    match arg as u32 {
        // SAFETY: reads a kernel variable.
        0 => unsafe { glue::kvm_glue_tsc_khz() },
        khz => khz,
    }
}

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
impl Drop for State {
    fn drop(&mut self) {
        if let Some(ops) = vendor::current() {
            // SAFETY: created for this vCPU, freed once (the vCPU is going away).
            unsafe { (ops.vcpu_free)(self.vendor.0) };
        }
        // SAFETY: allocated by kvm_glue_fpu_alloc (or null), freed once.
        unsafe { glue::kvm_glue_fpu_free(self.fpu.0) };
    }
}

/// What an exit handler decided.
enum Next {
    /// Re-enter the guest.
    Guest,
    /// Return to userspace with this KVM_RUN result (kvm_run filled in).
    User(Result<isize>),
}

impl Next {
    /// As a completion's result: None to go on into the guest.
    fn into_user(self) -> Option<Result<isize>> {
        match self {
            Next::Guest => None,
            Next::User(r) => Some(r),
        }
    }
}

/// The RIP after `insn` at `rip` (wrapping at 4G outside 64-bit mode, as the
/// emulator's _eip).
/// An IN's result into RAX: 8/16-bit merge into it, 32-bit zero-extends.
fn set_in_result(rax: &mut u64, size: u8, val: u64) {
    *rax = match size {
        1 => (*rax & !0xff) | (val & 0xff),
        2 => (*rax & !0xffff) | (val & 0xffff),
        _ => val & 0xffff_ffff,
    };
}

fn next_ip(_st: &State, insn: &Insn, rip: u64) -> u64 {
    let n = rip.wrapping_add(u64::from(insn.len));
    if insn.mode == emulate::Mode::Prot64 {
        n
    } else {
        n & 0xffff_ffff
    }
}

const PF_VECTOR: u32 = 14;
/// DR7's L0-3/G0-3 enables (upstream DR7_BP_EN_MASK).
const DR7_BP_EN_MASK: u64 = 0xff;
const RFLAGS_IF: u64 = 1 << 9;
const SYNC_REGS_REGS: u64 = uapi::KVM_SYNC_X86_REGS as u64;
const SYNC_REGS_SREGS: u64 = uapi::KVM_SYNC_X86_SREGS as u64;
const SYNC_REGS_EVENTS: u64 = uapi::KVM_SYNC_X86_EVENTS as u64;
const SYNC_REGS_VALID: u64 = uapi::KVM_SYNC_X86_VALID_FIELDS as u64;

impl Vcpu {
    /// KVM_RUN (kvm_arch_vcpu_ioctl_run()): the run itself, framed by the
    /// sync_regs exchange through kvm_run and the fields upstream's
    /// post_kvm_run_save() reports.
    fn vcpu_run(&self, vm: &Vm, ops: &X86VendorOps, st: &mut State) -> Result<isize> {
        let r = self.run_framed(vm, ops, st);
        let valid: u64 = self.run_read(run::VALID_REGS);
        if valid & SYNC_REGS_REGS != 0 {
            self.run_write(run::SYNC_REGS, get_regs(&st.regs));
        }
        if valid & SYNC_REGS_SREGS != 0 {
            self.run_write(run::SYNC_SREGS, self.get_sregs(ops, st));
        }
        if valid & SYNC_REGS_EVENTS != 0 {
            self.run_write(run::SYNC_EVENTS, get_events(ops, st));
        }
        let lapic = self.lapic.lock().is_some();
        // SAFETY: a live vendor vCPU under the mutex.
        let ready = lapic || unsafe { (ops.interrupt_allowed)(st.vendor.0, st.regs.rflags) };
        self.run_write(run::IF_FLAG, u8::from(st.regs.rflags & RFLAGS_IF != 0));
        self.run_write(run::CR8, st.regs.cr8);
        self.run_write(run::APIC_BASE, self.apic_base(st));
        self.run_write(run::READY_FOR_INTERRUPT_INJECTION, u8::from(ready));
        r
    }

    fn run_framed(&self, vm: &Vm, ops: &X86VendorOps, st: &mut State) -> Result<isize> {
        let has_lapic = self.lapic.lock().is_some();
        if !(has_lapic && st.mp_state == uapi::KVM_MP_STATE_UNINITIALIZED) {
            let valid: u64 = self.run_read(run::VALID_REGS);
            let dirty: u64 = self.run_read(run::DIRTY_REGS);
            if (valid | dirty) & !SYNC_REGS_VALID != 0 {
                return Err(EINVAL);
            }
            if dirty != 0 {
                self.sync_regs(vm, ops, st, dirty)?;
            }
            if !has_lapic {
                // The TPR userspace keeps in kvm_run (kvm_set_cr8()).
                let cr8: u64 = self.run_read(run::CR8);
                if cr8 & !0xf != 0 {
                    return Err(EINVAL);
                }
                st.regs.cr8 = cr8;
            }
            if let Some(r) = self.complete_userspace(vm, ops, st) {
                return r;
            }
        }
        if self.run_read_u8(run::IMMEDIATE_EXIT) != 0 {
            return Err(EINTR);
        }
        if has_lapic && st.mp_state == uapi::KVM_MP_STATE_UNINITIALIZED {
            // As upstream: an AP waiting for INIT blocks once, then KVM_RUN returns
            // (-EAGAIN, or -EINTR for a signal) so that userspace sees its new state.
            self.accept_events(ops, st);
            if st.mp_state == uapi::KVM_MP_STATE_UNINITIALIZED {
                // SAFETY: a live waiter.
                unsafe { glue::kvm_glue_waiter_block(self.waiter.0) };
                self.accept_events(ops, st);
            }
            // SAFETY: plain query of the current task.
            if unsafe { glue::kvm_glue_signal_pending() } != 0 {
                self.set_exit(uapi::KVM_EXIT_INTR);
                return Err(EINTR);
            }
            return Err(EAGAIN);
        }
        // SAFETY: the guest FPU state is this vCPU's; swapped back below.
        unsafe { glue::kvm_glue_fpu_load(st.fpu.0, 1) };
        let r = loop {
            // SAFETY: plain queries of the current task.
            if unsafe { glue::kvm_glue_signal_pending() } != 0 {
                self.stats.inc(st_::SIGNAL_EXITS);
                self.set_exit(uapi::KVM_EXIT_INTR);
                break Err(EINTR);
            }
            // SAFETY: process context, no locks held but our own mutex.
            unsafe { glue::kvm_glue_cond_resched() };
            if has_lapic {
                // SAFETY: a live waiter; what poked it is looked at just below.
                unsafe { glue::kvm_glue_waiter_take(self.waiter.0) };
                self.accept_events(ops, st);
                if st.mp_state == uapi::KVM_MP_STATE_HALTED && self.halt_wakes(vm, ops, st) {
                    st.mp_state = uapi::KVM_MP_STATE_RUNNABLE;
                }
                if st.mp_state != uapi::KVM_MP_STATE_RUNNABLE {
                    self.stats.set(st_::BLOCKING, 1);
                    // SAFETY: a live waiter; returns on a poke, the timer or a signal.
                    unsafe { glue::kvm_glue_waiter_block(self.waiter.0) };
                    self.stats.set(st_::BLOCKING, 0);
                    self.stats.inc(st_::HALT_WAKEUP);
                    continue;
                }
                self.inject_interrupt(vm, ops, st);
            }
            // SAFETY: a live vendor vCPU under the mutex.
            if st.nmi_pending != 0 && unsafe { (ops.inject_nmi)(st.vendor.0) } {
                st.nmi_pending -= 1;
            }
            let nested_cr3 = vm.mmu.lock().root_pa();
            let mut ex = Exit::default();
            let cpu = self.enter_guest_mode(vm);
            // Read after publishing guest mode: a poke either sees us in the guest
            // and sends an IPI (taken as an exit), or happened before this check.
            // SAFETY: a live waiter.
            if has_lapic && unsafe { glue::kvm_glue_waiter_pending(self.waiter.0) } != 0 {
                self.exit_guest_mode(vm, cpu);
                continue;
            }
            // Same for a zap: it either sees us in the guest and kicks, or bumped
            // the generation before this load.
            let gen = vm.tlb_gen.load(Ordering::SeqCst);
            let flush = gen != st.tlb_gen;
            st.tlb_gen = gen;
            st.ran = true;
            st.pdptrs_avail = false;
            // SAFETY: interrupts off, this task's FPU is the guest's.
            unsafe { glue::kvm_glue_fpu_prepare_entry() };
            let host_xcr0 = self.load_guest_xcr0(ops, st);
            // SAFETY: a live vendor vCPU under the mutex.
            let dr7 = unsafe { (ops.get_dr)(st.vendor.0, 7) };
            if st.db_wont_exit || dr7 & DR7_BP_EN_MASK != 0 {
                // SAFETY: interrupts are off until after the exit, which restores the host's.
                unsafe { glue::kvm_glue_load_guest_db(st.db.as_ptr()) };
            }
            // SAFETY: the vendor vCPU and registers are ours (mutex held).
            unsafe { (ops.run)(st.vendor.0, &mut st.regs, nested_cr3, flush, &mut ex) };
            if st.db_wont_exit {
                // The guest may have written them (svm_sync_dirty_debug_regs()).
                // SAFETY: reads DR0-3 into our array.
                unsafe { glue::kvm_glue_save_guest_db(st.db.as_mut_ptr()) };
                st.db_wont_exit = false;
                // SAFETY: a live vendor vCPU under the mutex.
                unsafe { (ops.intercept_dr)(st.vendor.0) };
            }
            // SAFETY: interrupts still off; puts back host breakpoints, if any.
            unsafe { glue::kvm_glue_restore_host_db() };
            if let Some(x) = host_xcr0 {
                // SAFETY: the host's own XCR0 back, interrupts still off.
                unsafe { glue::kvm_glue_xsetbv(x) };
            }
            self.exit_guest_mode(vm, cpu);
            if let Some(l) = (*self.lapic.lock()).as_mut() {
                // The guest may have written CR8 without an exit (V_TPR).
                l.set_cr8(st.regs.cr8);
            }
            self.stats.inc(st_::EXITS);
            match self.handle_exit(vm, ops, st, &ex) {
                Next::Guest => {}
                Next::User(r) => break r,
            }
        };
        // SAFETY: pairs with the load above.
        unsafe { glue::kvm_glue_fpu_load(st.fpu.0, 0) };
        r
    }

    /// Preemption and interrupts off, then "in guest mode on this CPU" published for
    /// pokes and remote TLB flushes; returns the CPU. As upstream vcpu_enter_guest(),
    /// the host interrupt that ends the run is taken in exit_guest_mode() and a
    /// reschedule it asks for happens at its preempt_enable, not on the IRQ exit.
    fn enter_guest_mode(&self, vm: &Vm) -> u32 {
        // SAFETY: undone by exit_guest_mode(), which every caller reaches.
        unsafe { glue::kvm_glue_preempt_disable() };
        // SAFETY: interrupts off until exit_guest_mode(), as VMRUN needs.
        unsafe { glue::kvm_glue_irq_disable() };
        // SAFETY: interrupts are off, so the CPU number is stable.
        let cpu = unsafe { glue::kvm_glue_smp_processor_id() };
        // SAFETY: a live waiter; publishing guest mode is a full barrier.
        unsafe { glue::kvm_glue_waiter_set_cpu(self.waiter.0, cpu + 1) };
        vm.set_in_guest(cpu, true);
        cpu
    }

    /// Undoes enter_guest_mode(); pending host interrupts run here.
    fn exit_guest_mode(&self, vm: &Vm, cpu: u32) {
        // SAFETY: a live waiter.
        unsafe { glue::kvm_glue_waiter_set_cpu(self.waiter.0, 0) };
        vm.set_in_guest(cpu, false);
        // SAFETY: pairs with the disable in enter_guest_mode().
        unsafe { glue::kvm_glue_irq_enable() };
        // SAFETY: pairs with the disable in enter_guest_mode(); may reschedule.
        unsafe { glue::kvm_glue_preempt_enable() };
    }

    /// Applies the kvm_run sync_regs userspace marked dirty (upstream sync_regs()).
    fn sync_regs(&self, vm: &Vm, ops: &X86VendorOps, st: &mut State, dirty: u64) -> Result {
        if dirty & SYNC_REGS_REGS != 0 {
            let r: uapi::kvm_regs = self.run_read(run::SYNC_REGS);
            set_regs(&mut st.regs, &r);
        }
        if dirty & SYNC_REGS_SREGS != 0 {
            let s: uapi::kvm_sregs = self.run_read(run::SYNC_SREGS);
            self.set_sregs(ops, st, &s).map_err(|_| EINVAL)?;
            self.update_pdptrs(vm, st, &s);
        }
        if dirty & SYNC_REGS_EVENTS != 0 {
            let e: uapi::kvm_vcpu_events = self.run_read(run::SYNC_EVENTS);
            set_events(ops, st, &e).map_err(|_| EINVAL)?;
        }
        self.run_write(run::DIRTY_REGS, 0u64);
        Ok(())
    }

    /// The LAPIC's timer, INIT and SIPI (upstream kvm_apic_accept_events() and the
    /// timer's expiry work), and the host timer armed for its next expiry.
    fn accept_events(&self, ops: &X86VendorOps, st: &mut State) {
        let mut g = self.lapic.lock();
        let Some(l) = (*g).as_mut() else {
            return;
        };
        l.timer_poll(now_ns());
        let init = l.take_init();
        if init {
            l.init();
        }
        let sipi = l.take_sipi();
        let nmis = l.take_nmis();
        let expiry = l.next_timer_expiry().unwrap_or(0);
        let cr8 = l.cr8();
        drop(g);
        st.nmi_pending = st.nmi_pending.saturating_add(nmis);
        if expiry != st.armed_ns {
            // SAFETY: a live waiter.
            unsafe { glue::kvm_glue_waiter_arm(self.waiter.0, expiry) };
            st.armed_ns = expiry;
        }
        if init {
            // kvm_vcpu_reset(vcpu, true): the BSP runs again, APs wait for SIPI.
            // SAFETY: a live vendor vCPU under the mutex.
            unsafe { (ops.reset)(st.vendor.0) };
            st.regs = reset_regs(&st.cpuid);
            st.pending = Pending::None;
            st.db = [0; 4];
            st.mp_state = if self.id == 0 {
                uapi::KVM_MP_STATE_RUNNABLE
            } else {
                uapi::KVM_MP_STATE_INIT_RECEIVED
            };
        }
        if let Some(vector) = sipi {
            if st.mp_state == uapi::KVM_MP_STATE_INIT_RECEIVED {
                // kvm_vcpu_deliver_sipi_vector(): start at vector:0000 in real mode.
                let mut s = uapi::kvm_sregs::default();
                // SAFETY: a live vendor vCPU; `s` is a kvm_sregs.
                unsafe { (ops.get_sregs)(st.vendor.0, core::ptr::from_mut(&mut s).cast()) };
                s.cs.selector = u16::from(vector) << 8;
                s.cs.base = u64::from(vector) << 12;
                // SAFETY: as above; the INIT state with a new CS is a valid state.
                unsafe { (ops.set_sregs)(st.vendor.0, core::ptr::from_ref(&s).cast()) };
                st.regs.rip = 0;
                st.mp_state = uapi::KVM_MP_STATE_RUNNABLE;
            }
        }
        st.regs.cr8 = cr8;
    }

    /// Whether a halted vCPU has something to run for (kvm_vcpu_has_events()).
    fn halt_wakes(&self, vm: &Vm, ops: &X86VendorOps, st: &State) -> bool {
        let pending = self
            .lapic
            .lock()
            .as_ref()
            .is_some_and(|l| l.pending_interrupt().is_some())
            || self.has_extint(vm);
        // SAFETY: a live vendor vCPU under the mutex.
        pending && unsafe { (ops.interrupt_allowed)(st.vendor.0, st.regs.rflags) }
    }

    /// Injects the LAPIC's highest pending interrupt, or asks to exit as soon as
    /// the guest can take it (upstream kvm_check_and_inject_events()).
    fn inject_interrupt(&self, vm: &Vm, ops: &X86VendorOps, st: &mut State) {
        // The PIC's ExtINT comes first (kvm_cpu_get_interrupt()).
        if self.has_extint(vm) {
            // SAFETY: a live vendor vCPU under the mutex.
            if unsafe { (ops.interrupt_allowed)(st.vendor.0, st.regs.rflags) } {
                let mut chip = vm.irqchip.lock();
                if let Some(c) = (*chip).as_mut() {
                    let vector = c.pic_read_irq(&vm.locked.lock().vcpus);
                    drop(chip);
                    // SAFETY: as above.
                    unsafe { (ops.inject_irq)(st.vendor.0, vector.into()) };
                    self.stats.inc(st_::IRQ_INJECTIONS);
                }
            } else {
                // SAFETY: as above.
                unsafe { (ops.enable_irq_window)(st.vendor.0) };
            }
            return;
        }
        let mut g = self.lapic.lock();
        let Some(l) = (*g).as_mut() else {
            return;
        };
        if l.pending_interrupt().is_none() {
            return;
        }
        // SAFETY: a live vendor vCPU under the mutex.
        if unsafe { (ops.interrupt_allowed)(st.vendor.0, st.regs.rflags) } {
            if let Some(vector) = l.ack_interrupt() {
                st.regs.cr8 = l.cr8();
                // SAFETY: as above.
                unsafe { (ops.inject_irq)(st.vendor.0, vector.into()) };
                self.stats.inc(st_::IRQ_INJECTIONS);
            }
        } else {
            // SAFETY: as above.
            unsafe { (ops.enable_irq_window)(st.vendor.0) };
        }
    }

    /// Delivers `irq` from vCPU `source` if this vCPU's LAPIC accepts it.
    pub(crate) fn deliver_irq(&self, irq: &Irq, source: u32) -> bool {
        let mut g = self.lapic.lock();
        let Some(l) = (*g).as_mut() else {
            return false;
        };
        if !l.matches(irq, source, source == self.id) {
            return false;
        }
        let accepted = l.accept(irq);
        drop(g);
        if accepted {
            self.waiter.poke();
        }
        accepted
    }

    /// Delivers `irq` from the IOAPIC or an MSI: None if this vCPU's LAPIC is not
    /// a destination, else whether it accepted it.
    pub(crate) fn deliver_irq_from_device(&self, irq: &Irq) -> Option<bool> {
        let mut g = self.lapic.lock();
        let l = (*g).as_mut()?;
        if !l.matches(irq, crate::lapic::NO_SOURCE, false) {
            return None;
        }
        let accepted = l.accept(irq);
        drop(g);
        if accepted {
            self.waiter.poke();
        }
        Some(accepted)
    }

    /// Whether this vCPU takes the PIC's output (kvm_apic_accept_pic_intr()).
    pub(crate) fn accepts_pic_interrupts(&self) -> bool {
        self.lapic
            .lock()
            .as_ref()
            .is_some_and(|l| l.accepts_pic_interrupts())
    }

    /// Makes the vCPU look at its interrupts again (a PIC output rose).
    pub(crate) fn kick(&self) {
        self.waiter.poke();
    }

    /// Carries out what a LAPIC register write asked for.
    fn lapic_action(&self, vm: &Vm, a: Action) {
        match a {
            Action::SendIpi(irq) => vm.deliver_irq(&irq, self.id),
            // The IOAPIC re-delivers a level-triggered line still asserted.
            Action::Eoi { vector, level } => {
                if let Some(chip) = (*vm.irqchip.lock()).as_mut() {
                    chip.ioapic_eoi(vector, level, &vm.locked.lock().vcpus);
                }
            }
            // The timer is re-armed by accept_events() before the next entry.
            Action::TimerChanged | Action::None => {}
        }
    }

    /// A vCPU's pending ExtINT: the PIC's output, if this vCPU takes it
    /// (kvm_cpu_has_extint()). The LAPIC lock is dropped before the irqchip's.
    fn has_extint(&self, vm: &Vm) -> bool {
        self.accepts_pic_interrupts()
            && (*vm.irqchip.lock())
                .as_ref()
                .is_some_and(|c| c.pic_output())
    }

    fn get_sregs(&self, ops: &X86VendorOps, st: &State) -> uapi::kvm_sregs {
        let mut s = uapi::kvm_sregs::default();
        // SAFETY: a live vendor vCPU under the mutex; `s` is a kvm_sregs.
        unsafe { (ops.get_sregs)(st.vendor.0, core::ptr::from_mut(&mut s).cast()) };
        s.apic_base = self.apic_base(st);
        s.cr8 = self.lapic.lock().as_ref().map_or(st.regs.cr8, |l| l.cr8());
        // An external interrupt being injected (__get_sregs()).
        let mut e = uapi::kvm_vcpu_events::default();
        // SAFETY: a live vendor vCPU under the mutex; `e` is a kvm_vcpu_events.
        unsafe { (ops.get_events)(st.vendor.0, core::ptr::from_mut(&mut e).cast()) };
        if e.interrupt.injected != 0 && e.interrupt.soft == 0 {
            let nr = usize::from(e.interrupt.nr);
            if let Some(w) = s.interrupt_bitmap.get_mut(nr / 64) {
                *w |= 1 << (nr % 64);
            }
        }
        s
    }

    /// KVM_SET_SREGS, checked as kvm_is_valid_sregs() with the vCPU's CPUID.
    fn set_sregs(&self, ops: &X86VendorOps, st: &mut State, s: &uapi::kvm_sregs) -> Result {
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
        if let Some(l) = (*self.lapic.lock()).as_mut() {
            if !set_apic_base(l, &st.cpuid, s.apic_base, true) {
                return Err(EINVAL);
            }
        }
        // SAFETY: a live vendor vCPU under the mutex; `s` is a kvm_sregs.
        let r = unsafe { (ops.set_sregs)(st.vendor.0, core::ptr::from_ref(s).cast()) };
        if r != 0 {
            return Err(Error::from_errno(r));
        }
        st.apic_base = s.apic_base;
        // kvm_set_cr8(), whose error for reserved bits upstream ignores here.
        if s.cr8 & !0xf == 0 {
            st.regs.cr8 = s.cr8;
            if let Some(l) = (*self.lapic.lock()).as_mut() {
                l.set_cr8(s.cr8);
            }
        }
        // The lowest vector of the bitmap is injected again (__set_sregs()).
        let pending = s
            .interrupt_bitmap
            .iter()
            .enumerate()
            .find(|(_, w)| **w != 0)
            .map(|(i, w)| i as u32 * 64 + w.trailing_zeros());
        if let Some(v) = pending {
            // SAFETY: a live vendor vCPU under the mutex.
            unsafe { (ops.inject_irq)(st.vendor.0, v) };
        }
        // "Older userspace won't unhalt the vcpu on reset."
        if self.id == 0
            && st.regs.rip == RESET_RIP
            && s.cs.selector == 0xf000
            && s.cs.base == 0xffff_0000
            && s.cr0 & 1 == 0
        {
            st.mp_state = uapi::KVM_MP_STATE_RUNNABLE;
        }
        Ok(())
    }

    fn apic_base(&self, st: &State) -> u64 {
        self.lapic
            .lock()
            .as_ref()
            .map_or(st.apic_base, |l| l.base())
    }

    /// Finishes an instruction whose data userspace provided (upstream's
    /// complete_userspace_io callbacks). An MMIO read-modify-write can need a second
    /// exit, for its write.
    fn complete_userspace(
        &self,
        vm: &Vm,
        ops: &X86VendorOps,
        st: &mut State,
    ) -> Option<Result<isize>> {
        let p = core::mem::replace(&mut st.pending, Pending::None);
        // Userspace moved RIP: the instruction is no longer there to finish.
        let at = |rip: u64| st.regs.rip == rip;
        match p {
            Pending::None => {}
            Pending::Pio {
                input,
                size,
                rip,
                next_rip,
            } if at(rip) => {
                if input {
                    let val = u64::from_le_bytes(self.pio_bytes());
                    set_in_result(&mut st.regs.gpr[reg::RAX], size, val);
                }
                st.regs.rip = next_rip;
            }
            Pending::MmioRead {
                insn,
                rip,
                next_rip,
                gpa,
            } if at(rip) => {
                let mut d = [0u8; 8];
                for (i, b) in d.iter_mut().enumerate() {
                    *b = self.run_read_u8(run::U + 8 + i);
                }
                if let Some(w) = self.finish_read(st, &insn, u64::from_le_bytes(d)) {
                    st.regs.rip = next_rip;
                    self.mmio_exit(gpa, insn.op_size, Some(w));
                    return Some(Ok(0));
                }
                st.regs.rip = next_rip;
            }
            Pending::StringOut { insn, rip } if at(rip) => {
                emulate::string_advance(&insn, &mut st.regs.gpr, st.regs.rflags, 1);
                self.string_next(st, &insn, rip);
            }
            Pending::StringIn { insn, rip, count } if at(rip) => {
                let cpu = self.cpu(ops, st);
                let size = u64::from(insn.op_size);
                let mut buf = [0u8; 8];
                for i in 0..count {
                    // Userspace may have lowered RCX: stop where REP would.
                    if insn.rep.is_some() && emulate::string_count(&insn, &st.regs.gpr) == 0 {
                        break;
                    }
                    let ea = emulate::string_dst_address(&insn, &st.regs.gpr);
                    let la = cpu.linear(0, ea);
                    let off = (i * size) as usize;
                    let n = insn.op_size as usize;
                    // SAFETY: the PIO page is ours; count * size <= 1024 (ins_read_ahead).
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            self.pio_data().wrapping_add(off % PAGE_SIZE),
                            buf.as_mut_ptr(),
                            n.min(8),
                        )
                    };
                    let stored = cpu
                        .translate(vm, la, true, false)
                        .map_err(Failure::Walk)
                        .and_then(|gpa| {
                            emul::write_phys(vm, gpa, buf.get(..n).unwrap_or(&[]))
                                .ok_or(Failure::Emulation)
                        });
                    if let Err(f) = stored {
                        return self.failure(ops, st, f, la).into_user();
                    }
                    emulate::string_advance(&insn, &mut st.regs.gpr, st.regs.rflags, 1);
                }
                self.string_next(st, &insn, rip);
            }
            _ => {}
        }
        None
    }

    /// After string I/O elements: the next instruction, or the same one again
    /// while REP has elements left (it exits again).
    fn string_next(&self, st: &mut State, insn: &Insn, rip: u64) {
        if emulate::string_done(insn, &st.regs.gpr, st.regs.rflags) {
            st.regs.rip = next_ip(st, insn, rip);
        }
    }

    /// The first 8 bytes of the PIO page.
    fn pio_bytes(&self) -> [u8; 8] {
        let mut buf = [0u8; 8];
        // SAFETY: the PIO page is ours and page-sized.
        unsafe { core::ptr::copy_nonoverlapping(self.pio_data(), buf.as_mut_ptr(), 8) };
        buf
    }

    /// Completes `insn` with `value` read from its memory operand; returns what it
    /// writes back to memory, if anything (RMW ALU ops, XCHG).
    fn finish_read(&self, st: &mut State, insn: &Insn, value: u64) -> Option<u64> {
        match insn.op {
            Op::Load { .. } => {
                emulate::complete_load(insn, &mut st.regs.gpr, value);
                None
            }
            Op::Xchg { .. } => {
                let old = emulate::store_value(insn, &st.regs.gpr);
                emulate::complete_load(insn, &mut st.regs.gpr, value);
                old
            }
            _ => {
                let (w, flags) = emulate::alu(insn, &mut st.regs.gpr, st.regs.rflags, value);
                st.regs.rflags = flags | RFLAGS_FIXED;
                w
            }
        }
    }

    /// Fills kvm_run for KVM_EXIT_MMIO: a write of `data`, or a read.
    fn mmio_exit(&self, gpa: u64, len: u8, data: Option<u64>) {
        self.stats.inc(st_::MMIO_EXITS);
        self.set_exit(uapi::KVM_EXIT_MMIO);
        self.run_write(run::U, gpa);
        let d = data.unwrap_or(0).to_le_bytes();
        for (i, b) in d.iter().enumerate() {
            let v = if i < len as usize { *b } else { 0 };
            self.run_write(run::U + 8 + i, v);
        }
        self.run_write(run::U + 16, u32::from(len));
        self.run_write(run::U + 20, u8::from(data.is_some()));
    }

    /// The state the emulator reads (segments, control registers).
    fn cpu(&self, ops: &X86VendorOps, st: &State) -> Cpu {
        let mut s = uapi::kvm_sregs::default();
        // SAFETY: a live vendor vCPU under the mutex; `s` is a kvm_sregs.
        unsafe { (ops.get_sregs)(st.vendor.0, core::ptr::from_mut(&mut s).cast()) };
        Cpu::new(s, st.regs.rflags, cpuid::maxphyaddr(&st.cpuid))
    }

    /// An instruction that could not be emulated: a #PF for the guest when its
    /// own page tables were in the way, else an emulation failure for userspace.
    fn failure(&self, ops: &X86VendorOps, st: &mut State, f: Failure, la: u64) -> Next {
        match f {
            Failure::Walk(WalkError::PageFault { error_code }) => {
                let mut s = uapi::kvm_sregs::default();
                // SAFETY: a live vendor vCPU; `s` is a kvm_sregs.
                unsafe { (ops.get_sregs)(st.vendor.0, core::ptr::from_mut(&mut s).cast()) };
                s.cr2 = la;
                // SAFETY: as above; only CR2 changed.
                unsafe { (ops.set_sregs)(st.vendor.0, core::ptr::from_ref(&s).cast()) };
                // SAFETY: as above.
                unsafe { (ops.queue_exception)(st.vendor.0, PF_VECTOR, true, error_code) };
                Next::Guest
            }
            _ => self.emulation_failure(),
        }
    }

    /// NPF on a GPA that is not RAM (or a write to a read-only slot): emulate the
    /// instruction against the in-kernel LAPIC or exit with KVM_EXIT_MMIO
    /// (upstream handle_mmio_page_fault() → x86_emulate_instruction()).
    fn emulate_mmio(&self, vm: &Vm, ops: &X86VendorOps, st: &mut State, gpa: u64) -> Next {
        let cpu = self.cpu(ops, st);
        let rip = st.regs.rip;
        let insn = match cpu.fetch_decode(vm, rip) {
            Ok(i) => i,
            Err(f) => return self.failure(ops, st, f, cpu.linear(1, rip)),
        };
        if insn.is_string() || insn.lock && matches!(insn.op, Op::Alu { .. }) {
            // String MMIO and atomics on MMIO are not emulated yet.
            return self.emulation_failure();
        }
        let next_rip = next_ip(st, &insn, rip);
        if let Some(n) = self.lapic_mmio(vm, st, &insn, gpa, next_rip) {
            return n;
        }
        if let Some(n) = self.ioapic_mmio(vm, st, &insn, gpa, next_rip) {
            return n;
        }
        match insn.op {
            Op::Store { .. } => {
                let v = emulate::store_value(&insn, &st.regs.gpr);
                // Upstream advances RIP before the write exit (writeback).
                st.regs.rip = next_rip;
                self.mmio_exit(gpa, insn.op_size, Some(v.unwrap_or(0)));
                Next::User(Ok(0))
            }
            Op::Load { .. } | Op::Alu { .. } | Op::Xchg { .. } => {
                st.pending = Pending::MmioRead {
                    insn,
                    rip,
                    next_rip,
                    gpa,
                };
                self.mmio_exit(gpa, insn.op_size, None);
                Next::User(Ok(0))
            }
            _ => self.emulation_failure(),
        }
    }

    /// An access to the xAPIC page of an enabled in-kernel LAPIC, done in the kernel.
    fn lapic_mmio(
        &self,
        vm: &Vm,
        st: &mut State,
        insn: &Insn,
        gpa: u64,
        next_rip: u64,
    ) -> Option<Next> {
        let mut g = self.lapic.lock();
        let l = (*g).as_mut()?;
        let base = l.mmio_base()?;
        if gpa < base || gpa >= base + 4096 {
            return None;
        }
        let off = (gpa - base) as u32;
        let len = u32::from(insn.op_size);
        let now = now_ns();
        let action = match insn.op {
            Op::Store { .. } => {
                let v = emulate::store_value(insn, &st.regs.gpr).unwrap_or(0);
                l.mmio_write_sized(off, len, v as u32, now)
            }
            _ => {
                let v = l.mmio_read(off, len, now);
                drop(g);
                if let Some(w) = self.finish_read(st, insn, v.into()) {
                    let mut g = self.lapic.lock();
                    let a = (*g).as_mut().map_or(Action::None, |l| {
                        l.mmio_write_sized(off, len, w as u32, now)
                    });
                    drop(g);
                    self.lapic_action(vm, a);
                }
                st.regs.rip = next_rip;
                if let Some(l) = (*self.lapic.lock()).as_ref() {
                    st.regs.cr8 = l.cr8();
                }
                return Some(Next::Guest);
            }
        };
        st.regs.cr8 = l.cr8();
        drop(g);
        self.lapic_action(vm, action);
        st.regs.rip = next_rip;
        Some(Next::Guest)
    }

    /// IN/OUT to a port of the in-kernel PIC, done in the kernel (upstream's
    /// KVM_PIO_BUS devices).
    fn kernel_pio(
        &self,
        vm: &Vm,
        st: &mut State,
        input: bool,
        size: u8,
        ex: &Exit,
    ) -> Option<Next> {
        let port = ex.info as u16;
        if !crate::pic::Pic::handles_port(port) {
            return None;
        }
        let mut chip = vm.irqchip.lock();
        let c = (*chip).as_mut()?;
        let vcpus = vm.locked.lock();
        let rax = &mut st.regs.gpr[reg::RAX];
        if input {
            let v = c.pic_port(port, size.into(), None, &vcpus.vcpus);
            // Wider reads give 0 in the bytes read (picdev_read()).
            set_in_result(rax, size, u64::from(v));
        } else {
            c.pic_port(port, size.into(), Some(*rax as u8), &vcpus.vcpus);
        }
        drop(vcpus);
        drop(chip);
        self.stats.inc(st_::IO_EXITS);
        st.regs.rip = ex.next_rip;
        Some(Next::Guest)
    }

    /// An access to the in-kernel IOAPIC's registers.
    fn ioapic_mmio(
        &self,
        vm: &Vm,
        st: &mut State,
        insn: &Insn,
        gpa: u64,
        next_rip: u64,
    ) -> Option<Next> {
        let mut chip = vm.irqchip.lock();
        let c = (*chip).as_mut()?;
        if !c.ioapic_in_range(gpa) {
            return None;
        }
        let len = u32::from(insn.op_size);
        match insn.op {
            Op::Store { .. } => {
                let v = emulate::store_value(insn, &st.regs.gpr).unwrap_or(0);
                c.ioapic_write(gpa, len, v, &vm.locked.lock().vcpus);
            }
            Op::Load { .. } => {
                let v = c.ioapic_read(gpa, len);
                drop(chip);
                self.finish_read(st, insn, v);
            }
            // A read-modify-write of an IOAPIC register is not something guests do.
            _ => return Some(self.emulation_failure()),
        }
        st.regs.rip = next_rip;
        Some(Next::Guest)
    }

    /// INS/OUTS (IOIO exit with the string bit): OUTS exits once per element, INS
    /// once per read-ahead batch, as upstream's emulator does.
    fn emulate_string_io(&self, vm: &Vm, ops: &X86VendorOps, st: &mut State, ex: &Exit) -> Next {
        let cpu = self.cpu(ops, st);
        let rip = st.regs.rip;
        let insn = match cpu.fetch_decode(vm, rip) {
            Ok(i) => i,
            Err(f) => return self.failure(ops, st, f, cpu.linear(1, rip)),
        };
        let port = ex.info as u16;
        let size = insn.op_size;
        if emulate::string_count(&insn, &st.regs.gpr) == 0 {
            st.regs.rip = next_ip(st, &insn, rip);
            return Next::Guest;
        }
        let (input, count) = match insn.op {
            Op::Outs => {
                let la = cpu.linear(insn.seg, emulate::string_src_address(&insn, &st.regs.gpr));
                let mut buf = [0u8; 8];
                let n = usize::from(size).min(8);
                let read = cpu
                    .translate(vm, la, false, false)
                    .map_err(Failure::Walk)
                    .and_then(|gpa| {
                        emul::read_phys(vm, gpa, buf.get_mut(..n).unwrap_or(&mut []))
                            .ok_or(Failure::Emulation)
                    });
                if let Err(f) = read {
                    return self.failure(ops, st, f, la);
                }
                // SAFETY: the PIO page is ours; n <= 8.
                unsafe { core::ptr::copy_nonoverlapping(buf.as_ptr(), self.pio_data(), n) };
                st.pending = Pending::StringOut { insn, rip };
                (false, 1)
            }
            Op::Ins => {
                let count = emulate::ins_read_ahead(&insn, &st.regs.gpr, st.regs.rflags);
                st.pending = Pending::StringIn { insn, rip, count };
                (true, count)
            }
            _ => return self.emulation_failure(),
        };
        self.stats.inc(st_::IO_EXITS);
        self.io_exit(input, size, port, count as u32);
        Next::User(Ok(0))
    }

    /// Fills kvm_run for KVM_EXIT_IO; the data is at the start of the PIO page.
    fn io_exit(&self, input: bool, size: u8, port: u16, count: u32) {
        self.set_exit(uapi::KVM_EXIT_IO);
        let u = run::U;
        let dir = if input {
            uapi::KVM_EXIT_IO_IN
        } else {
            uapi::KVM_EXIT_IO_OUT
        };
        self.run_write(u, dir as u8);
        self.run_write(u + 1, size);
        self.run_write(u + 2, port);
        self.run_write(u + 4, count);
        self.run_write(
            u + 8,
            u64::from(uapi::KVM_PIO_PAGE_OFFSET) * PAGE_SIZE as u64,
        );
    }

    fn handle_exit(&self, vm: &Vm, ops: &X86VendorOps, st: &mut State, ex: &Exit) -> Next {
        match ex.kind {
            exit::NONE | exit::UD => {
                if ex.kind == exit::NONE && ex.next_rip == 0 {
                    self.stats.inc(st_::IRQ_EXITS);
                }
                if ex.next_rip != 0 {
                    st.regs.rip = ex.next_rip;
                }
                Next::Guest
            }
            exit::IO if ex.flags & exit::IO_STRING == 0 => {
                let input = ex.flags & exit::IO_IN != 0;
                let size = ex.info2 as u8;
                if let Some(n) = self.kernel_pio(vm, st, input, size, ex) {
                    return n;
                }
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
                self.stats.inc(st_::IO_EXITS);
                st.pending = Pending::Pio {
                    input,
                    size,
                    rip: st.regs.rip,
                    next_rip: ex.next_rip,
                };
                self.io_exit(input, size, ex.info as u16, 1);
                Next::User(Ok(0))
            }
            exit::HLT => {
                self.stats.inc(st_::HALT_EXITS);
                st.regs.rip = ex.next_rip;
                if self.lapic.lock().is_some() {
                    // The in-kernel LAPIC wakes it (kvm_emulate_halt()).
                    st.mp_state = uapi::KVM_MP_STATE_HALTED;
                    return Next::Guest;
                }
                self.set_exit(uapi::KVM_EXIT_HLT);
                Next::User(Ok(0))
            }
            exit::IRQ_WINDOW => {
                self.stats.inc(st_::IRQ_WINDOW_EXITS);
                Next::Guest
            }
            exit::SHUTDOWN => {
                // The vendor put the vCPU in its INIT state; so are the registers.
                st.regs = reset_regs(&st.cpuid);
                st.pending = Pending::None;
                self.set_exit(uapi::KVM_EXIT_SHUTDOWN);
                Next::User(Ok(0))
            }
            exit::NPF => self.page_fault(vm, ops, st, ex),
            exit::CPUID => {
                let (f, i) = (st.regs.gpr[reg::RAX] as u32, st.regs.gpr[reg::RCX] as u32);
                let r = self.cpuid_runtime(ops, st);
                cpuid::update_runtime(&mut st.cpuid, &r);
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
                    let v = self.get_msr(vm, ops, st, index, false);
                    if let Some(v) = v {
                        st.regs.gpr[reg::RAX] = v & 0xffff_ffff;
                        st.regs.gpr[reg::RDX] = v >> 32;
                    }
                    v.is_some()
                } else {
                    let v = (st.regs.gpr[reg::RDX] << 32) | (st.regs.gpr[reg::RAX] & 0xffff_ffff);
                    self.set_msr(vm, ops, st, index, v, false)
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
                self.hypercall(ops, st);
                st.regs.rip = ex.next_rip;
                Next::Guest
            }
            exit::INVALID_OPCODE => self.invalid_opcode(vm, ops, st),
            exit::XSETBV => self.xsetbv(ops, st, ex.next_rip),
            exit::DR_ACCESS => {
                st.db_wont_exit = true;
                Next::Guest
            }
            exit::FAIL_ENTRY => {
                self.set_exit(uapi::KVM_EXIT_FAIL_ENTRY);
                self.run_write(run::U, ex.hw_reason);
                // SAFETY: reads the CPU number only.
                self.run_write(run::U + 8, unsafe { glue::kvm_glue_smp_processor_id() });
                Next::User(Ok(0))
            }
            exit::IO => self.emulate_string_io(vm, ops, st, ex),
            _ => {
                self.set_exit(uapi::KVM_EXIT_INTERNAL_ERROR);
                self.run_write(run::U, uapi::KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON);
                self.run_write(run::U + 4, 2u32);
                self.run_write(run::U + 8, ex.hw_reason);
                // SAFETY: reads the CPU number only.
                let cpu = unsafe { glue::kvm_glue_smp_processor_id() };
                self.run_write(run::U + 16, u64::from(cpu));
                Next::User(Ok(0))
            }
        }
    }

    /// KVM_INTERNAL_ERROR_DELIVERY_EV with upstream's data: exit info 2, reason,
    /// exit info 1, the GPA and the CPU of the last entry.
    fn vectoring_exit(&self, ex: &Exit) -> Next {
        self.set_exit(uapi::KVM_EXIT_INTERNAL_ERROR);
        self.run_write(run::U, uapi::KVM_INTERNAL_ERROR_DELIVERY_EV);
        self.run_write(run::U + 4, 5u32);
        self.run_write(run::U + 8, ex.info);
        self.run_write(run::U + 16, ex.hw_reason);
        self.run_write(run::U + 24, u64::from(ex.flags & !exit::VECTORING));
        self.run_write(run::U + 32, ex.info);
        // SAFETY: reads the CPU number only.
        let cpu = unsafe { glue::kvm_glue_smp_processor_id() };
        self.run_write(run::U + 40, u64::from(cpu));
        Next::User(Ok(0))
    }

    /// An instruction the emulator does not handle, reported as upstream reports a
    /// failed emulation (handle_emulation_failure() without the instruction bytes).
    fn emulation_failure(&self) -> Next {
        self.set_exit(uapi::KVM_EXIT_INTERNAL_ERROR);
        self.run_write(run::U, uapi::KVM_INTERNAL_ERROR_EMULATION);
        self.run_write(run::U + 4, 0u32);
        Next::User(Ok(0))
    }

    /// NPF: map the page backing the GPA, or report what cannot be mapped.
    fn page_fault(&self, vm: &Vm, ops: &X86VendorOps, st: &mut State, ex: &Exit) -> Next {
        let gfn = ex.info >> 12;
        let write = ex.flags & exit::PF_WRITE != 0;
        let (slot, gen) = vm.find_slot(gfn);
        if slot.is_none() || write && slot.is_some_and(|s| s.readonly()) {
            if ex.flags & exit::VECTORING != 0 {
                // MMIO while delivering an event cannot be emulated
                // (kvm_prepare_event_vectoring_exit()).
                return self.vectoring_exit(ex);
            }
            return self.emulate_mmio(vm, ops, st, ex.info);
        }
        let Some(slot) = slot else {
            return self.emulation_failure();
        };
        // A race with a slot change just faults again.
        match self.map_page(vm, &slot, gen, gfn, write) {
            Ok(_) => Next::Guest,
            Err(e) => Next::User(Err(e)),
        }
    }

    /// Pins the page backing `gfn` in `slot` (read at slot generation `gen`) and
    /// maps it. Ok(true): `gfn` is mapped (by this call or before); Ok(false): the
    /// slots changed meanwhile, look the slot up again.
    /// A dirty-logged slot's pages are mapped read-only until written (`write`:
    /// the fault is a write), which marks them dirty.
    fn map_page(
        &self,
        vm: &Vm,
        slot: &crate::memslot::Slot,
        gen: u64,
        gfn: u64,
        write: bool,
    ) -> Result<bool> {
        let pin_write = !slot.readonly();
        let logged = slot.dirty_logging();
        if write && pin_write {
            // Marked before the page becomes writable, so a harvest in between
            // cannot miss it.
            if logged {
                vm.mark_dirty(gfn);
            }
            if vm.mmu.lock().make_writable(gfn) {
                return Ok(true);
            }
        }
        let mut pin_write = pin_write;
        let mut hpa = 0u64;
        let hva = slot.hva(gfn);
        // SAFETY: the VM's owner mm is current (checked by the ioctl); pins one page.
        let mut r = unsafe { glue::kvm_glue_pin_user_page(hva, i32::from(pin_write), &mut hpa) };
        if r != 0 && pin_write && !write {
            // A read of a writable slot whose memory is read-only now (mprotect):
            // map it read-only, as upstream's hva_to_pfn() falls back to.
            pin_write = false;
            // SAFETY: as above.
            r = unsafe { glue::kvm_glue_pin_user_page(hva, 0, &mut hpa) };
        }
        if r != 0 {
            return Err(EFAULT);
        }
        let writable = pin_write && (write || !logged);
        let mut mmu = vm.mmu.lock();
        let mapped = loop {
            // Slots changed, or user memory is being invalidated (MMU notifier):
            // the pinned page may be stale, fault again.
            if vm.slots_gen.load(Ordering::SeqCst) != gen || vm.invalidating() {
                break Ok(None);
            }
            match mmu.map(gfn, hpa, writable, pin_write) {
                Err(e) if e == EAGAIN => {
                    // Page-table pages are allocated outside the lock (see Mmu).
                    let need = mmu.spare_needed();
                    drop(mmu);
                    let mut pages = KVec::with_capacity(need, GFP_KERNEL)?;
                    for _ in 0..need {
                        pages.push(crate::pages::Pages::new(PAGE_SIZE)?, GFP_KERNEL)?;
                    }
                    mmu = vm.mmu.lock();
                    mmu.topup(pages);
                }
                r => break r.map(Some),
            }
        };
        if mapped == Ok(Some(false)) && write && pin_write {
            // Mapped read-only while the memory was read-only; writable again now.
            if let Some(old) = mmu.upgrade(gfn, hpa, writable) {
                vm.flush_all();
                drop(mmu);
                // SAFETY: the old leaf's read-only pin, no longer mapped or cached.
                unsafe { glue::kvm_glue_unpin_phys(old, 0) };
                self.stats.inc(st_::PF_FIXED);
                return Ok(true);
            }
        }
        let pages = mmu.mapped;
        drop(mmu);
        if mapped == Ok(Some(true)) {
            vm.stats.set(stats::vm::PAGES_4K, pages);
            self.stats.inc(st_::PF_FIXED);
            return Ok(true);
        }
        // SAFETY: our pin, not handed to the MMU.
        unsafe { glue::kvm_glue_unpin_phys(hpa, 0) };
        // Some(false): another vCPU mapped it first.
        mapped.map(|m| m.is_some())
    }

    /// A KVM hypercall (upstream ____kvm_emulate_hypercall()): the number in
    /// RAX, the result back in RAX; only from CPL 0.
    fn hypercall(&self, ops: &X86VendorOps, st: &mut State) {
        let s = self.get_sregs(ops, st);
        let long = s.efer & EFER_LMA != 0 && s.cs.l != 0;
        let mask = if long { u64::MAX } else { 0xffff_ffff };
        let nr = st.regs.gpr[reg::RAX] & mask;
        let ret: i64 = if s.ss.dpl != 0 {
            -KVM_EPERM
        } else {
            match nr {
                KVM_HC_VAPIC_POLL_IRQ => 0,
                KVM_HC_SCHED_YIELD => {
                    // A hint that the vCPU waits for another: let others run.
                    // SAFETY: process context, only our vCPU mutex held.
                    unsafe { glue::kvm_glue_cond_resched() };
                    0
                }
                // No PV kick, IPI or clock pairing (none is in the PV CPUID).
                _ => -KVM_ENOSYS,
            }
        };
        st.regs.gpr[reg::RAX] = ret as u64 & mask;
    }

    /// #UD in the guest: the other vendor's hypercall instruction (VMCALL) is
    /// patched to VMMCALL and run again unless KVM_X86_QUIRK_FIX_HYPERCALL_INSN
    /// is disabled (upstream em_hypercall/emulator_fix_hypercall); any other #UD
    /// goes back to the guest.
    fn invalid_opcode(&self, vm: &Vm, ops: &X86VendorOps, st: &mut State) -> Next {
        const VMCALL: [u8; 3] = [0x0f, 0x01, 0xc1];
        const VMMCALL: [u8; 3] = [0x0f, 0x01, 0xd9];
        let fix = vm.disabled_quirks.load(Ordering::Relaxed) & QUIRK_FIX_HYPERCALL_INSN == 0;
        let cpu = self.cpu(ops, st);
        let la = cpu.linear(1, st.regs.rip);
        if fix {
            let mut insn = [0u8; 3];
            let code = cpu.translate(vm, la, false, true).ok();
            if code.is_some_and(|gpa| emul::read_phys(vm, gpa, &mut insn).is_some())
                && insn == VMCALL
            {
                return match cpu.translate(vm, la, true, false) {
                    Ok(gpa) if emul::write_phys(vm, gpa, &VMMCALL).is_some() => Next::Guest,
                    Ok(_) => self.emulation_failure(),
                    Err(e) => self.failure(ops, st, Failure::Walk(e), la),
                };
            }
        }
        // SAFETY: a live vendor vCPU under the mutex.
        unsafe { (ops.queue_exception)(st.vendor.0, UD_VECTOR, false, 0) };
        Next::Guest
    }

    /// KVM_PRE_FAULT_MEMORY (kvm_vcpu_pre_fault_memory()): maps the range page
    /// by page; the range left is passed back, and the call succeeds if any page
    /// was mapped. A GPA without a slot is -ENOENT (upstream: emulated MMIO).
    fn pre_fault(&self, vm: &Vm, arg: usize) -> Result<isize> {
        let mut r: uapi::kvm_pre_fault_memory = user::read(arg)?;
        if r.flags != 0
            || r.gpa % PAGE_SIZE as u64 != 0
            || r.size % PAGE_SIZE as u64 != 0
            || r.gpa.checked_add(r.size).is_none_or(|end| end <= r.gpa)
        {
            return Err(EINVAL);
        }
        let full = r.size;
        let mut res = Ok(());
        while r.size != 0 {
            // SAFETY: plain query of the current task.
            if unsafe { glue::kvm_glue_signal_pending() } != 0 {
                res = Err(EINTR);
                break;
            }
            let gfn = r.gpa >> 12;
            let (slot, gen) = vm.find_slot(gfn);
            let Some(slot) = slot else {
                res = Err(ENOENT);
                break;
            };
            match self.map_page(vm, &slot, gen, gfn, false) {
                Ok(true) => {
                    r.gpa += PAGE_SIZE as u64;
                    r.size -= PAGE_SIZE as u64;
                }
                Ok(false) => {}
                Err(e) => {
                    res = Err(e);
                    break;
                }
            }
            // SAFETY: process context, only our vCPU mutex held.
            unsafe { glue::kvm_glue_cond_resched() };
        }
        user::write(arg, &r)?;
        if r.size == full {
            res?;
        }
        Ok(0)
    }

    /// KVM_GET_MSRS / KVM_SET_MSRS: entries in order up to the first that fails;
    /// returns how many were done (upstream msr_io()).
    fn msrs(
        &self,
        vm: &Vm,
        ops: &X86VendorOps,
        st: &mut State,
        arg: usize,
        set: bool,
    ) -> Result<isize> {
        let h: ArrayHeader = user::read(arg)?;
        if h.n >= MAX_IO_MSRS {
            return Err(E2BIG);
        }
        let base = arg + size_of::<ArrayHeader>();
        let mut e: KVec<uapi::kvm_msr_entry> = user::read_array(base, h.n as usize)?;
        let mut done = 0;
        for m in e.iter_mut() {
            let ok = if set {
                self.set_msr(vm, ops, st, m.index, m.data, true)
            } else {
                match self.get_msr(vm, ops, st, m.index, true) {
                    Some(v) => {
                        m.data = v;
                        true
                    }
                    None => false,
                }
            };
            if !ok {
                break;
            }
            done += 1;
        }
        if !set {
            user::write_array(base, &e)?;
        }
        Ok(done)
    }

    /// The guest's TSC now (the host's plus the vendor's offset).
    fn guest_tsc(&self, ops: &X86VendorOps, st: &State) -> u64 {
        let mut v = 0;
        // SAFETY: a live vendor vCPU under the mutex.
        if unsafe { (ops.get_msr)(st.vendor.0, MSR_IA32_TSC, &mut v) } != 0 {
            return now_tsc();
        }
        v
    }

    /// Reads an MSR for the guest (RDMSR) or for userspace (`host`, KVM_GET_MSRS).
    fn get_msr(
        &self,
        vm: &Vm,
        ops: &X86VendorOps,
        st: &State,
        index: u32,
        host: bool,
    ) -> Option<u64> {
        match index {
            // Readable by the guest unless KVM_CAP_MSR_PLATFORM_INFO turned it off.
            MSR_PLATFORM_INFO => (host || vm.platform_info_readable.load(Ordering::Relaxed))
                .then_some(st.platform_info),
            MSR_IA32_APICBASE => Some(self.apic_base(st)),
            MSR_IA32_MISC_ENABLE => Some(st.misc_enable),
            lapic::MSR_TSC_DEADLINE | lapic::X2APIC_MSR_BASE..=X2APIC_MSR_LAST => {
                let tsc = self.guest_tsc(ops, st);
                match (*self.lapic.lock()).as_ref() {
                    Some(l) => l.read_msr(index, now_ns(), tsc).ok(),
                    // Without a LAPIC the deadline reads 0 (kvm_get_lapic_tscdeadline_msr()).
                    None => (index == lapic::MSR_TSC_DEADLINE).then_some(0),
                }
            }
            _ => {
                let mut v = 0;
                // SAFETY: a live vendor vCPU under the mutex.
                (unsafe { (ops.get_msr)(st.vendor.0, index, &mut v) } == 0).then_some(v)
            }
        }
    }

    /// Writes an MSR for the guest (WRMSR) or for userspace (`host`, KVM_SET_MSRS).
    fn set_msr(
        &self,
        vm: &Vm,
        ops: &X86VendorOps,
        st: &mut State,
        index: u32,
        v: u64,
        host: bool,
    ) -> bool {
        match index {
            MSR_IA32_MISC_ENABLE => {
                st.misc_enable = v;
                true
            }
            // Written by userspace only (upstream kvm_set_msr_common()).
            MSR_PLATFORM_INFO => {
                if host {
                    st.platform_info = v;
                }
                host
            }
            MSR_IA32_APICBASE => {
                let mut g = self.lapic.lock();
                match (*g).as_mut() {
                    Some(l) => set_apic_base(l, &st.cpuid, v, host),
                    None => {
                        st.apic_base = v;
                        true
                    }
                }
            }
            lapic::MSR_TSC_DEADLINE | lapic::X2APIC_MSR_BASE..=X2APIC_MSR_LAST => {
                let tsc = self.guest_tsc(ops, st);
                let mut g = self.lapic.lock();
                let Some(l) = (*g).as_mut() else {
                    // Without a LAPIC a deadline write is dropped, as upstream.
                    return index == lapic::MSR_TSC_DEADLINE;
                };
                let r = l.write_msr(index, v, now_ns(), tsc);
                st.regs.cr8 = l.cr8();
                drop(g);
                match r {
                    Ok(a) => {
                        self.lapic_action(vm, a);
                        true
                    }
                    Err(_) => false,
                }
            }
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
const X2APIC_MSR_LAST: u32 = 0x8ff;
// include/uapi/linux/kvm_para.h
const KVM_ENOSYS: i64 = 1000;
const KVM_EPERM: i64 = 1;
const KVM_HC_VAPIC_POLL_IRQ: u64 = 1;
const KVM_HC_SCHED_YIELD: u64 = 11;
const UD_VECTOR: u32 = 6;
const QUIRK_FIX_HYPERCALL_INSN: u64 = uapi::KVM_X86_QUIRK_FIX_HYPERCALL_INSN as u64;
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
    if cmd == ioctl::KVM_GET_STATS_FD {
        // Needs the references, not the vCPU lock.
        let r =
            f.vm.check_owner()
                .and_then(|()| stats::vcpu_fd(f.vm.clone(), f.vcpu.clone()));
        return dev::ioctl_ret(r);
    }
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
    let mut h: ArrayHeader = user::read(arg)?;
    if h.n < 1 {
        return Err(E2BIG);
    }
    let cap = (h.n as usize).min(cpuid::MAX_ENTRIES);
    let mut buf = KVec::with_capacity(cap, GFP_KERNEL)?;
    for _ in 0..cap {
        buf.push(Entry::default(), GFP_KERNEL)?;
    }
    let n = cpuid::supported(regs::host_cpuid, supported_xcr0(), &mut buf).ok_or(E2BIG)?;
    let mut out = KVec::with_capacity(n, GFP_KERNEL)?;
    for e in buf.iter().take(n) {
        out.push(to_uapi(e), GFP_KERNEL)?;
    }
    h.n = n as u32;
    user::write(arg, &h)?;
    user::write_array(arg + size_of::<ArrayHeader>(), &out)?;
    Ok(0)
}
