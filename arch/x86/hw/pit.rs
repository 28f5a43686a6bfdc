//! The 8254 PIT as KVM models it (upstream arch/x86/kvm/i8254.c).
//!
//! Pure logic: the three channels in the `struct kvm_pit_channel_state` layout, the
//! port decode (0x40-0x43, and the speaker port 0x61's gate and output bits), the
//! counter and OUT as functions of time, and channel 0's timer as upstream programs
//! its hrtimer. Time is the caller's monotonic clock in ns (ktime_get()), passed in.
//! The caller owns the lock, the host timer (it carries out the [`TimerAction`]
//! each call returns) and the injection; [`Reinject`] is the lock-free tick
//! accounting the timer callback, the injection and the ack notifier share.

use core::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use super::lapic::mul_div;

/// The PIT's input clock (KVM_PIT_FREQ).
pub const FREQ: u64 = 1_193_182;
const NSEC_PER_SEC: u64 = 1_000_000_000;
/// KVM_PIT_BASE_ADDRESS and KVM_PIT_MEM_LENGTH: ports 0x40-0x43.
pub const BASE_ADDRESS: u16 = 0x40;
pub const MEM_LENGTH: u32 = 4;
/// KVM_SPEAKER_BASE_ADDRESS: the NMI status and control port, whose bit 0 is
/// channel 2's gate and bit 5 its output.
pub const SPEAKER_BASE_ADDRESS: u16 = 0x61;
/// Ports the speaker device claims (upstream registers 4).
pub const SPEAKER_MEM_LENGTH: u32 = 4;
/// KVM_PIT_CHANNEL_MASK.
const CHANNEL_MASK: u16 = 3;
/// The GSI the PIT drives (its irq ack notifier's too).
pub const GSI: u32 = 0;
/// Upstream's KVM_PIT_IRQ_SOURCE_ID: the PIT's bit in a pin's irq-source levels.
pub const SOURCE_ID: u32 = 2;
/// Upstream's min_timer_period_us default: a periodic PIT timer fires at most every
/// 200 us, since hrtimers are not throttled by the host scheduler.
pub const MIN_TIMER_PERIOD_NS: u64 = 200_000;

/// KVM_PIT_FLAGS_HPET_LEGACY: the HPET has taken over, channel 0 does not interrupt.
pub const FLAGS_HPET_LEGACY: u32 = 0x1;
/// KVM_PIT_FLAGS_SPEAKER_DATA_ON: port 0x61 bit 1.
pub const FLAGS_SPEAKER_DATA_ON: u32 = 0x2;
/// KVM_PIT_SPEAKER_DUMMY: KVM_CREATE_PIT2's flag for a port 0x61 device.
pub const SPEAKER_DUMMY: u32 = 1;
/// The flags KVM_CREATE_PIT2 takes.
pub const CREATE_VALID_FLAGS: u32 = SPEAKER_DUMMY;

/// RW_STATE_*: which byte(s) of the count the next access moves.
pub const RW_STATE_LSB: u8 = 1;
pub const RW_STATE_MSB: u8 = 2;
pub const RW_STATE_WORD0: u8 = 3;
pub const RW_STATE_WORD1: u8 = 4;

/// The mode kvm_pit_reset() leaves a channel in: none, no timer.
const MODE_NONE: u8 = 0xff;

/// One channel, field for field `struct kvm_pit_channel_state` (upstream's
/// kvm_kpit_channel_state): what KVM_GET/SET_PIT(2) move.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Channel {
    /// Can be 65536.
    pub count: u32,
    pub latched_count: u16,
    pub count_latched: u8,
    pub status_latched: u8,
    pub status: u8,
    pub read_state: u8,
    pub write_state: u8,
    pub write_latch: u8,
    pub rw_mode: u8,
    pub mode: u8,
    pub bcd: u8,
    pub gate: u8,
    /// ktime_get() when the count was loaded (channels 1 and 2; channel 0 runs
    /// off its timer).
    pub count_load_time: i64,
}

