// SPDX-License-Identifier: GPL-2.0-only
//! The x86 vCPU (upstream arch/x86/kvm/x86.c): `struct kvm_vcpu_arch` as
//! [`VcpuArch`], the arch vCPU ioctls (kvm_arch_vcpu_ioctl()), KVM_RUN's loop
//! (kvm_arch_vcpu_ioctl_run() → vcpu_run() → vcpu_enter_guest()) and the exit
//! dispatch with the core's kvm_emulate_*() helpers. One file, as upstream's x86.c
//! core: the run loop and the state it steps are read together (the pieces that stand
//! alone already live beside it: clock.rs, debug.rs, irq.rs, lapic.rs, msr.rs).

use crate::hw::mce::{Mce, SUPPORTED_MCE_CAP_SVM};
use crate::hw::msr_index::{
    EFER_LMA, MISC_ENABLE_MWAIT, MISC_ENABLE_RESET, PLATFORM_INFO_CPUID_FAULT,
};
use crate::hw::mtrr::Mtrr;
use crate::hw::processor_flags::X86_EFLAGS_IF;
use crate::hw::tsc::KVM_MSR_ENABLED;
use core::sync::atomic::Ordering;
use kernel::prelude::*;

use crate::abi::{ioctl, uapi};
use crate::arch::clock::{set_tsc_khz, tsc_khz_arg};
use crate::arch::debug::kvm_arch_vcpu_ioctl_set_guest_debug;
use crate::arch::emulate::{self, last_vmentry_cpu, set_in_result, Failure, Pending};
use crate::arch::irq::process_nmi;
use crate::arch::lapic::LapicState;
use crate::arch::msr::{cpuid_faults, kvm_get_arch_capabilities, SUPPORTED_PERF_CAP};
use crate::arch::regs::{
    get_debugregs, get_events, get_regs, kvm_update_dr0123, kvm_update_dr7, reset_regs,
    set_debugregs, set_events, set_regs,
};
use crate::arch::vendor::{kvm_x86_handle_exit, VendorLoaded, VendorRef, VendorVcpu};
use crate::arch::Vcpu;
use crate::arch::Vm;
use crate::glue;
use crate::hw::cpuid::{self, Entry, KVM_FEATURE_PV_SCHED_YIELD};
use crate::hw::debugreg::{DR6_ACTIVE_LOW, DR7_FIXED_1};
use crate::hw::lapic;
use crate::hw::msr_filter;
use crate::hw::xstate;
use crate::io_bus::Bus;
use crate::kvm_x86_ops::{reg, vcpu_stat, GuestRegs, Next};
use crate::stats::vcpu as st_;
use crate::user;
use crate::vcpu::run;
use kernel::ffi::c_void;

/// The guest FPU (the kernel's `struct fpu_guest`, upstream vcpu->arch.guest_fpu).
pub(crate) struct Fpu(pub(crate) *mut c_void);

// SAFETY: plain memory owned by the vCPU, used under its mutex only.
unsafe impl Send for Fpu {}

impl Fpu {
    fn new() -> Result<Self> {
        // SAFETY: a plain allocation, freed in drop.
        let p = unsafe { glue::kvm_glue_fpu_alloc() };
        if p.is_null() {
            return Err(ENOMEM);
        }
        Ok(Fpu(p))
    }
}

impl Drop for Fpu {
    fn drop(&mut self) {
        // SAFETY: allocated by kvm_glue_fpu_alloc, freed once.
        unsafe { glue::kvm_glue_fpu_free(self.0) };
    }
}

/// `INVALID_PAGE`: no MMU root loaded yet.
pub(crate) const INVALID_PAGE: u64 = u64::MAX;

