//! GSI routing for the in-kernel irqchip (upstream virt/kvm/irqchip.c and the x86
//! part of arch/x86/kvm/irq.c): which PIC/IOAPIC pins and MSI messages a GSI drives.
//!
//! Pure logic: the default table KVM_CREATE_IRQCHIP installs, the checks
//! KVM_SET_GSI_ROUTING applies to each entry (with upstream's -EINVAL cases), and the
//! MSI message to LAPIC interrupt translation that KVM_SIGNAL_MSI also uses.

use super::lapic::Irq;

/// KVM_MAX_IRQ_ROUTES: also what KVM_CAP_IRQ_ROUTING reports.
pub const MAX_ROUTES: u32 = 4096;
/// KVM_IRQ_ROUTING_IRQCHIP / _MSI.
pub const TYPE_IRQCHIP: u32 = 1;
pub const TYPE_MSI: u32 = 2;
/// KVM_MSI_VALID_DEVID: accepted on MSI entries, and ignored on x86.
pub const MSI_VALID_DEVID: u32 = 1;
pub const CHIP_PIC_MASTER: u32 = 0;
pub const CHIP_PIC_SLAVE: u32 = 1;
pub const CHIP_IOAPIC: u32 = 2;
const PIC_PINS_PER_CHIP: u32 = 8;
const IOAPIC_PINS: u32 = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `pin` as upstream keeps it: 0-15 for the PIC pair (slave pins + 8), 0-23 for
    /// the IOAPIC.
    Irqchip { chip: u32, pin: u32 },
    Msi {
        address_lo: u32,
        address_hi: u32,
        data: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub gsi: u32,
    pub target: Target,
}

/// `struct kvm_irq_routing_entry` with its union as words (`u[0..3]` are irqchip,pin
/// or address_lo,address_hi,data).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserEntry {
    pub gsi: u32,
    pub kind: u32,
    pub flags: u32,
    pub u: [u32; 3],
}

/// Records `source`'s `level` on a pin shared by several irq sources (a bit each)
/// and returns the pin's level, the OR over them (upstream __kvm_irq_line_state()).
/// A source beyond the bits never asserts.
pub fn line_state(state: &mut u32, source: u32, level: bool) -> bool {
    let bit = 1u32.checked_shl(source).unwrap_or(0);
    if level {
        *state |= bit;
    } else {
        *state &= !bit;
    }
    *state != 0
}

/// An entry KVM_SET_GSI_ROUTING refuses with -EINVAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Invalid;

/// kvm_setup_default_irq_routing(): GSI n is IOAPIC pin n (0-23) and, below 16,
/// also PIC pin n.
pub fn default_routes(mut add: impl FnMut(Route)) {
    for gsi in 0..IOAPIC_PINS {
        if gsi < 2 * PIC_PINS_PER_CHIP {
            let chip = if gsi < PIC_PINS_PER_CHIP {
                CHIP_PIC_MASTER
            } else {
                CHIP_PIC_SLAVE
            };
            add(Route {
                gsi,
                target: Target::Irqchip { chip, pin: gsi },
            });
        }
        add(Route {
            gsi,
            target: Target::Irqchip {
                chip: CHIP_IOAPIC,
                pin: gsi,
            },
        });
    }
}

