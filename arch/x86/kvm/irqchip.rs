// SPDX-License-Identifier: GPL-2.0-only
//! The VM-wide part of the in-kernel irqchip that KVM_CREATE_IRQCHIP creates beside
//! the per-vCPU LAPICs: the 8259 PIC pair, the IOAPIC and the GSI routing table
//! (upstream arch/x86/kvm/{i8259,ioapic,irq}.c, virt/kvm/irqchip.c). The models are
//! the no_std ones in arch/x86/hw; this file connects them to the vCPUs.
//!
//! Lock order: the VM's resampler list, the VM's irqchip mutex, then its vCPU list
//! (`locked`), then a vCPU's LAPIC, then a resampler's resamplefd list. A vCPU
//! never holds its LAPIC lock while taking the irqchip.

use core::sync::atomic::{AtomicBool, Ordering};
use kernel::prelude::*;
use kernel::sync::Arc;

use crate::abi::uapi;
use crate::arch::i8254::PitShared;
use crate::arch::kvm_arch::X86;
use crate::arch::Vcpu;
use crate::arch::Vm;
use crate::eventfd::IrqfdResampler;
use crate::hw::ioapic::{self, Apics, Ioapic};
use crate::hw::irq_routing::{self, Route, Target, UserEntry};
use crate::hw::lapic::Irq;
use crate::hw::pic::{self, Pic};
use crate::hw::pit;
use crate::iodev::eopnotsupp;
use crate::kvm_host::{IrqSource, KvmIoDevice};
use crate::user::{Fam, IrqRouting};

/// KVM_USERSPACE_IRQ_SOURCE_ID.
pub(crate) const SOURCE_USERSPACE: u32 = pic::SOURCE_USERSPACE;

/// The number of a generic irq source.
pub(crate) fn source_id(s: IrqSource) -> u32 {
    match s {
        IrqSource::Userspace => pic::SOURCE_USERSPACE,
        IrqSource::IrqfdResample => pic::SOURCE_IRQFD_RESAMPLE,
    }
}

/// The vCPUs' LAPICs as a destination for IOAPIC and MSI messages.
pub(crate) struct VcpuApics<'a>(pub(crate) &'a [Arc<Vcpu>]);

impl Apics for VcpuApics<'_> {
    /// kvm_irq_delivery_to_apic() without a source APIC. Lowest priority goes to
    /// the first accepting destination (no arbitration by priority yet).
    fn deliver(&mut self, irq: &Irq) -> i32 {
        // Upstream's APIC-map fast path resolves a unicast destination even when
        // no LAPIC has it and answers 0; a broadcast, or a VM without vCPUs (no
        // map), takes the slow path, which answers -1 when nobody matched.
        let broadcast = irq.dest_id == 0xff || irq.dest_id == u32::MAX;
        let mut r = if self.0.is_empty() || irq.shorthand != 0 || broadcast {
            -1
        } else {
            0
        };
        for v in self.0.iter() {
            if let Some(accepted) = v.deliver_irq_from_device(irq) {
                r = r.max(0) + i32::from(accepted);
                if accepted && irq.lowest_priority() {
                    break;
                }
            }
        }
        r
    }
}

pub(crate) struct Irqchip {
    pic: Pic,
    ioapic: Ioapic,
    routes: KVec<Route>,
    /// The PIT's irq ack and mask notifiers on GSI 0, while it reinjects ticks
    /// (kvm_register_irq_ack_notifier(), kvm_register_irq_mask_notifier()).
    pit_notifier: Option<Arc<PitShared>>,
    /// The resampling irqfds' ack notifiers, one per GSI.
    resamplers: KVec<Arc<IrqfdResampler>>,
    /// KVM_X2APIC_API_USE_32BIT_IDS (kvm->arch.x2apic_format): MSI routes carry
    /// destination bits in address_hi. Kept equal to the VM's flag.
    pub(crate) x2apic_format: bool,
    /// VmArch::pic_output, kept equal to `pic.output()` before anyone is kicked.
    output: Arc<AtomicBool>,
}

