// SPDX-License-Identifier: GPL-2.0-only
//! The vendor table: what kvm-amd.ko or kvm-intel.ko hands to kvm.ko, the equivalent
//! of upstream's `kvm_x86_ops`. All three modules compile this file, so the C layout
//! is the same by construction; `size` catches a vendor module built from a different
//! revision of it.
//!
//! Vendors build it with `vendor::ops::<V>()` (arch/x86/vendor.rs); kvm.ko only ever
//! sees the table. Entries are added with the features that use them.

use core::ffi::c_char;

#[repr(C)]
pub(crate) struct X86VendorOps {
    /// `size_of::<X86VendorOps>()` as the vendor was built.
    pub(crate) size: usize,
    /// Module name, NUL-terminated, for messages.
    pub(crate) name: *const c_char,
    /// Bit `n` set when VMs of type `n` (`KVM_X86_*_VM`) can be created.
    pub(crate) vm_types: u32,
}

// SAFETY: the table is immutable after construction and `name` points to a static
// string, so sharing it between threads is sound.
unsafe impl Sync for X86VendorOps {}
