//! Cases for the in-kernel PIC and IOAPIC: KVM_IRQ_LINE(_STATUS) into a real-mode
//! guest that programs the chips itself (the PIC through its ports, the IOAPIC
//! through its MMIO window), EOIs and level re-delivery, KVM_SIGNAL_MSI,
//! KVM_GET_IRQCHIP showing it, and KVM_SET_GSI_ROUTING's errnos.

use super::*;

const KVM_IRQ_LINE: u32 = iow::<uapi::kvm_irq_level>(0x61);
const KVM_GET_IRQCHIP: u32 = iowr::<uapi::kvm_irqchip>(0x62);
const KVM_IRQ_LINE_STATUS: u32 = iowr::<uapi::kvm_irq_level>(0x67);
const KVM_SET_GSI_ROUTING: u32 = iow::<uapi::kvm_irq_routing>(0x6a);
const KVM_SIGNAL_MSI: u32 = iow::<uapi::kvm_msi>(0xa5);

fn irq_level(gsi: u32, level: u32) -> uapi::kvm_irq_level {
    let mut ev = uapi::kvm_irq_level {
        level,
        ..Default::default()
    };
    ev.__bindgen_anon_1.irq = gsi;
    ev
}

/// KVM_IRQ_LINE_STATUS: the status KVM reports, or the errno.
fn irq_line_status(g: &Guest, gsi: u32, level: u32) -> Result<i32, i32> {
    let mut ev = irq_level(gsi, level);
    ioctl_ref(g.vm, KVM_IRQ_LINE_STATUS, &mut ev)?;
    // SAFETY: KVM wrote the status over the irq number.
    Ok(unsafe { ev.__bindgen_anon_1.status })
}

fn irq_line(g: &Guest, gsi: u32, level: u32) -> Result<(), String> {
    let mut ev = irq_level(gsi, level);
    sys("KVM_IRQ_LINE", ioctl_ref(g.vm, KVM_IRQ_LINE, &mut ev)).map(drop)
}

fn get_chip(g: &Guest, id: u32) -> Result<uapi::kvm_irqchip, String> {
    let mut c = uapi::kvm_irqchip {
        chip_id: id,
        ..Default::default()
    };
    sys("KVM_GET_IRQCHIP", ioctl_ref(g.vm, KVM_GET_IRQCHIP, &mut c))?;
    Ok(c)
}

fn pic_state(g: &Guest, id: u32) -> Result<uapi::kvm_pic_state, String> {
    // SAFETY: KVM filled the PIC variant for a PIC chip id.
    get_chip(g, id).map(|c| unsafe { c.chip.pic })
}

fn ioapic_entry(g: &Guest, pin: usize) -> Result<(u64, u32), String> {
    // SAFETY: KVM filled the IOAPIC variant for KVM_IRQCHIP_IOAPIC.
    let io = get_chip(g, uapi::KVM_IRQCHIP_IOAPIC).map(|c| unsafe { c.chip.ioapic })?;
    // SAFETY: the entry is a u64 or its bitfield view.
    Ok((unsafe { io.redirtbl[pin].bits }, io.irr))
}

/// Real mode from 0x1000, stack at 0x8000, handlers at the given IVT vectors.
pub(crate) fn setup(g: &Guest, code: &[u8], handlers: &[(u8, u16, Vec<u8>)]) -> Result<(), String> {
    g.mem.write(0x1000, code);
    for (vector, at, h) in handlers {
        g.mem.write(u64::from(*at), h);
        g.mem
            .write(u64::from(*vector) * 4, &[*at as u8, (*at >> 8) as u8, 0, 0]);
    }
    g.real_mode_stack(0x1000)
}

/// `mov al, v; out port, al`.
pub(crate) fn out_al(port: u8, v: u8) -> [u8; 4] {
    [0xb0, v, 0xe6, port]
}

/// x2APIC on, software-enabled (SVR 0x1ff), in real mode.
pub(crate) fn x2apic_on() -> Vec<u8> {
    let mut c = vec![
        0x66, 0xb9, 0x1b, 0, 0, 0, // mov ecx, MSR_IA32_APICBASE
        0x0f, 0x32, // rdmsr
        0x66, 0x0d, 0x00, 0x0c, 0, 0, // or eax, ENABLE | X2APIC
        0x0f, 0x30, // wrmsr
    ];
    c.extend(wrmsr(0x80f, 0x1ff));
    c
}

pub(crate) fn wrmsr(msr: u32, val: u32) -> Vec<u8> {
    let mut c = vec![0x66, 0xb9];
    c.extend(msr.to_le_bytes()); // mov ecx, msr
    c.extend([0x66, 0xb8]);
    c.extend(val.to_le_bytes()); // mov eax, val
    c.extend([0x66, 0x31, 0xd2, 0x0f, 0x30]); // xor edx, edx; wrmsr
    c
}

/// `sti` then `hlt` in a loop: every interrupt handler reports through a port.
pub(crate) const IDLE: [u8; 4] = [0xfb, 0xf4, 0xeb, 0xfd];

