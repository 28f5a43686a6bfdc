// SPDX-License-Identifier: GPL-2.0-only
//! The in-kernel LAPIC of a vCPU (upstream arch/x86/kvm/lapic.c): the no_std
//! model (arch/x86/hw/lapic.rs) behind a spinlock so other vCPUs can deliver
//! IPIs, its xAPIC page, KVM_GET/SET_LAPIC, INIT/SIPI and timer events.

use core::sync::atomic::Ordering;
use kernel::prelude::*;
use kernel::transmute::{AsBytes, FromBytes};

use crate::abi::uapi;
use crate::arch::emulate::{read_phys, write_phys};
use crate::arch::x86::{now_ns, VcpuArch};
use crate::arch::Vcpu;
use crate::arch::Vm;
use crate::hw::cpuid::{self, Entry};
use crate::hw::emulate::{self, Insn, Op};
use crate::hw::lapic::{self, Action, Irq, Lapic};
use crate::kvm_x86_ops::Next;

/// `struct kvm_lapic_state` as bytes (the uapi spells it with C chars).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct LapicState(pub(crate) [u8; lapic::STATE_SIZE]);

impl Default for LapicState {
    fn default() -> Self {
        LapicState([0; lapic::STATE_SIZE])
    }
}

// SAFETY: a byte array: any bytes, all initialized.
unsafe impl FromBytes for LapicState {}
// SAFETY: as above.
unsafe impl AsBytes for LapicState {}

const _: () = assert!(size_of::<LapicState>() == size_of::<uapi::kvm_lapic_state>());

/// kvm_apic_set_base(): x2APIC mode is reserved unless the guest's CPUID has it.
pub(crate) fn set_apic_base(l: &mut Lapic, cpuid: &[Entry], v: u64, host: bool) -> bool {
    let x2apic = cpuid::find(cpuid, 1, 0).is_some_and(|e| e.ecx & cpuid::L1_ECX_X2APIC != 0);
    if v & lapic::MSR_APICBASE_X2APIC != 0 && !x2apic {
        return false;
    }
    l.set_base(v, host, cpuid::maxphyaddr(cpuid)).is_ok()
}

impl Vcpu {
    /// The LAPIC's timer, INIT and SIPI (upstream kvm_apic_accept_events() and the
    /// timer's expiry work), and the host timer armed for its next expiry.
    pub(crate) fn kvm_apic_accept_events(&self, vm: &Vm, st: &mut VcpuArch) {
        let mut g = self.arch.lapic.lock();
        let Some(l) = (*g).as_mut() else {
            return;
        };
        // The host timer armed for the LAPIC's fired (upstream's apic_timer_fn()
        // makes the request): only then can the timer have expired, and the
        // clock, dear under nesting, need be read.
        if self.waiter.take_fired() {
            l.timer_poll(now_ns());
        }
        let init = l.take_init();
        if init {
            l.init();
        }
        let sipi = l.take_sipi();
        let nmis = l.take_nmis();
        st.apic_has_interrupt = l.pending_interrupt().is_some();
        let expiry = l.next_timer_expiry().unwrap_or(0);
        let cr8 = l.cr8();
        drop(g);
        st.nmi_queued = st.nmi_queued.saturating_add(nmis);
        if expiry != st.armed_ns {
            self.waiter.arm(expiry);
            st.armed_ns = expiry;
        }
        if init {
            // kvm_vcpu_reset(vcpu, true): the BSP runs again, APs wait for SIPI.
            self.kvm_vcpu_reset(vm, st, true);
            st.mp_state = if self.kvm_vcpu_is_bsp(st) {
                uapi::KVM_MP_STATE_RUNNABLE
            } else {
                uapi::KVM_MP_STATE_INIT_RECEIVED
            };
        }
        if let Some(vector) = sipi {
            if st.mp_state == uapi::KVM_MP_STATE_INIT_RECEIVED {
                // kvm_vcpu_deliver_sipi_vector(): start at vector:0000 in real mode.
                let mut s = uapi::kvm_sregs::default();
                st.vendor.get_sregs(&mut s);
                s.cs.selector = u16::from(vector) << 8;
                s.cs.base = u64::from(vector) << 12;
                // The INIT state with another CS: one the vendor accepts.
                let _ = st.vendor.set_sregs(&s);
                st.regs.rip = 0;
                st.mp_state = uapi::KVM_MP_STATE_RUNNABLE;
            }
        }
        st.regs.cr8 = cr8;
    }

    /// Delivers `irq` from vCPU `source` if this vCPU's LAPIC accepts it.
    pub(crate) fn deliver_irq(&self, irq: &Irq, source: u32) -> bool {
        let mut g = self.arch.lapic.lock();
        let Some(l) = (*g).as_mut() else {
            return false;
        };
        if !l.matches(irq, source, source == self.id) {
            return false;
        }
        let accepted = l.accept(irq);
        drop(g);
        if accepted {
            self.waiter.poke();
        }
        accepted
    }

    /// Delivers `irq` from the IOAPIC or an MSI: None if this vCPU's LAPIC is not
    /// a destination, else whether it accepted it.
    pub(crate) fn deliver_irq_from_device(&self, irq: &Irq) -> Option<bool> {
        let mut g = self.arch.lapic.lock();
        let l = (*g).as_mut()?;
        if !l.matches(irq, crate::hw::lapic::NO_SOURCE, false) {
            return None;
        }
        let accepted = l.accept(irq);
        drop(g);
        if accepted {
            self.waiter.poke();
        }
        Some(accepted)
    }

    /// kvm_apic_match_dest() for a device's message (no source, no shorthand).
    fn apic_matches(&self, irq: &Irq) -> bool {
        (*self.arch.lapic.lock())
            .as_ref()
            .is_some_and(|l| l.matches(irq, crate::hw::lapic::NO_SOURCE, false))
    }

