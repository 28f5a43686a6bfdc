// SPDX-License-Identifier: GPL-2.0-only
//! Driving the no_std instruction emulator (arch/x86/hw/emulate.rs), upstream's
//! x86_emulate_instruction() and emulator_* callbacks of x86.c: guest memory
//! through the memslots' user mappings, instruction fetch, MMIO and string I/O
//! exits, and the completions userspace's data finishes (complete_userspace_io).

use crate::abi::uapi;
use crate::arch::regs::{kvm_get_dr, kvm_get_effective_dr7, kvm_set_dr};
use crate::arch::x86::VcpuArch;
use crate::arch::Vcpu;
use crate::hw::cpuid;
use crate::hw::debugreg::{DR6_BD, DR7_GD};
use crate::hw::paging::{Access, GuestMem, Paging, WalkError, WalkOptions};
use crate::hw::processor_flags::{X86_CR4_DE, X86_EFLAGS_FIXED};
use crate::io_bus::Bus;
use crate::kvm_x86_ops::reg;
use crate::kvm_x86_ops::Next;
use crate::stats::vcpu as st_;
use crate::vcpu::{run, PAGE_SIZE};

use core::sync::atomic::Ordering;
use kernel::prelude::*;
use kernel::uaccess::{UserPtr, UserSlice};

use crate::abi::uapi::{kvm_segment, kvm_sregs};
use crate::arch::Vm;
use crate::hw::emulate::{self, Insn, Mode, Op};

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
        crate::hw::paging::translate_with(&mut Mem(vm), &paging, la, access, &opts)
    }

    /// Decodes the instruction at `rip` (upstream x86_decode_insn() after fetching
    /// up to 15 bytes, each page translated on its own).
    pub(crate) fn fetch_decode(&self, vm: &Vm, rip: u64) -> Result<Insn, Failure> {
        let (bytes, got) = self.fetch(vm, rip)?;
        let bytes = bytes.get(..got).ok_or(Failure::Emulation)?;
        emulate::decode_with_cs_d(bytes, self.mode, self.sregs.cs.db != 0)
            .map_err(|_| Failure::Emulation)
    }

    /// Up to 15 instruction bytes at `rip` (fewer where guest RAM ends), each
    /// page translated on its own; and how many were read.
    pub(crate) fn fetch(&self, vm: &Vm, rip: u64) -> Result<([u8; 15], usize), Failure> {
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
        Ok((bytes, got))
    }
}

/// The padding of the instruction bytes in an emulation failure (upstream: NOP).
const NOP: u8 = 0x90;

/// Why an instruction could not be emulated.
pub(crate) enum Failure {
    /// Inject this page fault (the guest's own tables did not map the address).
    Walk(WalkError),
    /// Something kvm-rs does not emulate: KVM_INTERNAL_ERROR_EMULATION.
    Emulation,
}

/// A userspace-completed instruction: what to finish on the next KVM_RUN
/// (upstream's complete_userspace_io).
#[derive(Clone, Copy)]
pub(crate) enum Pending {
    None,
    /// IN/OUT of `size` bytes at `rip`; IN data comes from the PIO page.
    Pio {
        input: bool,
        size: u8,
        rip: u64,
        next_rip: u64,
    },
    /// An MMIO read at `rip` that `insn` waits for (complete_emulated_mmio).
    MmioRead {
        insn: Insn,
        rip: u64,
        next_rip: u64,
        gpa: u64,
    },
    /// RDMSR or WRMSR at `rip` that userspace handles (KVM_EXIT_X86_RDMSR/WRMSR,
    /// upstream complete_fast_msr_access()): its error means #GP, else a read's
    /// data goes into EDX:EAX, and the guest continues at `next_rip`.
    Msr {
        read: bool,
        rip: u64,
        next_rip: u64,
    },
    /// One OUTS element went out; advance and, with REP, run it again.
    StringOut {
        insn: Insn,
        rip: u64,
    },
    /// INS of `count` elements: store them at ES:rDI.
    StringIn {
        insn: Insn,
        rip: u64,
        count: u64,
    },
}

