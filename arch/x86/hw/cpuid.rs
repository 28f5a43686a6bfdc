//! The CPUID kvm-rs offers guests (`KVM_GET_SUPPORTED_CPUID`): the host's, filtered
//! to what is virtualized today, plus the KVM paravirt signature. Features are added
//! to the masks with the code that makes them work (e.g. XSAVE with XCR0 switching).

use super::xstate;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub function: u32,
    pub index: u32,
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`.
pub const SIGNIFICANT_INDEX: u32 = 1;
/// Upstream's KVM_MAX_CPUID_ENTRIES.
pub const MAX_ENTRIES: usize = 256;

// Leaf 1: SSE3 PCLMULQDQ SSSE3 CX16 SSE4.1 SSE4.2 x2APIC MOVBE POPCNT
// TSC-deadline AES RDRAND (x2APIC and TSC-deadline are the in-kernel LAPIC's; as
// upstream's EMULATED_F they are offered where the host has them). XSAVE and the AVX
// family only with the XCR0 that kvm.ko switches (`supported`'s `xcr0`); no MONITOR.
pub const L1_ECX_X2APIC: u32 = 1 << 21;
pub const L1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const L1_ECX: u32 = 1
    | 1 << 1
    | 1 << 9
    | 1 << 13
    | 1 << 19
    | 1 << 20
    | L1_ECX_X2APIC
    | 1 << 22
    | 1 << 23
    | L1_ECX_TSC_DEADLINE
    | 1 << 25
    | 1 << 30;
pub const L1_ECX_HYPERVISOR: u32 = 1 << 31;
/// MONITOR/MWAIT (not offered; KVM emulates them as NOPs or #UD).
pub const L1_ECX_MWAIT: u32 = 1 << 3;
/// SSE3.
pub const L1_ECX_SSE3: u32 = 1 << 0;
/// PDCM: IA32_PERF_CAPABILITIES exists (not offered: no virtual PMU).
pub const L1_ECX_PDCM: u32 = 1 << 15;
/// Machine-check exception and architecture (the banks of hw/mce.rs).
pub const L1_EDX_MCE: u32 = 1 << 7;
pub const L1_EDX_MCA: u32 = 1 << 14;
/// Memory type range registers (stored, hw/mtrr.rs).
pub const L1_EDX_MTRR: u32 = 1 << 12;
pub const L1_ECX_XSAVE: u32 = 1 << 26;
/// Reflects the guest's CR4.OSXSAVE (filled in when the guest runs CPUID).
pub const L1_ECX_OSXSAVE: u32 = 1 << 27;
// FMA AVX F16C: usable with YMM state in XCR0.
const L1_ECX_AVX: u32 = 1 << 12 | 1 << 28 | 1 << 29;
// FPU VME DE PSE TSC MSR PAE MCE CX8 APIC SEP MTRR PGE MCA CMOV PAT PSE36 CLFLUSH MMX
// FXSR SSE SSE2.
const L1_EDX: u32 = 0x7f
    | L1_EDX_MCE
    | 1 << 8
    | 1 << 9
    | 1 << 11
    | L1_EDX_MTRR
    | 1 << 13
    | L1_EDX_MCA
    | 1 << 15
    | 1 << 16
    | 1 << 17
    | 1 << 19
    | 1 << 23
    | 1 << 24
    | 1 << 25
    | 1 << 26;
/// Leaf 7.0 EBX TSC_ADJUST: IA32_TSC_ADJUST, which KVM emulates.
pub const L7_EBX_TSC_ADJUST: u32 = 1 << 1;
// Leaf 7.0 EBX: FSGSBASE TSC_ADJUST BMI1 SMEP BMI2 ERMS ADX SMAP CLFLUSHOPT SHA.
const L7_EBX: u32 = 1
    | L7_EBX_TSC_ADJUST
    | 1 << 3
    | 1 << 7
    | 1 << 8
    | 1 << 9
    | 1 << 19
    | 1 << 20
    | 1 << 23
    | 1 << 29;
// AVX2 with YMM state; AVX512 F DQ IFMA CD BW VL with the AVX-512 state.
const L7_EBX_AVX2: u32 = 1 << 5;
const L7_EBX_AVX512: u32 = 1 << 16 | 1 << 17 | 1 << 21 | 1 << 28 | 1 << 30 | 1 << 31;
// Leaf 7.0 ECX: LA57 (5-level guest paging: the NPT walk does it, and the
// emulator's page walker knows it).
pub const L7_ECX_LA57: u32 = 1 << 16;
const L7_ECX: u32 = L7_ECX_LA57;
/// Leaf 7.0 EDX ARCH_CAPABILITIES: MSR_IA32_ARCH_CAPABILITIES, which KVM
/// emulates on both vendors (upstream EMULATED_F).
pub const L7_EDX_ARCH_CAPABILITIES: u32 = 1 << 29;
// 8000_0001 ECX: LAHF ABM SSE4A MISALIGNSSE PREFETCHW. EDX: SYSCALL NX LM.
const X1_ECX: u32 = 1 | 1 << 5 | 1 << 6 | 1 << 7 | 1 << 8;
pub const X1_EDX_SYSCALL: u32 = 1 << 11;
pub const X1_EDX_NX: u32 = 1 << 20;
pub const X1_EDX_LM: u32 = 1 << 29;
const X1_EDX: u32 = X1_EDX_SYSCALL | X1_EDX_NX | X1_EDX_LM;

/// The hypervisor leaves' base (KVM_CPUID_SIGNATURE), where a hypervisor's
/// signature may also sit at any multiple of 0x100 above it up to 0x4000_ff00.
pub const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
/// KVM_CPUID_FEATURES, relative to the signature leaf: EAX holds KVM_FEATURE_* bits.
pub const KVM_CPUID_FEATURES: u32 = 1;
/// KVM_FEATURE_* bit numbers (arch/x86/include/uapi/asm/kvm_para.h).
pub const KVM_FEATURE_CLOCKSOURCE: u32 = 0;
pub const KVM_FEATURE_NOP_IO_DELAY: u32 = 1;
pub const KVM_FEATURE_CLOCKSOURCE2: u32 = 3;
pub const KVM_FEATURE_STEAL_TIME: u32 = 5;
pub const KVM_FEATURE_PV_SCHED_YIELD: u32 = 13;
pub const KVM_FEATURE_CLOCKSOURCE_STABLE_BIT: u32 = 24;
/// What KVM_CPUID_FEATURES offers whatever the host: the kvmclock MSRs (both
/// numberings) and their stable bit, I/O delays as no-ops, and the yield
/// hypercall. Upstream also offers async page faults, PV EOI, PV unhalt, PV TLB
/// flush, PV IPIs and poll control, which kvm-rs does not have.
pub const KVM_PV_FEATURES: u32 = 1 << KVM_FEATURE_CLOCKSOURCE
    | 1 << KVM_FEATURE_NOP_IO_DELAY
    | 1 << KVM_FEATURE_CLOCKSOURCE2
    | 1 << KVM_FEATURE_PV_SCHED_YIELD
    | 1 << KVM_FEATURE_CLOCKSOURCE_STABLE_BIT;

/// "KVMKVMKVM\0\0\0" in EBX, ECX, EDX.
pub const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// Fills `out` with the supported entries; `None` if it is too small (-E2BIG).
/// `xcr0`: the XCR0 bits guests may enable (xstate::KVM_RS_XCR0 within the host's
/// XCR0); 0 offers no XSAVE. `pv_features`: the KVM_FEATURE_* bits offered in
/// KVM_CPUID_FEATURES.
pub fn supported(
    host: impl Fn(u32, u32) -> [u32; 4],
    xcr0: u64,
    pv_features: u32,
    out: &mut [Entry],
) -> Option<usize> {
    let xsave = xcr0 & (xstate::FP | xstate::SSE) == xstate::FP | xstate::SSE;
    let ymm = xsave && xcr0 & xstate::YMM != 0;
    let avx512 = ymm && xcr0 & xstate::AVX512 == xstate::AVX512;
    let xcr0 = if xsave { xcr0 } else { 0 };
    let mut n = 0;
    let mut push = |e: Entry| -> Option<()> {
        *out.get_mut(n)? = e;
        n += 1;
        Some(())
    };
    let leaf = |function: u32, index: u32, flags: u32, r: [u32; 4]| Entry {
        function,
        index,
        flags,
        eax: r[0],
        ebx: r[1],
        ecx: r[2],
        edx: r[3],
    };
    let h0 = host(0, 0);
    let max = h0[0].min(if xsave { 0xd } else { 7 });
    push(leaf(0, 0, 0, [max, h0[1], h0[2], h0[3]]))?;
    if max >= 1 {
        let h = host(1, 0);
        // The initial APIC id (EBX[31:24]) is the vCPU's, which userspace sets.
        let r = [
            h[0],
            h[1] & 0x00ff_ffff,
            (h[2] & (L1_ECX | bits(xsave, L1_ECX_XSAVE) | bits(ymm, L1_ECX_AVX)))
                | L1_ECX_HYPERVISOR,
            h[3] & L1_EDX,
        ];
        push(leaf(1, 0, 0, r))?;
    }
    if max >= 7 {
        let h = host(7, 0);
        push(leaf(
            7,
            0,
            SIGNIFICANT_INDEX,
            [
                0,
                // TSC_ADJUST is emulated: offered whatever the host has.
                h[1] & (L7_EBX | bits(ymm, L7_EBX_AVX2) | bits(avx512, L7_EBX_AVX512))
                    | L7_EBX_TSC_ADJUST,
                h[2] & L7_ECX,
                L7_EDX_ARCH_CAPABILITIES,
            ],
        ))?;
    }
    if max >= 0xd {
        // XSAVE state components (upstream __do_cpuid_func() case 0xd): sizes and
        // offsets as the host lays them out. Of leaf 0xD.1, XSAVEOPT and XGETBV1:
        // no XSAVES (no IA32_XSS for guests), and no XSAVEC, whose compacted size
        // EBX would have to report.
        let size = xstate::required_size(xcr0, &host);
        push(leaf(
            0xd,
            0,
            SIGNIFICANT_INDEX,
            [xcr0 as u32, size, size, (xcr0 >> 32) as u32],
        ))?;
        push(leaf(
            0xd,
            1,
            SIGNIFICANT_INDEX,
            [host(0xd, 1)[0] & 0x5, 0, 0, 0],
        ))?;
        for i in 2..64u32 {
            if xcr0 & (1 << i) != 0 {
                let h = host(0xd, i);
                push(leaf(0xd, i, SIGNIFICANT_INDEX, [h[0], h[1], h[2] & 0x2, 0]))?;
            }
        }
    }
    push(leaf(
        0x4000_0000,
        0,
        0,
        [
            0x4000_0001,
            KVM_SIGNATURE[0],
            KVM_SIGNATURE[1],
            KVM_SIGNATURE[2],
        ],
    ))?;
    push(leaf(0x4000_0001, 0, 0, [pv_features, 0, 0, 0]))?;
    let x0 = host(0x8000_0000, 0);
    let xmax = x0[0].min(0x8000_0008);
    push(leaf(0x8000_0000, 0, 0, [xmax, x0[1], x0[2], x0[3]]))?;
    if xmax >= 0x8000_0001 {
        let h = host(0x8000_0001, 0);
        push(leaf(
            0x8000_0001,
            0,
            0,
            [h[0], 0, h[2] & X1_ECX, h[3] & X1_EDX],
        ))?;
    }
    for f in 0x8000_0002..=0x8000_0004u32 {
        if xmax >= f {
            push(leaf(f, 0, 0, host(f, 0)))?;
        }
    }
    if xmax >= 0x8000_0008 {
        let h = host(0x8000_0008, 0);
        push(leaf(0x8000_0008, 0, 0, [h[0] & 0xffff, 0, 0, 0]))?;
    }
    Some(n)
}

fn bits(on: bool, b: u32) -> u32 {
    if on {
        b
    } else {
        0
    }
}

/// The vCPU state some CPUID bits follow (upstream kvm_update_cpuid_runtime()).
#[derive(Clone, Copy, Debug, Default)]
pub struct Runtime {
    /// CR4.OSXSAVE.
    pub osxsave: bool,
    /// IA32_APIC_BASE's enable bit.
    pub apic: bool,
    /// The standard XSAVE area size for the guest's XCR0.
    pub xsave_size: u32,
    /// With KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT disabled: MISC_ENABLE.MWAIT, which
    /// CPUID.MONITOR then follows (None: the table's bit stays).
    pub mwait: Option<bool>,
}

const L1_EDX_APIC: u32 = 1 << 9;

/// Applies `r` to the entries: leaf 1's OSXSAVE and APIC bits, leaf 0xD.0's EBX.
pub fn update_runtime(entries: &mut [Entry], r: &Runtime) {
    for e in entries.iter_mut() {
        match (e.function, e.index) {
            (1, _) => {
                e.ecx = e.ecx & !L1_ECX_OSXSAVE | bits(r.osxsave, L1_ECX_OSXSAVE);
                e.edx = e.edx & !L1_EDX_APIC | bits(r.apic, L1_EDX_APIC);
                if let Some(m) = r.mwait {
                    e.ecx = e.ecx & !L1_ECX_MWAIT | bits(m, L1_ECX_MWAIT);
                }
            }
            (0xd, 0) => e.ebx = r.xsave_size,
            _ => {}
        }
    }
}

/// The entry userspace set for `function`/`index` (upstream kvm_find_cpuid_entry2).
pub fn find(entries: &[Entry], function: u32, index: u32) -> Option<&Entry> {
    entries
        .iter()
        .find(|e| e.function == function && (e.flags & SIGNIFICANT_INDEX == 0 || e.index == index))
}

/// "AuthenticAMD" and "HygonGenuine" as leaf 0 spells them in EBX, EDX, ECX.
const VENDOR_AMD: [u32; 3] = [0x6874_7541, 0x6974_6e65, 0x444d_4163];
const VENDOR_HYGON: [u32; 3] = [0x6f67_7948, 0x6e65_476e, 0x656e_6975];

/// guest_cpuid_is_amd_compatible(): the vendor userspace gave the guest is AMD
/// or Hygon (false before KVM_SET_CPUID2).
pub fn is_amd_compatible(entries: &[Entry]) -> bool {
    find(entries, 0, 0).is_some_and(|e| {
        let v = [e.ebx, e.edx, e.ecx];
        v == VENDOR_AMD || v == VENDOR_HYGON
    })
}

/// kvm_apply_cpuid_pv_features_quirk(): the KVM_FEATURE_* bits of the guest's
/// KVM leaves, found by their signature (0 when the table has none).
pub fn kvm_pv_features(entries: &[Entry]) -> u32 {
    let base = (0..0x100u32)
        .map(|i| KVM_CPUID_SIGNATURE + (i << 8))
        .find(|&b| find(entries, b, 0).is_some_and(|e| [e.ebx, e.ecx, e.edx] == KVM_SIGNATURE));
    base.and_then(|b| find(entries, b | KVM_CPUID_FEATURES, 0))
        .map_or(0, |e| e.eax)
}

/// Guest physical address width from its CPUID (36 without leaf 8000_0008).
pub fn maxphyaddr(entries: &[Entry]) -> u32 {
    find(entries, 0x8000_0008, 0).map_or(36, |e| e.eax & 0xff)
}

/// EFER bits the guest's CPUID allows (upstream __kvm_valid_efer()).
pub fn efer_allowed(entries: &[Entry]) -> u64 {
    let edx = find(entries, 0x8000_0001, 0).map_or(0, |e| e.edx);
    let mut ok = 0;
    if edx & X1_EDX_SYSCALL != 0 {
        ok |= 1; // SCE
    }
    if edx & X1_EDX_LM != 0 {
        ok |= 1 << 8 | 1 << 10; // LME, LMA
    }
    if edx & X1_EDX_NX != 0 {
        ok |= 1 << 11;
    }
    ok
}

#[cfg(test)]
mod tests {
    #[test]
    fn amd_compatible_vendor() {
        let leaf0 = |b: &[u8; 12]| Entry {
            function: 0,
            ebx: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            edx: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            ecx: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            ..Default::default()
        };
        assert!(is_amd_compatible(&[leaf0(b"AuthenticAMD")]));
        assert!(is_amd_compatible(&[leaf0(b"HygonGenuine")]));
        assert!(!is_amd_compatible(&[leaf0(b"GenuineIntel")]));
        assert!(!is_amd_compatible(&[]));
    }

    use super::*;

    /// A host that reports every feature bit and max leaves beyond ours.
    fn rich(f: u32, _i: u32) -> [u32; 4] {
        match f {
            0 => [0x10, 1, 2, 3],
            0x8000_0000 => [0x8000_0021, 1, 2, 3],
            0x8000_0008 => [0x3030, !0, !0, !0],
            _ => [f, !0, !0, !0],
        }
    }

    #[test]
    fn filtered() {
        let mut out = [Entry::default(); MAX_ENTRIES];
        let n = supported(rich, 0, 0, &mut out).unwrap();
        let e = &out[..n];
        assert_eq!(find(e, 0, 0).unwrap().eax, 7);
        assert_eq!(find(e, 0xd, 0), None);
        let l1 = find(e, 1, 0).unwrap();
        assert_eq!(l1.ecx & (1 << 26), 0, "no XSAVE");
        assert_ne!(l1.ecx & L1_ECX_HYPERVISOR, 0);
        assert_eq!(l1.ebx >> 24, 0);
        assert_eq!(find(e, 0x8000_0000, 0).unwrap().eax, 0x8000_0008);
        assert_eq!(find(e, 0x8000_0001, 0).unwrap().edx, X1_EDX);
        assert_eq!(find(e, 0x4000_0000, 0).unwrap().ebx, KVM_SIGNATURE[0]);
        assert_eq!(maxphyaddr(e), 0x30);
        assert_eq!(efer_allowed(e), 1 | 1 << 8 | 1 << 10 | 1 << 11);
        assert_eq!(find(e, 7, 1), None, "leaf 7 is indexed");
        let l7 = find(e, 7, 0).unwrap();
        assert_ne!(l7.ebx & L7_EBX_TSC_ADJUST, 0, "TSC_ADJUST is emulated");
        assert_eq!(
            l7.edx, L7_EDX_ARCH_CAPABILITIES,
            "ARCH_CAPABILITIES is emulated"
        );
    }

    #[test]
    fn pv_features_follow_the_signature() {
        let sig = |function: u32, ebx: u32| Entry {
            function,
            eax: function + 1,
            ebx,
            ecx: KVM_SIGNATURE[1],
            edx: KVM_SIGNATURE[2],
            ..Default::default()
        };
        let feat = |function: u32, eax: u32| Entry {
            function,
            eax,
            ..Default::default()
        };
        // The KVM leaves at their usual base.
        let e = [sig(0x4000_0000, KVM_SIGNATURE[0]), feat(0x4000_0001, 0x9)];
        assert_eq!(kvm_pv_features(&e), 0x9);
        // Behind another hypervisor's leaves (Hyper-V first, KVM at 0x100).
        let e = [
            sig(0x4000_0000, 0x1234),
            feat(0x4000_0001, 0xff),
            sig(0x4000_0100, KVM_SIGNATURE[0]),
            feat(0x4000_0101, 0x8),
        ];
        assert_eq!(kvm_pv_features(&e), 0x8);
        // No signature, or a signature without the features leaf: none.
        assert_eq!(kvm_pv_features(&[feat(0x4000_0001, 0xff)]), 0);
        assert_eq!(kvm_pv_features(&[sig(0x4000_0000, KVM_SIGNATURE[0])]), 0);
    }

    #[test]
    fn xsave_offered_with_xcr0() {
        let host = |f: u32, i: u32| match (f, i) {
            (0xd, 1) => [0xf, 0, 0, 0],
            (0xd, 2) => [256, 576, 0, 0],
            _ => rich(f, i),
        };
        let mut out = [Entry::default(); MAX_ENTRIES];
        let xcr0 = xstate::FP | xstate::SSE | xstate::YMM;
        let n = supported(host, xcr0, 0, &mut out).unwrap();
        let e = &out[..n];
        assert_eq!(find(e, 0, 0).unwrap().eax, 0xd);
        let l1 = find(e, 1, 0).unwrap();
        assert_ne!(l1.ecx & L1_ECX_XSAVE, 0);
        assert_ne!(l1.ecx & (1 << 28), 0, "AVX with YMM");
        assert_eq!(l1.ecx & L1_ECX_OSXSAVE, 0, "OSXSAVE is the guest's CR4");
        let l7 = find(e, 7, 0).unwrap();
        assert_ne!(l7.ebx & L7_EBX_AVX2, 0);
        assert_eq!(l7.ebx & L7_EBX_AVX512, 0, "no AVX-512 state offered");
        let d0 = find(e, 0xd, 0).unwrap();
        assert_eq!((d0.eax, d0.ebx, d0.ecx, d0.edx), (7, 832, 832, 0));
        assert_eq!(find(e, 0xd, 1).unwrap().eax, 0x5, "no XSAVES, XSAVEC");
        assert_eq!(find(e, 0xd, 2).unwrap().eax, 256);
        assert_eq!(find(e, 0xd, 3), None);
        // Without SSE state there is no XSAVE at all.
        let n = supported(host, xstate::FP, 0, &mut out).unwrap();
        assert_eq!(find(&out[..n], 1, 0).unwrap().ecx & L1_ECX_XSAVE, 0);
    }

    #[test]
    fn runtime_bits() {
        let mut e = [
            Entry {
                function: 1,
                ecx: L1_ECX_XSAVE,
                edx: L1_EDX_APIC,
                ..Default::default()
            },
            Entry {
                function: 0xd,
                ebx: 1,
                flags: SIGNIFICANT_INDEX,
                ..Default::default()
            },
            Entry {
                function: 0xd,
                index: 1,
                ebx: 7,
                flags: SIGNIFICANT_INDEX,
                ..Default::default()
            },
        ];
        let r = Runtime {
            osxsave: true,
            apic: false,
            xsave_size: 832,
            mwait: None,
        };
        update_runtime(&mut e, &r);
        assert_eq!(e[0].ecx, L1_ECX_XSAVE | L1_ECX_OSXSAVE);
        assert_eq!(e[0].edx, 0, "APIC follows the APIC base's enable");
        assert_eq!((e[1].ebx, e[2].ebx), (832, 7));
        update_runtime(
            &mut e,
            &Runtime {
                apic: true,
                ..Default::default()
            },
        );
        assert_eq!((e[0].ecx, e[0].edx), (L1_ECX_XSAVE, L1_EDX_APIC));
        // MONITOR follows MISC_ENABLE.MWAIT only when asked to.
        let mwait = |m: Option<bool>| Runtime {
            apic: true,
            mwait: m,
            ..Default::default()
        };
        update_runtime(&mut e, &mwait(Some(true)));
        assert_eq!(e[0].ecx, L1_ECX_XSAVE | L1_ECX_MWAIT);
        update_runtime(&mut e, &mwait(None));
        assert_eq!(e[0].ecx, L1_ECX_XSAVE | L1_ECX_MWAIT);
        update_runtime(&mut e, &mwait(Some(false)));
        assert_eq!(e[0].ecx, L1_ECX_XSAVE);
    }

    #[test]
    fn too_small_is_e2big() {
        let mut out = [Entry::default(); 3];
        assert_eq!(supported(rich, 0, 0, &mut out), None);
    }

    #[test]
    fn small_host() {
        let mut out = [Entry::default(); MAX_ENTRIES];
        let n = supported(
            |f, _| {
                if f == 0x8000_0000 {
                    [0x8000_0001, 0, 0, 0]
                } else {
                    [1, 0, 0, 0]
                }
            },
            xstate::KVM_RS_XCR0,
            1 << KVM_FEATURE_STEAL_TIME,
            &mut out,
        )
        .unwrap();
        assert!(find(&out[..n], 7, 0).is_none());
        let pv = find(&out[..n], KVM_CPUID_SIGNATURE | KVM_CPUID_FEATURES, 0).unwrap();
        assert_eq!(pv.eax, 1 << KVM_FEATURE_STEAL_TIME);
        assert!(find(&out[..n], 0x8000_0008, 0).is_none());
        assert_eq!(maxphyaddr(&out[..n]), 36);
        assert_eq!(efer_allowed(&[]), 0);
    }
}