/// What the caller does to channel 0's host timer after a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerAction {
    None,
    /// create_pit_timer(): cancel the timer and its pending injection, reset the
    /// reinjection ([`Reinject::reset`]), then fire first after `first_ns` and, if
    /// `periodic`, every `period_ns` after that.
    Start {
        first_ns: u64,
        period_ns: u64,
        periodic: bool,
    },
    /// destroy_pit_timer(): cancel the timer and wait out its injection.
    Stop,
}

/// Channel 0's timer as the model sees it, to give the elapsed time upstream reads
/// off the hrtimer (__kpit_elapsed(): period minus the time remaining).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Timer0 {
    /// When it was started and how long until its first expiry.
    start: u64,
    first: u64,
    /// ps->period: 0 until a timer is first started (then it stays, as upstream's).
    period: u64,
    periodic: bool,
    /// Cancelled at this time (the expiry stops advancing), if it was.
    stopped_at: Option<u64>,
}

impl Timer0 {
    /// The hrtimer's expiry at `now`: a periodic one advances by the period
    /// each time it fires, until it is cancelled.
    fn expires(&self, now: u64) -> u64 {
        let first = self.start.saturating_add(self.first);
        if !self.periodic || self.period == 0 {
            return first;
        }
        let t = self.stopped_at.unwrap_or(now);
        if t < first {
            return first;
        }
        let fired = (t - first) / self.period + 1;
        first.saturating_add(fired.saturating_mul(self.period))
    }

    fn elapsed(&self, now: u64) -> u64 {
        if self.period == 0 {
            return 0;
        }
        // period - (expires - now), never below 0.
        now.saturating_add(self.period)
            .saturating_sub(self.expires(now))
    }
}

/// The PIT (upstream struct kvm_kpit_state less its lock and atomics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pit {
    pub channels: [Channel; 3],
    /// KVM_PIT_FLAGS_*.
    pub flags: u32,
    timer: Timer0,
}

/// Whole 1.193182 MHz ticks in `ns` (mul_u64_u32_div(t, KVM_PIT_FREQ, NSEC_PER_SEC)).
fn ticks(ns: u64) -> u64 {
    mul_div(ns, FREQ, NSEC_PER_SEC)
}

/// `ticks` of the input clock in ns (mul_u64_u32_div(val, NSEC_PER_SEC, KVM_PIT_FREQ)).
fn ticks_to_ns(ticks: u64) -> u64 {
    mul_div(ticks, NSEC_PER_SEC, FREQ)
}

/// `a` mod `b`, 0 for a zero `b` (a count is never 0 once loaded, but KVM_SET_PIT
/// may store anything before the load fixes it).
fn mod_u64(a: u64, b: u64) -> u64 {
    a.checked_rem(b).unwrap_or(0)
}

impl Pit {
    /// kvm_pit_reset() on a new PIT: every channel modeless with a count of 65536,
    /// channels 0 and 1 gated on; no timer.
    pub fn new(now: u64) -> Self {
        let mut p = Pit::default();
        let _ = p.reset(now);
        p
    }

    /// kvm_pit_reset(); the caller also resets [`Reinject`].
    pub fn reset(&mut self, now: u64) -> TimerAction {
        self.flags = 0;
        let mut action = TimerAction::None;
        for i in 0..3 {
            if let Some(c) = self.channels.get_mut(i) {
                c.mode = MODE_NONE;
                c.gate = u8::from(i != 2);
            }
            let a = self.load_count(i, 0, now);
            if a != TimerAction::None {
                action = a;
            }
        }
        action
    }

    fn channel(&self, ch: usize) -> Channel {
        self.channels.get(ch).copied().unwrap_or_default()
    }

