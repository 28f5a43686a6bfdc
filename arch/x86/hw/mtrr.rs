// SPDX-License-Identifier: GPL-2.0-only
//! Guest memory types (upstream mtrr.c and kvm_pat_valid()): the MTRRs a vCPU
//! has, which KVM only stores (with NPT the guest's PAT and MTRRs apply without
//! it), and the checks that make a bad write #GP.

pub const MSR_MTRRCAP: u32 = 0x0000_00fe;
/// MTRRphysBase0/MTRRphysMask0 .. MTRRphysMask7.
pub const MSR_MTRR_PHYS_BASE0: u32 = 0x0000_0200;
pub const MSR_MTRR_FIX64K_00000: u32 = 0x0000_0250;
pub const MSR_MTRR_FIX16K_80000: u32 = 0x0000_0258;
pub const MSR_MTRR_FIX16K_A0000: u32 = 0x0000_0259;
pub const MSR_MTRR_FIX4K_C0000: u32 = 0x0000_0268;
pub const MSR_MTRR_FIX4K_F8000: u32 = 0x0000_026f;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x0000_02ff;

/// KVM_NR_VAR_MTRR.
pub const KVM_NR_VAR_MTRR: usize = 8;
const MSR_MTRR_PHYS_MASK_LAST: u32 = MSR_MTRR_PHYS_BASE0 + 2 * KVM_NR_VAR_MTRR as u32 - 1;
/// MTRRcap: write-combining and fixed ranges, the variable ones (no SMRR).
pub const MTRRCAP_VALUE: u64 = 0x500 | KVM_NR_VAR_MTRR as u64;

/// valid_mtrr_type(): UC, WC, WT, WP, WB.
fn valid_mtrr_type(t: u64) -> bool {
    t < 8 && (1 << t) & 0x73 != 0
}

/// kvm_pat_valid(): every entry UC, WC, WT, WP, WB or UC-, no reserved bit.
pub fn kvm_pat_valid(data: u64) -> bool {
    if data & 0xf8f8_f8f8_f8f8_f8f8 != 0 {
        return false;
    }
    // 2 and 3 are reserved: bit 1 set needs bit 2 set.
    (data | ((data & 0x0202_0202_0202_0202) << 1)) == data
}

/// A vCPU's MTRRs (upstream struct kvm_mtrr).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mtrr {
    pub var: [u64; 2 * KVM_NR_VAR_MTRR],
    pub fixed_64k: u64,
    pub fixed_16k: [u64; 2],
    pub fixed_4k: [u64; 8],
    pub deftype: u64,
}

impl Mtrr {
    /// Whether `msr` is one of the MTRR MSRs kvm_mtrr_get_msr() answers.
    pub fn is_mtrr_msr(msr: u32) -> bool {
        msr == MSR_MTRRCAP || msr == MSR_MTRR_DEF_TYPE || Self::is_range(msr)
    }

    fn is_range(msr: u32) -> bool {
        (MSR_MTRR_PHYS_BASE0..=MSR_MTRR_FIX4K_F8000).contains(&msr)
    }

    /// find_mtrr().
    fn find(&mut self, msr: u32) -> Option<&mut u64> {
        match msr {
            MSR_MTRR_PHYS_BASE0..=MSR_MTRR_PHYS_MASK_LAST => {
                self.var.get_mut((msr - MSR_MTRR_PHYS_BASE0) as usize)
            }
            MSR_MTRR_FIX64K_00000 => Some(&mut self.fixed_64k),
            MSR_MTRR_FIX16K_80000 | MSR_MTRR_FIX16K_A0000 => self
                .fixed_16k
                .get_mut((msr - MSR_MTRR_FIX16K_80000) as usize),
            MSR_MTRR_FIX4K_C0000..=MSR_MTRR_FIX4K_F8000 => {
                self.fixed_4k.get_mut((msr - MSR_MTRR_FIX4K_C0000) as usize)
            }
            MSR_MTRR_DEF_TYPE => Some(&mut self.deftype),
            _ => None,
        }
    }

    /// kvm_mtrr_get_msr(): None for #GP (the gaps in the range).
    pub fn get_msr(&self, msr: u32) -> Option<u64> {
        if msr == MSR_MTRRCAP {
            return Some(MTRRCAP_VALUE);
        }
        let mut copy = *self;
        copy.find(msr).map(|v| *v)
    }

