//! The two cascaded 8259A PICs as KVM models them (upstream arch/x86/kvm/i8259.c).
//!
//! Pure logic: the chip registers in the `struct kvm_pic_state` layout, the line
//! levels per interrupt source, and the INTR output. The caller owns the lock, the I/O
//! port decode (0x20/0x21, 0xa0/0xa1, 0x4d0/0x4d1 ELCR) and the vCPU that takes the
//! output (the one whose LAPIC accepts PIC interrupts); after each call it reads
//! [`Pic::take_wakeup`] to know whether to kick that vCPU, and [`Pic::take_acked`]
//! for the pins whose in-service bit was cleared (upstream's ack notifiers).

/// Pins per chip pair (PIC_NUM_PINS).
pub const NUM_PINS: u32 = 16;
/// Upstream's KVM_USERSPACE_IRQ_SOURCE_ID: KVM_IRQ_LINE's source.
pub const SOURCE_USERSPACE: u32 = 0;
/// Upstream's KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID: resampling irqfds' source.
pub const SOURCE_IRQFD_RESAMPLE: u32 = 1;

/// One chip, field for field `struct kvm_pic_state` (and upstream's kvm_kpic_state).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Chip {
    /// Edge detection.
    pub last_irr: u8,
    pub irr: u8,
    pub imr: u8,
    pub isr: u8,
    /// Highest IRQ priority.
    pub priority_add: u8,
    pub irq_base: u8,
    pub read_reg_select: u8,
    pub poll: u8,
    pub special_mask: u8,
    pub init_state: u8,
    pub auto_eoi: u8,
    pub rotate_on_auto_eoi: u8,
    pub special_fully_nested_mode: u8,
    /// True if 4 byte init.
    pub init4: u8,
    /// PIIX edge/trigger selection.
    pub elcr: u8,
    pub elcr_mask: u8,
}

impl Chip {
    /// The highest priority in `mask` (0 highest), 8 when empty.
    fn priority(&self, mask: u8) -> u32 {
        if mask == 0 {
            return 8;
        }
        let mut p = 0;
        while mask & (1 << ((p + u32::from(self.priority_add)) & 7)) == 0 {
            p += 1;
        }
        p
    }

    /// Sets pin `irq`'s level; returns 1 delivered, 0 coalesced, -1 masked
    /// (pic_set_irq1()).
    fn set_irq1(&mut self, irq: u32, level: bool) -> i32 {
        let mask = 1u8 << irq;
        let mut ret = 1;
        if self.elcr & mask != 0 {
            if level {
                ret = i32::from(self.irr & mask == 0);
                self.irr |= mask;
                self.last_irr |= mask;
            } else {
                self.irr &= !mask;
                self.last_irr &= !mask;
            }
        } else if level {
            if self.last_irr & mask == 0 {
                ret = i32::from(self.irr & mask == 0);
                self.irr |= mask;
            }
            self.last_irr |= mask;
        } else {
            self.last_irr &= !mask;
        }
        if self.imr & mask != 0 {
            -1
        } else {
            ret
        }
    }
}

/// The master/slave pair with the per-source line levels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pic {
    pub chips: [Chip; 2],
    /// Per pin, a bit per irq source asserting it (upstream irq_states[]).
    irq_states: [u32; NUM_PINS as usize],
    output: bool,
    wakeup_needed: bool,
    acked: u16,
}

impl Default for Pic {
    fn default() -> Self {
        Self::new()
    }
}

impl Pic {
    /// kvm_pic_init(): everything zero but the ELCR masks.
    pub fn new() -> Self {
        let mut chips = [Chip::default(); 2];
        chips[0].elcr_mask = 0xf8;
        chips[1].elcr_mask = 0xde;
        Pic {
            chips,
            irq_states: [0; NUM_PINS as usize],
            output: false,
            wakeup_needed: false,
            acked: 0,
        }
    }

    /// The INTR output: an interrupt for the vCPU that accepts PIC interrupts.
    pub fn output(&self) -> bool {
        self.output
    }

    /// Whether the output rose since the last call: kick the accepting vCPU.
    pub fn take_wakeup(&mut self) -> bool {
        core::mem::take(&mut self.wakeup_needed)
    }

    /// Whether [`Pic::take_wakeup`] or [`Pic::take_acked`] has anything to give:
    /// most port accesses change neither, and need not look at the vCPUs.
    pub fn has_events(&self) -> bool {
        self.wakeup_needed || self.acked != 0
    }

    /// Pins (bit n = pin n) whose in-service bit was cleared since the last call.
    pub fn take_acked(&mut self) -> u16 {
        core::mem::take(&mut self.acked)
    }

