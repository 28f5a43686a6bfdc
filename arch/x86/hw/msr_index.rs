//! MSR numbers and EFER bits, once (upstream arch/x86/include/asm/msr-index.h).

pub const MSR_IA32_TSC: u32 = 0x0000_0010;
pub const MSR_IA32_TSC_ADJUST: u32 = 0x0000_003b;
pub const MSR_IA32_APICBASE: u32 = 0x0000_001b;
pub const MSR_IA32_FEAT_CTL: u32 = 0x0000_003a;
pub const MSR_PLATFORM_INFO: u32 = 0x0000_00ce;
pub const MSR_IA32_SYSENTER_CS: u32 = 0x0000_0174;
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x0000_0175;
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x0000_0176;
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
pub const MSR_VM_CR: u32 = 0xc001_0114;
pub const MSR_VM_HSAVE_PA: u32 = 0xc001_0117;

pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
pub const EFER_NX: u64 = 1 << 11;
pub const EFER_SVME: u64 = 1 << 12;

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
