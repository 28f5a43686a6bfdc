//! Cases for the register-state ioctls beyond REGS/SREGS: XCRS with the guest's
//! XSETBV and AVX state (XSAVE2), FPU, SREGS2 with PAE PDPTRs, TRANSLATE, and the
//! guest's DR0-3 with KVM_GET/SET_DEBUGREGS.

use super::*;

const KVM_CHECK_EXTENSION: u32 = io(0x03);
const KVM_TRANSLATE: u32 = iowr::<uapi::kvm_translation>(0x85);
const KVM_GET_FPU: u32 = ior::<uapi::kvm_fpu>(0x8c);
const KVM_SET_FPU: u32 = iow::<uapi::kvm_fpu>(0x8d);
const KVM_GET_XSAVE: u32 = ior::<uapi::kvm_xsave>(0xa4);
const KVM_GET_XCRS: u32 = ior::<uapi::kvm_xcrs>(0xa6);
const KVM_SET_XCRS: u32 = iow::<uapi::kvm_xcrs>(0xa7);
const KVM_GET_SREGS2: u32 = ior::<uapi::kvm_sregs2>(0xcc);
const KVM_SET_SREGS2: u32 = iow::<uapi::kvm_sregs2>(0xcd);
const KVM_GET_XSAVE2: u32 = ior::<uapi::kvm_xsave>(0xcf);
const KVM_GET_DEBUGREGS: u32 = ior::<uapi::kvm_debugregs>(0xa1);
const KVM_SET_DEBUGREGS: u32 = iow::<uapi::kvm_debugregs>(0xa2);
const PDPTRS_VALID: u64 = uapi::KVM_SREGS2_FLAGS_PDPTRS_VALID as u64;

fn xcrs(g: &Guest) -> Result<uapi::kvm_xcrs, String> {
    let mut x = uapi::kvm_xcrs::default();
    sys("KVM_GET_XCRS", ioctl_ref(g.vcpu, KVM_GET_XCRS, &mut x))?;
    Ok(x)
}

fn set_xcr0(g: &Guest, value: u64, flags: u32) -> Result<i32, i32> {
    let mut x = uapi::kvm_xcrs {
        nr_xcrs: 1,
        flags,
        ..Default::default()
    };
    x.xcrs[0].value = value;
    ioctl_ref(g.vcpu, KVM_SET_XCRS, &mut x)
}

