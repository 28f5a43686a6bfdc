// SPDX-License-Identifier: GPL-2.0-only
//! Interrupt injection (upstream arch/x86/kvm/irq.c and kvm_check_and_inject_events()
//! of x86.c): the PIC's ExtINT first, then the LAPIC's highest pending vector, or
//! an interrupt window when the guest cannot take one now.

use crate::arch::x86::VcpuArch;
use crate::arch::Vcpu;
use crate::arch::Vm;
use crate::stats::vcpu as st_;

/// process_nmi(): the NMIs raised since are counted in. Two may be pending when
/// NMIs are not masked (one is injected at once, the other waits for the window),
/// else one, as x86 latches one NMI while another is handled.
pub(crate) fn process_nmi(st: &mut VcpuArch) {
    let limit = if st.vendor.get_nmi_mask() { 1 } else { 2 };
    st.nmi_pending = st.nmi_pending.saturating_add(st.nmi_queued).min(limit);
    st.nmi_queued = 0;
}

impl Vcpu {
    /// Whether a halted vCPU has something to run for (kvm_vcpu_has_events()).
    pub(crate) fn kvm_vcpu_has_events(&self, vm: &Vm, st: &VcpuArch) -> bool {
        let pending = self
            .arch
            .lapic
            .lock()
            .as_ref()
            .is_some_and(|l| l.pending_interrupt().is_some())
            || self.has_extint(vm);
        pending && st.vendor.interrupt_allowed(st.regs.rflags)
            || st.nmi_queued != 0
            || st.nmi_pending != 0 && st.vendor.nmi_allowed()
    }

    /// Injects the LAPIC's highest pending interrupt, or asks to exit as soon as
    /// the guest can take it (upstream kvm_check_and_inject_events()).
    pub(crate) fn kvm_check_and_inject_events(&self, vm: &Vm, st: &mut VcpuArch) {
        // The PIC's ExtINT comes first (kvm_cpu_get_interrupt()).
        if self.has_extint(vm) {
            if st.vendor.interrupt_allowed(st.regs.rflags) {
                let mut chip = vm.arch.irqchip.lock();
                if let Some(c) = (*chip).as_mut() {
                    let vector = c.pic_read_irq(&vm.locked.lock().vcpus);
                    drop(chip);
                    st.vendor.inject_irq(vector);
                    self.stats.inc(st_::IRQ_INJECTIONS);
                }
            } else {
                st.vendor.enable_irq_window();
            }
            return;
        }
        let mut g = self.arch.lapic.lock();
        let Some(l) = (*g).as_mut() else {
            return;
        };
        if l.pending_interrupt().is_none() {
            return;
        }
        if st.vendor.interrupt_allowed(st.regs.rflags) {
            if let Some(vector) = l.ack_interrupt() {
                st.regs.cr8 = l.cr8();
                st.vendor.inject_irq(vector);
                self.stats.inc(st_::IRQ_INJECTIONS);
            }
        } else {
            st.vendor.enable_irq_window();
        }
    }

    /// A vCPU's pending ExtINT: the PIC's output, if this vCPU takes it
    /// (kvm_cpu_has_extint()). The LAPIC lock is dropped before the irqchip's.
    pub(crate) fn has_extint(&self, vm: &Vm) -> bool {
        self.accepts_pic_interrupts()
            && (*vm.arch.irqchip.lock())
                .as_ref()
                .is_some_and(|c| c.pic_output())
    }
}