    /// kpit_elapsed(): ns since the count was loaded (channel 0: since its timer
    /// last fired).
    fn elapsed(&self, ch: usize, now: u64) -> u64 {
        if ch == 0 {
            return self.timer.elapsed(now);
        }
        (now as i64)
            .wrapping_sub(self.channel(ch).count_load_time)
            .max(0) as u64
    }

    /// pit_get_count(): the counter's current value.
    pub fn get_count(&self, ch: usize, now: u64) -> u32 {
        let c = self.channel(ch);
        let d = ticks(self.elapsed(ch, now));
        let count = u64::from(c.count);
        let v = match c.mode {
            0 | 1 | 4 | 5 => count.wrapping_sub(d) & 0xffff,
            // Upstream notes this may be wrong for odd counts.
            3 => count.wrapping_sub(mod_u64(d.wrapping_mul(2), count)),
            _ => count.wrapping_sub(mod_u64(d, count)),
        };
        v as u32
    }

    /// pit_get_out(): the channel's OUT pin.
    pub fn get_out(&self, ch: usize, now: u64) -> bool {
        let c = self.channel(ch);
        let d = ticks(self.elapsed(ch, now));
        let count = u64::from(c.count);
        match c.mode {
            1 => d < count,
            2 => mod_u64(d, count) == 0 && d != 0,
            3 => mod_u64(d, count) < (count + 1) >> 1,
            4 | 5 => d == count,
            _ => d >= count,
        }
    }

    /// pit_set_gate(): modes 1, 2, 3 and 5 restart counting on a rising edge.
    fn set_gate(&mut self, ch: usize, val: bool, now: u64) {
        let Some(c) = self.channels.get_mut(ch) else {
            return;
        };
        if matches!(c.mode, 1 | 2 | 3 | 5) && c.gate < u8::from(val) {
            c.count_load_time = now as i64;
        }
        c.gate = u8::from(val);
    }

    fn latch_count(&mut self, ch: usize, now: u64) {
        let count = self.get_count(ch, now);
        if let Some(c) = self.channels.get_mut(ch) {
            if c.count_latched == 0 {
                c.latched_count = count as u16;
                c.count_latched = c.rw_mode;
            }
        }
    }

    fn latch_status(&mut self, ch: usize, now: u64) {
        let out = u8::from(self.get_out(ch, now));
        if let Some(c) = self.channels.get_mut(ch) {
            if c.status_latched == 0 {
                c.status = (out << 7) | (c.rw_mode << 4) | (c.mode << 1) | c.bcd;
                c.status_latched = 1;
            }
        }
    }

    /// pit_load_count(): a new count (0 is 65536); on channel 0 it (re)programs the
    /// timer: one-shot in modes 0, 1 and 4, periodic in 2 and 3, none otherwise.
    fn load_count(&mut self, ch: usize, val: u32, now: u64) -> TimerAction {
        let val = if val == 0 { 0x10000 } else { val };
        let Some(c) = self.channels.get_mut(ch) else {
            return TimerAction::None;
        };
        c.count = val;
        if ch != 0 {
            c.count_load_time = now as i64;
            return TimerAction::None;
        }
        match c.mode {
            0 | 1 | 4 => self.create_timer(val, false, now),
            2 | 3 => self.create_timer(val, true, now),
            _ => self.destroy_timer(now),
        }
    }

    /// create_pit_timer(): nothing while the HPET has the legacy interrupts.
    fn create_timer(&mut self, val: u32, periodic: bool, now: u64) -> TimerAction {
        if self.flags & FLAGS_HPET_LEGACY != 0 {
            return TimerAction::None;
        }
        let interval = ticks_to_ns(val.into());
        let period = if periodic {
            interval.max(MIN_TIMER_PERIOD_NS)
        } else {
            interval
        };
        self.timer = Timer0 {
            start: now,
            first: interval,
            period,
            periodic,
            stopped_at: None,
        };
        TimerAction::Start {
            first_ns: interval,
            period_ns: period,
            periodic,
        }
    }

