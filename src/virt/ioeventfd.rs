//! ioeventfd rules (upstream virt/kvm/eventfd.c: kvm_assign_ioeventfd(),
//! ioeventfd_in_range(), ioeventfd_check_collision(), kvm_deassign_ioeventfd_idx()):
//! what KVM_IOEVENTFD accepts, which guest writes signal an ioeventfd, which
//! registrations clash, and which one a deassign names.

use crate::io_bus::Bus;

/// `struct kvm_ioeventfd` flags (include/uapi/linux/kvm.h, `enum kvm_ioeventfd_flag_nr_*`).
pub const FLAG_DATAMATCH: u32 = 1 << 0;
pub const FLAG_PIO: u32 = 1 << 1;
pub const FLAG_DEASSIGN: u32 = 1 << 2;
pub const FLAG_VIRTIO_CCW_NOTIFY: u32 = 1 << 3;
/// `kvm_ioeventfd_flag_nr_fast_mmio`: has no macro of its own and no meaning on its
/// own (a zero-length MMIO ioeventfd is the fast kind), but is a valid flag.
pub const FLAG_FAST_MMIO: u32 = 1 << 4;
/// KVM_IOEVENTFD_VALID_FLAG_MASK: every flag below `kvm_ioeventfd_flag_nr_max`.
pub const VALID_FLAG_MASK: u32 = (FLAG_FAST_MMIO << 1) - 1;

/// Why KVM_IOEVENTFD refuses an assignment (each is -EINVAL upstream).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Not 0, 1, 2, 4 or 8 bytes.
    Length,
    /// `addr + len` wraps.
    Overflow,
    /// A flag upstream does not know.
    Flags,
    /// Length 0 (any length) with DATAMATCH.
    DatamatchWithoutLength,
}

/// One registration: where, how wide (0: any width, the "no length" kind), and
/// the value a write must carry (None: any value, upstream's wildcard).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    pub bus: Bus,
    pub addr: u64,
    pub len: u32,
    pub datamatch: Option<u64>,
}

/// ioeventfd_bus_from_flags().
fn bus(flags: u32) -> Bus {
    if flags & FLAG_PIO != 0 {
        Bus::Pio
    } else if flags & FLAG_VIRTIO_CCW_NOTIFY != 0 {
        Bus::VirtioCcwNotify
    } else {
        Bus::Mmio
    }
}

/// The registration a KVM_IOEVENTFD call describes, flags checked as
/// kvm_assign_ioeventfd() checks them for an assign, in its order.
/// A deassign (FLAG_DEASSIGN) is not validated beyond its bus upstream: it only
/// has to name an existing registration.
pub fn spec(addr: u64, len: u32, flags: u32, datamatch: u64) -> Result<Spec, Invalid> {
    let datamatch = (flags & FLAG_DATAMATCH != 0).then_some(datamatch);
    if flags & FLAG_DEASSIGN != 0 {
        return Ok(Spec {
            bus: bus(flags),
            addr,
            len,
            datamatch,
        });
    }
    if !matches!(len, 0 | 1 | 2 | 4 | 8) {
        return Err(Invalid::Length);
    }
    if addr.checked_add(u64::from(len)).is_none() {
        return Err(Invalid::Overflow);
    }
    if flags & !VALID_FLAG_MASK != 0 {
        return Err(Invalid::Flags);
    }
    if len == 0 && datamatch.is_some() {
        return Err(Invalid::DatamatchWithoutLength);
    }
    Ok(Spec {
        bus: bus(flags),
        addr,
        len,
        datamatch,
    })
}

impl Spec {
    /// ioeventfd_in_range(): whether a guest write of `data` at `addr` signals
    /// this registration. The address must be exact; a registration of length 0
    /// takes any write there, others only one of their length (and value, unless
    /// wildcard).
    pub fn in_range(&self, addr: u64, data: &[u8]) -> bool {
        if addr != self.addr {
            return false;
        }
        if self.len == 0 {
            return true;
        }
        if data.len() != self.len as usize {
            return false;
        }
        let Some(want) = self.datamatch else {
            return true;
        };
        let mut v = [0u8; 8];
        match v.get_mut(..data.len()) {
            Some(dst) if matches!(data.len(), 1 | 2 | 4 | 8) => dst.copy_from_slice(data),
            _ => return false,
        }
        // Compared at the write's width, as upstream reads the value at `len`.
        u64::from_le_bytes(v) == want
    }

    /// ioeventfd_check_collision(): `self` cannot be added beside `other` (-EEXIST).
    /// Same bus and address, and either has length 0, or equal lengths where
    /// either is wildcard or both match the same value.
    pub fn collides(&self, other: &Spec) -> bool {
        self.bus == other.bus
            && self.addr == other.addr
            && (self.len == 0
                || other.len == 0
                || (self.len == other.len
                    && match (self.datamatch, other.datamatch) {
                        (Some(a), Some(b)) => a == b,
                        _ => true,
                    }))
    }