    /// Whether this vCPU takes the PIC's output (kvm_apic_accept_pic_intr()).
    pub(crate) fn accepts_pic_interrupts(&self) -> bool {
        self.arch
            .lapic
            .lock()
            .as_ref()
            .is_some_and(|l| l.accepts_pic_interrupts())
    }

    /// Makes the vCPU look at its interrupts again (a PIC output rose).
    pub(crate) fn kick(&self) {
        self.waiter.poke();
    }

    /// Carries out what a LAPIC register write asked for.
    pub(crate) fn lapic_action(&self, vm: &Vm, st: &mut VcpuArch, a: Action) {
        match a {
            Action::SendIpi(irq) => vm.kvm_irq_delivery_to_apic(&irq, self.id),
            // kvm_ioapic_send_eoi(): userspace's IOAPIC hears of an EOI of one
            // of its vectors through an exit (KVM_REQ_IOAPIC_EOI_EXIT).
            Action::Eoi { vector, .. } if vm.arch.irqchip_split() => {
                // Directed EOI: the guest EOIs userspace's IOAPIC itself.
                if (*self.arch.lapic.lock())
                    .as_ref()
                    .is_some_and(|l| l.suppress_eoi_broadcast())
                {
                    return;
                }
                let nr_pins = vm.arch.nr_reserved_ioapic_pins.load(Ordering::Relaxed);
                let chip = vm.arch.irqchip.lock();
                let theirs = (*chip).as_ref().is_some_and(|c| {
                    c.split_ioapic_handles_vector(nr_pins, vector, |irq| self.apic_matches(irq))
                });
                drop(chip);
                if theirs {
                    st.pending_ioapic_eoi = Some(vector);
                }
            }
            // The IOAPIC re-delivers a level-triggered line still asserted.
            Action::Eoi { vector, level } => {
                if let Some(chip) = (*vm.arch.irqchip.lock()).as_mut() {
                    chip.ioapic_eoi(vector, level, &vm.locked.lock().vcpus);
                }
            }
            // The timer is re-armed by accept_events() before the next entry.
            Action::TimerChanged | Action::None => {}
        }
    }

    /// kvm_vcpu_is_bsp(): the BSP flag of IA32_APIC_BASE.
    pub(crate) fn kvm_vcpu_is_bsp(&self, st: &VcpuArch) -> bool {
        self.apic_base(st) & lapic::MSR_APICBASE_BSP != 0
    }

    pub(crate) fn apic_base(&self, st: &VcpuArch) -> u64 {
        self.arch
            .lapic
            .lock()
            .as_ref()
            .map_or(st.apic_base, |l| l.base())
    }

    /// An access to the xAPIC page of an enabled in-kernel LAPIC, done in the kernel.
    pub(crate) fn lapic_mmio(
        &self,
        vm: &Vm,
        st: &mut VcpuArch,
        insn: &Insn,
        gpa: u64,
        next_rip: u64,
    ) -> Option<Next> {
        let mut g = self.arch.lapic.lock();
        let l = (*g).as_mut()?;
        let base = l.mmio_base()?;
        if gpa < base || gpa >= base + 4096 {
            return None;
        }
        let off = (gpa - base) as u32;
        let len = u32::from(insn.op_size);
        let now = now_ns();
        let action = match insn.op {
            Op::Store { .. } => {
                let v = emulate::store_value(insn, &st.regs.gpr).unwrap_or(0);
                l.mmio_write_sized(off, len, v as u32, now)
            }
            _ => {
                let v = l.mmio_read(off, len, now);
                drop(g);
                if let Some(w) = self.finish_read(st, insn, v.into()) {
                    let mut g = self.arch.lapic.lock();
                    let a = (*g).as_mut().map_or(Action::None, |l| {
                        l.mmio_write_sized(off, len, w as u32, now)
                    });
                    drop(g);
                    self.lapic_action(vm, st, a);
                }
                if let Some(l) = (*self.arch.lapic.lock()).as_ref() {
                    st.regs.cr8 = l.cr8();
                }
                return Some(self.kvm_skip_emulated_instruction(st, next_rip));
            }
        };
        st.regs.cr8 = l.cr8();
        drop(g);
        self.lapic_action(vm, st, action);
        Some(self.kvm_skip_emulated_instruction(st, next_rip))
    }

    /// kvm_lapic_sync_to_vapic(): the TPR, highest in-service class and highest
    /// requested vector into the VAPIC page (for QEMU's kvmvapic option ROM).
    pub(crate) fn kvm_lapic_sync_to_vapic(&self, vm: &Vm, st: &VcpuArch) {
        if st.vapic_addr == 0 {
            return;
        }
        let word = (*self.arch.lapic.lock()).as_ref().map(|l| l.vapic_word());
        if let Some(w) = word {
            // A page that stopped being RAM is skipped, as a failed cache write.
            let _ = write_phys(vm, st.vapic_addr, &w.to_le_bytes());
        }
    }

    /// kvm_lapic_sync_from_vapic(): the TPR the guest wrote in the VAPIC page.
    pub(crate) fn kvm_lapic_sync_from_vapic(&self, vm: &Vm, st: &mut VcpuArch) {
        if st.vapic_addr == 0 {
            return;
        }
        let mut tpr = [0u8; 1];
        if read_phys(vm, st.vapic_addr, &mut tpr).is_none() {
            return;
        }
        if let Some(l) = (*self.arch.lapic.lock()).as_mut() {
            l.set_vapic_tpr(tpr[0]);
            st.regs.cr8 = l.cr8();
        }
    }
}
