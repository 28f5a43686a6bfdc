//! The in-kernel PIT: KVM_CREATE_PIT(2)'s errnos, its reset state in
//! KVM_GET_PIT2, channel 0's timer ticking into a real-mode guest through the PIC
//! with no help from userspace, channel 2 and port 0x61 as Linux's TSC calibration
//! uses them (KVM_PIT_SPEAKER_DUMMY), KVM_SET_PIT(2) and KVM_REINJECT_CONTROL.

use super::*;

const KVM_CREATE_PIT: u32 = io(0x64);
const KVM_GET_PIT: u32 = iowr::<uapi::kvm_pit_state>(0x65);
const KVM_SET_PIT: u32 = ior::<uapi::kvm_pit_state>(0x66);
const KVM_REINJECT_CONTROL: u32 = io(0x71);
const KVM_CREATE_PIT2: u32 = iow::<uapi::kvm_pit_config>(0x77);
const KVM_GET_PIT2: u32 = ior::<uapi::kvm_pit_state2>(0x9f);
const KVM_SET_PIT2: u32 = iow::<uapi::kvm_pit_state2>(0xa0);
const KVM_PIT_FLAGS_HPET_LEGACY: u32 = 1;

fn create_pit2(vm: RawFd, flags: u32) -> Result<i32, i32> {
    let mut c = uapi::kvm_pit_config {
        flags,
        ..Default::default()
    };
    ioctl_ref(vm, KVM_CREATE_PIT2, &mut c)
}

fn get_pit2(vm: RawFd) -> Result<uapi::kvm_pit_state2, i32> {
    let mut s = uapi::kvm_pit_state2::default();
    ioctl_ref(vm, KVM_GET_PIT2, &mut s).map(|_| s)
}

fn reinject(vm: RawFd, on: u8) -> Result<i32, i32> {
    let mut c = uapi::kvm_reinject_control {
        pit_reinject: on,
        ..Default::default()
    };
    ioctl_ref(vm, KVM_REINJECT_CONTROL, &mut c)
}

/// The 8259 master at vector base 0x20 with only IRQ 0 unmasked, the slave masked.
fn pic_irq0_only() -> Vec<u8> {
    let mut code = Vec::new();
    for (cmd, data, base, icw3) in [(0x20, 0x21, 0x20, 0x04), (0xa0, 0xa1, 0x28, 0x02)] {
        code.extend(irq::out_al(cmd, 0x11));
        code.extend(irq::out_al(data, base));
        code.extend(irq::out_al(data, icw3));
        code.extend(irq::out_al(data, 0x01));
    }
    code.extend(irq::out_al(0x21, 0xfe));
    code.extend(irq::out_al(0xa1, 0xff));
    code
}

