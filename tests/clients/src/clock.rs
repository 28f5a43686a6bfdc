//! The guest TSC and the VM clock: a new vCPU's TSC starts at 0, a KVM_SET_MSRS of
//! IA32_TSC sets it and the guest's RDTSC sees it, a guest WRMSR of IA32_TSC moves
//! IA32_TSC_ADJUST with it; KVM_GET_CLOCK runs forward, KVM_SET_CLOCK sets it
//! (also from a realtime stamp), and refuses unknown flags.

use super::*;

const KVM_SET_CLOCK: u32 = iow::<uapi::kvm_clock_data>(0x7b);
const KVM_GET_CLOCK: u32 = ior::<uapi::kvm_clock_data>(0x7c);
const KVM_CHECK_EXTENSION: u32 = io(0x03);
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_TSC_ADJUST: u32 = 0x3b;
/// The granularity the TSC checks round to (tsc_msrs_test's UNITY: about 0.4 s at
/// 2.5 GHz, far more than a TCG round trip).
const UNITY: u64 = 1 << 30;
const NSEC_PER_SEC: u64 = 1_000_000_000;

fn round(x: u64) -> u64 {
    x.wrapping_add(UNITY / 2) & !(UNITY - 1)
}

fn get_clock(g: &Guest) -> Result<uapi::kvm_clock_data, String> {
    let mut d = uapi::kvm_clock_data::default();
    sys("KVM_GET_CLOCK", ioctl_ref(g.vm, KVM_GET_CLOCK, &mut d))?;
    Ok(d)
}

fn set_clock(g: &Guest, clock: u64, flags: u32, realtime: u64) -> Result<i32, i32> {
    let mut d = uapi::kvm_clock_data {
        clock,
        flags,
        realtime,
        ..Default::default()
    };
    ioctl_ref(g.vm, KVM_SET_CLOCK, &mut d)
}

fn realtime_ns() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_secs() * NSEC_PER_SEC + u64::from(d.subsec_nanos())
}

pub(crate) fn clock(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    // KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC.
    t.expect(
        "clock: KVM_CHECK_EXTENSION(KVM_CAP_ADJUST_CLOCK) is the valid flags",
        ioctl(kvm, KVM_CHECK_EXTENSION, uapi::KVM_CAP_ADJUST_CLOCK.into()),
        Ok(0xe),
    );
    let g = Guest::new(kvm)?;
    g.set_supported_cpuid()?;
    t.reg(
        "clock: a new vCPU's TSC starts at 0",
        round(g.get_msr(MSR_IA32_TSC)?.unwrap_or(u64::MAX)),
        0,
    );
    g.mem.write(
        0x1000,
        &[
            0x0f, 0x31, // rdtsc
            0x66, 0xe7, 0x44, // out 0x44, eax
            0x66, 0x89, 0xd0, // mov eax, edx
            0x66, 0xe7, 0x46, // out 0x46, eax
            0x66, 0xb9, 0x10, 0x00, 0x00, 0x00, // mov ecx, 0x10 (IA32_TSC)
            0x66, 0x31, 0xc0, // xor eax, eax
            0x66, 0xba, 0x00, 0x02, 0x00, 0x00, // mov edx, 0x200 (TSC = 2^41)
            0x0f, 0x30, // wrmsr
            0xf4, // hlt
        ],
    );
    g.real_mode(0x1000, 0)?;
    let base = 1u64 << 40;
    t.check(
        "clock: KVM_SET_MSRS(IA32_TSC)",
        g.set_msr(MSR_IA32_TSC, base)?,
        String::new(),
    );
    t.reg(
        "clock: the TSC reads back as set",
        round(g.get_msr(MSR_IA32_TSC)?.unwrap_or(0)),
        base,
    );
    t.reg(
        "clock: a host TSC write leaves IA32_TSC_ADJUST",
        g.get_msr(MSR_IA32_TSC_ADJUST)?.unwrap_or(u64::MAX),
        0,
    );
    let lo = g.step();
    let hi = g.step();
    let half = |e: &Exit| match e {
        Exit::Io { data, .. } if data.len() == 4 => Some(u64::from(u32::from_le_bytes([
            data[0], data[1], data[2], data[3],
        ]))),
        _ => None,
    };
    let tsc = half(&lo).zip(half(&hi)).map(|(l, h)| h << 32 | l);
    t.check(
        "clock: the guest's RDTSC reads the TSC as set",
        tsc.is_some_and(|v| round(v) == base),
        format!("{lo} / {hi}"),
    );
    t.exit("clock: the guest writes IA32_TSC", &g.step(), &Exit::Hlt);
    let got = (
        round(g.get_msr(MSR_IA32_TSC)?.unwrap_or(0)),
        round(g.get_msr(MSR_IA32_TSC_ADJUST)?.unwrap_or(0)),
    );
    t.check(
        "clock: a guest TSC write moves IA32_TSC_ADJUST by as much",
        got == (2 * base, base),
        format!("{got:x?}"),
    );

    // The VM clock: it counts on, and KVM_SET_CLOCK moves it.
    let c1 = get_clock(&g)?;
    let c2 = get_clock(&g)?;
    t.check(
        "clock: KVM_GET_CLOCK runs forward",
        c2.clock >= c1.clock,
        format!("{} then {}", c1.clock, c2.clock),
    );
    // After a run with one vCPU the master clock is on where the host
    // clocksource is the TSC; it comes with the realtime and TSC stamps.
    let stable = uapi::KVM_CLOCK_TSC_STABLE;
    let stamps = uapi::KVM_CLOCK_REALTIME | uapi::KVM_CLOCK_HOST_TSC;
    t.check(
        "clock: KVM_GET_CLOCK flags",
        c1.flags == 0 || c1.flags == stable || c1.flags == stable | stamps,
        format!("{:#x}", c1.flags),
    );
    t.expect(
        "clock: KVM_SET_CLOCK with an unknown flag",
        set_clock(&g, 0, 1, 0),
        Err(libc::EINVAL),
    );
    let at = 1000 * NSEC_PER_SEC;
    sys("KVM_SET_CLOCK", set_clock(&g, at, 0, 0))?;
    let c = get_clock(&g)?.clock;
    t.check(
        "clock: KVM_SET_CLOCK sets it",
        (at..at + 60 * NSEC_PER_SEC).contains(&c),
        format!("{c}"),
    );
    // KVM_CLOCK_REALTIME: the realtime elapsed since the stamp is added.
    sys(
        "KVM_SET_CLOCK(REALTIME)",
        set_clock(
            &g,
            0,
            uapi::KVM_CLOCK_REALTIME,
            realtime_ns() - 100 * NSEC_PER_SEC,
        ),
    )?;
    let c = get_clock(&g)?.clock;
    t.check(
        "clock: KVM_SET_CLOCK(REALTIME) adds the time since the stamp",
        (100 * NSEC_PER_SEC..160 * NSEC_PER_SEC).contains(&c),
        format!("{c}"),
    );
    Ok(())
}
