// SPDX-License-Identifier: GPL-2.0-only
//! #VMEXIT handling (upstream svm_handle_exit() and its svm_exit_handlers[]): exit
//! codes by name (vmcb.rs); each handler does the SVM part and calls kvm.ko's
//! helpers (kvm_emulate_cpuid(), kvm_mmu_page_fault()...) through [`KvmCoreVcpu`].

use core::sync::atomic::Ordering;

use super::debugreg::DR6_ACTIVE_LOW;
use super::kvm_x86_ops::{vcpu_stat, KvmCoreVcpu, Next};
use super::uapi;
use super::vcpu::{disable_nmi_singlestep, queue_exception_vmcb, SvmVcpu, EVTINJ_VALID, NRIPS};
use super::vmcb as vm;

/// Lengths of the prefix-free intercepted instructions, for CPUs without NRIPS
/// (upstream decodes with the emulator; these are the only encodings).
const HLT_LEN: u64 = 1;
const CPUID_LEN: u64 = 2;
const MSR_LEN: u64 = 2;
const VMMCALL_LEN: u64 = 3;
const XSETBV_LEN: u64 = 3;
const INVD_LEN: u64 = 2;
const MONITOR_LEN: u64 = 3;

/// svm_handle_exit(): the exit kvm.ko's vcpu_enter_guest() just took.
pub(crate) fn svm_handle_exit(v: &mut SvmVcpu, core: &mut KvmCoreVcpu) -> Next {
    let guest_debug = v.guest_debug;
    let vmcb = v.vmcb();
    let c = vmcb.control;
    let rip = vmcb.save.rip;
    // Without NRIPS, the length of the (prefix-free) intercepted instruction.
    let next = |len: u64| {
        if NRIPS.load(Ordering::Relaxed) {
            c.next_rip
        } else {
            rip.wrapping_add(len)
        }
    };
    let (info1, info2) = (c.exit_info_1, c.exit_info_2);
    let code = c.exit_code;
    // An intercepted instruction that is skipped ends an STI/MOV SS shadow (as
    // svm_skip_emulated_instruction() clears it): STI; HLT must be able to wake
    // for an interrupt.
    if matches!(
        code,
        vm::EXIT_HLT
            | vm::EXIT_IOIO
            | vm::EXIT_CPUID
            | vm::EXIT_MSR
            | vm::EXIT_VMMCALL
            | vm::EXIT_XSETBV
            | vm::EXIT_INVD
            | vm::EXIT_WBINVD
            | vm::EXIT_MONITOR
            | vm::EXIT_MWAIT
    ) {
        vmcb.control.int_state &= !vm::INTERRUPT_SHADOW;
    }
    match code {
        // intr_interception(): the host took its interrupt on the way out.
        vm::EXIT_INTR => {
            core.kvm_stat_inc(v, vcpu_stat::IRQ_EXITS);
            Next::Guest
        }
        vm::EXIT_NMI | vm::EXIT_SMI => Next::Guest,
        vm::EXIT_VINTR => {
            // interrupt_window_interception() + svm_clear_vintr(): the window is
            // open; kvm.ko injects what is pending on the way back in.
            vmcb.control.int_ctl &= !(vm::V_IRQ | vm::V_IGN_TPR | (0xf << vm::V_INTR_PRIO_SHIFT));
            vmcb.control.intercepts[vm::INTERCEPT_WORD3] &= !vm::VINTR;
            core.kvm_stat_inc(v, vcpu_stat::IRQ_WINDOW_EXITS);
            Next::Guest
        }
        vm::EXIT_HLT => core.kvm_emulate_halt(v, next(HLT_LEN)),
        // iret_interception(): the NMI handler ends; NMIs unmask once the IRET
        // has run (checked after the next exit), the window opens then.
        vm::EXIT_IRET => {
            vmcb.control.intercepts[vm::INTERCEPT_WORD3] &= !vm::IRET;
            v.nmi.awaiting_iret_completion = true;
            v.nmi.iret_rip = rip;
            Next::Guest
        }
        // io_interception(): IOIO always reports the next RIP in EXITINFO2.
        vm::EXIT_IOIO if info1 & vm::IOIO_STR != 0 => core.kvm_emulate_instruction(v),
        vm::EXIT_IOIO => {
            let size = match (info1 & vm::IOIO_SIZE_MASK) >> vm::IOIO_SIZE_SHIFT {
                1 => 1,
                2 => 2,
                _ => 4,
            };
            let input = info1 & vm::IOIO_TYPE_IN != 0;
            core.kvm_fast_pio(v, size, (info1 >> 16) as u16, input, info2)
        }
        vm::EXIT_CPUID => core.kvm_emulate_cpuid(v, next(CPUID_LEN)),
        // msr_interception()
        vm::EXIT_MSR if info1 == 0 => core.kvm_emulate_rdmsr(v, next(MSR_LEN)),
        vm::EXIT_MSR => core.kvm_emulate_wrmsr(v, next(MSR_LEN)),
        vm::EXIT_VMMCALL => core.kvm_emulate_hypercall(v, next(VMMCALL_LEN)),
        vm::EXIT_SHUTDOWN => {
            // shutdown_interception(): the VMCB is undefined after a shutdown
            // intercept; INIT puts it in a known state (kvm_vcpu_reset() calls
            // svm_vcpu_reset()), and userspace hears of the shutdown.
            core.kvm_vcpu_reset(v, true);
            core.set_exit_reason(v, uapi::KVM_EXIT_SHUTDOWN);
            Next::User(Ok(()))
        }
        // npf_interception()
        vm::EXIT_NPF => {
            let vectoring = c.exit_int_info & EVTINJ_VALID != 0;
            core.kvm_mmu_page_fault(v, info2, info1, vectoring, code)
        }
        vm::EXIT_ERR => core.kvm_prepare_fail_entry_exit(v, code),
        // ud_interception()
        code if code == vm::EXIT_EXCP_BASE + u64::from(uapi::UD_VECTOR) => core.handle_ud(v),
        code if code == vm::EXIT_EXCP_BASE + u64::from(uapi::DB_VECTOR) => db_interception(v, core),
        code if code == vm::EXIT_EXCP_BASE + u64::from(uapi::BP_VECTOR) => {
            // bp_interception(): a software breakpoint for userspace (only
            // intercepted with KVM_GUESTDBG_USE_SW_BP).
            let pc = vmcb.save.cs.base.wrapping_add(rip);
            core.set_debug_exit(v, uapi::BP_VECTOR, pc, 0, 0);
            Next::User(Ok(()))
        }
        // ac_interception()
        code if code == vm::EXIT_EXCP_BASE + u64::from(uapi::AC_VECTOR) => {
            queue_exception_vmcb(vmcb, uapi::AC_VECTOR, Some(info1 as u32));
            Next::Guest
        }
        // dr_interception(): without guest debugging, let the guest access them
        // freely until the next exit and run the instruction again; with it,
        // emulate the access (no decode assists), as userspace's breakpoints are
        // in the hardware registers.
        vm::EXIT_READ_DR0..=vm::EXIT_WRITE_DR15 if guest_debug == 0 => {
            vmcb.control.intercepts[vm::INTERCEPT_DR] = 0;
            core.kvm_debugreg_wont_exit(v);
            Next::Guest
        }
        vm::EXIT_READ_DR0..=vm::EXIT_WRITE_DR15 => core.kvm_emulate_instruction(v),
        vm::EXIT_XSETBV => core.kvm_emulate_xsetbv(v, next(XSETBV_LEN)),
        vm::EXIT_MONITOR | vm::EXIT_MWAIT => core.kvm_emulate_monitor_mwait(v, next(MONITOR_LEN)),
        // No nested SVM: #UD, as the guest's CPUID promises.
        vm::EXIT_VMRUN..=vm::EXIT_SKINIT | vm::EXIT_RDPRU => {
            queue_exception_vmcb(vmcb, uapi::UD_VECTOR, None);
            Next::Guest
        }
        // kvm_emulate_invd(), kvm_emulate_wbinvd(): nothing to do for a guest
        // without assigned devices.
        vm::EXIT_INVD | vm::EXIT_WBINVD => core.kvm_emulate_as_nop(v, next(INVD_LEN)),
        // svm_handle_invalid_exit()
        code => core.kvm_prepare_unexpected_reason_exit(v, code),
    }
}