    /// Chip 0 (master) or 1 (slave); constant indices, so no bounds check can fail.
    fn chip(&mut self, chip: usize) -> &mut Chip {
        if chip == 0 {
            &mut self.chips[0]
        } else {
            &mut self.chips[1]
        }
    }

    fn clear_isr(&mut self, chip: usize, irq: u32) {
        self.chip(chip).isr &= !(1u8 << (irq & 7));
        self.acked |= 1 << ((irq & 7) + if chip == 0 { 0 } else { 8 });
    }

    /// The IRQ (0-7) `chip` wants to raise, if any (pic_get_irq()).
    fn get_irq(&self, chip: usize) -> Option<u32> {
        let s = self.chips.get(chip)?;
        let priority = s.priority(s.irr & !s.imr);
        if priority == 8 {
            return None;
        }
        // In special fully nested mode the master does not count the slave's
        // in-service IRQ when computing the current priority.
        let mut mask = s.isr;
        if s.special_fully_nested_mode != 0 && chip == 0 {
            mask &= !(1 << 2);
        }
        if priority < s.priority(mask) {
            Some((priority + u32::from(s.priority_add)) & 7)
        } else {
            None
        }
    }

    /// Recomputes the output (pic_update_irq()); must follow every state change.
    fn update_irq(&mut self) {
        if self.get_irq(1).is_some() {
            // The slave signals on the master's pin 2, as a pulse.
            self.chips[0].set_irq1(2, true);
            self.chips[0].set_irq1(2, false);
        }
        let level = self.get_irq(0).is_some();
        if !self.output && level {
            self.wakeup_needed = true;
        }
        self.output = level;
    }

    /// kvm_pic_update_irq(): after KVM_SET_IRQCHIP replaced a chip.
    pub fn update(&mut self) {
        self.update_irq();
    }

    /// Sets pin `pin` (0-15) as seen from `source` (kvm_pic_set_irq()). The line's
    /// level is the OR over all sources. Returns 1 delivered, 0 coalesced,
    /// -1 masked or bad pin.
    pub fn set_irq(&mut self, pin: u32, source: u32, level: bool) -> i32 {
        let Some(state) = self.irq_states.get_mut(pin as usize) else {
            return -1;
        };
        let line = super::irq_routing::line_state(state, source, level);
        let ret = match self.chips.get_mut((pin >> 3) as usize) {
            Some(c) => c.set_irq1(pin & 7, line),
            None => -1,
        };
        self.update_irq();
        ret
    }

    fn intack(&mut self, chip: usize, irq: u32) {
        let s = self.chip(chip);
        let mask = 1u8 << irq;
        s.isr |= mask;
        // A level-sensitive request stays in IRR until the line drops.
        if s.elcr & mask == 0 {
            s.irr &= !mask;
        }
        if s.auto_eoi != 0 {
            if s.rotate_on_auto_eoi != 0 {
                s.priority_add = ((irq + 1) & 7) as u8;
            }
            self.clear_isr(chip, irq);
        }
    }

    /// The INTA cycle (kvm_pic_read_irq()): the vector to inject. A spurious
    /// request reads as IRQ 7 of the chip that had none.
    pub fn read_irq(&mut self) -> u8 {
        self.output = false;
        let intno = match self.get_irq(0) {
            Some(irq) => {
                self.intack(0, irq);
                if irq == 2 {
                    let irq2 = match self.get_irq(1) {
                        Some(i) => {
                            self.intack(1, i);
                            i
                        }
                        None => 7,
                    };
                    self.chips[1].irq_base.wrapping_add(irq2 as u8)
                } else {
                    self.chips[0].irq_base.wrapping_add(irq as u8)
                }
            }
            None => self.chips[0].irq_base.wrapping_add(7),
        };
        self.update_irq();
        intno
    }

    /// ICW1 (kvm_pic_reset()). `pic_accepted`: some vCPU's LAPIC accepts PIC
    /// interrupts, in which case pending edge requests also leave service.
    fn reset(&mut self, chip: usize, pic_accepted: bool) {
        let s = self.chip(chip);
        let edge_irr = s.irr & !s.elcr;
        s.last_irr = 0;
        s.irr &= s.elcr;
        s.imr = 0;
        s.priority_add = 0;
        s.special_mask = 0;
        s.read_reg_select = 0;
        if s.init4 == 0 {
            s.special_fully_nested_mode = 0;
            s.auto_eoi = 0;
        }
        s.init_state = 1;
        if !pic_accepted {
            return;
        }
        for irq in 0..8 {
            if edge_irr & (1 << irq) != 0 {
                self.clear_isr(chip, irq);
            }
        }
    }

