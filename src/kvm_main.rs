// SPDX-License-Identifier: GPL-2.0-only
//! kvm.ko: the generic core of kvm-rs.
//!
//! It owns `/dev/kvm` (registered once a vendor module registers, as upstream's
//! kvm_init()), VM file descriptors and the ABI. Hardware specifics live in
//! kvm-amd.ko / kvm-intel.ko behind [`x86_ops::X86VendorOps`].

use kernel::prelude::*;

// A no_std library shared with the host crate kvm-abi: its API is `pub`, and kvm.ko
// uses only part of it.
#[allow(unreachable_pub, dead_code)]
#[path = "abi/mod.rs"]
mod abi;
// No_std logic shared with host crates (tested there); kvm.ko uses part of each.
#[allow(unreachable_pub, dead_code)]
#[path = "../arch/x86/hw/cpuid.rs"]
mod cpuid;
mod dev;
mod emul;
#[allow(unreachable_pub, dead_code)]
#[path = "../arch/x86/hw/emulate.rs"]
mod emulate;
mod glue;
#[allow(unreachable_pub, dead_code)]
#[path = "../arch/x86/hw/ioapic.rs"]
mod ioapic;
#[allow(unreachable_pub, dead_code)]
#[path = "../arch/x86/hw/irq_routing.rs"]
mod irq_routing;
mod irqchip;
#[allow(unreachable_pub, dead_code)]
#[path = "../arch/x86/hw/lapic.rs"]
mod lapic;
#[allow(unreachable_pub, dead_code)]
#[path = "virt/memslot.rs"]
mod memslot;
mod mmu;
#[allow(unreachable_pub, dead_code)]
#[path = "../arch/x86/hw/npt.rs"]
mod npt;
mod pages;
#[allow(unreachable_pub, dead_code)]
#[path = "../arch/x86/hw/pic.rs"]
mod pic;
#[allow(unreachable_pub, dead_code)]
#[path = "../arch/x86/hw/sregs.rs"]
mod sregs;
mod stats;
#[allow(unreachable_pub, dead_code)]
#[path = "virt/stats.rs"]
mod statsfmt;
mod user;
mod vcpu;
mod vendor;
mod vm;
#[allow(dead_code)] // Shared with the vendor modules, which use other parts.
#[path = "../arch/x86/x86_ops.rs"]
mod x86_ops;
#[allow(unreachable_pub, dead_code)]
#[path = "../arch/x86/hw/xstate.rs"]
mod xstate;

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
