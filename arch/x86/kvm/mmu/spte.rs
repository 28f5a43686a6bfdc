//! Two-dimensional paging entries (upstream mmu/spte.{h,c}): the format of the
//! tables the TDP MMU (tdp.rs) builds, as masks the vendor sets, so one MMU serves
//! AMD NPT (the long-mode format, every level a "user" page since the walk is done
//! with user privileges; upstream kvm_mmu_reset_all_pte_masks()) and Intel EPT
//! (upstream kvm_mmu_set_ept_masks()). Entry rules only; the MMU walks and fills.

/// Levels with 4-level host paging (5-level hosts add one above).
pub const LEVELS: u32 = 4;
/// Physical address bits 51:12 of an entry (both formats).
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Software bit, ignored by both walks: a zapped leaf whose page is still pinned,
/// to be unpinned once no vCPU can hold a TLB entry for it.
pub const SPTE_ZAPPED: u64 = 1 << 55;
/// Software bit: the leaf holds a reference on a guest_memfd page (put when
/// the leaf goes) rather than a GUP pin on user memory (unpinned).
pub const SPTE_GMEM: u64 = 1 << 56;
/// Software bit: the page was pinned for writing, so the guest may be allowed to
/// write it (upstream shadow_host_writable_mask, DEFAULT_SPTE_HOST_WRITABLE); the
/// unpin marks it dirty.
pub const SPTE_HOST_WRITABLE: u64 = 1 << 57;

pub const PT_PRESENT_MASK: u64 = 1 << 0;
pub const PT_WRITABLE_MASK: u64 = 1 << 1;
pub const PT_USER_MASK: u64 = 1 << 2;
pub const PT_ACCESSED_MASK: u64 = 1 << 5;
pub const PT_DIRTY_MASK: u64 = 1 << 6;

pub const VMX_EPT_READABLE_MASK: u64 = 1 << 0;
pub const VMX_EPT_WRITABLE_MASK: u64 = 1 << 1;
pub const VMX_EPT_EXECUTABLE_MASK: u64 = 1 << 2;
pub const VMX_EPT_ACCESS_BIT: u64 = 1 << 8;
pub const VMX_EPT_DIRTY_BIT: u64 = 1 << 9;
/// Leaf memory type (bits 5:3) write-back, the type upstream's get_mt_mask()
/// gives guest RAM without assigned devices.
pub const VMX_EPT_MT_WB: u64 = 6 << 3;
/// Ignore the guest's PAT for the leaf (upstream VMX_EPT_IPAT_BIT).
pub const VMX_EPT_IPAT_BIT: u64 = 1 << 6;

/// The bits of one entry format (upstream's shadow_*_mask variables). `#[repr(C)]`:
/// a vendor hands it to kvm.ko in its `kvm_x86_ops` table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpteMasks {
    /// In every present entry; an entry without it does not map (NPT P; EPT R).
    pub present: u64,
    pub writable: u64,
    /// In every present entry besides `present`: NPT U, EPT X (shadow_user_mask,
    /// shadow_x_mask).
    pub always: u64,
    /// Set up front so the walk need not (0 when the format has no A/D bits).
    pub accessed: u64,
    pub dirty: u64,
    /// In leaves only: the EPT memory type (upstream's memtype mask).
    pub leaf_memtype: u64,
}

impl SpteMasks {
    /// AMD NPT: the host's long-mode page-table format.
    pub const NPT: SpteMasks = SpteMasks {
        present: PT_PRESENT_MASK,
        writable: PT_WRITABLE_MASK,
        always: PT_USER_MASK,
        accessed: PT_ACCESSED_MASK,
        dirty: PT_DIRTY_MASK,
        leaf_memtype: 0,
    };

    /// Intel EPT (kvm_mmu_set_ept_masks()), with or without accessed/dirty bits.
    pub const fn ept(has_ad_bits: bool) -> SpteMasks {
        SpteMasks {
            present: VMX_EPT_READABLE_MASK,
            writable: VMX_EPT_WRITABLE_MASK,
            always: VMX_EPT_EXECUTABLE_MASK,
            accessed: if has_ad_bits { VMX_EPT_ACCESS_BIT } else { 0 },
            dirty: if has_ad_bits { VMX_EPT_DIRTY_BIT } else { 0 },
            leaf_memtype: VMX_EPT_MT_WB | VMX_EPT_IPAT_BIT,
        }
    }

    /// A non-leaf entry pointing at the table at `pa`.
    pub fn table(&self, pa: u64) -> u64 {
        (pa & ADDR_MASK) | self.present | self.writable | self.always | self.accessed
    }

    /// A 4K leaf mapping host page `pa`, writable if `writable` (pinned for it).
    pub fn leaf(&self, pa: u64, writable: bool) -> u64 {
        let w = if writable {
            self.writable | SPTE_HOST_WRITABLE | self.dirty
        } else {
            0
        };
        (pa & ADDR_MASK) | self.present | self.always | self.accessed | self.leaf_memtype | w
    }