/// The 8259 pair: the guest initializes it through its ports (no exits), an edge
/// on KVM_IRQ_LINE reaches its handler at the programmed vector through LINT0
/// (ExtINT), the EOI is taken in the kernel, and KVM_GET_IRQCHIP shows it.
pub(crate) fn pic(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    let g = Guest::with_irqchip(kvm)?;
    let mut code = Vec::new();
    for (cmd, data, base, icw3) in [(0x20, 0x21, 0x20, 0x04), (0xa0, 0xa1, 0x28, 0x02)] {
        code.extend(out_al(cmd, 0x11)); // ICW1: edge, cascade, ICW4
        code.extend(out_al(data, base)); // ICW2: vector base
        code.extend(out_al(data, icw3)); // ICW3
        code.extend(out_al(data, 0x01)); // ICW4: 8086 mode
    }
    code.extend(out_al(0x21, 0xf7)); // OCW1: only IRQ 3 on the master
    code.extend(out_al(0xa1, 0xff));
    code.extend([0xe4, 0x21, 0xe6, 0x12]); // in al, 0x21; out 0x12, al
    code.extend(IDLE);
    let mut h = out_al(0x10, 0x23).to_vec();
    h.extend(out_al(0x20, 0x20)); // non-specific EOI
    h.push(0xcf); // iret
    setup(&g, &code, &[(0x23, 0x2000, h)])?;

    t.exit(
        "pic: the guest reads back its mask (ports 0x20-0xa1 in the kernel)",
        &g.step(),
        &out(0x12, 1, 1, &[0xf7]),
    );
    // IRQ 3 is routed to PIC pin 3 (delivered) and IOAPIC pin 3 (masked).
    t.expect(
        "pic: KVM_IRQ_LINE_STATUS IRQ 3 is delivered",
        irq_line_status(&g, 3, 1),
        Ok(1),
    );
    t.exit(
        "pic: IRQ 3 runs the handler at vector 0x23",
        &g.step(),
        &out(0x10, 1, 1, &[0x23]),
    );
    let m = pic_state(&g, uapi::KVM_IRQCHIP_PIC_MASTER)?;
    t.check(
        "pic: KVM_GET_IRQCHIP shows IRQ 3 in service, the base and the mask",
        m.isr == 0x08 && m.irq_base == 0x20 && m.imr == 0xf7 && m.irr & 0x08 == 0,
        format!(
            "isr {:#x} irr {:#x} base {:#x} imr {:#x}",
            m.isr, m.irr, m.irq_base, m.imr
        ),
    );
    t.expect(
        "pic: a masked IRQ 5 is not delivered",
        irq_line_status(&g, 5, 1),
        Ok(-1),
    );
    // A new edge on IRQ 3; the handler's EOI (in the kernel) lets it in.
    irq_line(&g, 3, 0)?;
    irq_line(&g, 3, 1)?;
    t.exit(
        "pic: the next edge after the EOI runs the handler again",
        &g.step(),
        &out(0x10, 1, 1, &[0x23]),
    );
    let s = pic_state(&g, uapi::KVM_IRQCHIP_PIC_SLAVE)?;
    t.check(
        "pic: the slave has its own base and mask",
        s.irq_base == 0x28 && s.imr == 0xff,
        format!("base {:#x} imr {:#x}", s.irq_base, s.imr),
    );
    Ok(())
}

/// The IOAPIC: the guest programs a level-triggered entry through the MMIO window,
/// the line's interrupt is re-delivered after each EOI while it stays asserted
/// (remote IRR), and KVM_SIGNAL_MSI reaches the LAPIC directly.
pub(crate) fn ioapic(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    let g = Guest::with_irqchip(kvm)?;
    g.set_supported_cpuid()?;
    let mut code = x2apic_on();
    code.extend(out_al(0x21, 0xff)); // mask the PIC, as an IOAPIC guest does
    code.extend(out_al(0xa1, 0xff));
    code.extend([
        0x66, 0xc7, 0x06, 0x00, 0x00, 0x24, 0, 0, 0, // mov dword [0], 0x10 + 2 * 10
        0x66, 0xc7, 0x06, 0x10, 0x00, 0x50, 0x80, 0, 0, // mov dword [0x10], level | 0x50
        0x66, 0x8b, 0x06, 0x10, 0x00, // mov eax, [0x10]
        0x66, 0xe7, 0x12, // out 0x12, eax
    ]);
    code.extend(IDLE);
    let handler = |port: u8, vector: u8| {
        let mut h = out_al(port, vector).to_vec();
        h.extend(wrmsr(0x80b, 0)); // EOI
        h.push(0xcf); // iret
        h
    };
    setup(
        &g,
        &code,
        &[
            (0x50, 0x2000, handler(0x10, 0x50)),
            (0x51, 0x2100, handler(0x13, 0x51)),
        ],
    )?;
    // DS at the IOAPIC's window: real mode reaches it through the cached base.
    let mut s = g.sregs()?;
    s.ds.base = 0xfec0_0000;
    g.set_sregs(s)?;

    t.exit(
        "ioapic: the guest reads back the entry it wrote through MMIO",
        &g.step(),
        &out(0x12, 4, 1, &0x8050u32.to_le_bytes()),
    );
    t.expect(
        "ioapic: KVM_IRQ_LINE_STATUS GSI 10 is delivered",
        irq_line_status(&g, 10, 1),
        Ok(1),
    );
    t.exit(
        "ioapic: GSI 10 runs the handler at vector 0x50",
        &g.step(),
        &out(0x10, 1, 1, &[0x50]),
    );
    let (e, irr) = ioapic_entry(&g, 10)?;
    t.check(
        "ioapic: KVM_GET_IRQCHIP: remote IRR set, line pending",
        e & (1 << 14) != 0 && irr & (1 << 10) != 0,
        format!("entry {e:#x} irr {irr:#x}"),
    );
    t.expect(
        "ioapic: an asserted level line with remote IRR set is not delivered",
        irq_line_status(&g, 10, 1),
        Ok(-1),
    );
    t.exit(
        "ioapic: still asserted at the EOI: delivered again",
        &g.step(),
        &out(0x10, 1, 1, &[0x50]),
    );
    irq_line(&g, 10, 0)?;
    let mut msi = uapi::kvm_msi {
        address_lo: 0xfee0_0000,
        data: 0x51,
        ..Default::default()
    };
    t.expect(
        "ioapic: KVM_SIGNAL_MSI reaches one LAPIC",
        ioctl_ref(g.vm, KVM_SIGNAL_MSI, &mut msi),
        Ok(1),
    );
    t.exit(
        "ioapic: the MSI runs the handler at vector 0x51",
        &g.step(),
        &out(0x13, 1, 1, &[0x51]),
    );
    let (e, irr) = ioapic_entry(&g, 10)?;
    t.check(
        "ioapic: after the EOI with the line low: remote IRR and irr clear",
        e & (1 << 14) == 0 && irr & (1 << 10) == 0,
        format!("entry {e:#x} irr {irr:#x}"),
    );
    let mut bad = uapi::kvm_msi { flags: 2, ..msi };
    t.expect(
        "ioapic: KVM_SIGNAL_MSI with unknown flags",
        ioctl_ref(g.vm, KVM_SIGNAL_MSI, &mut bad),
        Err(libc::EINVAL),
    );
    let mut nobody = uapi::kvm_msi {
        address_lo: 0xfee0_5000,
        ..msi
    };
    // Upstream's APIC map resolves the unicast destination to nobody: 0, not -1.
    t.expect(
        "ioapic: KVM_SIGNAL_MSI to an APIC id no vCPU has",
        ioctl_ref(g.vm, KVM_SIGNAL_MSI, &mut nobody),
        Ok(0),
    );
    Ok(())
}

