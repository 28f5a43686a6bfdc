// SPDX-License-Identifier: GPL-2.0-only
//! Guest TSC and kvmclock arithmetic (upstream x86.c's TSC synchronization and
//! pvclock.h): the fixed-point scale between TSC cycles and nanoseconds, the
//! kvmclock reading a pvclock structure gives, and kvm_synchronize_tsc()'s rule
//! for matching the TSCs of a VM's vCPUs.

pub const NSEC_PER_SEC: u64 = 1_000_000_000;

/// The kvmclock MSRs (uapi/asm/kvm_para.h): the wall clock's and a vCPU's pvclock
/// structure's guest-physical addresses, the old numbers and the new.
pub const MSR_KVM_WALL_CLOCK: u32 = 0x11;
pub const MSR_KVM_SYSTEM_TIME: u32 = 0x12;
pub const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
pub const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
/// Bit 0 of MSR_KVM_SYSTEM_TIME(_NEW): the pvclock structure is in use.
pub const KVM_MSR_ENABLED: u64 = 1;
/// MSR_KVM_STEAL_TIME: the GPA of the vCPU's `struct kvm_steal_time` (64-byte
/// aligned) and KVM_MSR_ENABLED; bits 5:1 are reserved
/// (KVM_STEAL_ALIGNMENT_BITS = 5).
pub const MSR_KVM_STEAL_TIME: u32 = 0x4b56_4d03;
pub const KVM_STEAL_RESERVED_MASK: u64 = 0x1f << 1;
/// KVM_STEAL_VALID_BITS: the structure's address.
pub const KVM_STEAL_VALID_BITS: u64 = !0x3f;
/// `struct kvm_steal_time` offsets: steal (ns), version, preempted.
pub const STEAL_TIME_STEAL: u64 = 0;
pub const STEAL_TIME_VERSION: u64 = 8;
pub const STEAL_TIME_PREEMPTED: u64 = 16;

/// record_steal_time()'s versions around the update of a steal-time structure
/// whose version reads `version`: odd while it changes, even after; an odd
/// version found there (junk before the first update) is skipped past.
pub fn steal_time_versions(version: u32) -> (u32, u32) {
    let v = if version & 1 != 0 {
        version.wrapping_add(1)
    } else {
        version
    };
    (v.wrapping_add(1), v.wrapping_add(2))
}

/// A TSC-to-nanoseconds (or back) scale: `(delta << shift or >> -shift) * mul >> 32`
/// (pvclock's tsc_to_system_mul and tsc_shift).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeScale {
    pub mul: u32,
    pub shift: i8,
}

/// kvm_get_time_scale(): the scale that turns `base_hz` ticks into `scaled_hz`
/// ticks. `base_hz` must not be 0 (a 0 gives the identity-free zero scale).
pub fn kvm_get_time_scale(scaled_hz: u64, base_hz: u64) -> TimeScale {
    if base_hz == 0 || scaled_hz == 0 {
        return TimeScale::default();
    }
    let mut tps64 = base_hz;
    let mut scaled64 = scaled_hz;
    let mut shift: i32 = 0;
    while tps64 > scaled64.saturating_mul(2) || tps64 & 0xffff_ffff_0000_0000 != 0 {
        tps64 >>= 1;
        shift -= 1;
    }
    let mut tps32 = tps64 as u32;
    while u64::from(tps32) <= scaled64 || scaled64 & 0xffff_ffff_0000_0000 != 0 {
        if scaled64 & 0xffff_ffff_0000_0000 != 0 || tps32 & 0x8000_0000 != 0 {
            scaled64 >>= 1;
        } else {
            tps32 <<= 1;
        }
        shift += 1;
    }
    // div_frac(): scaled64 < tps32 here, so the quotient fits in 32 bits.
    let mul = ((scaled64 << 32) / u64::from(tps32.max(1))) as u32;
    TimeScale {
        mul,
        shift: shift as i8,
    }
}

