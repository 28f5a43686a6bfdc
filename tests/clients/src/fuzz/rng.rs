//! The fuzzer's randomness: SplitMix64, seeded per operation from (seed, index) so
//! that an operation's arguments do not depend on which operations ran before it
//! (replaying a subset of a sequence, as the minimiser does, keeps every argument).

pub struct Rng(u64);

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// Values that sit on the edges of the checks kernel code makes: zero, one, powers of
/// two and their neighbours, the signed and unsigned extremes, page and huge-page
/// sizes, addresses just under and above MAXPHYADDR and the canonical hole.
pub const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    15,
    16,
    31,
    32,
    63,
    64,
    127,
    128,
    255,
    256,
    0x3ff,
    0x400,
    0xfff,
    0x1000,
    0x1001,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x20_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    0x1_0000_0000,
    0x100_0000_0000,
    0x7fff_ffff_ffff,
    0x8000_0000_0000,
    0xf_ffff_ffff_ffff,
    0x10_0000_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    0xffff_8000_0000_0000,
    0xffff_ffff_ffff_f000,
    0xffff_ffff_ffff_fffe,
    0xffff_ffff_ffff_ffff,
];

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The generator for operation `index` of sequence `seed`.
    pub fn for_op(seed: u64, index: u64) -> Rng {
        let mut r = Rng(seed ^ index.wrapping_mul(GOLDEN).rotate_left(17));
        r.next();
        r
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 for n = 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.index(xs.len())]
    }

    /// An integer argument: interesting most of the time, sometimes a small or a
    /// fully random one.
    pub fn int(&mut self) -> u64 {
        match self.below(8) {
            0..=4 => *self.pick(INTERESTING),
            5 => self.below(64),
            6 => self.next() & 0xffff_ffff,
            _ => self.next(),
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_op_streams_are_independent_of_order() {
        let a: Vec<u64> = (0..4).map(|i| Rng::for_op(7, i).next()).collect();
        let b: Vec<u64> = (0..4).rev().map(|i| Rng::for_op(7, i).next()).collect();
        let mut b = b;
        b.reverse();
        assert_eq!(a, b);
        assert_ne!(a[0], a[1]);
        assert_ne!(Rng::for_op(7, 0).next(), Rng::for_op(8, 0).next());
    }

    #[test]
    fn below_stays_in_range() {
        let mut r = Rng::new(1);
        assert!((0..1000).all(|_| r.below(7) < 7));
        assert_eq!(r.below(0), 0);
    }
}