    /// destroy_pit_timer(): the timer stops; its period stays, as upstream's.
    fn destroy_timer(&mut self, now: u64) -> TimerAction {
        if self.timer.stopped_at.is_none() {
            self.timer.stopped_at = Some(now);
        }
        TimerAction::Stop
    }

    /// kvm_pit_load_count(): with `hpet_legacy_start`, channel 0's timer stops
    /// whatever its mode.
    fn load_count_hpet(
        &mut self,
        ch: usize,
        val: u32,
        hpet_legacy_start: bool,
        now: u64,
    ) -> TimerAction {
        if !hpet_legacy_start {
            return self.load_count(ch, val, now);
        }
        let saved = self.channel(ch).mode;
        if let Some(c) = self.channels.get_mut(ch) {
            c.mode = MODE_NONE;
        }
        let a = self.load_count(ch, val, now);
        if let Some(c) = self.channels.get_mut(ch) {
            c.mode = saved;
        }
        a
    }

    /// pit_ioport_write(): `port` is 0x40-0x43 (the caller checked the range).
    pub fn ioport_write(&mut self, port: u16, val: u8, now: u64) -> TimerAction {
        let addr = (port & CHANNEL_MASK) as usize;
        if addr == 3 {
            let ch = usize::from(val >> 6);
            if ch == 3 {
                // Read-back command: latch count and/or status of each selected channel.
                for ch in 0..3 {
                    if val & (2 << ch) != 0 {
                        if val & 0x20 == 0 {
                            self.latch_count(ch, now);
                        }
                        if val & 0x10 == 0 {
                            self.latch_status(ch, now);
                        }
                    }
                }
                return TimerAction::None;
            }
            let access = (val >> 4) & CHANNEL_MASK as u8;
            if access == 0 {
                self.latch_count(ch, now);
            } else if let Some(s) = self.channels.get_mut(ch) {
                s.rw_mode = access;
                s.read_state = access;
                s.write_state = access;
                s.mode = (val >> 1) & 7;
                if s.mode > 5 {
                    s.mode -= 4;
                }
                s.bcd = val & 1;
            }
            return TimerAction::None;
        }
        let s = self.channel(addr);
        let val32 = u32::from(val);
        match s.write_state {
            RW_STATE_MSB => self.load_count(addr, val32 << 8, now),
            RW_STATE_WORD0 => {
                if let Some(c) = self.channels.get_mut(addr) {
                    c.write_latch = val;
                    c.write_state = RW_STATE_WORD1;
                }
                TimerAction::None
            }
            RW_STATE_WORD1 => {
                let a = self.load_count(addr, u32::from(s.write_latch) | (val32 << 8), now);
                if let Some(c) = self.channels.get_mut(addr) {
                    c.write_state = RW_STATE_WORD0;
                }
                a
            }
            _ => self.load_count(addr, val32, now),
        }
    }

    /// pit_ioport_read(): `port` is 0x40-0x43; the control port reads 0.
    pub fn ioport_read(&mut self, port: u16, now: u64) -> u8 {
        let addr = (port & CHANNEL_MASK) as usize;
        if addr == 3 {
            return 0;
        }
        let count = self.get_count(addr, now);
        let Some(s) = self.channels.get_mut(addr) else {
            return 0;
        };
        if s.status_latched != 0 {
            s.status_latched = 0;
            return s.status;
        }
        if s.count_latched != 0 {
            let lc = s.latched_count;
            return match s.count_latched {
                RW_STATE_MSB => {
                    s.count_latched = 0;
                    (lc >> 8) as u8
                }
                RW_STATE_WORD0 => {
                    s.count_latched = RW_STATE_MSB;
                    lc as u8
                }
                _ => {
                    s.count_latched = 0;
                    lc as u8
                }
            };
        }
        match s.read_state {
            RW_STATE_MSB => (count >> 8) as u8,
            RW_STATE_WORD0 => {
                s.read_state = RW_STATE_WORD1;
                count as u8
            }
            RW_STATE_WORD1 => {
                s.read_state = RW_STATE_WORD0;
                (count >> 8) as u8
            }
            _ => count as u8,
        }
    }