    /// A 4K leaf for a page pinned for writing that the guest may write only if
    /// `writable`: dirty logging maps pages of a writable slot read-only until
    /// their first write.
    pub fn leaf_logged(&self, pa: u64, writable: bool) -> u64 {
        let w = if writable {
            self.writable | self.dirty
        } else {
            0
        };
        (pa & ADDR_MASK)
            | self.present
            | self.always
            | self.accessed
            | self.leaf_memtype
            | SPTE_HOST_WRITABLE
            | w
    }

    /// The leaf with writes allowed again (a logged page's first write), if its
    /// page was pinned for writing; None if it cannot be made writable.
    pub fn make_writable(&self, e: u64) -> Option<u64> {
        (self.is_present(e) && e & SPTE_HOST_WRITABLE != 0)
            .then_some(e | self.writable | self.dirty)
    }

    pub fn is_writable(&self, e: u64) -> bool {
        e & self.writable != 0
    }

    /// The leaf with writes trapping again (dirty-log harvest).
    pub fn write_protect(&self, e: u64) -> u64 {
        e & !self.writable
    }

    pub fn is_present(&self, e: u64) -> bool {
        e & self.present != 0
    }

    /// The same leaf, no longer usable by the hardware, still holding its page.
    /// Every permission bit goes: for EPT any of R/W/X would keep it present.
    pub fn zap(&self, e: u64) -> u64 {
        (e & !(self.present | self.writable | self.always)) | SPTE_ZAPPED
    }
}

/// Index of `gfn` in a table at `level` (1 = the 4K leaf level).
pub fn index(gfn: u64, level: u32) -> usize {
    ((gfn >> (9 * (level - 1))) & 0x1ff) as usize
}

pub fn addr(e: u64) -> u64 {
    e & ADDR_MASK
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

    const NPT: SpteMasks = SpteMasks::NPT;

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
    fn npt_entries() {
        let l = NPT.leaf(0x1234_5000, true);
        assert!(NPT.is_present(l));
        assert_eq!(l & 0xfff, 0x67, "P, W, U, A, D");
        assert_eq!(addr(l), 0x1234_5000);
        let z = NPT.zap(l);
        assert!(!NPT.is_present(z));
        assert_eq!(addr(z), 0x1234_5000);
        assert_ne!(z & SPTE_ZAPPED, 0);
        assert_ne!(z & SPTE_HOST_WRITABLE, 0);
        assert!(!NPT.is_writable(NPT.leaf(0x1000, false)));
        assert_eq!(NPT.table(0xabc_d000 | 0xfff), 0xabc_d000 | 0x27);
    }

    #[test]
    fn ept_entries() {
        let ept = SpteMasks::ept(false);
        let l = ept.leaf(0x1234_5000, true);
        // R, W, X, memory type WB, ignore PAT; no A/D without the feature.
        assert_eq!(l & 0xfff, 0x77);
        assert_eq!(
            ept.table(0x5000) & 0xfff,
            0x7,
            "tables: R, W, X, no memory type"
        );
        let ro = ept.leaf(0x2000, false);
        assert_eq!(ro & 0x7, 0x5, "read and execute");
        // A zapped EPT leaf has no R, W or X left: not present to the walk.
        let z = ept.zap(l);
        assert_eq!(z & 0x7, 0);
        assert!(!ept.is_present(z));
        let ad = SpteMasks::ept(true);
        assert_eq!(ad.leaf(0x3000, true) & 0x300, 0x300, "A and D set up front");
        assert_eq!(ad.leaf(0x3000, false) & 0x300, 0x100);
    }

    #[test]
    fn zap_keeps_the_software_bits() {
        for m in [NPT, SpteMasks::ept(false)] {
            let l = m.leaf(0x7000, true) | SPTE_GMEM;
            let z = m.zap(l);
            assert_eq!(
                z & (SPTE_GMEM | SPTE_HOST_WRITABLE | SPTE_ZAPPED),
                SPTE_GMEM | SPTE_HOST_WRITABLE | SPTE_ZAPPED
            );
            assert_eq!(addr(z), 0x7000);
        }
    }

    #[test]
    fn software_bits_are_ignored_by_both_walks() {
        // Bits 52-58 are ignored in NPT (long-mode) and EPT entries alike.
        for b in [SPTE_ZAPPED, SPTE_GMEM, SPTE_HOST_WRITABLE] {
            assert!(b.trailing_zeros() >= 52 && b.trailing_zeros() <= 58);
        }
    }

    #[test]
    fn dirty_logging() {
        for m in [NPT, SpteMasks::ept(false), SpteMasks::ept(true)] {
            let ro = m.leaf_logged(0x5000, false);
            assert!(!m.is_writable(ro));
            assert_ne!(
                ro & SPTE_HOST_WRITABLE,
                0,
                "unpinned as written: it may become dirty"
            );
            let w = m.make_writable(ro).unwrap();
            assert!(m.is_writable(w));
            assert!(!m.is_writable(m.write_protect(w)));
            assert!(m.is_present(m.write_protect(w)));
            // A read-only slot's page was not pinned for writing: never writable.
            assert_eq!(m.make_writable(m.leaf(0x5000, false)), None);
            assert_eq!(m.make_writable(m.zap(w)), None);
        }
    }
}
