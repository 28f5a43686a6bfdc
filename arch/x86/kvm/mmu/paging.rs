//! The guest page-table walker (upstream mmu/paging_tmpl.h walk_addr_generic()):
//! pure logic, shared by KVM_TRANSLATE, the instruction emulator and the coming
//! shadow MMU. Guest memory comes through [`GuestMem`].

use super::emulate::{PFERR_FETCH, PFERR_PRESENT, PFERR_RSVD, PFERR_USER, PFERR_WRITE};
use super::msr_index::{EFER_LMA, EFER_NX};
use super::processor_flags::{
    X86_CR0_PG, X86_CR0_WP, X86_CR4_LA57, X86_CR4_PAE, X86_CR4_PSE, X86_CR4_SMAP, X86_CR4_SMEP,
};

/// Guest physical memory for the walker.
pub trait GuestMem {
    /// The 8 bytes at `gpa`, None if it is not RAM.
    fn read_u64(&mut self, gpa: u64) -> Option<u64>;
    /// Stores 8 bytes; false if `gpa` is not writable RAM.
    fn write_u64(&mut self, gpa: u64, v: u64) -> bool;

    /// 4-byte entries of 32-bit paging; by default through the aligned quadword.
    fn read_u32(&mut self, gpa: u64) -> Option<u32> {
        let q = self.read_u64(gpa & !7)?;
        Some((q >> ((gpa & 4) * 8)) as u32)
    }

    fn write_u32(&mut self, gpa: u64, v: u32) -> bool {
        let Some(q) = self.read_u64(gpa & !7) else {
            return false;
        };
        let sh = (gpa & 4) * 8;
        self.write_u64(gpa & !7, (q & !(0xffff_ffff << sh)) | (u64::from(v) << sh))
    }

    /// Sets A/D bits: replace `old` by `new` if the entry still holds `old`. Some(false)
    /// if it changed (the walk restarts, as update_accessed_dirty_bits' cmpxchg), None if
    /// not RAM. Override with a real cmpxchg for SMP guests; the default is read+write.
    /// A failed write (ROM) leaves the bits alone, as upstream skips unwritable slots.
    fn cmpxchg_u64(&mut self, gpa: u64, old: u64, new: u64) -> Option<bool> {
        if self.read_u64(gpa)? != old {
            return Some(false);
        }
        self.write_u64(gpa, new);
        Some(true)
    }

    fn cmpxchg_u32(&mut self, gpa: u64, old: u32, new: u32) -> Option<bool> {
        if self.read_u32(gpa)? != old {
            return Some(false);
        }
        self.write_u32(gpa, new);
        Some(true)
    }
}

/// The registers that define guest paging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paging {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

/// The kind of access: `user` is CPL 3 (not an implicit supervisor access).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub write: bool,
    pub user: bool,
    pub fetch: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// Inject #PF with this error code (CR2 = the GVA).
    PageFault { error_code: u32 },
    /// A paging-structure GPA is not RAM, or the tables kept changing under the walk.
    Memory,
}

/// Walk options beyond the control registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkOptions {
    /// Guest MAXPHYADDR: address bits above it are reserved in entries (32..=52).
    pub maxphyaddr: u8,
    /// SMAP: None skips the check; Some(ac) checks supervisor data accesses to user
    /// pages with EFLAGS.AC = ac (pass Some(false) for implicit supervisor accesses).
    pub smap_ac: Option<bool>,
}

impl Default for WalkOptions {
    fn default() -> Self {
        WalkOptions {
            maxphyaddr: 52,
            smap_ac: None,
        }
    }
}

const PTE_P: u64 = 1 << 0;
const PTE_W: u64 = 1 << 1;
const PTE_U: u64 = 1 << 2;
const PTE_A: u64 = 1 << 5;
const PTE_D: u64 = 1 << 6;
const PTE_PS: u64 = 1 << 7;
const PTE_NX: u64 = 1 << 63;
/// Address bits 51:12 of 64-bit entries.
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;
/// Restarts of a walk whose entries change while A/D bits are set.
const WALK_RETRIES: u32 = 16;

