// SPDX-License-Identifier: GPL-2.0-only
//! A VMX vCPU (upstream struct vcpu_vmx): the vendor operations for kvm.ko. The
//! VMCS (vmcs.rs) and VM entry (vmenter.S) come with VMX vCPUs; until then
//! KVM_CREATE_VCPU fails and no vCPU exists.

use kernel::prelude::*;
use kernel::sync::Arc;

use super::cpus;
use super::exit::vmx_handle_exit;
use super::kvm_x86_ops::{GuestRegs, KvmCoreVcpu, Next};
use super::spte::SpteMasks;
use super::uapi;
use super::vendor;

pub(crate) struct Vmx;

impl vendor::KvmX86Vendor for Vmx {
    const NAME: &'static core::ffi::CStr = c"kvm_intel";
    /// `KVM_X86_DEFAULT_VM` only; TDX comes with TDX support.
    const VM_TYPES: u32 = 1 << 0;
    const HAS_VCPUS: bool = false;
    /// EPT without accessed/dirty bits: valid on every EPT CPU (upstream with
    /// enable_ept_ad_bits=0); the A/D variant is an optimization for later.
    const TDP_MASKS: SpteMasks = SpteMasks::ept(false);
    /// vmx_vcpu_reset()'s revision under KVM_X86_QUIRK_STUFF_FEATURE_MSRS.
    const RESET_MICROCODE_VERSION: u64 = 0x1_0000_0000;
    type Vcpu = NoVcpu;
    type Loaded = NoVcpu;

    /// VMX vCPUs (VMCS, VM entry) are not written yet: KVM_CREATE_VCPU fails with
    /// -EOPNOTSUPP on Intel, so no `NoVcpu` ever exists and no entry below can be
    /// called (each matches on the uninhabited type).
    fn vcpu_create() -> Result<(KBox<NoVcpu>, Arc<NoVcpu>)> {
        Err(cpus::eopnotsupp())
    }
    /// The VMX capability MSRs come with nested VMX.
    fn get_feature_msr(_index: u32) -> Option<u64> {
        None
    }
    fn vcpu_load(v: &NoVcpu, _: u32) {
        match *v {}
    }
    fn vcpu_put(v: &NoVcpu) {
        match *v {}
    }
    fn handle_exit(v: &mut NoVcpu, core: &mut KvmCoreVcpu) -> Next {
        vmx_handle_exit(v, core)
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
    fn vcpu_run(v: &mut NoVcpu, _: &mut GuestRegs, _: bool) {
        match *v {}
    }
    fn queue_exception(v: &mut NoVcpu, _: u32, _: bool, _: u32) {
        match *v {}
    }
    fn queue_soft_exception(v: &mut NoVcpu, _: u32, _: u32) {
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
    fn nmi_allowed(v: &NoVcpu) -> bool {
        match *v {}
    }
    fn get_nmi_mask(v: &NoVcpu) -> bool {
        match *v {}
    }
    fn enable_nmi_window(v: &mut NoVcpu) {
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
    fn update_exception_bitmap(v: &mut NoVcpu, _: u32) {
        match *v {}
    }
    fn setup_mce(v: &NoVcpu, _: u64) -> u64 {
        match *v {}
    }
    fn write_tsc_offset(v: &mut NoVcpu, _: u64) {
        match *v {}
    }
    fn get_exit_info(v: &NoVcpu, _: &mut [u64; 5]) {
        match *v {}
    }
}

/// Stands for the VMCS-backed vCPU to come; uninhabited until then.
pub(crate) enum NoVcpu {}