/// XCR0 through KVM_GET/SET_XCRS and the guest's own XSETBV, CPUID.OSXSAVE
/// following CR4, the AVX state in KVM_GET_XSAVE2, and KVM_GET/SET_FPU.
pub(crate) fn xstate(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    let size = ioctl(kvm, KVM_CHECK_EXTENSION, uapi::KVM_CAP_XSAVE2.into());
    t.check(
        "xstate: KVM_CAP_XSAVE2 is at least struct kvm_xsave",
        size.is_ok_and(|s| s >= 4096),
        show(size),
    );
    t.expect(
        "xstate: KVM_CAP_XCRS",
        ioctl(kvm, KVM_CHECK_EXTENSION, uapi::KVM_CAP_XCRS.into()),
        Ok(1),
    );
    let size = size.unwrap_or(4096).max(4096) as usize;
    let g = Guest::new(kvm)?;
    g.set_supported_cpuid()?;
    let x = xcrs(&g)?;
    t.check(
        "xstate: XCR0 starts as FP",
        x.nr_xcrs == 1 && x.xcrs[0].xcr == 0 && x.xcrs[0].value == 1,
        format!("nr {} xcr0 {:#x}", x.nr_xcrs, x.xcrs[0].value),
    );
    t.expect(
        "xstate: SET_XCRS without FP",
        set_xcr0(&g, 2, 0),
        Err(libc::EINVAL),
    );
    t.expect(
        "xstate: SET_XCRS with flags",
        set_xcr0(&g, 1, 1),
        Err(libc::EINVAL),
    );
    t.expect(
        "xstate: SET_XCRS YMM without SSE",
        set_xcr0(&g, 5, 0),
        Err(libc::EINVAL),
    );

    g.mem.write(
        0x1000,
        &[
            0x0f, 0x20, 0xe0, // mov eax, cr4
            0x0d, 0x00, 0x06, 0x04, 0x00, // or eax, OSFXSR | OSXMMEXCPT | OSXSAVE
            0x0f, 0x22, 0xe0, // mov cr4, eax
            0x66, 0x0f, 0x76, 0xd2, // pcmpeqd xmm2, xmm2: SSE state not initial
            0xe7, 0x52, // out 0x52, eax
            0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1
            0x0f, 0xa2, // cpuid
            0x89, 0xc8, // mov eax, ecx
            0xe7, 0x54, // out 0x54, eax
            0x66, 0x0f, 0x7e, 0xc8, // movd eax, xmm1
            0xe7, 0x58, // out 0x58, eax
            0x31, 0xc9, // xor ecx, ecx
            0x31, 0xd2, // xor edx, edx
            0xb8, 0x07, 0x00, 0x00, 0x00, // mov eax, 7
            0x0f, 0x01, 0xd1, // xsetbv
            0xc5, 0xfd, 0x76, 0xc0, // vpcmpeqd ymm0, ymm0, ymm0
            0x31, 0xc0, // xor eax, eax
            0x0f, 0x01, 0xd0, // xgetbv
            0xe7, 0x50, // out 0x50, eax
            0xf4, // hlt
        ],
    );
    g.flat32(0x1000)?;
    match g.step() {
        Exit::Io { port: 0x52, .. } => {}
        e => t.check("xstate: out 0x52", false, e),
    }
    // FCW and XMM1 through KVM_SET_FPU, written in place as upstream does: the
    // guest sees them now that its SSE state is not in the initial state.
    let mut f = uapi::kvm_fpu::default();
    sys("KVM_GET_FPU", ioctl_ref(g.vcpu, KVM_GET_FPU, &mut f))?;
    t.reg("xstate: reset FCW", f.fcw.into(), 0x37f);
    f.fcw = 0x27f;
    f.xmm[1] = *b"0123456789abcdef";
    sys("KVM_SET_FPU", ioctl_ref(g.vcpu, KVM_SET_FPU, &mut f))?;
    let mut back = uapi::kvm_fpu::default();
    sys("KVM_GET_FPU", ioctl_ref(g.vcpu, KVM_GET_FPU, &mut back))?;
    t.check(
        "xstate: GET_FPU after SET_FPU",
        back.fcw == 0x27f && back.xmm[1] == f.xmm[1],
        format!("fcw {:#x} xmm1 {}", back.fcw, hex(&back.xmm[1])),
    );

    match g.step() {
        Exit::Io {
            port: 0x54, data, ..
        } => {
            let ecx = data.iter().rev().fold(0u32, |a, b| a << 8 | u32::from(*b));
            t.check(
                "xstate: CPUID.1 ECX has XSAVE and OSXSAVE after CR4.OSXSAVE",
                ecx & (3 << 26) == 3 << 26,
                format!("ecx {ecx:#x}"),
            );
        }
        e => t.check("xstate: out 0x54 (CPUID.1 ECX)", false, e),
    }
    t.exit(
        "xstate: the guest sees XMM1 from SET_FPU",
        &g.step(),
        &out(0x58, 4, 1, b"0123"),
    );
    t.exit(
        "xstate: XGETBV after XSETBV 7",
        &g.step(),
        &out(0x50, 4, 1, &7u32.to_le_bytes()),
    );
    t.exit("xstate: hlt", &g.step(), &Exit::Hlt);
    let x = xcrs(&g)?;
    t.reg(
        "xstate: GET_XCRS after the guest's XSETBV",
        x.xcrs[0].value,
        7,
    );

    // XSTATE_BV has YMM, and YMM0's upper half (at 576) is all ones.
    let mut buf = vec![0u8; size];
    let r = ioctl(g.vcpu, KVM_GET_XSAVE2, buf.as_mut_ptr() as u64);
    let bv = u64::from_le_bytes(buf[512..520].try_into().unwrap_or([0; 8]));
    t.check(
        "xstate: GET_XSAVE2 has the guest's YMM0",
        r == Ok(0) && bv & 7 == 7 && buf[576..592].iter().all(|b| *b == 0xff),
        format!(
            "{} xstate_bv {bv:#x} ymmh0 {}",
            show(r),
            hex(&buf[576..592])
        ),
    );
    let mut old = vec![0u8; 4096];
    let r = ioctl(g.vcpu, KVM_GET_XSAVE, old.as_mut_ptr() as u64);
    t.check(
        "xstate: GET_XSAVE agrees",
        r == Ok(0) && old[..] == buf[..4096],
        show(r),
    );
    t.expect("xstate: SET_XCRS 7", set_xcr0(&g, 7, 0), Ok(0));
    Ok(())
}

