// SPDX-License-Identifier: GPL-2.0-only
//! kvm-amd.ko: AMD SVM for kvm-rs.
//!
//! At load: checks SVM on every CPU (CPUID and VM_CR, as upstream's
//! kvm_is_svm_supported()), enables it on every CPU through the core kernel and points
//! VM_HSAVE_PA at a per-CPU host save area, then registers with kvm.ko. At unload:
//! the reverse.

use kernel::page::Page;
use kernel::prelude::*;

#[path = "../cpus.rs"]
mod cpus;
#[path = "../../../src/glue.rs"]
mod glue;
// A no_std file shared with the host crate kvm-x86-hw, whose API is `pub`.
#[allow(unreachable_pub)]
#[path = "../hw/svm.rs"]
mod svm_hw;
#[path = "../vendor.rs"]
mod vendor;
#[path = "../x86_ops.rs"]
mod x86_ops;

use svm_hw as svm;
use x86_ops::X86VendorOps;

module! {
    type: KvmAmd,
    name: "kvm_amd",
    authors: ["kvm-rs developers"],
    description: "Kernel-based Virtual Machine, in Rust: AMD SVM",
    license: "GPL",
}

struct Svm;

impl vendor::Vendor for Svm {
    const NAME: &'static core::ffi::CStr = c"kvm_amd";
    /// `KVM_X86_DEFAULT_VM` only; the SEV types come with SEV support.
    const VM_TYPES: u32 = 1 << 0;
}

static OPS: X86VendorOps = vendor::ops::<Svm>();

/// One CPU's host save area (the page VMRUN saves host state to).
struct HostSaveArea(Page);

impl cpus::PerCpu for HostSaveArea {
    fn enable(&self) -> Result {
        // SAFETY: the page is owned by `self` and stays allocated while enabled.
        let pa = unsafe { glue::kvm_glue_page_to_phys(self.0.as_ptr().cast()) };
        cpus::wrmsr(svm::MSR_VM_HSAVE_PA, pa)
    }

    fn disable(&self) {
        // As upstream: nothing may point at the page once it is freed.
        let _ = cpus::wrmsr(svm::MSR_VM_HSAVE_PA, 0);
    }
}

struct KvmAmd {
    _reg: vendor::Registration<HostSaveArea>,
}

fn check_cpu() -> Result<(), svm::Unusable> {
    let ecx = cpus::cpuid(0x8000_0001, 0)[2];
    svm::check(ecx, || cpus::rdmsr(svm::MSR_VM_CR))
}

impl kernel::Module for KvmAmd {
    fn init(module: &'static ThisModule) -> Result<Self> {
        if let Err((cpu, why)) = cpus::check_all(check_cpu) {
            // kernel::fmt wants its own Display; the no_std types implement core's.
            pr_err!("{} {}\n", format_args!("{why}"), cpu);
            return Err(cpus::eopnotsupp());
        }
        let [eax, ebx, _, edx] = cpus::cpuid(0x8000_000a, 0);
        pr_info!(
            "{}\n",
            format_args!("{}", svm::Features::from_cpuid(eax, ebx, edx))
        );

        let reg = vendor::Registration::new(&OPS, module, glue::KVM_GLUE_VIRT_SVM, || {
            Ok(HostSaveArea(Page::alloc_page(GFP_KERNEL | __GFP_ZERO)?))
        })?;
        Ok(KvmAmd { _reg: reg })
    }
}