    /// kvm_deassign_ioeventfd_idx()'s match: the same bus, address, length and
    /// kind (wildcard or not), and for a datamatch one the same value. The
    /// eventfd must be the same too; the caller compares that.
    pub fn deassigns(&self, registered: &Spec) -> bool {
        self.bus == registered.bus
            && self.addr == registered.addr
            && self.len == registered.len
            && match (self.datamatch, registered.datamatch) {
                (None, None) => true,
                (Some(a), Some(b)) => a == b,
                _ => false,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pio(addr: u64, len: u32, dm: Option<u64>) -> Spec {
        Spec {
            bus: Bus::Pio,
            addr,
            len,
            datamatch: dm,
        }
    }

    #[test]
    fn validation_follows_upstream_order() {
        assert_eq!(spec(0x10, 3, 0, 0), Err(Invalid::Length));
        assert_eq!(spec(0x10, 16, 0, 0), Err(Invalid::Length));
        assert_eq!(spec(u64::MAX - 1, 4, 0, 0), Err(Invalid::Overflow));
        // The length check comes first, as upstream's switch does.
        assert_eq!(spec(u64::MAX, 3, 1 << 9, 0), Err(Invalid::Length));
        assert_eq!(spec(0x10, 4, 1 << 5, 0), Err(Invalid::Flags));
        assert!(spec(0x10, 4, FLAG_FAST_MMIO, 0).is_ok());
        assert_eq!(
            spec(0x10, 0, FLAG_DATAMATCH, 0),
            Err(Invalid::DatamatchWithoutLength)
        );
        // s390's bus exists on x86 too (every VM has all buses); nothing writes to it.
        assert_eq!(
            spec(0x10, 4, FLAG_VIRTIO_CCW_NOTIFY, 0).map(|s| s.bus),
            Ok(Bus::VirtioCcwNotify)
        );
        assert_eq!(
            spec(0x10, 2, FLAG_PIO | FLAG_DATAMATCH, 7),
            Ok(pio(0x10, 2, Some(7)))
        );
        let m = spec(0xd000_0000, 0, 0, 99).unwrap();
        assert_eq!((m.bus, m.len, m.datamatch), (Bus::Mmio, 0, None));
        // Every length upstream allows.
        for len in [0, 1, 2, 4, 8] {
            assert!(spec(0x1000, len, 0, 0).is_ok());
        }
    }

    #[test]
    fn deassign_is_not_validated() {
        // Upstream looks it up (-ENOENT when absent) rather than refusing it.
        let d = spec(0x10, 3, FLAG_DEASSIGN | FLAG_PIO, 0).unwrap();
        assert_eq!(d, pio(0x10, 3, None));
    }

    #[test]
    fn writes_that_signal() {
        let any = pio(0x60, 0, None);
        assert!(any.in_range(0x60, &[1]));
        assert!(any.in_range(0x60, &[1, 2, 3, 4]));
        assert!(!any.in_range(0x61, &[1]));

        let wild = pio(0x60, 2, None);
        assert!(wild.in_range(0x60, &[0xff, 0xff]));
        assert!(!wild.in_range(0x60, &[0xff]));
        assert!(!wild.in_range(0x60, &[0, 0, 0, 0]));

        let dm = pio(0x60, 4, Some(0x1234_5678));
        assert!(dm.in_range(0x60, &0x1234_5678u32.to_le_bytes()));
        assert!(!dm.in_range(0x60, &0x1234_5679u32.to_le_bytes()));

        let dm8 = pio(0x60, 8, Some(u64::MAX));
        assert!(dm8.in_range(0x60, &[0xff; 8]));
        assert!(!dm8.in_range(0x60, &[0xff; 4]));
    }

    #[test]
    fn collisions() {
        let a = pio(0x60, 4, Some(1));
        assert!(a.collides(&pio(0x60, 4, Some(1))));
        assert!(!a.collides(&pio(0x60, 4, Some(2))));
        assert!(a.collides(&pio(0x60, 4, None)));
        assert!(!a.collides(&pio(0x60, 2, None)));
        assert!(a.collides(&pio(0x60, 0, None)));
        assert!(!a.collides(&pio(0x64, 4, Some(1))));
        let mmio = Spec {
            bus: Bus::Mmio,
            ..a
        };
        assert!(!a.collides(&mmio));
    }

    #[test]
    fn deassign_matches_kind_and_value() {
        let reg = pio(0x60, 4, Some(1));
        assert!(pio(0x60, 4, Some(1)).deassigns(&reg));
        assert!(!pio(0x60, 4, Some(2)).deassigns(&reg));
        assert!(!pio(0x60, 4, None).deassigns(&reg));
        assert!(!pio(0x60, 2, Some(1)).deassigns(&reg));
        assert!(pio(0x60, 4, None).deassigns(&pio(0x60, 4, None)));
    }
}
