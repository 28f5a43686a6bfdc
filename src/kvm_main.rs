// SPDX-License-Identifier: GPL-2.0-only
//! kvm.ko: the generic core of kvm-rs.
//!
//! It owns `/dev/kvm` (registered once a vendor module registers, as upstream's
//! kvm_init()), VM file descriptors and the ABI. The generic files (this folder)
//! are written against [`kvm_host::KvmArch`]; this file instantiates them with
//! x86 ([`arch::kvm_arch::X86`]) for the C glue's file operations. Hardware
//! specifics live in kvm-amd.ko / kvm-intel.ko behind [`kvm_x86_ops::KvmX86Ops`].

use kernel::ffi::{c_int, c_long, c_uint, c_ulong, c_void};
use kernel::prelude::*;

use arch::kvm_arch::X86;

// The generic core (upstream virt/kvm), written against `kvm_host::KvmArch`.
mod coalesced_mmio;
mod dev;
mod eventfd;
mod glue;
mod guest_memfd;
mod iodev;
mod kvm_host;
mod pages;
mod stats;
mod user;
mod vcpu;
mod vm;

// No_std libraries shared with the host crates (tested there): their API is `pub`
// and kvm.ko uses part of each.
#[allow(unreachable_pub, dead_code)]
#[path = "abi/mod.rs"]
mod abi;
#[allow(unreachable_pub, dead_code)]
#[path = "virt/coalesced_mmio.rs"]
mod coalesced;
#[allow(unreachable_pub, dead_code)]
#[path = "virt/halt_poll.rs"]
mod halt_poll;
#[allow(unreachable_pub, dead_code)]
#[path = "../arch/x86/hw/mod.rs"]
mod hw;
#[allow(unreachable_pub, dead_code)]
#[path = "virt/io_bus.rs"]
mod io_bus;
#[allow(unreachable_pub, dead_code)]
#[path = "virt/ioeventfd.rs"]
mod ioeventfd;
#[allow(unreachable_pub, dead_code)]
#[path = "virt/memslot.rs"]
mod memslot;
#[allow(unreachable_pub, dead_code)]
#[path = "virt/stats.rs"]
mod statsfmt;

// The x86 code both vendors share (upstream arch/x86/kvm) and the vendor seam.
#[path = "../arch/x86/kvm/mod.rs"]
mod arch;
#[allow(dead_code)] // Shared with the vendor modules, which use other parts.
#[path = "../arch/x86/kvm_x86_ops.rs"]
mod kvm_x86_ops;

// The uapi and the TDP entry format at the crate root, where the files shared with
// the vendor modules (kvm_x86_ops.rs) find them in all three.
use abi::uapi;
use hw::spte;

module! {
    type: KvmModule,
    name: "kvm",
    authors: ["kvm-rs developers"],
    description: "Kernel-based Virtual Machine, in Rust: generic core",
    license: "GPL",
}

struct KvmModule;

impl kernel::Module for KvmModule {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // Nothing to do until a vendor registers: without one there is no /dev/kvm.
        Ok(KvmModule)
    }
}

// The C glue's entry points (include/kvm_rs_glue.h), for x86.

#[no_mangle]
extern "C" fn kvm_rs_dev_ioctl(cmd: c_uint, arg: c_ulong) -> c_long {
    user::ioctl_ret(dev::kvm_dev_ioctl::<X86>(cmd, arg))
}

#[no_mangle]
extern "C" fn kvm_rs_vm_ioctl(vm: *mut c_void, cmd: c_uint, arg: c_ulong) -> c_long {
    vm::kvm_vm_ioctl::<X86>(vm, cmd, arg)
}

#[no_mangle]
extern "C" fn kvm_rs_vm_compat_ioctl(vm: *mut c_void, cmd: c_uint, arg: c_ulong) -> c_long {
    vm::kvm_vm_compat_ioctl::<X86>(vm, cmd, arg)
}

#[no_mangle]
extern "C" fn kvm_rs_vm_release(vm: *mut c_void) {
    vm::kvm_vm_release::<X86>(vm)
}

#[no_mangle]
extern "C" fn kvm_rs_vcpu_ioctl(vcpu: *mut c_void, cmd: c_uint, arg: c_ulong) -> c_long {
    vcpu::kvm_vcpu_ioctl::<X86>(vcpu, cmd, arg)
}

#[no_mangle]
extern "C" fn kvm_rs_vcpu_compat_ioctl(vcpu: *mut c_void, cmd: c_uint, arg: c_ulong) -> c_long {
    vcpu::kvm_vcpu_compat_ioctl::<X86>(vcpu, cmd, arg)
}

#[no_mangle]
extern "C" fn kvm_rs_vcpu_release(vcpu: *mut c_void) {
    vcpu::kvm_vcpu_release::<X86>(vcpu)
}

/// # Safety
/// From the vCPU's preempt notifier only, which is registered while a vCPU ioctl
/// holds the vCPU: `vcpu` is that live `Vcpu<X86>`.
#[no_mangle]
unsafe extern "C" fn kvm_rs_sched_in(vcpu: *const c_void, cpu: c_int) {
    // SAFETY: as the function's contract says.
    let vcpu = unsafe { &*vcpu.cast::<kvm_host::Vcpu<X86>>() };
    vcpu.kvm_sched_in(cpu as u32);
}

/// # Safety
/// As kvm_rs_sched_in().
#[no_mangle]
unsafe extern "C" fn kvm_rs_sched_out(vcpu: *const c_void) {
    // SAFETY: as the function's contract says.
    let vcpu = unsafe { &*vcpu.cast::<kvm_host::Vcpu<X86>>() };
    vcpu.kvm_sched_out();
}

#[no_mangle]
extern "C" fn kvm_rs_vcpu_page(vcpu: *mut c_void, pgoff: c_ulong) -> *mut c_void {
    vcpu::kvm_vcpu_page::<X86>(vcpu, pgoff)
}

#[no_mangle]
extern "C" fn kvm_rs_gmem_invalidate_start(owner: *mut c_void, start: c_ulong, end: c_ulong) {
    guest_memfd::kvm_gmem_invalidate_start::<X86>(owner, start as u64, end as u64)
}

#[no_mangle]
extern "C" fn kvm_rs_gmem_invalidate_end(owner: *mut c_void) {
    guest_memfd::kvm_gmem_invalidate_end::<X86>(owner)
}

#[no_mangle]
extern "C" fn kvm_rs_gmem_release(owner: *mut c_void) {
    guest_memfd::kvm_gmem_release::<X86>(owner)
}

#[no_mangle]
extern "C" fn kvm_rs_mn_invalidate_start(
    vm: *mut c_void,
    start: c_ulong,
    end: c_ulong,
    blockable: c_int,
) -> c_int {
    vm::kvm_mmu_notifier_invalidate_range_start::<X86>(vm, start as u64, end as u64, blockable != 0)
}

#[no_mangle]
extern "C" fn kvm_rs_mn_invalidate_end(vm: *mut c_void) {
    vm::kvm_mmu_notifier_invalidate_range_end::<X86>(vm)
}

#[no_mangle]
extern "C" fn kvm_rs_mn_release(vm: *mut c_void) {
    vm::kvm_mmu_notifier_release::<X86>(vm)
}
