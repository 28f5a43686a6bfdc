// SPDX-License-Identifier: GPL-2.0-only
//! The vendor side of registration with kvm.ko (compiled into kvm-amd and kvm-intel):
//! the [`Vendor`] trait each implements, the table built from it, and [`Registration`],
//! which ties virtualization on every CPU to being registered.

use core::ffi::{c_int, c_void, CStr};
use kernel::prelude::*;

use super::cpus::{self, EnabledCpus, PerCpu};
use super::glue;
use super::uapi::{kvm_sregs, kvm_vcpu_events};
use super::x86_ops::{Exit, GuestRegs, VendorVcpu, X86VendorOps};

/// Implemented by each vendor module.
pub(crate) trait Vendor {
    /// Module name ("kvm_amd", "kvm_intel").
    const NAME: &'static CStr;
    /// Bit `n` set when VMs of type `n` (`KVM_X86_*_VM`) can be created.
    const VM_TYPES: u32;
    /// Whether vCPUs can be created.
    const HAS_VCPUS: bool;
    /// Per-vCPU state (VMCB or VMCS and what goes with it).
    type Vcpu: Send;

    /// A vCPU in the architectural reset state.
    fn vcpu_create() -> Result<KBox<Self::Vcpu>>;
    fn get_sregs(v: &Self::Vcpu, s: &mut kvm_sregs);
    fn set_sregs(v: &mut Self::Vcpu, s: &kvm_sregs) -> Result;
    /// Enters the guest once, interrupts off (see `X86VendorOps::run`).
    fn run(v: &mut Self::Vcpu, regs: &mut GuestRegs, nested_cr3: u64, flush: bool) -> Exit;
    fn queue_exception(v: &mut Self::Vcpu, vector: u32, error_code: Option<u32>);
    fn get_msr(v: &Self::Vcpu, index: u32) -> Option<u64>;
    /// `false` when `index` is not an MSR the vendor keeps.
    fn set_msr(v: &mut Self::Vcpu, index: u32, data: u64) -> bool;
    fn interrupt_allowed(v: &Self::Vcpu, rflags: u64) -> bool;
    fn inject_irq(v: &mut Self::Vcpu, vector: u8);
    fn enable_irq_window(v: &mut Self::Vcpu);
    fn reset(v: &mut Self::Vcpu);
    fn inject_nmi(v: &mut Self::Vcpu) -> bool;
    fn get_events(v: &Self::Vcpu, e: &mut kvm_vcpu_events);
    fn set_events(v: &mut Self::Vcpu, e: &kvm_vcpu_events);
    fn get_dr(v: &Self::Vcpu, n: u32) -> u64;
    fn set_dr(v: &mut Self::Vcpu, n: u32, val: u64);
    fn get_cr4(v: &Self::Vcpu) -> u64;
    fn intercept_dr(v: &mut Self::Vcpu);
}

// The C-ABI entries of the table: each turns the opaque pointer back into the
// `KBox<V::Vcpu>` that vcpu_create() leaked.

/// # Safety
/// Called by kvm.ko only: `v` from `vcpu_create::<V>()`, not freed, used under the
/// vCPU mutex; pointer arguments valid for the call.
unsafe extern "C" fn vcpu_create<V: Vendor>() -> VendorVcpu {
    V::vcpu_create().map_or(core::ptr::null_mut(), |b| KBox::into_raw(b).cast())
}

/// # Safety
/// Called by kvm.ko only: `v` from `vcpu_create::<V>()`, not freed, used under the
/// vCPU mutex; pointer arguments valid for the call.
unsafe extern "C" fn vcpu_free<V: Vendor>(v: VendorVcpu) {
    if !v.is_null() {
        // SAFETY: `v` came from vcpu_create::<V>() and kvm.ko frees it once.
        drop(unsafe { KBox::from_raw(v.cast::<V::Vcpu>()) });
    }
}

/// # Safety
/// Called by kvm.ko only: `v` from `vcpu_create::<V>()`, not freed, used under the
/// vCPU mutex; pointer arguments valid for the call.
unsafe extern "C" fn get_sregs<V: Vendor>(v: VendorVcpu, s: *mut c_void) {
    // SAFETY: kvm.ko passes a live vCPU (serialized by its mutex) and a kvm_sregs.
    unsafe { V::get_sregs(&*v.cast::<V::Vcpu>(), &mut *s.cast::<kvm_sregs>()) }
}

