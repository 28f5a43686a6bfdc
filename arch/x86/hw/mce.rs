// SPDX-License-Identifier: GPL-2.0-only
//! Machine-check architecture for guests (upstream x86.c's MCE parts and
//! asm/mce.h): the banks behind the MCG_* and MCi_* MSRs, KVM_X86_SETUP_MCE and
//! KVM_X86_SET_MCE's injection rules.

/// The banks a vCPU can have (upstream KVM_MAX_MCE_BANKS): KVM_CAP_MCE's answer.
pub const KVM_MAX_MCE_BANKS: usize = 32;

pub const MSR_IA32_P5_MC_ADDR: u32 = 0x0000_0000;
pub const MSR_IA32_P5_MC_TYPE: u32 = 0x0000_0001;
pub const MSR_IA32_MCG_CAP: u32 = 0x0000_0179;
pub const MSR_IA32_MCG_STATUS: u32 = 0x0000_017a;
pub const MSR_IA32_MCG_CTL: u32 = 0x0000_017b;
/// MCi_CTL, MCi_STATUS, MCi_ADDR, MCi_MISC of bank i at 0x400 + 4i (+0..3).
pub const MSR_IA32_MC0_CTL: u32 = 0x0000_0400;
/// MCi_CTL2 (CMCI) of bank i at 0x280 + i.
pub const MSR_IA32_MC0_CTL2: u32 = 0x0000_0280;
/// The registers of a bank, in MSR order.
const BANK_CTL: usize = 0;
const BANK_STATUS: usize = 1;
const MC_CTL_LAST: u32 = MSR_IA32_MC0_CTL + 4 * KVM_MAX_MCE_BANKS as u32 - 1;
const MC_CTL2_LAST: u32 = MSR_IA32_MC0_CTL2 + KVM_MAX_MCE_BANKS as u32 - 1;

/// MCG_CAP: bank count, MCG_CTL present, CMCI, software error recovery.
pub const MCG_BANKCNT_MASK: u64 = 0xff;
pub const MCG_CTL_P: u64 = 1 << 8;
pub const MCG_CMCI_P: u64 = 1 << 10;
pub const MCG_SER_P: u64 = 1 << 24;
/// The MCG_CAP bits KVM_X86_SETUP_MCE passes through besides the supported ones:
/// the bank count and MCG_EXT_CNT.
const MCG_CAP_FREE: u64 = 0xff | 0xff_0000;
/// What KVM_X86_GET_MCE_CAP_SUPPORTED reports on AMD (kvm_caps.supported_mce_cap;
/// VMX adds LMCE and CMCI).
pub const SUPPORTED_MCE_CAP_SVM: u64 = MCG_CTL_P | MCG_SER_P;

pub const MCG_STATUS_MCIP: u64 = 1 << 2;

pub const MCI_STATUS_VAL: u64 = 1 << 63;
pub const MCI_STATUS_OVER: u64 = 1 << 62;
pub const MCI_STATUS_UC: u64 = 1 << 61;
pub const MCI_STATUS_PCC: u64 = 1 << 57;
pub const MCI_STATUS_S: u64 = 1 << 56;
pub const MCI_STATUS_AR: u64 = 1 << 55;

pub const MCI_CTL2_CMCI_EN: u64 = 1 << 30;
pub const MCI_CTL2_CMCI_THRESHOLD_MASK: u64 = 0x7fff;

/// `struct kvm_x86_mce` as KVM_X86_SET_MCE hands it in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injection {
    pub status: u64,
    pub addr: u64,
    pub misc: u64,
    pub mcg_status: u64,
    pub bank: u8,
}

/// What KVM_X86_SET_MCE asks of the vCPU besides the bank update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum McEffect {
    /// Recorded only (a corrected error, reporting disabled, or an overflow).
    None,
    /// Raise #MC in the guest.
    MachineCheck,
    /// The guest cannot take a #MC (one in progress, or CR4.MCE clear): shutdown.
    TripleFault,
    /// An uncorrected no-action error: CMCI through the LAPIC's LVTCMCI.
    Cmci,
}

