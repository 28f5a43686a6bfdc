// SPDX-License-Identifier: GPL-2.0-only
//! kvm-intel.ko: Intel VMX for kvm-rs.
//!
//! At load: checks VMX on every CPU (CPUID, IA32_FEAT_CTL, IA32_VMX_BASIC usable and
//! identical everywhere, as upstream's vmx_check_processor_compat()), has the core
//! kernel enter VMX operation (VMXON) on every CPU, then registers with kvm.ko.

use core::sync::atomic::{AtomicU64, Ordering};
use kernel::prelude::*;

#[path = "../cpus.rs"]
mod cpus;
#[path = "../../../src/glue.rs"]
mod glue;
#[allow(unreachable_pub, dead_code)]
#[path = "../hw/msr_index.rs"]
mod msr_index;
#[allow(unreachable_pub, dead_code)]
#[path = "../kvm/mmu/spte.rs"]
mod spte;
// A no_std file shared with the host crate kvm-x86-hw, whose API is `pub`.
#[allow(dead_code)] // kvm.ko uses all of it.
#[path = "../kvm_x86_ops.rs"]
mod kvm_x86_ops;
#[allow(unreachable_pub, dead_code)]
#[path = "../../../src/abi/uapi.rs"]
mod uapi;
#[path = "../vendor.rs"]
mod vendor;
#[allow(unreachable_pub)]
#[path = "../hw/vmx.rs"]
mod vmx_hw;

mod exit;
mod vcpu;

use kvm_x86_ops::KvmX86Ops;
use vcpu::Vmx;
use vmx_hw as vmx;

module! {
    type: KvmIntel,
    name: "kvm_intel",
    authors: ["kvm-rs developers"],
    description: "Kernel-based Virtual Machine, in Rust: Intel VMX",
    license: "GPL",
}

static OPS: KvmX86Ops = vendor::ops::<Vmx>();

/// VMXON itself is the core kernel's (x86_virt_get_ref); nothing per CPU yet.
struct VmxCpu;

impl cpus::PerCpu for VmxCpu {
    fn enable(&self) -> Result {
        Ok(())
    }
    fn disable(&self) {}
}

struct KvmIntel {
    _reg: vendor::Registration<VmxCpu>,
}

impl kernel::Module for KvmIntel {
    fn init(module: &'static ThisModule) -> Result<Self> {
        // Every CPU must have usable VMX and the same IA32_VMX_BASIC as the first one.
        let basic = AtomicU64::new(0);
        let check = || -> Result<(), vmx::Unusable> {
            vmx::check(cpus::cpuid(1, 0)[2], || {
                cpus::rdmsr(msr_index::MSR_IA32_FEAT_CTL)
            })?;
            let b = cpus::rdmsr(msr_index::MSR_IA32_VMX_BASIC).unwrap_or(0);
            vmx::Basic(b)
                .validate()
                .map_err(vmx::Unusable::BadVmxBasic)?;
            match basic.compare_exchange(0, b, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => Ok(()),
                Err(first) if first == b => Ok(()),
                Err(_) => Err(vmx::Unusable::Inconsistent),
            }
        };
        if let Err((cpu, why)) = cpus::check_all(check) {
            // kernel::fmt wants its own Display; the no_std types implement core's.
            pr_err!("{} {}\n", format_args!("{why}"), cpu);
            return Err(cpus::eopnotsupp());
        }
        pr_info!(
            "{}\n",
            format_args!("{}", vmx::Basic(basic.load(Ordering::Acquire)))
        );

        let reg = vendor::Registration::new(&OPS, module, glue::KVM_GLUE_VIRT_VMX, || Ok(VmxCpu))?;
        Ok(KvmIntel { _reg: reg })
    }
}
