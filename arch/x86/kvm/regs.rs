// SPDX-License-Identifier: GPL-2.0-only
//! vCPU register state (upstream regs.c and the XSAVE parts of x86.c): REGS with
//! the RFLAGS.TF of single-stepping, SREGS2 with the PAE PDPTRs, debug registers
//! (DR0-3, DR6, DR7 and the effective ones of guest debugging), FPU,
//! XSAVE/XSAVE2, XCRS, TRANSLATE, and the guest's XCR0 (XSETBV, switched around
//! every entry).

use crate::hw::debugreg::{self, DR7_BP_EN_MASK};
use crate::hw::msr_index::{EFER_LMA, MISC_ENABLE_MWAIT};
use crate::hw::processor_flags::{
    X86_CR0_PG, X86_CR4_OSXSAVE, X86_CR4_PAE, X86_EFLAGS_FIXED, X86_EFLAGS_TF,
};
use core::sync::atomic::Ordering;
use kernel::prelude::*;

use crate::abi::uapi;
use crate::arch::emulate;
use crate::arch::irq::process_nmi;
use crate::arch::lapic::set_apic_base;
use crate::arch::x86::{VcpuArch, RESET_RIP};
use crate::arch::Vcpu;
use crate::arch::Vm;
use crate::glue;
use crate::hw::cpuid::{self, Entry};
use crate::hw::lapic;
use crate::hw::sregs;
use crate::hw::xstate::{self, fxsave};
use crate::kvm_x86_ops::Next;
use crate::kvm_x86_ops::{reg, GuestRegs};
use crate::user;

/// Upstream's KVM_MAX_XCRS.
const MAX_XCRS: u32 = 16;

pub(crate) fn host_cpuid(f: u32, i: u32) -> [u32; 4] {
    let mut r = [0u32; 4];
    // SAFETY: `r` is a valid 4-element array.
    unsafe { glue::kvm_glue_cpuid(f, i, r.as_mut_ptr()) };
    r
}

pub(crate) fn host_xcr0() -> u64 {
    // SAFETY: reads XCR0 (0 on a host without XSAVE).
    unsafe { glue::kvm_glue_host_xcr0() }
}

/// The XCR0 bits guests may enable: kvm-rs's set within the host's XCR0, which the
/// guest FPU state (the host's user features) covers.
pub(crate) fn supported_xcr0() -> u64 {
    host_xcr0() & xstate::KVM_RS_XCR0
}

/// KVM_CAP_XSAVE2: the buffer size KVM_GET_XSAVE2 needs, at least `struct kvm_xsave`.
pub(crate) fn xsave2_size() -> u32 {
    xstate::required_size(supported_xcr0(), host_cpuid).max(XSAVE_SIZE as u32)
}

fn pae_paging(cr0: u64, cr4: u64, efer: u64) -> bool {
    cr0 & X86_CR0_PG != 0 && cr4 & X86_CR4_PAE != 0 && efer & EFER_LMA == 0
}

/// Loads the PDPTRs at `cr3` into the vCPU's copy (load_pdptrs()): kept as they
/// were if guest memory cannot be read or holds an invalid entry.
fn load_pdptrs(vm: &Vm, st: &mut VcpuArch, cr3: u64) {
    let mut b = [0u8; 32];
    if emulate::read_phys(vm, cr3 & !0x1f, &mut b).is_none() {
        return;
    }
    let p: [u64; 4] = core::array::from_fn(|i| u64::from_le_bytes(bytes(&b, i * 8)));
    if sregs::pdptes_valid(&p, cpuid::maxphyaddr(&st.cpuid)) {
        st.pdptrs = p;
    }
}

impl VcpuArch {
    /// What XSETBV/KVM_SET_XCRS may set (upstream guest_supported_xcr0).
    fn guest_supported_xcr0(&self) -> u64 {
        let d0 = cpuid::find(&self.cpuid, 0xd, 0).map(|e| [e.eax, e.ebx, e.ecx, e.edx]);
        xstate::guest_supported(d0, supported_xcr0())
    }