/// Bits `s..=e` set (rsvd_bits).
fn rsvd_bits(s: u32, e: u32) -> u64 {
    if s > e || e > 63 {
        return 0;
    }
    (u64::MAX >> (63 - e)) & (u64::MAX << s)
}

/// Translates `gva` for `access` with default options (MAXPHYADDR 52, no SMAP).
pub fn translate(
    mem: &mut impl GuestMem,
    paging: &Paging,
    gva: u64,
    access: Access,
) -> Result<u64, WalkError> {
    translate_with(mem, paging, gva, access, &WalkOptions::default())
}

/// Translates `gva` to a GPA as the guest's MMU would, setting Accessed (and Dirty on
/// writes) in the guest entries: identity without CR0.PG, 32-bit 2-level (PSE 4M pages,
/// PSE-36), PAE 3-level (PDPTEs read from CR3 on each walk), 4- and 5-level long mode
/// with 2M/1G pages; NX, U/S, R/W with CR0.WP, SMEP, and SMAP per `opts`.
pub fn translate_with(
    mem: &mut impl GuestMem,
    paging: &Paging,
    gva: u64,
    access: Access,
    opts: &WalkOptions,
) -> Result<u64, WalkError> {
    // nonpaging_gva_to_gpa.
    if paging.cr0 & X86_CR0_PG == 0 {
        return Ok(gva);
    }
    for _ in 0..WALK_RETRIES {
        if let Some(gpa) = walk_once(mem, paging, gva, access, opts)? {
            return Ok(gpa);
        }
    }
    Err(WalkError::Memory)
}

