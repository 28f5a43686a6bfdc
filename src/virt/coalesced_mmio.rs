//! Coalesced MMIO and PIO (upstream virt/kvm/coalesced_mmio.c): the zone rules
//! and the ring's layout and insertion, for KVM_REGISTER_COALESCED_MMIO's bus
//! devices. A write inside a zone is appended to a ring page that userspace maps
//! through every vCPU (page KVM_COALESCED_MMIO_PAGE_OFFSET) and drains later,
//! instead of exiting. The page's memory accesses are the caller's.

/// The ring page.
pub const RING_SIZE: usize = 4096;
/// `struct kvm_coalesced_mmio_ring`'s header: `first` (userspace's next entry to
/// read) and `last` (the kernel's next entry to write).
pub const RING_FIRST: usize = 0;
pub const RING_LAST: usize = 4;
pub const RING_HEADER: usize = 8;
/// `struct kvm_coalesced_mmio`: phys_addr, len, pio, data[8].
pub const ENTRY_SIZE: usize = 24;
/// KVM_COALESCED_MMIO_MAX: entries in the page.
pub const MAX: u32 = ((RING_SIZE - RING_HEADER) / ENTRY_SIZE) as u32;
/// Bytes of data an entry holds.
pub const DATA_LEN: usize = 8;

/// `struct kvm_coalesced_mmio_zone`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Zone {
    pub addr: u64,
    pub size: u32,
    /// 1 for a PIO zone, 0 for MMIO.
    pub pio: u32,
}

/// Why a zone is refused: -EINVAL upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Invalid;

impl Zone {
    /// kvm_vm_ioctl_(un)register_coalesced_mmio()'s only check: `pio` is 0 or 1.
    pub fn new(addr: u64, size: u32, pio: u32) -> Result<Zone, Invalid> {
        if pio > 1 {
            return Err(Invalid);
        }
        Ok(Zone { addr, size, pio })
    }

    /// coalesced_mmio_in_range(): [addr, addr + len) lies in the zone, without
    /// wrapping.
    pub fn in_range(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        addr >= self.addr && end <= self.addr.saturating_add(u64::from(self.size))
    }
}

/// The entry a write goes to, or None when the ring is full (or `last` is
/// corrupt: userspace owns the page), in which case the write exits to userspace
/// as an ordinary one. The caller then writes the entry and publishes `last` as
/// [`next_last`] after it.
pub fn insert_index(first: u32, last: u32) -> Option<u32> {
    if last >= MAX || (last + 1) % MAX == first {
        return None;
    }
    Some(last)
}

/// `last` after the entry at `insert` was written.
pub fn next_last(insert: u32) -> u32 {
    (insert + 1) % MAX
}

/// Byte offset of entry `i` in the page.
pub fn entry_offset(i: u32) -> usize {
    RING_HEADER + i as usize * ENTRY_SIZE
}

/// Entry `i`'s bytes for a write of `data` (at most 8 bytes) at `addr`.
pub fn encode(addr: u64, data: &[u8], pio: u32) -> [u8; ENTRY_SIZE] {
    let mut e = [0u8; ENTRY_SIZE];
    let len = data.len().min(DATA_LEN);
    e[0..8].copy_from_slice(&addr.to_le_bytes());
    e[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    e[12..16].copy_from_slice(&pio.to_le_bytes());
    for (d, s) in e[16..].iter_mut().zip(data.iter()) {
        *d = *s;
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_uapi() {
        // (4096 - 8) / 24, as KVM_COALESCED_MMIO_MAX on 4K pages.
        assert_eq!(MAX, 170);
        assert_eq!(entry_offset(MAX - 1) + ENTRY_SIZE, 4088);
    }

    #[test]
    fn pio_must_be_0_or_1() {
        assert!(Zone::new(0x1000, 8, 0).is_ok());
        assert!(Zone::new(0x1000, 8, 1).is_ok());
        assert_eq!(Zone::new(0x1000, 8, 2), Err(Invalid));
    }

    #[test]
    fn range_is_inclusive_of_the_zone_only() {
        let z = Zone::new(0x1000, 0x10, 0).unwrap();
        assert!(z.in_range(0x1000, 4));
        assert!(z.in_range(0x100c, 4));
        assert!(!z.in_range(0x100d, 4));
        assert!(!z.in_range(0xffe, 4));
        assert!(!z.in_range(u64::MAX - 1, 4));
        // A zone at the top of the address space does not wrap either.
        let top = Zone::new(u64::MAX - 3, 0x10, 0).unwrap();
        assert!(top.in_range(u64::MAX - 3, 2));
    }

    #[test]
    fn ring_keeps_one_slot_free() {
        assert_eq!(insert_index(0, 0), Some(0));
        assert_eq!(next_last(MAX - 1), 0);
        // Full: the next write would make last == first.
        assert_eq!(insert_index(0, MAX - 1), None);
        assert_eq!(insert_index(5, 4), None);
        assert_eq!(insert_index(5, 3), Some(3));
        // A `last` userspace corrupted is a full ring, not an out-of-page write.
        assert_eq!(insert_index(0, MAX), None);
        assert_eq!(insert_index(0, u32::MAX), None);
    }

    #[test]
    fn entry_encoding() {
        let e = encode(0xfee0_0000_1234, &[1, 2, 3, 4], 1);
        assert_eq!(&e[0..8], &0xfee0_0000_1234u64.to_le_bytes());
        assert_eq!(&e[8..12], &4u32.to_le_bytes());
        assert_eq!(&e[12..16], &1u32.to_le_bytes());
        assert_eq!(&e[16..24], &[1, 2, 3, 4, 0, 0, 0, 0]);
    }
}