/// # Safety
/// Called by kvm.ko only: `v` from `vcpu_create::<V>()`, not freed, used under the
/// vCPU mutex; pointer arguments valid for the call.
unsafe extern "C" fn set_sregs<V: Vendor>(v: VendorVcpu, s: *const c_void) -> c_int {
    // SAFETY: as get_sregs.
    match unsafe { V::set_sregs(&mut *v.cast::<V::Vcpu>(), &*s.cast::<kvm_sregs>()) } {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

/// # Safety
/// Called by kvm.ko only: `v` from `vcpu_create::<V>()`, not freed, used under the
/// vCPU mutex; pointer arguments valid for the call.
unsafe extern "C" fn run<V: Vendor>(
    v: VendorVcpu,
    regs: *mut GuestRegs,
    nested_cr3: u64,
    flush: bool,
    exit: *mut Exit,
) {
    // SAFETY: kvm.ko passes a live vCPU, its registers and an exit record.
    unsafe { *exit = V::run(&mut *v.cast::<V::Vcpu>(), &mut *regs, nested_cr3, flush) }
}

/// # Safety
/// Called by kvm.ko only: `v` from `vcpu_create::<V>()`, not freed, used under the
/// vCPU mutex; pointer arguments valid for the call.
unsafe extern "C" fn queue_exception<V: Vendor>(
    v: VendorVcpu,
    vector: u32,
    has_error: bool,
    error_code: u32,
) {
    // SAFETY: kvm.ko passes a live vCPU.
    let v = unsafe { &mut *v.cast::<V::Vcpu>() };
    V::queue_exception(v, vector, has_error.then_some(error_code))
}

/// # Safety
/// Called by kvm.ko only: `v` from `vcpu_create::<V>()`, not freed, used under the
/// vCPU mutex; pointer arguments valid for the call.
unsafe extern "C" fn get_msr<V: Vendor>(v: VendorVcpu, index: u32, data: *mut u64) -> c_int {
    // SAFETY: kvm.ko passes a live vCPU.
    match V::get_msr(unsafe { &*v.cast::<V::Vcpu>() }, index) {
        Some(d) => {
            // SAFETY: `data` is kvm.ko's out-parameter.
            unsafe { *data = d };
            0
        }
        None => 1,
    }
}

/// # Safety
/// Called by kvm.ko only: `v` from `vcpu_create::<V>()`, not freed, used under the
/// vCPU mutex; pointer arguments valid for the call.
unsafe extern "C" fn set_msr<V: Vendor>(v: VendorVcpu, index: u32, data: u64) -> c_int {
    // SAFETY: kvm.ko passes a live vCPU.
    let v = unsafe { &mut *v.cast::<V::Vcpu>() };
    c_int::from(!V::set_msr(v, index, data))
}

/// # Safety
/// Called by kvm.ko only: `v` from `vcpu_create::<V>()`, not freed, used under the
/// vCPU mutex.
unsafe extern "C" fn interrupt_allowed<V: Vendor>(v: VendorVcpu, rflags: u64) -> bool {
    // SAFETY: kvm.ko passes a live vCPU.
    V::interrupt_allowed(unsafe { &*v.cast::<V::Vcpu>() }, rflags)
}

/// # Safety
/// As interrupt_allowed.
unsafe extern "C" fn inject_irq<V: Vendor>(v: VendorVcpu, vector: u32) {
    // SAFETY: kvm.ko passes a live vCPU.
    V::inject_irq(unsafe { &mut *v.cast::<V::Vcpu>() }, vector as u8)
}

/// # Safety
/// As interrupt_allowed.
unsafe extern "C" fn enable_irq_window<V: Vendor>(v: VendorVcpu) {
    // SAFETY: kvm.ko passes a live vCPU.
    V::enable_irq_window(unsafe { &mut *v.cast::<V::Vcpu>() })
}

/// # Safety
/// As interrupt_allowed.
unsafe extern "C" fn reset<V: Vendor>(v: VendorVcpu) {
    // SAFETY: kvm.ko passes a live vCPU.
    V::reset(unsafe { &mut *v.cast::<V::Vcpu>() })
}

/// # Safety
/// As interrupt_allowed.
unsafe extern "C" fn inject_nmi<V: Vendor>(v: VendorVcpu) -> bool {
    // SAFETY: kvm.ko passes a live vCPU.
    V::inject_nmi(unsafe { &mut *v.cast::<V::Vcpu>() })
}

/// # Safety
/// As interrupt_allowed; `e` is a `kvm_vcpu_events`.
unsafe extern "C" fn get_events<V: Vendor>(v: VendorVcpu, e: *mut c_void) {
    // SAFETY: kvm.ko passes a live vCPU and a kvm_vcpu_events.
    unsafe { V::get_events(&*v.cast::<V::Vcpu>(), &mut *e.cast::<kvm_vcpu_events>()) }
}

/// # Safety
/// As get_events.
unsafe extern "C" fn set_events<V: Vendor>(v: VendorVcpu, e: *const c_void) {
    // SAFETY: kvm.ko passes a live vCPU and a kvm_vcpu_events.
    unsafe { V::set_events(&mut *v.cast::<V::Vcpu>(), &*e.cast::<kvm_vcpu_events>()) }
}

/// # Safety
/// As interrupt_allowed.
unsafe extern "C" fn get_dr<V: Vendor>(v: VendorVcpu, n: u32) -> u64 {
    // SAFETY: kvm.ko passes a live vCPU.
    V::get_dr(unsafe { &*v.cast::<V::Vcpu>() }, n)
}

/// # Safety
/// As interrupt_allowed.
unsafe extern "C" fn set_dr<V: Vendor>(v: VendorVcpu, n: u32, val: u64) {
    // SAFETY: kvm.ko passes a live vCPU.
    V::set_dr(unsafe { &mut *v.cast::<V::Vcpu>() }, n, val)
}

/// # Safety
/// As interrupt_allowed.
unsafe extern "C" fn get_cr4<V: Vendor>(v: VendorVcpu) -> u64 {
    // SAFETY: kvm.ko passes a live vCPU.
    V::get_cr4(unsafe { &*v.cast::<V::Vcpu>() })
}

/// # Safety
/// As interrupt_allowed.
unsafe extern "C" fn intercept_dr<V: Vendor>(v: VendorVcpu) {
    // SAFETY: kvm.ko passes a live vCPU.
    V::intercept_dr(unsafe { &mut *v.cast::<V::Vcpu>() })
}

/// The table for vendor `V`, to be kept in a `static` while registered.
#[expect(
    clippy::disallowed_methods,
    reason = "const context, where CStrExt::as_char_ptr cannot be called; the name is ASCII"
)]
pub(crate) const fn ops<V: Vendor>() -> X86VendorOps {
    X86VendorOps {
        size: core::mem::size_of::<X86VendorOps>(),
        name: V::NAME.as_ptr(),
        vm_types: V::VM_TYPES,
        has_vcpus: V::HAS_VCPUS,
        vcpu_create: vcpu_create::<V>,
        vcpu_free: vcpu_free::<V>,
        get_sregs: get_sregs::<V>,
        set_sregs: set_sregs::<V>,
        run: run::<V>,
        queue_exception: queue_exception::<V>,
        get_msr: get_msr::<V>,
        set_msr: set_msr::<V>,
        interrupt_allowed: interrupt_allowed::<V>,
        inject_irq: inject_irq::<V>,
        enable_irq_window: enable_irq_window::<V>,
        reset: reset::<V>,
        inject_nmi: inject_nmi::<V>,
        get_events: get_events::<V>,
        set_events: set_events::<V>,
        get_dr: get_dr::<V>,
        set_dr: set_dr::<V>,
        get_cr4: get_cr4::<V>,
        intercept_dr: intercept_dr::<V>,
    }
}