/// pvclock_scale_delta().
pub fn pvclock_scale_delta(delta: u64, s: TimeScale) -> u64 {
    let d = if s.shift < 0 {
        delta >> (-i32::from(s.shift)).min(63)
    } else {
        delta << i32::from(s.shift).min(63)
    };
    ((u128::from(d) * u128::from(s.mul)) >> 32) as u64
}

/// `struct pvclock_vcpu_time_info` (the kvmclock page, 32 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PvclockVcpuTimeInfo {
    pub version: u32,
    pub tsc_timestamp: u64,
    pub system_time: u64,
    pub scale: TimeScale,
    pub flags: u8,
}

/// The TSC is the same on all vCPUs: the guest may skip its monotonicity fix-ups.
pub const PVCLOCK_TSC_STABLE_BIT: u8 = 1 << 0;
/// The vCPU was stopped (KVM_KVMCLOCK_CTRL): the guest's watchdogs ignore the gap.
pub const PVCLOCK_GUEST_STOPPED: u8 = 1 << 1;

impl PvclockVcpuTimeInfo {
    /// __pvclock_read_cycles(): the kvmclock (ns) at guest TSC `tsc`.
    pub fn read_cycles(&self, tsc: u64) -> u64 {
        self.system_time.wrapping_add(pvclock_scale_delta(
            tsc.wrapping_sub(self.tsc_timestamp),
            self.scale,
        ))
    }

    /// The structure as the guest reads it.
    pub fn to_bytes(self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0..4].copy_from_slice(&self.version.to_le_bytes());
        b[8..16].copy_from_slice(&self.tsc_timestamp.to_le_bytes());
        b[16..24].copy_from_slice(&self.system_time.to_le_bytes());
        b[24..28].copy_from_slice(&self.scale.mul.to_le_bytes());
        b[28] = self.scale.shift as u8;
        b[29] = self.flags;
        b
    }
}

/// `struct pvclock_wall_clock` (12 bytes): the wall-clock time at kvmclock 0.
pub fn pvclock_wall_clock(version: u32, sec: u32, nsec: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&version.to_le_bytes());
    b[4..8].copy_from_slice(&sec.to_le_bytes());
    b[8..12].copy_from_slice(&nsec.to_le_bytes());
    b
}

/// A VM's record of TSC writes (upstream kvm->arch.last_tsc_* and cur_tsc_*), by
/// which a vCPU's TSC write close to the previous one is taken as meant to be the
/// same TSC (upstream's "UAPI baggage").
#[derive(Clone, Copy, Debug, Default)]
pub struct TscSync {
    pub last_tsc_nsec: u64,
    pub last_tsc_write: u64,
    pub last_tsc_khz: u32,
    pub last_tsc_offset: u64,
    pub cur_tsc_generation: u64,
    pub cur_tsc_nsec: u64,
    pub cur_tsc_write: u64,
    pub cur_tsc_offset: u64,
    pub nr_vcpus_matched_tsc: u32,
    pub user_set_tsc: bool,
}

/// Where a vCPU's TSC write leaves it: the offset to run with and the
/// generation it is in (upstream vcpu->arch.this_tsc_generation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TscWrite {
    pub offset: u64,
    pub generation: u64,
    pub matched: bool,
}

impl TscSync {
    /// kvm_synchronize_tsc(): `data` is the TSC value written (None: the vCPU is
    /// being created, which writes 0), `host_tsc` the host's TSC now, `ns` the
    /// kvmclock base time now, `khz` the vCPU's TSC rate, `tsc_unstable` whether
    /// the host TSC is unstable, `vcpu_generation` the vCPU's current generation.
    pub fn synchronize(
        &mut self,
        data: Option<u64>,
        host_tsc: u64,
        ns: u64,
        khz: u32,
        tsc_unstable: bool,
        vcpu_generation: u64,
    ) -> TscWrite {
        let mut tsc = data.unwrap_or(0);
        let mut offset = tsc.wrapping_sub(host_tsc);
        let elapsed = ns.wrapping_sub(self.last_tsc_nsec);
        let to_cycles = |nsec: u64| {
            pvclock_scale_delta(
                nsec,
                kvm_get_time_scale(u64::from(khz) * 1000, NSEC_PER_SEC),
            )
        };
        let mut synchronizing = false;
        if khz != 0 {
            if tsc == 0 {
                // Creating a vCPU, or userspace writing 0 explicitly.
                synchronizing = true;
            } else if self.user_set_tsc {
                let tsc_exp = self.last_tsc_write.wrapping_add(to_cycles(elapsed));
                let tsc_hz = u64::from(khz) * 1000;
                synchronizing =
                    tsc < tsc_exp.wrapping_add(tsc_hz) && tsc.wrapping_add(tsc_hz) > tsc_exp;
            }
        }
        let mut matched = false;
        if synchronizing && khz == self.last_tsc_khz {
            if tsc_unstable {
                tsc = tsc.wrapping_add(to_cycles(elapsed));
                offset = tsc.wrapping_sub(host_tsc);
            } else {
                offset = self.cur_tsc_offset;
            }
            matched = true;
        }
        self.record_write(
            offset,
            tsc,
            ns,
            khz,
            matched,
            data.is_some(),
            vcpu_generation,
        )
    }

