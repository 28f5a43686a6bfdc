// SPDX-License-Identifier: GPL-2.0-only
//! The registered vendor module (kvm-amd or kvm-intel): one at a time.

use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::ffi::{c_int, c_void};
use kernel::prelude::*;

use crate::abi::caps::Host;
use crate::glue;
use crate::x86_ops::X86VendorOps;

static VENDOR: AtomicPtr<X86VendorOps> = AtomicPtr::new(core::ptr::null_mut());

/// The registered vendor's table.
///
/// Only called from file operations of /dev/kvm and VM fds; those files are owned by
/// the vendor module, so it cannot unregister (its exit cannot run) while they exist.
pub(crate) fn current() -> Option<&'static X86VendorOps> {
    let p = VENDOR.load(Ordering::Acquire);
    // A registered table stays valid until its vendor unregisters, which cannot
    // happen while a caller (see above) runs.
    // SAFETY: null, or a registered vendor's static table (see above).
    unsafe { p.as_ref() }
}

/// What the capability logic needs to know about the host.
pub(crate) fn host() -> Host {
    let v = current();
    Host {
        vm_types: v.map_or(0, |v| v.vm_types),
        // SAFETY: reads a counter.
        online_cpus: unsafe { glue::kvm_glue_num_online_cpus() },
        vcpus: v.is_some_and(|v| v.has_vcpus),
        xsave: crate::vcpu::host_xcr0() != 0,
        xsave2_size: crate::vcpu::xsave2_size(),
    }
}

/// Called by a vendor module's init. Mirrors kvm_x86_vendor_init() + kvm_init():
/// -EEXIST when another vendor is loaded, then /dev/kvm appears.
#[no_mangle]
pub(crate) extern "C" fn kvm_rs_vendor_register(
    ops: *const X86VendorOps,
    owner: *mut c_void,
) -> c_int {
    // SAFETY: the vendor passes its static table or null.
    let Some(new) = (unsafe { ops.as_ref() }) else {
        return EINVAL.to_errno();
    };
    if new.size != core::mem::size_of::<X86VendorOps>() {
        pr_err!(
            "vendor module built against a different kvm.ko (ops size {})\n",
            new.size
        );
        return EINVAL.to_errno();
    }
    if let Err(old) = VENDOR.compare_exchange(
        core::ptr::null_mut(),
        ops.cast_mut(),
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        // SAFETY: `old` is the registered (so still loaded) vendor's static table.
        let old = unsafe { CStr::from_char_ptr((*old).name.cast()) };
        pr_err!(
            "already loaded vendor module '{}'\n",
            old.to_str().unwrap_or("?")
        );
        return EEXIST.to_errno();
    }
    // SAFETY: `owner` is the vendor's THIS_MODULE; its exit deregisters the device.
    let r = unsafe { glue::kvm_glue_dev_register(owner) };
    if r != 0 {
        VENDOR.store(core::ptr::null_mut(), Ordering::Release);
        pr_err!("cannot register /dev/kvm: {}\n", r);
    }
    r
}

/// Called by the vendor module's exit. No VM can exist: VM fds pin the vendor module.
#[no_mangle]
pub(crate) extern "C" fn kvm_rs_vendor_unregister(ops: *const X86VendorOps) {
    if VENDOR.load(Ordering::Acquire).cast_const() != ops {
        pr_err!("unregister from a vendor module that is not registered\n");
        return;
    }
    // SAFETY: the device was registered by kvm_rs_vendor_register for this vendor.
    unsafe { glue::kvm_glue_dev_deregister() };
    VENDOR.store(core::ptr::null_mut(), Ordering::Release);
}
