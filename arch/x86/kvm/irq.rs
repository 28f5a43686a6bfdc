// SPDX-License-Identifier: GPL-2.0-only
//! Interrupt injection (upstream arch/x86/kvm/irq.c and kvm_check_and_inject_events()
//! of x86.c): the PIC's ExtINT first, then the LAPIC's highest pending vector, or
//! an interrupt window when the guest cannot take one now.

use core::sync::atomic::Ordering;
use kernel::prelude::*;

use crate::arch::x86::VcpuArch;
use crate::arch::Vcpu;
use crate::arch::Vm;
use crate::stats::vcpu as st_;
use crate::vcpu::run;

/// KVM_NR_INTERRUPTS: KVM_INTERRUPT's vectors.
const KVM_NR_INTERRUPTS: u32 = 256;

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
            || self.has_extint(vm, st);
        pending && st.vendor.interrupt_allowed(st.regs.rflags)
            || st.nmi_queued != 0
            || st.nmi_pending != 0 && st.vendor.nmi_allowed()
    }

    /// Injects the LAPIC's highest pending interrupt, or asks to exit as soon as
    /// the guest can take it (upstream kvm_check_and_inject_events()).
    pub(crate) fn kvm_check_and_inject_events(&self, vm: &Vm, st: &mut VcpuArch) {
        // The PIC's ExtINT comes first (kvm_cpu_get_interrupt()).
        if self.has_extint(vm, st) {
            if st.vendor.interrupt_allowed(st.regs.rflags) {
                if vm.arch.irqchip_split() {
                    // kvm_cpu_get_extint(): userspace's PIC gave the vector.
                    if let Some(vector) = st.pending_external_vector.take() {
                        st.vendor.inject_irq(vector);
                        self.stats.inc(st_::IRQ_INJECTIONS);
                    }
                    return;
                }
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
        // What kvm_apic_accept_events() saw at the top of this round: a vector
        // delivered since poked the vCPU, which then goes round again.
        if !st.apic_has_interrupt {
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

    /// A vCPU's pending ExtINT: the PIC's output (with the split irqchip, the
    /// vector userspace's PIC gave), if this vCPU takes it (kvm_cpu_has_extint()).
    /// The LAPIC lock is dropped before the irqchip's.
    pub(crate) fn has_extint(&self, vm: &Vm, st: &VcpuArch) -> bool {
        // The cheap half first: without an ExtINT pending, whether the LAPIC
        // would take one (its lock) does not matter.
        let pending = if vm.arch.irqchip_split() {
            st.pending_external_vector.is_some()
        } else {
            vm.arch.pic_output.load(Ordering::SeqCst)
        };
        pending && self.accepts_pic_interrupts()
    }

    /// KVM_INTERRUPT (kvm_vcpu_ioctl_interrupt()): without an in-kernel irqchip
    /// the interrupt is queued for the next entry (userspace waited for
    /// ready_for_interrupt_injection); with the split irqchip it is the ExtINT of
    /// userspace's PIC; -ENXIO with the in-kernel PIC, -EEXIST while an ExtINT
    /// still waits, -EINVAL past vector 255.
    pub(crate) fn kvm_vcpu_ioctl_interrupt(
        &self,
        vm: &Vm,
        st: &mut VcpuArch,
        irq: u32,
    ) -> Result<isize> {
        let vector = u8::try_from(irq)
            .ok()
            .filter(|_| irq < KVM_NR_INTERRUPTS)
            .ok_or(EINVAL)?;
        if !vm.arch.irqchip_in_kernel() {
            // kvm_queue_interrupt(): in the event-injection field until entry.
            st.vendor.inject_irq(vector);
            return Ok(0);
        }
        if vm.arch.pic_in_kernel() {
            return Err(ENXIO);
        }
        if st.pending_external_vector.is_some() {
            return Err(EEXIST);
        }
        st.pending_external_vector = Some(vector);
        Ok(0)
    }

    /// dm_request_for_irq_injection(): userspace, which has the PIC, asks for an
    /// exit when the guest can take an interrupt.
    pub(crate) fn dm_request_for_irq_injection(&self, vm: &Vm) -> bool {
        self.run_read_u8(run::REQUEST_INTERRUPT_WINDOW) != 0 && !vm.arch.pic_in_kernel()
    }

    /// kvm_cpu_accept_dm_intr(): there is room for userspace's ExtINT, and LINT0
    /// (if the LAPIC is in the kernel) would take it.
    pub(crate) fn kvm_cpu_accept_dm_intr(&self, vm: &Vm, st: &VcpuArch) -> bool {
        if self.has_extint(vm, st) {
            return false;
        }
        !vm.arch.irqchip_in_kernel() || self.accepts_pic_interrupts()
    }

    /// kvm_vcpu_ready_for_interrupt_injection(): the guest takes an interrupt
    /// now and none is half-injected (the vendor's interrupt_allowed() also
    /// says no while an event waits in its injection field).
    pub(crate) fn kvm_vcpu_ready_for_interrupt_injection(&self, vm: &Vm, st: &VcpuArch) -> bool {
        st.vendor.interrupt_allowed(st.regs.rflags) && self.kvm_cpu_accept_dm_intr(vm, st)
    }
}
