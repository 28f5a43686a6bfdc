// SPDX-License-Identifier: GPL-2.0-only
//! kvm-intel.ko: Intel VMX for kvm-rs.
//!
//! At load: checks VMX on every CPU (CPUID, IA32_FEAT_CTL, IA32_VMX_BASIC usable and
//! identical everywhere, as upstream's vmx_check_processor_compat()), has the core
//! kernel enter VMX operation (VMXON) on every CPU, then registers with kvm.ko.

use core::sync::atomic::{AtomicU64, Ordering};
use kernel::prelude::*;

#[path = "../cpus.rs"]
mod cpus;
#[path = "../../../src/glue.rs"]
mod glue;
#[allow(unreachable_pub, dead_code)]
#[path = "../hw/msr_index.rs"]
mod msr_index;
#[allow(unreachable_pub, dead_code)]
#[path = "../kvm/mmu/spte.rs"]
mod spte;
// A no_std file shared with the host crate kvm-x86-hw, whose API is `pub`.
#[allow(dead_code)] // kvm.ko uses all of it.
#[path = "../kvm_x86_ops.rs"]
mod kvm_x86_ops;
#[allow(unreachable_pub, dead_code)]
#[path = "../../../src/abi/uapi.rs"]
mod uapi;
#[path = "../vendor.rs"]
mod vendor;
#[allow(unreachable_pub)]
#[path = "../hw/vmx.rs"]
mod vmx_hw;

use kvm_x86_ops::{Exit, GuestRegs, KvmX86Ops};
use spte::SpteMasks;
use vmx_hw as vmx;

module! {
    type: KvmIntel,
    name: "kvm_intel",
    authors: ["kvm-rs developers"],
    description: "Kernel-based Virtual Machine, in Rust: Intel VMX",
    license: "GPL",
}

struct Vmx;

impl vendor::KvmX86Vendor for Vmx {
    const NAME: &'static core::ffi::CStr = c"kvm_intel";
    /// `KVM_X86_DEFAULT_VM` only; TDX comes with TDX support.
    const VM_TYPES: u32 = 1 << 0;
    const HAS_VCPUS: bool = false;
    /// EPT without accessed/dirty bits: valid on every EPT CPU (upstream with
    /// enable_ept_ad_bits=0); the A/D variant is an optimization for later.
    const TDP_MASKS: SpteMasks = SpteMasks::ept(false);
    type Vcpu = NoVcpu;

    /// VMX vCPUs (VMCS, VM entry) are not written yet: KVM_CREATE_VCPU fails with
    /// -EOPNOTSUPP on Intel, so no `NoVcpu` ever exists and no entry below can be
    /// called (each matches on the uninhabited type).
    fn vcpu_create() -> Result<KBox<NoVcpu>> {
        Err(cpus::eopnotsupp())
    }
    fn get_sregs(v: &NoVcpu, _: &mut uapi::kvm_sregs) {
        match *v {}
    }
    fn set_sregs(v: &mut NoVcpu, _: &uapi::kvm_sregs) -> Result {
        match *v {}
    }
    fn load_mmu_pgd(v: &mut NoVcpu, _: u64) {
        match *v {}
    }
    fn vcpu_run(v: &mut NoVcpu, _: &mut GuestRegs, _: bool) -> Exit {
        match *v {}
    }
    fn queue_exception(v: &mut NoVcpu, _: u32, _: bool, _: u32) {
        match *v {}
    }
    fn get_msr(v: &NoVcpu, _: u32, _: &mut u64) -> bool {
        match *v {}
    }
    fn set_msr(v: &mut NoVcpu, _: u32, _: u64) -> bool {
        match *v {}
    }
    fn interrupt_allowed(v: &NoVcpu, _: u64) -> bool {
        match *v {}
    }
    fn inject_irq(v: &mut NoVcpu, _: u8) {
        match *v {}
    }
    fn enable_irq_window(v: &mut NoVcpu) {
        match *v {}
    }
    fn inject_nmi(v: &mut NoVcpu) -> bool {
        match *v {}
    }
    fn vcpu_reset(v: &mut NoVcpu) {
        match *v {}
    }
    fn get_events(v: &NoVcpu, _: &mut uapi::kvm_vcpu_events) {
        match *v {}
    }
    fn set_events(v: &mut NoVcpu, _: &uapi::kvm_vcpu_events) {
        match *v {}
    }
    fn get_dr(v: &NoVcpu, _: u32) -> u64 {
        match *v {}
    }
    fn set_dr(v: &mut NoVcpu, _: u32, _: u64) {
        match *v {}
    }
    fn get_cr4(v: &NoVcpu) -> u64 {
        match *v {}
    }
    fn sync_dirty_debug_regs(v: &mut NoVcpu) {
        match *v {}
    }
}

/// Stands for the VMCS-backed vCPU to come; uninhabited until then.
enum NoVcpu {}

static OPS: KvmX86Ops = vendor::ops::<Vmx>();

/// VMXON itself is the core kernel's (x86_virt_get_ref); nothing per CPU yet.
struct VmxCpu;

impl cpus::PerCpu for VmxCpu {
    fn enable(&self) -> Result {
        Ok(())
    }
    fn disable(&self) {}
}

struct KvmIntel {
    _reg: vendor::Registration<VmxCpu>,
}

impl kernel::Module for KvmIntel {
    fn init(module: &'static ThisModule) -> Result<Self> {
        // Every CPU must have usable VMX and the same IA32_VMX_BASIC as the first one.
        let basic = AtomicU64::new(0);
        let check = || -> Result<(), vmx::Unusable> {
            vmx::check(cpus::cpuid(1, 0)[2], || {
                cpus::rdmsr(msr_index::MSR_IA32_FEAT_CTL)
            })?;
            let b = cpus::rdmsr(msr_index::MSR_IA32_VMX_BASIC).unwrap_or(0);
            vmx::Basic(b)
                .validate()
                .map_err(vmx::Unusable::BadVmxBasic)?;
            match basic.compare_exchange(0, b, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => Ok(()),
                Err(first) if first == b => Ok(()),
                Err(_) => Err(vmx::Unusable::Inconsistent),
            }
        };
        if let Err((cpu, why)) = cpus::check_all(check) {
            // kernel::fmt wants its own Display; the no_std types implement core's.
            pr_err!("{} {}\n", format_args!("{why}"), cpu);
            return Err(cpus::eopnotsupp());
        }
        pr_info!(
            "{}\n",
            format_args!("{}", vmx::Basic(basic.load(Ordering::Acquire)))
        );

        let reg = vendor::Registration::new(&OPS, module, glue::KVM_GLUE_VIRT_VMX, || Ok(VmxCpu))?;
        Ok(KvmIntel { _reg: reg })
    }
}