/// struct kvm_irq_routing with room for `N` entries.
#[repr(C)]
struct Routing<const N: usize> {
    nr: u32,
    flags: u32,
    entries: [uapi::kvm_irq_routing_entry; N],
}

fn route(gsi: u32, chip: u32, pin: u32) -> uapi::kvm_irq_routing_entry {
    let mut e = uapi::kvm_irq_routing_entry {
        gsi,
        type_: uapi::KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip = uapi::kvm_irq_routing_irqchip { irqchip: chip, pin };
    e
}

fn set_routing<const N: usize>(vm: RawFd, r: &mut Routing<N>) -> Result<i32, i32> {
    // SAFETY: a kvm_irq_routing header followed by `nr` <= N entries.
    let p = (r as *mut Routing<N>).cast::<u8>();
    report::ioctl(vm, KVM_SET_GSI_ROUTING, p as u64)
}

/// KVM_SET_GSI_ROUTING: QEMU's table is accepted and takes effect, and the
/// entries upstream refuses get -EINVAL; KVM_IRQ_LINE without an irqchip -ENXIO.
pub(crate) fn routing(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    let plain = Guest::new(kvm)?;
    let mut ev = uapi::kvm_irq_level::default();
    t.expect(
        "routing: KVM_IRQ_LINE without an irqchip",
        ioctl_ref(plain.vm, KVM_IRQ_LINE, &mut ev),
        Err(libc::ENXIO),
    );
    let mut one = Routing::<1> {
        nr: 1,
        flags: 0,
        entries: [route(0, uapi::KVM_IRQCHIP_IOAPIC, 2)],
    };
    t.expect(
        "routing: KVM_SET_GSI_ROUTING without an irqchip",
        set_routing(plain.vm, &mut one),
        Err(libc::EINVAL),
    );
    drop(plain);

    let g = Guest::with_irqchip(kvm)?;
    // QEMU's kvm_pc_setup_irq_routing(): GSI 0 is IOAPIC pin 2 (the timer).
    let mut q = Routing::<2> {
        nr: 2,
        flags: 0,
        entries: [
            route(0, uapi::KVM_IRQCHIP_PIC_MASTER, 0),
            route(0, uapi::KVM_IRQCHIP_IOAPIC, 2),
        ],
    };
    t.expect(
        "routing: QEMU's GSI 0 entries",
        set_routing(g.vm, &mut q),
        Ok(0),
    );
    for (what, e) in [
        ("PIC pin 8", route(1, uapi::KVM_IRQCHIP_PIC_MASTER, 8)),
        ("IOAPIC pin 24", route(1, uapi::KVM_IRQCHIP_IOAPIC, 24)),
        ("chip 3", route(1, 3, 0)),
        ("GSI 4096", route(4096, uapi::KVM_IRQCHIP_IOAPIC, 1)),
        (
            "type 7",
            uapi::kvm_irq_routing_entry {
                type_: 7,
                ..route(1, 0, 0)
            },
        ),
        (
            "flags on an irqchip entry",
            uapi::kvm_irq_routing_entry {
                flags: 1,
                ..route(1, 0, 0)
            },
        ),
    ] {
        let mut r = Routing::<1> {
            nr: 1,
            flags: 0,
            entries: [e],
        };
        t.expect(
            &format!("routing: {what} is refused"),
            set_routing(g.vm, &mut r),
            Err(libc::EINVAL),
        );
    }
    let mut dup = Routing::<2> {
        nr: 2,
        flags: 0,
        entries: [
            route(5, uapi::KVM_IRQCHIP_IOAPIC, 5),
            route(5, uapi::KVM_IRQCHIP_IOAPIC, 6),
        ],
    };
    t.expect(
        "routing: one GSI twice on the IOAPIC is refused",
        set_routing(g.vm, &mut dup),
        Err(libc::EINVAL),
    );
    let mut flags = Routing::<1> {
        nr: 1,
        flags: 1,
        entries: [route(1, uapi::KVM_IRQCHIP_IOAPIC, 1)],
    };
    t.expect(
        "routing: header flags are refused",
        set_routing(g.vm, &mut flags),
        Err(libc::EINVAL),
    );
    let mut huge = Routing::<0> {
        nr: 4097,
        flags: 0,
        entries: [],
    };
    t.expect(
        "routing: more than KVM_MAX_IRQ_ROUTES",
        set_routing(g.vm, &mut huge),
        Err(libc::EINVAL),
    );
    t.expect(
        "routing: a table at a bad address",
        report::ioctl(g.vm, KVM_SET_GSI_ROUTING, 8),
        Err(libc::EFAULT),
    );
    // The table QEMU set is the one in force: GSI 0 now reaches IOAPIC pin 2 and
    // PIC pin 0 only; GSI 2 has no route at all.
    t.expect(
        "routing: GSI 0 reaches its PIC pin (IRR set) and the masked IOAPIC pin",
        irq_line_status(&g, 0, 1),
        Ok(1),
    );
    t.expect(
        "routing: GSI 2 has no route left",
        irq_line_status(&g, 2, 1),
        Ok(-1),
    );
    let (_, irr) = ioapic_entry(&g, 2)?;
    t.check(
        "routing: GSI 0 raised IOAPIC pin 2",
        irr & (1 << 2) != 0,
        format!("irr {irr:#x}"),
    );
    Ok(())
}

const KVM_NMI: u32 = io(0x9a);
const KVM_GET_VCPU_EVENTS: u32 = ior::<uapi::kvm_vcpu_events>(0x9f);

/// (nmi.pending, nmi.masked) as KVM_GET_VCPU_EVENTS reports them.
fn nmi_events(g: &Guest) -> Result<(u8, u8), String> {
    let mut e = uapi::kvm_vcpu_events::default();
    sys(
        "KVM_GET_VCPU_EVENTS",
        ioctl_ref(g.vcpu, KVM_GET_VCPU_EVENTS, &mut e),
    )?;
    Ok((e.nmi.pending, e.nmi.masked))
}

/// KVM_NMI into a real-mode guest whose NMI handler reports itself: two NMIs
/// raised at once are both delivered, the second only once the first handler's
/// IRET has run (NMIs are masked in between), and no earlier than that.
pub(crate) fn nmi(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    let g = Guest::new(kvm)?;
    t.expect(
        "nmi: KVM_CHECK_EXTENSION(KVM_CAP_USER_NMI)",
        report::ioctl(g.vm, io(0x03), uapi::KVM_CAP_USER_NMI.into()),
        Ok(1),
    );
    g.reporting_handler(2, 0x2000, 0x30, 0x77);
    g.mem.write(
        0x1000,
        &[
            0xe6, 0x31, // out 0x31, al
            0x90, // nop
            0xe6, 0x32, // out 0x32, al
            0xf4, // hlt
        ],
    );
    g.real_mode_stack(0x1000)?;
    t.exit("nmi: first exit", &g.step(), &out(0x31, 1, 1, &[0]));
    for _ in 0..2 {
        sys("KVM_NMI", ioctl(g.vcpu, KVM_NMI, 0))?;
    }
    let handler = out(0x30, 1, 1, &[0x77]);
    // Each step: the exit it ends with, then (nmi.pending, nmi.masked). Pending is
    // a count (kvm_get_nr_pending_nmis()), up to two while NMIs are not masked.
    let steps: [(&str, Option<&Exit>, (u8, u8)); 5] = [
        ("two pending, not masked", None, (2, 0)),
        (
            "the handler runs, masked, one pending",
            Some(&handler),
            (1, 1),
        ),
        (
            "the second right after the first IRET",
            Some(&handler),
            (0, 1),
        ),
        (
            "back in the main code, unmasked",
            Some(&out(0x32, 1, 1, &[0x77])),
            (0, 0),
        ),
        ("hlt", Some(&Exit::Hlt), (0, 0)),
    ];
    for (what, want, events) in steps {
        if let Some(want) = want {
            t.exit(&format!("nmi: {what}"), &g.step(), want);
        }
        let e = nmi_events(&g)?;
        t.check(
            &format!("nmi: {what}: events"),
            e == events,
            format!("{e:?}"),
        );
    }
    Ok(())
}

const KVM_IRQFD: u32 = iow::<uapi::kvm_irqfd>(0x76);
const KVM_GET_LAPIC_STATE: u32 = ior::<uapi::kvm_lapic_state>(0x8e);

fn irqfd(vm: RawFd, fd: i32, gsi: u32, flags: u32) -> Result<i32, i32> {
    let mut a = uapi::kvm_irqfd {
        fd: fd as u32,
        gsi,
        flags,
        ..Default::default()
    };
    ioctl_ref(vm, KVM_IRQFD, &mut a)
}

fn signal(fd: i32) -> Result<(), String> {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer to an eventfd.
    let n = unsafe { libc::write(fd, one.as_ptr().cast(), 8) };
    if n == 8 {
        Ok(())
    } else {
        Err(format!("eventfd write: {}", Error::last_os_error()))
    }
}

/// Whether the LAPIC's IRR has `vector` (KVM_GET_LAPIC), after giving the
/// irqfd's injection (a work item) time to run.
fn irr_has(g: &Guest, vector: u8) -> Result<bool, String> {
    std::thread::sleep(std::time::Duration::from_millis(50));
    let mut s = uapi::kvm_lapic_state::default();
    sys(
        "KVM_GET_LAPIC",
        ioctl_ref(g.vcpu, KVM_GET_LAPIC_STATE, &mut s),
    )?;
    let reg = 0x200 + usize::from(vector / 32) * 0x10;
    let b = s.regs[reg + usize::from(vector % 32 / 8)] as u8;
    Ok(b & (1 << (vector % 8)) != 0)
}

/// KVM_IRQFD: an eventfd routed by GSI to an MSI interrupts the guest without an
/// ioctl (also one signalled before the irqfd existed), stops once deassigned,
/// and the errnos of bad flags, fds and an eventfd that already is an irqfd.
pub(crate) fn irqfd_case(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    t.expect(
        "irqfd: KVM_CHECK_EXTENSION(KVM_CAP_IRQFD)",
        report::ioctl(kvm, io(0x03), uapi::KVM_CAP_IRQFD.into()),
        Ok(1),
    );
    // SAFETY: plain syscalls; the fds are closed below.
    let (e1, e2) = unsafe {
        (
            libc::eventfd(0, libc::EFD_CLOEXEC),
            libc::eventfd(0, libc::EFD_CLOEXEC),
        )
    };
    if e1 < 0 || e2 < 0 {
        return Err(format!("eventfd: {}", Error::last_os_error()));
    }
    let plain = Guest::new(kvm)?;
    t.expect(
        "irqfd: without an in-kernel irqchip",
        irqfd(plain.vm, e1, 40, 0),
        Err(libc::EINVAL),
    );
    drop(plain);

    let g = Guest::with_irqchip(kvm)?;
    g.set_supported_cpuid()?;
    let vector = 0x50u8;
    let mut r = Routing::<1> {
        nr: 1,
        flags: 0,
        entries: [uapi::kvm_irq_routing_entry::default(); 1],
    };
    r.entries[0].gsi = 40;
    r.entries[0].type_ = uapi::KVM_IRQ_ROUTING_MSI;
    r.entries[0].u.msi = uapi::kvm_irq_routing_msi {
        address_lo: 0xfee0_0000,
        data: vector.into(),
        ..Default::default()
    };
    sys("KVM_SET_GSI_ROUTING", set_routing(g.vm, &mut r))?;
    let mut code = x2apic_on();
    code.extend(out_al(0x34, 0x34));
    code.extend(IDLE);
    let mut handler = out_al(0x35, 0x35).to_vec();
    handler.extend(wrmsr(0x80b, 0)); // EOI
    handler.push(0xcf); // iret
    setup(&g, &code, &[(vector, 0x2000, handler)])?;
    t.exit(
        "irqfd: the guest is up",
        &g.step(),
        &out(0x34, 1, 1, &[0x34]),
    );

    for (what, fd, flags, want) in [
        ("an unknown flag", e1, 4, libc::EINVAL),
        ("a bad fd", -1, 0, libc::EBADF),
        ("a VM fd, not an eventfd", g.vm, 0, libc::EINVAL),
        (
            "a deassign of a bad fd",
            -1,
            uapi::KVM_IRQFD_FLAG_DEASSIGN,
            libc::EBADF,
        ),
    ] {
        t.expect(
            &format!("irqfd: {what}"),
            irqfd(g.vm, fd, 40, flags),
            Err(want),
        );
    }
    // Signalled before it is an irqfd: injected when it becomes one.
    signal(e1)?;
    sys("KVM_IRQFD", irqfd(g.vm, e1, 40, 0))?;
    t.check(
        "irqfd: a signal from before the assign is injected",
        irr_has(&g, vector)?,
        String::new(),
    );
    t.exit(
        "irqfd: the guest takes it",
        &g.step(),
        &out(0x35, 1, 1, &[0x35]),
    );
    t.expect(
        "irqfd: the same eventfd again, on another GSI",
        irqfd(g.vm, e1, 41, 0),
        Err(libc::EBUSY),
    );
    signal(e1)?;
    t.exit(
        "irqfd: a signal interrupts the halted guest",
        &g.step(),
        &out(0x35, 1, 1, &[0x35]),
    );
    t.expect(
        "irqfd: deassign of an eventfd that is not an irqfd",
        irqfd(g.vm, e2, 40, uapi::KVM_IRQFD_FLAG_DEASSIGN),
        Ok(0),
    );
    sys(
        "KVM_IRQFD(DEASSIGN)",
        irqfd(g.vm, e1, 40, uapi::KVM_IRQFD_FLAG_DEASSIGN),
    )?;
    signal(e1)?;
    t.check(
        "irqfd: deassigned, a signal injects nothing",
        !irr_has(&g, vector)?,
        String::new(),
    );
    // Another irqfd stays live until the VM goes (kvm_irqfd_release()).
    sys("KVM_IRQFD", irqfd(g.vm, e2, 40, 0))?;
    drop(g);
    // SAFETY: closes the eventfds made above.
    unsafe {
        libc::close(e1);
        libc::close(e2);
    }
    Ok(())
}

fn irqfd_resample(vm: RawFd, fd: i32, resamplefd: i32, gsi: u32) -> Result<i32, i32> {
    let mut a = uapi::kvm_irqfd {
        fd: fd as u32,
        gsi,
        flags: uapi::KVM_IRQFD_FLAG_RESAMPLE,
        resamplefd: resamplefd as u32,
        ..Default::default()
    };
    ioctl_ref(vm, KVM_IRQFD, &mut a)
}

/// The eventfd's counter, read without blocking (0 when nothing was signalled).
fn drain(fd: i32) -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: reads 8 bytes into a live buffer from a non-blocking eventfd.
    let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 8) };
    if n == 8 {
        u64::from_ne_bytes(b)
    } else {
        0
    }
}