/// A vCPU's machine-check state (upstream vcpu->arch.mcg_* and mce_banks).
#[derive(Clone)]
pub struct Mce {
    pub mcg_cap: u64,
    pub mcg_status: u64,
    pub mcg_ctl: u64,
    /// CTL, STATUS, ADDR, MISC of each bank.
    pub banks: [u64; 4 * KVM_MAX_MCE_BANKS],
    pub ctl2: [u64; KVM_MAX_MCE_BANKS],
}

impl Default for Mce {
    /// At vCPU creation: all the banks, nothing else (kvm_arch_vcpu_create()).
    fn default() -> Self {
        Mce {
            mcg_cap: KVM_MAX_MCE_BANKS as u64,
            mcg_status: 0,
            mcg_ctl: 0,
            banks: [0; 4 * KVM_MAX_MCE_BANKS],
            ctl2: [0; KVM_MAX_MCE_BANKS],
        }
    }
}

impl Mce {
    fn bank_num(&self) -> usize {
        ((self.mcg_cap & MCG_BANKCNT_MASK) as usize).min(KVM_MAX_MCE_BANKS)
    }

    /// kvm_vcpu_ioctl_x86_setup_mce(): false for -EINVAL (no banks, too many, or
    /// a capability `supported` does not have).
    pub fn setup(&mut self, mcg_cap: u64, supported: u64) -> bool {
        let n = (mcg_cap & MCG_BANKCNT_MASK) as usize;
        if n == 0 || n > KVM_MAX_MCE_BANKS || mcg_cap & !(supported | MCG_CAP_FREE) != 0 {
            return false;
        }
        self.mcg_cap = mcg_cap;
        // MCG_CTL and every MCi_CTL all 1s (everything reported), CTL2 0.
        if mcg_cap & MCG_CTL_P != 0 {
            self.mcg_ctl = u64::MAX;
        }
        for b in 0..n {
            if let Some(c) = self.banks.get_mut(4 * b) {
                *c = u64::MAX;
            }
            if mcg_cap & MCG_CMCI_P != 0 {
                if let Some(c) = self.ctl2.get_mut(b) {
                    *c = 0;
                }
            }
        }
        true
    }

    /// get_msr_mce(): None for #GP (or a failed KVM_GET_MSRS); `host` is
    /// userspace. Not an MCE MSR is None too.
    pub fn get_msr(&self, msr: u32, host: bool) -> Option<u64> {
        let cap = self.mcg_cap;
        match msr {
            MSR_IA32_P5_MC_ADDR | MSR_IA32_P5_MC_TYPE => Some(0),
            MSR_IA32_MCG_CAP => Some(cap),
            MSR_IA32_MCG_CTL => (cap & MCG_CTL_P != 0 || host).then_some(self.mcg_ctl),
            MSR_IA32_MCG_STATUS => Some(self.mcg_status),
            MSR_IA32_MC0_CTL2..=MC_CTL2_LAST => {
                let i = (msr - MSR_IA32_MC0_CTL2) as usize;
                if i >= self.bank_num() || cap & MCG_CMCI_P == 0 && !host {
                    return None;
                }
                self.ctl2.get(i).copied()
            }
            MSR_IA32_MC0_CTL..=MC_CTL_LAST => {
                let i = (msr - MSR_IA32_MC0_CTL) as usize;
                if i >= 4 * self.bank_num() {
                    return None;
                }
                self.banks.get(i).copied()
            }
            _ => None,
        }
    }

    /// Whether `msr` is one of set_msr()'s.
    pub fn is_mce_msr(msr: u32) -> bool {
        matches!(
            msr,
            MSR_IA32_P5_MC_ADDR
                | MSR_IA32_P5_MC_TYPE
                | MSR_IA32_MCG_CAP
                | MSR_IA32_MCG_CTL
                | MSR_IA32_MCG_STATUS
                | MSR_IA32_MC0_CTL2..=MC_CTL2_LAST
                | MSR_IA32_MC0_CTL..=MC_CTL_LAST
        )
    }

