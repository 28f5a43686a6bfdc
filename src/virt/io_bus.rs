//! The ranges of an in-kernel I/O bus (upstream virt/kvm/kvm_main.c: struct
//! kvm_io_range, kvm_io_bus_cmp(), kvm_io_bus_get_first_dev()): which registered
//! devices an access at `addr` of `len` bytes is offered to, in order. Devices
//! are tried until one does not decline (-EOPNOTSUPP), as __kvm_io_bus_write().

use core::cmp::Ordering;

/// Upstream NR_IOBUS_DEVS: at most this many devices on one bus.
pub const NR_IOBUS_DEVS: usize = 1000;

/// Which bus (upstream enum kvm_bus). Every VM has all of them, as upstream's;
/// on x86 nothing is dispatched on the virtio-ccw notify bus (s390's hypercall),
/// but KVM_IOEVENTFD can register there. No fast-MMIO bus: a zero-length MMIO
/// ioeventfd sits on the MMIO bus, which SVM's MMIO exits reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bus {
    Mmio = 0,
    Pio = 1,
    VirtioCcwNotify = 2,
}

/// A registered range (struct kvm_io_range, without its device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoRange {
    pub addr: u64,
    pub len: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum BusError {
    /// The bus has [`NR_IOBUS_DEVS`] devices (-ENOSPC).
    Full,
}

/// kvm_io_bus_cmp(): how access (or new range) `r1` orders against registered
/// range `r2`. Equal means `r1` is offered to `r2`'s device: with `r2.len == 0`
/// (a zero-length ioeventfd) an access at exactly its address, whatever its
/// length; otherwise an access that starts and ends inside the range.
pub fn cmp(r1: &IoRange, r2: &IoRange) -> Ordering {
    let (mut a1, mut a2) = (r1.addr, r2.addr);
    if a1 < a2 {
        return Ordering::Less;
    }
    if r2.len != 0 {
        a1 = a1.wrapping_add(u64::from(r1.len));
        a2 = a2.wrapping_add(u64::from(r2.len));
    }
    if a1 > a2 {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

/// Where a new range goes (kvm_io_bus_register_dev(): before the first one that
/// compares greater), or `Err` when the bus is full.
pub fn insert_index(ranges: &[IoRange], new: &IoRange) -> Result<usize, BusError> {
    if ranges.len() >= NR_IOBUS_DEVS {
        return Err(BusError::Full);
    }
    Ok(ranges
        .iter()
        .position(|r| cmp(r, new) == Ordering::Greater)
        .unwrap_or(ranges.len()))
}

/// The registered ranges an access is offered to, first to last
/// (kvm_io_bus_get_first_dev() and the loop after it): the first index whose
/// range compares equal, then every following one that does.
pub fn matches<'a>(ranges: &'a [IoRange], access: IoRange) -> impl Iterator<Item = usize> + 'a {
    // The sorted order makes the equal ones contiguous only in the common case;
    // upstream bsearches for one and walks back to the first. A linear scan for
    // the first keeps the same answer without relying on bsearch landing inside
    // the run.
    let hit = move |i: &usize| {
        ranges
            .get(*i)
            .is_some_and(|r| cmp(&access, r) == Ordering::Equal)
    };
    let first = (0..ranges.len()).find(hit);
    first
        .into_iter()
        .flat_map(move |f| (f..ranges.len()).take_while(hit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn r(addr: u64, len: u32) -> IoRange {
        IoRange { addr, len }
    }

    fn all(ranges: &[IoRange], addr: u64, len: u32) -> Vec<usize> {
        matches(ranges, r(addr, len)).collect()
    }

    #[test]
    fn cmp_as_upstream() {
        // Accesses inside the range [0x20, 0x22).
        assert_eq!(cmp(&r(0x20, 1), &r(0x20, 2)), Ordering::Equal);
        assert_eq!(cmp(&r(0x21, 1), &r(0x20, 2)), Ordering::Equal);
        assert_eq!(cmp(&r(0x20, 2), &r(0x20, 2)), Ordering::Equal);
        // Before it, or ending past it.
        assert_eq!(cmp(&r(0x1f, 1), &r(0x20, 2)), Ordering::Less);
        assert_eq!(cmp(&r(0x1f, 2), &r(0x20, 2)), Ordering::Less);
        assert_eq!(cmp(&r(0x21, 2), &r(0x20, 2)), Ordering::Greater);
        assert_eq!(cmp(&r(0x20, 4), &r(0x20, 2)), Ordering::Greater);
        // A zero-length range takes any access at exactly its address.
        assert_eq!(cmp(&r(0x1000, 8), &r(0x1000, 0)), Ordering::Equal);
        assert_eq!(cmp(&r(0x1000, 1), &r(0x1000, 0)), Ordering::Equal);
        assert_eq!(cmp(&r(0x1004, 4), &r(0x1000, 0)), Ordering::Greater);
    }

    #[test]
    fn pic_ports() {
        let mut t = Vec::new();
        for (a, l) in [(0xa0, 2), (0x4d0, 2), (0x20, 2)] {
            let i = insert_index(&t, &r(a, l)).unwrap();
            t.insert(i, r(a, l));
        }
        assert_eq!(t, [r(0x20, 2), r(0xa0, 2), r(0x4d0, 2)]);
        assert_eq!(all(&t, 0x20, 1), [0]);
        assert_eq!(all(&t, 0x21, 1), [0]);
        assert_eq!(all(&t, 0xa1, 1), [1]);
        assert_eq!(all(&t, 0x4d1, 1), [2]);
        assert!(all(&t, 0x22, 1).is_empty());
        assert!(all(&t, 0x60, 1).is_empty());
    }

    #[test]
    fn same_range_devices_in_order() {
        // Two ioeventfds at one address (different datamatch) and an IOAPIC-like
        // window: all of one address are offered, in registration order, as
        // long as they stand together (upstream walks one run of the table).
        let mut t = Vec::new();
        for x in [
            r(0xfec0_0000, 0x100),
            r(0x1000, 4),
            r(0x1000, 0),
            r(0x1000, 4),
        ] {
            let i = insert_index(&t, &x).unwrap();
            t.insert(i, x);
        }
        assert_eq!(
            t,
            [
                r(0x1000, 4),
                r(0x1000, 0),
                r(0x1000, 4),
                r(0xfec0_0000, 0x100)
            ]
        );
        assert_eq!(all(&t, 0x1000, 4), [0, 1, 2]);
        assert_eq!(all(&t, 0x1000, 2), [0, 1, 2]);
        // Past the zero-length one's address the run ends, as upstream's does.
        assert_eq!(all(&t, 0x1002, 2), [0]);
        assert_eq!(all(&t, 0xfec0_0010, 4), [3]);
        assert_eq!(all(&t, 0xfec0_00fc, 4), [3]);
        assert!(all(&t, 0xfec0_0100, 4).is_empty());
        assert!(all(&t, 0xfec0_00fe, 4).is_empty());
    }

    #[test]
    fn full() {
        let t = std::vec![r(0, 1); NR_IOBUS_DEVS];
        assert_eq!(insert_index(&t, &r(1, 1)), Err(BusError::Full));
        assert_eq!(insert_index(&t[1..], &r(1, 1)), Ok(NR_IOBUS_DEVS - 1));
    }
}