    /// speaker_ioport_write(): bit 0 gates channel 2, bit 1 is the speaker data.
    pub fn speaker_write(&mut self, val: u8, now: u64) {
        if val & (1 << 1) != 0 {
            self.flags |= FLAGS_SPEAKER_DATA_ON;
        } else {
            self.flags &= !FLAGS_SPEAKER_DATA_ON;
        }
        self.set_gate(2, val & 1 != 0, now);
    }

    /// speaker_ioport_read(): data, gate, channel 2's OUT in bit 5 and the refresh
    /// clock (bit 4), which toggles every 2^14 ns, as upstream.
    pub fn speaker_read(&self, now: u64) -> u8 {
        let refresh = ((now as u32) >> 14) & 1;
        let data = u8::from(self.flags & FLAGS_SPEAKER_DATA_ON != 0);
        (data << 1)
            | self.channel(2).gate
            | (u8::from(self.get_out(2, now)) << 5)
            | ((refresh as u8) << 4)
    }

    /// KVM_SET_PIT (kvm_vm_ioctl_set_pit()): the channels as given, each count
    /// loaded again.
    pub fn set_channels(&mut self, ch: &[Channel; 3], now: u64) -> TimerAction {
        self.channels = *ch;
        let mut action = TimerAction::None;
        for (i, c) in ch.iter().enumerate() {
            let a = self.load_count_hpet(i, c.count, false, now);
            if a != TimerAction::None {
                action = a;
            }
        }
        action
    }

    /// KVM_SET_PIT2 (kvm_vm_ioctl_set_pit2()): entering HPET-legacy mode stops
    /// channel 0's timer.
    pub fn set_state2(&mut self, ch: &[Channel; 3], flags: u32, now: u64) -> TimerAction {
        let start = self.flags & FLAGS_HPET_LEGACY == 0 && flags & FLAGS_HPET_LEGACY != 0;
        self.channels = *ch;
        self.flags = flags;
        let mut action = TimerAction::None;
        for (i, c) in ch.iter().enumerate() {
            let a = self.load_count_hpet(i, c.count, start && i == 0, now);
            if a != TimerAction::None {
                action = a;
            }
        }
        action
    }
}

/// Channel 0's tick accounting with reinjection on (upstream's pending, irq_ack and
/// reinject atomics): a tick is injected only once the previous one was acked, and
/// ticks that fired meanwhile are injected one per ack, so the guest sees every
/// tick. Without reinjection each expiry injects at once.
#[derive(Debug)]
pub struct Reinject {
    reinject: AtomicBool,
    pending: AtomicI32,
    irq_ack: AtomicBool,
}

impl Default for Reinject {
    fn default() -> Self {
        Self::new()
    }
}

impl Reinject {
    /// Reinjection off until [`Reinject::set`] (kvm_create_pit() turns it on).
    pub const fn new() -> Self {
        Reinject {
            reinject: AtomicBool::new(false),
            pending: AtomicI32::new(0),
            irq_ack: AtomicBool::new(true),
        }
    }

    /// kvm_pit_reset_reinject().
    pub fn reset(&self) {
        self.pending.store(0, Ordering::SeqCst);
        self.irq_ack.store(true, Ordering::SeqCst);
    }

    pub fn enabled(&self) -> bool {
        self.reinject.load(Ordering::SeqCst)
    }

    /// kvm_pit_set_reinject(): returns whether it changed, in which case the
    /// caller (un)registers its ack and mask notifiers; turning it on resets it.
    pub fn set(&self, on: bool) -> bool {
        if self.enabled() == on {
            return false;
        }
        if on {
            self.reset();
        }
        self.reinject.store(on, Ordering::SeqCst);
        true
    }

