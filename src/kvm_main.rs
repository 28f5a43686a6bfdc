// SPDX-License-Identifier: GPL-2.0-only
//! kvm.ko: the generic core of kvm-rs.
//!
//! It owns `/dev/kvm` (registered once a vendor module registers, as upstream's
//! kvm_init()), VM file descriptors and the ABI. Hardware specifics live in
//! kvm-amd.ko / kvm-intel.ko behind [`kvm_x86_ops::KvmX86Ops`].

use kernel::prelude::*;

// The generic core (upstream virt/kvm).
mod dev;
mod glue;
mod pages;
mod stats;
mod user;
mod vcpu;
mod vendor;
mod vm;

// No_std libraries shared with the host crates (tested there): their API is `pub`
// and kvm.ko uses part of each.
#[allow(unreachable_pub, dead_code)]
#[path = "abi/mod.rs"]
mod abi;
#[allow(unreachable_pub, dead_code)]
#[path = "../arch/x86/hw/mod.rs"]
mod hw;
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

// The uapi at the crate root, where the files shared with the vendor modules
// (kvm_x86_ops.rs) find it in all three.
use abi::uapi;

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
