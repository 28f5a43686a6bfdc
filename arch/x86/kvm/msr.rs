// SPDX-License-Identifier: GPL-2.0-only
//! MSRs (upstream kvm_get_msr_common()/kvm_set_msr_common(), msr_io() and
//! KVM_GET_MSR_INDEX_LIST of x86.c): what kvm.ko keeps, the rest the vendor's;
//! and KVM_X86_SET_MCE, which fills the machine-check banks behind them.

use crate::abi::uapi;
use crate::hw::cpuid::{
    KVM_FEATURE_CLOCKSOURCE, KVM_FEATURE_CLOCKSOURCE2, KVM_FEATURE_STEAL_TIME, L7_ECX_LA57,
};
use crate::hw::emulate::{canonical_address, is_canonical};
use crate::hw::mce::{Injection, McEffect, Mce, MSR_IA32_MCG_CTL, MSR_IA32_MCG_STATUS};
use crate::hw::msr_filter::{self, Range};
use crate::hw::msr_index::{
    hwcr_write, misc_enable_write, misc_features_enables_valid, EFER_LMA, FEATURE_MSRS,
    HWCR_MCSTATUSWREN, MISC_FEATURES_ENABLES_CPUID_FAULT, MSR_CSTAR, MSR_EFER, MSR_FS_BASE,
    MSR_GS_BASE, MSR_IA32_APICBASE, MSR_IA32_ARCH_CAPABILITIES, MSR_IA32_CR_PAT,
    MSR_IA32_MISC_ENABLE, MSR_IA32_PERF_CAPABILITIES, MSR_IA32_POWER_CTL, MSR_IA32_SYSENTER_CS,
    MSR_IA32_SYSENTER_EIP, MSR_IA32_SYSENTER_ESP, MSR_IA32_TSC, MSR_IA32_TSC_ADJUST,
    MSR_IA32_TSC_DEADLINE, MSR_IA32_UCODE_REV, MSR_K7_HWCR, MSR_KERNEL_GS_BASE, MSR_LSTAR,
    MSR_MISC_FEATURES_ENABLES, MSR_PLATFORM_INFO, MSR_STAR, MSR_SYSCALL_MASK,
    PLATFORM_INFO_CPUID_FAULT,
};
use crate::hw::mtrr::{kvm_pat_valid, Mtrr};
use crate::hw::processor_flags::X86_CR4_MCE;
use crate::hw::tsc::{
    KVM_MSR_ENABLED, KVM_STEAL_RESERVED_MASK, MSR_KVM_STEAL_TIME, MSR_KVM_SYSTEM_TIME,
    MSR_KVM_SYSTEM_TIME_NEW, MSR_KVM_WALL_CLOCK, MSR_KVM_WALL_CLOCK_NEW,
};
use core::sync::atomic::Ordering;
use kernel::prelude::*;

use crate::arch::clock::{adjust_tsc_offset_guest, kvm_read_l1_tsc};
use crate::arch::lapic::set_apic_base;
use crate::arch::vendor::VendorRef;
use crate::arch::x86::{now_ns, now_tsc, VcpuArch};
use crate::arch::Vcpu;
use crate::arch::Vm;
use crate::glue;
use crate::hw::cpuid;
use crate::hw::lapic;
use crate::user::{self, Fam, MsrList, Msrs};
use core::mem::size_of;
use kernel::sync::Arc;