/// One walk; Ok(None) if an entry changed while setting A/D (retry_walk).
fn walk_once(
    mem: &mut impl GuestMem,
    p: &Paging,
    gva: u64,
    access: Access,
    opts: &WalkOptions,
) -> Result<Option<u64>, WalkError> {
    let long = p.efer & EFER_LMA != 0;
    // 64-bit entries (PAE or long mode; LMA implies PAE).
    let wide = long || p.cr4 & X86_CR4_PAE != 0;
    let efer_nx = p.efer & EFER_NX != 0;
    let smep = p.cr4 & X86_CR4_SMEP != 0;
    let maxphy = u32::from(opts.maxphyaddr).clamp(32, 52);

    // The error code always describes the access (walk_addr_generic's error label);
    // I/D only when NX or SMEP is enabled (has_pferr_fetch).
    let mut access_bits = 0;
    if access.write {
        access_bits |= PFERR_WRITE;
    }
    if access.user {
        access_bits |= PFERR_USER;
    }
    if access.fetch && (efer_nx || smep) {
        access_bits |= PFERR_FETCH;
    }
    let pf = |code: u32| WalkError::PageFault {
        error_code: code | access_bits,
    };

    let va = if long { gva } else { gva & 0xffff_ffff };
    // __reset_rsvds_bits_mask: address bits above MAXPHYADDR (up to 62 for PAE, 51 for
    // long mode), and bit 63 without EFER.NXE.
    let mut high_rsvd = if long {
        rsvd_bits(maxphy, 51)
    } else if wide {
        rsvd_bits(maxphy, 62)
    } else {
        0
    };
    if wide && !efer_nx {
        high_rsvd |= PTE_NX;
    }

    let (mut level, mut table): (u32, u64) = if long {
        let levels = if p.cr4 & X86_CR4_LA57 != 0 { 5 } else { 4 };
        (levels, p.cr3 & PTE_ADDR)
    } else if wide {
        // The PDPTE has no A/D or permission bits; its reserved bits are checked when
        // CR3 is loaded (load_pdptrs), not here.
        let pdpte_gpa = (p.cr3 & 0xffff_ffe0) + ((va >> 30) & 3) * 8;
        let pdpte = mem.read_u64(pdpte_gpa).ok_or(WalkError::Memory)?;
        if pdpte & PTE_P == 0 {
            return Err(pf(0));
        }
        (2, pdpte & PTE_ADDR)
    } else {
        (2, p.cr3 & 0xffff_f000)
    };

    let mut walked = [(0u64, 0u64); 5];
    let mut n = 0usize;
    let mut user = true;
    let mut writable = true;
    let mut nx = false;
    let (pte, shift, large) = loop {
        let (shift, idx_mask, esize) = if wide {
            (12 + 9 * (level - 1), 0x1ff, 8)
        } else {
            (12 + 10 * (level - 1), 0x3ff, 4)
        };
        let pte_gpa = table + ((va >> shift) & idx_mask) * esize;
        let pte = if wide {
            mem.read_u64(pte_gpa)
        } else {
            mem.read_u32(pte_gpa).map(u64::from)
        }
        .ok_or(WalkError::Memory)?;
        if pte & PTE_P == 0 {
            return Err(pf(0));
        }
        let ps = pte & PTE_PS != 0;
        // is_last_gpte: 4M pages need CR4.PSE in 32-bit paging; PAE and long mode always
        // allow 2M; 1G only in long mode (gbpages assumed); PS in PML4E/PML5E is
        // reserved.
        let large = ps
            && match level {
                2 => wide || p.cr4 & X86_CR4_PSE != 0,
                3 => long,
                _ => false,
            };
        let rsvd = if wide {
            high_rsvd
                | match (level, large) {
                    (4 | 5, _) => PTE_PS,
                    (3, true) => rsvd_bits(13, 29),
                    (2, true) => rsvd_bits(13, 20),
                    _ => 0,
                }
        } else if large {
            // PSE-36: bits 20:13 hold PA 39:32, those above MAXPHYADDR and bit 21 are
            // reserved.
            rsvd_bits(13 + (maxphy.min(40) - 32), 21)
        } else {
            0
        };
        if pte & rsvd != 0 {
            return Err(pf(PFERR_RSVD | PFERR_PRESENT));
        }
        if let Some(slot) = walked.get_mut(n) {
            *slot = (pte_gpa, pte);
        }
        n += 1;
        user &= pte & PTE_U != 0;
        writable &= pte & PTE_W != 0;
        nx |= wide && pte & PTE_NX != 0;
        if level <= 1 || large {
            break (pte, shift, large);
        }
        table = pte & if wide { PTE_ADDR } else { 0xffff_f000 };
        level -= 1;
    };

    // permission_fault / update_permission_bitmask.
    let wp = p.cr0 & X86_CR0_WP != 0;
    let denied = (access.user && !user)
        || (access.write && !writable && (access.user || wp))
        || (access.fetch && efer_nx && nx)
        || (access.fetch && !access.user && smep && user)
        || (opts.smap_ac == Some(false)
            && p.cr4 & X86_CR4_SMAP != 0
            && !access.fetch
            && !access.user
            && user);
    if denied {
        return Err(pf(PFERR_PRESENT));
    }

    let gpa = if wide {
        let off = (1u64 << shift) - 1;
        (pte & PTE_ADDR & !off) | (va & off)
    } else if large {
        // 4M page: PA 31:22 from bits 31:22, PA 39:32 from bits 20:13 (pse36_gfn_delta).
        (pte & 0xffc0_0000) | (((pte >> 13) & 0xff) << 32) | (va & 0x3f_ffff)
    } else {
        (pte & 0xffff_f000) | (va & 0xfff)
    };

    // update_accessed_dirty_bits: A on every level walked, D on the leaf for writes;
    // only after the permission checks pass.
    for (i, &(egpa, old)) in walked.iter().take(n).enumerate() {
        let mut new = old | PTE_A;
        if i + 1 == n && access.write {
            new |= PTE_D;
        }
        if new == old {
            continue;
        }
        let same = if wide {
            mem.cmpxchg_u64(egpa, old, new)
        } else {
            mem.cmpxchg_u32(egpa, old as u32, new as u32)
        }
        .ok_or(WalkError::Memory)?;
        if !same {
            return Ok(None);
        }
    }
    Ok(Some(gpa))
}

#[cfg(test)]
mod tests {
    use super::super::processor_flags::X86_CR0_PE;
    use super::*;
    use std::collections::HashMap;
    use std::vec;
    use std::vec::Vec;

    /// RAM as a set of 4K pages; anything else is not RAM.
    #[derive(Default)]
    struct Ram {
        pages: HashMap<u64, Vec<u8>>,
        writes: usize,
        readonly: bool,
    }

