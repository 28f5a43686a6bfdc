// SPDX-License-Identifier: GPL-2.0-only
//! kvm-amd.ko: AMD SVM for kvm-rs.
//!
//! At load: checks SVM on every CPU (CPUID and VM_CR, as upstream's
//! kvm_is_svm_supported()), requires nested paging (the only MMU mode kvm-rs has),
//! enables SVM on every CPU through the core kernel with a per-CPU host save area,
//! then registers with kvm.ko. vCPUs are one VMCB each (see vcpu.rs).

use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use kernel::page::Page;
use kernel::prelude::*;

#[path = "../cpus.rs"]
mod cpus;
#[allow(unreachable_pub, dead_code)]
#[path = "../hw/debugreg.rs"]
mod debugreg;
mod exit;
#[path = "../../../src/glue.rs"]
mod glue;
#[allow(unreachable_pub, dead_code)]
#[path = "../hw/msr_index.rs"]
mod msr_index;
#[path = "../../../src/pages.rs"]
mod pages;
#[allow(unreachable_pub, dead_code)]
#[path = "../hw/processor_flags.rs"]
mod processor_flags;
#[allow(unreachable_pub, dead_code)]
#[path = "../kvm/mmu/spte.rs"]
mod spte;
// No_std files shared with the host crates, whose API is `pub`.
#[allow(dead_code)] // kvm.ko uses all of it; kvm-amd part.
#[path = "../kvm_x86_ops.rs"]
mod kvm_x86_ops;
#[allow(unreachable_pub)]
#[path = "../hw/svm.rs"]
mod svm_hw;
#[allow(unreachable_pub, dead_code)]
#[path = "../../../src/abi/uapi.rs"]
mod uapi;
mod vcpu;
#[path = "../vendor.rs"]
mod vendor;
#[allow(unreachable_pub, dead_code)]
mod vmcb;

use kvm_x86_ops::KvmX86Ops;
use svm_hw as svm;

module! {
    type: KvmAmd,
    name: "kvm_amd",
    authors: ["kvm-rs developers"],
    description: "Kernel-based Virtual Machine, in Rust: AMD SVM",
    license: "GPL",
}

static OPS: KvmX86Ops = vendor::ops::<vcpu::Svm>();

/// One CPU's SVM state: the host save area (VM_HSAVE_PA, written by VMRUN), the
/// VMSAVE area for the host state VMRUN does not switch, and ASID allocation
/// (upstream's svm_cpu_data).
pub(crate) struct CpuData {
    hsave: Page,
    pub(crate) save_area: Page,
    pub(crate) asid_generation: AtomicU64,
    pub(crate) next_asid: AtomicU32,
    pub(crate) max_asid: u32,
}

impl cpus::PerCpu for CpuData {
    fn enable(&self) -> Result {
        // SAFETY: the page is owned by `self` and stays allocated while enabled.
        let pa = unsafe { glue::kvm_glue_page_to_phys(self.hsave.as_ptr().cast()) };
        cpus::wrmsr(msr_index::MSR_VM_HSAVE_PA, pa)
    }

    fn disable(&self) {
        // As upstream: nothing may point at the page once it is freed.
        let _ = cpus::wrmsr(msr_index::MSR_VM_HSAVE_PA, 0);
    }
}

/// The per-CPU array while registered (vCPUs run only then: their fds pin us).
static CPU_DATA: AtomicPtr<CpuData> = AtomicPtr::new(core::ptr::null_mut());
static NR_CPU_DATA: AtomicUsize = AtomicUsize::new(0);

/// This CPU's data; called with interrupts off.
pub(crate) fn this_cpu() -> Option<(u32, &'static CpuData)> {
    // Interrupts are off, so the CPU cannot change under us.
    let cpu = kernel::cpu::CpuId::current().as_u32();
    let base = CPU_DATA.load(Ordering::Acquire);
    if base.is_null() || cpu as usize >= NR_CPU_DATA.load(Ordering::Acquire) {
        return None;
    }
    // SAFETY: the array has NR_CPU_DATA entries and lives while we are registered.
    Some((cpu, unsafe { &*base.add(cpu as usize) }))
}

/// IOPM and MSRPM with every bit set: every port and MSR access exits, shared by all
/// vCPUs (read-only to the hardware).
pub(crate) struct Permissions {
    iopm: *mut core::ffi::c_void,
    msrpm: *mut core::ffi::c_void,
}

const IOPM_SIZE: usize = 3 * 4096;
const MSRPM_SIZE: usize = 2 * 4096;

static IOPM_PA: AtomicU64 = AtomicU64::new(0);
static MSRPM_PA: AtomicU64 = AtomicU64::new(0);

