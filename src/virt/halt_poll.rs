//! Halt polling (upstream kvm_vcpu_halt() in virt/kvm/kvm_main.c): a halted vCPU
//! busy-waits up to its `halt_poll_ns` for a wake event before it sleeps, since
//! blocking and being woken cost more than a short poll. Each vCPU's window grows
//! after a short halt and shrinks after a long one, bounded by the module
//! parameter `halt_poll_ns` (or the VM's KVM_CAP_HALT_POLL value).
//!
//! What is here is the arithmetic; the kernel side polls and sleeps.

/// `KVM_HALT_POLL_NS_DEFAULT` on x86: 200 µs.
pub const HALT_POLL_NS_DEFAULT: u32 = 200_000;
/// The module parameters' defaults (virt/kvm/kvm_main.c).
pub const HALT_POLL_NS_GROW_DEFAULT: u32 = 2;
pub const HALT_POLL_NS_GROW_START_DEFAULT: u32 = 10_000;
pub const HALT_POLL_NS_SHRINK_DEFAULT: u32 = 2;

/// The grow/shrink module parameters, read once per halt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub grow: u32,
    pub grow_start: u32,
    pub shrink: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            grow: HALT_POLL_NS_GROW_DEFAULT,
            grow_start: HALT_POLL_NS_GROW_START_DEFAULT,
            shrink: HALT_POLL_NS_SHRINK_DEFAULT,
        }
    }
}

/// grow_halt_poll_ns(): times `grow`, at least `grow_start`; unchanged when
/// `grow` is 0.
pub fn grow(cur: u32, p: Params) -> u32 {
    if p.grow == 0 {
        return cur;
    }
    cur.saturating_mul(p.grow).max(p.grow_start)
}

/// shrink_halt_poll_ns(): divided by `shrink` (0: off), and off below
/// `grow_start`.
pub fn shrink(cur: u32, p: Params) -> u32 {
    let v = cur.checked_div(p.shrink).unwrap_or(0);
    if v < p.grow_start {
        0
    } else {
        v
    }
}

/// The window after a halt that lasted `halt_ns` (polling included), with the
/// current bound `max` (kvm_vcpu_halt()'s tail; x86 wakeups are always valid).
pub fn adjust(cur: u32, halt_ns: u64, max: u32, p: Params) -> u32 {
    if max == 0 {
        return 0;
    }
    if halt_ns <= u64::from(cur) {
        cur
    } else if cur != 0 && halt_ns > u64::from(max) {
        // A long block: polling would not have caught it.
        shrink(cur, p)
    } else if cur < max && halt_ns < u64::from(max) {
        // A short halt the window was too small for.
        grow(cur, p)
    } else {
        cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_from_grow_start_and_doubles() {
        let p = Params::default();
        assert_eq!(adjust(0, 5_000, HALT_POLL_NS_DEFAULT, p), 10_000);
        assert_eq!(adjust(10_000, 15_000, HALT_POLL_NS_DEFAULT, p), 20_000);
        assert_eq!(adjust(160_000, 190_000, HALT_POLL_NS_DEFAULT, p), 320_000);
    }

    #[test]
    fn a_halt_within_the_window_keeps_it() {
        let p = Params::default();
        assert_eq!(adjust(20_000, 20_000, HALT_POLL_NS_DEFAULT, p), 20_000);
        assert_eq!(adjust(20_000, 1, HALT_POLL_NS_DEFAULT, p), 20_000);
    }

    #[test]
    fn a_long_block_shrinks_then_turns_polling_off() {
        let p = Params::default();
        assert_eq!(adjust(40_000, 1_000_000, HALT_POLL_NS_DEFAULT, p), 20_000);
        assert_eq!(adjust(20_000, 1_000_000, HALT_POLL_NS_DEFAULT, p), 10_000);
        assert_eq!(adjust(10_000, 1_000_000, HALT_POLL_NS_DEFAULT, p), 0);
        // Not polling and a long block: stays off.
        assert_eq!(adjust(0, 1_000_000, HALT_POLL_NS_DEFAULT, p), 0);
    }

    #[test]
    fn at_the_bound_or_without_one() {
        let p = Params::default();
        // A halt of exactly max with the window at max: unchanged.
        assert_eq!(adjust(200_000, 200_000, 200_000, p), 200_000);
        assert_eq!(adjust(50_000, 100, 0, p), 0);
    }

    #[test]
    fn parameters_zero() {
        let off = Params {
            grow: 0,
            grow_start: 10_000,
            shrink: 0,
        };
        assert_eq!(grow(30_000, off), 30_000);
        assert_eq!(shrink(30_000, off), 0);
        assert_eq!(grow(u32::MAX, Params::default()), u32::MAX);
    }
}