    /// KVM_SET_DEVICE_ATTR(KVM_VCPU_TSC_OFFSET) (kvm_arch_tsc_set_attr()): the
    /// offset itself is written; it matches the previous write when it is the same
    /// offset at the same rate. `host_tsc` is the host's TSC now.
    pub fn set_offset(
        &mut self,
        offset: u64,
        host_tsc: u64,
        ns: u64,
        khz: u32,
        vcpu_generation: u64,
    ) -> TscWrite {
        let matched = khz != 0 && self.last_tsc_khz == khz && self.last_tsc_offset == offset;
        let tsc = host_tsc.wrapping_add(offset);
        self.record_write(offset, tsc, ns, khz, matched, true, vcpu_generation)
    }

    /// __kvm_synchronize_tsc(): records a write of `tsc` running at `offset`, in a
    /// new generation unless `matched`.
    #[allow(clippy::too_many_arguments)]
    fn record_write(
        &mut self,
        offset: u64,
        tsc: u64,
        ns: u64,
        khz: u32,
        matched: bool,
        user_set_tsc: bool,
        vcpu_generation: u64,
    ) -> TscWrite {
        if user_set_tsc {
            self.user_set_tsc = true;
        }
        self.last_tsc_nsec = ns;
        self.last_tsc_write = tsc;
        self.last_tsc_khz = khz;
        self.last_tsc_offset = offset;
        if !matched {
            self.cur_tsc_generation += 1;
            self.cur_tsc_nsec = ns;
            self.cur_tsc_write = tsc;
            self.cur_tsc_offset = offset;
            self.nr_vcpus_matched_tsc = 0;
        } else if vcpu_generation != self.cur_tsc_generation {
            self.nr_vcpus_matched_tsc += 1;
        }
        TscWrite {
            offset,
            generation: self.cur_tsc_generation,
            matched,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_scale_matches_upstream() {
        // 1 GHz TSC: identity, as kvm_get_time_scale() computes it.
        let s = kvm_get_time_scale(NSEC_PER_SEC, 1_000_000_000);
        assert_eq!(
            s,
            TimeScale {
                mul: 1 << 31,
                shift: 1
            }
        );
        assert_eq!(pvclock_scale_delta(123_456_789, s), 123_456_789);
        // 2.5 GHz: 2.5 cycles per ns, within a part per billion.
        let s = kvm_get_time_scale(NSEC_PER_SEC, 2_500_000_000);
        let ns = pvclock_scale_delta(2_500_000_000, s);
        assert!((999_999_990..=1_000_000_000).contains(&ns), "{ns}");
        // The other way (ns to cycles, nsec_to_cycles()).
        let s = kvm_get_time_scale(2_500_000_000, NSEC_PER_SEC);
        let c = pvclock_scale_delta(NSEC_PER_SEC, s);
        assert!((2_499_999_990..=2_500_000_000).contains(&c), "{c}");
        assert_eq!(kvm_get_time_scale(NSEC_PER_SEC, 0), TimeScale::default());
    }

    #[test]
    fn pvclock_reading_and_layout() {
        let p = PvclockVcpuTimeInfo {
            version: 2,
            tsc_timestamp: 1000,
            system_time: 5_000,
            scale: kvm_get_time_scale(NSEC_PER_SEC, 2_000_000_000),
            flags: PVCLOCK_TSC_STABLE_BIT,
        };
        // 2 GHz: 2000 cycles later is 1000 ns later.
        let t = p.read_cycles(3000);
        assert!((5_999..=6_000).contains(&t), "{t}");
        let b = p.to_bytes();
        assert_eq!(b[0], 2);
        assert_eq!(u64::from_le_bytes(b[8..16].try_into().unwrap()), 1000);
        assert_eq!(b[29], PVCLOCK_TSC_STABLE_BIT);
        assert_eq!(pvclock_wall_clock(4, 10, 20)[4], 10);
    }

    #[test]
    fn steal_time_version_is_odd_during_updates() {
        assert_eq!(steal_time_versions(0), (1, 2));
        assert_eq!(steal_time_versions(2), (3, 4));
        assert_eq!(steal_time_versions(7), (9, 10));
        assert_eq!(steal_time_versions(u32::MAX), (1, 2));
    }

    #[test]
    fn offset_writes_match_the_same_offset() {
        let mut s = TscSync::default();
        let khz = 2_000_000;
        let w0 = s.synchronize(None, 1_000, 10, khz, false, 0);
        // A different offset: a new generation, the TSC written is host + offset.
        let w = s.set_offset(5_000, 2_000, 20, khz, w0.generation);
        assert_eq!((w.offset, w.matched), (5_000, false));
        assert_ne!(w.generation, w0.generation);
        assert_eq!(s.last_tsc_write, 7_000);
        assert!(s.user_set_tsc);
        // The same offset for the next vCPU: matched, counted once.
        let w1 = s.set_offset(5_000, 9_000, 30, khz, 0);
        assert!(w1.matched);
        assert_eq!((w1.generation, s.nr_vcpus_matched_tsc), (w.generation, 1));
        // Same offset at another rate: not matched.
        assert!(!s.set_offset(5_000, 9_000, 40, khz / 2, 0).matched);
    }

    #[test]
    fn tsc_writes_match_within_a_second() {
        let mut s = TscSync::default();
        let khz = 2_000_000;
        // vCPU 0 created: TSC 0, a new generation.
        let w0 = s.synchronize(None, 1_000_000, 100, khz, false, 0);
        assert_eq!(
            (w0.offset, w0.matched),
            (0u64.wrapping_sub(1_000_000), false)
        );
        // vCPU 1 created later: the same offset, matched.
        let w1 = s.synchronize(None, 5_000_000, 200, khz, false, 0);
        assert_eq!(
            (w1.offset, w1.matched, w1.generation),
            (w0.offset, true, w0.generation)
        );
        assert_eq!(s.nr_vcpus_matched_tsc, 1);
        // A host write of a real value: not within a second of anything written
        // by the user before, so a new generation.
        let w = s.synchronize(Some(1 << 40), 6_000_000, 300, khz, false, w1.generation);
        assert_eq!(
            (w.offset, w.matched),
            ((1u64 << 40).wrapping_sub(6_000_000), false)
        );
        // The same value written for another vCPU 1 ms (2M cycles) later: matched.
        let w2 = s.synchronize(Some(1 << 40), 8_000_000, 1_000_300, khz, false, 0);
        assert!(w2.matched);
        assert_eq!(w2.offset, w.offset);
        // Ten seconds' worth of cycles off: not matched.
        let w3 = s.synchronize(
            Some((1 << 40) + 20 * 2_000_000_000),
            9_000_000,
            2_000_300,
            khz,
            false,
            0,
        );
        assert!(!w3.matched);
        // An unstable host TSC adds the elapsed time instead of reusing the offset.
        let mut s = TscSync::default();
        s.synchronize(None, 0, 0, khz, true, 0);
        let w = s.synchronize(None, 4_000, 1_000, khz, true, 0);
        assert!(w.matched);
        assert_eq!(w.offset, 2_000u64.wrapping_sub(4_000));
    }
}