/// The x86 state of a vCPU (upstream struct kvm_vcpu_arch), guarded by the vCPU
/// mutex.
pub(crate) struct VcpuArch {
    /// The vendor's part (VMCB or VMCS), reached through the vendor table.
    pub(crate) vendor: VendorVcpu,
    pub(crate) fpu: Fpu,
    pub(crate) regs: GuestRegs,
    pub(crate) pending: Pending,
    pub(crate) cpuid: KVec<Entry>,
    pub(crate) mp_state: u32,
    /// The root of the guest-physical page tables this vCPU runs on (upstream
    /// vcpu->arch.mmu->root.hpa); loaded into the vendor by kvm_mmu_reload().
    pub(crate) mmu_root_hpa: u64,
    /// MSR_IA32_APICBASE without an in-kernel LAPIC (with one, the LAPIC's).
    pub(crate) apic_base: u64,
    /// The VM's TLB generation this vCPU last flushed for.
    pub(crate) tlb_gen: u64,
    /// KVM_GET/SET_TSC_KHZ (upstream virtual_tsc_khz).
    pub(crate) tsc_khz: u32,
    /// When the waiter's timer is armed for (0: not armed).
    pub(crate) armed_ns: u64,
    /// Whether the LAPIC had a deliverable vector when kvm_apic_accept_events()
    /// last looked (this round): kvm_check_and_inject_events() looks again only
    /// then, upstream's KVM_REQ_EVENT in spirit.
    pub(crate) apic_has_interrupt: bool,
    /// The vCPU has entered the guest (upstream kvm_vcpu_has_run()).
    pub(crate) ran: bool,
    /// MSR_IA32_MISC_ENABLE.
    pub(crate) misc_enable: u64,
    /// MSR_K7_HWCR (upstream msr_hwcr).
    pub(crate) msr_hwcr: u64,
    /// MSR_PLATFORM_INFO (upstream msr_platform_info): its CPUID-faulting bit
    /// lets the guest turn on CPUID faulting in MSR_MISC_FEATURES_ENABLES.
    pub(crate) platform_info: u64,
    /// MSR_MISC_FEATURES_ENABLES (upstream msr_misc_features_enables).
    pub(crate) misc_features_enables: u64,
    /// MSR_KVM_STEAL_TIME (upstream st.msr_val) and the run-queue delay the
    /// guest's steal time last counted up to (st.last_steal).
    pub(crate) st_msr_val: u64,
    pub(crate) st_last_steal: u64,
    /// MSR_IA32_POWER_CTL, stored only (upstream msr_ia32_power_ctl).
    pub(crate) msr_ia32_power_ctl: u64,
    /// The feature MSRs userspace sets (upstream arch_capabilities,
    /// perf_capabilities, microcode_version), what KVM offers when the VM keeps
    /// KVM_X86_QUIRK_STUFF_FEATURE_MSRS, else 0.
    pub(crate) arch_capabilities: u64,
    pub(crate) perf_capabilities: u64,
    pub(crate) microcode_version: u64,
    /// KVM_CAP_ENFORCE_PV_FEATURE_CPUID (upstream pv_cpuid.enforce): the PV MSRs
    /// and hypercalls work only where the guest's KVM_CPUID_FEATURES offers them,
    /// the bits kept in `pv_features` at each KVM_SET_CPUID2.
    pub(crate) pv_cpuid_enforce: bool,
    pub(crate) pv_features: u32,
    /// NMIs waiting for the guest to be able to take one (at most two, see
    /// process_nmi()).
    pub(crate) nmi_pending: u32,
    /// NMIs raised (KVM_NMI, the LAPIC) and not yet counted into `nmi_pending`
    /// (upstream nmi_queued).
    pub(crate) nmi_queued: u32,
    /// With the split irqchip: the ExtINT vector userspace's PIC gave with
    /// KVM_INTERRUPT, until the LAPIC takes it (upstream
    /// pending_external_vector), and a LAPIC EOI of a vector of userspace's
    /// IOAPIC, to report in a KVM_EXIT_IOAPIC_EOI (pending_ioapic_eoi).
    pub(crate) pending_external_vector: Option<u8>,
    pub(crate) pending_ioapic_eoi: Option<u8>,
    /// The guest's DR0-3, DR6 and DR7 (upstream arch.db, dr6, dr7).
    pub(crate) db: [u64; 4],
    pub(crate) dr6: u64,
    pub(crate) dr7: u64,
    /// DR0-3 as the guest runs with them: its own, or userspace's hardware
    /// breakpoints (upstream eff_db). Loaded for the entries while the effective
    /// DR7 enables a breakpoint (`bp_enabled`, upstream KVM_DEBUGREG_BP_ENABLED)
    /// or the guest accesses them without exits (`db_wont_exit`,
    /// KVM_DEBUGREG_WONT_EXIT).
    pub(crate) eff_db: [u64; 4],
    pub(crate) bp_enabled: bool,
    pub(crate) db_wont_exit: bool,
    /// KVM_SET_GUEST_DEBUG's controls, 0 when off (upstream vcpu->guest_debug),
    /// its DR7, and the linear RIP single-stepping was turned on at.
    pub(crate) guest_debug: u32,
    pub(crate) guest_debug_dr7: u64,
    pub(crate) singlestep_rip: u64,
    /// The machine-check banks and MCG registers (upstream mcg_*, mce_banks).
    pub(crate) mce: Mce,
    /// KVM_REQ_TRIPLE_FAULT: the next KVM_RUN ends in KVM_EXIT_SHUTDOWN.
    pub(crate) triple_fault: bool,
    /// The guest's TSC is the host's plus this (upstream l1_tsc_offset; no TSC
    /// scaling), IA32_TSC_ADJUST, and the TSC-write generation it matched.
    pub(crate) l1_tsc_offset: u64,
    /// The MTRRs (upstream arch.mtrr_state), stored for the guest.
    pub(crate) mtrr: Mtrr,
    /// KVM_SET_VAPIC_ADDR's guest-physical address (0: none): the TPR is
    /// exchanged through it around every entry (upstream apic->vapic_addr).
    pub(crate) vapic_addr: u64,
    /// MSR_KVM_SYSTEM_TIME(_NEW) (upstream arch.time), the pvclock update
    /// requests (KVM_REQ_CLOCK_UPDATE, the VM's generation last followed,
    /// KVM_KVMCLOCK_CTRL's stopped flag) and the CPU of the last update.
    pub(crate) pv_time: u64,
    pub(crate) clock_update: bool,
    pub(crate) clock_gen: u64,
    pub(crate) pvclock_set_guest_stopped_request: bool,
    pub(crate) pv_time_cpu: u32,
    pub(crate) ia32_tsc_adjust_msr: u64,
    pub(crate) this_tsc_generation: u64,
    /// The guest's XCR0 (loaded while it runs with CR4.OSXSAVE).
    pub(crate) xcr0: u64,
    /// The PAE PDPTRs as last loaded from guest memory or set by KVM_SET_SREGS2
    /// (upstream's cache: after an entry they are loaded again when read, and
    /// kept when guest memory holds invalid ones).
    pub(crate) pdptrs: [u64; 4],
    pub(crate) pdptrs_avail: bool,
}

/// The reset RFLAGS (bit 1 always set) and RIP (upstream kvm_vcpu_reset()).
pub(crate) const RESET_RIP: u64 = 0xfff0;

/// signal_pending(current).
pub(crate) fn signal_pending() -> bool {
    kernel::current!().signal_pending()
}

pub(crate) fn now_ns() -> u64 {
    // SAFETY: reads the clock.
    unsafe { glue::kvm_glue_ktime_ns() }
}

/// The host's TSC now (rdtsc()).
pub(crate) fn now_tsc() -> u64 {
    // SAFETY: reads the TSC.
    unsafe { glue::kvm_glue_rdtsc() }
}

impl VcpuArch {
    /// kvm_arch_vcpu_create() + kvm_vcpu_reset(): a vendor vCPU in its reset
    /// state and the registers, MSRs and MP state kvm.ko keeps.
    pub(crate) fn new(
        vendor: &VendorRef,
        irqchip: bool,
        bsp: bool,
        tsc_khz: u32,
        stuff_feature_msrs: bool,
    ) -> Result<(Self, VendorLoaded)> {
        let microcode_version = vendor.ops().reset_microcode_version;
        let (vendor, loaded) = VendorVcpu::create(vendor)?;
        let mut arch = VcpuArch {
            vendor,
            fpu: Fpu::new()?,
            regs: reset_regs(&[]),
            pending: Pending::None,
            cpuid: KVec::new(),
            // Application processors wait for INIT/SIPI when the LAPIC is in the
            // kernel (kvm_arch_vcpu_create()).
            mp_state: if irqchip && !bsp {
                uapi::KVM_MP_STATE_UNINITIALIZED
            } else {
                uapi::KVM_MP_STATE_RUNNABLE
            },
            mmu_root_hpa: INVALID_PAGE,
            apic_base: lapic::APIC_DEFAULT_BASE
                | lapic::MSR_APICBASE_ENABLE
                | if bsp { lapic::MSR_APICBASE_BSP } else { 0 },
            tlb_gen: 0,
            tsc_khz: 0,
            armed_ns: 0,
            apic_has_interrupt: false,
            ran: false,
            nmi_pending: 0,
            nmi_queued: 0,
            pending_external_vector: None,
            pending_ioapic_eoi: None,
            misc_enable: MISC_ENABLE_RESET,
            msr_hwcr: 0,
            platform_info: 0,
            misc_features_enables: 0,
            msr_ia32_power_ctl: 0,
            st_msr_val: 0,
            st_last_steal: 0,
            arch_capabilities: 0,
            perf_capabilities: 0,
            microcode_version: 0,
            pv_cpuid_enforce: false,
            pv_features: 0,
            db: [0; 4],
            dr6: DR6_ACTIVE_LOW,
            dr7: DR7_FIXED_1,
            eff_db: [0; 4],
            bp_enabled: false,
            db_wont_exit: false,
            guest_debug: 0,
            guest_debug_dr7: 0,
            singlestep_rip: 0,
            mce: Mce::default(),
            triple_fault: false,
            l1_tsc_offset: 0,
            mtrr: Mtrr::default(),
            vapic_addr: 0,
            pv_time: 0,
            clock_update: false,
            clock_gen: 0,
            pvclock_set_guest_stopped_request: false,
            pv_time_cpu: u32::MAX,
            ia32_tsc_adjust_msr: 0,
            this_tsc_generation: 0,
            xcr0: xstate::FP,
            pdptrs: [0; 4],
            pdptrs_avail: false,
        };
        // As kvm_arch_vcpu_create(), whose kvm_set_tsc_khz() result is not checked.
        let _ = set_tsc_khz(&mut arch, tsc_khz);
        if stuff_feature_msrs {
            arch.arch_capabilities = kvm_get_arch_capabilities();
            arch.platform_info = PLATFORM_INFO_CPUID_FAULT;
            arch.perf_capabilities = SUPPORTED_PERF_CAP;
            arch.microcode_version = microcode_version;
        }
        Ok((arch, loaded))
    }

