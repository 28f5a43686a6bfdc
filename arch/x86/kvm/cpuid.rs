// SPDX-License-Identifier: GPL-2.0-only
//! CPUID (upstream arch/x86/kvm/cpuid.c): KVM_GET_SUPPORTED_CPUID, the vCPU's
//! table (KVM_SET/GET_CPUID2, frozen after the first run), its runtime bits and
//! the CPUID exit (kvm_emulate_cpuid()). The tables are no_std (arch/x86/hw/cpuid.rs).

use kernel::prelude::*;

use crate::abi::uapi;
use crate::arch::regs::{host_cpuid, supported_xcr0};
use crate::arch::x86::VcpuArch;
use crate::arch::{Vcpu, Vm};
use crate::glue;
use crate::hw::cpuid::{self, Entry};
use crate::user::{Cpuid2, Fam, FamHeader};

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

/// The KVM_FEATURE_* bits KVM_CPUID_FEATURES offers, with steal time where the
/// scheduler keeps run-queue delays (upstream: if sched_info_on()).
fn supported_pv_features() -> u32 {
    // SAFETY: reads a kernel setting.
    let sched_info = unsafe { glue::kvm_glue_sched_info_on() } != 0;
    if sched_info {
        cpuid::KVM_PV_FEATURES | 1 << cpuid::KVM_FEATURE_STEAL_TIME
    } else {
        cpuid::KVM_PV_FEATURES
    }
}

/// KVM_GET_SUPPORTED_CPUID on /dev/kvm (kvm_dev_ioctl_get_cpuid()).
pub(crate) fn kvm_dev_ioctl_get_cpuid(arg: usize) -> Result<isize> {
    let fam = Fam::<Cpuid2>::read_header(arg)?;
    let room = fam.header.count();
    if room < 1 {
        return Err(E2BIG);
    }
    let cap = room.min(cpuid::MAX_ENTRIES);
    let mut buf = KVec::from_elem(Entry::default(), cap, GFP_KERNEL)?;
    let n = cpuid::supported(
        host_cpuid,
        supported_xcr0(),
        supported_pv_features(),
        &mut buf,
    )
    .ok_or(E2BIG)?;
    let mut out = KVec::with_capacity(n, GFP_KERNEL)?;
    for e in buf.iter().take(n) {
        out.push(to_uapi(e), GFP_KERNEL)?;
    }
    fam.write_all(&out, false)?;
    Ok(0)
}

impl Vcpu {
    /// KVM_SET_CPUID2 (kvm_vcpu_ioctl_set_cpuid2()): frozen after the first run
    /// (only the same table is accepted, kvm_cpuid_check_equal()); the LAPIC
    /// follows the new table (kvm_vcpu_after_set_cpuid()).
    pub(crate) fn kvm_vcpu_ioctl_set_cpuid2(
        &self,
        vm: &Vm,
        st: &mut VcpuArch,
        arg: usize,
    ) -> Result {
        let fam = Fam::<Cpuid2>::read_header(arg)?;
        let raw = fam.read_entries(cpuid::MAX_ENTRIES, E2BIG)?;
        let mut entries = KVec::with_capacity(raw.len(), GFP_KERNEL)?;
        for e in raw.iter() {
            entries.push(from_uapi(e), GFP_KERNEL)?;
        }
        // KVM owns the runtime bits, also for the comparison below: both tables
        // get the current ones.
        let r = self.cpuid_runtime(vm, st);
        cpuid::update_runtime(&mut entries, &r);
        cpuid::update_runtime(&mut st.cpuid, &r);
        if st.ran {
            let same = entries.len() == st.cpuid.len()
                && entries.iter().zip(st.cpuid.iter()).all(|(a, b)| a == b);
            return if same { Ok(()) } else { Err(EINVAL) };
        }
        st.cpuid = entries;
        st.pv_features = cpuid::kvm_pv_features(&st.cpuid);
        let l1 = cpuid::find(&st.cpuid, 1, 0).map_or(0, |e| e.ecx);
        if let Some(l) = (*self.arch.lapic.lock()).as_mut() {
            l.set_guest_caps(
                l1 & cpuid::L1_ECX_X2APIC != 0,
                l1 & cpuid::L1_ECX_TSC_DEADLINE != 0,
                vm.arch.kvm_lapic_advertise_suppress_eoi_broadcast(),
            );
        }
        Ok(())
    }

    /// KVM_GET_CPUID2 (kvm_vcpu_ioctl_get_cpuid2()), with the runtime bits as
    /// they are now (the guest may have changed CR4 without an exit).
    pub(crate) fn kvm_vcpu_ioctl_get_cpuid2(
        &self,
        vm: &Vm,
        st: &mut VcpuArch,
        arg: usize,
    ) -> Result {
        let r = self.cpuid_runtime(vm, st);
        cpuid::update_runtime(&mut st.cpuid, &r);
        let fam = Fam::<Cpuid2>::read_header(arg)?;
        let mut out = KVec::with_capacity(st.cpuid.len(), GFP_KERNEL)?;
        for e in st.cpuid.iter() {
            out.push(to_uapi(e), GFP_KERNEL)?;
        }
        fam.write_all(&out, false)
    }
}