    /// A command/data port write (pic_ioport_write()); `addr` bit 0 selects the
    /// data port.
    fn ioport_write(&mut self, chip: usize, addr: u32, val: u8, pic_accepted: bool) {
        if addr & 1 == 0 {
            if val & 0x10 != 0 {
                // ICW1. Single mode and level-sensitive mode are not modelled (as
                // upstream, which only logs them).
                self.chip(chip).init4 = val & 1;
                self.reset(chip, pic_accepted);
            } else if val & 0x08 != 0 {
                // OCW3.
                let s = self.chip(chip);
                if val & 0x04 != 0 {
                    s.poll = 1;
                }
                if val & 0x02 != 0 {
                    s.read_reg_select = val & 1;
                }
                if val & 0x40 != 0 {
                    s.special_mask = (val >> 5) & 1;
                }
            } else {
                self.ocw2(chip, val);
            }
            return;
        }
        let s = self.chip(chip);
        match s.init_state {
            0 => {
                // OCW1: the mask. (Upstream also fires mask notifiers, which only
                // assigned devices and the PIT's lost-tick policy use.)
                s.imr = val;
                self.update_irq();
            }
            1 => {
                s.irq_base = val & 0xf8;
                s.init_state = 2;
            }
            2 => s.init_state = if s.init4 != 0 { 3 } else { 0 },
            3 => {
                s.special_fully_nested_mode = (val >> 4) & 1;
                s.auto_eoi = (val >> 1) & 1;
                s.init_state = 0;
            }
            _ => {}
        }
    }

    /// OCW2: EOIs and rotation.
    fn ocw2(&mut self, chip: usize, val: u8) {
        let cmd = val >> 5;
        let s = self.chip(chip);
        match cmd {
            0 | 4 => s.rotate_on_auto_eoi = cmd >> 2,
            1 | 5 => {
                let priority = s.priority(s.isr);
                if priority != 8 {
                    let irq = (priority + u32::from(s.priority_add)) & 7;
                    if cmd == 5 {
                        s.priority_add = ((irq + 1) & 7) as u8;
                    }
                    self.clear_isr(chip, irq);
                    self.update_irq();
                }
            }
            3 => {
                self.clear_isr(chip, u32::from(val & 7));
                self.update_irq();
            }
            6 => {
                s.priority_add = val.wrapping_add(1) & 7;
                self.update_irq();
            }
            7 => {
                let irq = val & 7;
                s.priority_add = (irq + 1) & 7;
                self.clear_isr(chip, u32::from(irq));
                self.update_irq();
            }
            _ => {}
        }
    }

    /// A read in poll mode (pic_poll_read()): acknowledges the highest request.
    fn poll_read(&mut self, chip: usize, addr: u32) -> u8 {
        match self.get_irq(chip) {
            Some(irq) => {
                let slave = addr >> 7 != 0;
                if slave {
                    self.chips[0].isr &= !(1 << 2);
                    self.chips[0].irr &= !(1 << 2);
                }
                self.chip(chip).irr &= !(1u8 << irq);
                self.clear_isr(chip, irq);
                if slave || irq != 2 {
                    self.update_irq();
                }
                0x80 | irq as u8
            }
            None => {
                self.update_irq();
                0x07
            }
        }
    }

    /// Whether `port` is one of the PIC's (the ranges kvm_pic_init() registers).
    pub fn handles_port(port: u16) -> bool {
        matches!(port, 0x20 | 0x21 | 0xa0 | 0xa1 | 0x4d0 | 0x4d1)
    }

    /// A guest write to `port` (picdev_write()). Accesses other than a byte are
    /// dropped, as upstream.
    pub fn port_write(&mut self, port: u16, len: u32, val: u8, pic_accepted: bool) {
        if len != 1 {
            return;
        }
        match port {
            0x20 | 0x21 => self.ioport_write(0, u32::from(port), val, pic_accepted),
            0xa0 | 0xa1 => self.ioport_write(1, u32::from(port), val, pic_accepted),
            0x4d0 | 0x4d1 => {
                let s = self.chip(usize::from(port & 1));
                s.elcr = val & s.elcr_mask;
            }
            _ => {}
        }
    }

