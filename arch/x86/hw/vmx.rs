//! Intel VMX: whether it can be used (SDM vol. 3, 24.7 "Enabling and entering VMX
//! operation") and the IA32_VMX_BASIC facts that VMXON and VMCS allocation rely on.

use core::fmt;

/// CPUID.1 ECX: VMX supported.
pub const CPUID_1_ECX_VMX: u32 = 1 << 5;
/// IA32_FEAT_CTL bits.
pub const FEAT_CTL_LOCKED: u64 = 1 << 0;
pub const FEAT_CTL_VMX_ENABLED_OUTSIDE_SMX: u64 = 1 << 2;

/// Why VMX cannot be used on a CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unusable {
    NotSupported,
    DisabledByBios,
    /// IA32_VMX_BASIC describes a VMCS this host cannot use.
    BadVmxBasic(BasicProblem),
    /// IA32_VMX_BASIC differs from the first CPU's.
    Inconsistent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BasicProblem {
    VmcsTooLarge,
    NotWriteBack,
    Only32BitAddresses,
}

impl fmt::Display for Unusable {
    // Upstream kvm_intel's wording where it has one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unusable::NotSupported => f.write_str("VMX not supported by CPU"),
            Unusable::DisabledByBios => {
                f.write_str("VMX not enabled (by BIOS) in MSR_IA32_FEAT_CTL on CPU")
            }
            Unusable::BadVmxBasic(p) => write!(f, "unusable IA32_VMX_BASIC ({p:?}) on CPU"),
            Unusable::Inconsistent => f.write_str("Inconsistent VMCS config on CPU"),
        }
    }
}

/// Checks one CPU: `ecx` is CPUID.1 ECX; `feat_ctl` reads IA32_FEAT_CTL, only when VMX
/// is reported. VMXON outside SMX needs the MSR locked with that enable bit set.
pub fn check(ecx: u32, feat_ctl: impl FnOnce() -> Option<u64>) -> Result<(), Unusable> {
    if ecx & CPUID_1_ECX_VMX == 0 {
        return Err(Unusable::NotSupported);
    }
    let want = FEAT_CTL_LOCKED | FEAT_CTL_VMX_ENABLED_OUTSIDE_SMX;
    match feat_ctl() {
        Some(v) if v & want == want => Ok(()),
        _ => Err(Unusable::DisabledByBios),
    }
}

/// IA32_VMX_BASIC (MSR 0x480), SDM vol. 3 appendix A.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Basic(pub u64);

impl Basic {
    pub const MEMTYPE_WB: u8 = 6;

    pub fn revision_id(self) -> u32 {
        (self.0 & 0x7fff_ffff) as u32
    }
    pub fn vmcs_size(self) -> u32 {
        ((self.0 >> 32) & 0x1fff) as u32
    }
    pub fn only_32bit_addresses(self) -> bool {
        self.0 & (1 << 48) != 0
    }
    pub fn mem_type(self) -> u8 {
        ((self.0 >> 50) & 0xf) as u8
    }
    pub fn true_controls(self) -> bool {
        self.0 & (1 << 55) != 0
    }

    /// What upstream's setup_vmcs_config() insists on: a VMCS that fits in a page,
    /// write-back memory type, full physical addresses on x86-64.
    pub fn validate(self) -> Result<(), BasicProblem> {
        if self.vmcs_size() > 4096 {
            Err(BasicProblem::VmcsTooLarge)
        } else if self.mem_type() != Self::MEMTYPE_WB {
            Err(BasicProblem::NotWriteBack)
        } else if self.only_32bit_addresses() {
            Err(BasicProblem::Only32BitAddresses)
        } else {
            Ok(())
        }
    }
}

impl fmt::Display for Basic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VMCS revision {:#x}, {} bytes, memtype {}{}",
            self.revision_id(),
            self.vmcs_size(),
            self.mem_type(),
            if self.true_controls() {
                ", true controls"
            } else {
                ""
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_cases() {
        let read = std::cell::Cell::new(false);
        assert_eq!(
            check(0, || {
                read.set(true);
                None
            }),
            Err(Unusable::NotSupported)
        );
        assert!(
            !read.get(),
            "the MSR must not be read without the CPUID bit"
        );
        assert_eq!(
            check(CPUID_1_ECX_VMX, || Some(FEAT_CTL_LOCKED)),
            Err(Unusable::DisabledByBios)
        );
        // Enabled but not locked: VMXON would #GP.
        assert_eq!(
            check(CPUID_1_ECX_VMX, || Some(FEAT_CTL_VMX_ENABLED_OUTSIDE_SMX)),
            Err(Unusable::DisabledByBios)
        );
        assert_eq!(
            check(CPUID_1_ECX_VMX, || None),
            Err(Unusable::DisabledByBios)
        );
        assert_eq!(check(CPUID_1_ECX_VMX, || Some(0x5)), Ok(()));
    }

    #[test]
    fn basic_fields() {
        // Skylake-like: revision 4, 4 KiB... (here 0x400 = 1024 bytes), WB, true controls.
        let b = Basic(0x00da_0400_0000_0004);
        assert_eq!(b.revision_id(), 4);
        assert_eq!(b.vmcs_size(), 0x400);
        assert_eq!(b.mem_type(), 6);
        assert!(b.true_controls());
        assert!(!b.only_32bit_addresses());
        assert_eq!(b.validate(), Ok(()));
        assert_eq!(
            Basic(0x0000_1001_0000_0001 | 6 << 50).validate(),
            Err(BasicProblem::VmcsTooLarge)
        );
        assert_eq!(
            Basic(0x0000_0400_0000_0001).validate(),
            Err(BasicProblem::NotWriteBack)
        );
        assert_eq!(
            Basic(0x0000_0400_0000_0001 | 6 << 50 | 1 << 48).validate(),
            Err(BasicProblem::Only32BitAddresses)
        );
    }
}
