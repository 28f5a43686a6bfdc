//! The IOAPIC as KVM models it (upstream arch/x86/kvm/ioapic.c).
//!
//! Pure logic: the 24 redirection entries in the `struct kvm_ioapic_state` layout,
//! the per-source line levels, remote IRR and the EOI storm throttle. Delivery to the
//! LAPICs is the caller's, through [`Apics`]; so are the lock and the MMIO decode of
//! the 256-byte window at `base_address`.
//!
//! Not modelled: the RTC (GSI 8) coalescing that KVM_IRQ_LINE_STATUS reports from EOI
//! tracking (GSI 8 reports like any other edge pin), irqfd resamplers and mask
//! notifiers (no irqfd, no assigned devices).

use super::lapic::Irq;

pub const NUM_PINS: usize = 24;
/// IOAPIC_DEFAULT_BASE_ADDRESS.
pub const DEFAULT_BASE: u64 = 0xfec0_0000;
/// IOAPIC_MEM_LENGTH.
pub const MEM_LENGTH: u64 = 0x100;
const VERSION_ID: u32 = 0x11;
const REG_SELECT: u64 = 0x00;
const REG_WINDOW: u64 = 0x10;
const REG_APIC_ID: u32 = 0x00;
const REG_VERSION: u32 = 0x01;
const REG_ARB_ID: u32 = 0x02;
/// IOAPIC_SUCCESSIVE_IRQ_MAX_COUNT: after this many EOIs that re-deliver at once, the
/// next delivery waits (upstream: a 10 ms delayed work) so a guest that mishandles a
/// level interrupt still makes progress.
const SUCCESSIVE_IRQ_MAX: u32 = 10_000;

/// Redirection entry fields (union kvm_ioapic_redirect_entry).
pub mod entry {
    pub const VECTOR: u64 = 0xff;
    pub const DELIVERY_SHIFT: u32 = 8;
    pub const DEST_LOGICAL: u64 = 1 << 11;
    pub const DELIVERY_STATUS: u64 = 1 << 12;
    pub const REMOTE_IRR: u64 = 1 << 14;
    pub const TRIG_LEVEL: u64 = 1 << 15;
    pub const MASKED: u64 = 1 << 16;
    pub const DEST_SHIFT: u32 = 56;
}
use entry::*;

/// The LAPICs, as the IOAPIC sees them.
pub trait Apics {
    /// Delivers `irq` from a device (no source APIC): -1 when no LAPIC is a
    /// destination, else how many accepted it (kvm_irq_delivery_to_apic()).
    fn deliver(&mut self, irq: &Irq) -> i32;
}

/// `struct kvm_ioapic_state`, the part userspace sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State {
    pub base_address: u64,
    pub ioregsel: u32,
    pub id: u32,
    pub irr: u32,
    pub redirtbl: [u64; NUM_PINS],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ioapic {
    s: State,
    /// Edge pins delivered since they were last raised (hidden from GET's irr).
    irr_delivered: u32,
    /// Per pin, a bit per irq source asserting it.
    irq_states: [u32; NUM_PINS],
    /// Successive EOIs that re-delivered at once, per pin.
    irq_eoi: [u32; NUM_PINS],
    /// The storm throttle held back a delivery: run [`Ioapic::eoi_inject`] later.
    delayed_inject: bool,
}

impl Default for Ioapic {
    fn default() -> Self {
        Self::new()
    }
}

/// The LAPIC message for a redirection entry (ioapic_service()).
fn irq_of(e: u64) -> Irq {
    Irq {
        vector: (e & VECTOR) as u8,
        delivery_mode: ((e >> DELIVERY_SHIFT) & 7) as u8,
        dest_mode_logical: e & DEST_LOGICAL != 0,
        level: true,
        trig_level: e & TRIG_LEVEL != 0,
        shorthand: 0,
        dest_id: (e >> DEST_SHIFT) as u32,
        msi_redir_hint: false,
    }
}

impl Ioapic {
    /// kvm_ioapic_init() + kvm_ioapic_reset(): every entry masked.
    pub fn new() -> Self {
        Ioapic {
            s: State {
                base_address: DEFAULT_BASE,
                ioregsel: 0,
                id: 0,
                irr: 0,
                redirtbl: [MASKED; NUM_PINS],
            },
            irr_delivered: 0,
            irq_states: [0; NUM_PINS],
            irq_eoi: [0; NUM_PINS],
            delayed_inject: false,
        }
    }