pub(crate) fn iopm_pa() -> u64 {
    IOPM_PA.load(Ordering::Acquire)
}

pub(crate) fn msrpm_pa() -> u64 {
    MSRPM_PA.load(Ordering::Acquire)
}

impl Permissions {
    fn new() -> Result<Self> {
        // SAFETY: plain allocations, checked below and freed in drop.
        let (iopm, msrpm) = unsafe {
            (
                glue::kvm_glue_alloc_pages_exact(IOPM_SIZE as u64),
                glue::kvm_glue_alloc_pages_exact(MSRPM_SIZE as u64),
            )
        };
        let this = Permissions { iopm, msrpm };
        if iopm.is_null() || msrpm.is_null() {
            return Err(ENOMEM);
        }
        // SAFETY: both regions were just allocated with these sizes.
        unsafe {
            core::ptr::write_bytes(iopm.cast::<u8>(), 0xff, IOPM_SIZE);
            core::ptr::write_bytes(msrpm.cast::<u8>(), 0xff, MSRPM_SIZE);
            IOPM_PA.store(glue::kvm_glue_virt_to_phys(iopm), Ordering::Release);
            MSRPM_PA.store(glue::kvm_glue_virt_to_phys(msrpm), Ordering::Release);
        }
        Ok(this)
    }
}

impl Drop for Permissions {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with these sizes (free ignores null).
        unsafe {
            if !self.iopm.is_null() {
                glue::kvm_glue_free_pages_exact(self.iopm, IOPM_SIZE as u64);
            }
            if !self.msrpm.is_null() {
                glue::kvm_glue_free_pages_exact(self.msrpm, MSRPM_SIZE as u64);
            }
        }
    }
}

// SAFETY: the maps are written once at init, then only read by hardware.
unsafe impl Send for Permissions {}
// SAFETY: as above.
unsafe impl Sync for Permissions {}

struct KvmAmd {
    reg: vendor::Registration<CpuData>,
    _perm: Permissions,
}

extern "C" {
    /// The `npt` module parameter (arch/x86/svm/params.c), set before init runs.
    static kvm_rs_svm_npt: bool;
}

fn check_cpu() -> Result<(), svm::Unusable> {
    let ecx = cpus::cpuid(0x8000_0001, 0)[2];
    svm::check(ecx, || cpus::rdmsr(msr_index::MSR_VM_CR))
}

impl kernel::Module for KvmAmd {
    fn init(module: &'static ThisModule) -> Result<Self> {
        if let Err((cpu, why)) = cpus::check_all(check_cpu) {
            // kernel::fmt wants its own Display; the no_std types implement core's.
            pr_err!("{} {}\n", format_args!("{why}"), cpu);
            return Err(cpus::eopnotsupp());
        }
        let [eax, ebx, _, edx] = cpus::cpuid(0x8000_000a, 0);
        let features = svm::Features::from_cpuid(eax, ebx, edx);
        pr_info!("{}\n", format_args!("{features}"));
        if features.edx & svm::Features::NPT == 0 {
            pr_err!("Nested Paging not supported: kvm-rs needs it\n");
            return Err(cpus::eopnotsupp());
        }
        // SAFETY: a bool written only by the module loader, before init.
        if !unsafe { kvm_rs_svm_npt } {
            // Upstream falls back to shadow paging, which kvm-rs does not have yet.
            pr_err!("npt=0: shadow paging is not implemented in kvm-rs\n");
            return Err(EINVAL);
        }
        vcpu::set_nrips(features.edx & svm::Features::NRIPS != 0);
        let max_asid = features.nr_asids.saturating_sub(1).max(1);
        let perm = Permissions::new()?;
        let reg = vendor::Registration::new(&OPS, module, glue::KVM_GLUE_VIRT_SVM, || {
            Ok(CpuData {
                hsave: Page::alloc_page(GFP_KERNEL | __GFP_ZERO)?,
                save_area: Page::alloc_page(GFP_KERNEL | __GFP_ZERO)?,
                asid_generation: AtomicU64::new(1),
                next_asid: AtomicU32::new(max_asid + 1),
                max_asid,
            })
        })?;
        let cpus = reg.per_cpu();
        NR_CPU_DATA.store(cpus.len(), Ordering::Release);
        CPU_DATA.store(cpus.as_ptr().cast_mut(), Ordering::Release);
        Ok(KvmAmd { reg, _perm: perm })
    }
}

impl Drop for KvmAmd {
    fn drop(&mut self) {
        // Unregistered only when `reg` drops, after this; no vCPU exists by now
        // (their fds pin this module), so nothing reads these any more.
        let _ = &self.reg;
        CPU_DATA.store(core::ptr::null_mut(), Ordering::Release);
        NR_CPU_DATA.store(0, Ordering::Release);
    }
}