    /// guest_pv_has(): whether the guest may use KVM PV feature `bit`.
    pub(crate) fn guest_pv_has(&self, bit: u32) -> bool {
        !self.pv_cpuid_enforce || self.pv_features & (1 << bit) != 0
    }
}

pub(crate) const SYNC_REGS_REGS: u64 = uapi::KVM_SYNC_X86_REGS as u64;

pub(crate) const SYNC_REGS_SREGS: u64 = uapi::KVM_SYNC_X86_SREGS as u64;

pub(crate) const SYNC_REGS_EVENTS: u64 = uapi::KVM_SYNC_X86_EVENTS as u64;

pub(crate) const SYNC_REGS_VALID: u64 = uapi::KVM_SYNC_X86_VALID_FIELDS as u64;

// include/uapi/linux/kvm_para.h
pub(crate) const KVM_ENOSYS: i64 = 1000;

pub(crate) const KVM_EPERM: i64 = 1;

pub(crate) const KVM_HC_VAPIC_POLL_IRQ: u64 = 1;

pub(crate) const KVM_HC_SCHED_YIELD: u64 = 11;

/// KVM_ENABLE_CAP on a vCPU (kvm_vcpu_ioctl_enable_cap()).
fn kvm_vcpu_ioctl_enable_cap(st: &mut VcpuArch, c: &uapi::kvm_enable_cap) -> Result {
    if c.flags != 0 {
        return Err(EINVAL);
    }
    match c.cap {
        uapi::KVM_CAP_ENFORCE_PV_FEATURE_CPUID => {
            st.pv_cpuid_enforce = c.args[0] != 0;
            Ok(())
        }
        _ => Err(EINVAL),
    }
}

