//! AMD SVM: whether it can be used, and what the CPU offers (APM vol. 2, 15.4 and
//! CPUID Fn8000_000A).

use core::fmt;

/// CPUID Fn8000_0001 ECX: SVM supported.
pub const CPUID_80000001_ECX_SVM: u32 = 1 << 2;
/// VM_CR: SVME cannot be set (disabled by firmware).
pub const VM_CR_SVMDIS: u64 = 1 << 4;

/// Why SVM cannot be used on a CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unusable {
    NotSupported,
    DisabledByBios,
}

impl fmt::Display for Unusable {
    // The wording of upstream kvm_amd's messages, so logs read the same.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unusable::NotSupported => f.write_str("SVM not supported by CPU"),
            Unusable::DisabledByBios => f.write_str("SVM disabled (by BIOS) in MSR_VM_CR on CPU"),
        }
    }
}

/// Checks one CPU: `ecx` is CPUID Fn8000_0001 ECX, `vm_cr` is MSR VM_CR, read only
/// when SVM is reported (the MSR does not exist otherwise), hence the closure.
pub fn check(ecx: u32, vm_cr: impl FnOnce() -> Option<u64>) -> Result<(), Unusable> {
    if ecx & CPUID_80000001_ECX_SVM == 0 {
        return Err(Unusable::NotSupported);
    }
    match vm_cr() {
        Some(v) if v & VM_CR_SVMDIS == 0 => Ok(()),
        _ => Err(Unusable::DisabledByBios),
    }
}

/// CPUID Fn8000_000A: the SVM revision, ASID count and feature bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    pub revision: u8,
    pub nr_asids: u32,
    pub edx: u32,
}

impl Features {
    pub const NPT: u32 = 1 << 0;
    pub const LBRV: u32 = 1 << 1;
    pub const NRIPS: u32 = 1 << 3;
    pub const TSC_SCALE: u32 = 1 << 4;
    pub const VMCB_CLEAN: u32 = 1 << 5;
    pub const FLUSH_BY_ASID: u32 = 1 << 6;
    pub const DECODE_ASSISTS: u32 = 1 << 7;
    pub const PAUSE_FILTER: u32 = 1 << 10;
    pub const AVIC: u32 = 1 << 13;
    pub const V_VMSAVE_VMLOAD: u32 = 1 << 15;
    pub const VGIF: u32 = 1 << 16;
    pub const VNMI: u32 = 1 << 25;

    const NAMES: [(u32, &'static str); 12] = [
        (Self::NPT, "npt"),
        (Self::LBRV, "lbrv"),
        (Self::NRIPS, "nrips"),
        (Self::TSC_SCALE, "tsc_scale"),
        (Self::VMCB_CLEAN, "vmcb_clean"),
        (Self::FLUSH_BY_ASID, "flush_by_asid"),
        (Self::DECODE_ASSISTS, "decode_assists"),
        (Self::PAUSE_FILTER, "pause_filter"),
        (Self::AVIC, "avic"),
        (Self::V_VMSAVE_VMLOAD, "v_vmsave_vmload"),
        (Self::VGIF, "vgif"),
        (Self::VNMI, "vnmi"),
    ];

    pub fn from_cpuid(eax: u32, ebx: u32, edx: u32) -> Self {
        Features {
            revision: (eax & 0xff) as u8,
            nr_asids: ebx,
            edx,
        }
    }

    pub fn has(&self, bit: u32) -> bool {
        self.edx & bit == bit
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SVM revision {}, {} ASIDs", self.revision, self.nr_asids)?;
        for (bit, name) in Self::NAMES {
            if self.has(bit) {
                write!(f, " {name}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn check_order_and_msr_read() {
        // No SVM: VM_CR must not even be read (it would #GP).
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
            check(CPUID_80000001_ECX_SVM, || Some(VM_CR_SVMDIS)),
            Err(Unusable::DisabledByBios)
        );
        assert_eq!(
            check(CPUID_80000001_ECX_SVM, || None),
            Err(Unusable::DisabledByBios)
        );
        assert_eq!(
            check(CPUID_80000001_ECX_SVM | 1, || Some(!VM_CR_SVMDIS)),
            Ok(())
        );
    }

    #[test]
    fn features_from_tcg_cpu_max() {
        // QEMU 10 TCG `-cpu max`: revision 1, 16 ASIDs, NPT, vGIF, no NRIPS.
        let f = Features::from_cpuid(0x1, 0x10, Features::NPT | Features::VGIF);
        assert!(f.has(Features::NPT));
        assert!(!f.has(Features::NRIPS));
        assert_eq!(f.to_string(), "SVM revision 1, 16 ASIDs npt vgif");
    }
}