    /// The guest FPU's uabi (XSAVE-format) image, at least a `struct kvm_xsave`.
    fn xsave_image(&self, mask: u64) -> Result<KVec<u8>> {
        // SAFETY: the vCPU's guest FPU.
        let size = unsafe { glue::kvm_glue_fpu_uabi_size(self.fpu.0) } as usize;
        let size = size.max(XSAVE_SIZE);
        let mut buf = KVec::from_elem(0u8, size, GFP_KERNEL)?;
        // SAFETY: `buf` has `size` bytes; the FPU is not in use by the guest (mutex held).
        unsafe {
            glue::kvm_glue_fpu_get_xsave(self.fpu.0, buf.as_mut_ptr().cast(), size as u32, mask)
        };
        Ok(buf)
    }

    /// The features KVM_GET_XSAVE reports: the guest's, and FP/SSE always.
    fn xsave_mask(&self) -> u64 {
        self.guest_supported_xcr0() | xstate::FP | xstate::SSE
    }
}

fn bytes<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut v = [0u8; N];
    if let Some(s) = b.get(at..at + N) {
        v.copy_from_slice(s);
    }
    v
}

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    if let Some(d) = b.get_mut(at..at + v.len()) {
        d.copy_from_slice(v);
    }
}

impl Vcpu {
    /// KVM_GET_SREGS2: KVM_GET_SREGS without the interrupt bitmap, plus the PDPTRs
    /// when the guest uses PAE paging.
    pub(crate) fn get_sregs2(&self, vm: &Vm, st: &mut VcpuArch) -> uapi::kvm_sregs2 {
        let s = self.get_sregs(st);
        let mut s2 = uapi::kvm_sregs2 {
            cs: s.cs,
            ds: s.ds,
            es: s.es,
            fs: s.fs,
            gs: s.gs,
            ss: s.ss,
            tr: s.tr,
            ldt: s.ldt,
            gdt: s.gdt,
            idt: s.idt,
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
            apic_base: s.apic_base,
            ..Default::default()
        };
        if pae_paging(s.cr0, s.cr4, s.efer) {
            if !st.pdptrs_avail {
                // With NPT the CPU reads them from memory; KVM's copy is loaded
                // when asked for (svm_cache_reg()).
                st.pdptrs_avail = true;
                load_pdptrs(vm, st, s.cr3);
            }
            s2.pdptrs = st.pdptrs;
            s2.flags |= u64::from(uapi::KVM_SREGS2_FLAGS_PDPTRS_VALID);
        }
        s2
    }

    /// After KVM_SET_SREGS (or SREGS2 without PDPTRs): PAE paging loads the
    /// PDPTRs from memory (__set_sregs_common()).
    pub(crate) fn update_pdptrs(&self, vm: &Vm, st: &mut VcpuArch, s: &uapi::kvm_sregs) {
        if pae_paging(s.cr0, s.cr4, s.efer) {
            load_pdptrs(vm, st, s.cr3);
        }
    }

    /// KVM_SET_SREGS2 (kvm_vcpu_ioctl_x86_set_sregs2()).
    pub(crate) fn set_sregs2(&self, vm: &Vm, st: &mut VcpuArch, s2: &uapi::kvm_sregs2) -> Result {
        let valid_pdptrs = s2.flags & u64::from(uapi::KVM_SREGS2_FLAGS_PDPTRS_VALID) != 0;
        if s2.flags & !u64::from(uapi::KVM_SREGS2_FLAGS_PDPTRS_VALID) != 0 {
            return Err(EINVAL);
        }
        if valid_pdptrs && !pae_paging(s2.cr0, s2.cr4, s2.efer) {
            return Err(EINVAL);
        }
        let s = uapi::kvm_sregs {
            cs: s2.cs,
            ds: s2.ds,
            es: s2.es,
            fs: s2.fs,
            gs: s2.gs,
            ss: s2.ss,
            tr: s2.tr,
            ldt: s2.ldt,
            gdt: s2.gdt,
            idt: s2.idt,
            cr0: s2.cr0,
            cr2: s2.cr2,
            cr3: s2.cr3,
            cr4: s2.cr4,
            cr8: s2.cr8,
            efer: s2.efer,
            apic_base: s2.apic_base,
            interrupt_bitmap: [0; 4],
        };
        self.set_sregs(st, &s)?;
        if valid_pdptrs {
            st.pdptrs = s2.pdptrs;
            st.pdptrs_avail = true;
        } else {
            self.update_pdptrs(vm, st, &s);
        }
        Ok(())
    }