    impl Ram {
        fn put(&mut self, gpa: u64, v: u64) {
            let p = self.pages.entry(gpa >> 12).or_insert_with(|| vec![0; 4096]);
            let o = (gpa & 0xfff) as usize;
            p[o..o + 8].copy_from_slice(&v.to_le_bytes());
        }

        fn put32(&mut self, gpa: u64, v: u32) {
            let p = self.pages.entry(gpa >> 12).or_insert_with(|| vec![0; 4096]);
            let o = (gpa & 0xfff) as usize;
            p[o..o + 4].copy_from_slice(&v.to_le_bytes());
        }

        fn get(&self, gpa: u64) -> u64 {
            let p = &self.pages[&(gpa >> 12)];
            let o = (gpa & 0xfff) as usize;
            u64::from_le_bytes(p[o..o + 8].try_into().unwrap())
        }
    }

    impl GuestMem for Ram {
        fn read_u64(&mut self, gpa: u64) -> Option<u64> {
            let p = self.pages.get(&(gpa >> 12))?;
            let o = (gpa & 0xfff) as usize;
            Some(u64::from_le_bytes(p.get(o..o + 8)?.try_into().ok()?))
        }

        fn write_u64(&mut self, gpa: u64, v: u64) -> bool {
            if self.readonly || !self.pages.contains_key(&(gpa >> 12)) {
                return false;
            }
            self.writes += 1;
            self.put(gpa, v);
            true
        }
    }

    const P: u64 = PTE_P;
    const W: u64 = PTE_W;
    const U: u64 = PTE_U;
    const PRW: u64 = P | W | U;

    const RD: Access = Access {
        write: false,
        user: false,
        fetch: false,
    };
    const WR: Access = Access {
        write: true,
        user: false,
        fetch: false,
    };
    const URD: Access = Access {
        write: false,
        user: true,
        fetch: false,
    };
    const UWR: Access = Access {
        write: true,
        user: true,
        fetch: false,
    };
    const FETCH: Access = Access {
        write: false,
        user: false,
        fetch: true,
    };

    fn long4() -> Paging {
        Paging {
            cr0: X86_CR0_PE | X86_CR0_PG | X86_CR0_WP,
            cr3: 0x1000,
            cr4: X86_CR4_PAE,
            efer: EFER_LMA | (1 << 8) | EFER_NX,
        }
    }

    fn pf(code: u32) -> Result<u64, WalkError> {
        Err(WalkError::PageFault { error_code: code })
    }

    /// 4-level tables at 0x1000 (PML4), 0x2000, 0x3000, 0x4000 for `va`, mapping it to
    /// 0x5000 with `leaf` flags.
    fn four_level(va: u64, leaf: u64) -> Ram {
        let mut m = Ram::default();
        let i = |l: u32| (va >> (12 + 9 * (l - 1))) & 0x1ff;
        m.put(0x1000 + i(4) * 8, 0x2000 | PRW);
        m.put(0x2000 + i(3) * 8, 0x3000 | PRW);
        m.put(0x3000 + i(2) * 8, 0x4000 | PRW);
        m.put(0x4000 + i(1) * 8, 0x5000 | leaf);
        m.put(0x5000, 0);
        m
    }

    const VA: u64 = 0x0000_7f12_3456_7abc;

    fn ptes(va: u64) -> [u64; 4] {
        let i = |l: u32| (va >> (12 + 9 * (l - 1))) & 0x1ff;
        [
            0x1000 + i(4) * 8,
            0x2000 + i(3) * 8,
            0x3000 + i(2) * 8,
            0x4000 + i(1) * 8,
        ]
    }

    #[test]
    fn no_paging_is_identity() {
        let mut m = Ram::default();
        let pg = Paging {
            cr0: X86_CR0_PE,
            cr3: 0,
            cr4: 0,
            efer: 0,
        };
        assert_eq!(translate(&mut m, &pg, 0xfee0_0000, WR), Ok(0xfee0_0000));
    }

