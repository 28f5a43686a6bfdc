// SPDX-License-Identifier: GPL-2.0-only
//! An SVM vCPU (upstream struct vcpu_svm): one VMCB, its reset state (init_vmcb()),
//! register access and VMRUN (svm_vcpu_run()); exits are decoded in exit.rs.

use super::glue;
use super::msr_index::{
    DE_CFG_LFENCE_SERIALIZE, EFER_SVME, MSR_AMD64_DE_CFG, MSR_CSTAR, MSR_EFER, MSR_FS_BASE,
    MSR_GS_BASE, MSR_IA32_CR_PAT, MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_EIP,
    MSR_IA32_SYSENTER_ESP, MSR_KERNEL_GS_BASE, MSR_LSTAR, MSR_STAR, MSR_SYSCALL_MASK,
};
use super::processor_flags::{NMI_VECTOR, X86_EFLAGS_IF, X86_EFLAGS_RF, X86_EFLAGS_TF};
use core::sync::atomic::{AtomicBool, Ordering};
use kernel::prelude::*;

use kernel::sync::Arc;

use super::exit::svm_handle_exit;
use super::kvm_x86_ops::{reg, GuestRegs, KvmCoreVcpu, Next};
use super::pages::Pages;
use super::spte::SpteMasks;
use super::uapi::{self, kvm_dtable, kvm_segment, kvm_sregs, kvm_vcpu_events};
use super::vendor::KvmX86Vendor;
use super::vmcb::{self as vm, Seg, SegAttr, Vmcb};
use super::{iopm_pa, msrpm_pa, this_cpu};

extern "C" {
    /// arch/x86/svm/vmenter.S: 0, or 1 when VMSAVE, VMLOAD or VMRUN faulted (the
    /// exception table skipped it).
    fn __kvm_rs_svm_vcpu_run(vmcb_pa: u64, regs: *mut GuestRegs, host_save_pa: u64) -> u32;
}

pub(crate) static NRIPS: AtomicBool = AtomicBool::new(false);

/// Whether the CPU reports the next RIP on intercepts (without it, kvm.ko skips
/// by the known length of the intercepted instruction).
pub(crate) fn set_nrips(on: bool) {
    NRIPS.store(on, Ordering::Relaxed);
}

pub(crate) const EVTINJ_VALID: u32 = 1 << 31;
const EVTINJ_VALID_ERR: u32 = 1 << 11;
const EVTINJ_TYPE_EXEPT: u32 = 3 << 8;
const EVTINJ_TYPE_NMI: u32 = 2 << 8;
const EVTINJ_TYPE_SOFT: u32 = 4 << 8;
const EVTINJ_TYPE_MASK: u32 = 7 << 8;
/// include/uapi/asm/kvm.h
const KVM_VCPUEVENT_VALID_SHADOW: u32 = 4;
/// The MCG_CAP bits an SVM vCPU has: the bank count and MCG_CTL_P.
const MCG_CAP_SVM_MASK: u64 = 0x1ff;

pub(crate) struct Svm;

pub(crate) struct SvmVcpu {
    vmcb: Pages,
    /// The guest-physical page-table root kvm.ko loaded (load_mmu_pgd); kept
    /// here because a reset reinitializes the VMCB.
    nested_cr3: u64,
    /// ASID generation of `cpu` this vCPU's ASID belongs to (0: none).
    asid_generation: u64,
    cpu: u32,
    /// NMI state without vNMI (upstream vcpu_svm): masked from an NMI's injection
    /// until the IRET that ends its handler has run.
    pub(crate) nmi: NmiState,
    /// KVM_SET_GUEST_DEBUG's controls (upstream vcpu->guest_debug), as kvm.ko
    /// last passed them to update_exception_bitmap.
    pub(crate) guest_debug: u32,
    /// A #BP/#OF being injected for the INT3/INTO at RIP: its length until the
    /// entry that delivers it, then the RIPs around it (upstream soft_int_*).
    soft_int_len: Option<u32>,
    soft_int: Option<SoftInt>,
    /// kvm.ko's TSC offset (write_tsc_offset), kept across VMCB reinits.
    tsc_offset: u64,
    /// MSR_AMD64_DE_CFG (upstream msr_decfg): 0 at creation, set by userspace.
    msr_decfg: u64,
}

/// A soft exception handed to the CPU: RIP before and after its instruction.
#[derive(Clone, Copy)]
struct SoftInt {
    old_rip: u64,
    next_rip: u64,
}

