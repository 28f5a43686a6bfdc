//! Local APIC model, as KVM virtualizes it (upstream arch/x86/kvm/lapic.c).
//!
//! About 1,300 lines of code plus the host tests, in one file as upstream's lapic.c:
//! the register page, the timer and the latched events are one state machine that
//! every register write can touch; split, each part would reach into the others.
//!
//! Pure logic: the 1 KiB register page in the `struct kvm_lapic_state` layout, the
//! APIC base MSR, the timer (expressed in absolute host nanoseconds; the caller owns
//! the host timer) and the latched NMI/SMI/INIT/SIPI events. Routing a message to
//! other vCPUs, kicking them and the IOAPIC are left to the caller through [`Action`].
//!
//! Differences from upstream that are a matter of modelling, not behaviour: no APICv,
//! posted interrupts, PV EOI, Hyper-V SynIC or hv-timer paths; no adaptive timer
//! advance; the ICR is kept split (ICR2 at 0x310 holds the x2APIC high half, as with
//! SVM's `x2apic_icr_is_split`), which is what userspace sees either way.
//!
//! One file of ~1,000 lines of code (plus its tests), as upstream's lapic.c is one:
//! the registers, the timer and the delivery rules read each other's state, and a
//! split would only spread one register page over several files.

use super::msr_index::MSR_IA32_TSC_DEADLINE;

pub const APIC_DEFAULT_BASE: u64 = 0xfee0_0000;
pub const MSR_APICBASE_BSP: u64 = 1 << 8;
pub const MSR_APICBASE_X2APIC: u64 = 1 << 10;
pub const MSR_APICBASE_ENABLE: u64 = 1 << 11;
/// `struct kvm_lapic_state`: KVM_APIC_REG_SIZE.
pub const STATE_SIZE: usize = 1024;
/// APIC_BUS_CYCLE_NS_DEFAULT: a 1 GHz bus unless the VM asks otherwise.
pub const APIC_BUS_CYCLE_NS_DEFAULT: u64 = 1;
/// The largest timer count times the largest divider (TDCR 128): bus cycles that
/// long must not overflow in nanoseconds (KVM_CAP_X86_APIC_BUS_CYCLES_NS's bound).
pub const APIC_MAX_BUS_CYCLES: u64 = u32::MAX as u64 * 128;

/// Whether KVM_CAP_X86_APIC_BUS_CYCLES_NS accepts `ns` (kvm_vm_ioctl_enable_cap()).
pub fn valid_bus_cycle_ns(ns: u64) -> bool {
    ns != 0 && APIC_MAX_BUS_CYCLES.checked_mul(ns).is_some()
}

/// x2APIC MSRs are 0x800..=0x8ff.
pub const X2APIC_MSR_BASE: u32 = 0x800;
/// `source_id` for [`Lapic::matches`] when the message comes from a device (IOAPIC,
/// MSI) rather than an APIC: upstream kvm_apic_mda()'s `source == NULL`. Never a
/// vCPU id (it is the x2APIC broadcast address).
pub const NO_SOURCE: u32 = u32::MAX;

/// Delivery modes (ICR / LVT / MSI bits 10:8).
pub mod delivery {
    pub const FIXED: u8 = 0;
    pub const LOWEST: u8 = 1;
    pub const SMI: u8 = 2;
    /// APIC_DM_REMRD, which KVM reuses for the PV "kick CPU" hypercall.
    pub const REMRD: u8 = 3;
    pub const NMI: u8 = 4;
    pub const INIT: u8 = 5;
    pub const SIPI: u8 = 6;
    pub const EXTINT: u8 = 7;
}

/// Register offsets in the APIC page (asm/apicdef.h).
pub mod reg {
    pub const ID: u32 = 0x20;
    pub const LVR: u32 = 0x30;
    pub const TASKPRI: u32 = 0x80;
    pub const ARBPRI: u32 = 0x90;
    pub const PROCPRI: u32 = 0xa0;
    pub const EOI: u32 = 0xb0;
    pub const LDR: u32 = 0xd0;
    pub const DFR: u32 = 0xe0;
    pub const SPIV: u32 = 0xf0;
    pub const ISR: u32 = 0x100;
    pub const TMR: u32 = 0x180;
    pub const IRR: u32 = 0x200;
    pub const ESR: u32 = 0x280;
    pub const LVTCMCI: u32 = 0x2f0;
    pub const ICR: u32 = 0x300;
    pub const ICR2: u32 = 0x310;
    pub const LVTT: u32 = 0x320;
    pub const LVTTHMR: u32 = 0x330;
    pub const LVTPC: u32 = 0x340;
    pub const LVT0: u32 = 0x350;
    pub const LVT1: u32 = 0x360;
    pub const LVTERR: u32 = 0x370;
    pub const TMICT: u32 = 0x380;
    pub const TMCCT: u32 = 0x390;
    pub const TDCR: u32 = 0x3e0;
    pub const SELF_IPI: u32 = 0x3f0;
}

use reg::*;

const APIC_VERSION: u32 = 0x14;
const LVR_DIRECTED_EOI: u32 = 1 << 24;
const SPIV_APIC_ENABLED: u32 = 1 << 8;
const SPIV_DIRECTED_EOI: u32 = 1 << 12;
const DFR_FLAT: u32 = 0xffff_ffff;
const DFR_CLUSTER: u32 = 0x0fff_ffff;
const LDR_MASK: u32 = 0xff00_0000;

const VECTOR_MASK: u32 = 0xff;
const MODE_MASK: u32 = 0x700;
const ICR_BUSY: u32 = 1 << 12;
const ICR_DEST_LOGICAL: u32 = 1 << 11;
const ICR_ASSERT: u32 = 1 << 14;
const ICR_LEVELTRIG: u32 = 1 << 15;
const ICR_SHORT_SHIFT: u32 = 18;
const ICR_DEST_SELF: u32 = 1 << ICR_SHORT_SHIFT;
// __kvm_x2apic_icr_write(): X2APIC_ICR_RESERVED_BITS.
const X2APIC_ICR_RESERVED: u64 = 0xfff0_0000 | 0x3_0000 | 1 << 13;

const LVT_MASKED: u32 = 1 << 16;
const LVT_LEVEL_TRIGGER: u32 = 1 << 15;
const LVT_REMOTE_IRR: u32 = 1 << 14;
const LVT_INPUT_POLARITY: u32 = 1 << 13;
const LVT_SEND_PENDING: u32 = 1 << 12;
const LVT_MASK: u32 = LVT_MASKED | LVT_SEND_PENDING | VECTOR_MASK;
const LINT_MASK: u32 =
    LVT_MASK | MODE_MASK | LVT_INPUT_POLARITY | LVT_REMOTE_IRR | LVT_LEVEL_TRIGGER;
// apic_lvt_mask[], indexed like enum lapic_lvt_entry (the timer mode bits are added
// at runtime from timer_mode_mask).
const LVT_WRITE_MASK: [u32; 7] = [
    LVT_MASK,
    LVT_MASK | MODE_MASK,
    LVT_MASK | MODE_MASK,
    LINT_MASK,
    LINT_MASK,
    LVT_MASK,
    LVT_MASK | MODE_MASK,
];
const LVT_CMCI_INDEX: u32 = 6;
/// Upstream kvm_apic_calc_nr_lvt_entries() without MCG_CMCI_P (KVM's default mcg_cap).
const NR_LVT_DEFAULT: u32 = 6;

const TIMER_ONESHOT: u32 = 0;
const TIMER_PERIODIC: u32 = 1 << 17;
const TIMER_TSCDEADLINE: u32 = 2 << 17;

/// Upstream min_timer_period_us (200) default: periodic timers are clamped to it.
const MIN_TIMER_PERIOD_NS: u64 = 200_000;

const APIC_BROADCAST: u32 = 0xff;
const X2APIC_BROADCAST: u32 = 0xffff_ffff;

/// An interrupt message as it travels between APICs (upstream struct kvm_lapic_irq).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Irq {
    pub vector: u8,
    pub delivery_mode: u8,
    pub dest_mode_logical: bool,
    /// Assert (true) / de-assert.
    pub level: bool,
    /// Level-triggered (true) or edge.
    pub trig_level: bool,
    /// 0 none, 1 self, 2 all including self, 3 all excluding self.
    pub shorthand: u8,
    pub dest_id: u32,
    pub msi_redir_hint: bool,
}

impl Irq {
    /// Decodes an ICR value (upstream kvm_icr_to_lapic_irq): the destination is ICR2
    /// bits 31:24 in xAPIC mode, all 32 high bits in x2APIC mode.
    pub fn from_icr(low: u32, high: u32, x2apic: bool) -> Self {
        Irq {
            vector: (low & VECTOR_MASK) as u8,
            delivery_mode: ((low & MODE_MASK) >> 8) as u8,
            dest_mode_logical: low & ICR_DEST_LOGICAL != 0,
            level: low & ICR_ASSERT != 0,
            trig_level: low & ICR_LEVELTRIG != 0,
            shorthand: ((low >> ICR_SHORT_SHIFT) & 3) as u8,
            dest_id: if x2apic { high } else { high >> 24 },
            msi_redir_hint: false,
        }
    }

    /// Lowest-priority arbitration applies (upstream kvm_lowest_prio_delivery).
    pub fn lowest_priority(&self) -> bool {
        self.delivery_mode == delivery::LOWEST || self.msi_redir_hint
    }
}

/// Side effect of a register write the caller (kvm.ko) must carry out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    /// An ICR write: route `Irq` to the vCPUs whose APIC `matches()` (source = this APIC).
    SendIpi(Irq),
    /// An EOI cleared this vector from ISR; `level` if it was level-triggered (TMR set)
    /// so the IOAPIC must be told (upstream kvm_ioapic_update_eoi), unless directed
    /// EOI suppression applies (then `level` is false).
    Eoi {
        vector: u8,
        level: bool,
    },
    /// Timer registers changed: the caller re-reads `next_timer_expiry()` and re-arms
    /// its host timer.
    TimerChanged,
}

/// A #GP the guest must get (e.g. reserved bits, read of a write-only x2APIC MSR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault;

/// Upstream struct kvm_timer, in host ns.
#[derive(Clone, Copy, Debug, Default)]
struct Timer {
    /// LVTT & timer_mode_mask.
    mode: u32,
    /// One-shot/periodic period in ns (0: not running).
    period: u64,
    /// Absolute ns of the current one-shot/periodic expiry; 0 once a one-shot fired.
    target: u64,
    /// TSC-deadline MSR value (0: disarmed).
    tscdeadline: u64,
    /// Host ns equivalent of `tscdeadline`, to re-arm it on KVM_SET_LAPIC.
    deadline_ns: u64,
    /// The host timer (upstream's hrtimer): when `timer_poll` must next run.
    armed: Option<u64>,
}

/// One vCPU's local APIC.
#[derive(Clone, Debug)]
pub struct Lapic {
    /// The register page: offset `o` is `regs[o >> 2]`.
    regs: [u32; 256],
    vcpu_id: u32,
    /// This vCPU is the VM's boot CPU (kvm->arch.bsp_vcpu_id).
    reset_bsp: bool,
    base: u64,
    tsc_khz: u32,
    nr_lvt: u32,
    x2apic_cap: bool,
    directed_eoi_cap: bool,
    /// Whether the SPIV suppress-EOI-broadcast bit takes effect (upstream
    /// kvm_lapic_suppress_eoi_broadcast()'s mode: always, never, or, quirked, only
    /// with the in-kernel IOAPIC).
    honor_suppress_eoi: bool,
    timer_mode_mask: u32,
    broadcast_quirk_disabled: bool,
    divide_count: u32,
    /// KVM_CAP_X86_APIC_BUS_CYCLES_NS: the length of one bus cycle, the unit the
    /// timer counts in before the divider.
    bus_cycle_ns: u64,
    timer: Timer,
    nmi_pending: u32,
    smi_pending: bool,
    pv_unhalt: bool,
    init_pending: bool,
    sipi_pending: bool,
    sipi_vector: u8,
}

/// Index of the register at `offset` in the page (masked: always in range).
fn idx(offset: u32) -> usize {
    (offset >> 2) as usize & 0xff
}

/// upstream kvm_apic_calc_x2apic_ldr().
fn x2apic_ldr(id: u32) -> u32 {
    ((id >> 4) << 16) | (1 << (id & 0xf))
}

/// upstream APIC_LVTx().
fn lvt_reg(index: u32) -> u32 {
    if index == LVT_CMCI_INDEX {
        LVTCMCI
    } else {
        LVTT + 0x10 * index
    }
}

fn len_mask(len: u32) -> u32 {
    match len {
        0 => 0,
        1..=3 => (1 << (8 * len)) - 1,
        _ => u32::MAX,
    }
}

impl Lapic {
    /// A LAPIC after RESET (upstream kvm_create_lapic + kvm_lapic_reset(vcpu, false)).
    /// `tsc_khz` is the guest TSC frequency (for TSC-deadline conversions).
    ///
    /// Guest capabilities default to x2APIC and TSC-deadline allowed, no directed
    /// EOI; see [`Lapic::set_guest_caps`].
    pub fn new(vcpu_id: u32, tsc_khz: u32) -> Self {
        Self::with_reset_bsp(vcpu_id, tsc_khz, vcpu_id == 0)
    }