    /// KVM_TRANSLATE (kvm_arch_vcpu_ioctl_translate()): a supervisor walk of the
    /// guest's page tables; `writeable` and `usermode` are fixed, as upstream.
    pub(crate) fn kvm_arch_vcpu_ioctl_translate(
        &self,
        vm: &Vm,
        st: &VcpuArch,
        arg: usize,
    ) -> Result {
        let mut t: uapi::kvm_translation = user::read(arg)?;
        let gpa = self.cpu(st).translate_system(vm, t.linear_address).ok();
        t.physical_address = gpa.unwrap_or(u64::MAX);
        t.valid = u8::from(gpa.is_some());
        t.writeable = 1;
        t.usermode = 0;
        user::write(arg, &t)
    }

    /// XSETBV from the guest (kvm_emulate_xsetbv()): #GP unless CPL 0, XCR 0 and
    /// a value __kvm_set_xcr() accepts.
    pub(crate) fn kvm_emulate_xsetbv(&self, _vm: &Vm, st: &mut VcpuArch, next_rip: u64) -> Next {
        let cpl = self.get_sregs(st).ss.dpl;
        let index = st.regs.gpr[reg::RCX] as u32;
        let value = (st.regs.gpr[reg::RDX] << 32) | (st.regs.gpr[reg::RAX] & 0xffff_ffff);
        if cpl == 0 && index == 0 && xstate::xcr0_valid(value, st.guest_supported_xcr0()) {
            st.xcr0 = value;
            return self.kvm_skip_emulated_instruction(st, next_rip);
        }
        st.vendor.queue_exception(uapi::GP_VECTOR, true, 0);
        Next::Guest
    }

    /// Loads the guest's XCR0 for an entry if it differs and the guest enabled
    /// XSAVE (kvm_load_xfeatures()); returns the host's to restore after it.
    /// Interrupts are off.
    pub(crate) fn load_guest_xcr0(&self, st: &VcpuArch) -> Option<u64> {
        let host = host_xcr0();
        let cr4 = st.vendor.get_cr4();
        if host == 0 || cr4 & X86_CR4_OSXSAVE == 0 || st.xcr0 == host {
            return None;
        }
        // SAFETY: a value xcr0_valid() accepted within the host's XCR0 (or FP).
        unsafe { glue::kvm_glue_xsetbv(st.xcr0) };
        Some(host)
    }

    /// The state CPUID bits follow (kvm_update_cpuid_runtime()).
    pub(crate) fn cpuid_runtime(&self, vm: &Vm, st: &VcpuArch) -> cpuid::Runtime {
        let cr4 = st.vendor.get_cr4();
        let mwait_follows = !vm.kvm_check_has_quirk(uapi::KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT);
        cpuid::Runtime {
            osxsave: cr4 & X86_CR4_OSXSAVE != 0,
            apic: self.apic_base(st) & lapic::MSR_APICBASE_ENABLE != 0,
            xsave_size: xstate::required_size(st.xcr0, host_cpuid),
            mwait: mwait_follows.then_some(st.misc_enable & MISC_ENABLE_MWAIT != 0),
        }
    }

    /// The guest FPU's legacy (FXSAVE) region, where KVM_GET/SET_FPU work.
    fn fxsave(st: &VcpuArch) -> *mut u8 {
        // SAFETY: the vCPU's guest FPU, whose state stays allocated while it lives.
        unsafe { glue::kvm_glue_fpu_fxsave(st.fpu.0) }.cast()
    }

    /// KVM_GET_FPU (kvm_arch_vcpu_ioctl_get_fpu()): MXCSR is not reported, as
    /// upstream.
    pub(crate) fn get_fpu(&self, st: &VcpuArch) -> uapi::kvm_fpu {
        let mut b = [0u8; fxsave::SIZE];
        // SAFETY: the 512-byte legacy region; the guest is not running (mutex held).
        unsafe { core::ptr::copy_nonoverlapping(Self::fxsave(st), b.as_mut_ptr(), b.len()) };
        let mut f = uapi::kvm_fpu {
            fcw: u16::from_le_bytes(bytes(&b, fxsave::FCW)),
            fsw: u16::from_le_bytes(bytes(&b, fxsave::FSW)),
            ftwx: bytes::<1>(&b, fxsave::FTW)[0],
            last_opcode: u16::from_le_bytes(bytes(&b, fxsave::FOP)),
            last_ip: u64::from_le_bytes(bytes(&b, fxsave::RIP)),
            last_dp: u64::from_le_bytes(bytes(&b, fxsave::RDP)),
            ..Default::default()
        };
        for (i, r) in f.fpr.iter_mut().enumerate() {
            *r = bytes(&b, fxsave::ST + 16 * i);
        }
        for (i, r) in f.xmm.iter_mut().enumerate() {
            *r = bytes(&b, fxsave::XMM + 16 * i);
        }
        f
    }