/// Copies a PIC chip between the model and `struct kvm_pic_state`, whose fields
/// are the same (the model follows the ABI's names and order).
macro_rules! pic_copy {
    ($from:expr => $to:path) => {{
        let c = $from;
        $to {
            last_irr: c.last_irr,
            irr: c.irr,
            imr: c.imr,
            isr: c.isr,
            priority_add: c.priority_add,
            irq_base: c.irq_base,
            read_reg_select: c.read_reg_select,
            poll: c.poll,
            special_mask: c.special_mask,
            init_state: c.init_state,
            auto_eoi: c.auto_eoi,
            rotate_on_auto_eoi: c.rotate_on_auto_eoi,
            special_fully_nested_mode: c.special_fully_nested_mode,
            init4: c.init4,
            elcr: c.elcr,
            elcr_mask: c.elcr_mask,
        }
    }};
}

/// SELECT_PIC(): the chip of a PIC pin (0-15).
fn pic_chip(pin: u32) -> u32 {
    if pin < 8 {
        irq_routing::CHIP_PIC_MASTER
    } else {
        irq_routing::CHIP_PIC_SLAVE
    }
}

/// Whether some vCPU takes the PIC's output (kvm_apic_accept_pic_intr()).
fn pic_accepted(vcpus: &[Arc<Vcpu>]) -> bool {
    vcpus.iter().any(|v| v.accepts_pic_interrupts())
}

impl Irqchip {
    /// kvm_pic_init(), kvm_ioapic_init() and the default routing table.
    pub(crate) fn new(output: Arc<AtomicBool>) -> Result<Self> {
        let mut routes = KVec::new();
        let mut err = Ok(());
        irq_routing::default_routes(|r| {
            if err.is_ok() {
                err = routes.push(r, GFP_KERNEL).map_err(Error::from);
            }
        });
        err?;
        Ok(Irqchip {
            pic: Pic::new(),
            ioapic: Ioapic::new(),
            routes,
            pit_notifier: None,
            resamplers: KVec::new(),
            x2apic_format: false,
            output: Self::fresh_output(output),
        })
    }

    /// A new PIC's output is low.
    fn fresh_output(output: Arc<AtomicBool>) -> Arc<AtomicBool> {
        output.store(false, Ordering::SeqCst);
        output
    }

    /// Publishes the PIC's output in VmArch::pic_output.
    fn sync_output(&self) {
        self.output.store(self.pic.output(), Ordering::SeqCst);
    }

    /// KVM_CAP_SPLIT_IRQCHIP: the routing table alone (empty), for userspace's
    /// IOAPIC's MSI routes; the PIC and IOAPIC models stay unused, off the buses.
    pub(crate) fn new_split(output: Arc<AtomicBool>) -> Self {
        Irqchip {
            pic: Pic::new(),
            ioapic: Ioapic::new(),
            routes: KVec::new(),
            pit_notifier: None,
            resamplers: KVec::new(),
            x2apic_format: false,
            output: Self::fresh_output(output),
        }
    }

    /// kvm_scan_ioapic_routes() for one vector: whether an EOI of `vector` by the
    /// vCPU `matches` describes is the userspace IOAPIC's (a level-triggered MSI
    /// route of one of its `nr_pins` reserved GSIs), and so exits to userspace.
    pub(crate) fn split_ioapic_handles_vector(
        &self,
        nr_pins: u32,
        vector: u8,
        matches: impl Fn(&Irq) -> bool,
    ) -> bool {
        self.routes.iter().any(|r| match r.target {
            Target::Msi {
                address_lo,
                address_hi,
                data,
            } if r.gsi < nr_pins => {
                let irq = irq_routing::msi_irq(address_lo, address_hi, data, self.x2apic_format);
                irq.trig_level && irq.vector == vector && matches(&irq)
            }
            _ => false,
        })
    }

    /// Registers (Some) or unregisters (None) the PIT's notifiers.
    pub(crate) fn set_pit_notifier(&mut self, n: Option<Arc<PitShared>>) {
        self.pit_notifier = n;
    }

    /// kvm_register_irq_ack_notifier() for a resampler.
    pub(crate) fn register_resampler(&mut self, r: Arc<IrqfdResampler>) -> Result {
        self.resamplers.push(r, GFP_KERNEL)?;
        Ok(())
    }