    #[test]
    fn walk_4level_4k_and_ad_bits() {
        let mut m = four_level(VA, PRW);
        assert_eq!(translate(&mut m, &long4(), VA, RD), Ok(0x5abc));
        let e = ptes(VA);
        // A on every level, no D for a read.
        for a in e {
            assert!(m.get(a) & PTE_A != 0);
            assert!(m.get(a) & PTE_D == 0);
        }
        // A write sets D on the leaf only.
        assert_eq!(translate(&mut m, &long4(), VA, UWR), Ok(0x5abc));
        assert!(m.get(e[3]) & PTE_D != 0);
        assert!(m.get(e[2]) & PTE_D == 0);
        // With everything set, nothing is written again.
        let before = m.writes;
        assert_eq!(translate(&mut m, &long4(), VA, WR), Ok(0x5abc));
        assert_eq!(m.writes, before);
        // Tables in ROM: the walk succeeds and the bits stay clear.
        let mut rom = four_level(VA, PRW);
        rom.readonly = true;
        assert_eq!(translate(&mut rom, &long4(), VA, WR), Ok(0x5abc));
        assert!(rom.get(e[3]) & (PTE_A | PTE_D) == 0);
    }

    #[test]
    fn walk_large_pages() {
        // 2M page at 0x4020_0000 in the PD.
        let mut m = four_level(VA, PRW);
        let e = ptes(VA);
        m.put(e[2], 0x4020_0000 | PRW | PTE_PS);
        assert_eq!(
            translate(&mut m, &long4(), VA, WR),
            Ok(0x4020_0000 | (VA & 0x1f_ffff))
        );
        assert!(m.get(e[2]) & PTE_D != 0);
        // The PAT bit (12) of a large page is not an address bit.
        m.put(e[2], 0x4020_0000 | (1 << 12) | PRW | PTE_PS);
        assert_eq!(
            translate(&mut m, &long4(), VA, RD),
            Ok(0x4020_0000 | (VA & 0x1f_ffff))
        );
        // Bits 20:13 of a 2M entry are reserved.
        m.put(e[2], 0x4020_0000 | (1 << 13) | PRW | PTE_PS);
        assert_eq!(
            translate(&mut m, &long4(), VA, RD),
            pf(PFERR_PRESENT | PFERR_RSVD)
        );
        // 1G page in the PDPT.
        m.put(e[1], 0x1_c000_0000 | PRW | PTE_PS);
        assert_eq!(
            translate(&mut m, &long4(), VA, RD),
            Ok(0x1_c000_0000 | (VA & 0x3fff_ffff))
        );
        // PS in a PML4E is reserved.
        m.put(e[0], 0x2000 | PRW | PTE_PS);
        assert_eq!(
            translate(&mut m, &long4(), VA, URD),
            pf(PFERR_PRESENT | PFERR_RSVD | PFERR_USER)
        );
    }

    #[test]
    fn walk_5level() {
        let va: u64 = 0x00ab_cdef_1234_5678; // bits 56:48 index the PML5
        let mut m = Ram::default();
        let i = |l: u32| (va >> (12 + 9 * (l - 1))) & 0x1ff;
        m.put(0x9000 + i(5) * 8, 0x1000 | PRW);
        m.put(0x1000 + i(4) * 8, 0x2000 | PRW);
        m.put(0x2000 + i(3) * 8, 0x3000 | PRW);
        m.put(0x3000 + i(2) * 8, 0x4000 | PRW);
        m.put(0x4000 + i(1) * 8, 0x7000 | PRW);
        let mut pg = long4();
        pg.cr3 = 0x9000;
        pg.cr4 |= X86_CR4_LA57;
        assert_eq!(translate(&mut m, &pg, va, RD), Ok(0x7678));
        assert!(m.get(0x9000 + i(5) * 8) & PTE_A != 0);
        // Without LA57 the same CR3 is a PML4: the walk reads other entries.
        pg.cr4 &= !X86_CR4_LA57;
        assert_eq!(translate(&mut m, &pg, va, RD), pf(0));
    }