/// How SVM tracks NMI blocking without vNMI (upstream's nmi_masked,
/// awaiting_iret_completion, nmi_iret_rip, nmi_singlestep).
#[derive(Default)]
pub(crate) struct NmiState {
    /// An NMI handler runs: no NMI can be injected.
    pub(crate) masked: bool,
    /// The handler's IRET was intercepted at `iret_rip`; NMIs unmask once the
    /// guest is past it.
    pub(crate) awaiting_iret_completion: bool,
    pub(crate) iret_rip: u64,
    /// One instruction is being single-stepped (TF|RF set by KVM, #DB
    /// intercepted) so that a pending NMI is injected right after it.
    pub(crate) singlestep: bool,
    /// TF and RF as the guest had them when the single-step began.
    pub(crate) singlestep_guest_rflags: u64,
}

/// An SVM vCPU's load state: nothing yet. Upstream's svm_vcpu_load()/put() deal
/// with AVIC, the PLE window and user-return MSRs, none of which kvm-rs has; the
/// per-CPU ASID is checked at each entry (pre_svm_run()), as upstream.
pub(crate) struct SvmLoaded;

impl SvmVcpu {
    pub(crate) fn vmcb(&mut self) -> &mut Vmcb {
        // SAFETY: the page is a VMCB owned by this vCPU; `&mut self` is exclusive (the hardware only touches it inside VMRUN, under the same borrow).
        unsafe { &mut *self.vmcb.as_ptr().cast::<Vmcb>() }
    }

    fn vmcb_ref(&self) -> &Vmcb {
        // SAFETY: as vmcb(), shared.
        unsafe { &*self.vmcb.as_ptr().cast::<Vmcb>() }
    }
}

fn seg(selector: u16, base: u64, limit: u32, attrib: u16) -> Seg {
    Seg {
        selector,
        attrib,
        limit,
        base,
    }
}

/// The architectural reset state (upstream init_vmcb() + kvm_vcpu_reset()).
fn init_vmcb(v: &mut Vmcb) {
    let c = &mut v.control;
    // #UD for the hypercall fix-up (upstream always intercepts it); #AC and #DB
    // so that a guest cannot hang the host with an alignment-check or
    // debug-exception storm (CVE-2015-5307, CVE-2015-8104), and #DB also for the
    // NMI window and guest debugging.
    c.intercepts[vm::INTERCEPT_EXCEPTION] =
        1 << uapi::UD_VECTOR | 1 << uapi::AC_VECTOR | 1 << uapi::DB_VECTOR;
    c.intercepts[vm::INTERCEPT_DR] = DR_INTERCEPTS;
    c.intercepts[vm::INTERCEPT_WORD3] = vm::INTR
        | vm::NMI
        | vm::SMI
        | vm::CPUID
        | vm::INVD
        | vm::HLT
        | vm::INVLPGA
        | vm::IOIO_PROT
        | vm::MSR_PROT
        | vm::TASK_SWITCH
        | vm::SHUTDOWN;
    c.intercepts[vm::INTERCEPT_WORD4] = vm::VMRUN
        | vm::VMMCALL
        | vm::VMLOAD
        | vm::VMSAVE
        | vm::STGI
        | vm::CLGI
        | vm::SKINIT
        | vm::WBINVD
        | vm::MONITOR
        | vm::MWAIT
        | vm::XSETBV
        | vm::RDPRU;
    c.iopm_base_pa = iopm_pa();
    c.msrpm_base_pa = msrpm_pa();
    c.int_ctl = vm::V_INTR_MASKING;
    c.misc_ctl = vm::NP_ENABLE;

    let s = &mut v.save;
    let data = 0x93; // present, S, read/write, accessed
    s.cs = seg(0xf000, 0xffff_0000, 0xffff, 0x9b);
    s.ds = seg(0, 0, 0xffff, data);
    s.es = s.ds;
    s.ss = s.ds;
    s.fs = s.ds;
    s.gs = s.ds;
    s.gdtr = seg(0, 0, 0xffff, 0);
    s.idtr = s.gdtr;
    s.ldtr = seg(0, 0, 0xffff, 0x82);
    s.tr = seg(0, 0, 0xffff, 0x83);
    s.cr0 = 0x6000_0010;
    s.cr4 = 0;
    s.cr3 = 0;
    s.efer = EFER_SVME;
    s.dr6 = 0xffff_0ff0;
    s.dr7 = 0x400;
    s.g_pat = 0x0007_0406_0007_0406;
    s.cpl = 0;
}