/// KVM_IRQFD_FLAG_RESAMPLE: a resampling irqfd asserts a level-triggered IOAPIC
/// line until the guest's EOI, which deasserts it and signals the resamplefd;
/// a signal after that interrupts again; deassigning the last irqfd of the GSI
/// drops its level; and the errnos of a bad resamplefd and a VM without irqchip.
pub(crate) fn irqfd_resample_case(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    t.expect(
        "resample: KVM_CHECK_EXTENSION(KVM_CAP_IRQFD_RESAMPLE)",
        report::ioctl(kvm, io(0x03), uapi::KVM_CAP_IRQFD_RESAMPLE.into()),
        Ok(1),
    );
    // SAFETY: plain syscalls; the fds are closed below.
    let (e, r) = unsafe {
        (
            libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK),
            libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK),
        )
    };
    if e < 0 || r < 0 {
        return Err(format!("eventfd: {}", Error::last_os_error()));
    }
    let plain = Guest::new(kvm)?;
    t.expect(
        "resample: without an in-kernel irqchip",
        irqfd_resample(plain.vm, e, r, 10),
        Err(libc::EINVAL),
    );
    drop(plain);

    let g = Guest::with_irqchip(kvm)?;
    g.set_supported_cpuid()?;
    let mut code = x2apic_on();
    code.extend(out_al(0x21, 0xff)); // mask the PIC
    code.extend(out_al(0xa1, 0xff));
    code.extend([
        0x66, 0xc7, 0x06, 0x00, 0x00, 0x24, 0, 0, 0, // mov dword [0], 0x10 + 2 * 10
        0x66, 0xc7, 0x06, 0x10, 0x00, 0x50, 0x80, 0, 0, // mov dword [0x10], level | 0x50
    ]);
    code.extend(out_al(0x12, 0x12));
    code.extend(IDLE);
    let mut handler = out_al(0x10, 0x50).to_vec();
    handler.extend(wrmsr(0x80b, 0)); // EOI
    handler.extend(out_al(0x11, 0x11));
    handler.push(0xcf); // iret
    setup(&g, &code, &[(0x50, 0x2000, handler)])?;
    let mut s = g.sregs()?;
    s.ds.base = 0xfec0_0000;
    g.set_sregs(s)?;
    t.exit(
        "resample: the guest is up",
        &g.step(),
        &out(0x12, 1, 1, &[0x12]),
    );
    t.expect(
        "resample: a bad resamplefd",
        irqfd_resample(g.vm, e, -1, 10),
        Err(libc::EBADF),
    );
    sys("KVM_IRQFD(RESAMPLE)", irqfd_resample(g.vm, e, r, 10))?;
    signal(e)?;
    t.exit(
        "resample: the irqfd interrupts at the entry's vector",
        &g.step(),
        &out(0x10, 1, 1, &[0x50]),
    );
    let (ent, irr) = ioapic_entry(&g, 10)?;
    t.check(
        "resample: before the EOI the line is held, remote IRR set, no resample",
        ent & (1 << 14) != 0 && irr & (1 << 10) != 0 && drain(r) == 0,
        format!("entry {ent:#x} irr {irr:#x}"),
    );
    t.exit(
        "resample: the handler EOIs",
        &g.step(),
        &out(0x11, 1, 1, &[0x11]),
    );
    let (ent, irr) = ioapic_entry(&g, 10)?;
    let n = drain(r);
    t.check(
        "resample: the EOI dropped the line and signalled the resamplefd once",
        ent & (1 << 14) == 0 && irr & (1 << 10) == 0 && n == 1,
        format!("entry {ent:#x} irr {irr:#x} resamplefd {n}"),
    );
    signal(e)?;
    t.exit(
        "resample: a new signal interrupts again",
        &g.step(),
        &out(0x10, 1, 1, &[0x50]),
    );
    sys(
        "KVM_IRQFD(DEASSIGN)",
        irqfd(g.vm, e, 10, uapi::KVM_IRQFD_FLAG_DEASSIGN),
    )?;
    let (_, irr) = ioapic_entry(&g, 10)?;
    t.check(
        "resample: deassigning the GSI's last resampling irqfd drops its level",
        irr & (1 << 10) == 0,
        format!("irr {irr:#x}"),
    );
    // A resampling irqfd left for the VM's release (kvm_irqfd_release()).
    sys("KVM_IRQFD(RESAMPLE)", irqfd_resample(g.vm, e, r, 10))?;
    drop(g);
    // SAFETY: closes the eventfds made above.
    unsafe {
        libc::close(e);
        libc::close(r);
    }
    Ok(())
}

