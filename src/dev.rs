// SPDX-License-Identifier: GPL-2.0-only
//! `/dev/kvm` ioctls (upstream: kvm_dev_ioctl() and x86's kvm_arch_dev_ioctl()).

use kernel::ffi::{c_long, c_uint, c_ulong};
use kernel::prelude::*;

use crate::abi::{caps, ioctl, uapi};
use crate::{vcpu, vendor, vm};

/// Bytes userspace mmaps from a vCPU fd: `kvm_run`, the PIO data page, and the
/// coalesced-MMIO ring page, as upstream x86 with CONFIG_KVM_MMIO lays them out.
pub(crate) const VCPU_MMAP_SIZE: usize =
    (uapi::KVM_COALESCED_MMIO_PAGE_OFFSET as usize + 1) * kernel::page::PAGE_SIZE;

fn dev_ioctl(cmd: u32, arg: usize) -> Result<isize> {
    match cmd {
        ioctl::KVM_GET_API_VERSION => {
            if arg != 0 {
                return Err(EINVAL);
            }
            Ok(uapi::KVM_API_VERSION as isize)
        }
        ioctl::KVM_CREATE_VM => vm::create(arg),
        ioctl::KVM_CHECK_EXTENSION => Ok(check_extension(arg)),
        ioctl::KVM_GET_SUPPORTED_CPUID => vcpu::get_supported_cpuid(arg),
        ioctl::KVM_GET_MSR_INDEX_LIST => vcpu::msr_index_list(arg),
        ioctl::KVM_GET_VCPU_MMAP_SIZE => {
            if arg != 0 {
                return Err(EINVAL);
            }
            Ok(VCPU_MMAP_SIZE as isize)
        }
        // x86's kvm_arch_dev_ioctl() answers unknown commands with -EINVAL.
        _ => Err(EINVAL),
    }
}

/// KVM_CHECK_EXTENSION, the same on /dev/kvm and on a VM fd.
pub(crate) fn check_extension(arg: usize) -> isize {
    caps::check_extension(&vendor::host(), arg as u64) as isize
}

/// An ioctl handler's result as the C file operation returns it: value or -errno.
pub(crate) fn ioctl_ret(r: Result<isize>) -> c_long {
    match r {
        Ok(v) => v as c_long,
        Err(e) => e.to_errno() as c_long,
    }
}

/// `unlocked_ioctl` of /dev/kvm (src/glue.c).
#[no_mangle]
pub(crate) extern "C" fn kvm_rs_dev_ioctl(cmd: c_uint, arg: c_ulong) -> c_long {
    ioctl_ret(dev_ioctl(cmd, arg))
}
