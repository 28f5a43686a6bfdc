//! Guest XSAVE state: which XCR0 values a guest may set, the XSAVE area sizes CPUID
//! leaf 0xD reports, and the legacy (FXSAVE) region that `KVM_GET/SET_FPU` view.

/// XCR0 feature bits (upstream `XFEATURE_MASK_*`).
pub const FP: u64 = 1 << 0;
pub const SSE: u64 = 1 << 1;
pub const YMM: u64 = 1 << 2;
pub const BNDREGS: u64 = 1 << 3;
pub const BNDCSR: u64 = 1 << 4;
pub const AVX512: u64 = 0x7 << 5;
pub const XTILE: u64 = 0x3 << 17;

/// What kvm-rs lets a guest enable: the state the host's guest FPU save/restore
/// covers without extra switching. Upstream's KVM_SUPPORTED_XCR0 also has PKRU (kvm-rs
/// does not switch PKRU), MPX and AMX (XFD).
pub const KVM_RS_XCR0: u64 = FP | SSE | YMM | AVX512;

/// Size of the legacy region plus the XSAVE header: the smallest XSAVE area.
pub const LEGACY_AND_HEADER: u32 = 512 + 64;

/// Whether a guest whose CPUID allows `guest_supported` may load `xcr0` into XCR0
/// (upstream __kvm_set_xcr(); FP is always allowed, even without XSAVE).
pub fn xcr0_valid(xcr0: u64, guest_supported: u64) -> bool {
    if xcr0 & FP == 0 || (xcr0 & YMM != 0 && xcr0 & SSE == 0) {
        return false;
    }
    if xcr0 & !(guest_supported | FP) != 0 {
        return false;
    }
    if (xcr0 & BNDREGS == 0) != (xcr0 & BNDCSR == 0) {
        return false;
    }
    if xcr0 & AVX512 != 0 && (xcr0 & YMM == 0 || xcr0 & AVX512 != AVX512) {
        return false;
    }
    !(xcr0 & XTILE != 0 && xcr0 & XTILE != XTILE)
}

/// The standard-format XSAVE area size for the features in `xcr0` (upstream
/// xstate_required_size(xcr0, false)), from the host's leaf 0xD sub-leaves
/// (EAX size, EBX offset).
pub fn required_size(xcr0: u64, host: impl Fn(u32, u32) -> [u32; 4]) -> u32 {
    let mut size = LEGACY_AND_HEADER;
    for i in 2..64u32 {
        if xcr0 & (1 << i) != 0 {
            let r = host(0xd, i);
            size = size.max(r[1].saturating_add(r[0]));
        }
    }
    size
}

/// The XCR0 bits the guest's CPUID leaf 0xD.0 (EAX, EDX) allows, within `supported`
/// (upstream cpuid_get_supported_xcr0()).
pub fn guest_supported(leaf_d0: Option<[u32; 4]>, supported: u64) -> u64 {
    leaf_d0.map_or(0, |r| (u64::from(r[3]) << 32 | u64::from(r[0])) & supported)
}

/// Byte offsets in the FXSAVE (legacy) region, which also starts the XSAVE area.
pub mod fxsave {
    pub const FCW: usize = 0;
    pub const FSW: usize = 2;
    pub const FTW: usize = 4;
    pub const FOP: usize = 6;
    pub const RIP: usize = 8;
    pub const RDP: usize = 16;
    pub const MXCSR: usize = 24;
    /// ST0-7 / MM0-7, 16 bytes each.
    pub const ST: usize = 32;
    /// XMM0-15, 16 bytes each.
    pub const XMM: usize = 160;
    /// The legacy region's size.
    pub const SIZE: usize = 512;
    /// XSTATE_BV in the XSAVE header.
    pub const XSTATE_BV: usize = 512;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xcr0_rules() {
        let all = FP | SSE | YMM | AVX512;
        assert!(xcr0_valid(FP, 0), "FP alone is always fine");
        assert!(xcr0_valid(FP | SSE | YMM, all));
        assert!(!xcr0_valid(SSE, all), "FP is required");
        assert!(!xcr0_valid(FP | YMM, all), "AVX needs SSE");
        assert!(
            !xcr0_valid(FP | SSE | YMM, FP | SSE),
            "not in the guest's CPUID"
        );
        assert!(!xcr0_valid(FP | SSE | (1 << 5), all), "AVX-512 all or none");
        assert!(!xcr0_valid(FP | SSE | AVX512, all), "AVX-512 needs AVX");
        assert!(xcr0_valid(all, all));
        let mpx = FP | BNDREGS | BNDCSR;
        assert!(!xcr0_valid(FP | BNDREGS, mpx), "MPX both or none");
        assert!(xcr0_valid(mpx, mpx));
        assert!(!xcr0_valid(FP | (1 << 17), FP | XTILE), "AMX both or none");
    }

    /// Leaf 0xD as a host with AVX (256 bytes at 576) and AVX-512 reports it.
    fn host(f: u32, i: u32) -> [u32; 4] {
        match (f, i) {
            (0xd, 2) => [256, 576, 0, 0],
            (0xd, 5) => [64, 1088, 0, 0],
            (0xd, 6) => [512, 1152, 0, 0],
            (0xd, 7) => [1024, 1664, 0, 0],
            _ => [0; 4],
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(required_size(FP | SSE, host), 576);
        assert_eq!(required_size(FP | SSE | YMM, host), 832);
        assert_eq!(required_size(FP | SSE | YMM | AVX512, host), 2688);
    }

    #[test]
    fn guest_bits() {
        assert_eq!(guest_supported(None, KVM_RS_XCR0), 0);
        assert_eq!(
            guest_supported(Some([0x2e7, 0, 0, 0]), FP | SSE | YMM),
            FP | SSE | YMM
        );
        assert_eq!(guest_supported(Some([3, 0, 0, 1]), u64::MAX), 1 << 32 | 3);
    }
}