/// The MSRs KVM_GET_MSR_INDEX_LIST reports: those KVM_GET/SET_MSRS save and
/// restore (upstream msrs_to_save + emulated_msrs, as far as kvm-rs has them).
pub(crate) const MSRS_TO_SAVE: [u32; 28] = [
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
    MSR_IA32_TSC_DEADLINE,
    MSR_IA32_MISC_ENABLE,
    MSR_PLATFORM_INFO,
    MSR_K7_HWCR,
    // emulated_msrs: MCG_EXT_CTL is VMX's (svm_has_emulated_msr()).
    MSR_IA32_MCG_STATUS,
    MSR_IA32_MCG_CTL,
    MSR_IA32_TSC_ADJUST,
    MSR_KVM_SYSTEM_TIME,
    MSR_KVM_WALL_CLOCK,
    MSR_KVM_SYSTEM_TIME_NEW,
    MSR_KVM_WALL_CLOCK_NEW,
    MSR_IA32_ARCH_CAPABILITIES,
    MSR_IA32_PERF_CAPABILITIES,
    MSR_MISC_FEATURES_ENABLES,
    MSR_IA32_UCODE_REV,
    MSR_IA32_POWER_CTL,
    MSR_KVM_STEAL_TIME,
];

// The filter's rules are no_std (hw/msr_filter.rs), with the ABI's numbers.
const _: () = {
    assert!(msr_filter::FILTER_READ == uapi::KVM_MSR_FILTER_READ);
    assert!(msr_filter::FILTER_WRITE == uapi::KVM_MSR_FILTER_WRITE);
    assert!(msr_filter::DEFAULT_DENY == uapi::KVM_MSR_FILTER_DEFAULT_DENY);
    assert!(msr_filter::MAX_RANGES == uapi::KVM_MSR_FILTER_MAX_RANGES as usize);
    assert!(msr_filter::MAX_BITMAP_SIZE == uapi::KVM_MSR_FILTER_MAX_BITMAP_SIZE as usize);
    assert!(msr_filter::EXIT_REASON_VALID_MASK == uapi::KVM_MSR_EXIT_REASON_VALID_MASK);
    assert!(msr_filter::EXIT_REASON_FILTER == uapi::KVM_MSR_EXIT_REASON_FILTER);
    assert!(msr_filter::EXIT_REASON_UNKNOWN == uapi::KVM_MSR_EXIT_REASON_UNKNOWN);
    assert!(msr_filter::EXIT_REASON_INVAL == uapi::KVM_MSR_EXIT_REASON_INVAL);
    assert!(size_of::<FilterRangeAbi>() == size_of::<uapi::kvm_msr_filter_range>());
    assert!(size_of::<FilterAbi>() == size_of::<uapi::kvm_msr_filter>());
};

/// `struct kvm_msr_filter_range` with its padding spelled out (the uapi one has
/// a pointer and implicit padding, so it cannot be copied as plain bytes).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FilterRangeAbi {
    flags: u32,
    nmsrs: u32,
    base: u32,
    pad: u32,
    bitmap: u64,
}

/// `struct kvm_msr_filter`, likewise.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FilterAbi {
    flags: u32,
    pad: u32,
    ranges: [FilterRangeAbi; msr_filter::MAX_RANGES],
}

// SAFETY: integers only, padding explicit: any bytes are a value, all initialized.
unsafe impl kernel::transmute::FromBytes for FilterAbi {}
// SAFETY: as above.
unsafe impl kernel::transmute::AsBytes for FilterAbi {}

/// A VM's MSR filter (upstream struct kvm_x86_msr_filter): its flags and the
/// non-empty ranges with their bitmaps.
pub(crate) struct MsrFilter {
    flags: u32,
    ranges: KVec<(Range, KVec<u8>)>,
}

impl MsrFilter {
    /// kvm_msr_allowed().
    pub(crate) fn allowed(&self, index: u32, kind: u32) -> bool {
        msr_filter::msr_allowed(
            self.flags,
            self.ranges.iter().map(|(r, b)| (*r, &b[..])),
            index,
            kind,
        )
    }
}