    /// A guest read of `port` (picdev_read()); wider accesses read 0.
    pub fn port_read(&mut self, port: u16, len: u32) -> u8 {
        if len != 1 {
            return 0;
        }
        match port {
            0x20 | 0x21 | 0xa0 | 0xa1 => {
                let chip = usize::from(port >> 7);
                let s = self.chip(chip);
                if s.poll != 0 {
                    s.poll = 0;
                    self.poll_read(chip, u32::from(port))
                } else if port & 1 == 0 {
                    if s.read_reg_select != 0 {
                        s.isr
                    } else {
                        s.irr
                    }
                } else {
                    s.imr
                }
            }
            0x4d0 | 0x4d1 => self.chip(usize::from(port & 1)).elcr,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The BIOS/Linux init sequence: ICW1 with ICW4, bases 0x20/0x28, cascade on 2.
    fn init(p: &mut Pic, auto_eoi: bool) {
        let icw4 = 0x01 | if auto_eoi { 0x02 } else { 0 };
        for (cmd, data, base, icw3) in [(0x20, 0x21, 0x20, 0x04), (0xa0, 0xa1, 0x28, 0x02)] {
            p.port_write(cmd, 1, 0x11, true);
            p.port_write(data, 1, base, true);
            p.port_write(data, 1, icw3, true);
            p.port_write(data, 1, icw4, true);
        }
        p.port_write(0x21, 1, 0x00, true);
        p.port_write(0xa1, 1, 0x00, true);
    }

    #[test]
    fn reset_values() {
        let p = Pic::new();
        assert_eq!(p.chips[0].elcr_mask, 0xf8);
        assert_eq!(p.chips[1].elcr_mask, 0xde);
        assert!(!p.output());
    }

    #[test]
    fn edge_irq_delivers_vector_and_eoi_clears_isr() {
        let mut p = Pic::new();
        init(&mut p, false);
        assert_eq!(p.chips[0].irq_base, 0x20);
        assert_eq!(p.chips[1].irq_base, 0x28);
        assert_eq!(p.chips[0].init_state, 0);
        assert_eq!(p.set_irq(1, SOURCE_USERSPACE, true), 1);
        assert!(p.output());
        assert!(p.take_wakeup());
        assert!(!p.take_wakeup());
        assert_eq!(p.read_irq(), 0x21);
        assert!(!p.output());
        assert_eq!(p.chips[0].isr, 0x02);
        assert_eq!(p.chips[0].irr, 0);
        // The same edge again while the line stays high: nothing new.
        assert_eq!(p.set_irq(1, SOURCE_USERSPACE, true), 1);
        assert_eq!(p.chips[0].irr, 0);
        // Non-specific EOI.
        p.port_write(0x20, 1, 0x20, true);
        assert_eq!(p.chips[0].isr, 0);
        assert_eq!(p.take_acked(), 1 << 1);
        // A new edge after the line dropped.
        p.set_irq(1, SOURCE_USERSPACE, false);
        assert_eq!(p.set_irq(1, SOURCE_USERSPACE, true), 1);
        assert!(p.output());
    }

    #[test]
    fn priority_and_nesting() {
        let mut p = Pic::new();
        init(&mut p, false);
        p.set_irq(4, 0, true);
        assert_eq!(p.read_irq(), 0x24);
        // A lower-priority request waits for the EOI; a higher one preempts.
        p.set_irq(6, 0, true);
        assert!(!p.output());
        p.set_irq(3, 0, true);
        assert!(p.output());
        assert_eq!(p.read_irq(), 0x23);
        p.port_write(0x20, 1, 0x20, true); // EOI 3
        assert!(!p.output());
        p.port_write(0x20, 1, 0x20, true); // EOI 4
        assert!(p.output());
        assert_eq!(p.read_irq(), 0x26);
    }

    #[test]
    fn slave_cascades_through_master_pin_2() {
        let mut p = Pic::new();
        init(&mut p, false);
        assert_eq!(p.set_irq(14, 0, true), 1);
        assert!(p.output());
        assert_eq!(p.read_irq(), 0x2e);
        assert_eq!(p.chips[1].isr, 1 << 6);
        assert_eq!(p.chips[0].isr, 1 << 2);
        p.port_write(0xa0, 1, 0x20, true);
        p.port_write(0x20, 1, 0x20, true);
        assert_eq!(p.chips[1].isr | p.chips[0].isr, 0);
        assert_eq!(p.take_acked(), (1 << 14) | (1 << 2));
    }

    #[test]
    fn masked_irq_is_reported_and_held() {
        let mut p = Pic::new();
        init(&mut p, false);
        p.port_write(0x21, 1, 1 << 5, true);
        assert_eq!(p.port_read(0x21, 1), 1 << 5);
        assert_eq!(p.set_irq(5, 0, true), -1);
        assert!(!p.output());
        p.port_write(0x21, 1, 0, true);
        assert!(p.output());
        assert_eq!(p.read_irq(), 0x25);
    }

    #[test]
    fn level_triggered_stays_in_irr_until_line_drops() {
        let mut p = Pic::new();
        init(&mut p, false);
        // ELCR: IRQ 9 (slave pin 1) level-triggered.
        p.port_write(0x4d1, 1, 0x02, true);
        assert_eq!(p.port_read(0x4d1, 1), 0x02);
        // Bits outside the mask stay edge.
        p.port_write(0x4d0, 1, 0x07, true);
        assert_eq!(p.port_read(0x4d0, 1), 0);
        p.set_irq(9, 0, true);
        assert_eq!(p.read_irq(), 0x29);
        assert_eq!(p.chips[1].irr, 0x02);
        // Coalesced while still asserted.
        assert_eq!(p.set_irq(9, 0, true), 0);
        p.port_write(0xa0, 1, 0x20, true);
        p.port_write(0x20, 1, 0x20, true);
        assert!(p.output(), "still asserted: requests again after EOI");
        p.set_irq(9, 0, false);
        assert_eq!(p.chips[1].irr, 0);
    }

    #[test]
    fn line_level_is_the_or_of_sources() {
        let mut p = Pic::new();
        init(&mut p, false);
        p.port_write(0x4d1, 1, 0x02, true);
        p.set_irq(9, 0, true);
        p.set_irq(9, 2, true);
        p.set_irq(9, 0, false);
        assert_eq!(p.chips[1].irr, 0x02, "source 2 still asserts");
        p.set_irq(9, 2, false);
        assert_eq!(p.chips[1].irr, 0);
        assert_eq!(p.set_irq(16, 0, true), -1);
        assert_eq!(
            p.set_irq(3, 40, true),
            1,
            "an out-of-range source reads as low"
        );
        assert_eq!(p.chips[0].irr & (1 << 3), 0);
    }

    #[test]
    fn auto_eoi_and_spurious() {
        let mut p = Pic::new();
        init(&mut p, true);
        assert_eq!(p.chips[0].auto_eoi, 1);
        p.set_irq(0, 0, true);
        assert_eq!(p.read_irq(), 0x20);
        assert_eq!(p.chips[0].isr, 0);
        assert_eq!(p.take_acked(), 1);
        // INTA with nothing pending: the spurious IRQ 7.
        assert_eq!(p.read_irq(), 0x27);
    }

    #[test]
    fn ocw3_reads_isr_and_poll() {
        let mut p = Pic::new();
        init(&mut p, false);
        p.set_irq(3, 0, true);
        assert_eq!(p.port_read(0x20, 1), 0x08, "IRR by default");
        p.port_write(0x20, 1, 0x0b, true); // read ISR
        assert_eq!(p.port_read(0x20, 1), 0);
        p.port_write(0x20, 1, 0x0c, true); // poll
        assert_eq!(p.port_read(0x20, 1), 0x83);
        assert_eq!(p.chips[0].irr, 0);
        assert_eq!(p.chips[0].isr, 0);
        assert_eq!(p.chips[0].poll, 0);
        p.port_write(0x20, 1, 0x0c, true);
        assert_eq!(p.port_read(0x20, 1), 0x07, "poll with nothing pending");
        assert_eq!(p.port_read(0x20, 2), 0, "wide reads are not decoded");
    }

    #[test]
    fn specific_eoi_and_rotation() {
        let mut p = Pic::new();
        init(&mut p, false);
        p.set_irq(5, 0, true);
        p.read_irq();
        p.port_write(0x20, 1, 0x60 | 5, true); // specific EOI 5
        assert_eq!(p.chips[0].isr, 0);
        p.port_write(0x20, 1, 0xc0 | 3, true); // set priority: 4 highest
        assert_eq!(p.chips[0].priority_add, 4);
        p.set_irq(2, 0, true);
        p.set_irq(4, 0, true);
        assert_eq!(p.read_irq(), 0x24);
    }

    #[test]
    fn icw1_resets_and_clears_edge_isr_when_accepted() {
        let mut p = Pic::new();
        init(&mut p, false);
        p.set_irq(6, 0, true);
        p.port_write(0x21, 1, 0xff, true);
        p.port_write(0x20, 1, 0x11, true);
        assert_eq!(p.chips[0].imr, 0);
        assert_eq!(p.chips[0].irr, 0);
        assert_eq!(p.chips[0].init_state, 1);
        assert_eq!(p.take_acked() & (1 << 6), 1 << 6);
    }
}