    /// set_msr_mce(): false for #GP (or a failed KVM_SET_MSRS). MCG_CAP and the P5
    /// MSRs are read-only. `status_wr_en`: the guest may write non-zero MCi_STATUS
    /// values (AMD's HWCR.McStatusWrEn).
    pub fn set_msr(&mut self, msr: u32, data: u64, host: bool, status_wr_en: bool) -> bool {
        let cap = self.mcg_cap;
        match msr {
            MSR_IA32_MCG_STATUS => self.mcg_status = data,
            MSR_IA32_MCG_CTL => {
                if cap & MCG_CTL_P == 0 && (data != 0 || !host) {
                    return false;
                }
                if data != 0 && data != u64::MAX {
                    return false;
                }
                self.mcg_ctl = data;
            }
            MSR_IA32_MC0_CTL2..=MC_CTL2_LAST => {
                let i = (msr - MSR_IA32_MC0_CTL2) as usize;
                if i >= self.bank_num() {
                    return false;
                }
                if cap & MCG_CMCI_P == 0 && (data != 0 || !host) {
                    return false;
                }
                if data & !(MCI_CTL2_CMCI_EN | MCI_CTL2_CMCI_THRESHOLD_MASK) != 0 {
                    return false;
                }
                match self.ctl2.get_mut(i) {
                    Some(c) => *c = data,
                    None => return false,
                }
            }
            MSR_IA32_MC0_CTL..=MC_CTL_LAST => {
                let i = (msr - MSR_IA32_MC0_CTL) as usize;
                if i >= 4 * self.bank_num() {
                    return false;
                }
                let refused = match i % 4 {
                    // MCi_CTL: 0 or all 1s, except that Linux clears bit 10 of
                    // bank 4 (a K8 GART erratum) and UnixWare bit 0 of bank 1.
                    BANK_CTL => data != 0 && (data | 1 << 10 | 1) != u64::MAX,
                    // MCi_STATUS: only 0 from the guest, unless McStatusWrEn.
                    BANK_STATUS => !host && data != 0 && !status_wr_en,
                    _ => false,
                };
                if refused {
                    return false;
                }
                match self.banks.get_mut(i) {
                    Some(b) => *b = data,
                    None => return false,
                }
            }
            _ => return false,
        }
        true
    }

    /// kvm_vcpu_ioctl_x86_set_mce(): records the error in its bank; None for
    /// -EINVAL (a bank the vCPU does not have, or an invalid status). `cr4_mce`:
    /// the guest's CR4.MCE.
    pub fn set_mce(&mut self, m: &Injection, cr4_mce: bool) -> Option<McEffect> {
        let bank = usize::from(m.bank);
        if bank >= self.bank_num() || m.status & MCI_STATUS_VAL == 0 {
            return None;
        }
        let at = 4 * bank;
        let ctl = self.banks.get(at).copied()?;
        let old_status = self.banks.get(at + 1).copied()?;
        let mut status = m.status;
        // is_ucna(): no MCE signalled, valid and uncorrected.
        let ucna = m.mcg_status == 0
            && status & (MCI_STATUS_PCC | MCI_STATUS_S | MCI_STATUS_AR) == 0
            && status & MCI_STATUS_UC != 0;
        let effect = if ucna {
            self.mcg_status = m.mcg_status;
            self.write_bank(at, status, m.addr, m.misc);
            let cmci = self.mcg_cap & MCG_CMCI_P != 0
                && self
                    .ctl2
                    .get(bank)
                    .is_some_and(|c| c & MCI_CTL2_CMCI_EN != 0);
            if cmci {
                McEffect::Cmci
            } else {
                McEffect::None
            }
        } else if status & MCI_STATUS_UC != 0 {
            // Uncorrected errors are reported only with MCG_CTL and MCi_CTL all 1s.
            if self.mcg_cap & MCG_CTL_P != 0 && self.mcg_ctl != u64::MAX || ctl != u64::MAX {
                return Some(McEffect::None);
            }
            if self.mcg_status & MCG_STATUS_MCIP != 0 || !cr4_mce {
                return Some(McEffect::TripleFault);
            }
            if old_status & MCI_STATUS_VAL != 0 {
                status |= MCI_STATUS_OVER;
            }
            self.mcg_status = m.mcg_status;
            self.write_bank(at, status, m.addr, m.misc);
            McEffect::MachineCheck
        } else if old_status & MCI_STATUS_VAL == 0 || old_status & MCI_STATUS_UC == 0 {
            // A corrected error replaces an older corrected one (overflowing it).
            if old_status & MCI_STATUS_VAL != 0 {
                status |= MCI_STATUS_OVER;
            }
            self.write_bank(at, status, m.addr, m.misc);
            McEffect::None
        } else {
            // An uncorrected error stays; the corrected one is lost.
            if let Some(s) = self.banks.get_mut(at + 1) {
                *s |= MCI_STATUS_OVER;
            }
            McEffect::None
        };
        Some(effect)
    }