/// KVM_X86_SET_MSR_FILTER (kvm_vm_ioctl_set_msr_filter()): every range checked
/// and its bitmap copied before the filter replaces the old one.
pub(crate) fn kvm_vm_ioctl_set_msr_filter(vm: &Vm, arg: usize) -> Result<isize> {
    let f: FilterAbi = user::read(arg)?;
    let any = f.ranges.iter().any(|r| r.nmsrs != 0);
    if !msr_filter::filter_valid(f.flags, any) {
        return Err(EINVAL);
    }
    let mut ranges = KVec::new();
    for r in f.ranges.iter() {
        let range = Range {
            flags: r.flags,
            base: r.base,
            nmsrs: r.nmsrs,
        };
        let Some(size) = msr_filter::range_bitmap_size(&range).map_err(|_| EINVAL)? else {
            continue;
        };
        let addr = usize::try_from(r.bitmap).map_err(|_| EFAULT)?;
        let bitmap = user::read_bytes(addr, size)?;
        ranges.push((range, bitmap), GFP_KERNEL)?;
    }
    let new = Arc::new(
        MsrFilter {
            flags: f.flags,
            ranges,
        },
        GFP_KERNEL,
    )?;
    // The old filter goes when the last vCPU using it drops its reference.
    let old = (*vm.arch.msr_filter.lock()).replace(new);
    drop(old);
    Ok(0)
}

/// kvm_caps.supported_perf_cap: kvm-rs has no virtual PMU, so no
/// PERF_CAPABILITIES bits (as upstream on SVM).
pub(crate) const SUPPORTED_PERF_CAP: u64 = 0;

/// kvm_get_arch_capabilities().
pub(crate) fn kvm_get_arch_capabilities() -> u64 {
    // SAFETY: reads the host's MSR and bug bits.
    unsafe { glue::kvm_glue_arch_capabilities() }
}

/// kvm_get_feature_msr(): what KVM can offer in a feature MSR, None for one it
/// does not have (the vendor answers for its own).
pub(crate) fn kvm_get_feature_msr(vendor: &VendorRef, index: u32) -> Option<u64> {
    match index {
        MSR_IA32_ARCH_CAPABILITIES => Some(kvm_get_arch_capabilities()),
        MSR_IA32_PERF_CAPABILITIES => Some(SUPPORTED_PERF_CAP),
        MSR_PLATFORM_INFO => Some(PLATFORM_INFO_CPUID_FAULT),
        // The host's revision; 0 if it cannot be read.
        MSR_IA32_UCODE_REV => {
            let mut v = 0;
            // SAFETY: a fault-safe RDMSR into a local.
            unsafe { glue::kvm_glue_rdmsr_safe(index, &mut v) };
            Some(v)
        }
        _ => {
            let mut v = 0;
            (vendor.ops().get_feature_msr)(index, &mut v).then_some(v)
        }
    }
}

/// KVM_GET_MSR_FEATURE_INDEX_LIST on /dev/kvm: the feature MSRs KVM has
/// (kvm_probe_feature_msr() of each), then as KVM_GET_MSR_INDEX_LIST.
pub(crate) fn kvm_get_msr_feature_index_list(arg: usize) -> Result<isize> {
    let vendor = VendorRef::get()?;
    let mut list = KVec::with_capacity(FEATURE_MSRS.len(), GFP_KERNEL)?;
    for &i in FEATURE_MSRS.iter() {
        if kvm_get_feature_msr(&vendor, i).is_some() {
            list.push(i, GFP_KERNEL)?;
        }
    }
    Fam::<MsrList>::read_header(arg)?.write_all(&list, true)?;
    Ok(0)
}

/// KVM_GET_MSRS on /dev/kvm (msr_io(NULL, ..., do_get_feature_msr)): the
/// feature MSRs' supported values (0 for the other MSRs KVM lists), up to the
/// first MSR KVM does not have.
pub(crate) fn kvm_get_feature_msrs(arg: usize) -> Result<isize> {
    let vendor = VendorRef::get()?;
    let fam = Fam::<Msrs>::read_header(arg)?;
    let mut e = fam.read_entries(MAX_IO_MSRS - 1, E2BIG)?;
    let mut done = 0;
    for m in e.iter_mut() {
        match kvm_get_feature_msr(&vendor, m.index) {
            Some(v) => m.data = v,
            // kvm_do_msr_access(): an MSR KVM lists reads as 0.
            None if MSRS_TO_SAVE.contains(&m.index) => m.data = 0,
            None => {
                m.data = 0;
                break;
            }
        }
        done += 1;
    }
    fam.write_entries(&e)?;
    Ok(done)
}

