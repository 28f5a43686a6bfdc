// SPDX-License-Identifier: GPL-2.0-only
//! `/dev/kvm` ioctls (upstream: kvm_dev_ioctl() and x86's kvm_arch_dev_ioctl()).

use kernel::ffi::{c_long, c_uint, c_ulong};
use kernel::prelude::*;

use crate::abi::caps::{self, Host};
use crate::abi::{ioctl, uapi};
use crate::arch::{cpuid, msr, regs};
use crate::{glue, user, vendor, vm};

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
        ioctl::KVM_GET_SUPPORTED_CPUID => cpuid::kvm_dev_ioctl_get_cpuid(arg),
        ioctl::KVM_GET_MSR_INDEX_LIST => msr::kvm_get_msr_index_list(arg),
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
    caps::check_extension(&host(), arg as u64) as isize
}

/// What the capability logic needs to know about the host and the vendor.
pub(crate) fn host() -> Host {
    let (vm_types, vcpus) = vendor::vm_types_and_vcpus();
    Host {
        vm_types,
        // SAFETY: reads a counter.
        online_cpus: unsafe { glue::kvm_glue_num_online_cpus() },
        vcpus,
        xsave: regs::host_xcr0() != 0,
        xsave2_size: regs::xsave2_size(),
    }
}

/// `unlocked_ioctl` of /dev/kvm (src/glue.c).
#[no_mangle]
pub(crate) extern "C" fn kvm_rs_dev_ioctl(cmd: c_uint, arg: c_ulong) -> c_long {
    user::ioctl_ret(dev_ioctl(cmd, arg))
}
