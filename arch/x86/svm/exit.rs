// SPDX-License-Identifier: GPL-2.0-only
//! #VMEXIT decoding (upstream svm_handle_exit() and its svm_exit_handlers[]): exit
//! codes by name (vmcb.rs), decoded into kvm.ko's [`Exit`]; exits that need nothing
//! from kvm.ko (host interrupts, instructions the guest gets #UD for) end here.

use core::sync::atomic::Ordering;

use super::kvm_x86_ops::{exit, Exit};
use super::uapi;
use super::vcpu::{queue_exception_vmcb, reinit_vmcb, EVTINJ_VALID, NRIPS};
use super::vmcb::{self as vm, Vmcb};

pub(crate) fn exit_of(kind: u32) -> Exit {
    Exit {
        kind,
        ..Default::default()
    }
}

/// #VMEXIT as kvm.ko sees it. Exits that need nothing from kvm.ko (host
/// interrupts, instructions the guest gets #UD for) are finished here.
pub(crate) fn svm_handle_exit(vmcb: &mut Vmcb, rip: u64) -> Exit {
    let c = vmcb.control;
    let nrips = NRIPS.load(Ordering::Relaxed);
    // Without NRIPS, the length of the (prefix-free) intercepted instruction.
    let next = |len: u64| {
        if nrips {
            c.next_rip
        } else {
            rip.wrapping_add(len)
        }
    };
    let (info1, info2) = (c.exit_info_1, c.exit_info_2);
    let code = c.exit_code;
    // An intercepted instruction that kvm.ko completes is skipped, which ends an
    // STI/MOV SS shadow (skip_emulated_instruction() clears it): STI; HLT must
    // be able to wake for an interrupt.
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
    ) {
        vmcb.control.int_state &= !vm::INTERRUPT_SHADOW;
    }
    match code {
        vm::EXIT_INTR | vm::EXIT_NMI | vm::EXIT_SMI => exit_of(exit::NONE),
        vm::EXIT_VINTR => {
            // svm_clear_vintr(): the window is open; kvm.ko injects what is pending.
            vmcb.control.int_ctl &= !(vm::V_IRQ | vm::V_IGN_TPR | (0xf << vm::V_INTR_PRIO_SHIFT));
            vmcb.control.intercepts[vm::INTERCEPT_WORD3] &= !vm::VINTR;
            exit_of(exit::IRQ_WINDOW)
        }
        vm::EXIT_HLT => Exit {
            next_rip: next(1),
            ..exit_of(exit::HLT)
        },
        vm::EXIT_IOIO => {
            let mut flags = 0;
            if info1 & vm::IOIO_TYPE_IN != 0 {
                flags |= exit::IO_IN;
            }
            if info1 & vm::IOIO_STR != 0 {
                flags |= exit::IO_STRING;
            }
            if info1 & vm::IOIO_REP != 0 {
                flags |= exit::IO_REP;
            }
            let size = match (info1 & vm::IOIO_SIZE_MASK) >> vm::IOIO_SIZE_SHIFT {
                1 => 1,
                2 => 2,
                _ => 4,
            };
            Exit {
                kind: exit::IO,
                flags,
                info: info1 >> 16,
                info2: size,
                // IOIO always reports the next RIP in EXITINFO2.
                next_rip: info2,
                hw_reason: c.exit_code,
            }
        }
        vm::EXIT_CPUID => Exit {
            next_rip: next(2),
            ..exit_of(exit::CPUID)
        },
        vm::EXIT_MSR => Exit {
            kind: if info1 == 0 { exit::RDMSR } else { exit::WRMSR },
            next_rip: next(2),
            ..Default::default()
        },
        vm::EXIT_VMMCALL => Exit {
            next_rip: next(3),
            ..exit_of(exit::VMMCALL)
        },
        vm::EXIT_SHUTDOWN => {
            // The VMCB is undefined after a shutdown intercept: start over from the
            // INIT state, as upstream's shutdown_interception() (kvm.ko resets the
            // registers it owns).
            reinit_vmcb(vmcb);
            exit_of(exit::SHUTDOWN)
        }
        vm::EXIT_NPF => Exit {
            kind: exit::NPF,
            flags: (info1 as u32 & !exit::VECTORING)
                | if c.exit_int_info & EVTINJ_VALID != 0 {
                    exit::VECTORING
                } else {
                    0
                },
            info: info2,
            hw_reason: c.exit_code,
            ..Default::default()
        },
        vm::EXIT_ERR => Exit {
            kind: exit::FAIL_ENTRY,
            hw_reason: c.exit_code,
            ..Default::default()
        },
        code if code == vm::EXIT_EXCP_BASE + u64::from(uapi::UD_VECTOR) => {
            exit_of(exit::INVALID_OPCODE)
        }
        code if code == vm::EXIT_EXCP_BASE + u64::from(uapi::AC_VECTOR) => {
            queue_exception_vmcb(vmcb, uapi::AC_VECTOR, Some(info1 as u32));
            exit_of(exit::NONE)
        }
        // MOV from/to DR0-15 (dr_interception() without guest debugging): let
        // the guest access them freely until the next exit, and run it again.
        vm::EXIT_READ_DR0..=vm::EXIT_WRITE_DR15 => {
            vmcb.control.intercepts[vm::INTERCEPT_DR] = 0;
            exit_of(exit::DR_ACCESS)
        }
        vm::EXIT_XSETBV => Exit {
            next_rip: next(3),
            ..exit_of(exit::XSETBV)
        },
        // No nested SVM, no MONITOR/MWAIT: #UD, as the guest's CPUID promises.
        vm::EXIT_VMRUN..=vm::EXIT_SKINIT | vm::EXIT_MONITOR | vm::EXIT_MWAIT | vm::EXIT_RDPRU => {
            queue_exception_vmcb(vmcb, uapi::UD_VECTOR, None);
            exit_of(exit::NONE)
        }
        // INVD, WBINVD: nothing to do for a guest without assigned devices.
        vm::EXIT_INVD | vm::EXIT_WBINVD => Exit {
            next_rip: next(2),
            ..exit_of(exit::NONE)
        },
        code => Exit {
            kind: exit::UNHANDLED,
            hw_reason: code,
            info: info1,
            info2,
            ..Default::default()
        },
    }
}
