//! Fuzz targets over the no_std logic the modules compile in: each takes arbitrary
//! bytes and must neither panic nor break the invariant it checks. `cargo test`
//! runs every target on fixed pseudo-random inputs (a regression gate, seconds);
//! `scripts/fuzz-host.sh` runs them under libFuzzer (libfuzzer/), coverage-guided.

use kvm_virt::memslot::{self, Limits, Region, Slot};
use kvm_x86_hw::emulate::{self, Mode};
use kvm_x86_hw::ioapic::{Apics, Ioapic};
use kvm_x86_hw::lapic::{Irq, Lapic};
use kvm_x86_hw::paging::{self, Access, GuestMem, Paging};
use kvm_x86_hw::pic::Pic;
use kvm_x86_hw::pit::Pit;

/// Little-endian reader over the fuzz input; zeros past its end.
pub struct Input<'a>(&'a [u8]);

impl Input<'_> {
    pub fn u8(&mut self) -> u8 {
        let (v, rest) = self
            .0
            .split_first()
            .map(|(v, r)| (*v, r))
            .unwrap_or((0, &[]));
        self.0 = rest;
        v
    }
    pub fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }
    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn iced_bitness(m: Mode) -> u32 {
    match m {
        Mode::Real | Mode::Vm86 | Mode::Prot16 => 16,
        Mode::Prot32 => 32,
        Mode::Prot64 => 64,
    }
}

/// The emulator's decoder against iced-x86: whatever kvm-rs decodes must be an
/// instruction iced-x86 decodes too, of the same length, and a memory operand
/// kvm-rs sees must be one iced-x86 sees.
pub fn decoder(data: &[u8]) {
    decode_both(data);
}

/// [`decoder`]; true when kvm-rs decoded the bytes (so was compared).
pub fn decode_both(data: &[u8]) -> bool {
    let Some((&m, bytes)) = data.split_first() else {
        return false;
    };
    let mode = [Mode::Real, Mode::Prot16, Mode::Prot32, Mode::Prot64][usize::from(m & 3)];
    let bytes = &bytes[..bytes.len().min(15)];
    let Ok(insn) = emulate::decode(bytes, mode) else {
        return false;
    };
    // MOV to/from DR8-15 decodes for the emulator to raise #UD (check_dr_read()),
    // which is what iced-x86's "invalid" means.
    if matches!(insn.op, emulate::Op::MovDr { dr: 8.., .. }) {
        return true;
    }
    let mut d = iced_x86::Decoder::new(iced_bitness(mode), bytes, iced_x86::DecoderOptions::NONE);
    let i = d.decode();
    assert!(
        !i.is_invalid(),
        "kvm-rs decoded {bytes:02x?} ({mode:?}) as {insn:?}; iced-x86: invalid"
    );
    assert_eq!(
        usize::from(insn.len),
        i.len(),
        "length of {bytes:02x?} ({mode:?}): kvm-rs {insn:?}, iced-x86 {:?}",
        i.code()
    );
    if let Some(mem) = insn.modrm_mem {
        let has_mem = (0..i.op_count()).any(|k| i.op_kind(k) == iced_x86::OpKind::Memory);
        assert!(
            has_mem,
            "{bytes:02x?} ({mode:?}): kvm-rs sees memory {mem:?}, iced-x86 none in {:?}",
            i.code()
        );
        assert_eq!(
            mem.rip_relative,
            i.is_ip_rel_memory_operand(),
            "{bytes:02x?}: RIP-relative"
        );
    }
    true
}

/// Guest memory for the walker: 64 KiB from the input, the rest of the
/// physical space absent.
struct Mem(Vec<u8>);

impl GuestMem for Mem {
    fn read_u64(&mut self, gpa: u64) -> Option<u64> {
        let a = usize::try_from(gpa).ok()?;
        let b = self.0.get(a..a.checked_add(8)?)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }
    fn write_u64(&mut self, gpa: u64, v: u64) -> bool {
        let Some(a) = usize::try_from(gpa).ok() else {
            return false;
        };
        let Some(b) = a.checked_add(8).and_then(|e| self.0.get_mut(a..e)) else {
            return false;
        };
        b.copy_from_slice(&v.to_le_bytes());
        true
    }
}

/// The guest page walker on page tables made of fuzz bytes, in every paging mode:
/// a translation must land inside what MAXPHYADDR allows.
pub fn page_walker(data: &[u8]) {
    let mut inp = Input(data);
    let p = Paging {
        cr0: inp.u64() | 1 << 31 | 1,
        cr3: inp.u64() & 0xf000,
        cr4: inp.u64() & 0x3010b0,
        efer: inp.u64() & 0xd01,
    };
    let gva = inp.u64();
    let acc = inp.u8();
    let access = Access {
        write: acc & 1 != 0,
        user: acc & 2 != 0,
        fetch: acc & 4 != 0,
    };
    let mut mem = vec![0u8; 0x10000];
    for (k, b) in mem.iter_mut().enumerate() {
        *b = data.get(40 + k % data.len().max(1)).copied().unwrap_or(0);
    }
    let mut m = Mem(mem);
    if let Ok(gpa) = paging::translate(&mut m, &p, gva, access) {
        assert!(gpa < 1 << 52, "gpa {gpa:#x} beyond MAXPHYADDR 52");
        assert_eq!(gpa & 0xfff, gva & 0xfff, "page offset kept");
    }
}

struct NoApics;

impl Apics for NoApics {
    fn deliver(&mut self, _irq: &Irq) -> i32 {
        1
    }
}