    /// KVM_SET_FPU (kvm_arch_vcpu_ioctl_set_fpu()): the legacy region but MXCSR,
    /// written in place as upstream does. Like upstream, a guest whose FP/SSE state
    /// is in its initial state (XSTATE_BV) keeps it.
    pub(crate) fn set_fpu(&self, st: &mut VcpuArch, f: &uapi::kvm_fpu) {
        let mut b = [0u8; fxsave::SIZE];
        let p = Self::fxsave(st);
        // SAFETY: as get_fpu.
        unsafe { core::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), b.len()) };
        put(&mut b, fxsave::FCW, &f.fcw.to_le_bytes());
        put(&mut b, fxsave::FSW, &f.fsw.to_le_bytes());
        // The abridged tag word: its high byte is reserved.
        put(&mut b, fxsave::FTW, &u16::from(f.ftwx).to_le_bytes());
        put(&mut b, fxsave::FOP, &f.last_opcode.to_le_bytes());
        put(&mut b, fxsave::RIP, &f.last_ip.to_le_bytes());
        put(&mut b, fxsave::RDP, &f.last_dp.to_le_bytes());
        for (i, r) in f.fpr.iter().enumerate() {
            put(&mut b, fxsave::ST + 16 * i, r);
        }
        for (i, r) in f.xmm.iter().enumerate() {
            put(&mut b, fxsave::XMM + 16 * i, r);
        }
        // SAFETY: as get_fpu.
        unsafe { core::ptr::copy_nonoverlapping(b.as_ptr(), p, b.len()) };
    }

    /// KVM_GET_XSAVE (`size` = sizeof(struct kvm_xsave)) and KVM_GET_XSAVE2 (the
    /// FPU's uabi size): the state of the features the guest may use.
    pub(crate) fn get_xsave(&self, st: &VcpuArch, arg: usize, xsave2: bool) -> Result {
        // SAFETY: the vCPU's guest FPU.
        let uabi = unsafe { glue::kvm_glue_fpu_uabi_size(st.fpu.0) } as usize;
        if !xsave2 && uabi > XSAVE_SIZE {
            return Err(EINVAL);
        }
        let b = st.xsave_image(st.xsave_mask())?;
        let n = if xsave2 { uabi } else { XSAVE_SIZE };
        user::write_bytes(arg, b.get(..n).ok_or(EINVAL)?)
    }

    /// KVM_SET_XSAVE: features outside what kvm-rs supports are -EINVAL.
    pub(crate) fn set_xsave(&self, st: &mut VcpuArch, arg: usize) -> Result {
        // SAFETY: the vCPU's guest FPU.
        let size = unsafe { glue::kvm_glue_fpu_uabi_size(st.fpu.0) } as usize;
        let mut buf = user::read_bytes(arg, size)?;
        let mask = supported_xcr0() | xstate::FP | xstate::SSE;
        // SAFETY: `buf` holds the FPU's uabi size.
        let r = unsafe { glue::kvm_glue_fpu_set_xsave(st.fpu.0, buf.as_mut_ptr().cast(), mask) };
        if r != 0 {
            return Err(Error::from_errno(r));
        }
        Ok(())
    }

    /// KVM_GET_XCRS: XCR0, on a host with XSAVE.
    pub(crate) fn get_xcrs(&self, st: &VcpuArch) -> uapi::kvm_xcrs {
        let mut x = uapi::kvm_xcrs::default();
        if host_xcr0() != 0 {
            x.nr_xcrs = 1;
            x.xcrs[0].xcr = 0;
            x.xcrs[0].value = st.xcr0;
        }
        x
    }

    /// KVM_SET_XCRS (kvm_vcpu_ioctl_x86_set_xcrs()): the first XCR0 entry counts.
    pub(crate) fn set_xcrs(&self, st: &mut VcpuArch, x: &uapi::kvm_xcrs) -> Result {
        if host_xcr0() == 0 || x.nr_xcrs > MAX_XCRS || x.flags != 0 {
            return Err(EINVAL);
        }
        let n = x.nr_xcrs as usize;
        if let Some(e) = x.xcrs.iter().take(n).find(|e| e.xcr == 0) {
            if !xstate::xcr0_valid(e.value, st.guest_supported_xcr0()) {
                return Err(EINVAL);
            }
            st.xcr0 = e.value;
        }
        Ok(())
    }
}

