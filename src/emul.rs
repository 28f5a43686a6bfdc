// SPDX-License-Identifier: GPL-2.0-only
//! What the instruction emulator (arch/x86/hw/emulate.rs, no_std) needs from the
//! kernel: guest memory through the memory slots, the vCPU's segment and paging
//! state, and instruction fetch. The emulation decisions (MMIO and string-I/O
//! exits, their completion) are in vcpu.rs.
//!
//! Guest memory is accessed through the VMM's mapping with the user-copy
//! primitives: emulation runs in the vCPU ioctl, in the VM owner's mm (checked on
//! entry), so a page the VMM unmapped gives -EFAULT rather than a stale page.

use kernel::prelude::*;
use kernel::uaccess::{UserPtr, UserSlice};

use crate::abi::uapi::{kvm_segment, kvm_sregs};
use crate::emulate::{self, Access, GuestMem, Insn, Mode, Paging, WalkError, WalkOptions};
use crate::vm::Vm;

const PAGE: u64 = 4096;

/// The user address backing `len` bytes at `gpa` (within one page), if RAM.
fn hva(vm: &Vm, gpa: u64, write: bool) -> Option<usize> {
    let (slot, _) = vm.find_slot(gpa >> 12);
    let s = slot?;
    if write && s.readonly() {
        return None;
    }
    if write && s.dirty_logging() {
        // Emulated writes dirty the page like guest ones (kvm_vcpu_mark_page_dirty()).
        vm.mark_dirty(gpa >> 12);
    }
    usize::try_from(s.hva(gpa >> 12) + (gpa & (PAGE - 1))).ok()
}

/// Calls `f(hva, range)` for each page-bounded piece of `len` bytes at `gpa`;
/// None if some of it is not RAM (writable RAM for `write`).
fn each_page(
    vm: &Vm,
    gpa: u64,
    len: usize,
    write: bool,
    mut f: impl FnMut(usize, core::ops::Range<usize>) -> Option<()>,
) -> Option<()> {
    let mut done = 0usize;
    while done < len {
        let a = gpa.wrapping_add(done as u64);
        let n = ((PAGE - (a & (PAGE - 1))) as usize).min(len - done);
        f(hva(vm, a, write)?, done..done + n)?;
        done += n;
    }
    Some(())
}

/// Reads guest-physical memory (any length, split at pages); None if some of it is
/// not RAM.
pub(crate) fn read_phys(vm: &Vm, gpa: u64, buf: &mut [u8]) -> Option<()> {
    each_page(vm, gpa, buf.len(), false, |h, r| {
        let n = r.len();
        let chunk = buf.get_mut(r)?;
        UserSlice::new(UserPtr::from_addr(h), n)
            .reader()
            .read_slice(chunk)
            .ok()
    })
}

/// Writes guest-physical memory; None if some of it is not writable RAM.
pub(crate) fn write_phys(vm: &Vm, gpa: u64, buf: &[u8]) -> Option<()> {
    each_page(vm, gpa, buf.len(), true, |h, r| {
        let n = r.len();
        let chunk = buf.get(r)?;
        UserSlice::new(UserPtr::from_addr(h), n)
            .writer()
            .write_slice(chunk)
            .ok()
    })
}

/// Guest page tables as the walker reads them.
struct Mem<'a>(&'a Vm);

impl GuestMem for Mem<'_> {
    fn read_u64(&mut self, gpa: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        read_phys(self.0, gpa, &mut b)?;
        Some(u64::from_le_bytes(b))
    }

    fn write_u64(&mut self, gpa: u64, v: u64) -> bool {
        write_phys(self.0, gpa, &v.to_le_bytes()).is_some()
    }
}

/// The vCPU state an emulation needs, read once per emulated instruction.
pub(crate) struct Cpu {
    pub(crate) sregs: kvm_sregs,
    pub(crate) mode: Mode,
    pub(crate) maxphyaddr: u32,
}

impl Cpu {
    pub(crate) fn new(sregs: kvm_sregs, rflags: u64, maxphyaddr: u32) -> Self {
        let mode = emulate::mode(
            sregs.cr0,
            rflags,
            sregs.efer,
            sregs.cs.l != 0,
            sregs.cs.db != 0,
        );
        Cpu {
            sregs,
            mode,
            maxphyaddr,
        }
    }

    fn seg(&self, i: u8) -> &kvm_segment {
        let s = &self.sregs;
        match i {
            0 => &s.es,
            1 => &s.cs,
            2 => &s.ss,
            4 => &s.fs,
            5 => &s.gs,
            _ => &s.ds,
        }
    }

    /// The linear address of offset `ea` in segment `seg`.
    pub(crate) fn linear(&self, seg: u8, ea: u64) -> u64 {
        emulate::linear_address(self.mode, seg, self.seg(seg).base, ea)
    }

    /// The GPA of linear address `la` for an access by the guest kernel or user
    /// (by CPL), or the page fault (or memory error) the walk ran into.
    pub(crate) fn translate(
        &self,
        vm: &Vm,
        la: u64,
        write: bool,
        fetch: bool,
    ) -> Result<u64, WalkError> {
        let access = Access {
            write,
            user: self.sregs.ss.dpl == 3,
            fetch,
        };
        self.walk(vm, la, access)
    }

    /// The GPA of `la` for a supervisor read whatever the CPL (upstream
    /// kvm_mmu_gva_to_gpa_system(), as KVM_TRANSLATE uses it).
    pub(crate) fn translate_system(&self, vm: &Vm, la: u64) -> Result<u64, WalkError> {
        let access = Access {
            write: false,
            user: false,
            fetch: false,
        };
        self.walk(vm, la, access)
    }

    fn walk(&self, vm: &Vm, la: u64, access: Access) -> Result<u64, WalkError> {
        let s = &self.sregs;
        let paging = Paging {
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
        };
        let opts = WalkOptions {
            maxphyaddr: self.maxphyaddr.clamp(32, 52) as u8,
            smap_ac: None,
        };
        emulate::translate_with(&mut Mem(vm), &paging, la, access, &opts)
    }

    /// Decodes the instruction at `rip` (upstream x86_decode_insn() after fetching
    /// up to 15 bytes, each page translated on its own).
    pub(crate) fn fetch_decode(&self, vm: &Vm, rip: u64) -> Result<Insn, Failure> {
        let la = self.linear(1, rip);
        let mut bytes = [0u8; 15];
        let mut got = 0usize;
        while got < bytes.len() {
            let a = la.wrapping_add(got as u64);
            let n = ((PAGE - (a & (PAGE - 1))) as usize).min(bytes.len() - got);
            let gpa = self.translate(vm, a, false, true).map_err(Failure::Walk)?;
            let chunk = bytes.get_mut(got..got + n).ok_or(Failure::Emulation)?;
            if read_phys(vm, gpa, chunk).is_none() {
                break;
            }
            got += n;
        }
        let bytes = bytes.get(..got).ok_or(Failure::Emulation)?;
        emulate::decode_with_cs_d(bytes, self.mode, self.sregs.cs.db != 0)
            .map_err(|_| Failure::Emulation)
    }
}

/// Why an instruction could not be emulated.
pub(crate) enum Failure {
    /// Inject this page fault (the guest's own tables did not map the address).
    Walk(WalkError),
    /// Something kvm-rs does not emulate: KVM_INTERNAL_ERROR_EMULATION.
    Emulation,
}