const KVM_ENABLE_CAP: u32 = iow::<uapi::kvm_enable_cap>(0xa3);
const KVM_INTERRUPT: u32 = iow::<uapi::kvm_interrupt>(0x86);
const KVM_CREATE_PIT2: u32 = iow::<uapi::kvm_pit_config>(0x77);

fn enable_split(vm: RawFd, pins: u64) -> Result<i32, i32> {
    let mut c = uapi::kvm_enable_cap {
        cap: uapi::KVM_CAP_SPLIT_IRQCHIP,
        ..Default::default()
    };
    c.args[0] = pins;
    ioctl_ref(vm, KVM_ENABLE_CAP, &mut c)
}

fn interrupt(g: &Guest, irq: u32) -> Result<i32, i32> {
    let mut i = uapi::kvm_interrupt { irq };
    ioctl_ref(g.vcpu, KVM_INTERRUPT, &mut i)
}

/// kvm_run's request_interrupt_window, which userspace owns.
fn request_window(g: &Guest, on: bool) {
    // SAFETY: the field is inside the vCPU mapping; the vCPU is not running.
    unsafe { ptr::addr_of_mut!((*g.run).request_interrupt_window).write_volatile(on.into()) }
}

/// (ready_for_interrupt_injection, if_flag) as the last KVM_RUN left them.
fn readiness(g: &Guest) -> (u8, u8) {
    let r = g.state();
    (r.ready_for_interrupt_injection, r.if_flag)
}

