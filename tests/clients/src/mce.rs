//! Machine checks: KVM_X86_GET_MCE_CAP_SUPPORTED, KVM_X86_SETUP_MCE's checks and the
//! bank MSRs it initializes, KVM_X86_SET_MCE into a real-mode guest (an
//! uncorrected error is a #MC its handler gets, or a shutdown without CR4.MCE; a
//! corrected one is only recorded), and the guest reading its bank.

use super::*;

const KVM_X86_GET_MCE_CAP_SUPPORTED: u32 = ior::<u64>(0x9d);
const KVM_X86_SETUP_MCE: u32 = iow::<u64>(0x9c);
const KVM_X86_SET_MCE: u32 = iow::<uapi::kvm_x86_mce>(0x9e);
const KVM_CHECK_EXTENSION: u32 = io(0x03);

const MCG_CTL_P: u64 = 1 << 8;
const MCG_SER_P: u64 = 1 << 24;
const MSR_MCG_CAP: u32 = 0x179;
const MSR_MCG_STATUS: u32 = 0x17a;
const MSR_MCG_CTL: u32 = 0x17b;
const MSR_MC0_CTL: u32 = 0x400;
const MCI_STATUS_VAL: u64 = 1 << 63;
const MCI_STATUS_UC: u64 = 1 << 61;
const MCI_STATUS_EN: u64 = 1 << 60;
const MCI_STATUS_S: u64 = 1 << 56;
const MCG_STATUS_MCIP: u64 = 1 << 2;
const CR4_MCE: u64 = 1 << 6;

fn setup_mce(g: &Guest, mut cap: u64) -> Result<i32, i32> {
    ioctl_ref(g.vcpu, KVM_X86_SETUP_MCE, &mut cap)
}

fn set_mce(g: &Guest, bank: u8, status: u64, mcg_status: u64) -> Result<i32, i32> {
    let mut m = uapi::kvm_x86_mce {
        status,
        addr: 0x1234_5000,
        misc: 0x86,
        mcg_status,
        bank,
        ..Default::default()
    };
    ioctl_ref(g.vcpu, KVM_X86_SET_MCE, &mut m)
}

/// A real-mode guest with a #MC handler (reports itself on port 0x18), whose main
/// code reads MC2_STATUS' high half with RDMSR and reports it on port 0x42.
fn mce_guest(kvm: RawFd, cr4_mce: bool) -> Result<Guest, String> {
    let g = Guest::new(kvm)?;
    g.reporting_handler(18, 0x2000, 0x18, 0x18);
    g.mem.write(
        0x1000,
        &[
            0xe6, 0x40, // out 0x40, al
            0x66, 0xb9, 0x09, 0x04, 0x00, 0x00, // mov ecx, 0x409 (MC2_STATUS)
            0x0f, 0x32, // rdmsr
            0x66, 0x89, 0xd0, // mov eax, edx
            0x66, 0xe7, 0x42, // out 0x42, eax
            0xf4, // hlt
        ],
    );
    g.real_mode_stack(0x1000)?;
    if cr4_mce {
        let mut s = g.sregs()?;
        s.cr4 |= CR4_MCE;
        g.set_sregs(s)?;
    }
    Ok(g)
}