    #[test]
    fn walk_pae() {
        let va: u64 = 0xc012_3456;
        let mut m = Ram::default();
        // PDPT at 0x1020 (32-byte aligned); entry 3 for 0xc0000000.
        m.put(0x1020 + 3 * 8, 0x2000 | P);
        m.put(0x2000 + ((va >> 21) & 0x1ff) * 8, 0x3000 | PRW);
        m.put(0x3000 + ((va >> 12) & 0x1ff) * 8, 0x8_0000_4000 | PRW);
        let pg = Paging {
            cr0: X86_CR0_PE | X86_CR0_PG | X86_CR0_WP,
            cr3: 0x1020,
            cr4: X86_CR4_PAE,
            efer: 0,
        };
        assert_eq!(translate(&mut m, &pg, va, WR), Ok(0x8_0000_4456));
        // The PDPTE gets no A bit; the PDE and PTE do.
        assert_eq!(m.get(0x1020 + 3 * 8), 0x2000 | P);
        assert!(m.get(0x2000 + ((va >> 21) & 0x1ff) * 8) & PTE_A != 0);
        // Upper GVA bits are ignored outside long mode.
        assert_eq!(
            translate(&mut m, &pg, 0xffff_ffff_0000_0000 | va, RD),
            Ok(0x8_0000_4456)
        );
        // A 2M page.
        m.put(0x2000 + ((va >> 21) & 0x1ff) * 8, 0x40_0000 | PRW | PTE_PS);
        assert_eq!(
            translate(&mut m, &pg, va, RD),
            Ok(0x40_0000 | (va & 0x1f_ffff))
        );
        // Not-present PDPTE.
        assert_eq!(translate(&mut m, &pg, 0x1000, WR), pf(PFERR_WRITE));
        // NX bit without EFER.NXE is reserved; with NXE it forbids fetches.
        m.put(0x2000 + ((va >> 21) & 0x1ff) * 8, 0x3000 | PRW | PTE_NX);
        assert_eq!(
            translate(&mut m, &pg, va, RD),
            pf(PFERR_PRESENT | PFERR_RSVD)
        );
        let nx = Paging {
            efer: EFER_NX,
            ..pg
        };
        assert_eq!(translate(&mut m, &nx, va, RD), Ok(0x8_0000_4456));
        assert_eq!(
            translate(&mut m, &nx, va, FETCH),
            pf(PFERR_PRESENT | PFERR_FETCH)
        );
        // Bits 62:MAXPHYADDR are reserved in PAE entries.
        m.put(0x3000 + ((va >> 12) & 0x1ff) * 8, (1 << 55) | 0x4000 | PRW);
        m.put(0x2000 + ((va >> 21) & 0x1ff) * 8, 0x3000 | PRW);
        assert_eq!(
            translate(&mut m, &pg, va, RD),
            pf(PFERR_PRESENT | PFERR_RSVD)
        );
    }

    #[test]
    fn walk_32bit_pse() {
        let va: u64 = 0x8040_1234;
        let mut m = Ram::default();
        let pde = 0x1000 + ((va >> 22) & 0x3ff) * 4;
        let pg = Paging {
            cr0: X86_CR0_PE | X86_CR0_PG,
            cr3: 0x1000,
            cr4: X86_CR4_PSE,
            efer: 0,
        };
        // 4M page with PSE-36 bits: PA 39:32 = 0x12 from bits 20:13.
        m.put32(pde, 0x0c00_0000 | (0x12 << 13) | 0x87);
        m.put32(0x1ff8, 0x5555_5555); // a neighbour in the same quadword must survive
        assert_eq!(
            translate(&mut m, &pg, va, WR),
            Ok(0x12_0c00_0000 | (va & 0x3f_ffff))
        );
        let e = m.read_u32(pde).unwrap();
        assert_eq!(u64::from(e) & (PTE_A | PTE_D), PTE_A | PTE_D);
        // Bit 21 is reserved; with MAXPHYADDR 36 so are 20:17.
        m.put32(pde, 0x0c00_0000 | (1 << 21) | 0x87);
        assert_eq!(
            translate(&mut m, &pg, va, RD),
            pf(PFERR_PRESENT | PFERR_RSVD)
        );
        m.put32(pde, 0x0c00_0000 | (0x10 << 13) | 0x87);
        let opts = WalkOptions {
            maxphyaddr: 36,
            smap_ac: None,
        };
        assert_eq!(
            translate_with(&mut m, &pg, va, RD, &opts),
            pf(PFERR_PRESENT | PFERR_RSVD)
        );
        // Without CR4.PSE the PS bit is ignored: the PDE points to a page table.
        m.put32(pde, 0x0000_3000 | 0x87);
        m.put32(0x3000 + ((va >> 12) & 0x3ff) * 4, 0x6000 | 0x7);
        let nopse = Paging { cr4: 0, ..pg };
        assert_eq!(translate(&mut m, &nopse, va, RD), Ok(0x6234));
        // 4K two-level walk, not present at the PTE.
        m.put32(0x3000 + ((va >> 12) & 0x3ff) * 4, 0x6000);
        assert_eq!(translate(&mut m, &nopse, va, URD), pf(PFERR_USER));
        assert_eq!(m.read_u32(0x1ff8), Some(0x5555_5555));
    }