/// One entry of KVM_SET_GSI_ROUTING, checked against the routes already accepted
/// from the same call (kvm_set_irq_routing(), setup_routing_entry() and x86's
/// kvm_set_routing_entry()). `split`: the irqchip is split (no PIC/IOAPIC pins).
/// `split`: the IOAPIC and PIC are userspace's; `x2apic_format`: the VM has
/// KVM_X2APIC_API_USE_32BIT_IDS.
pub fn check_entry(
    ue: &UserEntry,
    accepted: &[Route],
    split: bool,
    x2apic_format: bool,
) -> Result<Route, Invalid> {
    if ue.gsi >= MAX_ROUTES {
        return Err(Invalid);
    }
    let allowed_flags = if ue.kind == TYPE_MSI {
        MSI_VALID_DEVID
    } else {
        0
    };
    if ue.flags & !allowed_flags != 0 {
        return Err(Invalid);
    }
    // A GSI maps to each irqchip at most once, and to a non-irqchip target alone.
    for r in accepted.iter().filter(|r| r.gsi == ue.gsi) {
        match r.target {
            Target::Irqchip { chip, .. } if ue.kind == TYPE_IRQCHIP && chip != ue.u[0] => {}
            _ => return Err(Invalid),
        }
    }
    let target = match ue.kind {
        TYPE_IRQCHIP => {
            if split {
                return Err(Invalid);
            }
            let (chip, pin) = (ue.u[0], ue.u[1]);
            let pin = match chip {
                CHIP_PIC_MASTER | CHIP_PIC_SLAVE if pin < PIC_PINS_PER_CHIP => {
                    pin + if chip == CHIP_PIC_SLAVE {
                        PIC_PINS_PER_CHIP
                    } else {
                        0
                    }
                }
                CHIP_IOAPIC if pin < IOAPIC_PINS => pin,
                _ => return Err(Invalid),
            };
            Target::Irqchip { chip, pin }
        }
        // With KVM_CAP_X2APIC_API's 32-bit IDs, address_hi's low byte must be 0
        // (kvm_msi_route_invalid()): its bits 31:8 are destination bits.
        TYPE_MSI if x2apic_format && msi_route_invalid(ue.u[1]) => return Err(Invalid),
        TYPE_MSI => Target::Msi {
            address_lo: ue.u[0],
            address_hi: ue.u[1],
            data: ue.u[2],
        },
        _ => return Err(Invalid),
    };
    Ok(Route {
        gsi: ue.gsi,
        target,
    })
}

/// kvm_msi_route_invalid() under KVM_X2APIC_API_USE_32BIT_IDS: address_hi's
/// reserved low byte is set.
pub fn msi_route_invalid(address_hi: u32) -> bool {
    address_hi & 0xff != 0
}