    pub fn base(&self) -> u64 {
        self.s.base_address
    }

    /// Whether `gpa` is in the register window (ioapic_in_range()).
    pub fn in_range(&self, gpa: u64) -> bool {
        gpa >= self.s.base_address && gpa - self.s.base_address < MEM_LENGTH
    }

    pub fn redirect_entry(&self, pin: usize) -> Option<u64> {
        self.s.redirtbl.get(pin).copied()
    }

    /// KVM_GET_IRQCHIP (kvm_get_ioapic()): delivered edges are not pending.
    pub fn get_state(&self) -> State {
        let mut s = self.s;
        s.irr &= !self.irr_delivered;
        s
    }

    /// KVM_SET_IRQCHIP (kvm_set_ioapic()): the pending pins are raised again.
    pub fn set_state(&mut self, s: &State, apics: &mut dyn Apics) {
        self.s = *s;
        self.s.irr = 0;
        self.irr_delivered = 0;
        for pin in 0..NUM_PINS as u32 {
            if s.irr & (1 << pin) != 0 {
                self.set_irq_level(pin, true, apics);
            }
        }
    }

    /// Services `pin` if it is unmasked and not waiting for an EOI: -1 when not
    /// delivered, else as [`Apics::deliver`] (ioapic_service()).
    fn service(&mut self, pin: u32, apics: &mut dyn Apics) -> i32 {
        let Some(e) = self.s.redirtbl.get(pin as usize).copied() else {
            return -1;
        };
        let level = e & TRIG_LEVEL != 0;
        if e & MASKED != 0 || (level && e & REMOTE_IRR != 0) {
            return -1;
        }
        if !level {
            self.irr_delivered |= 1 << pin;
        }
        let ret = apics.deliver(&irq_of(e));
        // As upstream, "no destination" (-1) also leaves remote IRR set.
        if ret != 0 && level {
            if let Some(e) = self.s.redirtbl.get_mut(pin as usize) {
                *e |= REMOTE_IRR;
            }
        }
        ret
    }

    /// ioapic_set_irq(): 1 delivered (or lowered), 0 coalesced, -1 not delivered.
    fn set_irq_level(&mut self, pin: u32, level: bool, apics: &mut dyn Apics) -> i32 {
        let Some(e) = self.s.redirtbl.get(pin as usize).copied() else {
            return -1;
        };
        let mask = 1u32 << pin;
        if !level {
            self.s.irr &= !mask;
            return 1;
        }
        let old_irr = self.s.irr;
        self.s.irr |= mask;
        if e & TRIG_LEVEL == 0 {
            self.irr_delivered &= !mask;
            // An edge that is still pending (masked) coalesces.
            if old_irr == self.s.irr {
                return 0;
            }
        }
        self.service(pin, apics)
    }

    /// A line change from `source` (kvm_ioapic_set_irq()): the line level is the OR
    /// over all sources.
    pub fn set_irq(&mut self, pin: u32, source: u32, level: bool, apics: &mut dyn Apics) -> i32 {
        let Some(state) = self.irq_states.get_mut(pin as usize) else {
            return -1;
        };
        let line = super::irq_routing::line_state(state, source, level);
        self.set_irq_level(pin, line, apics)
    }

    fn read_indirect(&self) -> u32 {
        match self.s.ioregsel {
            REG_VERSION => ((NUM_PINS as u32 - 1) << 16) | VERSION_ID,
            REG_APIC_ID | REG_ARB_ID => (self.s.id & 0xf) << 24,
            sel => {
                let index = (sel.wrapping_sub(0x10) >> 1) as usize;
                let e = self.s.redirtbl.get(index).copied().unwrap_or(!0);
                if sel & 1 != 0 {
                    (e >> 32) as u32
                } else {
                    e as u32
                }
            }
        }
    }

