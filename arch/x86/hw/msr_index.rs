//! MSR numbers and EFER bits, once (upstream arch/x86/include/asm/msr-index.h).

pub const MSR_IA32_TSC: u32 = 0x0000_0010;
pub const MSR_IA32_TSC_ADJUST: u32 = 0x0000_003b;
pub const MSR_IA32_APICBASE: u32 = 0x0000_001b;
pub const MSR_IA32_FEAT_CTL: u32 = 0x0000_003a;
pub const MSR_IA32_UCODE_REV: u32 = 0x0000_008b;
pub const MSR_PLATFORM_INFO: u32 = 0x0000_00ce;
pub const MSR_IA32_ARCH_CAPABILITIES: u32 = 0x0000_010a;
pub const MSR_MISC_FEATURES_ENABLES: u32 = 0x0000_0140;
pub const MSR_IA32_PERF_CAPABILITIES: u32 = 0x0000_0345;
pub const MSR_IA32_SYSENTER_CS: u32 = 0x0000_0174;
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x0000_0175;
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x0000_0176;
pub const MSR_IA32_POWER_CTL: u32 = 0x0000_01fc;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x0000_01a0;
pub const MSR_IA32_CR_PAT: u32 = 0x0000_0277;
pub const MSR_IA32_VMX_BASIC: u32 = 0x0000_0480;
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x0000_06e0;

pub const MSR_EFER: u32 = 0xc000_0080;
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_CSTAR: u32 = 0xc000_0083;
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
pub const MSR_FS_BASE: u32 = 0xc000_0100;
pub const MSR_GS_BASE: u32 = 0xc000_0101;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

pub const MSR_K7_HWCR: u32 = 0xc001_0015;
pub const MSR_AMD64_DE_CFG: u32 = 0xc001_1029;
pub const MSR_VM_CR: u32 = 0xc001_0114;
pub const MSR_VM_HSAVE_PA: u32 = 0xc001_0117;

pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
pub const EFER_NX: u64 = 1 << 11;
pub const EFER_SVME: u64 = 1 << 12;

/// MSR_IA32_MISC_ENABLE bits KVM knows: EMON (read-only to the guest, writes
/// ignored), BTS/PEBS unavailable (read-only: the guest faults changing them),
/// and the MWAIT enable (upstream MSR_IA32_MISC_ENABLE_*).
pub const MISC_ENABLE_EMON: u64 = 1 << 7;
pub const MISC_ENABLE_BTS_UNAVAIL: u64 = 1 << 11;
pub const MISC_ENABLE_PEBS_UNAVAIL: u64 = 1 << 12;
pub const MISC_ENABLE_MWAIT: u64 = 1 << 18;
/// MSR_IA32_MISC_ENABLE_PMU_RO_MASK.
const MISC_ENABLE_PMU_RO_MASK: u64 = MISC_ENABLE_BTS_UNAVAIL | MISC_ENABLE_PEBS_UNAVAIL;
/// The value at RESET (kvm_vcpu_reset()).
pub const MISC_ENABLE_RESET: u64 = MISC_ENABLE_PEBS_UNAVAIL | MISC_ENABLE_BTS_UNAVAIL;

/// A write of `data` to MSR_IA32_MISC_ENABLE over `old` (kvm_set_msr_common()):
/// the value stored, or None when it must fail. `host`: by userspace;
/// `mwait_in_cpuid`: KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT is disabled, so the MWAIT
/// bit drives CPUID.MONITOR, which needs SSE3 (`sse3`) in the guest's CPUID.
pub fn misc_enable_write(
    old: u64,
    data: u64,
    host: bool,
    mwait_in_cpuid: bool,
    sse3: bool,
) -> Option<u64> {
    let mut data = data;
    if !host {
        if (old ^ data) & MISC_ENABLE_PMU_RO_MASK != 0 {
            return None;
        }
        data = data & !MISC_ENABLE_EMON | old & MISC_ENABLE_EMON;
    }
    if mwait_in_cpuid && (old ^ data) & MISC_ENABLE_MWAIT != 0 && !sse3 {
        return None;
    }
    Some(data)
}