/// db_interception(): a #DB in the guest. It is the guest's own unless KVM
/// single-steps for an NMI window or userspace debugs the guest (single-step or
/// hardware breakpoints), in which case it exits with the cause from DR6, which
/// the guest runs with at DR6_ACTIVE_LOW so that it holds only this #DB's bits.
fn db_interception(v: &mut SvmVcpu, core: &mut KvmCoreVcpu) -> Next {
    let userspace = v.guest_debug & (uapi::KVM_GUESTDBG_SINGLESTEP | uapi::KVM_GUESTDBG_USE_HW_BP);
    if userspace == 0 && !v.nmi.singlestep {
        let payload = v.vmcb().save.dr6 ^ DR6_ACTIVE_LOW;
        core.kvm_queue_exception_p(v, uapi::DB_VECTOR, payload);
        return Next::Guest;
    }
    if v.nmi.singlestep {
        // kvm.ko looks for pending NMIs on every entry.
        disable_nmi_singlestep(v);
    }
    if userspace == 0 {
        return Next::Guest;
    }
    let s = &v.vmcb().save;
    let (pc, dr6, dr7) = (s.cs.base.wrapping_add(s.rip), s.dr6, s.dr7);
    core.set_debug_exit(v, uapi::DB_VECTOR, pc, dr6, dr7);
    Next::User(Ok(()))
}