    /// kvm_unregister_irq_ack_notifier() for a resampler, and its level
    /// deasserted (irqfd_resampler_shutdown()).
    pub(crate) fn unregister_resampler(&mut self, r: &Arc<IrqfdResampler>, vcpus: &[Arc<Vcpu>]) {
        if let Some(i) = self.resamplers.iter().position(|x| Arc::ptr_eq(x, r)) {
            let _ = self.resamplers.remove(i);
        }
        self.set_irq(pic::SOURCE_IRQFD_RESAMPLE, r.gsi, false, vcpus);
    }

    /// kvm_irq_map_chip_pin(): the GSI a chip's pin is routed from (the last
    /// route naming it, as upstream's table keeps).
    fn map_chip_pin(&self, chip: u32, pin: u32) -> Option<u32> {
        self.routes.iter().rev().find_map(|r| match r.target {
            Target::Irqchip { chip: c, pin: p } if c == chip && p == pin => Some(r.gsi),
            _ => None,
        })
    }

    /// kvm_notify_acked_irq(): the guest acked the interrupt of a chip's pin; the
    /// ack notifiers of its GSI run (kvm_notify_acked_gsi()).
    fn kvm_notify_acked_irq(&mut self, chip: u32, pin: u32, vcpus: &[Arc<Vcpu>]) {
        let Some(gsi) = self.map_chip_pin(chip, pin) else {
            return;
        };
        if gsi == pit::GSI {
            if let Some(n) = &self.pit_notifier {
                n.kvm_pit_ack_irq();
            }
        }
        for i in 0..self.resamplers.len() {
            let Some(r) = self.resamplers.get(i).cloned() else {
                break;
            };
            if r.gsi == gsi {
                // irqfd_resampler_ack(): the level drops, then userspace hears.
                self.set_irq(pic::SOURCE_IRQFD_RESAMPLE, gsi, false, vcpus);
                r.notify();
            }
        }
    }

    /// kvm_fire_mask_notifiers(): a chip's pin was masked or unmasked.
    fn kvm_fire_mask_notifiers(&self, chip: u32, pin: u32, masked: bool) {
        if self.map_chip_pin(chip, pin) == Some(pit::GSI) {
            if let Some(n) = &self.pit_notifier {
                n.pit_mask_notifier(masked);
            }
        }
    }

    /// The PIC pins whose in-service bit was cleared (pic_clear_isr()).
    fn pic_notify_acked(&mut self, vcpus: &[Arc<Vcpu>]) {
        let acked = self.pic.take_acked();
        for pin in 0..pic::NUM_PINS {
            if acked & (1 << pin) != 0 {
                self.kvm_notify_acked_irq(pic_chip(pin), pin, vcpus);
            }
        }
    }

    /// The IMR bits a PIC port write changed (pic_ioport_write()'s OCW1).
    fn pic_fire_mask_notifiers(&self, old_imr: [u8; 2]) {
        for pin in 0..pic::NUM_PINS {
            let (i, bit) = ((pin >> 3) as usize, 1u8 << (pin & 7));
            let (Some(old), Some(c)) = (old_imr.get(i), self.pic.chips.get(i)) else {
                continue;
            };
            if (old ^ c.imr) & bit != 0 {
                self.kvm_fire_mask_notifiers(pic_chip(pin), pin, c.imr & bit != 0);
            }
        }
    }

    /// Kicks the vCPU that takes the PIC's output if it just rose (pic_unlock()).
    fn pic_wakeup(&mut self, vcpus: &[Arc<Vcpu>]) {
        // Before the kick: the kicked vCPU's ExtINT check reads the mirror.
        self.sync_output();
        if self.pic.take_wakeup() {
            if let Some(v) = vcpus.iter().find(|v| v.accepts_pic_interrupts()) {
                v.kick();
            }
        }
    }