fn sregs2(g: &Guest) -> Result<uapi::kvm_sregs2, String> {
    let mut s = uapi::kvm_sregs2::default();
    sys("KVM_GET_SREGS2", ioctl_ref(g.vcpu, KVM_GET_SREGS2, &mut s))?;
    Ok(s)
}

fn translate(g: &Guest, la: u64) -> Result<uapi::kvm_translation, String> {
    let mut tr = uapi::kvm_translation {
        linear_address: la,
        ..Default::default()
    };
    sys("KVM_TRANSLATE", ioctl_ref(g.vcpu, KVM_TRANSLATE, &mut tr))?;
    Ok(tr)
}

/// SREGS2 and its PDPTRs in a PAE guest, TRANSLATE through its tables, and the
/// CR8 of SREGS.
pub(crate) fn sregs2_case(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    t.expect(
        "sregs2: KVM_CAP_SREGS2",
        ioctl(kvm, KVM_CHECK_EXTENSION, uapi::KVM_CAP_SREGS2.into()),
        Ok(1),
    );
    let g = Guest::new(kvm)?;
    let tr = translate(&g, 0x12_3456)?;
    t.check(
        "sregs2: TRANSLATE without paging is the identity",
        tr.valid == 1 && tr.physical_address == 0x12_3456 && tr.writeable == 1,
        format!("valid {} pa {:#x}", tr.valid, tr.physical_address),
    );
    // PDPT at 0x20000: entry 0 -> PD at 0x21000, whose entry 0 maps 2 MiB at 0.
    g.mem.write_u64(0x20000, 0x21000 | 1);
    g.mem.write_u64(0x21000, 0x83);
    g.mem.write(0x1000, &[0xe4, 0x60, 0xf4]); // in al, 0x60; hlt
    let mut s = g.flat32(0x1000)?;
    s.cr3 = 0x20000;
    s.cr4 = CR4_PAE;
    s.cr0 |= CR0_PG;
    s.cr8 = 5;
    g.set_sregs(s)?;
    t.reg("sregs2: SREGS.CR8 read back", g.sregs()?.cr8, 5);
    let s2 = sregs2(&g)?;
    t.check(
        "sregs2: PAE paging reports the PDPTRs from memory",
        s2.flags == PDPTRS_VALID && s2.pdptrs == [0x21001, 0, 0, 0] && s2.cr3 == 0x20000,
        format!("flags {} pdptrs {:x?}", s2.flags, s2.pdptrs),
    );
    let mut bad = s2;
    bad.flags = 2;
    t.expect(
        "sregs2: unknown flag",
        ioctl_ref(g.vcpu, KVM_SET_SREGS2, &mut bad),
        Err(libc::EINVAL),
    );
    let mut bad = s2;
    bad.cr0 &= !CR0_PG;
    t.expect(
        "sregs2: PDPTRs without PAE paging",
        ioctl_ref(g.vcpu, KVM_SET_SREGS2, &mut bad),
        Err(libc::EINVAL),
    );
    let mut set = s2;
    set.pdptrs[1] = 0x5000 | 1;
    t.expect(
        "sregs2: SET_SREGS2 with PDPTRs",
        ioctl_ref(g.vcpu, KVM_SET_SREGS2, &mut set),
        Ok(0),
    );
    t.check(
        "sregs2: the set PDPTRs until the next entry",
        sregs2(&g)?.pdptrs == set.pdptrs,
        format!("{:x?}", sregs2(&g)?.pdptrs),
    );
    let tr = translate(&g, 0x1_2345)?;
    t.check(
        "sregs2: TRANSLATE through the PAE tables",
        tr.valid == 1 && tr.physical_address == 0x1_2345,
        format!("valid {} pa {:#x}", tr.valid, tr.physical_address),
    );
    let tr = translate(&g, 0x4000_0000)?;
    t.check(
        "sregs2: TRANSLATE of an unmapped address",
        tr.valid == 0 && tr.physical_address == u64::MAX,
        format!("valid {} pa {:#x}", tr.valid, tr.physical_address),
    );
    t.exit("sregs2: the PAE guest runs", &g.step(), &inp(0x60, 1, 1));
    // After an entry they are loaded from memory again, unless an entry there has
    // a reserved bit (load_pdptrs()): TCG sets the accessed bit (5) in the PDPTE.
    let mem: [u64; 4] = std::array::from_fn(|i| g.mem.read_u64(0x20000 + 8 * i as u64));
    let valid = mem.iter().all(|p| p & 1 == 0 || p & 0x1e6 == 0);
    let want = if valid { mem } else { set.pdptrs };
    let s2 = sregs2(&g)?;
    t.check(
        "sregs2: after an entry, the PDPTRs of memory if valid, else the last ones",
        s2.flags == PDPTRS_VALID && s2.pdptrs == want,
        format!("flags {} pdptrs {:x?} memory {mem:x?}", s2.flags, s2.pdptrs),
    );
    // SET_SREGS loads them from memory.
    g.mem.write_u64(0x20000, 0x21001);
    g.mem.write_u64(0x20010, 0x7000 | 1);
    g.set_sregs(g.sregs()?)?;
    let s2 = sregs2(&g)?;
    t.check(
        "sregs2: SET_SREGS loads the PDPTRs from memory",
        s2.pdptrs == [0x21001, 0, 0x7001, 0],
        format!("pdptrs {:x?}", s2.pdptrs),
    );
    let mut plain = s2;
    plain.flags = 0;
    plain.cr0 &= !CR0_PG;
    t.expect(
        "sregs2: SET_SREGS2 without PDPTRs",
        ioctl_ref(g.vcpu, KVM_SET_SREGS2, &mut plain),
        Ok(0),
    );
    let s2 = sregs2(&g)?;
    t.check(
        "sregs2: no PDPTRs without paging",
        s2.flags == 0 && s2.pdptrs == [0; 4],
        format!("flags {} pdptrs {:x?}", s2.flags, s2.pdptrs),
    );
    Ok(())
}