/// The interrupt controller and timer models driven by register accesses a guest
/// (or userspace) chooses: none may panic or overflow.
pub fn irqchips(data: &[u8]) {
    let mut inp = Input(data);
    let mut lapic = Lapic::new(inp.u8().into(), 1_000_000);
    let mut ioapic = Ioapic::new();
    let mut pic = Pic::new();
    let mut now = 0u64;
    let mut pit = Pit::new(now);
    while !inp.is_empty() {
        now = now.wrapping_add(u64::from(inp.u16()) * 1000);
        match inp.u8() % 10 {
            0 => {
                let _ = lapic.mmio_write(inp.u16().into(), inp.u32(), now);
            }
            1 => {
                let _ = lapic.mmio_read(
                    inp.u16().into(),
                    [1, 2, 4, 8][usize::from(inp.u8() & 3)],
                    now,
                );
            }
            2 => {
                let _ = lapic.write_msr(0x800 + u32::from(inp.u8()), inp.u64(), now, now);
            }
            3 => {
                let _ = lapic.read_msr(0x800 + u32::from(inp.u8()), now, now);
            }
            4 => ioapic.mmio_write(
                0xfec0_0000 + u64::from(inp.u8()),
                [1, 2, 4, 8][usize::from(inp.u8() & 3)],
                inp.u64(),
                &mut NoApics,
            ),
            5 => {
                let _ = ioapic.mmio_read(
                    0xfec0_0000 + u64::from(inp.u8()),
                    [1, 2, 4, 8][usize::from(inp.u8() & 3)],
                );
                let _ = ioapic.set_irq(
                    inp.u8().into(),
                    inp.u8().into(),
                    inp.u8() & 1 != 0,
                    &mut NoApics,
                );
            }
            6 => pic.port_write(
                *[0x20u16, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1]
                    .get(usize::from(inp.u8() % 6))
                    .unwrap_or(&0x20),
                1,
                inp.u8(),
                true,
            ),
            7 => {
                let _ = pic.set_irq(inp.u8().into(), inp.u8().into(), inp.u8() & 1 != 0);
                if pic.output() {
                    let _ = pic.read_irq();
                }
            }
            8 => {
                let _ = pit.ioport_write(0x40 + u16::from(inp.u8() & 3), inp.u8(), now);
            }
            _ => {
                let _ = pit.ioport_read(0x40 + u16::from(inp.u8() & 3), now);
                let _ = pit.get_count(usize::from(inp.u8() % 3), now);
            }
        }
    }
}

/// KVM_SET_USER_MEMORY_REGION's rules on random slot sets: an accepted new slot
/// never overlaps another of its address space, and its end does not wrap.
pub fn memslots(data: &[u8]) {
    let mut inp = Input(data);
    let lim = Limits {
        nr_as: 2,
        task_size: 0x7fff_ffff_f000,
    };
    let mut slots: Vec<Slot> = Vec::new();
    while !inp.is_empty() && slots.len() < 32 {
        let r = Region {
            slot: u32::from(inp.u8() & 7) | if inp.u8() & 1 != 0 { 1 << 16 } else { 0 },
            flags: u32::from(inp.u8()),
            guest_phys_addr: u64::from(inp.u16()) << 12 | if inp.u8() == 0 { 1 } else { 0 },
            memory_size: u64::from(inp.u8()) << 12,
            userspace_addr: inp.u64() & 0x7fff_ffff_f000,
            guest_memfd_offset: 0,
        };
        match memslot::classify(&slots, &r, &lim) {
            Ok(memslot::Change::Create(s)) => {
                assert!(s.base_gfn.checked_add(s.npages).is_some());
                let same_as = |o: &Slot| (o.id >> 15) == (s.id >> 15);
                for o in slots.iter().filter(|o| same_as(o)) {
                    assert!(o.id != s.id, "slot {} created twice", s.id);
                }
                let i = memslot::insert_index(&slots, &s);
                slots.insert(i.min(slots.len()), s);
            }
            Ok(memslot::Change::Delete(i)) => {
                if i < slots.len() {
                    slots.remove(i);
                }
            }
            Ok(memslot::Change::Move(i, s) | memslot::Change::FlagsOnly(i, s)) => {
                if let Some(x) = slots.get_mut(i) {
                    *x = s;
                }
            }
            Ok(memslot::Change::None) | Err(_) => {}
        }
    }
}

/// Every target, for the cargo-test loop and the libFuzzer binaries.
/// A fuzz target: arbitrary bytes in, a panic on a broken invariant.
pub type Target = fn(&[u8]);

pub const TARGETS: &[(&str, Target)] = &[
    ("decoder", decoder),
    ("page_walker", page_walker),
    ("irqchips", irqchips),
    ("memslots", memslots),
];

#[cfg(test)]
mod tests {
    /// SplitMix64: fixed inputs, the same on every run.
    fn inputs(seed: u64, n: usize, max: usize) -> impl Iterator<Item = Vec<u8>> {
        let mut s = seed;
        let mut next = move || {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        (0..n).map(move |_| {
            let len = (next() as usize) % max;
            (0..len).map(|_| next() as u8).collect()
        })
    }

    #[test]
    fn decoder_agrees_with_iced_x86() {
        let decoded = inputs(1, 200_000, 16)
            .filter(|v| super::decode_both(v))
            .count();
        // Random bytes are mostly instructions the emulator does not take; enough
        // must be taken for the comparison to mean something.
        assert!(decoded > 2_000, "only {decoded} inputs decoded");
    }

    #[test]
    fn page_walker_stays_in_bounds() {
        for v in inputs(2, 5_000, 512) {
            super::page_walker(&v);
        }
    }

    #[test]
    fn irqchips_survive_garbage() {
        for v in inputs(3, 5_000, 1024) {
            super::irqchips(&v);
        }
    }

    #[test]
    fn memslot_rules_hold() {
        for v in inputs(4, 20_000, 512) {
            super::memslots(&v);
        }
    }
}