/// KVM_GET_VCPU_EVENTS (kvm_vcpu_ioctl_x86_get_vcpu_events()); with
/// KVM_CAP_X86_TRIPLE_FAULT_EVENT, whether a triple fault is pending.
pub(crate) fn get_events(vm: &Vm, st: &mut VcpuArch) -> uapi::kvm_vcpu_events {
    process_nmi(st);
    let mut e = uapi::kvm_vcpu_events::default();
    st.vendor.get_events(&mut e);
    // kvm_get_nr_pending_nmis(): a count (at most two), not a flag.
    e.nmi.pending = u8::try_from(st.nmi_pending).unwrap_or(u8::MAX);
    e.flags = uapi::KVM_VCPUEVENT_VALID_NMI_PENDING
        | uapi::KVM_VCPUEVENT_VALID_SHADOW
        | uapi::KVM_VCPUEVENT_VALID_SMM;
    if vm.arch.triple_fault_event.load(Ordering::Relaxed) {
        e.flags |= uapi::KVM_VCPUEVENT_VALID_TRIPLE_FAULT;
        e.triple_fault.pending = st.triple_fault.into();
    }
    e
}

/// KVM_SET_VCPU_EVENTS (kvm_vcpu_ioctl_x86_set_vcpu_events()): no exception
/// payloads and no SMM (neither is enabled or supported), exceptions below 32
/// but NMI.
pub(crate) fn set_events(
    vcpu: &Vcpu,
    vm: &Vm,
    st: &mut VcpuArch,
    e: &uapi::kvm_vcpu_events,
) -> Result {
    let valid = uapi::KVM_VCPUEVENT_VALID_NMI_PENDING
        | uapi::KVM_VCPUEVENT_VALID_SIPI_VECTOR
        | uapi::KVM_VCPUEVENT_VALID_SHADOW
        | uapi::KVM_VCPUEVENT_VALID_SMM
        | uapi::KVM_VCPUEVENT_VALID_TRIPLE_FAULT;
    let triple = e.flags & uapi::KVM_VCPUEVENT_VALID_TRIPLE_FAULT != 0;
    if e.flags & !valid != 0
        || triple && !vm.arch.triple_fault_event.load(Ordering::Relaxed)
        || e.exception.injected != 0 && (e.exception.nr > 31 || e.exception.nr == 2)
        || e.flags & uapi::KVM_VCPUEVENT_VALID_SMM != 0 && e.smi.smm != 0
    {
        return Err(EINVAL);
    }
    process_nmi(st);
    st.vendor.set_events(e);
    let nr = u32::from(e.exception.nr);
    if e.exception.injected != 0 && matches!(nr, uapi::BP_VECTOR | uapi::OF_VECTOR) {
        // A soft exception returns past its INT3/INTO.
        vcpu.kvm_queue_soft_exception(vm, st, nr);
    }
    if triple {
        // KVM_REQ_TRIPLE_FAULT made or withdrawn.
        st.triple_fault = e.triple_fault.pending != 0;
    }
    if e.flags & uapi::KVM_VCPUEVENT_VALID_NMI_PENDING != 0 {
        // Counted in (and limited) at the next process_nmi(), as upstream.
        st.nmi_pending = 0;
        st.nmi_queued = e.nmi.pending.into();
    }
    Ok(())
}

/// `sizeof(struct kvm_xsave)`.
pub(crate) const XSAVE_SIZE: usize = 4096;

/// Registers after RESET or INIT (upstream kvm_vcpu_reset()).
pub(crate) fn reset_regs(cpuid: &[Entry]) -> GuestRegs {
    let mut regs = GuestRegs {
        rip: RESET_RIP,
        rflags: X86_EFLAGS_FIXED,
        ..Default::default()
    };
    // EDX holds the CPU signature (family/model/stepping).
    regs.gpr[reg::RDX] = cpuid::find(cpuid, 1, 0).map_or(0x600, |e| e.eax.into());
    regs
}