impl Vcpu {
    /// The arch vCPU ioctls (upstream kvm_arch_vcpu_ioctl()), under the vCPU mutex.
    pub(crate) fn kvm_arch_vcpu_ioctl(
        &self,
        vm: &Vm,
        st: &mut VcpuArch,
        cmd: u32,
        arg: usize,
    ) -> Result<isize> {
        match cmd {
            ioctl::KVM_GET_REGS => {
                user::write(arg, &get_regs(st))?;
                Ok(0)
            }
            ioctl::KVM_SET_REGS => {
                let r: uapi::kvm_regs = user::read(arg)?;
                set_regs(st, &r);
                Ok(0)
            }
            ioctl::KVM_GET_SREGS => {
                user::write(arg, &self.get_sregs(st))?;
                Ok(0)
            }
            ioctl::KVM_SET_SREGS => {
                let sr: uapi::kvm_sregs = user::read(arg)?;
                self.set_sregs(st, &sr)?;
                self.update_pdptrs(vm, st, &sr);
                Ok(0)
            }
            ioctl::KVM_SET_CPUID2 => {
                self.kvm_vcpu_ioctl_set_cpuid2(vm, st, arg)?;
                Ok(0)
            }
            ioctl::KVM_GET_CPUID2 => {
                self.kvm_vcpu_ioctl_get_cpuid2(vm, st, arg)?;
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
                let lapic = self.arch.lapic.lock().is_some();
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
                let g = self.arch.lapic.lock();
                let l = g.as_ref().ok_or(EINVAL)?;
                l.get_state(
                    &mut out.0,
                    vm.arch.x2apic_format.load(Ordering::Relaxed),
                    now_ns(),
                );
                drop(g);
                user::write(arg, &out)?;
                Ok(0)
            }
            ioctl::KVM_SET_LAPIC => {
                if self.arch.lapic.lock().is_none() {
                    return Err(EINVAL);
                }
                let inp: LapicState = user::read(arg)?;
                let mut g = self.arch.lapic.lock();
                let l = (*g).as_mut().ok_or(EINVAL)?;
                l.set_state(
                    &inp.0,
                    vm.arch.x2apic_format.load(Ordering::Relaxed),
                    now_ns(),
                )
                .map_err(|_| EINVAL)?;
                st.regs.cr8 = l.cr8();
                drop(g);
                self.waiter.poke();
                Ok(0)
            }
            ioctl::KVM_GET_TSC_KHZ => Ok(st.tsc_khz as isize),
            // kvm_vcpu_ioctl_nmi(): kvm_inject_nmi().
            ioctl::KVM_NMI => {
                st.nmi_queued = st.nmi_queued.saturating_add(1);
                Ok(0)
            }
            ioctl::KVM_INTERRUPT => {
                let irq: uapi::kvm_interrupt = user::read(arg)?;
                self.kvm_vcpu_ioctl_interrupt(vm, st, irq.irq)
            }
            ioctl::KVM_PRE_FAULT_MEMORY => self.kvm_vcpu_pre_fault_memory(vm, arg),
            ioctl::KVM_GET_MSRS | ioctl::KVM_SET_MSRS => {
                self.msrs(vm, st, arg, cmd == ioctl::KVM_SET_MSRS)
            }
            ioctl::KVM_GET_VCPU_EVENTS => {
                user::write(arg, &get_events(vm, st))?;
                Ok(0)
            }
            ioctl::KVM_SET_VCPU_EVENTS => {
                let e: uapi::kvm_vcpu_events = user::read(arg)?;
                set_events(self, vm, st, &e)?;
                Ok(0)
            }
            ioctl::KVM_GET_DEBUGREGS => {
                user::write(arg, &get_debugregs(st))?;
                Ok(0)
            }
            ioctl::KVM_SET_DEBUGREGS => {
                let d: uapi::kvm_debugregs = user::read(arg)?;
                set_debugregs(st, &d)?;
                Ok(0)
            }
            // kvm_lapic_set_vapic_addr(): -EINVAL without the in-kernel LAPIC or
            // for an address outside guest memory.
            ioctl::KVM_SET_VAPIC_ADDR => {
                if self.arch.lapic.lock().is_none() {
                    return Err(EINVAL);
                }
                let va: uapi::kvm_vapic_addr = user::read(arg)?;
                let mut word = [0u8; 4];
                if va.vapic_addr != 0 && emulate::read_phys(vm, va.vapic_addr, &mut word).is_none()
                {
                    return Err(EINVAL);
                }
                st.vapic_addr = va.vapic_addr;
                Ok(0)
            }
            // kvm_set_guest_paused(): the guest's watchdogs are told it was stopped.
            ioctl::KVM_KVMCLOCK_CTRL => {
                if st.pv_time & KVM_MSR_ENABLED == 0 {
                    return Err(EINVAL);
                }
                st.pvclock_set_guest_stopped_request = true;
                st.clock_update = true;
                Ok(0)
            }
            ioctl::KVM_X86_SETUP_MCE => {
                let mcg_cap: u64 = user::read(arg)?;
                if !st.mce.setup(mcg_cap, SUPPORTED_MCE_CAP_SVM) {
                    return Err(EINVAL);
                }
                st.mce.mcg_cap = st.vendor.setup_mce(st.mce.mcg_cap);
                Ok(0)
            }
            ioctl::KVM_X86_SET_MCE => {
                let m: uapi::kvm_x86_mce = user::read(arg)?;
                self.kvm_vcpu_ioctl_x86_set_mce(st, &m)?;
                Ok(0)
            }
            ioctl::KVM_SET_GUEST_DEBUG => {
                let dbg: uapi::kvm_guest_debug = user::read(arg)?;
                kvm_arch_vcpu_ioctl_set_guest_debug(self, vm, st, &dbg)?;
                Ok(0)
            }
            ioctl::KVM_GET_XSAVE | ioctl::KVM_GET_XSAVE2 => {
                self.get_xsave(st, arg, cmd == ioctl::KVM_GET_XSAVE2)?;
                Ok(0)
            }
            ioctl::KVM_SET_XSAVE => {
                self.set_xsave(st, arg)?;
                Ok(0)
            }
            ioctl::KVM_GET_XCRS => {
                user::write(arg, &self.get_xcrs(st))?;
                Ok(0)
            }
            ioctl::KVM_SET_XCRS => {
                let x: uapi::kvm_xcrs = user::read(arg)?;
                self.set_xcrs(st, &x)?;
                Ok(0)
            }
            ioctl::KVM_GET_SREGS2 => {
                user::write(arg, &self.get_sregs2(vm, st))?;
                Ok(0)
            }
            ioctl::KVM_SET_SREGS2 => {
                let s: uapi::kvm_sregs2 = user::read(arg)?;
                self.set_sregs2(vm, st, &s)?;
                Ok(0)
            }
            ioctl::KVM_GET_FPU => {
                user::write(arg, &self.get_fpu(st))?;
                Ok(0)
            }
            ioctl::KVM_SET_FPU => {
                let f: uapi::kvm_fpu = user::read(arg)?;
                self.set_fpu(st, &f);
                Ok(0)
            }
            ioctl::KVM_TRANSLATE => {
                self.kvm_arch_vcpu_ioctl_translate(vm, st, arg)?;
                Ok(0)
            }
            ioctl::KVM_SET_TSC_KHZ => {
                let khz = tsc_khz_arg(arg);
                if let Some(l) = (*self.arch.lapic.lock()).as_mut() {
                    l.set_tsc_khz(khz);
                }
                set_tsc_khz(st, khz)?;
                Ok(0)
            }
            ioctl::KVM_ENABLE_CAP => {
                let c: uapi::kvm_enable_cap = user::read(arg)?;
                kvm_vcpu_ioctl_enable_cap(st, &c)?;
                Ok(0)
            }
            ioctl::KVM_HAS_DEVICE_ATTR
            | ioctl::KVM_GET_DEVICE_ATTR
            | ioctl::KVM_SET_DEVICE_ATTR => {
                let attr: uapi::kvm_device_attr = user::read(arg)?;
                vm.kvm_vcpu_ioctl_device_attr(st, cmd, &attr)
            }
            // kvm_arch_vcpu_ioctl() answers unknown commands with -EINVAL.
            _ => Err(EINVAL),
        }
    }

    /// KVM_RUN (kvm_arch_vcpu_ioctl_run()): the run itself, framed by the
    /// sync_regs exchange through kvm_run and the fields upstream's
    /// post_kvm_run_save() reports.
    pub(crate) fn kvm_arch_vcpu_ioctl_run(&self, vm: &Vm, st: &mut VcpuArch) -> Result<isize> {
        let r = self.vcpu_run_prepare(vm, st);
        let valid: u64 = self.run_read(run::VALID_REGS);
        if valid & SYNC_REGS_REGS != 0 {
            self.run_write(run::SYNC_REGS, get_regs(st));
        }
        if valid & SYNC_REGS_SREGS != 0 {
            self.run_write(run::SYNC_SREGS, self.get_sregs(st));
        }
        if valid & SYNC_REGS_EVENTS != 0 {
            self.run_write(run::SYNC_EVENTS, get_events(vm, st));
        }
        let ready = vm.arch.pic_in_kernel() || self.kvm_vcpu_ready_for_interrupt_injection(vm, st);
        self.run_write(run::IF_FLAG, u8::from(st.regs.rflags & X86_EFLAGS_IF != 0));
        self.run_write(run::CR8, st.regs.cr8);
        self.run_write(run::APIC_BASE, self.apic_base(st));
        self.run_write(run::READY_FOR_INTERRUPT_INJECTION, u8::from(ready));
        r
    }

