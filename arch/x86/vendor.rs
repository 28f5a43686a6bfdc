// SPDX-License-Identifier: GPL-2.0-only
//! The vendor side of registration with kvm.ko (compiled into kvm-amd and kvm-intel):
//! the [`Vendor`] trait each implements, the table built from it, and [`Registration`],
//! which ties virtualization on every CPU to being registered.

use core::ffi::{c_int, c_void, CStr};
use kernel::prelude::*;

use super::cpus::{self, EnabledCpus, PerCpu};
use super::glue;
use super::x86_ops::X86VendorOps;

/// Implemented by each vendor module.
pub(crate) trait Vendor {
    /// Module name ("kvm_amd", "kvm_intel").
    const NAME: &'static CStr;
    /// Bit `n` set when VMs of type `n` (`KVM_X86_*_VM`) can be created.
    const VM_TYPES: u32;
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
    _cpus: EnabledCpus<T>,
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
        Ok(Registration { ops, _cpus: cpus })
    }
}

impl<T: PerCpu> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: registered in new().
        unsafe { kvm_rs_vendor_unregister(self.ops) };
    }
}