    /// pit_timer_fn(), in the timer's interrupt: count the tick; the caller queues
    /// the injection.
    pub fn timer_fired(&self) {
        if self.enabled() {
            self.pending.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// pit_do_work()'s test: whether to inject now (with reinjection, only if the
    /// last tick was acked; that ack is then used up).
    pub fn take_inject(&self) -> bool {
        !self.enabled() || self.irq_ack.swap(false, Ordering::SeqCst)
    }

    /// kvm_pit_ack_irq(): the guest acked GSI 0; returns whether a tick is still
    /// pending, so the caller queues another injection.
    pub fn ack(&self) -> bool {
        self.irq_ack.store(true, Ordering::SeqCst);
        // atomic_dec_if_positive(&pending) > 0.
        let mut cur = self.pending.load(Ordering::SeqCst);
        loop {
            if cur <= 0 {
                return false;
            }
            match self
                .pending
                .compare_exchange(cur, cur - 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return cur - 1 > 0,
                Err(v) => cur = v,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const T0: u64 = 1_000 * MS;

    /// The first ns at which `ticks` whole ticks have elapsed.
    fn at(ticks: u64) -> u64 {
        ticks_to_ns(ticks) + 1
    }

    /// Control word: channel, access, mode.
    fn ctrl(ch: u8, access: u8, mode: u8) -> u8 {
        (ch << 6) | (access << 4) | (mode << 1)
    }

    fn program(p: &mut Pit, ch: u8, mode: u8, count: u16, now: u64) -> TimerAction {
        p.ioport_write(0x43, ctrl(ch, 3, mode), now);
        p.ioport_write(0x40 + u16::from(ch), count as u8, now);
        p.ioport_write(0x40 + u16::from(ch), (count >> 8) as u8, now)
    }

    #[test]
    fn reset_state() {
        let p = Pit::new(T0);
        for (i, c) in p.channels.iter().enumerate() {
            assert_eq!(c.mode, MODE_NONE);
            assert_eq!(c.count, 0x10000);
            assert_eq!(c.gate, u8::from(i != 2));
        }
        // No timer: channel 0 does not count.
        assert_eq!(p.get_count(0, T0 + 10 * MS), 0x10000);
    }

    #[test]
    fn mode2_programs_a_periodic_timer() {
        let mut p = Pit::new(T0);
        // 1193 ticks: just under 1 ms, Linux's HZ=1000 divisor.
        let a = program(&mut p, 0, 2, 1193, T0);
        let ns = ticks_to_ns(1193);
        assert_eq!(
            a,
            TimerAction::Start {
                first_ns: ns,
                period_ns: ns,
                periodic: true
            }
        );
        assert_eq!(p.channels[0].rw_mode, RW_STATE_WORD0);
        assert_eq!(p.channels[0].write_state, RW_STATE_WORD0);
        // The counter runs down within each period.
        let half = p.get_count(0, T0 + ns / 2);
        assert!((595..=598).contains(&half), "{half}");
        let later = p.get_count(0, T0 + 5 * ns + ns / 2);
        assert!((595..=598).contains(&later), "{later}");
    }

    #[test]
    fn short_periodic_timer_is_clamped() {
        let mut p = Pit::new(T0);
        let a = program(&mut p, 0, 2, 2, T0);
        assert_eq!(
            a,
            TimerAction::Start {
                first_ns: ticks_to_ns(2),
                period_ns: MIN_TIMER_PERIOD_NS,
                periodic: true
            }
        );
    }

    #[test]
    fn mode0_one_shot_and_out() {
        let mut p = Pit::new(T0);
        let a = program(&mut p, 0, 0, 1000, T0);
        assert!(matches!(
            a,
            TimerAction::Start {
                periodic: false,
                ..
            }
        ));
        assert!(!p.get_out(0, T0 + at(500)));
        assert!(p.get_out(0, T0 + at(1001)));
        // The counter wraps past 0 and keeps counting.
        assert_eq!(p.get_count(0, T0 + at(1010)), 0xfff6);
    }

    #[test]
    fn lsb_only_and_msb_only_loads() {
        let mut p = Pit::new(T0);
        p.ioport_write(0x43, ctrl(1, RW_STATE_LSB, 2), T0);
        p.ioport_write(0x41, 0x12, T0);
        assert_eq!(p.channels[1].count, 0x12);
        p.ioport_write(0x43, ctrl(1, RW_STATE_MSB, 2), T0);
        p.ioport_write(0x41, 0x12, T0);
        assert_eq!(p.channels[1].count, 0x1200);
        // A zero count is 65536.
        p.ioport_write(0x41, 0, T0);
        assert_eq!(p.channels[1].count, 0x10000);
    }

    #[test]
    fn mode_6_and_7_alias_2_and_3() {
        let mut p = Pit::new(T0);
        p.ioport_write(0x43, ctrl(1, 3, 6), T0);
        assert_eq!(p.channels[1].mode, 2);
        p.ioport_write(0x43, ctrl(1, 3, 7), T0);
        assert_eq!(p.channels[1].mode, 3);
    }

    #[test]
    fn latched_count_reads_lsb_then_msb_and_freezes() {
        let mut p = Pit::new(T0);
        program(&mut p, 1, 2, 0x1000, T0);
        let t = T0 + at(0x100);
        p.ioport_write(0x43, ctrl(1, 0, 0), t);
        let want = p.get_count(1, t);
        assert_eq!(want, 0x1000 - 0x100);
        // Time passes; the latch holds.
        let t2 = t + at(0x50);
        let lo = p.ioport_read(0x41, t2);
        let hi = p.ioport_read(0x41, t2);
        assert_eq!(u32::from(lo) | (u32::from(hi) << 8), want);
        // A second latch command before the read would not relatch; after it, live.
        assert_eq!(p.channels[1].count_latched, 0);
    }

    #[test]
    fn live_word_reads_alternate() {
        let mut p = Pit::new(T0);
        program(&mut p, 1, 2, 0x1234, T0);
        let lo = p.ioport_read(0x41, T0);
        let hi = p.ioport_read(0x41, T0);
        assert_eq!((lo, hi), (0x34, 0x12));
        assert_eq!(p.ioport_read(0x43, T0), 0);
    }

    #[test]
    fn read_back_latches_status_and_count() {
        let mut p = Pit::new(T0);
        program(&mut p, 2, 0, 100, T0);
        // Read-back (11), count and status (bits 5,4 clear), channel 2 (bit 3).
        p.ioport_write(0x43, 0xc0 | (2 << 2), T0 + at(10));
        let status = p.ioport_read(0x42, T0 + at(200));
        // OUT low (mode 0, not expired), access 3, mode 0, binary.
        assert_eq!(status, 3 << 4);
        let lo = p.ioport_read(0x42, T0 + at(200));
        let hi = p.ioport_read(0x42, T0 + at(200));
        assert_eq!(u16::from(lo) | (u16::from(hi) << 8), 90);
    }

    #[test]
    fn speaker_port_gates_channel_2_for_tsc_calibration() {
        // Linux's pit_calibrate_tsc(): gate on, speaker off, mode 0 LSB/MSB on
        // channel 2, then poll port 0x61 bit 5 until OUT rises.
        let mut p = Pit::new(T0);
        p.speaker_write(0x01, T0);
        assert_eq!(p.channels[2].gate, 1);
        assert_eq!(p.flags & FLAGS_SPEAKER_DATA_ON, 0);
        program(&mut p, 2, 0, 0xffff, T0);
        let r = p.speaker_read(T0 + at(100));
        assert_eq!(r & 0x21, 0x01);
        let r = p.speaker_read(T0 + at(0x10000));
        assert_eq!(r & 0x21, 0x21);
        p.speaker_write(0x03, T0);
        assert_ne!(p.flags & FLAGS_SPEAKER_DATA_ON, 0);
        assert_eq!(p.speaker_read(T0) & 2, 2);
    }

    #[test]
    fn gate_rising_edge_restarts_mode_2() {
        let mut p = Pit::new(T0);
        p.speaker_write(0x01, T0);
        program(&mut p, 2, 2, 1000, T0);
        p.speaker_write(0x00, T0 + at(300));
        p.speaker_write(0x01, T0 + at(400));
        assert_eq!(p.get_count(2, T0 + at(400)), 1000);
        // Mode 0 is not restarted by the gate.
        program(&mut p, 2, 0, 1000, T0);
        p.speaker_write(0x00, T0 + at(300));
        p.speaker_write(0x01, T0 + at(400));
        assert_eq!(p.get_count(2, T0 + at(400)), 600);
    }

    #[test]
    fn hpet_legacy_stops_channel_0() {
        let mut p = Pit::new(T0);
        program(&mut p, 0, 2, 1193, T0);
        let chans = p.channels;
        assert_eq!(
            p.set_state2(&chans, FLAGS_HPET_LEGACY, T0),
            TimerAction::Stop
        );
        assert_eq!(p.channels[0].mode, 2);
        // While legacy, a new count programs no timer.
        assert_eq!(program(&mut p, 0, 2, 1193, T0), TimerAction::None);
        // Leaving legacy mode loads the count again, starting the timer.
        let chans = p.channels;
        assert!(matches!(
            p.set_state2(&chans, 0, T0),
            TimerAction::Start { .. }
        ));
    }

    #[test]
    fn set_pit_fixes_a_zero_count() {
        let mut p = Pit::new(T0);
        let mut chans = p.channels;
        chans[1].count = 0;
        chans[1].mode = 9;
        p.set_channels(&chans, T0);
        assert_eq!(p.channels[1].count, 0x10000);
        // An unknown mode counts as the periodic default; no division by zero.
        let _ = p.get_count(1, T0 + MS);
        let _ = p.get_out(1, T0 + MS);
    }

    #[test]
    fn stopped_timer_elapsed_keeps_growing() {
        let mut p = Pit::new(T0);
        program(&mut p, 0, 2, 1000, T0);
        let period = ticks_to_ns(1000);
        // Mode 5 has no timer: loading a count cancels it. As upstream's hrtimer,
        // the expiry stops advancing, so the elapsed time runs on past the period.
        p.ioport_write(0x43, ctrl(0, 3, 5), T0 + period / 2);
        assert_eq!(
            p.ioport_write(0x40, 0x10, T0 + period / 2),
            TimerAction::None
        );
        assert_eq!(p.ioport_write(0x40, 0, T0 + period / 2), TimerAction::Stop);
        assert_eq!(p.channels[0].count, 0x10);
        assert_eq!(p.timer.elapsed(T0 + 3 * period), 3 * period);
    }

    #[test]
    fn reinject_one_tick_per_ack() {
        let r = Reinject::new();
        assert!(r.set(true));
        assert!(!r.set(true));
        // Three ticks before the guest acks any.
        r.timer_fired();
        assert!(r.take_inject());
        r.timer_fired();
        assert!(!r.take_inject());
        r.timer_fired();
        assert!(!r.take_inject());
        // Each ack releases the next pending tick.
        assert!(r.ack());
        assert!(r.take_inject());
        assert!(r.ack());
        assert!(r.take_inject());
        assert!(!r.ack());
        assert!(!r.ack());
    }

    #[test]
    fn no_reinject_injects_every_tick() {
        let r = Reinject::new();
        r.timer_fired();
        assert!(r.take_inject());
        assert!(r.take_inject());
        assert!(!r.ack());
    }
}