    fn write_bank(&mut self, at: usize, status: u64, addr: u64, misc: u64) {
        if let Some(b) = self.banks.get_mut(at + 1..at + 4) {
            b.copy_from_slice(&[status, addr, misc]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu_mce() -> Mce {
        // QEMU's default: 10 banks, MCG_CTL_P and MCG_SER_P.
        let mut m = Mce::default();
        assert!(m.setup(10 | MCG_CTL_P | MCG_SER_P, SUPPORTED_MCE_CAP_SVM));
        m
    }

    #[test]
    fn setup_checks_banks_and_caps() {
        let mut m = Mce::default();
        assert_eq!(m.get_msr(MSR_IA32_MCG_CAP, false), Some(32));
        assert!(!m.setup(0, SUPPORTED_MCE_CAP_SVM));
        assert!(!m.setup(33, SUPPORTED_MCE_CAP_SVM));
        // CMCI is not offered on AMD.
        assert!(!m.setup(10 | MCG_CMCI_P, SUPPORTED_MCE_CAP_SVM));
        // MCG_EXT_CNT passes through.
        assert!(m.setup(4 | 0x20_0000, SUPPORTED_MCE_CAP_SVM));
        let m = qemu_mce();
        assert_eq!(m.get_msr(MSR_IA32_MCG_CTL, false), Some(u64::MAX));
        assert_eq!(m.get_msr(MSR_IA32_MC0_CTL + 4 * 9, false), Some(u64::MAX));
        assert_eq!(m.get_msr(MSR_IA32_MC0_CTL + 4 * 9 + 1, false), Some(0));
        // Bank 10 does not exist; CTL2 is only there for the host without CMCI.
        assert_eq!(m.get_msr(MSR_IA32_MC0_CTL + 4 * 10, false), None);
        assert_eq!(m.get_msr(MSR_IA32_MC0_CTL2, false), None);
        assert_eq!(m.get_msr(MSR_IA32_MC0_CTL2, true), Some(0));
        assert_eq!(m.get_msr(MSR_IA32_P5_MC_TYPE, false), Some(0));
    }

    #[test]
    fn msr_writes() {
        let mut m = qemu_mce();
        // MCi_CTL: 0, all 1s, or all 1s but bits 10 and 0.
        assert!(m.set_msr(MSR_IA32_MC0_CTL + 16, !(1 << 10), false, false));
        assert!(!m.set_msr(MSR_IA32_MC0_CTL + 16, 0xff, false, false));
        assert!(m.set_msr(MSR_IA32_MC0_CTL + 16, 0, false, false));
        // MCi_STATUS: the guest writes only 0, unless McStatusWrEn; the host any.
        assert!(!m.set_msr(MSR_IA32_MC0_CTL + 1, 5, false, false));
        assert!(m.set_msr(MSR_IA32_MC0_CTL + 1, 5, false, true));
        assert!(m.set_msr(MSR_IA32_MC0_CTL + 1, 7, true, false));
        assert_eq!(m.get_msr(MSR_IA32_MC0_CTL + 1, false), Some(7));
        // MCG_CTL: 0 or all 1s; MCG_CAP is read-only.
        assert!(!m.set_msr(MSR_IA32_MCG_CTL, 1, false, false));
        assert!(m.set_msr(MSR_IA32_MCG_CTL, 0, false, false));
        assert!(!m.set_msr(MSR_IA32_MCG_CAP, 10, true, false));
        // CTL2 without CMCI: the host may write 0 only.
        assert!(m.set_msr(MSR_IA32_MC0_CTL2, 0, true, false));
        assert!(!m.set_msr(MSR_IA32_MC0_CTL2, 0, false, false));
        assert!(!m.set_msr(MSR_IA32_MC0_CTL2 + 10, 0, true, false));
        assert!(!m.set_msr(MSR_IA32_MC0_CTL + 40, 0, true, false));
        assert!(Mce::is_mce_msr(MSR_IA32_MC0_CTL + 127) && !Mce::is_mce_msr(0x480));
    }

    #[test]
    fn injection_rules() {
        let mut m = qemu_mce();
        let uc = Injection {
            status: MCI_STATUS_VAL | MCI_STATUS_UC | MCI_STATUS_S | MCI_STATUS_AR,
            addr: 0x1000,
            misc: 0x86,
            mcg_status: MCG_STATUS_MCIP | 1,
            bank: 2,
        };
        // Invalid: no VAL, or a bank beyond MCG_CAP's count.
        assert_eq!(m.set_mce(&Injection { status: 0, ..uc }, true), None);
        assert_eq!(m.set_mce(&Injection { bank: 10, ..uc }, true), None);
        // CR4.MCE clear: shutdown, nothing recorded.
        assert_eq!(m.set_mce(&uc, false), Some(McEffect::TripleFault));
        assert_eq!(m.get_msr(MSR_IA32_MC0_CTL + 9, false), Some(0));
        assert_eq!(m.set_mce(&uc, true), Some(McEffect::MachineCheck));
        assert_eq!(m.get_msr(MSR_IA32_MC0_CTL + 9, false), Some(uc.status));
        assert_eq!(m.get_msr(MSR_IA32_MC0_CTL + 10, false), Some(0x1000));
        assert_eq!(m.get_msr(MSR_IA32_MCG_STATUS, false), Some(uc.mcg_status));
        // Another while one is in progress (MCIP): shutdown.
        assert_eq!(m.set_mce(&uc, true), Some(McEffect::TripleFault));
        // A corrected error does not replace the uncorrected one: OVER only.
        let ce = Injection {
            status: MCI_STATUS_VAL | 0x17,
            mcg_status: 0,
            ..uc
        };
        assert_eq!(m.set_mce(&ce, true), Some(McEffect::None));
        assert_eq!(
            m.get_msr(MSR_IA32_MC0_CTL + 9, false),
            Some(uc.status | MCI_STATUS_OVER)
        );
        // In an empty bank it is recorded; a second one overflows it.
        let ce3 = Injection { bank: 3, ..ce };
        assert_eq!(m.set_mce(&ce3, true), Some(McEffect::None));
        assert_eq!(m.get_msr(MSR_IA32_MC0_CTL + 13, false), Some(ce.status));
        assert_eq!(m.set_mce(&ce3, true), Some(McEffect::None));
        assert_eq!(
            m.get_msr(MSR_IA32_MC0_CTL + 13, false),
            Some(ce.status | MCI_STATUS_OVER)
        );
        // UC with MCi_CTL not all 1s: not reported.
        let mut m = qemu_mce();
        assert!(m.set_msr(MSR_IA32_MC0_CTL + 8, 0, false, false));
        assert_eq!(m.set_mce(&uc, true), Some(McEffect::None));
        assert_eq!(m.get_msr(MSR_IA32_MC0_CTL + 9, false), Some(0));
        // UCNA: recorded, no #MC, no CMCI without MCG_CMCI_P.
        let ucna = Injection {
            status: MCI_STATUS_VAL | MCI_STATUS_UC,
            mcg_status: 0,
            ..uc
        };
        assert_eq!(m.set_mce(&ucna, true), Some(McEffect::None));
        assert_eq!(m.get_msr(MSR_IA32_MC0_CTL + 9, false), Some(ucna.status));
        let mut m = Mce::default();
        assert!(m.setup(2 | MCG_CMCI_P, MCG_CMCI_P));
        assert!(m.set_msr(MSR_IA32_MC0_CTL2 + 1, MCI_CTL2_CMCI_EN | 3, false, false));
        let ucna1 = Injection { bank: 1, ..ucna };
        assert_eq!(m.set_mce(&ucna1, true), Some(McEffect::Cmci));
    }
}