// Exported by kvm.ko (src/vendor.rs, exported from src/glue.c).
extern "C" {
    pub(crate) fn kvm_rs_vendor_register(ops: *const X86VendorOps, owner: *mut c_void) -> c_int;
    pub(crate) fn kvm_rs_vendor_unregister(ops: *const X86VendorOps);
}

/// A registered vendor with virtualization enabled on every CPU. Dropping it first
/// unregisters (no VM can exist then: VM fds pin the vendor module), then disables
/// virtualization on every CPU and frees the per-CPU state.
pub(crate) struct Registration<T: PerCpu> {
    ops: &'static X86VendorOps,
    #[allow(dead_code)] // Held for its Drop; read through per_cpu().
    cpus: EnabledCpus<T>,
}

impl<T: PerCpu> Registration<T> {
    /// Enables `virt` on every CPU with per-CPU state from `per_cpu`, then registers
    /// `ops` (a static) with kvm.ko on behalf of `module`.
    pub(crate) fn new(
        ops: &'static X86VendorOps,
        module: &'static ThisModule,
        virt: glue::kvm_glue_virt,
        per_cpu: impl Fn() -> Result<T>,
    ) -> Result<Self> {
        let n = cpus::nr_cpu_ids();
        let mut state = KVec::with_capacity(n, GFP_KERNEL)?;
        for _ in 0..n {
            state.push(per_cpu()?, GFP_KERNEL)?;
        }
        let cpus = EnabledCpus::enable(virt, state)?;
        // SAFETY: `ops` is static, `module` is ours; drop() unregisters before both go.
        let r = unsafe { kvm_rs_vendor_register(ops, module.as_ptr().cast()) };
        if r != 0 {
            return Err(Error::from_errno(r));
        }
        Ok(Registration { ops, cpus })
    }

    /// The per-CPU state, indexed by CPU id.
    #[allow(dead_code)] // As EnabledCpus::state.
    pub(crate) fn per_cpu(&self) -> &[T] {
        self.cpus.state()
    }
}

impl<T: PerCpu> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: registered in new().
        unsafe { kvm_rs_vendor_unregister(self.ops) };
    }
}