    /// KVM_GET_IRQCHIP (kvm_vm_ioctl_get_irqchip()): -EINVAL for an unknown chip.
    pub(crate) fn get(&self, c: &mut uapi::kvm_irqchip) -> Result {
        match c.chip_id {
            uapi::KVM_IRQCHIP_PIC_MASTER => {
                c.chip.pic = pic_copy!(self.pic.chips[0] => uapi::kvm_pic_state)
            }
            uapi::KVM_IRQCHIP_PIC_SLAVE => {
                c.chip.pic = pic_copy!(self.pic.chips[1] => uapi::kvm_pic_state)
            }
            uapi::KVM_IRQCHIP_IOAPIC => {
                let s = self.ioapic.get_state();
                let mut io = uapi::kvm_ioapic_state {
                    base_address: s.base_address,
                    ioregsel: s.ioregsel,
                    id: s.id,
                    irr: s.irr,
                    ..Default::default()
                };
                for (u, e) in io.redirtbl.iter_mut().zip(s.redirtbl.iter()) {
                    u.bits = *e;
                }
                c.chip.ioapic = io;
            }
            _ => return Err(EINVAL),
        }
        Ok(())
    }

    /// KVM_SET_IRQCHIP (kvm_vm_ioctl_set_irqchip()).
    pub(crate) fn set(&mut self, c: &uapi::kvm_irqchip, vcpus: &[Arc<Vcpu>]) -> Result {
        match c.chip_id {
            uapi::KVM_IRQCHIP_PIC_MASTER | uapi::KVM_IRQCHIP_PIC_SLAVE => {
                // SAFETY: the union's variants are plain integers: any bytes are a kvm_pic_state.
                let p = unsafe { c.chip.pic };
                let i = usize::from(c.chip_id == uapi::KVM_IRQCHIP_PIC_SLAVE);
                if let Some(chip) = self.pic.chips.get_mut(i) {
                    *chip = pic_copy!(p => pic::Chip);
                }
                self.pic.update();
                self.pic_wakeup(vcpus);
            }
            uapi::KVM_IRQCHIP_IOAPIC => {
                // SAFETY: as above, for kvm_ioapic_state.
                let io = unsafe { c.chip.ioapic };
                let mut s = ioapic::State {
                    base_address: io.base_address,
                    ioregsel: io.ioregsel,
                    id: io.id,
                    irr: io.irr,
                    redirtbl: [0; ioapic::NUM_PINS],
                };
                for (e, u) in s.redirtbl.iter_mut().zip(io.redirtbl.iter()) {
                    // SAFETY: as above (a u64 or its bitfield view).
                    *e = unsafe { u.bits };
                }
                self.ioapic.set_state(&s, &mut VcpuApics(vcpus));
            }
            _ => return Err(EINVAL),
        }
        Ok(())
    }

    /// KVM_IRQ_LINE(_STATUS) (kvm_set_irq()): every route of `gsi` is driven as
    /// seen from irq source `source`; the result is -1 (not delivered), 0
    /// (coalesced) or how many got it.
    pub(crate) fn set_irq(
        &mut self,
        source: u32,
        gsi: u32,
        level: bool,
        vcpus: &[Arc<Vcpu>],
    ) -> i32 {
        let mut ret = -1;
        for i in 0..self.routes.len() {
            let Some(r) = self.routes.get(i).copied() else {
                break;
            };
            if r.gsi != gsi {
                continue;
            }
            let res = match r.target {
                Target::Irqchip { chip, pin } if chip == irq_routing::CHIP_IOAPIC => self
                    .ioapic
                    .set_irq(pin, source, level, &mut VcpuApics(vcpus)),
                Target::Irqchip { pin, .. } => {
                    let res = self.pic.set_irq(pin, source, level);
                    self.pic_wakeup(vcpus);
                    res
                }
                Target::Msi {
                    address_lo,
                    address_hi,
                    data,
                } => {
                    if !level {
                        -1
                    } else {
                        let irq =
                            irq_routing::msi_irq(address_lo, address_hi, data, self.x2apic_format);
                        VcpuApics(vcpus).deliver(&irq)
                    }
                }
            };
            if res >= 0 {
                ret = res + ret.max(0);
            }
        }
        ret
    }

    /// KVM_SET_GSI_ROUTING: `entries` were checked by [`irq_routing::check_entry`].
    pub(crate) fn set_routes(&mut self, routes: KVec<Route>) {
        self.routes = routes;
    }