fn msi_route(gsi: u32, data: u32) -> uapi::kvm_irq_routing_entry {
    let mut e = uapi::kvm_irq_routing_entry {
        gsi,
        type_: uapi::KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi = uapi::kvm_irq_routing_msi {
        address_lo: 0xfee0_0000,
        data,
        ..Default::default()
    };
    e
}

/// KVM_CAP_SPLIT_IRQCHIP (kernel-irqchip=split): the LAPIC in the kernel, the PIC
/// and IOAPIC in userspace. Userspace's ExtINT goes in with KVM_INTERRUPT once an
/// interrupt-window exit says the guest can take it; MSI routes (the userspace
/// IOAPIC's pins) deliver through KVM_IRQ_LINE, and the EOI of a level-triggered
/// one on a reserved pin exits with KVM_EXIT_IOAPIC_EOI. Also KVM_INTERRUPT without
/// an irqchip, and the errnos.
pub(crate) fn split_irqchip(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    t.expect(
        "split: KVM_CHECK_EXTENSION(KVM_CAP_SPLIT_IRQCHIP)",
        report::ioctl(kvm, io(0x03), uapi::KVM_CAP_SPLIT_IRQCHIP.into()),
        Ok(1),
    );
    let with_vcpu = Guest::new(kvm)?;
    t.expect(
        "split: once a vCPU exists",
        enable_split(with_vcpu.vm, 24),
        Err(libc::EEXIST),
    );
    // KVM_INTERRUPT without an irqchip: injected at the next entry.
    let mut code = vec![0xfb, 0x90]; // sti; nop
    code.extend(out_al(0x12, 0x12));
    code.push(0xf4); // hlt
    setup(
        &with_vcpu,
        &code,
        &[(0x60, 0x2000, [&out_al(0x14, 0x14)[..], &[0xcf]].concat())],
    )?;
    t.exit(
        "split: no irqchip: up",
        &with_vcpu.step(),
        &out(0x12, 1, 1, &[0x12]),
    );
    t.check(
        "split: no irqchip: ready for injection with IF set",
        readiness(&with_vcpu) == (1, 1),
        format!("{:?}", readiness(&with_vcpu)),
    );
    t.expect(
        "split: no irqchip: KVM_INTERRUPT of vector 256",
        interrupt(&with_vcpu, 256),
        Err(libc::EINVAL),
    );
    t.expect(
        "split: no irqchip: KVM_INTERRUPT",
        interrupt(&with_vcpu, 0x60),
        Ok(0),
    );
    t.exit(
        "split: no irqchip: the vector's handler runs",
        &with_vcpu.step(),
        &out(0x14, 1, 1, &[0x14]),
    );
    drop(with_vcpu);
    let full = Guest::with_irqchip(kvm)?;
    t.expect(
        "split: KVM_INTERRUPT with the in-kernel PIC",
        interrupt(&full, 0x60),
        Err(libc::ENXIO),
    );
    t.expect(
        "split: after KVM_CREATE_IRQCHIP",
        enable_split(full.vm, 24),
        Err(libc::EEXIST),
    );
    drop(full);

    let g = Guest::create(kvm, |vm| {
        let too_many = enable_split(vm, 4097);
        if too_many != Err(libc::EINVAL) {
            return Err(format!(
                "split: 4097 reserved pins: {too_many:?}, want EINVAL"
            ));
        }
        sys("KVM_ENABLE_CAP(SPLIT_IRQCHIP)", enable_split(vm, 24)).map(drop)
    })?;
    g.set_supported_cpuid()?;
    t.expect(
        "split: enabled twice",
        enable_split(g.vm, 24),
        Err(libc::EEXIST),
    );
    t.expect(
        "split: KVM_CREATE_IRQCHIP",
        ioctl(g.vm, io(0x60), 0),
        Err(libc::EEXIST),
    );
    let mut c = uapi::kvm_irqchip::default();
    t.expect(
        "split: KVM_GET_IRQCHIP",
        ioctl_ref(g.vm, KVM_GET_IRQCHIP, &mut c),
        Err(libc::ENXIO),
    );
    let mut pit = uapi::kvm_pit_config::default();
    t.expect(
        "split: KVM_CREATE_PIT2",
        ioctl_ref(g.vm, KVM_CREATE_PIT2, &mut pit),
        Err(libc::ENOENT),
    );
    let mut r = Routing::<1> {
        nr: 1,
        flags: 0,
        entries: [route(2, uapi::KVM_IRQCHIP_IOAPIC, 2)],
    };
    t.expect(
        "split: a route to the in-kernel IOAPIC",
        set_routing(g.vm, &mut r),
        Err(libc::EINVAL),
    );
    // GSI 2, a reserved pin, and GSI 30, not one: level-triggered MSIs.
    let mut r = Routing::<2> {
        nr: 2,
        flags: 0,
        entries: [msi_route(2, 0x8061), msi_route(30, 0x8062)],
    };
    sys("KVM_SET_GSI_ROUTING", set_routing(g.vm, &mut r))?;

    let mut code = x2apic_on();
    code.extend(wrmsr(0x835, 0x700)); // LVT0: ExtINT, unmasked
    code.extend(out_al(0x12, 0x12));
    code.push(0xfa); // cli
    code.extend(out_al(0x13, 0x13));
    code.extend([0xfb, 0x90, 0x90]); // sti; nop; nop
    code.extend(IDLE);
    let level = |first: u8, second: u8| {
        let mut h = out_al(first, first).to_vec();
        h.extend(wrmsr(0x80b, 0)); // EOI
        h.extend(out_al(second, second));
        h.push(0xcf); // iret
        h
    };
    setup(
        &g,
        &code,
        &[
            (0x60, 0x2000, [&out_al(0x14, 0x14)[..], &[0xcf]].concat()),
            (0x61, 0x2100, level(0x15, 0x16)),
            (0x62, 0x2200, level(0x17, 0x18)),
        ],
    )?;
    t.exit("split: up", &g.step(), &out(0x12, 1, 1, &[0x12]));
    request_window(&g, true);
    t.exit("split: cli", &g.step(), &out(0x13, 1, 1, &[0x13]));
    t.check(
        "split: IF clear: not ready for injection",
        readiness(&g) == (0, 0),
        format!("{:?}", readiness(&g)),
    );
    t.exit(
        "split: the requested interrupt window opens after sti",
        &g.step(),
        &Exit::Other(uapi::KVM_EXIT_IRQ_WINDOW_OPEN),
    );
    t.check(
        "split: at the window: ready, IF set",
        readiness(&g) == (1, 1),
        format!("{:?}", readiness(&g)),
    );
    request_window(&g, false);
    t.expect("split: KVM_INTERRUPT(0x60)", interrupt(&g, 0x60), Ok(0));
    t.expect(
        "split: KVM_INTERRUPT while the ExtINT waits",
        interrupt(&g, 0x60),
        Err(libc::EEXIST),
    );
    t.exit(
        "split: the LAPIC takes the ExtINT through LINT0",
        &g.step(),
        &out(0x14, 1, 1, &[0x14]),
    );
    t.expect(
        "split: KVM_IRQ_LINE on GSI 2",
        irq_line_status(&g, 2, 1),
        Ok(1),
    );
    t.exit(
        "split: the MSI route delivers vector 0x61",
        &g.step(),
        &out(0x15, 1, 1, &[0x15]),
    );
    let e = g.step();
    // SAFETY: the eoi member of the exit union is valid for KVM_EXIT_IOAPIC_EOI.
    let vector = unsafe { g.state().__bindgen_anon_1.eoi.vector };
    t.check(
        "split: the EOI of a reserved pin's level vector exits to userspace",
        e == Exit::Other(uapi::KVM_EXIT_IOAPIC_EOI) && vector == 0x61,
        format!("{e:?} vector {vector:#x}"),
    );
    t.exit(
        "split: the handler goes on",
        &g.step(),
        &out(0x16, 1, 1, &[0x16]),
    );
    irq_line(&g, 30, 1)?;
    t.exit(
        "split: GSI 30 delivers vector 0x62",
        &g.step(),
        &out(0x17, 1, 1, &[0x17]),
    );
    t.exit(
        "split: the EOI of a GSI past the reserved pins does not exit",
        &g.step(),
        &out(0x18, 1, 1, &[0x18]),
    );
    Ok(())
}

const KVM_SET_VAPIC_ADDR: u32 = iow::<uapi::kvm_vapic_addr>(0x93);

fn set_vapic(g: &Guest, addr: u64) -> Result<i32, i32> {
    let mut va = uapi::kvm_vapic_addr { vapic_addr: addr };
    ioctl_ref(g.vcpu, KVM_SET_VAPIC_ADDR, &mut va)
}

/// KVM_SET_VAPIC_ADDR (QEMU's kvmvapic): a TPR the guest writes in the VAPIC page
/// is the LAPIC's after its next exit. (When upstream writes the page itself
/// depends on pending events, so that is not checked.)
pub(crate) fn vapic(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    t.expect(
        "vapic: KVM_CHECK_EXTENSION(KVM_CAP_VAPIC)",
        report::ioctl(kvm, io(0x03), uapi::KVM_CAP_VAPIC.into()),
        Ok(1),
    );
    let plain = Guest::new(kvm)?;
    t.expect(
        "vapic: without an in-kernel LAPIC",
        set_vapic(&plain, 0x3000),
        Err(libc::EINVAL),
    );
    drop(plain);
    let g = Guest::with_irqchip(kvm)?;
    g.set_supported_cpuid()?;
    t.expect(
        "vapic: an address outside guest memory",
        set_vapic(&g, 1 << 32),
        Err(libc::EINVAL),
    );
    t.expect("vapic: 0 turns it off", set_vapic(&g, 0), Ok(0));
    sys("KVM_SET_VAPIC_ADDR", set_vapic(&g, 0x3000))?;
    let mut code = x2apic_on();
    code.extend(wrmsr(0x808, 0x20)); // TPR
    code.extend(out_al(0x36, 0x36));
    code.extend([0xc6, 0x06, 0x00, 0x30, 0x30]); // mov byte [0x3000], 0x30
    code.extend(out_al(0x37, 0x37));
    code.push(0xf4);
    setup(&g, &code, &[])?;
    t.exit("vapic: TPR written", &g.step(), &out(0x36, 1, 1, &[0x36]));
    t.exit(
        "vapic: the guest writes the page",
        &g.step(),
        &out(0x37, 1, 1, &[0x37]),
    );
    let mut s = uapi::kvm_lapic_state::default();
    sys(
        "KVM_GET_LAPIC",
        ioctl_ref(g.vcpu, KVM_GET_LAPIC_STATE, &mut s),
    )?;
    t.check(
        "vapic: the TPR written there is the LAPIC's",
        s.regs[0x80] as u8 == 0x30,
        format!("{:#x}", s.regs[0x80] as u8),
    );
    Ok(())
}