    /// kvm_mtrr_set_msr(): false for #GP: a gap, MTRRcap, a bad type or a reserved
    /// bit. `reserved_gpa_bits`: the bits above the guest's MAXPHYADDR.
    pub fn set_msr(&mut self, msr: u32, data: u64, reserved_gpa_bits: u64) -> bool {
        let valid = match msr {
            MSR_MTRR_DEF_TYPE => data & !0xcff == 0 && valid_mtrr_type(data & 0xff),
            MSR_MTRR_FIX64K_00000..=MSR_MTRR_FIX4K_F8000 => {
                (0..8).all(|i| valid_mtrr_type((data >> (i * 8)) & 0xff))
            }
            MSR_MTRR_PHYS_BASE0..=MSR_MTRR_PHYS_MASK_LAST if msr & 1 == 0 => {
                valid_mtrr_type(data & 0xff) && data & (reserved_gpa_bits | 0xf00) == 0
            }
            MSR_MTRR_PHYS_BASE0..=MSR_MTRR_PHYS_MASK_LAST => {
                data & (reserved_gpa_bits | 0x7ff) == 0
            }
            _ => false,
        };
        if !valid {
            return false;
        }
        match self.find(msr) {
            Some(m) => {
                *m = data;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bits 63:36 for a 36-bit guest.
    const RSVD36: u64 = !((1 << 36) - 1);

    #[test]
    fn pat_values() {
        assert!(kvm_pat_valid(0x0007_0406_0007_0406)); // the reset value
        assert!(kvm_pat_valid(0));
        assert!(!kvm_pat_valid(0x02)); // 2 is reserved
        assert!(!kvm_pat_valid(0x03 << 8)); // 3 too
        assert!(!kvm_pat_valid(0x08)); // a reserved bit
    }

    #[test]
    fn mtrr_msrs() {
        let mut m = Mtrr::default();
        assert_eq!(m.get_msr(MSR_MTRRCAP), Some(0x508));
        assert!(!m.set_msr(MSR_MTRRCAP, 0, RSVD36));
        // Default type: WB, enabled with fixed ranges.
        assert!(m.set_msr(MSR_MTRR_DEF_TYPE, 0xc06, RSVD36));
        assert_eq!(m.get_msr(MSR_MTRR_DEF_TYPE), Some(0xc06));
        assert!(!m.set_msr(MSR_MTRR_DEF_TYPE, 0x1006, RSVD36));
        assert!(!m.set_msr(MSR_MTRR_DEF_TYPE, 0xc02, RSVD36));
        // Fixed: every byte a valid type.
        assert!(m.set_msr(MSR_MTRR_FIX4K_F8000, 0x0505_0505_0505_0505, RSVD36));
        assert!(!m.set_msr(MSR_MTRR_FIX16K_A0000, 0x0700, RSVD36));
        assert_eq!(m.get_msr(MSR_MTRR_FIX4K_F8000), Some(0x0505_0505_0505_0505));
        // Variable: base type and reserved bits, mask's low bits and MAXPHYADDR.
        assert!(m.set_msr(MSR_MTRR_PHYS_BASE0 + 2, 0x8000_0006, RSVD36));
        assert!(!m.set_msr(MSR_MTRR_PHYS_BASE0 + 2, 0x8000_0106, RSVD36));
        assert!(!m.set_msr(MSR_MTRR_PHYS_BASE0 + 2, 1 << 40 | 6, RSVD36));
        assert!(m.set_msr(MSR_MTRR_PHYS_BASE0 + 3, 0xf_8000_0800, RSVD36));
        assert!(!m.set_msr(MSR_MTRR_PHYS_BASE0 + 3, 0xf_8000_0801, RSVD36));
        assert_eq!(m.get_msr(MSR_MTRR_PHYS_BASE0 + 2), Some(0x8000_0006));
        // The gaps between the ranges are not MTRRs.
        assert_eq!(m.get_msr(0x210), None);
        assert!(!m.set_msr(0x260, 0, RSVD36));
        assert!(Mtrr::is_mtrr_msr(0x210) && !Mtrr::is_mtrr_msr(0x277));
    }
}