pub(crate) fn mce(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    t.expect(
        "mce: KVM_CHECK_EXTENSION(KVM_CAP_MCE) is the bank count",
        ioctl(kvm, KVM_CHECK_EXTENSION, uapi::KVM_CAP_MCE.into()),
        Ok(32),
    );
    let mut supported = 0u64;
    sys(
        "KVM_X86_GET_MCE_CAP_SUPPORTED",
        ioctl_ref(kvm, KVM_X86_GET_MCE_CAP_SUPPORTED, &mut supported),
    )?;
    // kvm_caps.supported_mce_cap on AMD.
    t.reg(
        "mce: KVM_X86_GET_MCE_CAP_SUPPORTED",
        supported,
        MCG_CTL_P | MCG_SER_P,
    );

    let g = mce_guest(kvm, true)?;
    t.check(
        "mce: a new vCPU has all 32 banks in MCG_CAP",
        g.get_msr(MSR_MCG_CAP)? == Some(32),
        format!("{:?}", g.get_msr(MSR_MCG_CAP)),
    );
    for (what, cap) in [
        ("no banks", MCG_CTL_P),
        ("33 banks", 33),
        ("CMCI, which AMD does not offer", 10 | 1 << 10),
    ] {
        t.expect(
            &format!("mce: KVM_X86_SETUP_MCE with {what}"),
            setup_mce(&g, cap),
            Err(libc::EINVAL),
        );
    }
    let cap = 10 | MCG_CTL_P | MCG_SER_P;
    sys("KVM_X86_SETUP_MCE", setup_mce(&g, cap))?;
    let got = (
        g.get_msr(MSR_MCG_CAP)?,
        g.get_msr(MSR_MCG_CTL)?,
        g.get_msr(MSR_MC0_CTL + 4 * 9)?,
        g.get_msr(MSR_MC0_CTL + 4 * 10)?,
    );
    // svm_setup_mce() keeps MCG_CAP's bits 8:0 (MCG_SER_P goes).
    t.check(
        "mce: SETUP_MCE sets MCG_CAP, MCG_CTL and MCi_CTL to all 1s, 10 banks only",
        got == (Some(cap & 0x1ff), Some(u64::MAX), Some(u64::MAX), None),
        format!("{got:?}"),
    );
    t.check(
        "mce: MCi_CTL takes 0 or all 1s only",
        !g.set_msr(MSR_MC0_CTL + 4, 0xff)? && g.set_msr(MSR_MC0_CTL + 4, 0)?,
        String::new(),
    );
    let uc = MCI_STATUS_VAL | MCI_STATUS_UC | MCI_STATUS_EN | MCI_STATUS_S | 0x17;
    t.expect(
        "mce: SET_MCE into a bank beyond MCG_CAP",
        set_mce(&g, 10, uc, MCG_STATUS_MCIP),
        Err(libc::EINVAL),
    );
    t.expect(
        "mce: SET_MCE without MCi_STATUS.VAL",
        set_mce(&g, 2, uc & !MCI_STATUS_VAL, MCG_STATUS_MCIP),
        Err(libc::EINVAL),
    );
    t.exit("mce: first exit", &g.step(), &out(0x40, 1, 1, &[0]));
    sys("KVM_X86_SET_MCE", set_mce(&g, 2, uc, MCG_STATUS_MCIP))?;
    t.exit(
        "mce: an uncorrected error is a #MC for the guest",
        &g.step(),
        &out(0x18, 1, 1, &[0x18]),
    );
    let got = (
        g.get_msr(MSR_MC0_CTL + 9)?,
        g.get_msr(MSR_MC0_CTL + 10)?,
        g.get_msr(MSR_MCG_STATUS)?,
    );
    t.check(
        "mce: the bank and MCG_STATUS hold the error",
        got == (Some(uc), Some(0x1234_5000), Some(MCG_STATUS_MCIP)),
        format!("{got:x?}"),
    );
    t.exit(
        "mce: the guest reads MC2_STATUS",
        &g.step(),
        &out(0x42, 4, 1, &((uc >> 32) as u32).to_le_bytes()),
    );

    // A corrected error is recorded without a #MC.
    let g = mce_guest(kvm, true)?;
    sys("KVM_X86_SETUP_MCE", setup_mce(&g, cap))?;
    let ce = MCI_STATUS_VAL | MCI_STATUS_EN | 0x5;
    sys("KVM_X86_SET_MCE", set_mce(&g, 2, ce, 0))?;
    t.exit(
        "mce: a corrected error: no #MC",
        &g.step(),
        &out(0x40, 1, 1, &[0]),
    );
    t.exit(
        "mce: the guest reads it",
        &g.step(),
        &out(0x42, 4, 1, &((ce >> 32) as u32).to_le_bytes()),
    );

    // Without CR4.MCE the guest cannot take a #MC: shutdown.
    let g = mce_guest(kvm, false)?;
    sys("KVM_X86_SETUP_MCE", setup_mce(&g, cap))?;
    sys("KVM_X86_SET_MCE", set_mce(&g, 2, uc, MCG_STATUS_MCIP))?;
    t.exit(
        "mce: without CR4.MCE an uncorrected error shuts the guest down",
        &g.step(),
        &Exit::Shutdown,
    );
    Ok(())
}

/// MTRRs and PAT through KVM_GET/SET_MSRS (upstream kvm_mtrr_get/set_msr(),
/// kvm_pat_valid()): what QEMU writes at every reset is taken and read back, bad
/// types and the gaps between the MTRR ranges are refused.
pub(crate) fn mtrr(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    const MTRRCAP: u32 = 0xfe;
    const DEF_TYPE: u32 = 0x2ff;
    const FIX64K: u32 = 0x250;
    const PHYS_BASE0: u32 = 0x200;
    const PAT: u32 = 0x277;
    let g = Guest::new(kvm)?;
    g.set_supported_cpuid()?;
    t.check(
        "mtrr: MTRRcap: WC, fixed ranges, 8 variable",
        g.get_msr(MTRRCAP)? == Some(0x508),
        format!("{:x?}", g.get_msr(MTRRCAP)?),
    );
    for (what, msr, v, ok) in [
        ("MTRRdefType WB, enabled", DEF_TYPE, 0xc06, true),
        ("MTRRdefType with a reserved bit", DEF_TYPE, 0x1006, false),
        ("MTRRdefType of type 2", DEF_TYPE, 0xc02, false),
        (
            "MTRRfix64K_00000 all WB",
            FIX64K,
            0x0606_0606_0606_0606,
            true,
        ),
        ("MTRRfix64K_00000 with a type 7", FIX64K, 0x0700, false),
        (
            "MTRRphysBase1 WB at 2 GiB",
            PHYS_BASE0 + 2,
            0x8000_0006,
            true,
        ),
        (
            "MTRRphysMask1 with reserved low bits",
            PHYS_BASE0 + 3,
            0x7ff,
            false,
        ),
        ("a gap between the ranges", 0x210, 0, false),
        ("MTRRcap", MTRRCAP, 0x508, false),
        ("PAT at its reset value", PAT, 0x0007_0406_0007_0406, true),
        ("PAT with reserved type 2", PAT, 0x02, false),
    ] {
        t.check(
            &format!("mtrr: KVM_SET_MSRS of {what}"),
            g.set_msr(msr, v)? == ok,
            String::new(),
        );
    }
    let got = (
        g.get_msr(DEF_TYPE)?,
        g.get_msr(PHYS_BASE0 + 2)?,
        g.get_msr(0x210)?,
    );
    t.check(
        "mtrr: read back, and no MSR in the gap",
        got == (Some(0xc06), Some(0x8000_0006), None),
        format!("{got:x?}"),
    );
    Ok(())
}