/// upstream MAX_IO_MSRS.
pub(crate) const MAX_IO_MSRS: usize = 256;

/// KVM_GET_MSR_INDEX_LIST on /dev/kvm (kvm_get_msr_index_list()): the count is
/// written back first, then -E2BIG if the caller's room is smaller.
pub(crate) fn kvm_get_msr_index_list(arg: usize) -> Result<isize> {
    Fam::<MsrList>::read_header(arg)?.write_all(&MSRS_TO_SAVE, true)?;
    Ok(0)
}

pub(crate) const X2APIC_MSR_LAST: u32 = 0x8ff;

fn cpuid_has_arch_capabilities(st: &VcpuArch) -> bool {
    cpuid::find(&st.cpuid, 7, 0).is_some_and(|e| e.edx & cpuid::L7_EDX_ARCH_CAPABILITIES != 0)
}

/// X86_FEATURE_PDCM (leaf 1 ECX bit 15): PERF_CAPABILITIES exists.
fn cpuid_has_pdcm(st: &VcpuArch) -> bool {
    cpuid::find(&st.cpuid, 1, 0).is_some_and(|e| e.ecx & cpuid::L1_ECX_PDCM != 0)
}

/// With KVM_CAP_ENFORCE_PV_FEATURE_CPUID, the kvmclock MSRs exist only where the
/// guest's KVM_CPUID_FEATURES offers them; other MSRs pass.
fn kvmclock_msr_allowed(st: &VcpuArch, index: u32) -> bool {
    match index {
        MSR_KVM_SYSTEM_TIME | MSR_KVM_WALL_CLOCK => st.guest_pv_has(KVM_FEATURE_CLOCKSOURCE),
        MSR_KVM_SYSTEM_TIME_NEW | MSR_KVM_WALL_CLOCK_NEW => {
            st.guest_pv_has(KVM_FEATURE_CLOCKSOURCE2)
        }
        _ => true,
    }
}

/// kvm_require_cpl(0) for CPUID with CPUID faulting on (cpuid_fault_enabled()).
pub(crate) fn cpuid_faults(st: &VcpuArch) -> bool {
    st.misc_features_enables & MISC_FEATURES_ENABLES_CPUID_FAULT != 0
}