/// MSR_PLATFORM_INFO: CPUID faulting (MSR_MISC_FEATURES_ENABLES bit 0) exists.
pub const PLATFORM_INFO_CPUID_FAULT: u64 = 1 << 31;
/// MSR_MISC_FEATURES_ENABLES: CPUID outside CPL 0 raises #GP.
pub const MISC_FEATURES_ENABLES_CPUID_FAULT: u64 = 1 << 0;
/// MSR_AMD64_DE_CFG: LFENCE is dispatch-serializing.
pub const DE_CFG_LFENCE_SERIALIZE: u64 = 1 << 1;

/// The feature MSRs (upstream msr_based_features_all_except_vmx): read on
/// /dev/kvm (KVM_GET_MSRS there) for what KVM can offer, and set per vCPU by
/// userspace. KVM_GET_MSR_FEATURE_INDEX_LIST lists those the vendor supports.
pub const FEATURE_MSRS: [u32; 5] = [
    MSR_AMD64_DE_CFG,
    MSR_IA32_UCODE_REV,
    MSR_IA32_ARCH_CAPABILITIES,
    MSR_IA32_PERF_CAPABILITIES,
    MSR_PLATFORM_INFO,
];

/// MSR_MISC_FEATURES_ENABLES write (upstream kvm_set_msr_common()): only CPUID
/// faulting, and that only where MSR_PLATFORM_INFO offers it.
pub fn misc_features_enables_valid(data: u64, platform_info: u64) -> bool {
    data & !MISC_FEATURES_ENABLES_CPUID_FAULT == 0
        && (data & MISC_FEATURES_ENABLES_CPUID_FAULT == 0
            || platform_info & PLATFORM_INFO_CPUID_FAULT != 0)
}

/// MSR_K7_HWCR bits a guest or userspace may set (upstream kvm_set_msr_common()):
/// McStatusWrEn and TscFreqSel, which Linux guests expect to be able to write.
pub const HWCR_MCSTATUSWREN: u64 = 1 << 18;
pub const HWCR_TSCFREQSEL: u64 = 1 << 24;
/// Bits written and dropped: TLB cache disable, flush filter disable, IGNNE
/// emulation enable.
pub const HWCR_IGNORED: u64 = 1 << 3 | 1 << 6 | 1 << 8;

/// What a write of `data` to MSR_K7_HWCR stores, or None when it must fail
/// (upstream: #GP for the guest, a short count for KVM_SET_MSRS). kvm-rs offers
/// no CpuidUserDis (X86_FEATURE_GP_ON_USER_CPUID), so bit 35 is not valid.
pub fn hwcr_write(data: u64) -> Option<u64> {
    let data = data & !HWCR_IGNORED;
    (data & !(HWCR_MCSTATUSWREN | HWCR_TSCFREQSEL) == 0).then_some(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misc_enable_rules() {
        let r = MISC_ENABLE_RESET;
        // The guest cannot change BTS/PEBS; userspace can.
        assert_eq!(misc_enable_write(r, 0, false, false, true), None);
        assert_eq!(misc_enable_write(r, 0, true, false, true), Some(0));
        // EMON writes by the guest are dropped.
        assert_eq!(
            misc_enable_write(r, r | MISC_ENABLE_EMON, false, false, true),
            Some(r)
        );
        // MWAIT toggling needs SSE3 only while it drives CPUID.
        let m = r | MISC_ENABLE_MWAIT;
        assert_eq!(misc_enable_write(r, m, false, true, false), None);
        assert_eq!(misc_enable_write(r, m, false, true, true), Some(m));
        assert_eq!(misc_enable_write(r, m, false, false, false), Some(m));
    }

    #[test]
    fn cpuid_faulting_needs_platform_info() {
        assert!(misc_features_enables_valid(0, 0));
        assert!(!misc_features_enables_valid(1, 0));
        assert!(misc_features_enables_valid(1, PLATFORM_INFO_CPUID_FAULT));
        assert!(!misc_features_enables_valid(2, PLATFORM_INFO_CPUID_FAULT));
    }

    #[test]
    fn hwcr_bits_as_upstream() {
        // hwcr_msr_test's rule, bit by bit: legal bits succeed, only valid ones stick.
        for bit in 0..64 {
            let v = 1u64 << bit;
            let want = match bit {
                18 | 24 => Some(v),
                3 | 6 | 8 => Some(0),
                _ => None,
            };
            assert_eq!(hwcr_write(v), want, "bit {bit}");
        }
        assert_eq!(hwcr_write(HWCR_TSCFREQSEL | 1 << 6), Some(HWCR_TSCFREQSEL));
    }
}
