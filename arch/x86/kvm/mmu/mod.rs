// SPDX-License-Identifier: GPL-2.0-only
//! The MMU's vCPU side (upstream arch/x86/kvm/mmu/mmu.c): kvm_mmu_page_fault() on
//! an NPF, the TDP fault path that pins and maps guest pages (tdp.rs keeps the
//! tables), and KVM_PRE_FAULT_MEMORY.

pub(crate) mod tdp;

use core::sync::atomic::Ordering;
use kernel::prelude::*;

use crate::abi::uapi;
use crate::arch::x86::VcpuArch;
use crate::arch::Vcpu;
use crate::arch::Vm;
use crate::glue;
use crate::kvm_x86_ops::pferr;
use crate::kvm_x86_ops::Next;
use crate::memslot::Slot;
use crate::stats::{self, vcpu as st_};
use crate::user;
use crate::vcpu::run;
use crate::vcpu::PAGE_SIZE;
use tdp::HeldPage;

impl Vcpu {
    /// kvm_mmu_page_fault() for a TDP fault at `gpa`: map the page backing it, or
    /// emulate the access when no slot takes it (MMIO) or it writes a read-only
    /// one. `vectoring`: the CPU was delivering an event, which cannot be
    /// emulated; `exit_reason` is reported then.
    pub(crate) fn kvm_mmu_page_fault(
        &self,
        vm: &Vm,
        st: &mut VcpuArch,
        gpa: u64,
        error_code: u64,
        vectoring: bool,
        exit_reason: u64,
    ) -> Next {
        let gfn = gpa >> 12;
        let write = error_code & pferr::WRITE != 0;
        let (slot, gen) = vm.find_slot(gfn);
        if slot.is_none() || write && slot.is_some_and(|s| s.readonly()) {
            if vectoring {
                // MMIO while delivering an event cannot be emulated
                // (kvm_prepare_event_vectoring_exit()).
                return self.kvm_prepare_event_vectoring_exit(gpa, error_code, exit_reason);
            }
            return self.x86_emulate_instruction(vm, st, gpa);
        }
        let Some(slot) = slot else {
            return self.handle_emulation_failure(vm, st);
        };
        // A race with a slot change just faults again.
        match self.kvm_tdp_map_page(vm, &slot, gen, gfn, write) {
            Ok(_) => Next::Guest,
            Err(e) => Next::User(Err(e)),
        }
    }

    /// Pins the page backing `gfn` in `slot` (read at slot generation `gen`) and
    /// maps it. Ok(true): `gfn` is mapped (by this call or before); Ok(false): the
    /// slots changed meanwhile, look the slot up again.
    /// A dirty-logged slot's pages are mapped read-only until written (`write`:
    /// the fault is a write), which marks them dirty.
    pub(crate) fn kvm_tdp_map_page(
        &self,
        vm: &Vm,
        slot: &Slot,
        gen: u64,
        gfn: u64,
        write: bool,
    ) -> Result<bool> {
        let pin_write = !slot.readonly();
        let logged = slot.dirty_logging();
        if write && pin_write {
            // Marked before the page becomes writable, so a harvest in between
            // cannot miss it.
            if logged {
                vm.mark_dirty(gfn);
            }
            if vm.arch.mmu.lock().make_writable(gfn) {
                self.stats.inc(st_::PF_FIXED);
                return Ok(true);
            }
        }
        let page = if slot.is_gmem_only() {
            // kvm_mmu_faultin_pfn_gmem(): the page comes from the guest_memfd.
            match vm.kvm_gmem_get_pfn(slot, gfn) {
                Ok(hpa) => HeldPage {
                    hpa,
                    write: true,
                    gmem: true,
                },
                Err(e) => {
                    self.kvm_prepare_memory_fault_exit(gfn << 12, PAGE_SIZE as u64);
                    return Err(e);
                }
            }
        } else {
            Self::pin_slot_page(slot, gfn, pin_write, write)?
        };
        let (hpa, pin_write) = (page.hpa, page.write);
        let writable = pin_write && (write || !logged);
        let mut mmu = vm.arch.mmu.lock();
        let mapped = loop {
            // Slots changed, or user memory is being invalidated (MMU notifier):
            // the pinned page may be stale, fault again.
            if vm.slots_gen.load(Ordering::SeqCst) != gen || vm.invalidating() {
                break Ok(None);
            }
            match mmu.map(gfn, &page, writable) {
                Err(e) if e == EAGAIN => {
                    // Page-table pages are allocated outside the lock (see Mmu).
                    let need = mmu.spare_needed();
                    drop(mmu);
                    let mut pages = KVec::with_capacity(need, GFP_KERNEL)?;
                    for _ in 0..need {
                        pages.push(crate::pages::Pages::new(PAGE_SIZE)?, GFP_KERNEL)?;
                    }
                    mmu = vm.arch.mmu.lock();
                    mmu.topup(pages);
                }
                r => break r.map(Some),
            }
        };
        if mapped == Ok(Some(false)) && write && pin_write && !page.gmem {
            // Mapped read-only while the memory was read-only; writable again now.
            if let Some(old) = mmu.upgrade(gfn, hpa, writable) {
                vm.kvm_flush_remote_tlbs();
                drop(mmu);
                // SAFETY: the old leaf's read-only pin, no longer mapped or cached.
                unsafe { glue::kvm_glue_unpin_phys(old, 0) };
                self.stats.inc(st_::PF_FIXED);
                return Ok(true);
            }
        }
        let pages = mmu.mapped;
        drop(mmu);
        if mapped == Ok(Some(true)) {
            vm.stats.set(stats::vm::PAGES_4K, pages);
            self.stats.inc(st_::PF_FIXED);
            return Ok(true);
        }
        // Not handed to the MMU. Some(false): another vCPU mapped it first.
        page.release();
        mapped.map(|m| m.is_some())
    }