/// KVM_GET_REGS (__get_regs()): RFLAGS as kvm_get_rflags() reports it.
pub(crate) fn get_regs(st: &VcpuArch) -> uapi::kvm_regs {
    let g = &st.regs;
    let r = &g.gpr;
    uapi::kvm_regs {
        rax: r[0],
        rcx: r[1],
        rdx: r[2],
        rbx: r[3],
        rsp: r[4],
        rbp: r[5],
        rsi: r[6],
        rdi: r[7],
        r8: r[8],
        r9: r[9],
        r10: r[10],
        r11: r[11],
        r12: r[12],
        r13: r[13],
        r14: r[14],
        r15: r[15],
        rip: g.rip,
        rflags: kvm_get_rflags(st),
    }
}

/// KVM_SET_REGS (__set_regs()): RFLAGS through __kvm_set_rflags().
pub(crate) fn set_regs(st: &mut VcpuArch, r: &uapi::kvm_regs) {
    st.regs.gpr = [
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ];
    st.regs.rip = r.rip;
    kvm_set_rflags(st, r.rflags);
}

/// kvm_get_linear_rip(): CS.base + RIP, in 32 bits outside 64-bit mode.
pub(crate) fn kvm_get_linear_rip(st: &VcpuArch) -> u64 {
    let mut s = uapi::kvm_sregs::default();
    st.vendor.get_sregs(&mut s);
    if s.efer & EFER_LMA != 0 && s.cs.l != 0 {
        st.regs.rip
    } else {
        u64::from(s.cs.base.wrapping_add(st.regs.rip) as u32)
    }
}

/// kvm_get_rflags(): the guest's RFLAGS without the TF KVM sets to single-step it.
pub(crate) fn kvm_get_rflags(st: &VcpuArch) -> u64 {
    let mut rflags = st.regs.rflags;
    if st.guest_debug & uapi::KVM_GUESTDBG_SINGLESTEP != 0 {
        rflags &= !X86_EFLAGS_TF;
    }
    rflags
}

/// kvm_set_rflags(): with single-stepping on, TF is set again while the guest is
/// still at the instruction it was turned on at (bit 1 always reads as 1).
pub(crate) fn kvm_set_rflags(st: &mut VcpuArch, rflags: u64) {
    let mut rflags = rflags | X86_EFLAGS_FIXED;
    if st.guest_debug & uapi::KVM_GUESTDBG_SINGLESTEP != 0
        && kvm_get_linear_rip(st) == st.singlestep_rip
    {
        rflags |= X86_EFLAGS_TF;
    }
    st.regs.rflags = rflags;
}

/// kvm_update_dr0123(): the breakpoint addresses the guest runs with are its own
/// unless userspace's hardware breakpoints are in use.
pub(crate) fn kvm_update_dr0123(st: &mut VcpuArch) {
    if st.guest_debug & uapi::KVM_GUESTDBG_USE_HW_BP == 0 {
        st.eff_db = st.db;
    }
}

/// kvm_update_dr7(): DR7 as the guest runs with it (userspace's with its hardware
/// breakpoints), and whether DR0-3 must be loaded for the entries.
pub(crate) fn kvm_update_dr7(st: &mut VcpuArch) {
    let dr7 = kvm_get_effective_dr7(st);
    st.vendor.set_dr(7, dr7);
    st.bp_enabled = dr7 & DR7_BP_EN_MASK != 0;
}

/// kvm_get_effective_dr7(): the DR7 of kvm_update_dr7().
pub(crate) fn kvm_get_effective_dr7(st: &VcpuArch) -> u64 {
    if st.guest_debug & uapi::KVM_GUESTDBG_USE_HW_BP != 0 {
        st.guest_debug_dr7
    } else {
        st.dr7
    }
}

/// kvm_set_dr(): a guest write of DR`dr` (4 and 5 are the aliases of 6 and 7 the
/// caller allowed); false for #GP.
pub(crate) fn kvm_set_dr(st: &mut VcpuArch, dr: u8, val: u64) -> bool {
    match dr {
        0..=3 => {
            let i = usize::from(dr);
            if let Some(d) = st.db.get_mut(i) {
                *d = val;
            }
            kvm_update_dr0123(st);
        }
        4 | 6 => {
            if !debugreg::dr6_valid(val) {
                return false;
            }
            st.dr6 = debugreg::dr6_write_value(val);
        }
        _ => {
            if !debugreg::dr7_valid(val) {
                return false;
            }
            st.dr7 = debugreg::dr7_write_value(val);
            kvm_update_dr7(st);
        }
    }
    true
}

