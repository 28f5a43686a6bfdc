//! Nested page tables (AMD NPT: the long-mode 4-level format, every level a "user"
//! page as the walk is done with user privileges): entry encoding and indexing.
//! kvm.ko's MMU (src/mmu.rs) walks and fills them; these are its rules.

/// Levels with 4-level host paging (5-level hosts add one above).
pub const LEVELS: u32 = 4;
pub const PRESENT: u64 = 1 << 0;
pub const WRITABLE: u64 = 1 << 1;
pub const USER: u64 = 1 << 2;
pub const ACCESSED: u64 = 1 << 5;
pub const DIRTY: u64 = 1 << 6;
/// Software bit (ignored by the walk): a zapped leaf whose page is still pinned,
/// to be unpinned once no vCPU can hold a TLB entry for it.
pub const ZAPPED: u64 = 1 << 9;
/// Software bit: the page was pinned for writing (unpin marks it dirty).
pub const PINNED_WRITE: u64 = 1 << 10;
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Index of `gfn` in a table at `level` (1 = the 4K leaf level).
pub fn index(gfn: u64, level: u32) -> usize {
    ((gfn >> (9 * (level - 1))) & 0x1ff) as usize
}

/// A non-leaf entry pointing at the table at `pa`.
pub fn table(pa: u64) -> u64 {
    (pa & ADDR_MASK) | PRESENT | WRITABLE | USER | ACCESSED
}

/// A 4K leaf mapping host page `pa`.
pub fn leaf(pa: u64, writable: bool) -> u64 {
    let w = if writable {
        WRITABLE | PINNED_WRITE | DIRTY
    } else {
        0
    };
    (pa & ADDR_MASK) | PRESENT | USER | ACCESSED | w
}

/// A 4K leaf for a page pinned for writing (`pinned_write`) that the guest may
/// write only if `writable`: dirty logging maps pages of a writable slot
/// read-only until their first write.
pub fn leaf_logged(pa: u64, writable: bool) -> u64 {
    let w = if writable { WRITABLE | DIRTY } else { 0 };
    (pa & ADDR_MASK) | PRESENT | USER | ACCESSED | PINNED_WRITE | w
}

/// The leaf with writes allowed again (a logged page's first write), if its
/// page was pinned for writing; None if it cannot be made writable.
pub fn make_writable(e: u64) -> Option<u64> {
    (is_present(e) && e & PINNED_WRITE != 0).then_some(e | WRITABLE | DIRTY)
}

/// The leaf with writes trapping again (dirty-log harvest).
pub fn write_protect(e: u64) -> u64 {
    e & !WRITABLE
}

pub fn addr(e: u64) -> u64 {
    e & ADDR_MASK
}

pub fn is_present(e: u64) -> bool {
    e & PRESENT != 0
}

/// The same leaf, no longer usable by the hardware, still holding its page.
pub fn zap(e: u64) -> u64 {
    (e & !(PRESENT | WRITABLE)) | ZAPPED
}

/// First gfn covered by entry `i` of a table at `level` that covers `base`.
pub fn entry_base(base: u64, level: u32, i: usize) -> u64 {
    base + ((i as u64) << (9 * (level - 1)))
}

/// Number of gfns one entry at `level` covers.
pub fn entry_span(level: u32) -> u64 {
    1 << (9 * (level - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices() {
        let gfn = 0x12345678u64 >> 12 << 12 >> 12; // gpa 0x12345000
        assert_eq!(index(gfn, 1), (0x12345 & 0x1ff) as usize);
        assert_eq!(index(gfn, 2), ((0x12345 >> 9) & 0x1ff) as usize);
        // gpa 1 << 39 is entry 1 of the root.
        assert_eq!(index(1 << 27, 4), 1);
        assert_eq!(entry_span(2), 512);
        assert_eq!(entry_base(0, 3, 2), 2 << 18);
    }

    #[test]
    fn entries() {
        let l = leaf(0x1234_5000, true);
        assert!(is_present(l));
        assert_eq!(addr(l), 0x1234_5000);
        assert_ne!(l & USER, 0, "NPT walks are user accesses");
        let z = zap(l);
        assert!(!is_present(z));
        assert_eq!(addr(z), 0x1234_5000);
        assert_ne!(z & ZAPPED, 0);
        assert_ne!(z & PINNED_WRITE, 0);
        assert_eq!(leaf(0x1000, false) & WRITABLE, 0);
        assert_eq!(addr(table(0xabc_d000 | 0xfff)), 0xabc_d000);
    }

    #[test]
    fn dirty_logging() {
        let ro = leaf_logged(0x5000, false);
        assert_eq!(ro & WRITABLE, 0);
        assert_ne!(
            ro & PINNED_WRITE,
            0,
            "unpinned as written: it may become dirty"
        );
        let w = make_writable(ro).unwrap();
        assert_ne!(w & WRITABLE, 0);
        assert_eq!(write_protect(w) & WRITABLE, 0);
        assert!(is_present(write_protect(w)));
        // A read-only slot's page was not pinned for writing: never writable.
        assert_eq!(make_writable(leaf(0x5000, false)), None);
        assert_eq!(make_writable(zap(w)), None);
    }
}
