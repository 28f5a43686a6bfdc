//! Architectural checks on `KVM_SET_SREGS` (upstream kvm_is_valid_sregs(),
//! kvm_is_valid_cr0(), kvm_is_valid_cr4()).

pub const CR0_PE: u64 = 1 << 0;
pub const CR0_NW: u64 = 1 << 29;
pub const CR0_CD: u64 = 1 << 30;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PAE: u64 = 1 << 5;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;

/// CR4 bits every x86-64 vCPU has: VME PVI TSD DE PSE PAE MCE PGE PCE OSFXSR
/// OSXMMEXCPT.
pub const CR4_BASE: u64 = 0x7ff;
pub const CR4_UMIP: u64 = 1 << 11;
pub const CR4_LA57: u64 = 1 << 12;
pub const CR4_FSGSBASE: u64 = 1 << 16;
pub const CR4_PCIDE: u64 = 1 << 17;
pub const CR4_OSXSAVE: u64 = 1 << 18;
pub const CR4_SMEP: u64 = 1 << 20;
pub const CR4_SMAP: u64 = 1 << 21;
pub const CR4_PKE: u64 = 1 << 22;

/// The CR4 bits a vCPU may set, from its CPUID (leaf 1 ECX, leaf 7.0 EBX/ECX), as
/// upstream's __cr4_reserved_bits() with the guest's CPUID.
pub fn cr4_allowed(l1_ecx: u32, l7_ebx: u32, l7_ecx: u32) -> u64 {
    let bit = |r: u32, b: u32, cr4: u64| if r & (1 << b) != 0 { cr4 } else { 0 };
    CR4_BASE
        | bit(l1_ecx, 17, CR4_PCIDE)
        | bit(l1_ecx, 26, CR4_OSXSAVE)
        | bit(l7_ebx, 0, CR4_FSGSBASE)
        | bit(l7_ebx, 7, CR4_SMEP)
        | bit(l7_ebx, 20, CR4_SMAP)
        | bit(l7_ecx, 2, CR4_UMIP)
        | bit(l7_ecx, 3, CR4_PKE)
        | bit(l7_ecx, 16, CR4_LA57)
}

pub fn cr0_valid(cr0: u64) -> bool {
    cr0 >> 32 == 0
        && !(cr0 & CR0_NW != 0 && cr0 & CR0_CD == 0)
        && !(cr0 & CR0_PG != 0 && cr0 & CR0_PE == 0)
}

/// `maxphyaddr`: the guest's physical address width; CR3 may not set bits above it.
pub fn sregs_valid(
    cr0: u64,
    cr3: u64,
    cr4: u64,
    efer: u64,
    cs_l: bool,
    cr4_ok: u64,
    maxphyaddr: u32,
) -> bool {
    if efer & EFER_LME != 0 && cr0 & CR0_PG != 0 {
        if cr4 & CR4_PAE == 0 || efer & EFER_LMA == 0 {
            return false;
        }
        if maxphyaddr < 64 && cr3 >> maxphyaddr != 0 {
            return false;
        }
    } else if efer & EFER_LMA != 0 || cs_l {
        return false;
    }
    cr4 & !cr4_ok == 0 && cr0_valid(cr0)
}

/// Whether PAE PDPTEs can be loaded (upstream load_pdptrs()): no present entry has
/// a reserved bit (above MAXPHYADDR, 8:5 or 2:1).
pub fn pdptes_valid(pdptes: &[u64; 4], maxphyaddr: u32) -> bool {
    let above = if maxphyaddr >= 64 {
        0
    } else {
        u64::MAX << maxphyaddr
    };
    let rsvd = above | 0x1e0 | 0x6;
    pdptes.iter().all(|p| p & 1 == 0 || p & rsvd == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_consistency() {
        let pg = CR0_PG | CR0_PE;
        let lm = EFER_LME | EFER_LMA;
        assert!(sregs_valid(pg, 0x1000, CR4_PAE, lm, true, CR4_BASE, 48));
        assert!(
            !sregs_valid(pg, 0x1000, 0, lm, true, CR4_BASE, 48),
            "no PAE"
        );
        assert!(
            !sregs_valid(pg, 0x1000, CR4_PAE, EFER_LME, true, CR4_BASE, 48),
            "no LMA"
        );
        assert!(
            !sregs_valid(pg, 1 << 50, CR4_PAE, lm, true, CR4_BASE, 48),
            "CR3 too wide"
        );
        assert!(
            !sregs_valid(CR0_PE, 0, 0, EFER_LMA, false, CR4_BASE, 48),
            "LMA without paging"
        );
        assert!(
            !sregs_valid(CR0_PE, 0, 0, 0, true, CR4_BASE, 48),
            "CS.L outside long mode"
        );
        assert!(
            sregs_valid(0x6000_0010, 0, 0, 0, false, CR4_BASE, 48),
            "reset state"
        );
    }

    #[test]
    fn pdptes() {
        assert!(
            pdptes_valid(&[0x21001, 0, 0x5019, 0], 36),
            "PWT/PCD are fine"
        );
        assert!(!pdptes_valid(&[0x21021, 0, 0, 0], 36), "bit 5 is reserved");
        assert!(!pdptes_valid(&[0x21003, 0, 0, 0], 36), "bit 1 is reserved");
        assert!(!pdptes_valid(&[1 << 40 | 1, 0, 0, 0], 40));
        assert!(pdptes_valid(&[1 << 40 | 1, 0, 0, 0], 41));
        assert!(pdptes_valid(&[!1, 0, 0, 0], 36), "not present: not checked");
    }

    #[test]
    fn cr_bits() {
        assert!(!cr0_valid(CR0_NW), "NW without CD");
        assert!(!cr0_valid(CR0_PG), "PG without PE");
        assert!(!cr0_valid(1 << 32));
        assert!(!sregs_valid(0x10, 0, CR4_LA57, 0, false, CR4_BASE, 48));
        let ok = cr4_allowed(1 << 26, 1, 1 << 16);
        assert_eq!(ok, CR4_BASE | CR4_OSXSAVE | CR4_FSGSBASE | CR4_LA57);
        assert!(sregs_valid(0x10, 0, CR4_OSXSAVE, 0, false, ok, 48));
    }
}