    /// A guest access to a PIC port; `write` carries the byte written. The vCPU
    /// list is locked only when the access changed something a vCPU must hear of
    /// (an IMR poll is the common case, and takes no further lock).
    pub(crate) fn pic_port(&mut self, port: u16, len: u32, write: Option<u8>, vm: &Vm) -> u8 {
        let v = match write {
            Some(b) => {
                let accepted = pic_accepted(&vm.locked.lock().vcpus);
                let old_imr = [self.pic.chips[0].imr, self.pic.chips[1].imr];
                self.pic.port_write(port, len, b, accepted);
                self.pic_fire_mask_notifiers(old_imr);
                0
            }
            None => self.pic.port_read(port, len),
        };
        self.sync_output();
        if self.pic.has_events() {
            let locked = vm.locked.lock();
            self.pic_notify_acked(&locked.vcpus);
            self.pic_wakeup(&locked.vcpus);
        }
        v
    }

    /// The INTA cycle: the vector to inject into the vCPU taking the PIC's output.
    pub(crate) fn pic_read_irq(&mut self, vcpus: &[Arc<Vcpu>]) -> u8 {
        let v = self.pic.read_irq();
        self.pic_notify_acked(vcpus);
        self.pic_wakeup(vcpus);
        v
    }

    pub(crate) fn ioapic_in_range(&self, gpa: u64) -> bool {
        self.ioapic.in_range(gpa)
    }

    pub(crate) fn ioapic_read(&self, gpa: u64, len: u32) -> u64 {
        self.ioapic.mmio_read(gpa, len)
    }

    pub(crate) fn ioapic_write(&mut self, gpa: u64, len: u32, val: u64, vcpus: &[Arc<Vcpu>]) {
        let old = self.ioapic.get_state().redirtbl;
        self.ioapic.mmio_write(gpa, len, val, &mut VcpuApics(vcpus));
        // ioapic_write_indirect(): a redirection entry's mask bit changed.
        let new = self.ioapic.get_state().redirtbl;
        for (pin, (o, n)) in old.iter().zip(new.iter()).enumerate() {
            if (o ^ n) & ioapic::entry::MASKED != 0 {
                let masked = n & ioapic::entry::MASKED != 0;
                self.kvm_fire_mask_notifiers(irq_routing::CHIP_IOAPIC, pin as u32, masked);
            }
        }
    }

    /// A LAPIC EOI of a level-triggered `vector` (kvm_ioapic_update_eoi()), and the
    /// throttled re-delivery of an EOI storm, done at once here (upstream waits
    /// 10 ms in a work item).
    pub(crate) fn ioapic_eoi(&mut self, vector: u8, level: bool, vcpus: &[Arc<Vcpu>]) {
        let acked = self.ioapic.pins_of_vector(vector);
        for pin in 0..ioapic::NUM_PINS as u32 {
            if acked & (1 << pin) != 0 {
                self.kvm_notify_acked_irq(irq_routing::CHIP_IOAPIC, pin, vcpus);
            }
        }
        let mut apics = VcpuApics(vcpus);
        self.ioapic.update_eoi(vector, level, false, &mut apics);
        if self.ioapic.take_delayed_inject() {
            self.ioapic.eoi_inject(&mut apics);
        }
    }
}

/// Reads KVM_SET_GSI_ROUTING's entries from `arg` and checks them; -EINVAL as
/// upstream for a bad header or entry, -EFAULT for a bad pointer.
pub(crate) fn read_routes(arg: usize, split: bool, x2apic_format: bool) -> Result<KVec<Route>> {
    let fam = Fam::<IrqRouting>::read_header(arg)?;
    if fam.header.word != 0 {
        return Err(EINVAL);
    }
    // All entries are copied before any is checked, so a bad pointer is -EFAULT
    // whatever the entries hold (vmemdup_array_user() first, as upstream).
    let raw = fam.read_entries(irq_routing::MAX_ROUTES as usize, EINVAL)?;
    let mut entries = KVec::with_capacity(raw.len(), GFP_KERNEL)?;
    for e in raw.iter() {
        // SAFETY: the union's variants are plain integers; its words are read as `type_` says.
        let words = unsafe { e.u.pad };
        entries.push(
            UserEntry {
                gsi: e.gsi,
                kind: e.type_,
                flags: e.flags,
                u: [words[0], words[1], words[2]],
            },
            GFP_KERNEL,
        )?;
    }
    let mut routes = KVec::with_capacity(entries.len(), GFP_KERNEL)?;
    for ue in entries.iter() {
        let r = irq_routing::check_entry(ue, &routes, split, x2apic_format).map_err(|_| EINVAL)?;
        routes.push(r, GFP_KERNEL)?;
    }
    Ok(routes)
}