pub(crate) fn pit(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    // Without an in-kernel PIC there is no PIT, and nothing to get or control.
    let g = Guest::new(kvm)?;
    t.expect(
        "pit: KVM_CREATE_PIT2 without an irqchip is -ENOENT",
        create_pit2(g.vm, 0),
        Err(libc::ENOENT),
    );
    t.expect(
        "pit: KVM_GET_PIT2 without a PIT is -ENXIO",
        get_pit2(g.vm).map(|_| 0),
        Err(libc::ENXIO),
    );
    t.expect(
        "pit: KVM_REINJECT_CONTROL without a PIT is -ENXIO",
        reinject(g.vm, 0),
        Err(libc::ENXIO),
    );
    drop(g);

    let g = Guest::with_irqchip(kvm)?;
    t.expect("pit: KVM_CREATE_PIT2", create_pit2(g.vm, 0), Ok(0));
    t.expect(
        "pit: a second KVM_CREATE_PIT2 is -EEXIST",
        create_pit2(g.vm, 0),
        Err(libc::EEXIST),
    );
    let s = get_pit2(g.vm).map_err(|e| format!("KVM_GET_PIT2: {e}"))?;
    let c = s.channels;
    t.check(
        "pit: reset state: no mode, count 65536, gates 1 1 0, no flags",
        c.iter().all(|c| c.mode == 0xff && c.count == 0x10000)
            && (c[0].gate, c[1].gate, c[2].gate) == (1, 1, 0)
            && s.flags == 0,
        format!("{c:?} flags {:#x}", s.flags),
    );

    // Channel 0 in mode 2 at 100 Hz: its ticks reach the guest's IRQ 0 handler
    // with no KVM_IRQ_LINE, each EOI'd in the kernel.
    let mut code = pic_irq0_only();
    code.extend(irq::out_al(0x43, 0x34)); // channel 0, LSB then MSB, mode 2
    code.extend(irq::out_al(0x40, (11932 & 0xff) as u8));
    code.extend(irq::out_al(0x40, (11932 >> 8) as u8));
    code.extend(irq::IDLE);
    let mut h = irq::out_al(0x10, 0x20).to_vec();
    h.extend(irq::out_al(0x20, 0x20)); // non-specific EOI
    h.push(0xcf); // iret
    irq::setup(&g, &code, &[(0x20, 0x2000, h)])?;
    for i in 1..=3 {
        t.exit(
            &format!("pit: timer tick {i} runs the IRQ 0 handler"),
            &g.step(),
            &out(0x10, 1, 1, &[0x20]),
        );
    }
    let s = get_pit2(g.vm).map_err(|e| format!("KVM_GET_PIT2: {e}"))?;
    let c0 = s.channels[0];
    t.check(
        "pit: KVM_GET_PIT2 shows channel 0 as programmed",
        c0.count == 11932 && c0.mode == 2 && c0.rw_mode == 3,
        format!("{c0:?}"),
    );
    // Without a speaker device, port 0x61 is userspace's.
    let g2 = Guest::with_irqchip(kvm)?;
    t.expect("pit: KVM_CREATE_PIT2 flags 0", create_pit2(g2.vm, 0), Ok(0));
    let code = [0xe4, 0x61, 0xf4]; // in al, 0x61; hlt
    irq::setup(&g2, &code, &[])?;
    t.exit(
        "pit: without KVM_PIT_SPEAKER_DUMMY port 0x61 exits",
        &g2.step(),
        &inp(0x61, 1, 1),
    );
    drop(g2);

    // KVM_SET_PIT2 loads each count again and keeps the flags;
    // KVM_SET_PIT does the same through the old layout.
    let mut s = get_pit2(g.vm).map_err(|e| format!("KVM_GET_PIT2: {e}"))?;
    s.channels[1].count = 0x1234;
    s.channels[1].mode = 2;
    s.channels[2].count = 0;
    s.flags = KVM_PIT_FLAGS_HPET_LEGACY;
    t.expect(
        "pit: KVM_SET_PIT2",
        ioctl_ref(g.vm, KVM_SET_PIT2, &mut s),
        Ok(0),
    );
    let r = get_pit2(g.vm).map_err(|e| format!("KVM_GET_PIT2: {e}"))?;
    t.check(
        "pit: KVM_GET_PIT2 reads back counts (0 as 65536), modes and flags",
        r.channels[1].count == 0x1234
            && r.channels[1].mode == 2
            && r.channels[2].count == 0x10000
            && r.flags == KVM_PIT_FLAGS_HPET_LEGACY,
        format!("{:?} flags {:#x}", r.channels, r.flags),
    );
    let mut old = uapi::kvm_pit_state {
        channels: r.channels,
    };
    old.channels[0].count = 500;
    t.expect(
        "pit: KVM_SET_PIT",
        ioctl_ref(g.vm, KVM_SET_PIT, &mut old),
        Ok(0),
    );
    let mut back = uapi::kvm_pit_state::default();
    t.expect(
        "pit: KVM_GET_PIT",
        ioctl_ref(g.vm, KVM_GET_PIT, &mut back),
        Ok(0),
    );
    t.check(
        "pit: KVM_GET_PIT reads back what KVM_SET_PIT set",
        back.channels[0].count == 500 && back.channels[1].count == 0x1234,
        format!("{:?}", back.channels),
    );
    t.expect("pit: KVM_REINJECT_CONTROL off", reinject(g.vm, 0), Ok(0));
    t.expect("pit: KVM_REINJECT_CONTROL on", reinject(g.vm, 1), Ok(0));
    drop(g);

    // KVM_CREATE_PIT has the speaker device: channel 2 gated by port 0x61 bit 0,
    // its OUT on bit 5, as pit_calibrate_tsc() polls it.
    let g = Guest::with_irqchip(kvm)?;
    t.expect(
        "pit: KVM_CREATE_PIT (with the speaker port)",
        ioctl(g.vm, KVM_CREATE_PIT, 0),
        Ok(0),
    );
    let mut code = vec![
        0xe4, 0x61, // in al, 0x61
        0x24, 0xfd, // and al, ~2 (speaker off)
        0x0c, 0x01, // or al, 1 (gate on)
        0xe6, 0x61, // out 0x61, al
    ];
    code.extend(irq::out_al(0x43, 0xb0)); // channel 2, LSB then MSB, mode 0
    code.extend(irq::out_al(0x42, 0xff));
    code.extend(irq::out_al(0x42, 0x20)); // 0x20ff ticks: 7 ms
    code.extend([
        0xe4, 0x61, // in al, 0x61
        0xe6, 0x12, // out 0x12, al: OUT still low
        0xe4, 0x61, // 1: in al, 0x61
        0xa8, 0x20, // test al, 0x20
        0x74, 0xfa, // jz 1b
        0xe6, 0x13, // out 0x13, al
        0xf4, // hlt
    ]);
    irq::setup(&g, &code, &[])?;
    let first = g.step();
    let ok = matches!(&first, Exit::Io { port: 0x12, data, .. } if data.first().is_some_and(|b| b & 0x23 == 0x01));
    t.check(
        "pit: port 0x61 in the kernel: gate on, speaker off, OUT low after the load",
        ok,
        format!("{first}"),
    );
    let next = g.step();
    let ok = matches!(&next, Exit::Io { port: 0x13, data, .. } if data.first().is_some_and(|b| b & 0x21 == 0x21));
    t.check(
        "pit: channel 2's OUT rises on port 0x61 bit 5 at terminal count",
        ok,
        format!("{next}"),
    );
    Ok(())
}
