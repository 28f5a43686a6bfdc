//! The binary statistics file behind `KVM_GET_STATS_FD` (upstream
//! virt/kvm/binary_stats.c, Documentation/virt/kvm/api.rst "KVM_GET_STATS_FD").
//!
//! The file is: a `kvm_stats_header`, the id string (`name_size` bytes), one
//! descriptor per statistic (`kvm_stats_desc` + a `name_size` name), then one u64
//! per statistic. Only the values change while the file is open, so a read is a
//! window on that layout computed on the fly.

/// `KVM_STATS_NAME_SIZE`: the id and every name are NUL-padded to this.
pub const NAME_SIZE: usize = 48;
const HEADER_SIZE: usize = 24;
/// `sizeof(struct kvm_stats_desc)` without the name.
const DESC_FIXED: usize = 16;
const DESC_SIZE: usize = DESC_FIXED + NAME_SIZE;

pub const TYPE_CUMULATIVE: u32 = 0;
pub const TYPE_INSTANT: u32 = 1;
pub const TYPE_PEAK: u32 = 2;
pub const UNIT_NONE: u32 = 0;
pub const UNIT_SECONDS: u32 = 2 << 4;
pub const UNIT_BOOLEAN: u32 = 4 << 4;
pub const BASE_POW10: u32 = 0;

/// One statistic: a single u64 (`size` 1), as all of kvm-rs's are.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    pub name: &'static str,
    pub flags: u32,
    /// The value is in 10^exponent units (nanoseconds: -9).
    pub exponent: i16,
}

impl Desc {
    pub const fn cumulative(name: &'static str) -> Self {
        Desc {
            name,
            flags: TYPE_CUMULATIVE | UNIT_NONE | BASE_POW10,
            exponent: 0,
        }
    }
    pub const fn instant(name: &'static str) -> Self {
        Desc {
            name,
            flags: TYPE_INSTANT | UNIT_NONE | BASE_POW10,
            exponent: 0,
        }
    }
    pub const fn boolean(name: &'static str) -> Self {
        Desc {
            name,
            flags: TYPE_INSTANT | UNIT_BOOLEAN | BASE_POW10,
            exponent: 0,
        }
    }
    pub const fn peak(name: &'static str) -> Self {
        Desc {
            name,
            flags: TYPE_PEAK | UNIT_NONE | BASE_POW10,
            exponent: 0,
        }
    }
    /// STATS_DESC_TIME_NSEC: a cumulative time in nanoseconds.
    pub const fn time_nsec(name: &'static str) -> Self {
        Desc {
            name,
            flags: TYPE_CUMULATIVE | UNIT_SECONDS | BASE_POW10,
            exponent: -9,
        }
    }
}

/// Offsets of the three parts after the header (upstream's order).
pub const fn id_offset() -> usize {
    HEADER_SIZE
}
pub const fn desc_offset() -> usize {
    HEADER_SIZE + NAME_SIZE
}
pub const fn data_offset(n: usize) -> usize {
    desc_offset() + n * DESC_SIZE
}
/// Total size of the file for `n` statistics.
pub const fn file_size(n: usize) -> usize {
    data_offset(n) + n * 8
}

fn le32(v: u32, i: usize) -> u8 {
    v.to_le_bytes().get(i).copied().unwrap_or(0)
}

/// Byte `i` of a NUL-padded string field.
fn str_byte(s: &str, i: usize) -> u8 {
    // The last byte is always NUL, even for a too-long string.
    if i + 1 >= NAME_SIZE {
        return 0;
    }
    s.as_bytes().get(i).copied().unwrap_or(0)
}

/// Byte `off` of the file for statistics `descs` with `values` and id `id`
/// (0 past the end; the caller limits reads to `file_size`).
fn byte_at(id: &str, descs: &[Desc], values: &[u64], off: usize) -> u8 {
    let n = descs.len();
    if off < HEADER_SIZE {
        let field = match off / 4 {
            0 => 0, // flags
            1 => NAME_SIZE as u32,
            2 => n as u32,
            3 => id_offset() as u32,
            4 => desc_offset() as u32,
            _ => data_offset(n) as u32,
        };
        return le32(field, off % 4);
    }
    if off < desc_offset() {
        return str_byte(id, off - id_offset());
    }
    if off < data_offset(n) {
        let rel = off - desc_offset();
        let Some(d) = descs.get(rel / DESC_SIZE) else {
            return 0;
        };
        let k = rel % DESC_SIZE;
        return match k {
            0..=3 => le32(d.flags, k),
            // exponent (i16), size 1 (u16)
            4 | 5 => d.exponent.to_le_bytes().get(k - 4).copied().unwrap_or(0),
            6 => 1,
            7 => 0,
            // offset of the value within the data block
            8..=11 => le32(((rel / DESC_SIZE) * 8) as u32, k - 8),
            // bucket_size 0
            12..=15 => 0,
            _ => str_byte(d.name, k - DESC_FIXED),
        };
    }
    let rel = off - data_offset(n);
    values
        .get(rel / 8)
        .and_then(|v| v.to_le_bytes().get(rel % 8).copied())
        .unwrap_or(0)
}