/// Back to the INIT state (the VMCB has no ASID afterwards).
pub(crate) fn reinit_vmcb(vmcb: &mut Vmcb) {
    // SAFETY: a VMCB is plain data; all-zero is its starting point.
    unsafe { core::ptr::write_bytes(core::ptr::from_mut(vmcb), 0, 1) };
    init_vmcb(vmcb);
}

fn get_seg(s: &Seg) -> kvm_segment {
    let a = SegAttr::unpack(s.attrib);
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: a.type_,
        present: u8::from(a.present),
        dpl: a.dpl,
        db: u8::from(a.db),
        s: u8::from(a.s),
        l: u8::from(a.l),
        // The VMCB does not keep G; synthesize a legal one, as upstream.
        g: u8::from(s.limit > 0xfffff),
        avl: u8::from(a.avl),
        unusable: u8::from(!a.present),
        padding: 0,
    }
}

fn set_seg(k: &kvm_segment) -> Seg {
    let attrib = if k.unusable != 0 {
        0
    } else {
        SegAttr {
            type_: k.type_,
            s: k.s != 0,
            dpl: k.dpl,
            present: k.present != 0,
            avl: k.avl != 0,
            l: k.l != 0,
            db: k.db != 0,
            g: k.g != 0,
        }
        .pack()
    };
    seg(k.selector, k.base, k.limit, attrib)
}

fn dtable(s: &Seg) -> kvm_dtable {
    kvm_dtable {
        base: s.base,
        limit: s.limit as u16,
        padding: [0; 3],
    }
}

fn clgi() {
    // SAFETY: SVM is enabled on this CPU (registration); GIF is set again by stgi() right after the guest runs.
    unsafe { core::arch::asm!("clgi", options(nomem, nostack)) }
}

fn stgi() {
    // SAFETY: as clgi().
    unsafe { core::arch::asm!("stgi", options(nomem, nostack)) }
}

/// Sets RFLAGS.IF with GIF clear: VMRUN takes the host's IF as the mask for physical
/// interrupts (V_INTR_MASKING), while GIF keeps them off in host code. Done apart
/// from VMRUN, as upstream's svm_vcpu_enter_exit(), so VMRUN never sits in an STI
/// shadow (AMD CPUs carry that shadow into the guest if an event delivered during
/// VMRUN causes a #VMEXIT).
fn host_if_on() {
    // SAFETY: called only between clgi() and stgi(), so no interrupt is taken.
    unsafe { core::arch::asm!("sti", options(nomem, nostack)) }
}

/// svm_get_feature_msr(): DE_CFG with the bits the host has.
fn svm_get_feature_msr(index: u32) -> Option<u64> {
    match index {
        MSR_AMD64_DE_CFG => {
            // SAFETY: reads a CPU feature bit.
            let lfence = unsafe { glue::kvm_glue_lfence_rdtsc() } != 0;
            Some(if lfence { DE_CFG_LFENCE_SERIALIZE } else { 0 })
        }
        _ => None,
    }
}

fn host_if_off() {
    // SAFETY: clears IF again before stgi(); the caller's interrupts were off.
    unsafe { core::arch::asm!("cli", options(nomem, nostack)) }
}

impl KvmX86Vendor for Svm {
    const NAME: &'static core::ffi::CStr = c"kvm_amd";
    /// `KVM_X86_DEFAULT_VM` only; the SEV types come with SEV support.
    const VM_TYPES: u32 = 1 << 0;
    const HAS_VCPUS: bool = true;
    const TDP_MASKS: SpteMasks = SpteMasks::NPT;
    /// svm_vcpu_init()'s arbitrary revision under KVM_X86_QUIRK_STUFF_FEATURE_MSRS.
    const RESET_MICROCODE_VERSION: u64 = 0x0100_0065;
    type Vcpu = SvmVcpu;
    type Loaded = SvmLoaded;

    fn vcpu_create() -> Result<(KBox<SvmVcpu>, Arc<SvmLoaded>)> {
        let mut v = KBox::new(
            SvmVcpu {
                vmcb: Pages::new(4096)?,
                nested_cr3: 0,
                asid_generation: 0,
                cpu: u32::MAX,
                nmi: NmiState::default(),
                guest_debug: 0,
                soft_int_len: None,
                soft_int: None,
                tsc_offset: 0,
                msr_decfg: 0,
            },
            GFP_KERNEL,
        )?;
        init_vmcb(v.vmcb());
        Ok((v, Arc::new(SvmLoaded, GFP_KERNEL)?))
    }