    /// As [`Lapic::new`] for a VM whose boot CPU (KVM_SET_BOOT_CPU_ID) is or is
    /// not this vCPU.
    pub fn with_reset_bsp(vcpu_id: u32, tsc_khz: u32, reset_bsp: bool) -> Self {
        let mut apic = Lapic {
            regs: [0; 256],
            vcpu_id,
            reset_bsp,
            // kvm_create_lapic() stuffs ENABLE; RESET sets the full value below.
            base: MSR_APICBASE_ENABLE,
            tsc_khz,
            nr_lvt: NR_LVT_DEFAULT,
            x2apic_cap: true,
            directed_eoi_cap: false,
            honor_suppress_eoi: true,
            timer_mode_mask: TIMER_PERIODIC | TIMER_TSCDEADLINE,
            broadcast_quirk_disabled: false,
            divide_count: 2,
            bus_cycle_ns: APIC_BUS_CYCLE_NS_DEFAULT,
            timer: Timer::default(),
            nmi_pending: 0,
            smi_pending: false,
            pv_unhalt: false,
            init_pending: false,
            sipi_pending: false,
            sipi_vector: 0,
        };
        apic.reset(false);
        apic
    }

    /// INIT (upstream kvm_lapic_reset(vcpu, true)): registers reset, the base MSR and
    /// the APIC ID kept. The timer is stopped (the caller re-reads
    /// `next_timer_expiry()`); latched INIT/SIPI/NMI are left to the caller.
    pub fn init(&mut self) {
        self.reset(true);
    }

    /// Guest CPUID-derived state (upstream kvm_vcpu_after_set_cpuid: the x2APIC bit
    /// of the base MSR is reserved without CPUID x2APIC, LVTT timer_mode_mask,
    /// kvm_apic_set_version's directed-EOI bit, which also needs x2APIC).
    pub fn set_guest_caps(&mut self, x2apic: bool, tsc_deadline: bool, directed_eoi: bool) {
        self.x2apic_cap = x2apic;
        self.directed_eoi_cap = directed_eoi;
        self.timer_mode_mask = if tsc_deadline {
            TIMER_PERIODIC | TIMER_TSCDEADLINE
        } else {
            TIMER_PERIODIC
        };
        self.update_version();
    }

    /// MCG_CAP.CMCI_P changed (upstream kvm_apic_after_set_mcg_cap): LVT CMCI exists
    /// iff set; a new entry starts masked.
    pub fn set_cmci(&mut self, cmci: bool) {
        let nr = if cmci {
            NR_LVT_DEFAULT + 1
        } else {
            NR_LVT_DEFAULT
        };
        if nr == self.nr_lvt {
            return;
        }
        for i in self.nr_lvt..nr {
            self.set_reg(lvt_reg(i), LVT_MASKED);
        }
        self.nr_lvt = nr;
        self.update_version();
    }

    /// KVM_CAP_X2APIC_API's KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK.
    pub fn set_broadcast_quirk_disabled(&mut self, disabled: bool) {
        self.broadcast_quirk_disabled = disabled;
    }

    /// Guest TSC frequency changed (KVM_SET_TSC_KHZ); applies to the next
    /// TSC-deadline write.
    pub fn set_tsc_khz(&mut self, tsc_khz: u32) {
        self.tsc_khz = tsc_khz;
    }

    pub fn vcpu_id(&self) -> u32 {
        self.vcpu_id
    }

    /// Raw register at `offset` (0..0x400) of the register page.
    pub fn reg(&self, offset: u32) -> u32 {
        self.regs[idx(offset)]
    }

    fn set_reg(&mut self, offset: u32, val: u32) {
        self.regs[idx(offset)] = val;
    }

    /// The APIC ID this APIC answers to in physical mode: the x2APIC ID (= vCPU id)
    /// in x2APIC mode, else the xAPIC ID register bits 31:24.
    pub fn apic_id(&self) -> u32 {
        if self.x2apic_mode() {
            self.vcpu_id
        } else {
            self.reg(ID) >> 24
        }
    }

    // ---- vector bitmaps (IRR/ISR/TMR) ----

    fn vec_off(base: u32, vector: u8) -> u32 {
        base + ((u32::from(vector) >> 5) << 4)
    }

    fn test_vec(&self, base: u32, vector: u8) -> bool {
        self.reg(Self::vec_off(base, vector)) & (1 << (vector & 31)) != 0
    }

    fn set_vec(&mut self, base: u32, vector: u8, on: bool) {
        let off = Self::vec_off(base, vector);
        let bit = 1 << (vector & 31);
        let v = self.reg(off);
        self.set_reg(off, if on { v | bit } else { v & !bit });
    }

    /// upstream apic_find_highest_vector().
    fn highest_vec(&self, base: u32) -> Option<u8> {
        (0..8u32).rev().find_map(|i| {
            let r = self.reg(base + i * 0x10);
            (r != 0).then(|| (i * 32 + 31 - r.leading_zeros()) as u8)
        })
    }

    // ---- reset, base MSR, mode ----

    fn is_reset_bsp(&self) -> bool {
        // kvm_vcpu_is_reset_bsp(): the VM's bsp_vcpu_id (0 unless set).
        self.reset_bsp
    }

