// SPDX-License-Identifier: GPL-2.0-only
//! `/dev/kvm` ioctls (upstream kvm_dev_ioctl()); the arch's go to
//! kvm_arch_dev_ioctl().

use kernel::prelude::*;

use crate::abi::{ioctl, uapi};
use crate::kvm_host::KvmArch;
use crate::vm;

/// Bytes userspace mmaps from a vCPU fd: `kvm_run`, the PIO data page, and the
/// coalesced-MMIO ring page, as upstream x86 with CONFIG_KVM_MMIO lays them out.
pub(crate) const VCPU_MMAP_SIZE: usize =
    (uapi::KVM_COALESCED_MMIO_PAGE_OFFSET as usize + 1) * kernel::page::PAGE_SIZE;

/// kvm_dev_ioctl().
pub(crate) fn kvm_dev_ioctl<A: KvmArch>(cmd: u32, arg: usize) -> Result<isize> {
    match cmd {
        ioctl::KVM_GET_API_VERSION => {
            if arg != 0 {
                return Err(EINVAL);
            }
            Ok(uapi::KVM_API_VERSION as isize)
        }
        ioctl::KVM_CREATE_VM => vm::create::<A>(arg),
        ioctl::KVM_CHECK_EXTENSION => Ok(vm::check_extension::<A>(None, arg)),
        ioctl::KVM_GET_VCPU_MMAP_SIZE => {
            if arg != 0 {
                return Err(EINVAL);
            }
            Ok(VCPU_MMAP_SIZE as isize)
        }
        _ => A::dev_ioctl(cmd, arg),
    }
}