/// The RIP after `insn` at `rip` (wrapping at 4G outside 64-bit mode, as the
/// emulator's _eip).
/// An IN's result into RAX: 8/16-bit merge into it, 32-bit zero-extends.
pub(crate) fn set_in_result(rax: &mut u64, size: u8, val: u64) {
    *rax = match size {
        1 => (*rax & !0xff) | (val & 0xff),
        2 => (*rax & !0xffff) | (val & 0xffff),
        _ => val & 0xffff_ffff,
    };
}

pub(crate) fn next_ip(_st: &VcpuArch, insn: &Insn, rip: u64) -> u64 {
    let n = rip.wrapping_add(u64::from(insn.len));
    if insn.mode == emulate::Mode::Prot64 {
        n
    } else {
        n & 0xffff_ffff
    }
}

impl Vcpu {
    /// Finishes an instruction whose data userspace provided (upstream's
    /// complete_userspace_io callbacks). An MMIO read-modify-write can need a second
    /// exit, for its write.
    pub(crate) fn complete_userspace_io(
        &self,
        vm: &Vm,
        st: &mut VcpuArch,
    ) -> Option<Result<isize>> {
        let p = core::mem::replace(&mut st.pending, Pending::None);
        // Userspace moved RIP: the instruction is no longer there to finish.
        let at = |rip: u64| st.regs.rip == rip;
        match p {
            Pending::None => {}
            Pending::Pio {
                input,
                size,
                rip,
                next_rip,
            } if at(rip) => {
                if input {
                    let val = u64::from_le_bytes(self.pio_bytes());
                    set_in_result(&mut st.regs.gpr[reg::RAX], size, val);
                }
                return to_user(self.kvm_skip_emulated_instruction(st, next_rip));
            }
            Pending::MmioRead {
                insn,
                rip,
                next_rip,
                gpa,
            } if at(rip) => {
                let mut d = [0u8; 8];
                for (i, b) in d.iter_mut().enumerate() {
                    *b = self.run_read_u8(run::U + 8 + i);
                }
                if let Some(w) = self.finish_read(st, &insn, u64::from_le_bytes(d)) {
                    st.regs.rip = next_rip;
                    self.mmio_exit(gpa, insn.op_size, Some(w));
                    return Some(Ok(0));
                }
                return to_user(self.kvm_skip_emulated_instruction(st, next_rip));
            }
            Pending::Msr {
                read,
                rip,
                next_rip,
            } if at(rip) => {
                if self.run_read_u8(run::U) != 0 {
                    st.vendor.queue_exception(uapi::GP_VECTOR, true, 0);
                    return None;
                }
                if read {
                    let v: u64 = self.run_read(run::U + 16);
                    st.regs.gpr[reg::RAX] = v & 0xffff_ffff;
                    st.regs.gpr[reg::RDX] = v >> 32;
                }
                return to_user(self.kvm_skip_emulated_instruction(st, next_rip));
            }
            Pending::StringOut { insn, rip } if at(rip) => {
                emulate::string_advance(&insn, &mut st.regs.gpr, st.regs.rflags, 1);
                return to_user(self.string_next(st, &insn, rip));
            }
            Pending::StringIn { insn, rip, count } if at(rip) => {
                let cpu = self.cpu(st);
                let size = u64::from(insn.op_size);
                let mut buf = [0u8; 8];
                for i in 0..count {
                    // Userspace may have lowered RCX: stop where REP would.
                    if insn.rep.is_some() && emulate::string_count(&insn, &st.regs.gpr) == 0 {
                        break;
                    }
                    let ea = emulate::string_dst_address(&insn, &st.regs.gpr);
                    let la = cpu.linear(0, ea);
                    let off = (i * size) as usize;
                    let n = insn.op_size as usize;
                    // SAFETY: the PIO page is ours; count * size <= 1024 (ins_read_ahead).
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            self.pio_data().wrapping_add(off % PAGE_SIZE),
                            buf.as_mut_ptr(),
                            n.min(8),
                        )
                    };
                    let stored = cpu
                        .translate(vm, la, true, false)
                        .map_err(Failure::Walk)
                        .and_then(|gpa| {
                            write_phys(vm, gpa, buf.get(..n).unwrap_or(&[]))
                                .ok_or(Failure::Emulation)
                        });
                    if let Err(f) = stored {
                        return to_user(self.failure(vm, st, f, la));
                    }
                    emulate::string_advance(&insn, &mut st.regs.gpr, st.regs.rflags, 1);
                }
                return to_user(self.string_next(st, &insn, rip));
            }
            _ => {}
        }
        None
    }

    /// After string I/O elements: the next instruction, or the same one again
    /// while REP has elements left (it exits again); a single-step trap after
    /// either, as after each iteration on the CPU.
    pub(crate) fn string_next(&self, st: &mut VcpuArch, insn: &Insn, rip: u64) -> Next {
        let next = if emulate::string_done(insn, &st.regs.gpr, st.regs.rflags) {
            next_ip(st, insn, rip)
        } else {
            rip
        };
        self.kvm_skip_emulated_instruction(st, next)
    }

    /// The first 8 bytes of the PIO page.
    pub(crate) fn pio_bytes(&self) -> [u8; 8] {
        let mut buf = [0u8; 8];
        // SAFETY: the PIO page is ours and page-sized.
        unsafe { core::ptr::copy_nonoverlapping(self.pio_data(), buf.as_mut_ptr(), 8) };
        buf
    }

    /// Completes `insn` with `value` read from its memory operand; returns what it
    /// writes back to memory, if anything (RMW ALU ops, XCHG).
    pub(crate) fn finish_read(&self, st: &mut VcpuArch, insn: &Insn, value: u64) -> Option<u64> {
        match insn.op {
            Op::Load { .. } => {
                emulate::complete_load(insn, &mut st.regs.gpr, value);
                None
            }
            Op::Xchg { .. } => {
                let old = emulate::store_value(insn, &st.regs.gpr);
                emulate::complete_load(insn, &mut st.regs.gpr, value);
                old
            }
            _ => {
                let (w, flags) = emulate::alu(insn, &mut st.regs.gpr, st.regs.rflags, value);
                st.regs.rflags = flags | X86_EFLAGS_FIXED;
                w
            }
        }
    }

    /// Fills kvm_run for KVM_EXIT_MMIO: a write of `data`, or a read.
    pub(crate) fn mmio_exit(&self, gpa: u64, len: u8, data: Option<u64>) {
        self.stats.inc(st_::MMIO_EXITS);
        self.set_exit(uapi::KVM_EXIT_MMIO);
        self.run_write(run::U, gpa);
        let d = data.unwrap_or(0).to_le_bytes();
        for (i, b) in d.iter().enumerate() {
            let v = if i < len as usize { *b } else { 0 };
            self.run_write(run::U + 8 + i, v);
        }
        self.run_write(run::U + 16, u32::from(len));
        self.run_write(run::U + 20, u8::from(data.is_some()));
    }

    /// The state the emulator reads (segments, control registers).
    pub(crate) fn cpu(&self, st: &VcpuArch) -> Cpu {
        let mut s = uapi::kvm_sregs::default();
        st.vendor.get_sregs(&mut s);
        Cpu::new(s, st.regs.rflags, cpuid::maxphyaddr(&st.cpuid))
    }

    /// An instruction that could not be emulated: a #PF for the guest when its
    /// own page tables were in the way, else an emulation failure for userspace.
    pub(crate) fn failure(&self, vm: &Vm, st: &mut VcpuArch, f: Failure, la: u64) -> Next {
        match f {
            Failure::Walk(WalkError::PageFault { error_code }) => {
                let mut s = uapi::kvm_sregs::default();
                st.vendor.get_sregs(&mut s);
                s.cr2 = la;
                // Only CR2 differs from what the vendor returned: it takes it back.
                let _ = st.vendor.set_sregs(&s);
                st.vendor.queue_exception(uapi::PF_VECTOR, true, error_code);
                Next::Guest
            }
            _ => self.handle_emulation_failure(vm, st),
        }
    }

    /// NPF on a GPA that is not RAM (or a write to a read-only slot): emulate the
    /// instruction against the in-kernel LAPIC or exit with KVM_EXIT_MMIO
    /// (upstream handle_mmio_page_fault() → x86_emulate_instruction()).
    pub(crate) fn x86_emulate_instruction(&self, vm: &Vm, st: &mut VcpuArch, gpa: u64) -> Next {
        let cpu = self.cpu(st);
        let rip = st.regs.rip;
        let insn = match cpu.fetch_decode(vm, rip) {
            Ok(i) => i,
            Err(f) => return self.failure(vm, st, f, cpu.linear(1, rip)),
        };
        if insn.is_string() || insn.lock && matches!(insn.op, Op::Alu { .. }) {
            // String MMIO and atomics on MMIO are not emulated yet.
            return self.handle_emulation_failure(vm, st);
        }
        let next_rip = next_ip(st, &insn, rip);
        if let Some(n) = self.lapic_mmio(vm, st, &insn, gpa, next_rip) {
            return n;
        }
        let len = usize::from(insn.op_size).min(8);
        match insn.op {
            Op::Store { .. } => {
                let v = emulate::store_value(&insn, &st.regs.gpr).unwrap_or(0);
                let bytes = v.to_le_bytes();
                if vm
                    .kvm_io_bus_write(Bus::Mmio, gpa, bytes.get(..len).unwrap_or(&[]))
                    .is_ok()
                {
                    return self.kvm_skip_emulated_instruction(st, next_rip);
                }
                // Upstream advances RIP before the write exit (writeback).
                st.regs.rip = next_rip;
                self.mmio_exit(gpa, insn.op_size, Some(v));
                Next::User(Ok(()))
            }
            Op::Load { .. } | Op::Alu { .. } | Op::Xchg { .. } => {
                // vcpu_mmio_read(): an in-kernel device first; a read-modify-write
                // writes back through the bus too, or exits for the write.
                let mut d = [0u8; 8];
                if vm
                    .kvm_io_bus_read(Bus::Mmio, gpa, d.get_mut(..len).unwrap_or(&mut []))
                    .is_ok()
                {
                    if let Some(w) = self.finish_read(st, &insn, u64::from_le_bytes(d)) {
                        let wb = w.to_le_bytes();
                        if vm
                            .kvm_io_bus_write(Bus::Mmio, gpa, wb.get(..len).unwrap_or(&[]))
                            .is_err()
                        {
                            st.regs.rip = next_rip;
                            self.mmio_exit(gpa, insn.op_size, Some(w));
                            return Next::User(Ok(()));
                        }
                    }
                    return self.kvm_skip_emulated_instruction(st, next_rip);
                }
                st.pending = Pending::MmioRead {
                    insn,
                    rip,
                    next_rip,
                    gpa,
                };
                self.mmio_exit(gpa, insn.op_size, None);
                Next::User(Ok(()))
            }
            _ => self.handle_emulation_failure(vm, st),
        }
    }

    /// An instruction the vendor intercepted and does not decode itself
    /// (upstream kvm_emulate_instruction(vcpu, 0)): INS/OUTS, and MOV DR while
    /// userspace debugs the guest.
    pub(crate) fn kvm_emulate_instruction(&self, vm: &Vm, st: &mut VcpuArch) -> Next {
        let cpu = self.cpu(st);
        let rip = st.regs.rip;
        let insn = match cpu.fetch_decode(vm, rip) {
            Ok(i) => i,
            Err(f) => return self.failure(vm, st, f, cpu.linear(1, rip)),
        };
        match insn.op {
            Op::Ins | Op::Outs => self.emulator_pio_in_out(vm, st, &cpu, insn),
            Op::MovDr { dr, gpr, to_dr } => self.em_mov_dr(st, &cpu, &insn, dr, gpr, to_dr),
            _ => self.handle_emulation_failure(vm, st),
        }
    }

    /// kvm_queue_exception() of #BP or #OF, the soft exceptions: when the INT3, INT
    /// n or INTO that raises it is at RIP, the guest's handler returns past it
    /// (the vendor's inject_exception skips it; upstream decodes it with
    /// EMULTYPE_SKIP_SOFT_INT). Anything else at RIP returns to RIP (upstream drops
    /// the exception then, or skips by a stale NextRIP).
    pub(crate) fn kvm_queue_soft_exception(&self, vm: &Vm, st: &mut VcpuArch, vector: u32) {
        let cpu = self.cpu(st);
        let len = cpu.fetch(vm, st.regs.rip).ok().and_then(|(b, got)| {
            emulate::soft_exception_len(b.get(..got).unwrap_or(&[]), cpu.mode)
        });
        st.vendor
            .queue_soft_exception(vector, len.unwrap_or(0).into());
    }

    /// MOV to or from a debug register (em_dr_write(), the 0F 21 case, with the
    /// checks of check_dr_read()/check_dr_write()): #GP outside CPL 0, #UD for
    /// DR8-15 and for DR4/DR5 with CR4.DE, the general-detect #DB with DR7.GD,
    /// #GP for a DR6/DR7 value with bits 63:32 set.
    fn em_mov_dr(
        &self,
        st: &mut VcpuArch,
        cpu: &Cpu,
        insn: &Insn,
        dr: u8,
        gpr: u8,
        to_dr: bool,
    ) -> Next {
        if cpu.sregs.ss.dpl != 0 {
            st.vendor.queue_exception(uapi::GP_VECTOR, true, 0);
            return Next::Guest;
        }
        if dr > 7 || cpu.sregs.cr4 & X86_CR4_DE != 0 && (dr == 4 || dr == 5) {
            st.vendor.queue_exception(uapi::UD_VECTOR, false, 0);
            return Next::Guest;
        }
        let val = emulate::read_gpr(&st.regs.gpr, gpr, false, insn.op_size);
        if to_dr && (dr == 6 || dr == 7) && val >> 32 != 0 {
            st.vendor.queue_exception(uapi::GP_VECTOR, true, 0);
            return Next::Guest;
        }
        if kvm_get_effective_dr7(st) & DR7_GD != 0 {
            // A fault: RIP stays at the instruction.
            return self.kvm_inject_emulated_db(st, DR6_BD);
        }
        if to_dr {
            if !kvm_set_dr(st, dr, val) {
                st.vendor.queue_exception(uapi::GP_VECTOR, true, 0);
                return Next::Guest;
            }
        } else {
            let v = kvm_get_dr(st, dr);
            emulate::write_gpr(&mut st.regs.gpr, gpr, false, insn.op_size, v);
        }
        let next = next_ip(st, insn, st.regs.rip);
        self.kvm_skip_emulated_instruction(st, next)
    }

    /// INS/OUTS (IOIO exit with the string bit): OUTS exits once per element, INS
    /// once per read-ahead batch, as upstream's emulator does. The port is DX.
    fn emulator_pio_in_out(&self, vm: &Vm, st: &mut VcpuArch, cpu: &Cpu, insn: Insn) -> Next {
        let port = emulate::io_port(&st.regs.gpr);
        let rip = st.regs.rip;
        let size = insn.op_size;
        if emulate::string_count(&insn, &st.regs.gpr) == 0 {
            let next = next_ip(st, &insn, rip);
            return self.kvm_skip_emulated_instruction(st, next);
        }
        let (input, count) = match insn.op {
            Op::Outs => {
                let la = cpu.linear(insn.seg, emulate::string_src_address(&insn, &st.regs.gpr));
                let mut buf = [0u8; 8];
                let n = usize::from(size).min(8);
                let read = cpu
                    .translate(vm, la, false, false)
                    .map_err(Failure::Walk)
                    .and_then(|gpa| {
                        read_phys(vm, gpa, buf.get_mut(..n).unwrap_or(&mut []))
                            .ok_or(Failure::Emulation)
                    });
                if let Err(f) = read {
                    return self.failure(vm, st, f, la);
                }
                // SAFETY: the PIO page is ours; n <= 8.
                unsafe { core::ptr::copy_nonoverlapping(buf.as_ptr(), self.pio_data(), n) };
                st.pending = Pending::StringOut { insn, rip };
                (false, 1)
            }
            Op::Ins => {
                let count = emulate::ins_read_ahead(&insn, &st.regs.gpr, st.regs.rflags);
                st.pending = Pending::StringIn { insn, rip, count };
                (true, count)
            }
            _ => return self.handle_emulation_failure(vm, st),
        };
        self.stats.inc(st_::IO_EXITS);
        self.io_exit(input, size, port, count as u32);
        Next::User(Ok(()))
    }

    /// Fills kvm_run for KVM_EXIT_IO; the data is at the start of the PIO page.
    pub(crate) fn io_exit(&self, input: bool, size: u8, port: u16, count: u32) {
        self.set_exit(uapi::KVM_EXIT_IO);
        let u = run::U;
        let dir = if input {
            uapi::KVM_EXIT_IO_IN
        } else {
            uapi::KVM_EXIT_IO_OUT
        };
        self.run_write(u, dir as u8);
        self.run_write(u + 1, size);
        self.run_write(u + 2, port);
        self.run_write(u + 4, count);
        self.run_write(
            u + 8,
            u64::from(uapi::KVM_PIO_PAGE_OFFSET) * PAGE_SIZE as u64,
        );
    }

    /// KVM_INTERNAL_ERROR_DELIVERY_EV with upstream's data: exit info 2, reason,
    /// exit info 1, the GPA and the CPU of the last entry.
    pub(crate) fn kvm_prepare_event_vectoring_exit(
        &self,
        gpa: u64,
        error_code: u64,
        exit_reason: u64,
    ) -> Next {
        let cpu = last_vmentry_cpu();
        let data = [gpa, exit_reason, error_code, gpa, cpu];
        self.kvm_prepare_internal_error_exit(uapi::KVM_INTERNAL_ERROR_DELIVERY_EV, &data)
    }

    /// handle_emulation_failure(): an instruction the emulator does not handle.
    /// The guest gets #UD and, at CPL 0, userspace the failure with the
    /// instruction's bytes; with KVM_CAP_EXIT_ON_EMULATION_FAILURE userspace
    /// gets it always and the guest no #UD (it may skip the instruction).
    pub(crate) fn handle_emulation_failure(&self, vm: &Vm, st: &mut VcpuArch) -> Next {
        self.stats.inc(st_::INSN_EMULATION_FAIL);
        if !vm.arch.exit_on_emulation_error.load(Ordering::Relaxed) {
            st.vendor.queue_exception(uapi::UD_VECTOR, false, 0);
            if self.get_sregs(st).ss.dpl != 0 {
                return Next::Guest;
            }
        }
        self.prepare_emulation_ctxt_failure_exit(vm, st)
    }

    /// prepare_emulation_ctxt_failure_exit(): KVM_INTERNAL_ERROR_EMULATION with
    /// the bytes at RIP (those the emulator could fetch) and the vendor's exit
    /// information, laid out as `kvm_run.emulation_failure`: flags, then
    /// insn_size and insn_bytes (NOP-padded) over two data words, then the exit
    /// information.
    fn prepare_emulation_ctxt_failure_exit(&self, vm: &Vm, st: &VcpuArch) -> Next {
        let (bytes, got) = self.cpu(st).fetch(vm, st.regs.rip).unwrap_or(([0; 15], 0));
        let mut info = [0u64; 5];
        st.vendor.get_exit_info(&mut info);
        let mut data = [0u64; 8];
        let mut n = 1;
        if got > 0 {
            data[0] = u64::from(uapi::KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES);
            let mut insn = [NOP; 16];
            insn[0] = got as u8;
            for (d, b) in insn.iter_mut().skip(1).zip(bytes.iter().take(got)) {
                *d = *b;
            }
            for (w, c) in data.iter_mut().skip(1).zip(insn.chunks_exact(8)) {
                let mut le = [0u8; 8];
                le.copy_from_slice(c);
                *w = u64::from_le_bytes(le);
            }
            n = 3;
        }
        for (w, i) in data.iter_mut().skip(n).zip(info.iter()) {
            *w = *i;
        }
        let used = data.get(..n + info.len()).unwrap_or(&data);
        self.kvm_prepare_internal_error_exit(uapi::KVM_INTERNAL_ERROR_EMULATION, used)
    }

    /// KVM_EXIT_INTERNAL_ERROR with `suberror` and `data` (kvm_run's `internal`:
    /// suberror, ndata, then the data words); back to userspace.
    pub(crate) fn kvm_prepare_internal_error_exit(&self, suberror: u32, data: &[u64]) -> Next {
        self.set_exit(uapi::KVM_EXIT_INTERNAL_ERROR);
        self.run_write(run::U, suberror);
        self.run_write(run::U + 4, data.len() as u32);
        for (i, d) in data.iter().enumerate() {
            self.run_write(run::U + 8 + 8 * i, *d);
        }
        Next::User(Ok(()))
    }
}

/// A completion's outcome as complete_userspace_io() returns it: None to enter the
/// guest, else KVM_RUN's result.
fn to_user(n: Next) -> Option<Result<isize>> {
    match n {
        Next::Guest => None,
        Next::User(r) => Some(r.map(|()| 0)),
    }
}

/// The CPU of the last guest entry (upstream vcpu->arch.last_vmentry_cpu): exits
/// are handled on it, with the vCPU loaded.
pub(crate) fn last_vmentry_cpu() -> u64 {
    kernel::cpu::CpuId::current().as_u32().into()
}
