// SPDX-License-Identifier: GPL-2.0-only
//! The vendor side of registration with kvm.ko (compiled into kvm-amd and kvm-intel):
//! the [`Vendor`] trait each implements, and the table built from it.

use core::ffi::{c_int, c_void, CStr};

use super::x86_ops::X86VendorOps;

/// Implemented by each vendor module.
pub(crate) trait Vendor {
    /// Module name ("kvm_amd", "kvm_intel").
    const NAME: &'static CStr;
    /// Bit `n` set when VMs of type `n` (`KVM_X86_*_VM`) can be created.
    const VM_TYPES: u32;
}

/// The table for vendor `V`, to be kept in a `static` while registered.
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