    fn get_feature_msr(index: u32) -> Option<u64> {
        svm_get_feature_msr(index)
    }

    fn vcpu_load(_: &SvmLoaded, _cpu: u32) {}

    fn vcpu_put(_: &SvmLoaded) {}

    fn get_sregs(v: &SvmVcpu, k: &mut kvm_sregs) {
        let s = &v.vmcb_ref().save;
        k.cs = get_seg(&{ s.cs });
        k.ds = get_seg(&{ s.ds });
        k.es = get_seg(&{ s.es });
        k.fs = get_seg(&{ s.fs });
        k.gs = get_seg(&{ s.gs });
        k.ss = get_seg(&{ s.ss });
        k.tr = get_seg(&{ s.tr });
        k.ldt = get_seg(&{ s.ldtr });
        // The accessed bit is always set in the cache of a usable data segment, and
        // TR is always busy: as upstream's svm_get_segment(), for Intel compatibility.
        for d in [&mut k.ds, &mut k.es, &mut k.fs, &mut k.gs] {
            if d.unusable == 0 {
                d.type_ |= 1;
            }
        }
        k.tr.type_ |= 2;
        if k.ss.unusable != 0 {
            k.ss.db = 0;
        }
        k.ss.dpl = s.cpl;
        k.gdt = dtable(&{ s.gdtr });
        k.idt = dtable(&{ s.idtr });
        k.cr0 = s.cr0;
        k.cr2 = s.cr2;
        k.cr3 = s.cr3;
        k.cr4 = s.cr4;
        k.efer = s.efer & !EFER_SVME;
    }

    fn set_sregs(v: &mut SvmVcpu, k: &kvm_sregs) -> Result {
        let s = &mut v.vmcb().save;
        s.cs = set_seg(&k.cs);
        s.ds = set_seg(&k.ds);
        s.es = set_seg(&k.es);
        s.fs = set_seg(&k.fs);
        s.gs = set_seg(&k.gs);
        s.ss = set_seg(&k.ss);
        s.tr = set_seg(&k.tr);
        s.ldtr = set_seg(&k.ldt);
        s.cpl = k.ss.dpl & 3;
        s.gdtr = seg(0, k.gdt.base, k.gdt.limit.into(), 0);
        s.idtr = seg(0, k.idt.base, k.idt.limit.into(), 0);
        s.cr0 = k.cr0;
        s.cr2 = k.cr2;
        s.cr3 = k.cr3;
        s.cr4 = k.cr4;
        s.efer = k.efer | EFER_SVME;
        Ok(())
    }

    fn load_mmu_pgd(v: &mut SvmVcpu, root_hpa: u64) {
        v.nested_cr3 = root_hpa;
    }