    fn write_indirect(&mut self, val: u32, apics: &mut dyn Apics) {
        match self.s.ioregsel {
            REG_VERSION | REG_ARB_ID => {}
            REG_APIC_ID => self.s.id = (val >> 24) & 0xf,
            sel => {
                let index = (sel.wrapping_sub(0x10) >> 1) as usize;
                let Some(e) = self.s.redirtbl.get_mut(index) else {
                    return;
                };
                let old = *e;
                let mut new = if sel & 1 != 0 {
                    (old & 0xffff_ffff) | (u64::from(val) << 32)
                } else {
                    (old & !0xffff_ffff) | u64::from(val)
                };
                // Remote IRR and delivery status are read-only...
                new = (new & !(REMOTE_IRR | DELIVERY_STATUS))
                    | (old & (REMOTE_IRR | DELIVERY_STATUS));
                // ...but an entry made edge-triggered drops remote IRR, which Linux and
                // Xen rely on as an EOI for IOAPICs without an EOI register.
                if new & TRIG_LEVEL == 0 {
                    new &= !REMOTE_IRR;
                }
                *e = new;
                let pin = index as u32;
                if new & TRIG_LEVEL != 0
                    && self.s.irr & (1 << pin) != 0
                    && new & (MASKED | REMOTE_IRR) == 0
                {
                    // A level request that waited while masked. Upstream first asks
                    // an irqfd resampler; with none it injects, as here.
                    self.service(pin, apics);
                }
            }
        }
    }

    /// A guest MMIO read at `gpa` of `len` bytes (ioapic_mmio_read()).
    pub fn mmio_read(&self, gpa: u64, len: u32) -> u64 {
        let result = match gpa & 0xff {
            REG_SELECT => self.s.ioregsel,
            REG_WINDOW => self.read_indirect(),
            _ => 0,
        };
        match len {
            1 => u64::from(result & 0xff),
            2 => u64::from(result & 0xffff),
            _ => u64::from(result),
        }
    }

    /// A guest MMIO write (ioapic_mmio_write()); 8-byte writes use the low half.
    pub fn mmio_write(&mut self, gpa: u64, len: u32, val: u64, apics: &mut dyn Apics) {
        let data = match len {
            8 | 4 => val as u32,
            2 => u32::from(val as u16),
            1 => u32::from(val as u8),
            _ => return,
        };
        match gpa & 0xff {
            REG_SELECT => self.s.ioregsel = data & 0xff,
            REG_WINDOW => self.write_indirect(data, apics),
            _ => {}
        }
    }

    /// The pins routed to `vector` (bit n = pin n): an EOI of it runs their ack
    /// notifiers before [`Ioapic::update_eoi`] looks at their lines, as upstream's
    /// kvm_ioapic_update_eoi_one() (a notifier may lower the line).
    pub fn pins_of_vector(&self, vector: u8) -> u32 {
        let mut pins = 0;
        for (pin, e) in self.s.redirtbl.iter().enumerate().take(NUM_PINS) {
            if (*e & VECTOR) as u8 == vector {
                pins |= 1 << pin;
            }
        }
        pins
    }

    /// A LAPIC EOI of `vector` (kvm_ioapic_update_eoi()). `level`: the vector was
    /// level-triggered in the LAPIC's TMR; `suppress_broadcast`: the LAPIC has
    /// directed EOI on and the guest EOIs the IOAPIC itself. Returns the pins routed
    /// to `vector` (bit n = pin n), whose ack notifiers upstream runs.
    pub fn update_eoi(
        &mut self,
        vector: u8,
        level: bool,
        suppress_broadcast: bool,
        apics: &mut dyn Apics,
    ) -> u32 {
        let mut acked = 0;
        for pin in 0..NUM_PINS as u32 {
            let Some(e) = self.s.redirtbl.get_mut(pin as usize) else {
                continue;
            };
            if (*e & VECTOR) as u8 != vector {
                continue;
            }
            acked |= 1 << pin;
            if !level || suppress_broadcast {
                continue;
            }
            *e &= !REMOTE_IRR;
            let masked = *e & MASKED != 0;
            let Some(count) = self.irq_eoi.get_mut(pin as usize) else {
                continue;
            };
            if !masked && self.s.irr & (1 << pin) != 0 {
                *count += 1;
                if *count == SUCCESSIVE_IRQ_MAX {
                    *count = 0;
                    self.delayed_inject = true;
                } else {
                    self.service(pin, apics);
                }
            } else {
                *count = 0;
            }
        }
        acked
    }

    /// Whether the storm throttle holds a delivery back for [`Ioapic::eoi_inject`].
    pub fn take_delayed_inject(&mut self) -> bool {
        core::mem::take(&mut self.delayed_inject)
    }

