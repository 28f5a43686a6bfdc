//! Architectural checks on `KVM_SET_SREGS` (upstream kvm_is_valid_sregs(),
//! kvm_is_valid_cr0(), kvm_is_valid_cr4()).

use super::msr_index::{EFER_LMA, EFER_LME};
/// CR4 bits every x86-64 vCPU has: VME PVI TSD DE PSE PAE MCE PGE PCE OSFXSR
/// OSXMMEXCPT.
use super::processor_flags::{
    X86_CR0_CD, X86_CR0_NW, X86_CR0_PE, X86_CR0_PG, X86_CR4_FSGSBASE, X86_CR4_LA57,
    X86_CR4_OSXSAVE, X86_CR4_PAE, X86_CR4_PCIDE, X86_CR4_PKE, X86_CR4_SMAP, X86_CR4_SMEP,
    X86_CR4_UMIP,
};
pub const CR4_BASE: u64 = 0x7ff;

/// The CR4 bits a vCPU may set, from its CPUID (leaf 1 ECX, leaf 7.0 EBX/ECX), as
/// upstream's __cr4_reserved_bits() with the guest's CPUID.
pub fn cr4_allowed(l1_ecx: u32, l7_ebx: u32, l7_ecx: u32) -> u64 {
    let bit = |r: u32, b: u32, cr4: u64| if r & (1 << b) != 0 { cr4 } else { 0 };
    CR4_BASE
        | bit(l1_ecx, 17, X86_CR4_PCIDE)
        | bit(l1_ecx, 26, X86_CR4_OSXSAVE)
        | bit(l7_ebx, 0, X86_CR4_FSGSBASE)
        | bit(l7_ebx, 7, X86_CR4_SMEP)
        | bit(l7_ebx, 20, X86_CR4_SMAP)
        | bit(l7_ecx, 2, X86_CR4_UMIP)
        | bit(l7_ecx, 3, X86_CR4_PKE)
        | bit(l7_ecx, 16, X86_CR4_LA57)
}

pub fn cr0_valid(cr0: u64) -> bool {
    cr0 >> 32 == 0
        && !(cr0 & X86_CR0_NW != 0 && cr0 & X86_CR0_CD == 0)
        && !(cr0 & X86_CR0_PG != 0 && cr0 & X86_CR0_PE == 0)
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
    if efer & EFER_LME != 0 && cr0 & X86_CR0_PG != 0 {
        if cr4 & X86_CR4_PAE == 0 || efer & EFER_LMA == 0 {
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

/// KVM_SET_TSS_ADDR's highest address: the real-mode TSS's three pages end below
/// 4 GiB (kvm_vm_ioctl_set_tss_addr()).
pub const TSS_ADDR_LIMIT: u32 = 0u32.wrapping_sub(3 * 4096);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_consistency() {
        let pg = X86_CR0_PG | X86_CR0_PE;
        let lm = EFER_LME | EFER_LMA;
        assert!(sregs_valid(pg, 0x1000, X86_CR4_PAE, lm, true, CR4_BASE, 48));
        assert!(
            !sregs_valid(pg, 0x1000, 0, lm, true, CR4_BASE, 48),
            "no PAE"
        );
        assert!(
            !sregs_valid(pg, 0x1000, X86_CR4_PAE, EFER_LME, true, CR4_BASE, 48),
            "no LMA"
        );
        assert!(
            !sregs_valid(pg, 1 << 50, X86_CR4_PAE, lm, true, CR4_BASE, 48),
            "CR3 too wide"
        );
        assert!(
            !sregs_valid(X86_CR0_PE, 0, 0, EFER_LMA, false, CR4_BASE, 48),
            "LMA without paging"
        );
        assert!(
            !sregs_valid(X86_CR0_PE, 0, 0, 0, true, CR4_BASE, 48),
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
        assert!(!cr0_valid(X86_CR0_NW), "NW without CD");
        assert!(!cr0_valid(X86_CR0_PG), "PG without PE");
        assert!(!cr0_valid(1 << 32));
        assert!(!sregs_valid(0x10, 0, X86_CR4_LA57, 0, false, CR4_BASE, 48));
        let ok = cr4_allowed(1 << 26, 1, 1 << 16);
        assert_eq!(
            ok,
            CR4_BASE | X86_CR4_OSXSAVE | X86_CR4_FSGSBASE | X86_CR4_LA57
        );
        assert!(sregs_valid(0x10, 0, X86_CR4_OSXSAVE, 0, false, ok, 48));
    }
}