    fn vcpu_run(v: &mut SvmVcpu, regs: &mut GuestRegs, flush: bool) {
        let Some((cpu, cd)) = this_cpu() else {
            // svm_handle_exit() reports it (KVM_EXIT_FAIL_ENTRY).
            v.vmcb().control.exit_code = vm::EXIT_ERR;
            return;
        };
        // A fresh ASID on this CPU is a clean TLB (upstream pre_svm_run/new_asid).
        if v.cpu != cpu || flush {
            v.cpu = cpu;
            v.asid_generation = 0;
        }
        let mut generation = cd.asid_generation.load(Ordering::Relaxed);
        let vmcb_pa = v.vmcb.phys();
        if v.asid_generation != generation {
            let mut next = cd.next_asid.load(Ordering::Relaxed);
            let c = &mut v.vmcb().control;
            if next > cd.max_asid {
                generation += 1;
                cd.asid_generation.store(generation, Ordering::Relaxed);
                next = 1;
                c.tlb_ctl = 1; // TLB_CONTROL_FLUSH_ALL_ASID
            }
            c.asid = next;
            cd.next_asid.store(next + 1, Ordering::Relaxed);
            v.asid_generation = generation;
        }
        let nested_cr3 = v.nested_cr3;
        // svm_update_soft_interrupt_rip(): for a soft exception the CPU pushes
        // NextRIP (with NRIPS), else the RIP it enters with; either way the
        // handler returns past the INT3/INTO.
        let nrips = NRIPS.load(Ordering::Relaxed);
        if let Some(len) = v.soft_int_len.take() {
            v.soft_int = Some(SoftInt {
                old_rip: regs.rip,
                next_rip: regs.rip.wrapping_add(len.into()),
            });
        }
        let (entry_rip, next_rip) = match v.soft_int {
            Some(si) if nrips => (regs.rip, si.next_rip),
            Some(si) => (si.next_rip, 0),
            None => (regs.rip, 0),
        };
        // TF|RF while single-stepping for an NMI window, hidden from the guest's
        // RFLAGS again on the way out (svm_enable_nmi_window(), svm_get_rflags()).
        let singlestep = v.nmi.singlestep;
        let rflags = if singlestep {
            v.nmi.singlestep_guest_rflags = regs.rflags & (X86_EFLAGS_TF | X86_EFLAGS_RF);
            regs.rflags | X86_EFLAGS_TF | X86_EFLAGS_RF
        } else {
            regs.rflags
        };
        let guest_tf_rf = v.nmi.singlestep_guest_rflags;
        let vmcb = v.vmcb();
        vmcb.control.nested_cr3 = nested_cr3;
        vmcb.control.clean = 0;
        vmcb.save.rax = regs.gpr[reg::RAX];
        vmcb.save.rsp = regs.gpr[reg::RSP];
        vmcb.save.rip = entry_rip;
        vmcb.control.next_rip = next_rip;
        vmcb.save.rflags = rflags;
        vmcb.control.int_ctl = (vmcb.control.int_ctl & !vm::V_TPR_MASK) | (regs.cr8 as u32 & 0xf);

        // SAFETY: the per-CPU save area is this CPU's page.
        let host_save = unsafe { super::glue::kvm_glue_page_to_phys(cd.save_area.as_ptr().cast()) };
        clgi();
        // svm_vcpu_enter_exit(): RCU, context tracking and lockdep learn of guest
        // mode here, right around the world switch.
        // SAFETY: interrupts and GIF are off; paired with the exit call below.
        unsafe { super::glue::kvm_glue_guest_state_enter_irqoff() };
        host_if_on();
        // SAFETY: GIF is clear (IF set only for VMRUN's mask); the VMCB is a valid guest state for this vCPU, `regs` its registers.
        let faulted = unsafe { __kvm_rs_svm_vcpu_run(vmcb_pa, regs, host_save) } != 0;
        host_if_off();
        // SAFETY: pairs with the enter call above, interrupts still off.
        unsafe { super::glue::kvm_glue_guest_state_exit_irqoff() };
        stgi();
        if faulted {
            // Upstream oopses unless rebooting; kvm-rs reports a failed entry. Not
            // guest-triggerable (SVM disabled under us, a bad VMCB address).
            pr_err!("kvm_amd: VMRUN, VMLOAD or VMSAVE faulted on CPU {}\n", cpu);
            v.vmcb().control.exit_code = vm::EXIT_ERR;
            return;
        }

        let vmcb = v.vmcb();
        vmcb.control.tlb_ctl = 0;
        regs.gpr[reg::RAX] = vmcb.save.rax;
        regs.gpr[reg::RSP] = vmcb.save.rsp;
        regs.rip = vmcb.save.rip;
        regs.rflags = vmcb.save.rflags;
        if singlestep {
            regs.rflags = (regs.rflags & !(X86_EFLAGS_TF | X86_EFLAGS_RF)) | guest_tf_rf;
        }
        regs.cr8 = u64::from(vmcb.control.int_ctl & vm::V_TPR_MASK);
        // An event cut short by the exit is delivered again (svm_complete_interrupts).
        let int_info = vmcb.control.exit_int_info;
        let reinject = int_info & EVTINJ_VALID != 0;
        if reinject {
            vmcb.control.event_inj = int_info;
            vmcb.control.event_inj_err = vmcb.control.exit_int_info_err;
        }
        // svm_complete_soft_interrupt(): a soft exception that did not get
        // delivered is injected again from its instruction; without NRIPS the
        // RIP advanced for it is wound back whatever event was cut short.
        if let Some(si) = v.soft_int.take() {
            let soft = int_info & EVTINJ_TYPE_MASK == EVTINJ_TYPE_EXEPT
                && matches!(int_info & 0xff, uapi::BP_VECTOR | uapi::OF_VECTOR);
            if reinject && !nrips && regs.rip == si.next_rip {
                regs.rip = si.old_rip;
            }
            if reinject && soft && regs.rip == si.old_rip {
                v.soft_int = Some(si);
            }
        }
        // svm_complete_interrupts(): past the intercepted IRET, the NMI handler
        // is over and NMIs unmask.
        if v.nmi.awaiting_iret_completion && regs.rip != v.nmi.iret_rip {
            v.nmi.awaiting_iret_completion = false;
            v.nmi.masked = false;
        }
    }