    /// The delayed re-delivery (kvm_ioapic_eoi_inject_work()).
    pub fn eoi_inject(&mut self, apics: &mut dyn Apics) {
        for pin in 0..NUM_PINS as u32 {
            let Some(e) = self.s.redirtbl.get(pin as usize).copied() else {
                continue;
            };
            if e & TRIG_LEVEL != 0 && self.s.irr & (1 << pin) != 0 && e & REMOTE_IRR == 0 {
                self.service(pin, apics);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// Records deliveries; answers with `ret`.
    struct Rec {
        got: Vec<Irq>,
        ret: i32,
    }

    impl Apics for Rec {
        fn deliver(&mut self, irq: &Irq) -> i32 {
            self.got.push(*irq);
            self.ret
        }
    }

    fn rec() -> Rec {
        Rec {
            got: Vec::new(),
            ret: 1,
        }
    }

    fn write_entry(io: &mut Ioapic, pin: u32, e: u64, a: &mut Rec) {
        io.mmio_write(DEFAULT_BASE, 4, u64::from(0x10 + 2 * pin), a);
        io.mmio_write(DEFAULT_BASE + 0x10, 4, e & 0xffff_ffff, a);
        io.mmio_write(DEFAULT_BASE, 4, u64::from(0x11 + 2 * pin), a);
        io.mmio_write(DEFAULT_BASE + 0x10, 4, e >> 32, a);
    }

    #[test]
    fn registers() {
        let mut io = Ioapic::new();
        let mut a = rec();
        assert!(io.in_range(DEFAULT_BASE + 0xff));
        assert!(!io.in_range(DEFAULT_BASE + 0x100));
        io.mmio_write(DEFAULT_BASE, 4, 1, &mut a);
        assert_eq!(io.mmio_read(DEFAULT_BASE, 4), 1);
        assert_eq!(io.mmio_read(DEFAULT_BASE + 0x10, 4), 0x0017_0011);
        io.mmio_write(DEFAULT_BASE, 4, 0, &mut a);
        io.mmio_write(DEFAULT_BASE + 0x10, 4, 0x0500_0000, &mut a);
        assert_eq!(io.mmio_read(DEFAULT_BASE + 0x10, 4), 0x0500_0000);
        assert_eq!(io.get_state().id, 5);
        // Entries reset masked; one past the table reads all ones.
        io.mmio_write(DEFAULT_BASE, 4, 0x10, &mut a);
        assert_eq!(io.mmio_read(DEFAULT_BASE + 0x10, 4), 0x1_0000);
        io.mmio_write(DEFAULT_BASE, 4, 0x10 + 48, &mut a);
        assert_eq!(io.mmio_read(DEFAULT_BASE + 0x10, 4), 0xffff_ffff);
        assert_eq!(io.mmio_read(DEFAULT_BASE + 0x10, 1), 0xff);
        assert_eq!(io.mmio_read(DEFAULT_BASE + 0x20, 4), 0);
        assert!(a.got.is_empty());
    }

    #[test]
    fn edge_delivery_and_coalescing() {
        let mut io = Ioapic::new();
        let mut a = rec();
        write_entry(&mut io, 4, (3u64 << DEST_SHIFT) | 0x34, &mut a);
        assert_eq!(io.set_irq(4, 0, true, &mut a), 1);
        assert_eq!(a.got.len(), 1);
        let irq = a.got[0];
        assert_eq!((irq.vector, irq.dest_id, irq.trig_level), (0x34, 3, false));
        assert_eq!(io.get_state().irr, 0, "a delivered edge is not pending");
        // Still high: no new edge.
        assert_eq!(io.set_irq(4, 0, true, &mut a), 0);
        assert_eq!(a.got.len(), 1);
        io.set_irq(4, 0, false, &mut a);
        assert_eq!(io.set_irq(4, 0, true, &mut a), 1);
        assert_eq!(a.got.len(), 2);
    }

    #[test]
    fn masked_edge_is_held() {
        let mut io = Ioapic::new();
        let mut a = rec();
        assert_eq!(io.set_irq(1, 0, true, &mut a), -1);
        assert_eq!(io.get_state().irr, 2);
        io.set_irq(1, 0, false, &mut a);
        assert_eq!(io.get_state().irr, 0);
    }

    #[test]
    fn level_remote_irr_and_eoi() {
        let mut io = Ioapic::new();
        let mut a = rec();
        write_entry(&mut io, 9, TRIG_LEVEL | 0x41, &mut a);
        assert_eq!(io.set_irq(9, 0, true, &mut a), 1);
        assert!(io.redirect_entry(9).is_some_and(|e| e & REMOTE_IRR != 0));
        // Waits for the EOI.
        assert_eq!(io.set_irq(9, 0, true, &mut a), -1);
        assert_eq!(a.got.len(), 1);
        // An edge EOI or a suppressed broadcast does nothing.
        assert_eq!(io.update_eoi(0x41, false, false, &mut a), 1 << 9);
        io.update_eoi(0x41, true, true, &mut a);
        assert_eq!(io.update_eoi(0x42, true, false, &mut a), 0);
        assert_eq!(a.got.len(), 1);
        // Still asserted: the EOI delivers again.
        io.update_eoi(0x41, true, false, &mut a);
        assert_eq!(a.got.len(), 2);
        io.set_irq(9, 0, false, &mut a);
        io.update_eoi(0x41, true, false, &mut a);
        assert_eq!(a.got.len(), 2);
        assert!(io.redirect_entry(9).is_some_and(|e| e & REMOTE_IRR == 0));
    }

    #[test]
    fn guest_cannot_write_remote_irr_and_edge_clears_it() {
        let mut io = Ioapic::new();
        let mut a = rec();
        write_entry(&mut io, 2, TRIG_LEVEL | REMOTE_IRR | 0x30, &mut a);
        assert!(io.redirect_entry(2).is_some_and(|e| e & REMOTE_IRR == 0));
        io.set_irq(2, 0, true, &mut a);
        assert!(io.redirect_entry(2).is_some_and(|e| e & REMOTE_IRR != 0));
        write_entry(&mut io, 2, 0x30, &mut a);
        assert!(io.redirect_entry(2).is_some_and(|e| e & REMOTE_IRR == 0));
    }

    #[test]
    fn unmasking_a_pending_level_delivers() {
        let mut io = Ioapic::new();
        let mut a = rec();
        write_entry(&mut io, 5, TRIG_LEVEL | MASKED | 0x50, &mut a);
        io.set_irq(5, 0, true, &mut a);
        assert!(a.got.is_empty());
        write_entry(&mut io, 5, TRIG_LEVEL | 0x50, &mut a);
        assert_eq!(a.got.len(), 1);
        assert!(a.got[0].trig_level);
    }

    #[test]
    fn no_destination_still_sets_remote_irr() {
        let mut io = Ioapic::new();
        let mut a = rec();
        a.ret = -1;
        write_entry(&mut io, 3, TRIG_LEVEL | 0x33, &mut a);
        assert_eq!(io.set_irq(3, 0, true, &mut a), -1);
        assert!(io.redirect_entry(3).is_some_and(|e| e & REMOTE_IRR != 0));
    }

    #[test]
    fn sources_or_together() {
        let mut io = Ioapic::new();
        let mut a = rec();
        write_entry(&mut io, 7, TRIG_LEVEL | MASKED | 0x70, &mut a);
        io.set_irq(7, 0, true, &mut a);
        io.set_irq(7, 1, true, &mut a);
        io.set_irq(7, 0, false, &mut a);
        assert_eq!(io.get_state().irr, 1 << 7);
        io.set_irq(7, 1, false, &mut a);
        assert_eq!(io.get_state().irr, 0);
        assert_eq!(io.set_irq(24, 0, true, &mut a), -1);
    }

    #[test]
    fn set_state_reinjects_pending() {
        let mut io = Ioapic::new();
        let mut a = rec();
        let mut s = io.get_state();
        s.redirtbl[6] = 0x66;
        s.irr = 1 << 6;
        io.set_state(&s, &mut a);
        assert_eq!(a.got.len(), 1);
        assert_eq!(a.got[0].vector, 0x66);
    }

    #[test]
    fn eoi_storm_is_throttled() {
        let mut io = Ioapic::new();
        let mut a = rec();
        write_entry(&mut io, 9, TRIG_LEVEL | 0x41, &mut a);
        io.set_irq(9, 0, true, &mut a);
        for _ in 0..SUCCESSIVE_IRQ_MAX - 1 {
            io.update_eoi(0x41, true, false, &mut a);
        }
        assert_eq!(a.got.len() as u32, SUCCESSIVE_IRQ_MAX);
        assert!(!io.take_delayed_inject());
        io.update_eoi(0x41, true, false, &mut a);
        assert_eq!(a.got.len() as u32, SUCCESSIVE_IRQ_MAX);
        assert!(io.take_delayed_inject());
        io.eoi_inject(&mut a);
        assert_eq!(a.got.len() as u32, SUCCESSIVE_IRQ_MAX + 1);
    }
}