    /// upstream kvm_lapic_reset().
    fn reset(&mut self, init_event: bool) {
        if !init_event {
            let mut base = APIC_DEFAULT_BASE | MSR_APICBASE_ENABLE;
            if self.is_reset_bsp() {
                base |= MSR_APICBASE_BSP;
            }
            self.apply_base(base);
        }
        self.timer.armed = None;
        if !init_event {
            self.set_reg(ID, (self.vcpu_id & 0xff) << 24);
        }
        self.update_version();
        for i in 0..self.nr_lvt {
            self.set_reg(lvt_reg(i), LVT_MASKED);
        }
        self.update_lvtt();
        // KVM_X86_QUIRK_LINT0_REENABLED (a default quirk): the BSP's LINT0 is ExtINT.
        if self.is_reset_bsp() {
            self.set_reg(LVT0, u32::from(delivery::EXTINT) << 8);
        }
        self.set_reg(DFR, DFR_FLAT);
        self.set_reg(SPIV, 0xff);
        self.set_reg(TASKPRI, 0);
        if !self.x2apic_mode() {
            self.set_reg(LDR, 0);
        }
        self.set_reg(ESR, 0);
        self.set_reg(ICR, 0);
        self.set_reg(ICR2, 0);
        self.set_reg(TDCR, 0);
        self.set_reg(TMICT, 0);
        for i in 0..8 {
            self.set_reg(IRR + 0x10 * i, 0);
            self.set_reg(ISR + 0x10 * i, 0);
            self.set_reg(TMR + 0x10 * i, 0);
        }
        self.update_divide_count();
        self.timer = Timer {
            mode: self.timer.mode,
            ..Timer::default()
        };
        self.update_ppr();
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    /// upstream __kvm_apic_set_base(): the ID registers follow enable/x2APIC changes.
    fn apply_base(&mut self, value: u64) {
        let old = self.base;
        self.base = value;
        let changed = old ^ value;
        if changed & MSR_APICBASE_ENABLE != 0 && value & MSR_APICBASE_ENABLE != 0 {
            self.set_reg(ID, (self.vcpu_id & 0xff) << 24);
        }
        if changed & MSR_APICBASE_X2APIC != 0 {
            if value & MSR_APICBASE_X2APIC != 0 {
                self.set_reg(ID, self.vcpu_id);
                self.set_reg(LDR, x2apic_ldr(self.vcpu_id));
            } else if value & MSR_APICBASE_ENABLE != 0 {
                self.set_reg(ID, (self.vcpu_id & 0xff) << 24);
            }
        }
    }

    /// Writes MSR_IA32_APICBASE (upstream kvm_apic_set_base): reserved bits (at and
    /// above `maxphyaddr`, bits 0-7 and 9, x2APIC without CPUID x2APIC), x2APIC
    /// without enable, and — unless `host_initiated` — x2APIC -> xAPIC and
    /// disabled -> x2APIC are a Fault.
    pub fn set_base(
        &mut self,
        value: u64,
        host_initiated: bool,
        maxphyaddr: u32,
    ) -> Result<(), Fault> {
        if self.base == value {
            return Ok(());
        }
        let mut reserved = u64::MAX.checked_shl(maxphyaddr).unwrap_or(0) | 0x2ff;
        if !self.x2apic_cap {
            reserved |= MSR_APICBASE_X2APIC;
        }
        let mode = |v: u64| v & (MSR_APICBASE_ENABLE | MSR_APICBASE_X2APIC);
        let (old_mode, new_mode) = (mode(self.base), mode(value));
        if value & reserved != 0 || new_mode == MSR_APICBASE_X2APIC {
            return Err(Fault);
        }
        if !host_initiated {
            let x2 = MSR_APICBASE_ENABLE | MSR_APICBASE_X2APIC;
            if old_mode == x2 && new_mode == MSR_APICBASE_ENABLE {
                return Err(Fault);
            }
            if old_mode == 0 && new_mode == x2 {
                return Err(Fault);
            }
        }
        self.apply_base(value);
        Ok(())
    }

    pub fn hw_enabled(&self) -> bool {
        self.base & MSR_APICBASE_ENABLE != 0
    }

    pub fn sw_enabled(&self) -> bool {
        self.reg(SPIV) & SPIV_APIC_ENABLED != 0
    }

    /// upstream apic_enabled(): accepts fixed interrupts.
    fn enabled(&self) -> bool {
        self.hw_enabled() && self.sw_enabled()
    }

    pub fn x2apic_mode(&self) -> bool {
        self.base & MSR_APICBASE_X2APIC != 0
    }

    /// The MMIO window currently decoded (None when hw-disabled or in x2APIC mode).
    pub fn mmio_base(&self) -> Option<u64> {
        (self.hw_enabled() && !self.x2apic_mode()).then_some(self.base & !0xfff)
    }

    /// upstream kvm_apic_set_version().
    fn update_version(&mut self) {
        let mut v = APIC_VERSION | ((self.nr_lvt - 1) << 16);
        if self.x2apic_cap && self.directed_eoi_cap {
            v |= LVR_DIRECTED_EOI;
        }
        self.set_reg(LVR, v);
    }

    /// The guest set SPIV "suppress EOI broadcast" and the VM honors it:
    /// level-triggered EOIs are not broadcast to the IOAPIC (upstream
    /// kvm_lapic_suppress_eoi_broadcast()).
    pub fn suppress_eoi_broadcast(&self) -> bool {
        self.honor_suppress_eoi && self.reg(SPIV) & SPIV_DIRECTED_EOI != 0
    }

    /// KVM_X2APIC_{ENABLE,DISABLE}_SUPPRESS_EOI_BROADCAST, or the quirk: whether
    /// the SPIV bit takes effect.
    pub fn set_honor_suppress_eoi(&mut self, honor: bool) {
        self.honor_suppress_eoi = honor;
    }

    // ---- priorities ----

    fn compute_ppr(&self) -> u32 {
        // __apic_update_ppr()
        let tpr = self.reg(TASKPRI);
        let isrv = self.highest_vec(ISR).map_or(0, u32::from);
        if (tpr & 0xf0) >= (isrv & 0xf0) {
            tpr & 0xff
        } else {
            isrv & 0xf0
        }
    }

    fn update_ppr(&mut self) {
        let ppr = self.compute_ppr();
        self.set_reg(PROCPRI, ppr);
    }

    fn set_tpr(&mut self, tpr: u32) {
        self.set_reg(TASKPRI, tpr);
        self.update_ppr();
    }

    /// CR8 (upstream kvm_lapic_get_cr8).
    pub fn cr8(&self) -> u64 {
        u64::from(self.reg(TASKPRI) & 0xf0) >> 4
    }

    /// kvm_lapic_sync_to_vapic()'s word for the VAPIC page: TPR, the highest
    /// in-service vector's priority class (bits 15:12), the highest requested
    /// vector (bits 31:24).
    pub fn vapic_word(&self) -> u32 {
        let tpr = self.reg(TASKPRI) & 0xff;
        let isr = self.highest_vec(ISR).map_or(0, u32::from);
        let irr = self.highest_vec(IRR).map_or(0, u32::from);
        tpr | (isr & 0xf0) << 8 | irr << 24
    }

    /// kvm_lapic_sync_from_vapic(): the TPR the guest wrote in the VAPIC page.
    pub fn set_vapic_tpr(&mut self, tpr: u8) {
        self.set_tpr(tpr.into());
    }

    /// MOV to CR8 (upstream kvm_lapic_set_tpr).
    pub fn set_cr8(&mut self, cr8: u64) {
        self.set_tpr(((cr8 & 0xf) as u32) << 4);
    }

    // ---- register reads ----

    /// upstream kvm_lapic_readable_reg_mask(): bit n = register at offset n << 4.
    fn readable_mask(&self) -> u64 {
        let bit = |r: u32| 1u64 << (r >> 4);
        let regs8 = |r: u32| bit(r) * 0xff;
        let mut m = bit(ID)
            | bit(LVR)
            | bit(TASKPRI)
            | bit(PROCPRI)
            | bit(LDR)
            | bit(SPIV)
            | regs8(ISR)
            | regs8(TMR)
            | regs8(IRR)
            | bit(ESR)
            | bit(ICR)
            | bit(LVTT)
            | bit(LVTTHMR)
            | bit(LVTPC)
            | bit(LVT0)
            | bit(LVT1)
            | bit(LVTERR)
            | bit(TMICT)
            | bit(TMCCT)
            | bit(TDCR);
        if self.nr_lvt > LVT_CMCI_INDEX {
            m |= bit(LVTCMCI);
        }
        if !self.x2apic_mode() {
            m |= bit(ARBPRI) | bit(DFR) | bit(ICR2);
        }
        m
    }

    /// upstream apic_get_tmcct().
    fn tmcct(&self, now_ns: u64) -> u32 {
        let period = self.timer.period;
        if self.reg(TMICT) == 0 || period == 0 {
            return 0;
        }
        let remaining = self.timer.target.saturating_sub(now_ns) % period;
        let count = remaining
            / self
                .bus_cycle_ns
                .saturating_mul(u64::from(self.divide_count))
                .max(1);
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// upstream __apic_read() (PPR is kept current, so no update is needed).
    fn apic_read(&self, offset: u32, now_ns: u64) -> u32 {
        match offset {
            ARBPRI => 0,
            TMCCT => {
                if self.timer.mode == TIMER_TSCDEADLINE {
                    0
                } else {
                    self.tmcct(now_ns)
                }
            }
            _ => self.reg(offset),
        }
    }

    /// upstream kvm_lapic_reg_read(): None where it returns 1.
    fn reg_read(&self, offset: u32, len: u32, now_ns: u64) -> Option<u32> {
        let align = offset & 0xf;
        if align.saturating_add(len) > 4 {
            return None;
        }
        if offset > 0x3f0 || self.readable_mask() & (1u64 << (offset >> 4)) == 0 {
            return None;
        }
        let result = self.apic_read(offset & !0xf, now_ns);
        match len {
            1 | 2 | 4 => Some((result >> (8 * align)) & len_mask(len)),
            // Upstream logs and leaves the buffer alone.
            _ => None,
        }
    }

    /// xAPIC MMIO read of `len` (1, 2, 4) bytes at `offset` in the 4K page (upstream
    /// apic_mmio_read + kvm_lapic_reg_read). All-ones when hw-disabled or in x2APIC
    /// mode (default KVM_X86_QUIRK_LAPIC_MMIO_HOLE); 0 where upstream leaves the
    /// buffer untouched (unreadable register, access crossing a 4-byte boundary).
    pub fn mmio_read(&self, offset: u32, len: u32, now_ns: u64) -> u32 {
        if !self.hw_enabled() || self.x2apic_mode() {
            return len_mask(len);
        }
        self.reg_read(offset, len, now_ns).unwrap_or(0)
    }

    // ---- register writes ----

    fn apply_spiv(&mut self, val: u32) {
        self.set_reg(SPIV, val);
    }

    /// upstream apic_set_eoi() + kvm_ioapic_send_eoi().
    fn set_eoi(&mut self) -> Action {
        let Some(vector) = self.highest_vec(ISR) else {
            return Action::None;
        };
        self.set_vec(ISR, vector, false);
        self.update_ppr();
        let level = self.test_vec(TMR, vector) && !self.suppress_eoi_broadcast();
        Action::Eoi { vector, level }
    }

    fn send_ipi(&self, low: u32, high: u32) -> Action {
        Action::SendIpi(Irq::from_icr(low, high, self.x2apic_mode()))
    }

    /// upstream kvm_lapic_reg_write(): Err where it returns 1.
    fn reg_write(&mut self, offset: u32, val: u32, now_ns: u64) -> Result<Action, Fault> {
        let x2apic = self.x2apic_mode();
        match offset {
            ID => {
                if x2apic {
                    return Err(Fault);
                }
                self.set_reg(ID, (val >> 24) << 24);
            }
            TASKPRI => self.set_tpr(val & 0xff),
            EOI => return Ok(self.set_eoi()),
            LDR => {
                if x2apic {
                    return Err(Fault);
                }
                self.set_reg(LDR, val & LDR_MASK);
            }
            DFR => {
                if x2apic {
                    return Err(Fault);
                }
                self.set_reg(DFR, val | DFR_CLUSTER);
            }
            SPIV => {
                let mut mask = 0x3ff;
                if self.reg(LVR) & LVR_DIRECTED_EOI != 0 {
                    mask |= SPIV_DIRECTED_EOI;
                }
                self.apply_spiv(val & mask);
                if val & SPIV_APIC_ENABLED == 0 {
                    // Software disable masks every LVT.
                    for i in 0..self.nr_lvt {
                        let r = lvt_reg(i);
                        self.set_reg(r, self.reg(r) | LVT_MASKED);
                    }
                    if self.update_lvtt() {
                        return Ok(Action::TimerChanged);
                    }
                }
            }
            ICR => {
                // No delay: the busy bit is never set.
                let val = val & !ICR_BUSY;
                let action = self.send_ipi(val, self.reg(ICR2));
                self.set_reg(ICR, val);
                return Ok(action);
            }
            ICR2 => {
                if x2apic {
                    return Err(Fault);
                }
                self.set_reg(ICR2, val & 0xff00_0000);
            }
            LVTCMCI | LVTTHMR | LVTPC | LVT0 | LVT1 | LVTERR => {
                let index = if offset == LVTCMCI {
                    LVT_CMCI_INDEX
                } else {
                    (offset - LVTT) >> 4
                };
                if index >= self.nr_lvt {
                    return Err(Fault);
                }
                let mut val = val;
                if !self.sw_enabled() {
                    val |= LVT_MASKED;
                }
                let mask = LVT_WRITE_MASK.get(index as usize).copied().unwrap_or(0);
                self.set_reg(offset, val & mask);
            }
            LVTT => {
                let mut val = val;
                if !self.sw_enabled() {
                    val |= LVT_MASKED;
                }
                self.set_reg(LVTT, val & (LVT_MASK | self.timer_mode_mask));
                if self.update_lvtt() {
                    return Ok(Action::TimerChanged);
                }
            }
            TMICT => {
                if self.timer.mode == TIMER_TSCDEADLINE {
                    return Ok(Action::None);
                }
                self.timer.armed = None;
                self.set_reg(TMICT, val);
                self.start_period_timer(now_ns, TMICT);
                return Ok(Action::TimerChanged);
            }
            TDCR => {
                let old = self.divide_count;
                self.set_reg(TDCR, val & 0xb);
                self.update_divide_count();
                if self.divide_count != old && self.timer.period != 0 {
                    self.update_target_expiration(now_ns, old);
                    return Ok(Action::TimerChanged);
                }
            }
            ESR => {
                if x2apic && val != 0 {
                    return Err(Fault);
                }
            }
            SELF_IPI => {
                // x2APIC only; bits 31:8 are reserved.
                if !x2apic || val & !VECTOR_MASK != 0 {
                    return Err(Fault);
                }
                return Ok(self.send_ipi(ICR_DEST_SELF | val, 0));
            }
            _ => return Err(Fault),
        }
        Ok(Action::None)
    }

    /// xAPIC MMIO write of 4 bytes (upstream apic_mmio_write / kvm_lapic_reg_write).
    /// The caller drops writes of other sizes (as upstream), or uses
    /// [`Lapic::mmio_write_sized`]. Ignored when hw-disabled or in x2APIC mode, and
    /// for offsets not 16-byte aligned.
    pub fn mmio_write(&mut self, offset: u32, val: u32, now_ns: u64) -> Action {
        self.mmio_write_sized(offset, 4, val, now_ns)
    }

    /// [`Lapic::mmio_write`] with the access size: anything but 4 bytes is ignored.
    pub fn mmio_write_sized(&mut self, offset: u32, len: u32, val: u32, now_ns: u64) -> Action {
        if !self.hw_enabled() || self.x2apic_mode() || offset >= 0x1000 {
            return Action::None;
        }
        // SDM: registers are 16-byte aligned and accessed as 32 bits.
        if len != 4 || offset & 0xf != 0 {
            return Action::None;
        }
        self.reg_write(offset & 0xff0, val, now_ns)
            .unwrap_or(Action::None)
    }

    /// x2APIC MSR (0x800..=0x8ff) and MSR_IA32_TSC_DEADLINE reads (upstream
    /// kvm_x2apic_msr_read, kvm_get_lapic_tscdeadline_msr).
    pub fn read_msr(&self, msr: u32, now_ns: u64, _now_tsc: u64) -> Result<u64, Fault> {
        if msr == MSR_IA32_TSC_DEADLINE {
            if !self.hw_enabled() || self.timer.mode != TIMER_TSCDEADLINE {
                return Ok(0);
            }
            return Ok(self.timer.tscdeadline);
        }
        if !(X2APIC_MSR_BASE..=X2APIC_MSR_BASE + 0xff).contains(&msr) || !self.x2apic_mode() {
            return Err(Fault);
        }
        let offset = (msr - X2APIC_MSR_BASE) << 4;
        if offset == ICR {
            return Ok(u64::from(self.reg(ICR)) | u64::from(self.reg(ICR2)) << 32);
        }
        self.reg_read(offset, 4, now_ns).map(u64::from).ok_or(Fault)
    }

    /// x2APIC MSR (0x800..=0x8ff) and MSR_IA32_TSC_DEADLINE writes (upstream
    /// kvm_x2apic_msr_write, kvm_set_lapic_tscdeadline_msr).
    pub fn write_msr(
        &mut self,
        msr: u32,
        val: u64,
        now_ns: u64,
        now_tsc: u64,
    ) -> Result<Action, Fault> {
        if msr == MSR_IA32_TSC_DEADLINE {
            if !self.hw_enabled() || self.timer.mode != TIMER_TSCDEADLINE {
                return Ok(Action::None);
            }
            self.timer.armed = None;
            self.timer.tscdeadline = val;
            self.timer.deadline_ns = 0;
            self.start_tscdeadline(now_ns, now_tsc);
            return Ok(Action::TimerChanged);
        }
        if !(X2APIC_MSR_BASE..=X2APIC_MSR_BASE + 0xff).contains(&msr) || !self.x2apic_mode() {
            return Err(Fault);
        }
        let offset = (msr - X2APIC_MSR_BASE) << 4;
        if offset == ICR {
            // __kvm_x2apic_icr_write(): one 64-bit register.
            if val & X2APIC_ICR_RESERVED != 0 {
                return Err(Fault);
            }
            let low = (val as u32) & !ICR_BUSY;
            let high = (val >> 32) as u32;
            self.set_reg(ICR, low);
            self.set_reg(ICR2, high);
            return Ok(self.send_ipi(low, high));
        }
        // kvm_lapic_msr_write(): bits 63:32 are reserved in all other registers.
        let val = u32::try_from(val).map_err(|_| Fault)?;
        self.reg_write(offset, val, now_ns)
    }

    // ---- destination matching and acceptance ----

    /// The broadcast destination of the current mode (xAPIC 0xff, x2APIC all ones).
    fn broadcast(&self) -> u32 {
        if self.x2apic_mode() {
            X2APIC_BROADCAST
        } else {
            APIC_BROADCAST
        }
    }

    /// upstream kvm_apic_match_physical_addr().
    fn match_physical(&self, mda: u32) -> bool {
        let x2apic = self.x2apic_mode();
        if mda == self.broadcast() {
            return true;
        }
        // Hotplug hack: an ID xAPIC cannot encode matches the x2APIC ID.
        if x2apic || mda > 0xff {
            return mda == self.vcpu_id;
        }
        mda == self.reg(ID) >> 24
    }

    /// upstream kvm_apic_match_logical_addr().
    fn match_logical(&self, mda: u32) -> bool {
        let x2apic = self.x2apic_mode();
        if mda == self.broadcast() {
            return true;
        }
        let ldr = self.reg(LDR);
        if x2apic {
            return (ldr >> 16) == (mda >> 16) && (ldr & mda & 0xffff) != 0;
        }
        let lid = ldr >> 24;
        match self.reg(DFR) {
            DFR_FLAT => lid & mda != 0,
            DFR_CLUSTER => (lid >> 4) == (mda >> 4) && (lid & mda & 0xf) != 0,
            _ => false,
        }
    }

    /// Does this APIC accept `irq` sent by the APIC with id `source_id` (`is_source`:
    /// this APIC is the sender)? Upstream kvm_apic_match_dest(), plus the
    /// kvm_apic_present() filter every upstream caller applies (hw-disabled APICs
    /// receive nothing). Pass [`NO_SOURCE`] for IOAPIC/MSI messages: then dest 0xff
    /// is an x2APIC broadcast for x2APIC-mode targets (kvm_apic_mda's quirk, unless
    /// disabled by KVM_CAP_X2APIC_API). Lowest-priority arbitration among the
    /// matches is the caller's.
    pub fn matches(&self, irq: &Irq, source_id: u32, is_source: bool) -> bool {
        if !self.hw_enabled() {
            return false;
        }
        let ipi = source_id != NO_SOURCE;
        let mda = if !self.broadcast_quirk_disabled
            && !ipi
            && irq.dest_id == APIC_BROADCAST
            && self.x2apic_mode()
        {
            X2APIC_BROADCAST
        } else {
            irq.dest_id
        };
        match irq.shorthand {
            0 if irq.dest_mode_logical => self.match_logical(mda),
            0 => self.match_physical(mda),
            1 => is_source,
            2 => true,
            3 => !is_source,
            _ => false,
        }
    }

    /// Accepts an interrupt addressed to this APIC (upstream __apic_accept_irq).
    /// FIXED/LOWEST set IRR (and TMR per trigger) if the APIC is hw- and
    /// sw-enabled; a level-triggered de-assert is dropped. NMI/SMI/INIT/SIPI/REMRD
    /// are latched for the caller (INIT discards a pending SIPI; SIPI is latched
    /// regardless of state, KVM drops it unless the vCPU waits for SIPI). ExtINT is
    /// not accepted here: the PIC path uses [`Lapic::accepts_pic_interrupts`].
    pub fn accept(&mut self, irq: &Irq) -> bool {
        match irq.delivery_mode {
            delivery::FIXED | delivery::LOWEST => {
                if (irq.trig_level && !irq.level) || !self.enabled() {
                    return false;
                }
                self.set_vec(TMR, irq.vector, irq.trig_level);
                self.set_vec(IRR, irq.vector, true);
                true
            }
            delivery::REMRD => {
                self.pv_unhalt = true;
                true
            }
            delivery::SMI => {
                self.smi_pending = true;
                true
            }
            delivery::NMI => {
                self.nmi_pending = self.nmi_pending.saturating_add(1);
                true
            }
            delivery::INIT => {
                if irq.trig_level && !irq.level {
                    return false;
                }
                // "assumes that there are only KVM_APIC_INIT/SIPI"
                self.init_pending = true;
                self.sipi_pending = false;
                true
            }
            delivery::SIPI => {
                self.sipi_vector = irq.vector;
                self.sipi_pending = true;
                true
            }
            _ => false,
        }
    }

    /// Delivers the local interrupt of LVT register `lvt` (e.g. `reg::LVT0` for the
    /// PIT's NMI watchdog) unless masked (upstream kvm_apic_local_deliver, without
    /// the Intel LVTPC auto-mask).
    pub fn local_deliver(&mut self, lvt: u32) -> bool {
        let r = self.reg(lvt);
        if !self.hw_enabled() || r & LVT_MASKED != 0 {
            return false;
        }
        self.accept(&Irq {
            vector: (r & VECTOR_MASK) as u8,
            delivery_mode: ((r & MODE_MASK) >> 8) as u8,
            level: true,
            trig_level: r & LVT_LEVEL_TRIGGER != 0,
            ..Irq::default()
        })
    }

    /// LINT0 is unmasked in NMI mode (upstream apic_lvt_nmi_mode, the PIT's
    /// vapics_in_nmi_mode).
    pub fn lvt0_in_nmi_mode(&self) -> bool {
        self.reg(LVT0) & (MODE_MASK | LVT_MASKED) == u32::from(delivery::NMI) << 8
    }

    /// Highest-priority IRR vector deliverable now: its priority class is above PPR
    /// and the APIC is hw-enabled (upstream kvm_apic_has_interrupt; like upstream,
    /// vectors already in IRR stay deliverable when software-disabled).
    pub fn pending_interrupt(&self) -> Option<u8> {
        if !self.hw_enabled() {
            return None;
        }
        let ppr = self.compute_ppr();
        self.highest_vec(IRR)
            .filter(|&v| (u32::from(v) & 0xf0) > ppr)
    }

    /// Injection of that vector: IRR -> ISR, PPR raised (upstream
    /// kvm_cpu_get_interrupt's APIC half + kvm_apic_ack_interrupt).
    pub fn ack_interrupt(&mut self) -> Option<u8> {
        let vector = self.pending_interrupt()?;
        self.set_vec(IRR, vector, false);
        self.set_vec(ISR, vector, true);
        self.update_ppr();
        Some(vector)
    }

    /// Takes one pending NMI.
    pub fn take_nmi(&mut self) -> bool {
        let pending = self.nmi_pending != 0;
        self.nmi_pending = self.nmi_pending.saturating_sub(1);
        pending
    }

    /// Takes all pending NMIs (upstream nmi_queued, which process_nmi collapses).
    pub fn take_nmis(&mut self) -> u32 {
        core::mem::take(&mut self.nmi_pending)
    }

    pub fn take_smi(&mut self) -> bool {
        core::mem::take(&mut self.smi_pending)
    }

    /// A PV kick (KVM_HC_KICK_CPU's APIC_DM_REMRD): the vCPU leaves halt.
    pub fn take_pv_unhalt(&mut self) -> bool {
        core::mem::take(&mut self.pv_unhalt)
    }

    /// Takes a latched INIT; the caller resets the vCPU (and calls [`Lapic::init`]).
    pub fn take_init(&mut self) -> bool {
        core::mem::take(&mut self.init_pending)
    }

    /// Takes a latched SIPI's vector; the caller uses it only in wait-for-SIPI
    /// (upstream kvm_apic_accept_events).
    pub fn take_sipi(&mut self) -> Option<u8> {
        core::mem::take(&mut self.sipi_pending).then_some(self.sipi_vector)
    }

    /// upstream kvm_lapic_latched_init().
    pub fn latched_init(&self) -> bool {
        self.init_pending
    }

    /// KVM_SET_VCPU_EVENTS' latched INIT.
    pub fn set_latched_init(&mut self, latched: bool) {
        self.init_pending = latched;
    }

    /// upstream kvm_apic_has_pending_init_or_sipi().
    pub fn has_pending_init_or_sipi(&self) -> bool {
        self.init_pending || self.sipi_pending
    }

    /// The PIC may inject (upstream kvm_apic_accept_pic_intr): the APIC is
    /// hw-disabled, or LINT0 is unmasked in ExtINT mode.
    pub fn accepts_pic_interrupts(&self) -> bool {
        if !self.hw_enabled() {
            return true;
        }
        let lvt0 = self.reg(LVT0);
        lvt0 & LVT_MASKED == 0 && (lvt0 & MODE_MASK) >> 8 == u32::from(delivery::EXTINT)
    }

    // ---- timer ----

    /// upstream update_divide_count(): TDCR bits 3,1:0 -> 2^(n+1), 0b111 -> 1.
    fn update_divide_count(&mut self) {
        let tdcr = self.reg(TDCR) & 0xf;
        let n = ((tdcr & 3) | ((tdcr & 8) >> 1)) + 1;
        self.divide_count = 1 << (n & 7);
    }

    /// upstream tmict_to_ns().
    fn count_to_ns(&self, count: u32) -> u64 {
        u64::from(count)
            .saturating_mul(self.bus_cycle_ns)
            .saturating_mul(u64::from(self.divide_count))
    }

    /// The VM's APIC bus cycle (KVM_CAP_X86_APIC_BUS_CYCLES_NS), set before the
    /// timer runs; 0 is taken as the default.
    pub fn set_bus_cycle_ns(&mut self, ns: u64) {
        self.bus_cycle_ns = if ns == 0 {
            APIC_BUS_CYCLE_NS_DEFAULT
        } else {
            ns
        };
    }

    /// upstream limit_periodic_timer_frequency().
    fn limit_periodic(&mut self) {
        if self.timer.mode == TIMER_PERIODIC
            && self.timer.period != 0
            && self.timer.period < MIN_TIMER_PERIOD_NS
        {
            self.timer.period = MIN_TIMER_PERIOD_NS;
        }
    }

    /// upstream apic_update_lvtt(); true if the mode changed.
    fn update_lvtt(&mut self) -> bool {
        let mode = self.reg(LVTT) & self.timer_mode_mask;
        if mode == self.timer.mode {
            return false;
        }
        if (self.timer.mode == TIMER_TSCDEADLINE) != (mode == TIMER_TSCDEADLINE) {
            self.timer.armed = None;
            self.set_reg(TMICT, 0);
            self.timer.period = 0;
            self.timer.tscdeadline = 0;
            self.timer.deadline_ns = 0;
        }
        self.timer.mode = mode;
        self.limit_periodic();
        true
    }

    fn period_mode(&self) -> bool {
        self.timer.mode == TIMER_ONESHOT || self.timer.mode == TIMER_PERIODIC
    }

    /// upstream __start_apic_timer() for one-shot/periodic (set_target_expiration +
    /// start_sw_period). `count_reg` is TMICT, or TMCCT when restoring state. An
    /// expiry already in the past fires at the next `timer_poll`.
    fn start_period_timer(&mut self, now_ns: u64, count_reg: u32) {
        if !self.period_mode() {
            return;
        }
        self.timer.period = self.count_to_ns(self.reg(TMICT));
        if self.timer.period == 0 {
            self.timer.tscdeadline = 0;
            return;
        }
        self.limit_periodic();
        let mut deadline = self.timer.period;
        if count_reg != TMICT {
            deadline = self.count_to_ns(self.reg(count_reg));
            if deadline == 0 {
                deadline = if self.timer.mode == TIMER_PERIODIC {
                    self.timer.period
                } else {
                    0
                };
            } else if deadline > self.timer.period {
                self.set_reg(count_reg, 0);
                deadline = self.timer.period;
            }
        }
        self.timer.target = now_ns.saturating_add(deadline);
        self.timer.armed = Some(self.timer.target);
    }

    /// upstream start_sw_tscdeadline() (no timer advance): a deadline not in the
    /// future fires at the next `timer_poll`.
    fn start_tscdeadline(&mut self, now_ns: u64, now_tsc: u64) {
        let deadline = self.timer.tscdeadline;
        if deadline == 0 || self.tsc_khz == 0 {
            return;
        }
        let ns = if deadline > now_tsc {
            mul_div(deadline - now_tsc, 1_000_000, u64::from(self.tsc_khz))
        } else {
            0
        };
        let at = now_ns.saturating_add(ns);
        self.timer.deadline_ns = at;
        self.timer.armed = Some(at);
    }

    /// upstream update_target_expiration() + restart_apic_timer(), on a TDCR change:
    /// the time remaining is rescaled to the new divisor.
    fn update_target_expiration(&mut self, now_ns: u64, old_divisor: u32) {
        self.timer.period = self.count_to_ns(self.reg(TMICT));
        self.limit_periodic();
        // Deviation: upstream re-fires a one-shot that already expired (its target
        // is then 0, i.e. "now"); a stopped one-shot timer stays stopped here.
        if self.timer.mode == TIMER_ONESHOT && self.timer.armed.is_none() {
            return;
        }
        let remaining = self.timer.target.saturating_sub(now_ns);
        let scaled = mul_div(
            remaining,
            u64::from(self.divide_count),
            u64::from(old_divisor.max(1)),
        );
        self.timer.target = now_ns.saturating_add(scaled);
        self.timer.armed = None;
        if self.period_mode() && self.timer.period != 0 {
            self.timer.armed = Some(self.timer.target);
        }
    }

    /// When the caller must next call [`Lapic::timer_poll`] (absolute host ns);
    /// may be in the past (poll at once).
    pub fn next_timer_expiry(&self) -> Option<u64> {
        self.timer.armed
    }

    /// If the timer has expired at `now_ns`: deliver the LVTT interrupt (unless
    /// masked or the APIC is disabled), re-arm a periodic timer one period after the
    /// previous target — or at `now_ns` if that is already past, without catching up
    /// (upstream advance_periodic_target_expiration) — and return true.
    pub fn timer_poll(&mut self, now_ns: u64) -> bool {
        let Some(at) = self.timer.armed else {
            return false;
        };
        if now_ns < at {
            return false;
        }
        // apic_timer_fn()
        self.timer.armed = None;
        if self.timer.mode == TIMER_PERIODIC && self.timer.period != 0 {
            let mut next = self.timer.target.saturating_add(self.timer.period);
            if next < now_ns {
                next = now_ns;
            }
            self.timer.target = next;
            self.timer.armed = Some(next);
        }
        // kvm_apic_inject_pending_timer_irqs()
        self.local_deliver(LVTT);
        if self.timer.mode == TIMER_TSCDEADLINE {
            self.timer.tscdeadline = 0;
            self.timer.deadline_ns = 0;
        } else if self.timer.mode == TIMER_ONESHOT {
            self.timer.target = 0;
        }
        true
    }

    // ---- KVM_GET_LAPIC / KVM_SET_LAPIC ----

    /// KVM_GET_LAPIC (upstream kvm_apic_get_state + kvm_apic_state_fixup): the page
    /// with TMCCT computed at `now_ns`; in x2APIC mode the ID is `id << 24` unless
    /// `x2apic_format`.
    pub fn get_state(&self, out: &mut [u8; STATE_SIZE], x2apic_format: bool, now_ns: u64) {
        let mut regs = self.regs;
        regs[idx(TMCCT)] = self.apic_read(TMCCT, now_ns);
        if self.x2apic_mode() && !x2apic_format {
            regs[idx(ID)] = self.vcpu_id << 24;
        }
        for (chunk, r) in out.chunks_exact_mut(4).zip(regs.iter()) {
            for (d, s) in chunk.iter_mut().zip(r.to_le_bytes()) {
                *d = s;
            }
        }
    }

    /// KVM_SET_LAPIC (upstream kvm_apic_set_state + kvm_apic_state_fixup). In x2APIC
    /// mode the ID must equal the vCPU id with `x2apic_format` (else Err, -EINVAL;
    /// SPIV has already been applied then, as upstream) and is ignored without it;
    /// LDR is recomputed. The version is recomputed, and the timer restarted from
    /// the saved current count (the caller re-reads `next_timer_expiry()`).
    pub fn set_state(
        &mut self,
        state: &[u8; STATE_SIZE],
        x2apic_format: bool,
        now_ns: u64,
    ) -> Result<(), Fault> {
        let mut regs = [0u32; 256];
        for (r, chunk) in regs.iter_mut().zip(state.chunks_exact(4)) {
            *r = <[u8; 4]>::try_from(chunk).map_or(0, u32::from_le_bytes);
        }
        self.apply_spiv(regs[idx(SPIV)]);
        if self.x2apic_mode() {
            let id = &mut regs[idx(ID)];
            if x2apic_format {
                if *id != self.vcpu_id {
                    return Err(Fault);
                }
            } else {
                *id = self.vcpu_id;
            }
            regs[idx(LDR)] = x2apic_ldr(self.vcpu_id);
        }
        self.regs = regs;
        self.update_version();
        self.update_ppr();
        self.timer.armed = None;
        self.update_lvtt();
        self.update_divide_count();
        if self.timer.mode == TIMER_TSCDEADLINE {
            if self.timer.tscdeadline != 0 && self.timer.deadline_ns != 0 {
                self.timer.armed = Some(self.timer.deadline_ns);
            }
        } else {
            self.start_period_timer(now_ns, TMCCT);
        }
        self.set_reg(TMCCT, 0);
        Ok(())
    }
}

/// `a * b / d`, saturating, without 128-bit division (which the kernel does not
/// link): exact while `(d - 1) * b` fits in 64 bits (here b <= 10^6, d < 2^32).
pub(crate) fn mul_div(a: u64, b: u64, d: u64) -> u64 {
    let d = d.max(1);
    (a / d)
        .saturating_mul(b)
        .saturating_add((a % d).saturating_mul(b) / d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KHZ: u32 = 3_000_000; // 3 GHz guest TSC
    const PHYS: u32 = 46;
    const XAPIC: u64 = APIC_DEFAULT_BASE | MSR_APICBASE_ENABLE;
    const X2APIC: u64 = XAPIC | MSR_APICBASE_X2APIC;

    /// A software-enabled xAPIC.
    fn enabled(id: u32) -> Lapic {
        let mut a = Lapic::new(id, KHZ);
        assert_eq!(a.mmio_write(SPIV, 0x1ff, 0), Action::None);
        assert!(a.sw_enabled());
        a
    }

    /// A software-enabled APIC in x2APIC mode.
    fn x2(id: u32) -> Lapic {
        let mut a = enabled(id);
        a.set_base(X2APIC, false, PHYS).unwrap();
        a
    }

    fn fixed(vector: u8) -> Irq {
        Irq {
            vector,
            level: true,
            ..Irq::default()
        }
    }

    fn level(vector: u8) -> Irq {
        Irq {
            trig_level: true,
            ..fixed(vector)
        }
    }

    fn irr(a: &Lapic, v: u8) -> bool {
        a.test_vec(IRR, v)
    }

    fn isr(a: &Lapic, v: u8) -> bool {
        a.test_vec(ISR, v)
    }

    fn wrmsr(a: &mut Lapic, off: u32, val: u64) -> Result<Action, Fault> {
        a.write_msr(X2APIC_MSR_BASE + (off >> 4), val, 0, 0)
    }

    fn rdmsr(a: &Lapic, off: u32) -> Result<u64, Fault> {
        a.read_msr(X2APIC_MSR_BASE + (off >> 4), 0, 0)
    }

    #[test]
    fn reset_values() {
        let a = Lapic::new(1, KHZ);
        assert_eq!(a.base(), XAPIC);
        assert!(a.hw_enabled() && !a.x2apic_mode() && !a.sw_enabled());
        assert_eq!(a.mmio_base(), Some(APIC_DEFAULT_BASE));
        assert_eq!(a.reg(ID), 1 << 24);
        assert_eq!(a.apic_id(), 1);
        // Six LVTs without CMCI: max LVT entry 5.
        assert_eq!(a.reg(LVR), 0x0005_0014);
        for r in [LVTT, LVTTHMR, LVTPC, LVT0, LVT1, LVTERR] {
            assert_eq!(a.reg(r), LVT_MASKED, "lvt {r:#x}");
        }
        assert_eq!(a.reg(LVTCMCI), 0);
        assert_eq!(a.reg(DFR), 0xffff_ffff);
        assert_eq!(a.reg(SPIV), 0xff);
        assert_eq!(a.reg(LDR), 0);
        assert_eq!(a.reg(TASKPRI), 0);
        assert_eq!(a.reg(PROCPRI), 0);
        assert_eq!(a.reg(TDCR), 0);
        assert_eq!(a.divide_count, 2);
        assert!(!a.accepts_pic_interrupts());
        assert_eq!(a.next_timer_expiry(), None);
        assert_eq!(a.pending_interrupt(), None);

        // The BSP: BSP flag, LINT0 in ExtINT (KVM_X86_QUIRK_LINT0_REENABLED).
        let b = Lapic::new(0, KHZ);
        assert_eq!(b.base(), XAPIC | MSR_APICBASE_BSP);
        assert_eq!(b.reg(LVT0), 0x700);
        assert!(b.accepts_pic_interrupts());

        // The xAPIC ID is the low 8 bits of the vCPU id.
        assert_eq!(Lapic::new(0x123, KHZ).reg(ID), 0x23 << 24);
    }

    #[test]
    fn vapic_word_and_tpr() {
        let mut a = enabled(1);
        a.accept(&fixed(0x51));
        assert_eq!(a.ack_interrupt(), Some(0x51));
        a.accept(&fixed(0x62));
        a.set_cr8(2);
        assert_eq!(a.vapic_word(), 0x20 | 0x50 << 8 | 0x62 << 24);
        a.set_vapic_tpr(0x37);
        assert_eq!((a.reg(TASKPRI), a.cr8()), (0x37, 3));
    }

    #[test]
    fn cmci_lvt() {
        let mut a = enabled(1);
        assert_eq!(a.mmio_read(LVTCMCI, 4, 0), 0);
        assert_eq!(a.mmio_write(LVTCMCI, 0x30, 0), Action::None);
        assert_eq!(a.reg(LVTCMCI), 0);
        a.set_cmci(true);
        assert_eq!(a.reg(LVR), 0x0006_0014);
        assert_eq!(a.mmio_read(LVTCMCI, 4, 0), LVT_MASKED);
        a.mmio_write(LVTCMCI, 0xffff_ffff, 0);
        assert_eq!(a.reg(LVTCMCI), 0x117ff);
        // INIT masks it with the others.
        a.init();
        assert_eq!(a.reg(LVTCMCI), LVT_MASKED);
    }

    #[test]
    fn mmio_read_sizes_and_holes() {
        let mut a = enabled(0x5a);
        a.mmio_write(TASKPRI, 0x12, 0);
        assert_eq!(a.mmio_read(ID, 4, 0), 0x5a00_0000);
        assert_eq!(a.mmio_read(ID + 3, 1, 0), 0x5a);
        assert_eq!(a.mmio_read(ID + 2, 2, 0), 0x5a00);
        assert_eq!(a.mmio_read(TASKPRI, 1, 0), 0x12);
        // Crossing the 4-byte boundary, a 3-byte read: nothing.
        assert_eq!(a.mmio_read(ID + 1, 4, 0), 0);
        assert_eq!(a.mmio_read(ID + 3, 2, 0), 0);
        assert_eq!(a.mmio_read(ID, 3, 0), 0);
        // Write-only / reserved / beyond the page: nothing.
        a.mmio_write(ARBPRI, 0x55, 0);
        assert_eq!(a.mmio_read(ARBPRI, 4, 0), 0);
        assert_eq!(a.mmio_read(EOI, 4, 0), 0);
        assert_eq!(a.mmio_read(SELF_IPI, 4, 0), 0);
        assert_eq!(a.mmio_read(0xc0, 4, 0), 0);
        assert_eq!(a.mmio_read(0x400, 4, 0), 0);
        assert_eq!(a.mmio_read(LVR, 4, 0), 0x0005_0014);
        assert_eq!(a.mmio_read(DFR, 4, 0), 0xffff_ffff);

        // Hardware-disabled: the page reads as all ones and ignores writes.
        a.set_base(APIC_DEFAULT_BASE, false, PHYS).unwrap();
        assert_eq!(a.mmio_base(), None);
        assert_eq!(a.mmio_read(ID, 4, 0), 0xffff_ffff);
        assert_eq!(a.mmio_read(ID, 1, 0), 0xff);
        assert_eq!(a.mmio_write(TASKPRI, 0x30, 0), Action::None);
        assert_eq!(a.reg(TASKPRI), 0x12);
    }

    #[test]
    fn mmio_write_granularity() {
        let mut a = enabled(1);
        a.mmio_write_sized(TASKPRI, 1, 0x40, 0);
        a.mmio_write_sized(TASKPRI, 2, 0x40, 0);
        a.mmio_write(TASKPRI + 4, 0x40, 0);
        assert_eq!(a.reg(TASKPRI), 0);
        a.mmio_write_sized(TASKPRI, 4, 0x1_0040, 0);
        assert_eq!(a.reg(TASKPRI), 0x40);
        // Outside the page: not ours.
        a.mmio_write(0x1000 + TASKPRI, 0x50, 0);
        assert_eq!(a.reg(TASKPRI), 0x40);
    }

    #[test]
    fn register_write_masks() {
        let mut a = enabled(1);
        a.mmio_write(ID, 0x1234_5678, 0);
        assert_eq!(a.reg(ID), 0x1200_0000);
        assert_eq!(a.apic_id(), 0x12);
        a.mmio_write(LDR, 0x8765_4321, 0);
        assert_eq!(a.reg(LDR), 0x8700_0000);
        a.mmio_write(DFR, 0, 0);
        assert_eq!(a.reg(DFR), 0x0fff_ffff);
        a.mmio_write(ICR2, 0xffff_ffff, 0);
        assert_eq!(a.reg(ICR2), 0xff00_0000);
        // No directed EOI advertised: SPIV bit 12 is not writable.
        a.mmio_write(SPIV, 0xffff_ffff, 0);
        assert_eq!(a.reg(SPIV), 0x3ff);
        for (r, m) in [
            (LVTTHMR, 0x117ff),
            (LVTPC, 0x117ff),
            (LVT0, 0x1f7ff),
            (LVT1, 0x1f7ff),
            (LVTERR, 0x110ff),
            (LVTT, 0x710ff),
        ] {
            a.mmio_write(r, 0xffff_ffff, 0);
            assert_eq!(a.reg(r), m, "lvt {r:#x}");
        }
        a.mmio_write(TDCR, 0xffff_ffff, 0);
        assert_eq!(a.reg(TDCR), 0xb);
        assert_eq!(a.divide_count, 1);
        // Read-only registers ignore MMIO writes.
        a.mmio_write(LVR, 0, 0);
        a.mmio_write(PROCPRI, 0xff, 0);
        assert_eq!(a.reg(LVR), 0x0005_0014);
        assert_eq!(a.reg(PROCPRI), 0);
    }

    #[test]
    fn divide_configuration() {
        let mut a = enabled(1);
        for (tdcr, div) in [
            (0x0, 2),
            (0x1, 4),
            (0x2, 8),
            (0x3, 16),
            (0x8, 32),
            (0x9, 64),
            (0xa, 128),
            (0xb, 1),
        ] {
            a.mmio_write(TDCR, tdcr, 0);
            assert_eq!(a.divide_count, div, "tdcr {tdcr:#x}");
        }
    }

    #[test]
    fn software_disable_masks_lvts() {
        let mut a = enabled(1);
        a.mmio_write(LVT0, 0x700, 0);
        a.mmio_write(LVTT, 0x30, 0);
        assert_eq!(a.reg(LVT0), 0x700);
        a.mmio_write(SPIV, 0xff, 0);
        assert!(!a.sw_enabled());
        assert_eq!(a.reg(LVT0), 0x1_0700);
        assert_eq!(a.reg(LVTT), 0x1_0030);
        // While software-disabled, LVT writes stay masked.
        a.mmio_write(LVT1, 0x400, 0);
        assert_eq!(a.reg(LVT1), 0x1_0400);
        // Fixed interrupts are refused; NMI is not.
        assert!(!a.accept(&fixed(0x40)));
        assert!(!irr(&a, 0x40));
        assert!(a.accept(&Irq {
            delivery_mode: delivery::NMI,
            ..Irq::default()
        }));
        assert!(a.take_nmi());
    }

    #[test]
    fn tpr_ppr_priority() {
        let mut a = enabled(1);
        a.mmio_write(TASKPRI, 0x50, 0);
        assert_eq!(a.reg(PROCPRI), 0x50);
        assert_eq!(a.cr8(), 5);
        assert!(a.accept(&fixed(0x45)));
        assert!(a.accept(&fixed(0x5f)));
        // Class 5 is not above PPR 0x50.
        assert_eq!(a.pending_interrupt(), None);
        assert_eq!(a.ack_interrupt(), None);
        assert!(a.accept(&fixed(0x61)));
        assert_eq!(a.pending_interrupt(), Some(0x61));
        assert_eq!(a.ack_interrupt(), Some(0x61));
        assert!(isr(&a, 0x61) && !irr(&a, 0x61));
        // TPR class 5 < ISR class 6: PPR = ISR class.
        assert_eq!(a.reg(PROCPRI), 0x60);
        assert_eq!(a.mmio_read(PROCPRI, 4, 0), 0x60);
        // A same-class vector waits for the EOI; a higher class preempts.
        assert!(a.accept(&fixed(0x6f)));
        assert_eq!(a.pending_interrupt(), None);
        assert!(a.accept(&fixed(0x71)));
        assert_eq!(a.pending_interrupt(), Some(0x71));
        // TPR in the ISR's class: PPR = TPR (all 8 bits).
        a.mmio_write(TASKPRI, 0x65, 0);
        assert_eq!(a.reg(PROCPRI), 0x65);
        // TPR raised above the ISR class: PPR = TPR (all 8 bits).
        a.mmio_write(TASKPRI, 0x75, 0);
        assert_eq!(a.reg(PROCPRI), 0x75);
        assert_eq!(a.pending_interrupt(), None);
        // CR8 writes TPR[7:4].
        a.set_cr8(0);
        assert_eq!(a.reg(TASKPRI), 0);
        assert_eq!(a.reg(PROCPRI), 0x60);
        assert_eq!(a.pending_interrupt(), Some(0x71));
        a.set_cr8(0x1f);
        assert_eq!(a.reg(TASKPRI), 0xf0);
        assert_eq!(a.cr8(), 0xf);
        // Vectors 0-15 are never deliverable (class 0 is never above PPR).
        let mut b = enabled(2);
        b.accept(&fixed(0x0e));
        assert_eq!(b.pending_interrupt(), None);
    }

    #[test]
    fn boot_cpu_is_the_vms_not_vcpu_0() {
        // KVM_SET_BOOT_CPU_ID 1: vCPU 1 resets as the BSP with LINT0 in ExtINT.
        let bsp = Lapic::with_reset_bsp(1, 1_000_000, true);
        assert_eq!(bsp.base(), XAPIC | MSR_APICBASE_BSP);
        assert_eq!(bsp.reg(LVT0), u32::from(delivery::EXTINT) << 8);
        let ap = Lapic::with_reset_bsp(0, 1_000_000, false);
        assert_eq!(ap.base(), XAPIC);
        assert_eq!(ap.reg(LVT0), LVT_MASKED);
        assert_eq!(Lapic::new(0, 1_000_000).base(), XAPIC | MSR_APICBASE_BSP);
    }

    #[test]
    fn irr_isr_eoi_nesting() {
        let mut a = enabled(1);
        a.accept(&fixed(0x40));
        assert_eq!(a.ack_interrupt(), Some(0x40));
        a.accept(&level(0x90));
        assert_eq!(a.ack_interrupt(), Some(0x90));
        assert_eq!(a.reg(PROCPRI), 0x90);
        assert!(a.test_vec(TMR, 0x90) && !a.test_vec(TMR, 0x40));
        // EOI retires the highest in-service vector first.
        assert_eq!(
            a.mmio_write(EOI, 0, 0),
            Action::Eoi {
                vector: 0x90,
                level: true
            }
        );
        assert_eq!(a.reg(PROCPRI), 0x40);
        assert_eq!(
            a.mmio_write(EOI, 0, 0),
            Action::Eoi {
                vector: 0x40,
                level: false
            }
        );
        assert_eq!(a.reg(PROCPRI), 0);
        // Nothing in service: a spurious EOI does nothing.
        assert_eq!(a.mmio_write(EOI, 0, 0), Action::None);
        // An edge re-delivery of a vector clears its TMR bit.
        a.accept(&level(0x90));
        assert!(a.test_vec(TMR, 0x90));
        a.accept(&fixed(0x90));
        assert!(!a.test_vec(TMR, 0x90));
    }

    #[test]
    fn level_deassert_and_hw_disabled() {
        let mut a = enabled(1);
        let deassert = Irq {
            level: false,
            ..level(0x50)
        };
        assert!(!a.accept(&deassert));
        assert!(!irr(&a, 0x50));
        // Edge with level=false is an ordinary interrupt (e.g. SELF_IPI).
        assert!(a.accept(&Irq {
            vector: 0x50,
            ..Irq::default()
        }));
        assert_eq!(a.pending_interrupt(), Some(0x50));
        a.set_base(APIC_DEFAULT_BASE, false, PHYS).unwrap();
        assert_eq!(a.pending_interrupt(), None);
        assert!(!a.accept(&fixed(0x60)));
        assert!(a.accepts_pic_interrupts());
    }

    #[test]
    fn directed_eoi_suppression() {
        let mut a = enabled(1);
        a.set_guest_caps(true, true, true);
        assert_eq!(a.reg(LVR), 0x0105_0014);
        a.mmio_write(SPIV, 0x11ff, 0);
        assert!(a.suppress_eoi_broadcast());
        a.accept(&level(0x80));
        a.ack_interrupt();
        assert_eq!(
            a.mmio_write(EOI, 0, 0),
            Action::Eoi {
                vector: 0x80,
                level: false
            }
        );
        // Directed EOI needs x2APIC in CPUID.
        a.set_guest_caps(false, true, true);
        assert_eq!(a.reg(LVR), 0x0005_0014);
        // A VM that does not honor the bit (KVM_X2APIC_DISABLE_SUPPRESS_EOI_BROADCAST)
        // broadcasts the EOI although SPIV has it.
        a.set_honor_suppress_eoi(false);
        assert!(!a.suppress_eoi_broadcast());
        a.accept(&level(0x81));
        a.ack_interrupt();
        assert_eq!(
            a.mmio_write(EOI, 0, 0),
            Action::Eoi {
                vector: 0x81,
                level: true
            }
        );
    }

    #[test]
    fn nmi_smi_init_sipi() {
        let mut a = Lapic::new(1, KHZ);
        let msg = |mode, vector| Irq {
            vector,
            delivery_mode: mode,
            level: true,
            ..Irq::default()
        };
        assert!(a.accept(&msg(delivery::NMI, 0)));
        assert!(a.accept(&msg(delivery::NMI, 0)));
        assert!(a.take_nmi());
        assert!(a.take_nmi());
        assert!(!a.take_nmi());
        assert!(a.accept(&msg(delivery::SMI, 0)));
        assert!(a.take_smi());
        assert!(!a.take_smi());
        assert!(a.accept(&msg(delivery::REMRD, 0)));
        assert!(a.take_pv_unhalt());

        // SIPI stores its vector; a later INIT discards it.
        assert!(a.accept(&msg(delivery::SIPI, 0x9a)));
        assert!(a.accept(&msg(delivery::INIT, 0)));
        assert!(a.latched_init() && a.has_pending_init_or_sipi());
        assert_eq!(a.take_sipi(), None);
        assert!(a.take_init());
        assert!(!a.take_init());
        assert!(a.accept(&msg(delivery::SIPI, 0x9b)));
        assert_eq!(a.take_sipi(), Some(0x9b));
        assert_eq!(a.take_sipi(), None);
        assert!(!a.has_pending_init_or_sipi());

        // INIT level de-assert is not an INIT.
        let deassert = Irq {
            delivery_mode: delivery::INIT,
            trig_level: true,
            ..Irq::default()
        };
        assert!(!a.accept(&deassert));
        assert!(!a.latched_init());
        // ExtINT goes through the PIC path.
        assert!(!a.accept(&msg(delivery::EXTINT, 0)));
    }

    #[test]
    fn local_deliver_lint() {
        let mut a = enabled(1);
        a.mmio_write(LVT0, 0x400, 0);
        assert!(a.lvt0_in_nmi_mode());
        assert!(a.local_deliver(LVT0));
        assert!(a.take_nmi());
        a.mmio_write(LVT1, 0x1_0031, 0);
        assert!(!a.local_deliver(LVT1));
        a.mmio_write(LVT1, 0x8031, 0);
        assert!(a.local_deliver(LVT1));
        assert!(irr(&a, 0x31) && a.test_vec(TMR, 0x31));
        a.mmio_write(LVT0, 0x1_0400, 0);
        assert!(!a.lvt0_in_nmi_mode());
    }

    #[test]
    fn init_keeps_base_and_id() {
        let mut a = enabled(3);
        a.mmio_write(ID, 0x0700_0000, 0);
        a.mmio_write(TASKPRI, 0x20, 0);
        a.mmio_write(LDR, 0x0100_0000, 0);
        a.mmio_write(TDCR, 0xb, 0);
        a.mmio_write(LVTT, 0x20030, 0);
        a.mmio_write(TMICT, 1_000_000, 0);
        a.accept(&fixed(0x40));
        a.set_base(XAPIC | 0x1000_0000, false, PHYS).unwrap();
        a.init();
        assert_eq!(a.base(), XAPIC | 0x1000_0000);
        assert_eq!(a.reg(ID), 0x0700_0000);
        assert_eq!(a.reg(TASKPRI), 0);
        assert_eq!(a.reg(LDR), 0);
        assert_eq!(a.reg(SPIV), 0xff);
        assert_eq!(a.reg(LVTT), LVT_MASKED);
        assert_eq!(a.reg(TMICT), 0);
        assert_eq!(a.divide_count, 2);
        assert!(!irr(&a, 0x40));
        assert_eq!(a.next_timer_expiry(), None);
        assert_eq!(a.mmio_read(TMCCT, 4, 10), 0);

        // In x2APIC mode INIT keeps the mode and the derived LDR.
        let mut b = x2(0x23);
        b.init();
        assert!(b.x2apic_mode());
        assert_eq!(b.reg(ID), 0x23);
        assert_eq!(b.reg(LDR), 0x2_0008);
    }

    #[test]
    fn x2apic_enable_sets_id_and_ldr() {
        let a = x2(0x23);
        assert!(a.x2apic_mode());
        assert_eq!(a.mmio_base(), None);
        assert_eq!(a.reg(ID), 0x23);
        assert_eq!(a.reg(LDR), (2 << 16) | (1 << 3));
        assert_eq!(rdmsr(&a, ID), Ok(0x23));
        assert_eq!(rdmsr(&a, LDR), Ok(0x2_0008));
        assert_eq!(rdmsr(&a, LVR), Ok(0x0005_0014));
        let b = x2(0x10f);
        assert_eq!(b.reg(LDR), (0x10 << 16) | (1 << 15));
        // xAPIC MMIO is off in x2APIC mode: reads are all ones.
        assert_eq!(a.mmio_read(ID, 4, 0), 0xffff_ffff);
    }

    #[test]
    fn apic_base_transitions() {
        let mut a = enabled(5);
        // Reserved: bits 0-7, bit 9, at or above MAXPHYADDR; x2APIC without enable.
        for bad in [
            XAPIC | 1,
            XAPIC | 0x80,
            XAPIC | 1 << 9,
            XAPIC | 1 << PHYS,
            XAPIC | 1 << 63,
            APIC_DEFAULT_BASE | MSR_APICBASE_X2APIC,
        ] {
            assert_eq!(a.set_base(bad, false, PHYS), Err(Fault), "{bad:#x}");
            assert_eq!(a.set_base(bad, true, PHYS), Err(Fault), "{bad:#x}");
        }
        assert_eq!(a.base(), XAPIC);
        // Bit 45 is fine with MAXPHYADDR 46, and the BSP flag is writable.
        a.set_base(XAPIC | 1 << 45 | MSR_APICBASE_BSP, false, PHYS)
            .unwrap();
        assert_eq!(a.mmio_base(), Some(APIC_DEFAULT_BASE | 1 << 45));
        a.set_base(XAPIC, false, PHYS).unwrap();

        a.set_base(X2APIC, false, PHYS).unwrap();
        assert_eq!(a.reg(ID), 5);
        // x2APIC -> xAPIC needs a trip through disabled (the guest may not skip it).
        assert_eq!(a.set_base(XAPIC, false, PHYS), Err(Fault));
        assert!(a.x2apic_mode());
        // Writing the current value is always fine.
        assert_eq!(a.set_base(X2APIC, false, PHYS), Ok(()));
        a.set_base(APIC_DEFAULT_BASE, false, PHYS).unwrap();
        assert!(!a.hw_enabled() && !a.x2apic_mode());
        // disabled -> x2APIC is illegal for the guest.
        assert_eq!(a.set_base(X2APIC, false, PHYS), Err(Fault));
        a.set_base(XAPIC, false, PHYS).unwrap();
        assert_eq!(a.reg(ID), 5 << 24);

        // The host may do both.
        let mut b = Lapic::new(6, KHZ);
        b.set_base(X2APIC, true, PHYS).unwrap();
        assert_eq!(b.reg(ID), 6);
        b.set_base(XAPIC, true, PHYS).unwrap();
        assert_eq!(b.reg(ID), 6 << 24);
        b.set_base(APIC_DEFAULT_BASE, true, PHYS).unwrap();
        b.set_base(X2APIC, true, PHYS).unwrap();
        assert!(b.x2apic_mode());

        // Without CPUID x2APIC the bit is reserved.
        let mut c = Lapic::new(7, KHZ);
        c.set_guest_caps(false, true, false);
        assert_eq!(c.set_base(X2APIC, true, PHYS), Err(Fault));
    }

    #[test]
    fn x2apic_msr_faults() {
        let mut a = x2(2);
        // Read-only / xAPIC-only registers.
        assert_eq!(wrmsr(&mut a, ID, 2), Err(Fault));
        assert_eq!(wrmsr(&mut a, LDR, 0), Err(Fault));
        assert_eq!(wrmsr(&mut a, DFR, 0), Err(Fault));
        assert_eq!(rdmsr(&a, DFR), Err(Fault));
        assert_eq!(wrmsr(&mut a, ICR2, 0), Err(Fault));
        assert_eq!(rdmsr(&a, ICR2), Err(Fault));
        assert_eq!(rdmsr(&a, ARBPRI), Err(Fault));
        assert_eq!(wrmsr(&mut a, LVR, 0), Err(Fault));
        assert_eq!(wrmsr(&mut a, PROCPRI, 0), Err(Fault));
        assert_eq!(wrmsr(&mut a, ISR, 0), Err(Fault));
        assert_eq!(wrmsr(&mut a, TMCCT, 0), Err(Fault));
        // Write-only registers.
        assert_eq!(rdmsr(&a, EOI), Err(Fault));
        assert_eq!(rdmsr(&a, SELF_IPI), Err(Fault));
        // Reserved MSRs and CMCI without MCG_CMCI_P.
        assert_eq!(a.read_msr(0x801, 0, 0), Err(Fault));
        assert_eq!(a.read_msr(0x840, 0, 0), Err(Fault));
        assert_eq!(a.write_msr(0x8ff, 0, 0, 0), Err(Fault));
        assert_eq!(rdmsr(&a, LVTCMCI), Err(Fault));
        assert_eq!(wrmsr(&mut a, LVTCMCI, 0), Err(Fault));
        // Bits 63:32 reserved; ESR must be written with 0.
        assert_eq!(wrmsr(&mut a, TASKPRI, 1 << 32), Err(Fault));
        assert_eq!(wrmsr(&mut a, ESR, 1), Err(Fault));
        assert_eq!(wrmsr(&mut a, ESR, 0), Ok(Action::None));
        // Not x2APIC MSRs at all.
        assert_eq!(a.read_msr(0x1b, 0, 0), Err(Fault));
        // Ordinary accesses.
        assert_eq!(wrmsr(&mut a, TASKPRI, 0x30), Ok(Action::None));
        assert_eq!(rdmsr(&a, TASKPRI), Ok(0x30));
        assert_eq!(rdmsr(&a, PROCPRI), Ok(0x30));
        assert_eq!(rdmsr(&a, SPIV), Ok(0x1ff));
        assert_eq!(wrmsr(&mut a, EOI, 0), Ok(Action::None));

        // In xAPIC mode every x2APIC MSR faults.
        let mut b = enabled(2);
        assert_eq!(rdmsr(&b, ID), Err(Fault));
        assert_eq!(wrmsr(&mut b, TASKPRI, 0), Err(Fault));
        assert_eq!(wrmsr(&mut b, SELF_IPI, 0x40), Err(Fault));
        // ... and the x2APIC-only SELF_IPI is not in the MMIO page either.
        assert_eq!(b.mmio_write(SELF_IPI, 0x40, 0), Action::None);
    }

    #[test]
    fn xapic_icr_sends_ipi() {
        let mut a = enabled(1);
        a.mmio_write(ICR2, 0x03ab_cdef, 0);
        // Fixed, vector 0x31, physical, assert, edge; busy bit is dropped.
        let act = a.mmio_write(ICR, 0x5031, 0);
        assert_eq!(
            act,
            Action::SendIpi(Irq {
                vector: 0x31,
                delivery_mode: delivery::FIXED,
                dest_mode_logical: false,
                level: true,
                trig_level: false,
                shorthand: 0,
                dest_id: 3,
                msi_redir_hint: false,
            })
        );
        assert_eq!(a.mmio_read(ICR, 4, 0), 0x4031);
        assert_eq!(a.mmio_read(ICR2, 4, 0), 0x0300_0000);
        // INIT level de-assert, logical, all-excluding-self.
        let Action::SendIpi(irq) = a.mmio_write(ICR, 0xc8d00, 0) else {
            panic!("no IPI");
        };
        assert_eq!(irq.delivery_mode, delivery::INIT);
        assert!(irq.dest_mode_logical && irq.trig_level && !irq.level);
        assert_eq!(irq.shorthand, 3);
        // SIPI with vector 0x9a to self.
        let Action::SendIpi(irq) = a.mmio_write(ICR, 0x4_469a, 0) else {
            panic!("no IPI");
        };
        assert_eq!(
            (irq.delivery_mode, irq.vector, irq.shorthand),
            (delivery::SIPI, 0x9a, 1)
        );
    }

    #[test]
    fn x2apic_icr_is_64_bit() {
        let mut a = x2(1);
        let act = wrmsr(&mut a, ICR, 0x1234_5678_0000_4841).unwrap();
        assert_eq!(
            act,
            Action::SendIpi(Irq {
                vector: 0x41,
                dest_mode_logical: true,
                level: true,
                dest_id: 0x1234_5678,
                ..Irq::default()
            })
        );
        assert_eq!(rdmsr(&a, ICR), Ok(0x1234_5678_0000_4841));
        // Busy is cleared; reserved bits 31:20, 17:16, 13 fault.
        wrmsr(&mut a, ICR, 0x1041).unwrap();
        assert_eq!(rdmsr(&a, ICR), Ok(0x41));
        for bad in [1u64 << 13, 1 << 16, 1 << 17, 1 << 20, 1 << 31] {
            assert_eq!(wrmsr(&mut a, ICR, 0x41 | bad), Err(Fault), "{bad:#x}");
        }
        assert_eq!(rdmsr(&a, ICR), Ok(0x41));
        // Shorthand bits are fine.
        assert!(matches!(
            wrmsr(&mut a, ICR, 0xc_0041),
            Ok(Action::SendIpi(Irq { shorthand: 3, .. }))
        ));
    }

    #[test]
    fn x2apic_self_ipi() {
        let mut a = x2(4);
        assert_eq!(wrmsr(&mut a, SELF_IPI, 0x100), Err(Fault));
        assert_eq!(wrmsr(&mut a, SELF_IPI, 1 << 32 | 0x55), Err(Fault));
        let Ok(Action::SendIpi(irq)) = wrmsr(&mut a, SELF_IPI, 0x55) else {
            panic!("no IPI");
        };
        assert_eq!(
            irq,
            Irq {
                vector: 0x55,
                shorthand: 1,
                ..Irq::default()
            }
        );
        // Self only.
        let other = x2(5);
        assert!(a.matches(&irq, 4, true));
        assert!(!other.matches(&irq, 4, false));
        assert!(a.accept(&irq));
        assert_eq!(a.ack_interrupt(), Some(0x55));
        // SELF_IPI does not touch ICR.
        assert_eq!(rdmsr(&a, ICR), Ok(0));
    }

    #[test]
    fn physical_matching() {
        let a = enabled(3);
        let phys = |dest_id| Irq {
            dest_id,
            ..fixed(0x40)
        };
        assert!(a.matches(&phys(3), 0, false));
        assert!(!a.matches(&phys(4), 0, false));
        assert!(a.matches(&phys(0xff), 0, false));
        assert!(a.matches(&phys(0xff), NO_SOURCE, false));
        // xAPIC IDs are writable; matching follows the register.
        let mut b = enabled(3);
        b.mmio_write(ID, 0x0900_0000, 0);
        assert!(b.matches(&phys(9), 0, false));
        assert!(!b.matches(&phys(3), 0, false));
        // Hotplug hack: an ID above 0xff matches the x2APIC ID even in xAPIC mode.
        let c = enabled(0x123);
        assert!(c.matches(&phys(0x123), 0, false));
        assert!(c.matches(&phys(0x23), 0, false));
        assert!(!c.matches(&phys(0x223), 0, false));

        // x2APIC: 32-bit IDs, broadcast 0xffffffff.
        let d = x2(0x1ff);
        assert!(d.matches(&phys(0x1ff), 0, false));
        assert!(!d.matches(&phys(0xff), 0, false));
        assert!(d.matches(&phys(0xffff_ffff), 0, false));
        // Device messages to 0xff are broadcasts unless the quirk is disabled.
        assert!(d.matches(&phys(0xff), NO_SOURCE, false));
        let mut e = d.clone();
        e.set_broadcast_quirk_disabled(true);
        assert!(!e.matches(&phys(0xff), NO_SOURCE, false));

        // A hardware-disabled APIC receives nothing.
        let mut f = enabled(3);
        f.set_base(APIC_DEFAULT_BASE, false, PHYS).unwrap();
        assert!(!f.matches(&phys(3), 0, false));
        assert!(!f.matches(
            &Irq {
                shorthand: 2,
                ..phys(0)
            },
            0,
            false
        ));
    }

    #[test]
    fn shorthand_matching() {
        let a = enabled(3);
        let sh = |shorthand| Irq {
            shorthand,
            dest_id: 7,
            ..fixed(0x40)
        };
        assert!(a.matches(&sh(1), 3, true));
        assert!(!a.matches(&sh(1), 1, false));
        assert!(a.matches(&sh(2), 3, true));
        assert!(a.matches(&sh(2), 1, false));
        assert!(!a.matches(&sh(3), 3, true));
        assert!(a.matches(&sh(3), 1, false));
    }

    #[test]
    fn logical_flat_and_cluster_matching() {
        let logical = |dest_id| Irq {
            dest_id,
            dest_mode_logical: true,
            ..fixed(0x40)
        };
        let mut a = enabled(1);
        // LDR 0 (reset) matches no logical destination but the broadcast.
        assert!(!a.matches(&logical(0x0f), 0, false));
        assert!(a.matches(&logical(0xff), 0, false));
        // Flat: the 8-bit LDR is a bitmask.
        a.mmio_write(LDR, 0x0400_0000, 0);
        assert!(a.matches(&logical(0x04), 0, false));
        assert!(a.matches(&logical(0x0c), 0, false));
        assert!(!a.matches(&logical(0x03), 0, false));
        // Cluster: high nibble is the cluster, low nibble a bitmask.
        a.mmio_write(DFR, 0x0fff_ffff, 0);
        a.mmio_write(LDR, 0x2100_0000, 0);
        assert!(a.matches(&logical(0x21), 0, false));
        assert!(a.matches(&logical(0x23), 0, false));
        assert!(!a.matches(&logical(0x22), 0, false));
        assert!(!a.matches(&logical(0x11), 0, false));
        assert!(a.matches(&logical(0xff), 0, false));
        // A DFR model that is neither flat nor cluster matches nothing.
        a.mmio_write(DFR, 0x5fff_ffff, 0);
        assert!(!a.matches(&logical(0x21), 0, false));

        // x2APIC: cluster = LDR[31:16], 16-bit mask.
        let b = x2(0x23);
        assert!(b.matches(&logical(0x2_0008), 0, false));
        assert!(b.matches(&logical(0x2_000c), 0, false));
        assert!(!b.matches(&logical(0x2_0004), 0, false));
        assert!(!b.matches(&logical(0x1_0008), 0, false));
        assert!(b.matches(&logical(0xffff_ffff), 0, false));
        assert!(!b.matches(&logical(0xff), 0, false));
        assert!(b.matches(&logical(0xff), NO_SOURCE, false));
    }

    /// Programs LVTT = `lvtt`, TDCR divide-by-1, SPIV enabled.
    fn timer_apic(lvtt: u32) -> Lapic {
        let mut a = enabled(1);
        a.mmio_write(TDCR, 0xb, 0);
        a.mmio_write(LVTT, lvtt, 0);
        a
    }

    #[test]
    fn oneshot_timer() {
        let mut a = timer_apic(0x40);
        assert_eq!(a.mmio_write(TMICT, 1000, 10_000), Action::TimerChanged);
        assert_eq!(a.next_timer_expiry(), Some(11_000));
        // Upstream computes the count modulo the period: a full period reads 0.
        assert_eq!(a.mmio_read(TMCCT, 4, 10_000), 0);
        assert_eq!(a.mmio_read(TMCCT, 4, 10_001), 999);
        assert_eq!(a.mmio_read(TMICT, 4, 10_500), 1000);
        assert_eq!(a.mmio_read(TMCCT, 4, 10_250), 750);
        assert!(!a.timer_poll(10_999));
        assert!(!irr(&a, 0x40));
        assert!(a.timer_poll(11_000));
        assert!(irr(&a, 0x40));
        assert_eq!(a.next_timer_expiry(), None);
        assert_eq!(a.mmio_read(TMCCT, 4, 11_500), 0);
        assert!(!a.timer_poll(20_000));
        // The current count counts in divided bus cycles (1 GHz bus).
        a.mmio_write(TDCR, 0x0, 20_000);
        a.mmio_write(TMICT, 1000, 20_000);
        assert_eq!(a.next_timer_expiry(), Some(22_000));
        assert_eq!(a.mmio_read(TMCCT, 4, 20_500), 750);
        // TMICT = 0 stops it.
        assert_eq!(a.mmio_write(TMICT, 0, 21_000), Action::TimerChanged);
        assert_eq!(a.next_timer_expiry(), None);
        assert_eq!(a.mmio_read(TMCCT, 4, 21_000), 0);
    }

    #[test]
    fn divide_change_rescales_remaining_time() {
        let mut a = timer_apic(0x40);
        a.mmio_write(TMICT, 1000, 0);
        // 600 ns left at divide 1 become 1200 ns at divide 2.
        assert_eq!(a.mmio_write(TDCR, 0x0, 400), Action::TimerChanged);
        assert_eq!(a.next_timer_expiry(), Some(1600));
        assert!(a.timer_poll(1600));
        // After expiry a one-shot stays stopped.
        assert_eq!(a.mmio_write(TDCR, 0x1, 2000), Action::TimerChanged);
        assert_eq!(a.next_timer_expiry(), None);
        // Same divisor: nothing to do.
        assert_eq!(a.mmio_write(TDCR, 0x1, 2000), Action::None);
    }

    #[test]
    fn bus_cycle_length_scales_the_timer() {
        // A 25 MHz bus (40 ns per cycle), divide by 1: 1000 counts are 40 us.
        let mut a = timer_apic(0x40);
        a.set_bus_cycle_ns(40);
        a.mmio_write(TMICT, 1000, 0);
        assert_eq!(a.next_timer_expiry(), Some(40_000));
        assert_eq!(a.mmio_read(TMCCT, 4, 10_000), 750);
        assert!(valid_bus_cycle_ns(1));
        assert!(!valid_bus_cycle_ns(0));
        assert!(valid_bus_cycle_ns(u64::MAX / APIC_MAX_BUS_CYCLES));
        assert!(!valid_bus_cycle_ns(u64::MAX / APIC_MAX_BUS_CYCLES + 1));
    }

    #[test]
    fn periodic_timer() {
        let mut a = timer_apic(0x2_0041);
        a.mmio_write(TMICT, 1_000_000, 0);
        assert_eq!(a.next_timer_expiry(), Some(1_000_000));
        assert_eq!(a.mmio_read(TMCCT, 4, 250_000), 750_000);
        // Served late: the next period still starts from the previous target.
        assert!(a.timer_poll(1_300_000));
        assert_eq!(a.next_timer_expiry(), Some(2_000_000));
        assert_eq!(a.mmio_read(TMCCT, 4, 1_500_000), 500_000);
        assert_eq!(a.ack_interrupt(), Some(0x41));
        assert!(a.timer_poll(2_000_000));
        assert_eq!(a.next_timer_expiry(), Some(3_000_000));
        // Missed periods are not caught up.
        assert!(a.timer_poll(10_500_000));
        assert_eq!(a.next_timer_expiry(), Some(10_500_000));
        // Switching to one-shot: the running period ends it.
        assert_eq!(a.mmio_write(LVTT, 0x41, 10_600_000), Action::TimerChanged);
        assert!(a.timer_poll(10_600_000));
        assert_eq!(a.next_timer_expiry(), None);
    }

    #[test]
    fn periodic_timer_minimum_period() {
        let mut a = timer_apic(0x2_0041);
        a.mmio_write(TMICT, 1000, 0);
        assert_eq!(a.next_timer_expiry(), Some(200_000));
        assert!(a.timer_poll(200_000));
        assert_eq!(a.next_timer_expiry(), Some(400_000));
    }

    #[test]
    fn masked_timer_fires_without_interrupt() {
        let mut a = timer_apic(0x1_0040);
        a.mmio_write(TMICT, 100, 0);
        assert!(a.timer_poll(100));
        assert!(!irr(&a, 0x40));
        assert_eq!(a.pending_interrupt(), None);
        // Software-disabled APIC: same.
        let mut b = timer_apic(0x40);
        b.mmio_write(TMICT, 100, 0);
        b.mmio_write(SPIV, 0xff, 50);
        assert!(b.timer_poll(100));
        assert!(!irr(&b, 0x40));
    }

    #[test]
    fn tsc_deadline_timer() {
        let mut a = timer_apic(0x4_0042);
        let (ns, tsc) = (1_000_000_000u64, 5_000_000_000u64);
        // TMICT is ignored in TSC-deadline mode; TMCCT reads 0.
        assert_eq!(a.mmio_write(TMICT, 1000, ns), Action::None);
        assert_eq!(a.reg(TMICT), 0);
        // 3_000_000 cycles at 3 GHz = 1 ms.
        let dl = tsc + 3_000_000;
        assert_eq!(
            a.write_msr(MSR_IA32_TSC_DEADLINE, dl, ns, tsc),
            Ok(Action::TimerChanged)
        );
        assert_eq!(a.read_msr(MSR_IA32_TSC_DEADLINE, ns, tsc), Ok(dl));
        assert_eq!(a.next_timer_expiry(), Some(ns + 1_000_000));
        assert_eq!(a.mmio_read(TMCCT, 4, ns), 0);
        assert!(!a.timer_poll(ns + 999_999));
        assert!(a.timer_poll(ns + 1_000_000));
        assert!(irr(&a, 0x42));
        // Fired: the MSR reads 0 and nothing is armed.
        assert_eq!(a.read_msr(MSR_IA32_TSC_DEADLINE, ns, tsc), Ok(0));
        assert_eq!(a.next_timer_expiry(), None);

        // A deadline in the past fires at once.
        a.write_msr(MSR_IA32_TSC_DEADLINE, tsc - 1, ns, tsc)
            .unwrap();
        assert_eq!(a.next_timer_expiry(), Some(ns));
        assert!(a.timer_poll(ns));
        // 0 disarms.
        a.write_msr(MSR_IA32_TSC_DEADLINE, dl, ns, tsc).unwrap();
        a.write_msr(MSR_IA32_TSC_DEADLINE, 0, ns, tsc).unwrap();
        assert_eq!(a.next_timer_expiry(), None);
        // A huge deadline saturates instead of overflowing.
        a.write_msr(MSR_IA32_TSC_DEADLINE, u64::MAX, ns, 0).unwrap();
        assert!(a.next_timer_expiry().is_some_and(|t| t > ns));

        // Leaving TSC-deadline mode disarms and clears the deadline.
        a.mmio_write(LVTT, 0x42, ns);
        assert_eq!(a.next_timer_expiry(), None);
        assert_eq!(a.read_msr(MSR_IA32_TSC_DEADLINE, ns, tsc), Ok(0));
        // Outside TSC-deadline mode the MSR write is ignored.
        assert_eq!(
            a.write_msr(MSR_IA32_TSC_DEADLINE, dl, ns, tsc),
            Ok(Action::None)
        );
        assert_eq!(a.next_timer_expiry(), None);
    }

    #[test]
    fn tsc_deadline_needs_cpuid() {
        let mut a = enabled(1);
        a.set_guest_caps(true, false, false);
        a.mmio_write(LVTT, 0x4_0042, 0);
        assert_eq!(a.reg(LVTT), 0x42);
        assert_eq!(
            a.write_msr(MSR_IA32_TSC_DEADLINE, 100, 0, 0),
            Ok(Action::None)
        );
        // Periodic remains.
        a.mmio_write(LVTT, 0x6_0042, 0);
        assert_eq!(a.reg(LVTT), 0x2_0042);
    }

    #[test]
    fn state_round_trip() {
        let mut a = enabled(2);
        a.mmio_write(TASKPRI, 0x20, 0);
        a.mmio_write(LDR, 0x0800_0000, 0);
        a.mmio_write(LVT0, 0x700, 0);
        a.mmio_write(TDCR, 0x0, 0);
        a.mmio_write(LVTT, 0x2_0045, 0);
        a.mmio_write(TMICT, 500_000, 0);
        a.accept(&level(0x81));
        a.ack_interrupt();
        a.accept(&fixed(0x91));

        let mut s = [0u8; STATE_SIZE];
        a.get_state(&mut s, false, 400_000);
        let word = |s: &[u8; STATE_SIZE], off: u32| {
            let o = off as usize;
            u32::from_le_bytes([s[o], s[o + 1], s[o + 2], s[o + 3]])
        };
        assert_eq!(word(&s, ID), 2 << 24);
        assert_eq!(word(&s, LVR), 0x0005_0014);
        assert_eq!(word(&s, TASKPRI), 0x20);
        assert_eq!(word(&s, PROCPRI), 0x80);
        assert_eq!(word(&s, SPIV), 0x1ff);
        assert_eq!(word(&s, TMICT), 500_000);
        // 1 ms period, 600 us left = 300_000 counts at divide 2.
        assert_eq!(word(&s, TMCCT), 300_000);
        assert_eq!(word(&s, ISR + 0x40), 1 << 1);
        assert_eq!(word(&s, TMR + 0x40), 1 << 1);
        assert_eq!(word(&s, IRR + 0x40), 1 << 17);
        assert_eq!(a.reg(TMCCT), 0);

        let mut b = Lapic::new(2, KHZ);
        b.set_state(&s, false, 5_000_000).unwrap();
        assert!(b.sw_enabled());
        assert_eq!(b.regs, {
            let mut r = a.regs;
            r[idx(TMCCT)] = 0;
            r
        });
        // The timer resumes with the time that was left, then runs periodically.
        assert_eq!(b.next_timer_expiry(), Some(5_600_000));
        assert!(b.timer_poll(5_600_000));
        assert_eq!(b.next_timer_expiry(), Some(6_600_000));
        assert_eq!(b.pending_interrupt(), Some(0x91));
        assert_eq!(
            b.mmio_write(EOI, 0, 0),
            Action::Eoi {
                vector: 0x81,
                level: true
            }
        );

        let mut s2 = [0u8; STATE_SIZE];
        b.get_state(&mut s2, false, 5_700_000);
        assert_eq!(word(&s2, TMCCT), 450_000);
        // Exactly at a period boundary the count reads 0 (upstream's modulo).
        b.get_state(&mut s2, false, 6_600_000);
        assert_eq!(word(&s2, TMCCT), 0);
    }

    #[test]
    fn set_state_fixups() {
        let mut a = enabled(1);
        let mut s = [0u8; STATE_SIZE];
        a.get_state(&mut s, false, 0);
        let put = |s: &mut [u8; STATE_SIZE], off: u32, v: u32| {
            let o = off as usize;
            s[o..o + 4].copy_from_slice(&v.to_le_bytes());
        };
        // The version is KVM's, whatever userspace says; SPIV bit 8 takes effect.
        put(&mut s, LVR, 0xdead_beef);
        put(&mut s, SPIV, 0xff);
        put(&mut s, ID, 0x4400_0000);
        put(&mut s, TASKPRI, 0x30);
        put(&mut s, PROCPRI, 0);
        a.set_state(&s, false, 0).unwrap();
        assert_eq!(a.reg(LVR), 0x0005_0014);
        assert!(!a.sw_enabled());
        // xAPIC IDs are restored as given; PPR is recomputed.
        assert_eq!(a.reg(ID), 0x4400_0000);
        assert_eq!(a.reg(PROCPRI), 0x30);
        // An expired one-shot (TMCCT 0) restores as due at once, as upstream.
        put(&mut s, LVTT, 0x40);
        put(&mut s, SPIV, 0x1ff);
        put(&mut s, TMICT, 100);
        put(&mut s, TMCCT, 0);
        a.set_state(&s, false, 7_000).unwrap();
        assert_eq!(a.next_timer_expiry(), Some(7_000));
        // A current count above the initial count restarts a full period.
        put(&mut s, TMCCT, 1000);
        a.set_state(&s, false, 7_000).unwrap();
        assert_eq!(a.next_timer_expiry(), Some(7_200));
    }

    #[test]
    fn x2apic_state_id_format() {
        let mut a = x2(0x123);
        let mut s = [0u8; STATE_SIZE];
        let id = |s: &[u8; STATE_SIZE]| u32::from_le_bytes([s[0x20], s[0x21], s[0x22], s[0x23]]);
        a.get_state(&mut s, false, 0);
        assert_eq!(id(&s), 0x123 << 24);
        a.get_state(&mut s, true, 0);
        assert_eq!(id(&s), 0x123);

        // x2apic_format: the ID must be the vCPU's.
        let mut bad = s;
        bad[0x20] = 0x24;
        assert_eq!(a.set_state(&bad, true, 0), Err(Fault));
        assert_eq!(a.set_state(&s, true, 0), Ok(()));
        // Legacy format: whatever userspace wrote, the x2APIC ID stays; LDR is derived.
        bad[0xd0..0xd4].copy_from_slice(&0xffff_ffffu32.to_le_bytes());
        assert_eq!(a.set_state(&bad, false, 0), Ok(()));
        assert_eq!(a.reg(ID), 0x123);
        assert_eq!(a.reg(LDR), (0x12 << 16) | (1 << 3));
        assert_eq!(rdmsr(&a, ID), Ok(0x123));

        // In xAPIC mode there is nothing to check.
        let mut b = enabled(3);
        let mut t = [0u8; STATE_SIZE];
        b.get_state(&mut t, true, 0);
        t[0x23] = 9;
        assert_eq!(b.set_state(&t, true, 0), Ok(()));
        assert_eq!(b.apic_id(), 9);
    }

    #[test]
    fn x2apic_icr_survives_state() {
        let mut a = x2(1);
        wrmsr(&mut a, ICR, 0x0000_0007_0000_4030).unwrap();
        let mut s = [0u8; STATE_SIZE];
        a.get_state(&mut s, true, 0);
        // Userspace sees the high half in ICR2 (0x310).
        assert_eq!(s[0x310], 7);
        let mut b = x2(1);
        b.set_state(&s, true, 0).unwrap();
        assert_eq!(rdmsr(&b, ICR), Ok(0x0000_0007_0000_4030));
    }

    #[test]
    fn tsc_deadline_survives_set_state() {
        let mut a = timer_apic(0x4_0042);
        a.write_msr(MSR_IA32_TSC_DEADLINE, 3_000_000, 0, 0).unwrap();
        let mut s = [0u8; STATE_SIZE];
        a.get_state(&mut s, false, 0);
        a.set_state(&s, false, 10).unwrap();
        assert_eq!(a.next_timer_expiry(), Some(1_000_000));
        assert_eq!(a.read_msr(MSR_IA32_TSC_DEADLINE, 10, 30), Ok(3_000_000));
    }
}