    /// What kvm_arch_vcpu_ioctl_run() does before vcpu_run(): sync_regs in, the
    /// TPR from kvm_run, the completion of a userspace exit, immediate_exit, and
    /// the wait of an AP for INIT.
    fn vcpu_run_prepare(&self, vm: &Vm, st: &mut VcpuArch) -> Result<isize> {
        let has_lapic = self.arch.lapic.lock().is_some();
        if !(has_lapic && st.mp_state == uapi::KVM_MP_STATE_UNINITIALIZED) {
            let valid: u64 = self.run_read(run::VALID_REGS);
            let dirty: u64 = self.run_read(run::DIRTY_REGS);
            if (valid | dirty) & !SYNC_REGS_VALID != 0 {
                return Err(EINVAL);
            }
            if dirty != 0 {
                self.sync_regs(vm, st, dirty)?;
            }
            if !has_lapic {
                // The TPR userspace keeps in kvm_run (kvm_set_cr8()).
                let cr8: u64 = self.run_read(run::CR8);
                if cr8 & !0xf != 0 {
                    return Err(EINVAL);
                }
                st.regs.cr8 = cr8;
            }
            if let Some(r) = self.complete_userspace_io(vm, st) {
                return r;
            }
        }
        if self.run_read_u8(run::IMMEDIATE_EXIT) != 0 {
            return Err(EINTR);
        }
        if has_lapic && st.mp_state == uapi::KVM_MP_STATE_UNINITIALIZED {
            // As upstream: an AP waiting for INIT blocks once, then KVM_RUN returns
            // (-EAGAIN, or -EINTR for a signal) so that userspace sees its new state.
            self.kvm_apic_accept_events(vm, st);
            if st.mp_state == uapi::KVM_MP_STATE_UNINITIALIZED {
                self.waiter.block();
                self.kvm_apic_accept_events(vm, st);
            }
            if signal_pending() {
                self.set_exit(uapi::KVM_EXIT_INTR);
                return Err(EINTR);
            }
            return Err(EAGAIN);
        }
        if signal_pending() {
            self.stats.inc(st_::SIGNAL_EXITS);
            self.set_exit(uapi::KVM_EXIT_INTR);
            return Err(EINTR);
        }
        // SAFETY: the guest FPU state is this vCPU's; swapped back below.
        unsafe { glue::kvm_glue_fpu_load(st.fpu.0, 1) };
        let r = self.vcpu_run(vm, st, has_lapic);
        // SAFETY: pairs with the load above.
        unsafe { glue::kvm_glue_fpu_load(st.fpu.0, 0) };
        r
    }

    /// vcpu_run(): enters the guest, or blocks while the vCPU is halted, until an
    /// exit is for userspace; between rounds the task's pending work (signals,
    /// reschedule, notify-resume) runs as upstream's
    /// kvm_xfer_to_guest_mode_handle_work().
    fn vcpu_run(&self, vm: &Vm, st: &mut VcpuArch, has_lapic: bool) -> Result<isize> {
        loop {
            let next = if has_lapic && !self.kvm_vcpu_running(vm, st) {
                self.vcpu_block(vm, st);
                Next::Guest
            } else {
                self.vcpu_enter_guest(vm, st, has_lapic)
            };
            if let Next::User(r) = next {
                return r.map(|()| 0);
            }
            if self.dm_request_for_irq_injection(vm)
                && self.kvm_vcpu_ready_for_interrupt_injection(vm, st)
            {
                self.stats.inc(st_::REQUEST_IRQ_EXITS);
                self.set_exit(uapi::KVM_EXIT_IRQ_WINDOW_OPEN);
                return Ok(0);
            }
            // SAFETY: process context, interrupts and preemption on, only our vCPU mutex held; may schedule.
            if unsafe { glue::kvm_glue_xfer_to_guest_mode_handle_work() } != 0 {
                self.stats.inc(st_::SIGNAL_EXITS);
                self.set_exit(uapi::KVM_EXIT_INTR);
                return Err(EINTR);
            }
        }
    }

    /// kvm_vcpu_running() with the LAPIC's events applied first: whether the vCPU
    /// can enter the guest (not halted with nothing to wake it, not waiting for SIPI).
    fn kvm_vcpu_running(&self, vm: &Vm, st: &mut VcpuArch) -> bool {
        self.waiter.take();
        self.kvm_apic_accept_events(vm, st);
        if st.mp_state == uapi::KVM_MP_STATE_HALTED && self.kvm_vcpu_has_events(vm, st) {
            st.mp_state = uapi::KVM_MP_STATE_RUNNABLE;
        }
        st.mp_state == uapi::KVM_MP_STATE_RUNNABLE
    }

    /// vcpu_block(): a halted vCPU halts (polling first, kvm_vcpu_halt()); one
    /// waiting for INIT or SIPI only blocks. Guests cannot turn polling off:
    /// KVM_FEATURE_POLL_CONTROL is not offered, so MSR_KVM_POLL_CONTROL keeps its
    /// reset value (kvm_arch_no_poll() false).
    fn vcpu_block(&self, vm: &Vm, st: &VcpuArch) {
        if st.mp_state == uapi::KVM_MP_STATE_HALTED {
            self.kvm_vcpu_halt(vm, true);
        } else {
            self.kvm_vcpu_block();
        }
    }