    fn handle_exit(v: &mut SvmVcpu, core: &mut KvmCoreVcpu) -> Next {
        svm_handle_exit(v, core)
    }

    fn queue_exception(v: &mut SvmVcpu, vector: u32, has_error: bool, error_code: u32) {
        let err = has_error.then_some(error_code);
        queue_exception_vmcb(v.vmcb(), vector & 0xff, err);
        v.soft_int_len = None;
    }

    fn queue_soft_exception(v: &mut SvmVcpu, vector: u32, insn_len: u32) {
        queue_exception_vmcb(v.vmcb(), vector & 0xff, None);
        v.soft_int_len = Some(insn_len);
    }

    fn get_msr(v: &SvmVcpu, index: u32, data: &mut u64) -> bool {
        let s = &v.vmcb_ref().save;
        *data = match index {
            MSR_EFER => s.efer & !EFER_SVME,
            MSR_STAR => s.star,
            MSR_LSTAR => s.lstar,
            MSR_CSTAR => s.cstar,
            MSR_SYSCALL_MASK => s.sfmask,
            MSR_FS_BASE => s.fs.base,
            MSR_GS_BASE => s.gs.base,
            MSR_KERNEL_GS_BASE => s.kernel_gs_base,
            MSR_IA32_SYSENTER_CS => s.sysenter_cs,
            MSR_IA32_SYSENTER_ESP => s.sysenter_esp,
            MSR_IA32_SYSENTER_EIP => s.sysenter_eip,
            MSR_IA32_CR_PAT => s.g_pat,
            MSR_AMD64_DE_CFG => v.msr_decfg,
            _ => return false,
        };
        true
    }

    fn set_msr(v: &mut SvmVcpu, index: u32, data: u64) -> bool {
        if index == MSR_AMD64_DE_CFG {
            let supported = svm_get_feature_msr(index).unwrap_or(0);
            if data & !supported != 0 {
                return false;
            }
            v.msr_decfg = data;
            return true;
        }
        let s = &mut v.vmcb().save;
        match index {
            MSR_EFER => s.efer = data | EFER_SVME,
            MSR_STAR => s.star = data,
            MSR_LSTAR => s.lstar = data,
            MSR_CSTAR => s.cstar = data,
            MSR_SYSCALL_MASK => s.sfmask = data,
            MSR_FS_BASE => s.fs.base = data,
            MSR_GS_BASE => s.gs.base = data,
            MSR_KERNEL_GS_BASE => s.kernel_gs_base = data,
            MSR_IA32_SYSENTER_CS => s.sysenter_cs = data,
            MSR_IA32_SYSENTER_ESP => s.sysenter_esp = data,
            MSR_IA32_SYSENTER_EIP => s.sysenter_eip = data,
            MSR_IA32_CR_PAT => s.g_pat = data,
            _ => return false,
        }
        true
    }

    fn interrupt_allowed(v: &SvmVcpu, rflags: u64) -> bool {
        let c = &v.vmcb_ref().control;
        // As svm_interrupt_blocked() outside nested guests (GIF is always set).
        rflags & X86_EFLAGS_IF != 0
            && c.int_state & vm::INTERRUPT_SHADOW == 0
            && c.event_inj & EVTINJ_VALID == 0
    }

    fn inject_irq(v: &mut SvmVcpu, vector: u8) {
        // svm_inject_irq(): an external interrupt, type 0.
        v.vmcb().control.event_inj = u32::from(vector) | EVTINJ_VALID;
    }

    fn enable_irq_window(v: &mut SvmVcpu) {
        // svm_set_vintr(): a dummy virtual interrupt that ignores the TPR makes the
        // CPU exit (VINTR intercept) as soon as the guest is interruptible.
        let c = &mut v.vmcb().control;
        c.int_ctl |= vm::V_IRQ | vm::V_IGN_TPR | (0xf << vm::V_INTR_PRIO_SHIFT);
        c.intercepts[vm::INTERCEPT_WORD3] |= vm::VINTR;
    }