/// The LAPIC interrupt an MSI message asks for (kvm_msi_to_lapic_irq()): the
/// 8-bit destination, extended by address_hi bits 31:8 with `x2apic_format`
/// (x86_msi_msg_get_destid()).
pub fn msi_irq(address_lo: u32, address_hi: u32, data: u32, x2apic_format: bool) -> Irq {
    let ext = if x2apic_format {
        address_hi & 0xffff_ff00
    } else {
        0
    };
    Irq {
        vector: data as u8,
        delivery_mode: ((data >> 8) & 7) as u8,
        dest_mode_logical: address_lo & (1 << 2) != 0,
        level: true,
        trig_level: data & (1 << 15) != 0,
        shorthand: 0,
        dest_id: ext | ((address_lo >> 12) & 0xff),
        msi_redir_hint: address_lo & (1 << 3) != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn irqchip(gsi: u32, chip: u32, pin: u32) -> UserEntry {
        UserEntry {
            gsi,
            kind: TYPE_IRQCHIP,
            flags: 0,
            u: [chip, pin, 0],
        }
    }

    #[test]
    fn default_table() {
        let mut v = Vec::new();
        default_routes(|r| v.push(r));
        assert_eq!(v.len(), 16 + 24);
        assert!(v.contains(&Route {
            gsi: 9,
            target: Target::Irqchip {
                chip: CHIP_PIC_SLAVE,
                pin: 9
            }
        }));
        assert!(v.contains(&Route {
            gsi: 23,
            target: Target::Irqchip {
                chip: CHIP_IOAPIC,
                pin: 23
            }
        }));
        assert_eq!(v.iter().filter(|r| r.gsi == 16).count(), 1);
    }

    #[test]
    fn irqchip_entries() {
        let r = check_entry(&irqchip(10, CHIP_PIC_SLAVE, 2), &[], false, false);
        assert_eq!(
            r,
            Ok(Route {
                gsi: 10,
                target: Target::Irqchip {
                    chip: CHIP_PIC_SLAVE,
                    pin: 10
                }
            })
        );
        assert_eq!(
            check_entry(&irqchip(1, CHIP_PIC_MASTER, 8), &[], false, false),
            Err(Invalid)
        );
        assert_eq!(
            check_entry(&irqchip(1, CHIP_IOAPIC, 24), &[], false, false),
            Err(Invalid)
        );
        assert_eq!(
            check_entry(&irqchip(1, 3, 0), &[], false, false),
            Err(Invalid)
        );
        assert_eq!(
            check_entry(&irqchip(1, CHIP_IOAPIC, 1), &[], true, false),
            Err(Invalid)
        );
        assert_eq!(
            check_entry(&irqchip(MAX_ROUTES, CHIP_IOAPIC, 1), &[], false, false),
            Err(Invalid)
        );
        let mut e = irqchip(1, CHIP_IOAPIC, 1);
        e.flags = MSI_VALID_DEVID;
        assert_eq!(check_entry(&e, &[], false, false), Err(Invalid));
        e.kind = 7;
        e.flags = 0;
        assert_eq!(check_entry(&e, &[], false, false), Err(Invalid));
    }

    #[test]
    fn duplicates() {
        let pic = check_entry(&irqchip(0, CHIP_PIC_MASTER, 0), &[], false, false);
        let Ok(pic) = pic else {
            panic!("PIC route refused");
        };
        // QEMU's table: GSI 0 on PIC pin 0 and IOAPIC pin 2.
        let io = check_entry(&irqchip(0, CHIP_IOAPIC, 2), &[pic], false, false);
        assert!(io.is_ok());
        assert_eq!(
            check_entry(&irqchip(0, CHIP_PIC_MASTER, 1), &[pic], false, false),
            Err(Invalid)
        );
        let msi = UserEntry {
            gsi: 0,
            kind: TYPE_MSI,
            flags: 0,
            u: [0xfee0_0000, 0, 0x30],
        };
        assert_eq!(check_entry(&msi, &[pic], false, false), Err(Invalid));
        let Ok(m) = check_entry(&UserEntry { gsi: 30, ..msi }, &[pic], false, false) else {
            panic!("MSI route refused");
        };
        assert_eq!(
            check_entry(&irqchip(30, CHIP_IOAPIC, 3), &[m], false, false),
            Err(Invalid)
        );
        let devid = UserEntry {
            gsi: 31,
            flags: MSI_VALID_DEVID,
            ..msi
        };
        assert!(check_entry(&devid, &[], true, false).is_ok());
        // 32-bit x2APIC IDs: address_hi's low byte is reserved.
        let hi = UserEntry {
            gsi: 32,
            u: [0xfee0_0000, 0x1_00, 0x30],
            ..msi
        };
        assert!(check_entry(&hi, &[], false, true).is_ok());
        let bad = UserEntry {
            u: [0xfee0_0000, 0x1_01, 0x30],
            ..hi
        };
        assert_eq!(check_entry(&bad, &[], false, true), Err(Invalid));
        assert!(check_entry(&bad, &[], false, false).is_ok());
    }

    #[test]
    fn msi_message() {
        // Physical destination 3, vector 0x41, level, lowest priority, logical.
        let irq = msi_irq(0xfee0_300c, 0, 0x8141, false);
        assert_eq!(irq.dest_id, 3);
        assert_eq!(irq.vector, 0x41);
        assert!(irq.trig_level);
        assert_eq!(irq.delivery_mode, 1);
        assert!(irq.dest_mode_logical);
        assert!(irq.msi_redir_hint);
        assert!(irq.level);
        // address_hi extends the destination only with 32-bit x2APIC IDs.
        assert_eq!(msi_irq(0xfee0_3000, 0x1200, 0x41, true).dest_id, 0x1203);
        assert_eq!(msi_irq(0xfee0_3000, 0x1200, 0x41, false).dest_id, 3);
    }
}