    /// One guest entry and its exit (upstream vcpu_enter_guest()): events are
    /// injected, the MMU root loaded, then with preemption and interrupts off the
    /// last-moment exit-request check, the guest's XCR0 and debug registers, the
    /// vendor's vcpu_run, and the exit handled once interrupts are on again.
    fn vcpu_enter_guest(&self, vm: &Vm, st: &mut VcpuArch, has_lapic: bool) -> Next {
        vm.kvm_update_masterclock();
        vm.kvm_check_clock_update(st);
        // KVM_REQ_STEAL_UPDATE, made when the task was scheduled in.
        if self.arch.steal_update.swap(false, Ordering::Acquire) {
            vm.record_steal_time(st);
        }
        // KVM_REQ_TRIPLE_FAULT (a #MC the guest could not take).
        if core::mem::take(&mut st.triple_fault) {
            self.set_exit(uapi::KVM_EXIT_SHUTDOWN);
            return Next::User(Ok(()));
        }
        // KVM_REQ_IOAPIC_EOI_EXIT: userspace's IOAPIC hears of the EOI.
        if let Some(vector) = st.pending_ioapic_eoi.take() {
            self.set_exit(uapi::KVM_EXIT_IOAPIC_EOI);
            self.run_write(run::U, vector);
            return Next::User(Ok(()));
        }
        let req_int_win =
            self.dm_request_for_irq_injection(vm) && self.kvm_cpu_accept_dm_intr(vm, st);
        // NMIs before interrupts, as kvm_check_and_inject_events() orders them;
        // neither while userspace asks for none (KVM_GUESTDBG_BLOCKIRQ).
        process_nmi(st);
        if st.guest_debug & uapi::KVM_GUESTDBG_BLOCKIRQ == 0 {
            if st.nmi_pending != 0 {
                if st.vendor.inject_nmi() {
                    st.nmi_pending -= 1;
                }
                if st.nmi_pending != 0 {
                    st.vendor.enable_nmi_window();
                }
            }
            if has_lapic {
                self.kvm_check_and_inject_events(vm, st);
            }
        }
        if req_int_win {
            st.vendor.enable_irq_window();
        }
        self.kvm_mmu_reload(vm, st);
        // Run with all-zero DR6 causes unless the guest can write DR6 freely, so
        // that a #DB's cause is exact (svm_vcpu_run()'s KVM_RUN_LOAD_GUEST_DR6).
        let dr6 = if st.db_wont_exit {
            st.dr6
        } else {
            DR6_ACTIVE_LOW
        };
        st.vendor.set_dr(6, dr6);
        self.kvm_lapic_sync_to_vapic(vm, st);
        let cpu = self.enter_guest_mode(vm);
        // kvm_vcpu_exit_request(): read after publishing guest mode, so a poke
        // either sees the vCPU in the guest and sends an IPI (taken as an exit), or
        // came before this check; the same for a reschedule or signal raised since
        // the loop looked. Backing out leaves an event already injected in the
        // vendor's event-injection field, where upstream's cancel_injection()
        // requeues it: either way it is delivered on the next entry.
        // SAFETY: interrupts are off, as the check requires.
        let work = unsafe { glue::kvm_glue_xfer_to_guest_mode_work_pending() } != 0;
        if work || has_lapic && self.waiter.pending() {
            self.exit_guest_mode(vm, cpu, false);
            return Next::Guest;
        }
        // Same for a zap: it either sees us in the guest and kicks, or bumped
        // the generation before this load.
        let gen = vm.arch.tlb_gen.load(Ordering::SeqCst);
        let flush = gen != st.tlb_gen;
        st.tlb_gen = gen;
        st.ran = true;
        st.pdptrs_avail = false;
        // SAFETY: interrupts off, this task's FPU is the guest's.
        unsafe { glue::kvm_glue_fpu_prepare_entry() };
        let host_xcr0 = self.load_guest_xcr0(st);
        if st.db_wont_exit || st.bp_enabled {
            // SAFETY: interrupts are off until after the exit, which restores the host's.
            unsafe { glue::kvm_glue_load_guest_db(st.eff_db.as_ptr()) };
        }
        // SAFETY: interrupts off; paired with guest_timing_exit_irqoff() in exit_guest_mode().
        unsafe { glue::kvm_glue_guest_timing_enter_irqoff() };
        let cr8 = st.regs.cr8;
        st.vendor.vcpu_run(&mut st.regs, flush);
        if st.db_wont_exit {
            // The guest may have written them (svm_sync_dirty_debug_regs()).
            // SAFETY: reads DR0-3 into our array.
            unsafe { glue::kvm_glue_save_guest_db(st.db.as_mut_ptr()) };
            st.dr6 = st.vendor.get_dr(6);
            st.dr7 = st.vendor.get_dr(7);
            st.db_wont_exit = false;
            st.vendor.sync_dirty_debug_regs();
            kvm_update_dr0123(st);
            kvm_update_dr7(st);
        }
        // SAFETY: interrupts still off; puts back host breakpoints, if any.
        unsafe { glue::kvm_glue_restore_host_db() };
        if let Some(x) = host_xcr0 {
            // SAFETY: the host's own XCR0 back, interrupts still off.
            unsafe { glue::kvm_glue_xsetbv(x) };
        }
        self.exit_guest_mode(vm, cpu, true);
        // The guest may have written CR8 without an exit (V_TPR).
        if st.regs.cr8 != cr8 {
            if let Some(l) = (*self.arch.lapic.lock()).as_mut() {
                l.set_cr8(st.regs.cr8);
            }
        }
        self.kvm_lapic_sync_from_vapic(vm, st);
        self.stats.inc(st_::EXITS);
        kvm_x86_handle_exit(self, vm, st)
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
        let cpu = kernel::cpu::CpuId::current().as_u32();
        // Publishing guest mode is a full barrier.
        self.waiter.set_cpu(cpu + 1);
        vm.set_in_guest(cpu, true);
        cpu
    }

    /// Undoes enter_guest_mode(); pending host interrupts run here. `entered`:
    /// the guest ran, so its time is accounted once those interrupts (and the
    /// ticks among them) were taken, as upstream.
    fn exit_guest_mode(&self, vm: &Vm, cpu: u32, entered: bool) {
        self.waiter.set_cpu(0);
        vm.set_in_guest(cpu, false);
        if entered {
            // On for the exit's interrupt, off again to close the guest-time window.
            // SAFETY: interrupts were off since enter_guest_mode(), which began that window.
            unsafe {
                glue::kvm_glue_irq_enable();
                glue::kvm_glue_irq_disable();
                glue::kvm_glue_guest_timing_exit_irqoff();
            }
        }
        // SAFETY: pairs with the disable in enter_guest_mode().
        unsafe { glue::kvm_glue_irq_enable() };
        // SAFETY: pairs with the disable in enter_guest_mode(); may reschedule.
        unsafe { glue::kvm_glue_preempt_enable() };
    }

    /// Applies the kvm_run sync_regs userspace marked dirty (upstream sync_regs()).
    pub(crate) fn sync_regs(&self, vm: &Vm, st: &mut VcpuArch, dirty: u64) -> Result {
        if dirty & SYNC_REGS_REGS != 0 {
            let r: uapi::kvm_regs = self.run_read(run::SYNC_REGS);
            set_regs(st, &r);
        }
        if dirty & SYNC_REGS_SREGS != 0 {
            let s: uapi::kvm_sregs = self.run_read(run::SYNC_SREGS);
            self.set_sregs(st, &s).map_err(|_| EINVAL)?;
            self.update_pdptrs(vm, st, &s);
        }
        if dirty & SYNC_REGS_EVENTS != 0 {
            let e: uapi::kvm_vcpu_events = self.run_read(run::SYNC_EVENTS);
            set_events(self, vm, st, &e).map_err(|_| EINVAL)?;
        }
        self.run_write(run::DIRTY_REGS, 0u64);
        Ok(())
    }

    // The helpers below are what the vendors' exit handlers call (the table in
    // arch/x86/kvm/vendor.rs, `kvm_core_ops_list!`): each takes the VM and the
    // vCPU state, then the arguments the vendor decoded from its exit.

    /// kvm_emulate_as_nop(): an instruction with nothing to emulate (INVD, WBINVD).
    pub(crate) fn kvm_emulate_as_nop(&self, _vm: &Vm, st: &mut VcpuArch, next_rip: u64) -> Next {
        self.kvm_skip_emulated_instruction(st, next_rip)
    }