/// kvm_get_dr(): a guest read of DR`dr`.
pub(crate) fn kvm_get_dr(st: &VcpuArch, dr: u8) -> u64 {
    match dr {
        0..=3 => st.db.get(usize::from(dr)).copied().unwrap_or(0),
        4 | 6 => st.dr6,
        _ => st.dr7,
    }
}

/// KVM_GET_DEBUGREGS (kvm_vcpu_ioctl_x86_get_debugregs()).
pub(crate) fn get_debugregs(st: &VcpuArch) -> uapi::kvm_debugregs {
    uapi::kvm_debugregs {
        db: st.db,
        dr6: st.dr6,
        dr7: st.dr7,
        ..Default::default()
    }
}

/// KVM_SET_DEBUGREGS (kvm_vcpu_ioctl_x86_set_debugregs()).
pub(crate) fn set_debugregs(st: &mut VcpuArch, d: &uapi::kvm_debugregs) -> Result {
    if d.flags != 0 || !debugreg::dr6_valid(d.dr6) || !debugreg::dr7_valid(d.dr7) {
        return Err(EINVAL);
    }
    st.db = d.db;
    kvm_update_dr0123(st);
    st.dr6 = d.dr6;
    st.dr7 = d.dr7;
    kvm_update_dr7(st);
    Ok(())
}

impl Vcpu {
    pub(crate) fn get_sregs(&self, st: &VcpuArch) -> uapi::kvm_sregs {
        let mut s = uapi::kvm_sregs::default();
        st.vendor.get_sregs(&mut s);
        s.apic_base = self.apic_base(st);
        s.cr8 = self
            .arch
            .lapic
            .lock()
            .as_ref()
            .map_or(st.regs.cr8, |l| l.cr8());
        // An external interrupt being injected (__get_sregs()).
        let mut e = uapi::kvm_vcpu_events::default();
        st.vendor.get_events(&mut e);
        if e.interrupt.injected != 0 && e.interrupt.soft == 0 {
            let nr = usize::from(e.interrupt.nr);
            if let Some(w) = s.interrupt_bitmap.get_mut(nr / 64) {
                *w |= 1 << (nr % 64);
            }
        }
        s
    }

    /// KVM_SET_SREGS, checked as kvm_is_valid_sregs() with the vCPU's CPUID.
    pub(crate) fn set_sregs(&self, st: &mut VcpuArch, s: &uapi::kvm_sregs) -> Result {
        let l1 = cpuid::find(&st.cpuid, 1, 0).map_or(0, |e| e.ecx);
        let (b7, c7) = cpuid::find(&st.cpuid, 7, 0).map_or((0, 0), |e| (e.ebx, e.ecx));
        let ok = sregs::sregs_valid(
            s.cr0,
            s.cr3,
            s.cr4,
            s.efer,
            s.cs.l != 0,
            sregs::cr4_allowed(l1, b7, c7),
            cpuid::maxphyaddr(&st.cpuid),
        ) && s.efer & !cpuid::efer_allowed(&st.cpuid) == 0;
        if !ok {
            return Err(EINVAL);
        }
        if let Some(l) = (*self.arch.lapic.lock()).as_mut() {
            if !set_apic_base(l, &st.cpuid, s.apic_base, true) {
                return Err(EINVAL);
            }
        }
        st.vendor.set_sregs(s)?;
        st.apic_base = s.apic_base;
        // kvm_set_cr8(), whose error for reserved bits upstream ignores here.
        if s.cr8 & !0xf == 0 {
            st.regs.cr8 = s.cr8;
            if let Some(l) = (*self.arch.lapic.lock()).as_mut() {
                l.set_cr8(s.cr8);
            }
        }
        // The lowest vector of the bitmap is injected again (__set_sregs()).
        let pending = s
            .interrupt_bitmap
            .iter()
            .enumerate()
            .find(|(_, w)| **w != 0)
            .map(|(i, w)| i as u32 * 64 + w.trailing_zeros());
        if let Some(v) = pending {
            st.vendor.inject_irq(v as u8);
        }
        // "Older userspace won't unhalt the vcpu on reset."
        if self.kvm_vcpu_is_bsp(st)
            && st.regs.rip == RESET_RIP
            && s.cs.selector == 0xf000
            && s.cs.base == 0xffff_0000
            && s.cr0 & 1 == 0
        {
            st.mp_state = uapi::KVM_MP_STATE_RUNNABLE;
        }
        Ok(())
    }
}
