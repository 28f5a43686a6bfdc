// SPDX-License-Identifier: GPL-2.0-only
//! VMs: created by KVM_CREATE_VM, each behind an anon-inode fd ("kvm-vm") that holds
//! one reference, released when the last fd reference goes away.

use kernel::ffi::{c_long, c_uint, c_ulong, c_void};
use kernel::prelude::*;
use kernel::sync::Arc;

use crate::abi::{caps, ioctl};
use crate::{dev, glue, vendor};

/// The creating process's mm, pinned so that the identity check below cannot be
/// fooled by a recycled address.
struct OwnerMm(*mut c_void);

impl OwnerMm {
    fn current() -> Self {
        // SAFETY: called from an ioctl, in process context with a user mm.
        OwnerMm(unsafe { glue::kvm_glue_mm_grab_current() })
    }

    fn is_current(&self) -> bool {
        // SAFETY: `self.0` is pinned by mmgrab until drop.
        unsafe { glue::kvm_glue_mm_is_current(self.0) != 0 }
    }
}

impl Drop for OwnerMm {
    fn drop(&mut self) {
        // SAFETY: balances the mmgrab() of `current()`.
        unsafe { glue::kvm_glue_mm_drop(self.0) }
    }
}

// SAFETY: the mm pointer is only compared and dropped; mmdrop may run on any thread.
unsafe impl Send for OwnerMm {}
// SAFETY: as above, shared access only compares the pointer.
unsafe impl Sync for OwnerMm {}

pub(crate) struct Vm {
    mm: OwnerMm,
    #[allow(dead_code)] // Read by the vendor hooks that come with vCPUs.
    vm_type: u32,
}

/// KVM_CREATE_VM: returns the new fd.
pub(crate) fn create(vm_type: usize) -> Result<isize> {
    if !caps::vm_type_supported(&vendor::host(), vm_type as u64) {
        return Err(EINVAL);
    }
    let vm = Arc::new(
        Vm {
            mm: OwnerMm::current(),
            vm_type: vm_type as u32,
        },
        GFP_KERNEL,
    )?;
    let raw = Arc::into_raw(vm);
    // SAFETY: on success the file owns `raw`'s reference (see kvm_rs_vm_release).
    let fd = unsafe { glue::kvm_glue_vm_fd(raw.cast_mut().cast()) };
    if fd < 0 {
        // SAFETY: the file was not created, so the reference is still ours.
        drop(unsafe { Arc::from_raw(raw) });
        return Err(Error::from_errno(fd));
    }
    Ok(fd as isize)
}

impl Vm {
    fn ioctl(&self, cmd: u32, arg: usize) -> Result<isize> {
        // A VM belongs to the process that created it (fork'ed children get -EIO).
        if !self.mm.is_current() {
            return Err(EIO);
        }
        match cmd {
            ioctl::KVM_CHECK_EXTENSION => Ok(dev::check_extension(arg)),
            // x86's kvm_arch_vm_ioctl() answers unknown commands with -ENOTTY.
            _ => Err(ENOTTY),
        }
    }
}

/// `unlocked_ioctl` of a VM fd.
#[no_mangle]
pub(crate) extern "C" fn kvm_rs_vm_ioctl(vm: *mut c_void, cmd: c_uint, arg: c_ulong) -> c_long {
    // SAFETY: private_data set by create(); the file holds a reference while fops run.
    let vm = unsafe { &*vm.cast_const().cast::<Vm>() };
    dev::ioctl_ret(vm.ioctl(cmd, arg))
}

/// `release` of a VM fd: drops the file's reference.
#[no_mangle]
pub(crate) extern "C" fn kvm_rs_vm_release(vm: *mut c_void) {
    // SAFETY: the reference handed to the file in create(); release runs once.
    drop(unsafe { Arc::from_raw(vm.cast_const().cast::<Vm>()) });
}