    /// kvm_fast_pio(): IN/OUT of `size` bytes at `port`, to an in-kernel device on
    /// the PIO bus or, through KVM_EXIT_IO, to userspace (completed by
    /// complete_userspace_io() on the next KVM_RUN).
    pub(crate) fn kvm_fast_pio(
        &self,
        vm: &Vm,
        st: &mut VcpuArch,
        size: u32,
        port: u16,
        input: bool,
        next_rip: u64,
    ) -> Next {
        let size = size.min(4) as u8;
        self.stats.inc(st_::IO_EXITS);
        if self.kernel_pio(vm, st, input, size, port) {
            return self.kvm_skip_emulated_instruction(st, next_rip);
        }
        if !input {
            let bytes = st.regs.gpr[reg::RAX].to_le_bytes();
            // SAFETY: the PIO page is ours; size <= 4.
            unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.pio_data(), size.into()) };
        }
        st.pending = Pending::Pio {
            input,
            size,
            rip: st.regs.rip,
            next_rip,
        };
        self.io_exit(input, size, port, 1);
        Next::User(Ok(()))
    }

    /// kvm_vcpu_reset(): back to the INIT state (`init_event`) or power-on state;
    /// the vendor's part through its vcpu_reset, the registers, pending
    /// completion and DR0-3 here.
    pub(crate) fn kvm_vcpu_reset(&self, _vm: &Vm, st: &mut VcpuArch, _init_event: bool) {
        st.vendor.vcpu_reset();
        st.regs = reset_regs(&st.cpuid);
        st.pending = Pending::None;
        st.db = [0; 4];
        kvm_update_dr0123(st);
        st.dr6 = DR6_ACTIVE_LOW;
        st.dr7 = DR7_FIXED_1;
        kvm_update_dr7(st);
        st.nmi_pending = 0;
        st.nmi_queued = 0;
    }

    /// `vcpu->run->exit_reason = reason`.
    pub(crate) fn set_exit_reason(&self, _vm: &Vm, _st: &mut VcpuArch, reason: u32) {
        self.set_exit(reason);
    }

    /// KVM_EXIT_FAIL_ENTRY: the vendor's reason and the CPU the entry failed on.
    pub(crate) fn kvm_prepare_fail_entry_exit(
        &self,
        _vm: &Vm,
        _st: &mut VcpuArch,
        reason: u64,
    ) -> Next {
        self.set_exit(uapi::KVM_EXIT_FAIL_ENTRY);
        self.run_write(run::U, reason);
        self.run_write(run::U + 8, last_vmentry_cpu() as u32);
        Next::User(Ok(()))
    }

    /// kvm_prepare_unexpected_reason_exit(): an exit the vendor has no handler for.
    pub(crate) fn kvm_prepare_unexpected_reason_exit(
        &self,
        _vm: &Vm,
        _st: &mut VcpuArch,
        exit_reason: u64,
    ) -> Next {
        let data = [exit_reason, last_vmentry_cpu()];
        self.kvm_prepare_internal_error_exit(uapi::KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON, &data)
    }

    /// `++vcpu->stat.<stat>` for the vendor's handlers.
    pub(crate) fn kvm_stat_inc(&self, _vm: &Vm, _st: &mut VcpuArch, stat: u32) {
        match stat {
            vcpu_stat::IRQ_EXITS => self.stats.inc(st_::IRQ_EXITS),
            vcpu_stat::IRQ_WINDOW_EXITS => self.stats.inc(st_::IRQ_WINDOW_EXITS),
            _ => {}
        }
    }

    /// `vcpu->arch.switch_db_regs |= KVM_DEBUGREG_WONT_EXIT`: DR0-3 are loaded for
    /// the entries until the next exit, which saves them back.
    pub(crate) fn kvm_debugreg_wont_exit(&self, _vm: &Vm, st: &mut VcpuArch) {
        st.db_wont_exit = true;
    }

    /// kvm_emulate_halt(): with the LAPIC in the kernel the vCPU sleeps until an
    /// event wakes it; otherwise userspace gets KVM_EXIT_HLT.
    pub(crate) fn kvm_emulate_halt(&self, _vm: &Vm, st: &mut VcpuArch, next_rip: u64) -> Next {
        self.stats.inc(st_::HALT_EXITS);
        // Halted even if single-stepping exits first (upstream's "&& ret").
        let ret = self.kvm_skip_emulated_instruction(st, next_rip);
        if self.arch.lapic.lock().is_some() {
            st.mp_state = uapi::KVM_MP_STATE_HALTED;
            return ret;
        }
        self.set_exit(uapi::KVM_EXIT_HLT);
        Next::User(Ok(()))
    }

    /// kvm_emulate_cpuid(): the vCPU's table, with the runtime bits as they are.
    pub(crate) fn kvm_emulate_cpuid(&self, vm: &Vm, st: &mut VcpuArch, next_rip: u64) -> Next {
        // CPUID faulting: #GP outside CPL 0 (kvm_require_cpl()).
        if cpuid_faults(st) && self.get_sregs(st).ss.dpl != 0 {
            st.vendor.queue_exception(uapi::GP_VECTOR, true, 0);
            return Next::Guest;
        }
        let (f, i) = (st.regs.gpr[reg::RAX] as u32, st.regs.gpr[reg::RCX] as u32);
        let r = self.cpuid_runtime(vm, st);
        cpuid::update_runtime(&mut st.cpuid, &r);
        let e = cpuid::find(&st.cpuid, f, i).copied().unwrap_or_default();
        st.regs.gpr[reg::RAX] = e.eax.into();
        st.regs.gpr[reg::RBX] = e.ebx.into();
        st.regs.gpr[reg::RCX] = e.ecx.into();
        st.regs.gpr[reg::RDX] = e.edx.into();
        self.kvm_skip_emulated_instruction(st, next_rip)
    }

    /// kvm_emulate_monitor_mwait(): a NOP unless the VM disabled
    /// KVM_X86_QUIRK_MWAIT_NEVER_UD_FAULTS and MWAIT is off for the guest (its
    /// CPUID bit, or MISC_ENABLE.MWAIT without KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT),
    /// which is #UD.
    pub(crate) fn kvm_emulate_monitor_mwait(
        &self,
        vm: &Vm,
        st: &mut VcpuArch,
        next_rip: u64,
    ) -> Next {
        if !vm.kvm_check_has_quirk(uapi::KVM_X86_QUIRK_MWAIT_NEVER_UD_FAULTS) {
            let enabled = if vm.kvm_check_has_quirk(uapi::KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT) {
                cpuid::find(&st.cpuid, 1, 0).is_some_and(|e| e.ecx & cpuid::L1_ECX_MWAIT != 0)
            } else {
                st.misc_enable & MISC_ENABLE_MWAIT != 0
            };
            if !enabled {
                st.vendor.queue_exception(uapi::UD_VECTOR, false, 0);
                return Next::Guest;
            }
        }
        self.kvm_skip_emulated_instruction(st, next_rip)
    }

    /// kvm_emulate_rdmsr(): EDX:EAX, or, when the MSR filter denies it or KVM
    /// cannot read it, KVM_EXIT_X86_RDMSR if userspace asked for that reason
    /// (KVM_CAP_X86_USER_SPACE_MSR), else #GP (upstream with ignore_msrs=0).
    pub(crate) fn kvm_emulate_rdmsr(&self, vm: &Vm, st: &mut VcpuArch, next_rip: u64) -> Next {
        let index = st.regs.gpr[reg::RCX] as u32;
        let r = if vm.kvm_msr_allowed(index, msr_filter::FILTER_READ) {
            self.get_msr(vm, st, index, false)
                .ok_or_else(|| self.msr_failure_reason(vm, st, index))
        } else {
            Err(msr_filter::EXIT_REASON_FILTER)
        };
        match r {
            Ok(v) => {
                st.regs.gpr[reg::RAX] = v & 0xffff_ffff;
                st.regs.gpr[reg::RDX] = v >> 32;
                self.kvm_skip_emulated_instruction(st, next_rip)
            }
            Err(reason) => self.kvm_msr_user_space(
                vm,
                st,
                uapi::KVM_EXIT_X86_RDMSR,
                index,
                0,
                reason,
                next_rip,
            ),
        }
    }

    /// kvm_emulate_wrmsr(): EDX:EAX into the MSR; as RDMSR when it cannot be.
    pub(crate) fn kvm_emulate_wrmsr(&self, vm: &Vm, st: &mut VcpuArch, next_rip: u64) -> Next {
        let index = st.regs.gpr[reg::RCX] as u32;
        let v = (st.regs.gpr[reg::RDX] << 32) | (st.regs.gpr[reg::RAX] & 0xffff_ffff);
        let r = if !vm.kvm_msr_allowed(index, msr_filter::FILTER_WRITE) {
            Err(msr_filter::EXIT_REASON_FILTER)
        } else if self.set_msr(vm, st, index, v, false) {
            Ok(())
        } else {
            Err(self.msr_failure_reason(vm, st, index))
        };
        match r {
            Ok(()) => self.kvm_skip_emulated_instruction(st, next_rip),
            Err(reason) => self.kvm_msr_user_space(
                vm,
                st,
                uapi::KVM_EXIT_X86_WRMSR,
                index,
                v,
                reason,
                next_rip,
            ),
        }
    }

    /// kvm_msr_reason() for an access KVM refused: an MSR it does not have at
    /// all is UNKNOWN (upstream KVM_MSR_RET_UNSUPPORTED), one it has but whose
    /// access or value it refuses INVAL.
    fn msr_failure_reason(&self, vm: &Vm, st: &VcpuArch, index: u32) -> u32 {
        if self.get_msr(vm, st, index, true).is_some() {
            msr_filter::EXIT_REASON_INVAL
        } else {
            msr_filter::EXIT_REASON_UNKNOWN
        }
    }

    /// kvm_msr_user_space(): KVM_EXIT_X86_RDMSR/WRMSR when userspace wants
    /// failures of `reason` (finished by complete_userspace_io on the next
    /// KVM_RUN), else #GP for the guest.
    #[allow(clippy::too_many_arguments)]
    fn kvm_msr_user_space(
        &self,
        vm: &Vm,
        st: &mut VcpuArch,
        exit_reason: u32,
        index: u32,
        data: u64,
        reason: u32,
        next_rip: u64,
    ) -> Next {
        if vm.arch.user_space_msr_mask.load(Ordering::Relaxed) & reason == 0 {
            st.vendor.queue_exception(uapi::GP_VECTOR, true, 0);
            return Next::Guest;
        }
        self.set_exit(exit_reason);
        // struct kvm_run.msr: error, pad[7], reason, index, data.
        self.run_write(run::U, 0u64);
        self.run_write(run::U + 8, reason);
        self.run_write(run::U + 12, index);
        self.run_write(run::U + 16, data);
        st.pending = Pending::Msr {
            read: exit_reason == uapi::KVM_EXIT_X86_RDMSR,
            rip: st.regs.rip,
            next_rip,
        };
        Next::User(Ok(()))
    }

    /// kernel_pio(): IN/OUT to a port an in-kernel device (the PIO bus) takes;
    /// false when userspace must.
    fn kernel_pio(&self, vm: &Vm, st: &mut VcpuArch, input: bool, size: u8, port: u16) -> bool {
        let n = usize::from(size).min(4);
        let rax = &mut st.regs.gpr[reg::RAX];
        if input {
            let mut d = [0u8; 8];
            let read = vm.kvm_io_bus_read(Bus::Pio, port.into(), d.get_mut(..n).unwrap_or(&mut []));
            if read.is_ok() {
                set_in_result(rax, size, u64::from_le_bytes(d));
            }
            read.is_ok()
        } else {
            let d = rax.to_le_bytes();
            vm.kvm_io_bus_write(Bus::Pio, port.into(), d.get(..n).unwrap_or(&[]))
                .is_ok()
        }
    }

    /// kvm_emulate_hypercall(): the call, then past the instruction.
    pub(crate) fn kvm_emulate_hypercall(&self, _vm: &Vm, st: &mut VcpuArch, next_rip: u64) -> Next {
        self.kvm_hypercall(st);
        self.kvm_skip_emulated_instruction(st, next_rip)
    }

    /// A KVM hypercall (upstream ____kvm_emulate_hypercall()): the number in
    /// RAX, the result back in RAX; only from CPL 0.
    pub(crate) fn kvm_hypercall(&self, st: &mut VcpuArch) {
        let s = self.get_sregs(st);
        let long = s.efer & EFER_LMA != 0 && s.cs.l != 0;
        let mask = if long { u64::MAX } else { 0xffff_ffff };
        let nr = st.regs.gpr[reg::RAX] & mask;
        let ret: i64 = if s.ss.dpl != 0 {
            -KVM_EPERM
        } else {
            match nr {
                KVM_HC_VAPIC_POLL_IRQ => 0,
                KVM_HC_SCHED_YIELD if !st.guest_pv_has(KVM_FEATURE_PV_SCHED_YIELD) => -KVM_ENOSYS,
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
    pub(crate) fn handle_ud(&self, vm: &Vm, st: &mut VcpuArch) -> Next {
        const VMCALL: [u8; 3] = [0x0f, 0x01, 0xc1];
        const VMMCALL: [u8; 3] = [0x0f, 0x01, 0xd9];
        let fix = vm.kvm_check_has_quirk(uapi::KVM_X86_QUIRK_FIX_HYPERCALL_INSN);
        let cpu = self.cpu(st);
        let la = cpu.linear(1, st.regs.rip);
        if fix {
            let mut insn = [0u8; 3];
            let code = cpu.translate(vm, la, false, true).ok();
            if code.is_some_and(|gpa| emulate::read_phys(vm, gpa, &mut insn).is_some())
                && insn == VMCALL
            {
                return match cpu.translate(vm, la, true, false) {
                    Ok(gpa) if emulate::write_phys(vm, gpa, &VMMCALL).is_some() => Next::Guest,
                    Ok(_) => self.handle_emulation_failure(vm, st),
                    Err(e) => self.failure(vm, st, Failure::Walk(e), la),
                };
            }
        }
        st.vendor.queue_exception(uapi::UD_VECTOR, false, 0);
        Next::Guest
    }
}