    #[test]
    fn not_present_error_codes() {
        let mut m = four_level(VA, 0);
        let pg = long4();
        assert_eq!(translate(&mut m, &pg, VA, RD), pf(0));
        assert_eq!(
            translate(&mut m, &pg, VA, UWR),
            pf(PFERR_WRITE | PFERR_USER)
        );
        assert_eq!(translate(&mut m, &pg, VA, FETCH), pf(PFERR_FETCH));
        // Without NXE or SMEP, fetches do not report I/D.
        let nonx = Paging {
            efer: EFER_LMA,
            ..pg
        };
        assert_eq!(translate(&mut m, &nonx, VA, FETCH), pf(0));
        // Nothing was marked accessed on a failed walk.
        assert!(m.get(ptes(VA)[0]) & PTE_A == 0);
        // Not present at the top.
        let mut empty = Ram::default();
        empty.put(0x1000, 0);
        assert_eq!(translate(&mut empty, &pg, 0, WR), pf(PFERR_WRITE));
    }

    #[test]
    fn write_protection() {
        // Read-only user page.
        let mut m = four_level(VA, P | U);
        let wp = long4();
        let nowp = Paging {
            cr0: wp.cr0 & !X86_CR0_WP,
            ..wp
        };
        assert_eq!(
            translate(&mut m, &wp, VA, WR),
            pf(PFERR_PRESENT | PFERR_WRITE)
        );
        assert_eq!(translate(&mut m, &nowp, VA, WR), Ok(0x5abc));
        // User writes fault regardless of WP.
        assert_eq!(
            translate(&mut m, &nowp, VA, UWR),
            pf(PFERR_PRESENT | PFERR_WRITE | PFERR_USER)
        );
        // A read-only upper level protects the whole subtree.
        let mut m = four_level(VA, PRW);
        m.put(ptes(VA)[1], 0x3000 | P | U);
        assert_eq!(
            translate(&mut m, &wp, VA, WR),
            pf(PFERR_PRESENT | PFERR_WRITE)
        );
        assert_eq!(translate(&mut m, &wp, VA, RD), Ok(0x5abc));
    }

    #[test]
    fn user_supervisor() {
        let mut m = four_level(VA, P | W);
        let pg = long4();
        assert_eq!(
            translate(&mut m, &pg, VA, URD),
            pf(PFERR_PRESENT | PFERR_USER)
        );
        assert_eq!(translate(&mut m, &pg, VA, RD), Ok(0x5abc));
        // Supervisor at an upper level is enough.
        let mut m = four_level(VA, PRW);
        m.put(ptes(VA)[0], 0x2000 | P | W);
        assert_eq!(
            translate(&mut m, &pg, VA, UWR),
            pf(PFERR_PRESENT | PFERR_USER | PFERR_WRITE)
        );
    }