    /// Pins the user page backing `gfn` in `slot` (__kvm_faultin_pfn()): for
    /// writing if `pin_write`, else or if that fails on a read, read-only.
    fn pin_slot_page(slot: &Slot, gfn: u64, pin_write: bool, write: bool) -> Result<HeldPage> {
        let mut pin_write = pin_write;
        let mut hpa = 0u64;
        let hva = slot.hva(gfn);
        // SAFETY: the VM's owner mm is current (checked by the ioctl); pins one page.
        let mut r = unsafe { glue::kvm_glue_pin_user_page(hva, i32::from(pin_write), &mut hpa) };
        if r != 0 && pin_write && !write {
            // A read of a writable slot whose memory is read-only now (mprotect):
            // map it read-only, as upstream's hva_to_pfn() falls back to.
            pin_write = false;
            // SAFETY: as above.
            r = unsafe { glue::kvm_glue_pin_user_page(hva, 0, &mut hpa) };
        }
        if r != 0 {
            return Err(EFAULT);
        }
        Ok(HeldPage {
            hpa,
            write: pin_write,
            gmem: false,
        })
    }

    /// kvm_prepare_memory_fault_exit(): KVM_RUN's -EFAULT/-EHWPOISON comes with
    /// the guest range that could not be mapped (kvm_run's `memory_fault`).
    fn kvm_prepare_memory_fault_exit(&self, gpa: u64, size: u64) {
        self.set_exit(uapi::KVM_EXIT_MEMORY_FAULT);
        self.run_write(run::U, 0u64);
        self.run_write(run::U + 8, gpa);
        self.run_write(run::U + 16, size);
    }

    /// KVM_PRE_FAULT_MEMORY (kvm_vcpu_pre_fault_memory()): maps the range page
    /// by page; the range left is passed back, and the call succeeds if any page
    /// was mapped. A GPA without a slot is -ENOENT (upstream: emulated MMIO).
    pub(crate) fn kvm_vcpu_pre_fault_memory(&self, vm: &Vm, arg: usize) -> Result<isize> {
        let mut r: uapi::kvm_pre_fault_memory = user::read(arg)?;
        if r.flags != 0
            || r.gpa % PAGE_SIZE as u64 != 0
            || r.size % PAGE_SIZE as u64 != 0
            || r.gpa.checked_add(r.size).is_none_or(|end| end <= r.gpa)
        {
            return Err(EINVAL);
        }
        let full = r.size;
        let mut res = Ok(());
        while r.size != 0 {
            if crate::arch::x86::signal_pending() {
                res = Err(EINTR);
                break;
            }
            let gfn = r.gpa >> 12;
            let (slot, gen) = vm.find_slot(gfn);
            let Some(slot) = slot else {
                res = Err(ENOENT);
                break;
            };
            match self.kvm_tdp_map_page(vm, &slot, gen, gfn, false) {
                Ok(true) => {
                    r.gpa += PAGE_SIZE as u64;
                    r.size -= PAGE_SIZE as u64;
                }
                Ok(false) => {}
                Err(e) => {
                    res = Err(e);
                    break;
                }
            }
            // SAFETY: process context, only our vCPU mutex held.
            unsafe { glue::kvm_glue_cond_resched() };
        }
        user::write(arg, &r)?;
        if r.size == full {
            res?;
        }
        Ok(0)
    }
}

/// kvm_get_host_maxphyaddr(): CPUID's raw MAXPHYADDR (the kernel's
/// x86_phys_bits is reduced by SME/MKTME key bits, which are not reserved to the
/// CPU); 36, the architectural default, without leaf 0x80000008.
pub(crate) fn kvm_get_host_maxphyaddr() -> u32 {
    const LEAF_PHYS_BITS: u32 = 0x8000_0008;
    const DEFAULT_PHYS_BITS: u32 = 36;
    if super::regs::host_cpuid(0x8000_0000, 0)[0] < LEAF_PHYS_BITS {
        return DEFAULT_PHYS_BITS;
    }
    (super::regs::host_cpuid(LEAF_PHYS_BITS, 0)[0] & 0xff).clamp(32, 52)
}

impl Vcpu {
    /// kvm_mmu_reload() → kvm_mmu_load(): points the vCPU at its MMU root and
    /// hands it to the vendor (load_mmu_pgd). The TDP root is shared by the VM's
    /// vCPUs (upstream's TDP MMU hands every vCPU of one role the same root) and
    /// lives as long as the VM, so this happens once per vCPU.
    pub(crate) fn kvm_mmu_reload(&self, vm: &Vm, st: &mut VcpuArch) {
        if st.mmu_root_hpa != super::x86::INVALID_PAGE {
            return;
        }
        let root = vm.arch.mmu.lock().root_pa();
        st.vendor.load_mmu_pgd(root);
        st.mmu_root_hpa = root;
    }
}