/// KVM_SIGNAL_MSI (kvm_send_userspace_msi()): how many LAPICs got it.
pub(crate) fn signal_msi(
    msi: &uapi::kvm_msi,
    vcpus: &[Arc<Vcpu>],
    x2apic_format: bool,
) -> Result<i32> {
    if msi.flags & !irq_routing::MSI_VALID_DEVID != 0
        || x2apic_format && irq_routing::msi_route_invalid(msi.address_hi)
    {
        return Err(EINVAL);
    }
    let irq = irq_routing::msi_irq(msi.address_lo, msi.address_hi, msi.data, x2apic_format);
    Ok(VcpuApics(vcpus).deliver(&irq))
}

/// The PIC's ports on the PIO bus (upstream picdev_master/slave/elcr): master
/// 0x20-0x21, slave 0xa0-0xa1, ELCR 0x4d0-0x4d1.
pub(crate) struct PicDev;

pub(crate) const PIC_PORTS: [(u64, u32); 3] = [(0x20, 2), (0xa0, 2), (0x4d0, 2)];

impl KvmIoDevice<X86> for PicDev {
    /// picdev_read(): one byte; wider reads give 0 in the other bytes.
    fn read(&self, vm: &Vm, addr: u64, data: &mut [u8]) -> Result {
        let port = u16::try_from(addr).map_err(|_| eopnotsupp())?;
        let mut chip = vm.arch.irqchip.lock();
        let c = (*chip).as_mut().ok_or_else(eopnotsupp)?;
        let v = c.pic_port(port, data.len() as u32, None, vm);
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
        Ok(())
    }

    /// picdev_write(): only byte writes reach the PIC.
    fn write(&self, vm: &Vm, addr: u64, data: &[u8]) -> Result {
        let port = u16::try_from(addr).map_err(|_| eopnotsupp())?;
        let mut chip = vm.arch.irqchip.lock();
        let c = (*chip).as_mut().ok_or_else(eopnotsupp)?;
        let b = data.first().copied().unwrap_or(0);
        c.pic_port(port, data.len() as u32, Some(b), vm);
        Ok(())
    }
}

/// The IOAPIC's window on the MMIO bus (upstream ioapic_mmio_ops), registered at
/// its default base; an access outside the current base's window is declined,
/// as ioapic_in_range().
pub(crate) struct IoapicDev;

impl KvmIoDevice<X86> for IoapicDev {
    fn read(&self, vm: &Vm, addr: u64, data: &mut [u8]) -> Result {
        let chip = vm.arch.irqchip.lock();
        let c = (*chip).as_ref().ok_or_else(eopnotsupp)?;
        if !c.ioapic_in_range(addr) {
            return Err(eopnotsupp());
        }
        let v = c.ioapic_read(addr, data.len() as u32).to_le_bytes();
        for (d, s) in data.iter_mut().zip(v.iter()) {
            *d = *s;
        }
        Ok(())
    }

    fn write(&self, vm: &Vm, addr: u64, data: &[u8]) -> Result {
        let mut chip = vm.arch.irqchip.lock();
        let c = (*chip).as_mut().ok_or_else(eopnotsupp)?;
        if !c.ioapic_in_range(addr) {
            return Err(eopnotsupp());
        }
        let mut v = [0u8; 8];
        for (d, s) in v.iter_mut().zip(data.iter()) {
            *d = *s;
        }
        let len = data.len() as u32;
        c.ioapic_write(addr, len, u64::from_le_bytes(v), &vm.locked.lock().vcpus);
        Ok(())
    }
}