/// DR0-3 are the guest's: KVM_SET_DEBUGREGS reaches MOV from DR1, the guest's MOV to
/// DR0 reaches KVM_GET_DEBUGREGS.
pub(crate) fn debugregs(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    let g = Guest::new(kvm)?;
    g.mem.write(
        0x1000,
        &[
            0xb8, 0x34, 0x12, 0x00, 0x00, // mov eax, 0x1234
            0x0f, 0x23, 0xc0, // mov dr0, eax
            0x0f, 0x21, 0xc8, // mov eax, dr1
            0xe7, 0x62, // out 0x62, eax
            0x0f, 0x21, 0xc0, // mov eax, dr0
            0xe7, 0x64, // out 0x64, eax
            0xf4, // hlt
        ],
    );
    g.flat32(0x1000)?;
    let mut d = uapi::kvm_debugregs::default();
    sys(
        "KVM_GET_DEBUGREGS",
        ioctl_ref(g.vcpu, KVM_GET_DEBUGREGS, &mut d),
    )?;
    d.db[1] = 0x5678;
    sys(
        "KVM_SET_DEBUGREGS",
        ioctl_ref(g.vcpu, KVM_SET_DEBUGREGS, &mut d),
    )?;
    t.exit(
        "debugregs: the guest reads DR1 as SET_DEBUGREGS set it",
        &g.step(),
        &out(0x62, 4, 1, &0x5678u32.to_le_bytes()),
    );
    let mut d = uapi::kvm_debugregs::default();
    sys(
        "KVM_GET_DEBUGREGS",
        ioctl_ref(g.vcpu, KVM_GET_DEBUGREGS, &mut d),
    )?;
    t.check(
        "debugregs: GET_DEBUGREGS has the guest's DR0",
        d.db[0] == 0x1234 && d.db[1] == 0x5678,
        format!("db {:x?}", d.db),
    );
    // Across an exit (and whatever ran on this CPU meanwhile) DR0 stays the guest's.
    t.exit(
        "debugregs: DR0 after an exit",
        &g.step(),
        &out(0x64, 4, 1, &0x1234u32.to_le_bytes()),
    );
    t.exit("debugregs: hlt", &g.step(), &Exit::Hlt);
    Ok(())
}
