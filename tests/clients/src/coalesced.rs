//! Coalesced MMIO and PIO: writes inside a registered zone land in the ring page
//! (KVM_CAP_COALESCED_MMIO's page of the vCPU mapping) without an exit, in order,
//! with address, length, data and the PIO flag; a full ring exits as an ordinary
//! write; unregistering a zone makes its writes exit again; a bad zone is -EINVAL.

use super::*;

const KVM_CHECK_EXTENSION: u32 = io(0x03);
const KVM_REGISTER_COALESCED_MMIO: u32 = iow::<uapi::kvm_coalesced_mmio_zone>(0x67);
const KVM_UNREGISTER_COALESCED_MMIO: u32 = iow::<uapi::kvm_coalesced_mmio_zone>(0x68);
/// (4096 - 8) / 24 entries of 24 bytes after the first/last header.
const RING_MAX: u32 = 170;
const MMIO_ZONE: u64 = 0xe000_0000;

fn zone(vm: RawFd, cmd: u32, addr: u64, size: u32, pio: u32) -> Result<i32, i32> {
    let mut z = uapi::kvm_coalesced_mmio_zone {
        addr,
        size,
        ..Default::default()
    };
    z.__bindgen_anon_1.pio = pio;
    ioctl_ref(vm, cmd, &mut z)
}

/// The ring through the vCPU mapping: (first, last) and entry `i` as (phys_addr,
/// len, pio, data).
struct Ring<'a> {
    g: &'a Guest,
    off: u64,
}

impl Ring<'_> {
    fn word(&self, at: u64) -> u32 {
        let b = self.g.run_bytes(self.off + at, 4).unwrap_or_default();
        b.try_into().map(u32::from_le_bytes).unwrap_or(u32::MAX)
    }

    fn first_last(&self) -> (u32, u32) {
        (self.word(0), self.word(4))
    }

    fn entry(&self, i: u32) -> (u64, u32, u32, Vec<u8>) {
        let at = self.off + 8 + u64::from(i) * 24;
        let b = self.g.run_bytes(at, 24).unwrap_or_else(|| vec![0; 24]);
        let addr = u64::from_le_bytes(b[0..8].try_into().unwrap_or([0; 8]));
        let len = u32::from_le_bytes(b[8..12].try_into().unwrap_or([0; 4]));
        let pio = u32::from_le_bytes(b[12..16].try_into().unwrap_or([0; 4]));
        (addr, len, pio, b[16..16 + (len as usize).min(8)].to_vec())
    }

    /// Userspace consumed everything so far.
    fn set_first(&self, v: u32) {
        // run_bytes() checked the same offset; the vCPU is not running.
        // SAFETY: the ring header lies inside the vCPU mapping.
        unsafe {
            let p = self.g.run.cast::<u8>().add(self.off as usize).cast::<u32>();
            ptr::write_volatile(p, v);
        }
    }
}

pub(crate) fn coalesced(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    let page = sys(
        "KVM_CHECK_EXTENSION",
        ioctl(
            kvm,
            KVM_CHECK_EXTENSION,
            uapi::KVM_CAP_COALESCED_MMIO.into(),
        ),
    )?;
    t.check(
        "coalesced: KVM_CAP_COALESCED_MMIO names the ring's page (2 on x86)",
        page == 2,
        page,
    );
    let pio_cap = ioctl(kvm, KVM_CHECK_EXTENSION, uapi::KVM_CAP_COALESCED_PIO.into());
    t.expect("coalesced: KVM_CAP_COALESCED_PIO", pio_cap, Ok(1));

    let g = Guest::new(kvm)?;
    t.expect(
        "coalesced: a zone with pio 2 is -EINVAL",
        zone(g.vm, KVM_REGISTER_COALESCED_MMIO, 0x80, 1, 2),
        Err(libc::EINVAL),
    );
    t.expect(
        "coalesced: unregistering a zone nobody registered is 0",
        zone(g.vm, KVM_UNREGISTER_COALESCED_MMIO, 0x1234, 4, 0),
        Ok(0),
    );
    t.expect(
        "coalesced: register a PIO zone (port 0x80)",
        zone(g.vm, KVM_REGISTER_COALESCED_MMIO, 0x80, 1, 1),
        Ok(0),
    );
    t.expect(
        "coalesced: register an MMIO zone",
        zone(g.vm, KVM_REGISTER_COALESCED_MMIO, MMIO_ZONE, 0x100, 0),
        Ok(0),
    );
    let code = [
        0xb0, 0x11, 0xe6, 0x80, // mov al, 0x11; out 0x80, al
        0xb0, 0x22, 0xe6, 0x80, // mov al, 0x22; out 0x80, al
        0xc6, 0x06, 0x10, 0x00, 0x33, // mov byte [0x10], 0x33 (the MMIO zone)
        0xc7, 0x06, 0x00, 0x01, 0x55, 0x44, // mov word [0x100], 0x4455: past it
        0xb9, 0xc8, 0x00, // mov cx, 200
        0xe6, 0x80, // 1: out 0x80, al
        0xe2, 0xfc, // loop 1b
        0xe6, 0x80, // out 0x80, al
        0xf4, // hlt
    ];
    g.mem.write(0x1000, &code);
    g.real_mode_stack(0x1000)?;
    let mut s = g.sregs()?;
    s.ds.base = MMIO_ZONE;
    g.set_sregs(s)?;
    let ring = Ring {
        g: &g,
        off: u64::from(page as u32) * 4096,
    };

    t.exit(
        "coalesced: the first exit is the write past the MMIO zone",
        &g.step(),
        &Exit::Mmio {
            addr: MMIO_ZONE + 0x100,
            len: 2,
            write: true,
            data: vec![0x55, 0x44],
        },
    );
    t.check(
        "coalesced: three writes wait in the ring",
        ring.first_last() == (0, 3),
        format!("{:?}", ring.first_last()),
    );
    t.check(
        "coalesced: PIO entries, in order, with the PIO flag",
        ring.entry(0) == (0x80, 1, 1, vec![0x11]) && ring.entry(1) == (0x80, 1, 1, vec![0x22]),
        format!("{:?} {:?}", ring.entry(0), ring.entry(1)),
    );
    t.check(
        "coalesced: the MMIO entry",
        ring.entry(2) == (MMIO_ZONE + 0x10, 1, 0, vec![0x33]),
        format!("{:?}", ring.entry(2)),
    );
    ring.set_first(3);
    // The loop's writes fill the ring (one slot stays free); the next exits.
    t.exit(
        "coalesced: a write to a full ring exits as an ordinary one",
        &g.step(),
        &out(0x80, 1, 1, &[0x22]),
    );
    let (first, last) = ring.first_last();
    t.check(
        "coalesced: the ring is full at MAX - 1 entries",
        first == 3 && (last + 1) % RING_MAX == first,
        format!("first {first} last {last}"),
    );
    ring.set_first(last);
    t.expect(
        "coalesced: unregister the PIO zone (any range inside it)",
        zone(g.vm, KVM_UNREGISTER_COALESCED_MMIO, 0x80, 1, 1),
        Ok(0),
    );
    // The loop's remaining writes (200 - 169 + 1 ... ) now all exit.
    t.exit(
        "coalesced: without the zone, port 0x80 exits again",
        &g.step(),
        &out(0x80, 1, 1, &[0x22]),
    );
    t.check(
        "coalesced: nothing more was queued",
        ring.first_last() == (last, last),
        format!("{:?}", ring.first_last()),
    );
    Ok(())
}
