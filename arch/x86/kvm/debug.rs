// SPDX-License-Identifier: GPL-2.0-only
//! Guest debugging (upstream x86.c's KVM_SET_GUEST_DEBUG and single-step parts):
//! the controls, userspace's hardware breakpoints and the TF kvm.ko sets in the
//! RFLAGS it owns; the single-step trap after every instruction KVM skips or
//! emulates; #DB with its cause for the guest (DR6) or for userspace
//! (KVM_EXIT_DEBUG). The DR6/DR7 rules are arch/x86/hw/debugreg.rs.

use kernel::prelude::*;

use crate::abi::uapi;
use crate::arch::regs::{kvm_get_linear_rip, kvm_get_rflags, kvm_set_rflags, kvm_update_dr7};
use crate::arch::x86::VcpuArch;
use crate::arch::{Vcpu, Vm};
use crate::hw::debugreg::{deliver_db_payload, DR6_ACTIVE_LOW, DR6_BS, DR7_GD};
use crate::hw::processor_flags::X86_EFLAGS_TF;
use crate::kvm_x86_ops::Next;
use crate::vcpu::run;

/// KVM_SET_GUEST_DEBUG (kvm_arch_vcpu_ioctl_set_guest_debug()): the controls,
/// userspace's hardware breakpoints, the single-step TF, and an injected #DB or
/// #BP (-EBUSY while another exception is being injected).
pub(crate) fn kvm_arch_vcpu_ioctl_set_guest_debug(
    vcpu: &Vcpu,
    vm: &Vm,
    st: &mut VcpuArch,
    dbg: &uapi::kvm_guest_debug,
) -> Result {
    if dbg.control & (uapi::KVM_GUESTDBG_INJECT_DB | uapi::KVM_GUESTDBG_INJECT_BP) != 0 {
        let mut e = uapi::kvm_vcpu_events::default();
        st.vendor.get_events(&mut e);
        if e.exception.injected != 0 {
            return Err(EBUSY);
        }
        if dbg.control & uapi::KVM_GUESTDBG_INJECT_DB != 0 {
            kvm_queue_db(st);
        } else {
            vcpu.kvm_queue_soft_exception(vm, st, uapi::BP_VECTOR);
        }
    }
    // Read while the TF KVM may have injected is still filtered out.
    let rflags = kvm_get_rflags(st);
    st.guest_debug = if dbg.control & uapi::KVM_GUESTDBG_ENABLE != 0 {
        dbg.control
    } else {
        0
    };
    let d = &dbg.arch.debugreg;
    if st.guest_debug & uapi::KVM_GUESTDBG_USE_HW_BP != 0 {
        st.eff_db = [d[0], d[1], d[2], d[3]];
        st.guest_debug_dr7 = d[7];
    } else {
        st.eff_db = st.db;
    }
    kvm_update_dr7(st);
    if st.guest_debug & uapi::KVM_GUESTDBG_SINGLESTEP != 0 {
        st.singlestep_rip = kvm_get_linear_rip(st);
    }
    // Injects or removes the single-step TF.
    kvm_set_rflags(st, rflags);
    st.vendor.update_exception_bitmap(st.guest_debug);
    Ok(())
}

/// kvm_queue_exception(DB_VECTOR): delivering a #DB clears DR7.GD, so that the
/// handler can use the debug registers (kvm_check_and_inject_events()).
pub(crate) fn kvm_queue_db(st: &mut VcpuArch) {
    if st.dr7 & DR7_GD != 0 {
        st.dr7 &= !DR7_GD;
        kvm_update_dr7(st);
    }
    st.vendor.queue_exception(uapi::DB_VECTOR, false, 0);
}

/// kvm_queue_exception_p(DB_VECTOR): the cause `payload` into the guest's DR6
/// (kvm_deliver_exception_payload()), then the #DB.
fn kvm_queue_db_p(st: &mut VcpuArch, payload: u64) {
    st.dr6 = deliver_db_payload(st.dr6, payload);
    kvm_queue_db(st);
}

impl Vcpu {
    /// kvm_skip_emulated_instruction(): RIP past an instruction KVM intercepted or
    /// emulated; with TF set (the guest's, or KVM's for single-stepping) the
    /// single-step trap the CPU would have raised after it.
    pub(crate) fn kvm_skip_emulated_instruction(&self, st: &mut VcpuArch, next_rip: u64) -> Next {
        let rflags = st.regs.rflags;
        st.regs.rip = next_rip;
        if rflags & X86_EFLAGS_TF != 0 {
            return self.kvm_inject_emulated_db(st, DR6_BS);
        }
        Next::Guest
    }

    /// kvm_inject_emulated_db(): a #DB KVM found (`dr6`: its cause) goes to
    /// userspace while it single-steps or uses hardware breakpoints, else to the
    /// guest.
    pub(crate) fn kvm_inject_emulated_db(&self, st: &mut VcpuArch, dr6: u64) -> Next {
        let userspace = uapi::KVM_GUESTDBG_USE_HW_BP | uapi::KVM_GUESTDBG_SINGLESTEP;
        if st.guest_debug & userspace != 0 {
            let pc = kvm_get_linear_rip(st);
            self.debug_exit(uapi::DB_VECTOR, pc, dr6 | DR6_ACTIVE_LOW, 0);
            return Next::User(Ok(()));
        }
        kvm_queue_db_p(st, dr6);
        Next::Guest
    }

    /// kvm_queue_exception_p(): for #DB, the payload (its cause) is delivered to
    /// the guest's DR6 right away (kvm-rs has no exception-payload ABI, so no one
    /// sees the exception before it is delivered).
    pub(crate) fn kvm_queue_exception_p(
        &self,
        _vm: &Vm,
        st: &mut VcpuArch,
        vector: u32,
        payload: u64,
    ) {
        if vector == uapi::DB_VECTOR {
            kvm_queue_db_p(st, payload);
        } else {
            st.vendor.queue_exception(vector, false, 0);
        }
    }

    /// KVM_EXIT_DEBUG for the vendor's #DB and #BP intercepts.
    pub(crate) fn set_debug_exit(
        &self,
        _vm: &Vm,
        _st: &mut VcpuArch,
        exception: u32,
        pc: u64,
        dr6: u64,
        dr7: u64,
    ) {
        self.debug_exit(exception, pc, dr6, dr7);
    }

    /// KVM_EXIT_DEBUG: `kvm_run->debug.arch` is exception, pad, pc, dr6, dr7.
    fn debug_exit(&self, exception: u32, pc: u64, dr6: u64, dr7: u64) {
        self.set_exit(uapi::KVM_EXIT_DEBUG);
        self.run_write(run::U, exception);
        self.run_write(run::U + 8, pc);
        self.run_write(run::U + 16, dr6);
        self.run_write(run::U + 24, dr7);
    }
}
