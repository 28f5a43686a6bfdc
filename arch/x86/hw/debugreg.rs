// SPDX-License-Identifier: GPL-2.0-only
//! Debug registers and guest debugging (upstream asm/debugreg.h, the DR6/DR7
//! bits of asm/kvm_host.h, and the pure parts of regs.c/x86.c that use them).

/// DR6 B0-B3: which breakpoint hit (upstream DR_TRAP_BITS).
pub const DR_TRAP_BITS: u64 = 0xf;
/// DR6 bit 11: bus-lock detected (active low).
pub const DR6_BUS_LOCK: u64 = 1 << 11;
/// DR6 BD: the #DB is a general-detect fault (a MOV DR with DR7.GD set).
pub const DR6_BD: u64 = 1 << 13;
/// DR6 BS: the #DB is a single-step trap.
pub const DR6_BS: u64 = 1 << 14;
/// DR6 bit 16: RTM (active low).
pub const DR6_RTM: u64 = 1 << 16;
/// The fixed-1 and active-low bits of DR6: its reset value, and the value KVM runs
/// the guest with so that a #DB's cause can be read exactly.
pub const DR6_ACTIVE_LOW: u64 = 0xffff_0ff0;
/// The DR6 bits software can change.
pub const DR6_VOLATILE: u64 = 0x0001_e80f;
pub const DR6_FIXED_1: u64 = DR6_ACTIVE_LOW & !DR6_VOLATILE;
/// DR6 bit 12 is "enabled breakpoint" in a #DB payload (VMX's pending debug
/// exceptions format) but reserved, zero, in DR6.
const DR6_PAYLOAD_ENABLED_BP: u64 = 1 << 12;

/// DR7 bit 10 always reads as 1; DR7's reset value.
pub const DR7_FIXED_1: u64 = 0x400;
/// DR7 GD: MOV DR faults with #DB (DR6.BD).
pub const DR7_GD: u64 = 1 << 13;
/// L0-3/G0-3: some breakpoint is enabled.
pub const DR7_BP_EN_MASK: u64 = 0xff;
/// The DR7 bits software can change.
pub const DR7_VOLATILE: u64 = 0xffff_2bff;

/// DR6/DR7 writes with bits 63:32 set are #GP (kvm_dr6_valid(), kvm_dr7_valid()).
pub fn dr6_valid(v: u64) -> bool {
    v >> 32 == 0
}

pub fn dr7_valid(v: u64) -> bool {
    v >> 32 == 0
}

/// DR7 R/W type of an instruction breakpoint.
pub const BP_TYPE_EXEC: u32 = 0;

/// kvm_vcpu_check_hw_bp(): the DR6 B0-B3 bits of the enabled breakpoints in `dr7`
/// whose type is `ty` (R/W and LEN bits as one nibble) and address is `addr`.
pub fn kvm_vcpu_check_hw_bp(addr: u64, ty: u32, dr7: u64, db: &[u64; 4]) -> u64 {
    let mut dr6 = 0;
    for (i, &a) in db.iter().enumerate() {
        let enable = (dr7 >> (2 * i)) & 3;
        let rwlen = (dr7 >> (16 + 4 * i)) & 0xf;
        if enable != 0 && rwlen == u64::from(ty) && a == addr {
            dr6 |= 1 << i;
        }
    }
    dr6
}

/// kvm_deliver_exception_payload() for #DB: the guest's DR6 after a #DB whose
/// cause is `payload` (active-high bits, B0-B3 included).
pub fn deliver_db_payload(dr6: u64, payload: u64) -> u64 {
    // "Certain debug exceptions may clear bit 0-3. The remaining contents of the
    // DR6 register are never cleared by the processor."
    let mut dr6 = (dr6 & !DR_TRAP_BITS) | DR6_ACTIVE_LOW | payload;
    // Active-low bits are cleared by a 1 in the payload.
    dr6 ^= payload & DR6_ACTIVE_LOW;
    dr6 & !DR6_PAYLOAD_ENABLED_BP
}

/// kvm_set_dr() for DR6: the volatile bits, the rest fixed (RTM and bus-lock
/// detection are not offered to guests, so those bits read as 1).
pub fn dr6_write_value(v: u64) -> u64 {
    (v & DR6_VOLATILE) | DR6_FIXED_1 | DR6_RTM | DR6_BUS_LOCK
}

/// kvm_set_dr() for DR7: the volatile bits, bit 10 set.
pub fn dr7_write_value(v: u64) -> u64 {
    (v & DR7_VOLATILE) | DR7_FIXED_1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hw_bp_matches_enabled_exec_breakpoints_only() {
        let db = [0x1000, 0x2000, 0x1000, 0x1000];
        // DR0 local-enabled exec, DR2 global-enabled exec, DR3 enabled as write.
        let dr7 = DR7_FIXED_1 | 1 << 0 | 1 << 5 | 1 << 6 | 0x1 << 28;
        assert_eq!(kvm_vcpu_check_hw_bp(0x1000, BP_TYPE_EXEC, dr7, &db), 0b0101);
        // Without DR0: DR2 (G2) alone; DR3 (L3) matches a write only.
        let dr7 = DR7_FIXED_1 | 1 << 5 | 1 << 6 | 0x1 << 28;
        assert_eq!(kvm_vcpu_check_hw_bp(0x1000, BP_TYPE_EXEC, dr7, &db), 0b0100);
        assert_eq!(kvm_vcpu_check_hw_bp(0x1000, 1, dr7, &db), 0b1000);
        assert_eq!(kvm_vcpu_check_hw_bp(0x3000, BP_TYPE_EXEC, dr7, &db), 0);
        // Nothing enabled: nothing matches.
        assert_eq!(
            kvm_vcpu_check_hw_bp(0x1000, BP_TYPE_EXEC, DR7_FIXED_1, &db),
            0
        );
    }

    #[test]
    fn db_payload_sets_active_high_and_clears_old_trap_bits() {
        // Single step from the reset value: BS set, B0-3 clear.
        assert_eq!(deliver_db_payload(DR6_ACTIVE_LOW, DR6_BS), 0xffff_4ff0);
        // An old B1 goes, a new B0 comes.
        assert_eq!(deliver_db_payload(DR6_ACTIVE_LOW | 2, 1), 0xffff_0ff1);
        // Active-low RTM in the payload clears DR6.RTM; bit 12 never sticks.
        assert_eq!(
            deliver_db_payload(DR6_ACTIVE_LOW, DR6_RTM | DR6_PAYLOAD_ENABLED_BP),
            0xfffe_0ff0
        );
        // BS stays from an earlier #DB (only B0-3 are cleared).
        assert_eq!(deliver_db_payload(0xffff_4ff0, DR6_BD), 0xffff_6ff0);
    }

    #[test]
    fn dr_write_values_and_validity() {
        assert_eq!(dr6_write_value(0), DR6_ACTIVE_LOW);
        // Bit 12 is reserved: it reads as 0.
        assert_eq!(dr6_write_value(0xffff_ffff), 0xffff_efff);
        assert_eq!(dr7_write_value(0), DR7_FIXED_1);
        assert_eq!(dr7_write_value(0xffff_ffff), 0xffff_2fff);
        assert!(dr6_valid(0xffff_ffff) && !dr6_valid(1 << 32));
        assert!(dr7_valid(0xffff_ffff) && !dr7_valid(1 << 40));
    }
}