    #[test]
    fn nx_smep_smap() {
        let pg = long4();
        // NX on the leaf.
        let mut m = four_level(VA, PRW | PTE_NX);
        assert_eq!(
            translate(&mut m, &pg, VA, FETCH),
            pf(PFERR_PRESENT | PFERR_FETCH)
        );
        assert_eq!(translate(&mut m, &pg, VA, RD), Ok(0x5abc));
        // NX on an upper level.
        let mut m = four_level(VA, PRW);
        m.put(ptes(VA)[1], 0x3000 | PRW | PTE_NX);
        assert_eq!(
            translate(&mut m, &pg, VA, FETCH),
            pf(PFERR_PRESENT | PFERR_FETCH)
        );
        // Without EFER.NXE bit 63 is reserved.
        let nonx = Paging {
            efer: EFER_LMA,
            ..pg
        };
        assert_eq!(
            translate(&mut m, &nonx, VA, RD),
            pf(PFERR_PRESENT | PFERR_RSVD)
        );
        // SMEP: supervisor fetch from a user page.
        let mut m = four_level(VA, PRW);
        let smep = Paging {
            cr4: pg.cr4 | X86_CR4_SMEP,
            ..pg
        };
        assert_eq!(translate(&mut m, &pg, VA, FETCH), Ok(0x5abc));
        assert_eq!(
            translate(&mut m, &smep, VA, FETCH),
            pf(PFERR_PRESENT | PFERR_FETCH)
        );
        let ufetch = Access {
            user: true,
            ..FETCH
        };
        assert_eq!(translate(&mut m, &smep, VA, ufetch), Ok(0x5abc));
        // SMAP: only when asked for, and not with EFLAGS.AC.
        let smap = Paging {
            cr4: pg.cr4 | X86_CR4_SMAP,
            ..pg
        };
        assert_eq!(translate(&mut m, &smap, VA, RD), Ok(0x5abc));
        let ac0 = WalkOptions {
            smap_ac: Some(false),
            ..WalkOptions::default()
        };
        let ac1 = WalkOptions {
            smap_ac: Some(true),
            ..WalkOptions::default()
        };
        assert_eq!(
            translate_with(&mut m, &smap, VA, WR, &ac0),
            pf(PFERR_PRESENT | PFERR_WRITE)
        );
        assert_eq!(translate_with(&mut m, &smap, VA, WR, &ac1), Ok(0x5abc));
        assert_eq!(translate_with(&mut m, &smap, VA, URD, &ac0), Ok(0x5abc));
    }

    #[test]
    fn reserved_address_bits() {
        let mut m = four_level(VA, PRW);
        m.put(ptes(VA)[3], (1 << 45) | 0x5000 | PRW);
        assert_eq!(translate(&mut m, &long4(), VA, RD), Ok((1 << 45) | 0x5abc));
        let opts = WalkOptions {
            maxphyaddr: 40,
            smap_ac: None,
        };
        assert_eq!(
            translate_with(&mut m, &long4(), VA, RD, &opts),
            pf(PFERR_PRESENT | PFERR_RSVD)
        );
        // Bits 62:52 are ignored (available) in long-mode entries.
        m.put(ptes(VA)[3], (1 << 60) | 0x5000 | PRW);
        assert_eq!(translate(&mut m, &long4(), VA, RD), Ok(0x5abc));
    }

    #[test]
    fn walk_memory_errors() {
        // The PDPT is not RAM.
        let mut m = Ram::default();
        m.put(0x1000 + ((VA >> 39) & 0x1ff) * 8, 0x10_0000 | PRW);
        assert_eq!(translate(&mut m, &long4(), VA, RD), Err(WalkError::Memory));
    }

    /// Races a guest writer: the first A/D cmpxchg finds the entry changed.
    struct Racy {
        ram: Ram,
        races: u32,
    }

    impl GuestMem for Racy {
        fn read_u64(&mut self, gpa: u64) -> Option<u64> {
            self.ram.read_u64(gpa)
        }

        fn write_u64(&mut self, gpa: u64, v: u64) -> bool {
            self.ram.write_u64(gpa, v)
        }

        fn cmpxchg_u64(&mut self, gpa: u64, old: u64, new: u64) -> Option<bool> {
            if self.races > 0 {
                self.races -= 1;
                // Another vCPU set the A bit meanwhile.
                self.ram.put(gpa, old | PTE_A);
                return Some(false);
            }
            self.ram.read_u64(gpa).map(|cur| {
                if cur == old {
                    self.ram.put(gpa, new);
                }
                cur == old
            })
        }
    }

    #[test]
    fn walk_retries_when_entries_change() {
        let mut m = Racy {
            ram: four_level(VA, PRW),
            races: 3,
        };
        assert_eq!(translate(&mut m, &long4(), VA, WR), Ok(0x5abc));
        assert!(m.ram.get(ptes(VA)[3]) & PTE_D != 0);
        let mut m = Racy {
            ram: four_level(VA, PRW),
            races: 1000,
        };
        assert_eq!(translate(&mut m, &long4(), VA, WR), Err(WalkError::Memory));
    }
}