    fn inject_nmi(v: &mut SvmVcpu) -> bool {
        if !nmi_allowed(v) {
            return false;
        }
        // svm_inject_nmi(): type NMI, vector 2; NMIs masked until its IRET.
        let c = &mut v.vmcb().control;
        c.event_inj = NMI_VECTOR | EVTINJ_TYPE_NMI | EVTINJ_VALID;
        set_nmi_mask(v, true);
        true
    }

    fn nmi_allowed(v: &SvmVcpu) -> bool {
        nmi_allowed(v)
    }

    fn get_nmi_mask(v: &SvmVcpu) -> bool {
        v.nmi.masked
    }

    fn enable_nmi_window(v: &mut SvmVcpu) {
        // The handler's IRET exits by itself (the IRET intercept).
        if v.nmi.masked && !v.nmi.awaiting_iret_completion {
            return;
        }
        // Something else blocks the NMI (the IRET not yet completed, an event
        // being injected, an interrupt shadow): single-step one instruction (#DB
        // is always intercepted).
        v.nmi.singlestep = true;
    }

    fn get_events(v: &SvmVcpu, e: &mut kvm_vcpu_events) {
        let c = &v.vmcb_ref().control;
        let inj = c.event_inj;
        if inj & EVTINJ_VALID != 0 {
            let vector = (inj & 0xff) as u8;
            match inj & EVTINJ_TYPE_MASK {
                EVTINJ_TYPE_EXEPT => {
                    e.exception.injected = 1;
                    e.exception.nr = vector;
                    e.exception.has_error_code = u8::from(inj & EVTINJ_VALID_ERR != 0);
                    e.exception.error_code = c.event_inj_err;
                }
                EVTINJ_TYPE_NMI => e.nmi.injected = 1,
                t => {
                    e.interrupt.injected = 1;
                    e.interrupt.nr = vector;
                    e.interrupt.soft = u8::from(t == EVTINJ_TYPE_SOFT);
                }
            }
        }
        if c.int_state & vm::INTERRUPT_SHADOW != 0 {
            // svm_get_interrupt_shadow() cannot tell STI from MOV SS.
            e.interrupt.shadow = 3;
        }
        e.nmi.masked = u8::from(v.nmi.masked);
    }

    fn set_events(v: &mut SvmVcpu, e: &kvm_vcpu_events) {
        // kvm.ko queues a soft exception again itself (queue_soft_exception).
        v.soft_int_len = None;
        v.soft_int = None;
        let c = &mut v.vmcb().control;
        c.event_inj = 0;
        c.event_inj_err = 0;
        if e.exception.injected != 0 {
            let err = (e.exception.has_error_code != 0).then_some(e.exception.error_code);
            queue_exception_vmcb(v.vmcb(), e.exception.nr.into(), err);
        } else if e.nmi.injected != 0 {
            c.event_inj = NMI_VECTOR | EVTINJ_TYPE_NMI | EVTINJ_VALID;
        } else if e.interrupt.injected != 0 {
            let t = if e.interrupt.soft != 0 {
                EVTINJ_TYPE_SOFT
            } else {
                0
            };
            c.event_inj = u32::from(e.interrupt.nr) | t | EVTINJ_VALID;
        }
        set_nmi_mask(v, e.nmi.masked != 0);
        if e.flags & KVM_VCPUEVENT_VALID_SHADOW != 0 {
            let c = &mut v.vmcb().control;
            if e.interrupt.shadow != 0 {
                c.int_state |= vm::INTERRUPT_SHADOW;
            } else {
                c.int_state &= !vm::INTERRUPT_SHADOW;
            }
        }
    }

    fn get_cr4(v: &SvmVcpu) -> u64 {
        v.vmcb_ref().save.cr4
    }

    fn sync_dirty_debug_regs(v: &mut SvmVcpu) {
        v.vmcb().control.intercepts[vm::INTERCEPT_DR] = DR_INTERCEPTS;
    }

    fn get_dr(v: &SvmVcpu, n: u32) -> u64 {
        let s = &v.vmcb_ref().save;
        if n == 6 {
            s.dr6
        } else {
            s.dr7
        }
    }

    fn set_dr(v: &mut SvmVcpu, n: u32, val: u64) {
        let s = &mut v.vmcb().save;
        if n == 6 {
            s.dr6 = val;
        } else {
            s.dr7 = val;
        }
    }