/// Fills `out` with the file's bytes from `pos` on (upstream kvm_stats_read()):
/// returns how many bytes there were, 0 at or past the end.
pub fn read(id: &str, descs: &[Desc], values: &[u64], pos: u64, out: &mut [u8]) -> usize {
    let size = file_size(descs.len());
    let Ok(pos) = usize::try_from(pos) else {
        return 0;
    };
    if pos >= size {
        return 0;
    }
    let len = out.len().min(size - pos);
    for (i, b) in out.iter_mut().take(len).enumerate() {
        *b = byte_at(id, descs, values, pos + i);
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    const DESCS: [Desc; 3] = [
        Desc::cumulative("exits"),
        Desc::boolean("blocking"),
        Desc::instant("pages_4k"),
    ];

    fn whole(id: &str, values: &[u64]) -> Vec<u8> {
        let mut buf = vec![0xaau8; file_size(DESCS.len()) + 10];
        let n = read(id, &DESCS, values, 0, &mut buf);
        buf.truncate(n);
        buf
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    #[test]
    fn header_and_layout() {
        let b = whole("kvm-42/vcpu-1", &[7, 1, 3]);
        assert_eq!(b.len(), 24 + 48 + 3 * 64 + 3 * 8);
        assert_eq!(u32_at(&b, 0), 0);
        assert_eq!(u32_at(&b, 4), 48);
        assert_eq!(u32_at(&b, 8), 3);
        assert_eq!(u32_at(&b, 12), 24);
        assert_eq!(u32_at(&b, 16), 72);
        assert_eq!(u32_at(&b, 20), 72 + 192);
        assert_eq!(&b[24..24 + 14], b"kvm-42/vcpu-1\0");
    }

    #[test]
    fn descriptors_and_values() {
        let b = whole("kvm-1", &[7, 1, u64::MAX]);
        let d1 = 72 + 64;
        assert_eq!(u32_at(&b, d1), TYPE_INSTANT | UNIT_BOOLEAN);
        // exponent 0, size 1, offset 8, bucket 0
        assert_eq!(&b[d1 + 4..d1 + 8], &[0, 0, 1, 0]);
        assert_eq!(u32_at(&b, d1 + 8), 8);
        assert_eq!(u32_at(&b, d1 + 12), 0);
        assert_eq!(&b[d1 + 16..d1 + 25], b"blocking\0");
        let data = 72 + 192;
        assert_eq!(u64::from_le_bytes(b[data..data + 8].try_into().unwrap()), 7);
        assert_eq!(
            u64::from_le_bytes(b[data + 16..data + 24].try_into().unwrap()),
            u64::MAX
        );
    }

    #[test]
    fn time_in_nanoseconds() {
        let d = [Desc::time_nsec("halt_wait_ns")];
        let mut b = vec![0u8; file_size(1)];
        assert_eq!(read("kvm-1", &d, &[5], 0, &mut b), file_size(1));
        let d0 = 72;
        assert_eq!(u32_at(&b, d0), TYPE_CUMULATIVE | UNIT_SECONDS);
        // exponent -9 as an i16, then size 1
        assert_eq!(&b[d0 + 4..d0 + 8], &[0xf7, 0xff, 1, 0]);
    }

    #[test]
    fn windows_and_end() {
        let all = whole("kvm-9", &[1, 0, 2]);
        let mut w = [0u8; 5];
        assert_eq!(read("kvm-9", &DESCS, &[1, 0, 2], 70, &mut w), 5);
        assert_eq!(&w, &all[70..75]);
        let end = file_size(3) as u64;
        assert_eq!(read("kvm-9", &DESCS, &[1, 0, 2], end - 2, &mut w), 2);
        assert_eq!(read("kvm-9", &DESCS, &[1, 0, 2], end, &mut w), 0);
        assert_eq!(read("kvm-9", &DESCS, &[1, 0, 2], u64::MAX, &mut w), 0);
    }

    #[test]
    fn long_names_stay_terminated() {
        let long = "x".repeat(60);
        let b = whole(&long, &[0, 0, 0]);
        assert_eq!(b[24 + 47], 0);
        assert_eq!(b[24 + 46], b'x');
    }
}