impl Vcpu {
    /// KVM_GET_MSRS / KVM_SET_MSRS: entries in order up to the first that fails;
    /// returns how many were done (upstream msr_io()).
    pub(crate) fn msrs(&self, vm: &Vm, st: &mut VcpuArch, arg: usize, set: bool) -> Result<isize> {
        let fam = Fam::<Msrs>::read_header(arg)?;
        // Upstream: nmsrs >= MAX_IO_MSRS is -E2BIG.
        let mut e = fam.read_entries(MAX_IO_MSRS - 1, E2BIG)?;
        let mut done = 0;
        for m in e.iter_mut() {
            let ok = if set {
                self.set_msr(vm, st, m.index, m.data, true)
            } else {
                match self.get_msr(vm, st, m.index, true) {
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
            fam.write_entries(&e)?;
        }
        Ok(done)
    }

    /// KVM_X86_SET_MCE (kvm_vcpu_ioctl_x86_set_mce()): the error into its bank,
    /// and the #MC, or the shutdown of a guest that cannot take one.
    pub(crate) fn kvm_vcpu_ioctl_x86_set_mce(
        &self,
        st: &mut VcpuArch,
        m: &uapi::kvm_x86_mce,
    ) -> Result {
        let inj = Injection {
            status: m.status,
            addr: m.addr,
            misc: m.misc,
            mcg_status: m.mcg_status,
            bank: m.bank,
        };
        let cr4_mce = st.vendor.get_cr4() & X86_CR4_MCE != 0;
        match st.mce.set_mce(&inj, cr4_mce).ok_or(EINVAL)? {
            McEffect::MachineCheck => st.vendor.queue_exception(uapi::MC_VECTOR, false, 0),
            McEffect::TripleFault => st.triple_fault = true,
            // CMCI needs MCG_CMCI_P, which KVM_X86_SETUP_MCE refuses on SVM
            // (and the LAPIC has no LVTCMCI yet).
            McEffect::Cmci | McEffect::None => {}
        }
        Ok(())
    }

    /// The guest's TSC now.
    pub(crate) fn guest_tsc(&self, st: &VcpuArch) -> u64 {
        kvm_read_l1_tsc(st, now_tsc())
    }

    /// Reads an MSR for the guest (RDMSR) or for userspace (`host`, KVM_GET_MSRS).
    pub(crate) fn get_msr(&self, vm: &Vm, st: &VcpuArch, index: u32, host: bool) -> Option<u64> {
        match index {
            // Readable by the guest unless KVM_CAP_MSR_PLATFORM_INFO turned it off.
            MSR_PLATFORM_INFO => (host || vm.arch.platform_info_readable.load(Ordering::Relaxed))
                .then_some(st.platform_info),
            MSR_IA32_APICBASE => Some(self.apic_base(st)),
            MSR_IA32_MISC_ENABLE => Some(st.misc_enable),
            MSR_MISC_FEATURES_ENABLES => Some(st.misc_features_enables),
            MSR_IA32_POWER_CTL => Some(st.msr_ia32_power_ctl),
            MSR_IA32_UCODE_REV => Some(st.microcode_version),
            // Without the CPUID bit the guest faults; userspace reads 0 of an
            // MSR KVM lists (kvm_do_msr_access()).
            MSR_IA32_ARCH_CAPABILITIES => {
                if cpuid_has_arch_capabilities(st) {
                    Some(st.arch_capabilities)
                } else {
                    host.then_some(0)
                }
            }
            MSR_IA32_PERF_CAPABILITIES => {
                if cpuid_has_pdcm(st) {
                    Some(st.perf_capabilities)
                } else {
                    host.then_some(0)
                }
            }
            MSR_K7_HWCR => Some(st.msr_hwcr),
            MSR_IA32_TSC => Some(self.guest_tsc(st)),
            i if !kvmclock_msr_allowed(st, i) => None,
            MSR_KVM_STEAL_TIME => st
                .guest_pv_has(KVM_FEATURE_STEAL_TIME)
                .then_some(st.st_msr_val),
            MSR_KVM_SYSTEM_TIME | MSR_KVM_SYSTEM_TIME_NEW => Some(st.pv_time),
            MSR_KVM_WALL_CLOCK | MSR_KVM_WALL_CLOCK_NEW => {
                Some(vm.arch.wall_clock.load(Ordering::Relaxed))
            }
            i if Mtrr::is_mtrr_msr(i) => st.mtrr.get_msr(i),
            MSR_IA32_TSC_ADJUST => Some(st.ia32_tsc_adjust_msr),
            i if Mce::is_mce_msr(i) => st.mce.get_msr(i, host),
            MSR_IA32_TSC_DEADLINE | lapic::X2APIC_MSR_BASE..=X2APIC_MSR_LAST => {
                let tsc = self.guest_tsc(st);
                match (*self.arch.lapic.lock()).as_ref() {
                    Some(l) => l.read_msr(index, now_ns(), tsc).ok(),
                    // Without a LAPIC the deadline reads 0 (kvm_get_lapic_tscdeadline_msr()).
                    None => (index == MSR_IA32_TSC_DEADLINE).then_some(0),
                }
            }
            _ => {
                let mut v = 0;
                st.vendor.get_msr(index, &mut v).then_some(v)
            }
        }
    }

    /// Writes an MSR for the guest (WRMSR) or for userspace (`host`, KVM_SET_MSRS).
    pub(crate) fn set_msr(
        &self,
        vm: &Vm,
        st: &mut VcpuArch,
        index: u32,
        v: u64,
        host: bool,
    ) -> bool {
        // __kvm_set_msr(): MSRs holding linear addresses take only canonical
        // ones (for the widest virtual address the host offers, whatever
        // CR4.LA57 says); SYSENTER_EIP/ESP are made canonical instead, as AMD
        // ignores their upper half.
        let la57 = super::regs::host_cpuid(7, 0)[2] & L7_ECX_LA57 != 0;
        let v = match index {
            MSR_FS_BASE | MSR_GS_BASE | MSR_KERNEL_GS_BASE | MSR_CSTAR | MSR_LSTAR
                if !is_canonical(v, la57) =>
            {
                return false;
            }
            MSR_IA32_SYSENTER_EIP | MSR_IA32_SYSENTER_ESP => canonical_address(v, la57),
            _ => v,
        };
        match index {
            MSR_IA32_MISC_ENABLE => {
                let mwait_in_cpuid =
                    !vm.kvm_check_has_quirk(uapi::KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT);
                let sse3 =
                    cpuid::find(&st.cpuid, 1, 0).is_some_and(|e| e.ecx & cpuid::L1_ECX_SSE3 != 0);
                match misc_enable_write(st.misc_enable, v, host, mwait_in_cpuid, sse3) {
                    Some(v) => {
                        st.misc_enable = v;
                        true
                    }
                    None => false,
                }
            }
            MSR_IA32_POWER_CTL => {
                st.msr_ia32_power_ctl = v;
                true
            }
            MSR_MISC_FEATURES_ENABLES => {
                let ok = misc_features_enables_valid(v, st.platform_info);
                if ok {
                    st.misc_features_enables = v;
                }
                ok
            }
            // Guest writes (a microcode update's) are dropped.
            MSR_IA32_UCODE_REV => {
                if host {
                    st.microcode_version = v;
                }
                true
            }
            MSR_IA32_ARCH_CAPABILITIES => {
                if host && cpuid_has_arch_capabilities(st) {
                    st.arch_capabilities = v;
                    true
                } else {
                    host && v == 0
                }
            }
            MSR_IA32_PERF_CAPABILITIES => {
                if host && cpuid_has_pdcm(st) {
                    if v & !SUPPORTED_PERF_CAP != 0 {
                        return false;
                    }
                    st.perf_capabilities = v;
                    true
                } else {
                    host && v == 0
                }
            }
            i if !kvmclock_msr_allowed(st, i) => false,
            // Upstream: only where the scheduler keeps run-queue delays, and
            // without reserved bits; a write that enables it updates it now.
            MSR_KVM_STEAL_TIME => {
                // SAFETY: reads a kernel setting.
                let sched_info = unsafe { glue::kvm_glue_sched_info_on() } != 0;
                if !st.guest_pv_has(KVM_FEATURE_STEAL_TIME)
                    || !sched_info
                    || v & KVM_STEAL_RESERVED_MASK != 0
                {
                    return false;
                }
                st.st_msr_val = v;
                if v & KVM_MSR_ENABLED != 0 {
                    self.arch.steal_update.store(true, Ordering::Release);
                }
                true
            }
            // A write by userspace sets the TSC (matched to the other vCPUs' if
            // close); one by the guest moves it, and IA32_TSC_ADJUST with it.
            MSR_IA32_TSC if host => {
                vm.kvm_synchronize_tsc(st, Some(v));
                true
            }
            MSR_IA32_TSC => {
                let adj = v.wrapping_sub(now_tsc()).wrapping_sub(st.l1_tsc_offset);
                adjust_tsc_offset_guest(st, adj);
                st.ia32_tsc_adjust_msr = st.ia32_tsc_adjust_msr.wrapping_add(adj);
                true
            }
            // Userspace sets IA32_TSC_ADJUST alone; the guest moves its TSC with it.
            MSR_IA32_TSC_ADJUST => {
                if cpuid::find(&st.cpuid, 7, 0)
                    .is_some_and(|e| e.ebx & cpuid::L7_EBX_TSC_ADJUST != 0)
                {
                    if !host {
                        adjust_tsc_offset_guest(st, v.wrapping_sub(st.ia32_tsc_adjust_msr));
                    }
                    st.ia32_tsc_adjust_msr = v;
                }
                true
            }
            // kvm_write_system_time(): every vCPU updates its pvclock
            // (KVM_REQ_GLOBAL_CLOCK_UPDATE), this one's now in use or not.
            MSR_KVM_SYSTEM_TIME | MSR_KVM_SYSTEM_TIME_NEW => {
                st.pv_time = v;
                st.clock_update = true;
                vm.kvm_gen_kvmclock_update();
                true
            }
            MSR_KVM_WALL_CLOCK | MSR_KVM_WALL_CLOCK_NEW => {
                vm.arch.wall_clock.store(v, Ordering::Relaxed);
                vm.kvm_write_wall_clock(v);
                true
            }
            i if Mtrr::is_mtrr_msr(i) => {
                let maxphyaddr = cpuid::maxphyaddr(&st.cpuid).min(63);
                st.mtrr.set_msr(i, v, !((1u64 << maxphyaddr) - 1))
            }
            MSR_IA32_CR_PAT if !kvm_pat_valid(v) => false,
            i if Mce::is_mce_msr(i) => {
                // can_set_mci_status(): AMD's HWCR.McStatusWrEn.
                let wr_en =
                    cpuid::is_amd_compatible(&st.cpuid) && st.msr_hwcr & HWCR_MCSTATUSWREN != 0;
                st.mce.set_msr(i, v, host, wr_en)
            }
            MSR_K7_HWCR => match hwcr_write(v) {
                Some(v) => {
                    st.msr_hwcr = v;
                    true
                }
                None => false,
            },
            // Written by userspace only, and not to take CPUID faulting away
            // while the guest has it on (upstream kvm_set_msr_common()).
            MSR_PLATFORM_INFO => {
                let faulting = st.misc_features_enables & MISC_FEATURES_ENABLES_CPUID_FAULT != 0;
                if !host || (v & PLATFORM_INFO_CPUID_FAULT == 0 && faulting) {
                    return false;
                }
                st.platform_info = v;
                true
            }
            MSR_IA32_APICBASE => {
                let mut g = self.arch.lapic.lock();
                match (*g).as_mut() {
                    Some(l) => set_apic_base(l, &st.cpuid, v, host),
                    None => {
                        st.apic_base = v;
                        true
                    }
                }
            }
            MSR_IA32_TSC_DEADLINE | lapic::X2APIC_MSR_BASE..=X2APIC_MSR_LAST => {
                let tsc = self.guest_tsc(st);
                let mut g = self.arch.lapic.lock();
                let Some(l) = (*g).as_mut() else {
                    // Without a LAPIC a deadline write is dropped, as upstream.
                    return index == MSR_IA32_TSC_DEADLINE;
                };
                let r = l.write_msr(index, v, now_ns(), tsc);
                st.regs.cr8 = l.cr8();
                drop(g);
                match r {
                    Ok(a) => {
                        self.lapic_action(vm, st, a);
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
                st.vendor.get_msr(MSR_EFER, &mut old);
                let v = (v & !EFER_LMA) | (old & EFER_LMA);
                st.vendor.set_msr(MSR_EFER, v)
            }
            _ => st.vendor.set_msr(index, v),
        }
    }
}