    fn vcpu_reset(v: &mut SvmVcpu) {
        reinit_vmcb(v.vmcb());
        // INIT and RESET leave the TSC running.
        v.vmcb().control.tsc_offset = v.tsc_offset;
        v.asid_generation = 0;
        v.nmi = NmiState::default();
        v.soft_int_len = None;
        v.soft_int = None;
        // Guest debugging outlives a reset (kvm_vcpu_reset() updates the bitmap).
        update_exception_bitmap(v, v.guest_debug);
    }

    fn update_exception_bitmap(v: &mut SvmVcpu, guest_debug: u32) {
        update_exception_bitmap(v, guest_debug);
    }

    fn write_tsc_offset(v: &mut SvmVcpu, offset: u64) {
        // svm_write_tsc_offset(): RDTSC in the guest reads host TSC + offset.
        v.tsc_offset = offset;
        v.vmcb().control.tsc_offset = offset;
    }

    fn get_exit_info(v: &SvmVcpu, info: &mut [u64; 5]) {
        // svm_get_exit_info().
        let c = &v.vmcb_ref().control;
        let int_info = c.exit_int_info;
        let err = if int_info & EVTINJ_VALID != 0 && int_info & EVTINJ_VALID_ERR != 0 {
            c.exit_int_info_err
        } else {
            0
        };
        *info = [
            c.exit_code,
            c.exit_info_1,
            c.exit_info_2,
            int_info.into(),
            err.into(),
        ];
    }

    fn setup_mce(_v: &SvmVcpu, mcg_cap: u64) -> u64 {
        // svm_setup_mce(): bits 63:9 are reserved.
        mcg_cap & MCG_CAP_SVM_MASK
    }
}

/// svm_nmi_blocked() inverted, plus no other event being injected.
fn nmi_allowed(v: &SvmVcpu) -> bool {
    let c = &v.vmcb_ref().control;
    !v.nmi.masked && c.int_state & vm::INTERRUPT_SHADOW == 0 && c.event_inj & EVTINJ_VALID == 0
}

/// svm_set_nmi_mask(): masked NMIs wait for the handler's IRET, which is intercepted.
fn set_nmi_mask(v: &mut SvmVcpu, masked: bool) {
    v.nmi.masked = masked;
    v.nmi.awaiting_iret_completion = false;
    let c = &mut v.vmcb().control;
    if masked {
        c.intercepts[vm::INTERCEPT_WORD3] |= vm::IRET;
    } else {
        c.intercepts[vm::INTERCEPT_WORD3] &= !vm::IRET;
    }
}

/// disable_nmi_singlestep(): the stepped instruction ran; the #DB was KVM's.
pub(crate) fn disable_nmi_singlestep(v: &mut SvmVcpu) {
    v.nmi.singlestep = false;
}

/// svm_update_exception_bitmap(): #BP exits while userspace has software
/// breakpoints in the guest.
fn update_exception_bitmap(v: &mut SvmVcpu, guest_debug: u32) {
    v.guest_debug = guest_debug;
    let sw_bp = uapi::KVM_GUESTDBG_ENABLE | uapi::KVM_GUESTDBG_USE_SW_BP;
    let c = &mut v.vmcb().control;
    if guest_debug & sw_bp == sw_bp {
        c.intercepts[vm::INTERCEPT_EXCEPTION] |= 1 << uapi::BP_VECTOR;
    } else {
        c.intercepts[vm::INTERCEPT_EXCEPTION] &= !(1 << uapi::BP_VECTOR);
    }
}

/// Reads and writes of DR0-3, DR6 and DR7 (upstream set_dr_intercepts()): the
/// first one makes kvm.ko switch DR0-3 (kvm_debugreg_wont_exit).
const DR_INTERCEPTS: u32 = 0x00cf_00cf;

/// Queues an exception in EVENTINJ (svm_inject_exception()).
pub(crate) fn queue_exception_vmcb(vmcb: &mut Vmcb, vector: u32, error_code: Option<u32>) {
    vmcb.control.event_inj = vector
        | EVTINJ_TYPE_EXEPT
        | EVTINJ_VALID
        | if error_code.is_some() {
            EVTINJ_VALID_ERR
        } else {
            0
        };
    vmcb.control.event_inj_err = error_code.unwrap_or(0);
}
