//! The SVM VMCB (AMD APM vol. 2, appendix B; upstream arch/x86/include/asm/svm.h):
//! layout, intercept and exit codes, and the segment-attribute packing.

/// Control area, the first 1024 bytes of the VMCB.
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct Control {
    pub intercepts: [u32; 6],
    pub reserved_1: [u32; 9],
    pub pause_filter_thresh: u16,
    pub pause_filter_count: u16,
    pub iopm_base_pa: u64,
    pub msrpm_base_pa: u64,
    pub tsc_offset: u64,
    pub asid: u32,
    pub tlb_ctl: u8,
    pub reserved_2: [u8; 3],
    pub int_ctl: u32,
    pub int_vector: u32,
    pub int_state: u32,
    pub reserved_3: [u8; 4],
    pub exit_code: u64,
    pub exit_info_1: u64,
    pub exit_info_2: u64,
    pub exit_int_info: u32,
    pub exit_int_info_err: u32,
    pub misc_ctl: u64,
    pub avic_vapic_bar: u64,
    pub ghcb_gpa: u64,
    pub event_inj: u32,
    pub event_inj_err: u32,
    pub nested_cr3: u64,
    pub misc_ctl2: u64,
    pub clean: u32,
    pub reserved_5: u32,
    pub next_rip: u64,
    pub insn_len: u8,
    pub insn_bytes: [u8; 15],
    pub reserved_6: [u8; 0x400 - 0xe0],
}

/// A segment register in the save area.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Seg {
    pub selector: u16,
    pub attrib: u16,
    pub limit: u32,
    pub base: u64,
}

/// Save area of a non-SEV guest (upstream `struct vmcb_save_area`).
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct Save {
    pub es: Seg,
    pub cs: Seg,
    pub ss: Seg,
    pub ds: Seg,
    pub fs: Seg,
    pub gs: Seg,
    pub gdtr: Seg,
    pub ldtr: Seg,
    pub idtr: Seg,
    pub tr: Seg,
    pub reserved_0xa0: [u8; 42],
    pub vmpl: u8,
    pub cpl: u8,
    pub reserved_0xcc: [u8; 4],
    pub efer: u64,
    pub reserved_0xd8: [u8; 112],
    pub cr4: u64,
    pub cr3: u64,
    pub cr0: u64,
    pub dr7: u64,
    pub dr6: u64,
    pub rflags: u64,
    pub rip: u64,
    pub reserved_0x180: [u8; 88],
    pub rsp: u64,
    pub s_cet: u64,
    pub ssp: u64,
    pub isst_addr: u64,
    pub rax: u64,
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    pub sfmask: u64,
    pub kernel_gs_base: u64,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub cr2: u64,
    pub reserved_0x248: [u8; 32],
    pub g_pat: u64,
    pub dbgctl: u64,
    pub br_from: u64,
    pub br_to: u64,
    pub last_excp_from: u64,
    pub last_excp_to: u64,
    pub reserved_0x298: [u8; 72],
    pub spec_ctrl: u64,
}

/// The whole VMCB, one page.
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct Vmcb {
    pub control: Control,
    pub save: Save,
    pub reserved: [u8; 4096 - 1024 - 744],
}

const _: () = assert!(core::mem::size_of::<Control>() == 1024);
const _: () = assert!(core::mem::size_of::<Save>() == 744);
const _: () = assert!(core::mem::size_of::<Vmcb>() == 4096);
const _: () = assert!(core::mem::offset_of!(Control, next_rip) == 0xc8);
const _: () = assert!(core::mem::offset_of!(Control, nested_cr3) == 0xb0);
const _: () = assert!(core::mem::offset_of!(Save, efer) == 0xd0);
const _: () = assert!(core::mem::offset_of!(Save, cr4) == 0x148);
const _: () = assert!(core::mem::offset_of!(Save, rsp) == 0x1d8);
const _: () = assert!(core::mem::offset_of!(Save, rax) == 0x1f8);
const _: () = assert!(core::mem::offset_of!(Save, g_pat) == 0x268);

// Intercept vector words (upstream INTERCEPT_* / 32) and bits.
pub const INTERCEPT_CR: usize = 0;
pub const INTERCEPT_DR: usize = 1;
pub const INTERCEPT_EXCEPTION: usize = 2;
pub const INTERCEPT_WORD3: usize = 3;
pub const INTERCEPT_WORD4: usize = 4;

// Word 3.
pub const INTR: u32 = 1 << 0;
pub const NMI: u32 = 1 << 1;
pub const SMI: u32 = 1 << 2;
pub const INIT: u32 = 1 << 3;
pub const VINTR: u32 = 1 << 4;
pub const CPUID: u32 = 1 << 18;
pub const IRET: u32 = 1 << 20;
pub const INVD: u32 = 1 << 22;
pub const HLT: u32 = 1 << 24;
pub const INVLPGA: u32 = 1 << 26;
pub const IOIO_PROT: u32 = 1 << 27;
pub const MSR_PROT: u32 = 1 << 28;
pub const TASK_SWITCH: u32 = 1 << 29;
pub const SHUTDOWN: u32 = 1 << 31;
// Word 4.
pub const VMRUN: u32 = 1 << 0;
pub const VMMCALL: u32 = 1 << 1;
pub const VMLOAD: u32 = 1 << 2;
pub const VMSAVE: u32 = 1 << 3;
pub const STGI: u32 = 1 << 4;
pub const CLGI: u32 = 1 << 5;
pub const SKINIT: u32 = 1 << 6;
pub const RDTSCP: u32 = 1 << 7;
pub const ICEBP: u32 = 1 << 8;
pub const WBINVD: u32 = 1 << 9;
pub const MONITOR: u32 = 1 << 10;
pub const MWAIT: u32 = 1 << 11;
pub const XSETBV: u32 = 1 << 13;
pub const RDPRU: u32 = 1 << 14;

/// `int_ctl`: V_INTR_MASKING, so the guest's RFLAGS.IF does not mask host interrupts.
pub const V_INTR_MASKING: u32 = 1 << 24;
/// `int_ctl`: the guest's TPR (CR8) while V_INTR_MASKING is on.
pub const V_TPR_MASK: u32 = 0xf;
/// `int_ctl`: a virtual interrupt is pending (used only to open an interrupt window).
pub const V_IRQ: u32 = 1 << 8;
pub const V_INTR_PRIO_SHIFT: u32 = 16;
/// `int_ctl`: the virtual interrupt ignores V_TPR.
pub const V_IGN_TPR: u32 = 1 << 20;
/// `int_state`: the guest is in an interrupt shadow (STI/MOV SS).
pub const INTERRUPT_SHADOW: u32 = 1 << 0;
/// `misc_ctl`: nested paging enable.
pub const NP_ENABLE: u64 = 1 << 0;
/// `tlb_ctl`: flush this guest's TLB entries on VMRUN.
pub const TLB_CONTROL_FLUSH_ASID: u8 = 3;

// Exit codes.
pub const EXIT_READ_CR0: u64 = 0x000;
pub const EXIT_WRITE_CR0: u64 = 0x010;
pub const EXIT_READ_DR0: u64 = 0x020;
pub const EXIT_WRITE_DR15: u64 = 0x03f;
pub const EXIT_EXCP_BASE: u64 = 0x040;
pub const EXIT_INTR: u64 = 0x060;
pub const EXIT_NMI: u64 = 0x061;
pub const EXIT_SMI: u64 = 0x062;
pub const EXIT_INIT: u64 = 0x063;
pub const EXIT_VINTR: u64 = 0x064;
pub const EXIT_CPUID: u64 = 0x072;
pub const EXIT_IRET: u64 = 0x074;
pub const EXIT_INVD: u64 = 0x076;
pub const EXIT_HLT: u64 = 0x078;
pub const EXIT_IOIO: u64 = 0x07b;
pub const EXIT_MSR: u64 = 0x07c;
pub const EXIT_SHUTDOWN: u64 = 0x07f;
pub const EXIT_VMRUN: u64 = 0x080;
pub const EXIT_VMMCALL: u64 = 0x081;
pub const EXIT_VMLOAD: u64 = 0x082;
pub const EXIT_VMSAVE: u64 = 0x083;
pub const EXIT_STGI: u64 = 0x084;
pub const EXIT_CLGI: u64 = 0x085;
pub const EXIT_SKINIT: u64 = 0x086;
pub const EXIT_WBINVD: u64 = 0x089;
pub const EXIT_MONITOR: u64 = 0x08a;
pub const EXIT_MWAIT: u64 = 0x08b;
pub const EXIT_XSETBV: u64 = 0x08d;
pub const EXIT_RDPRU: u64 = 0x08e;
pub const EXIT_NPF: u64 = 0x400;
pub const EXIT_ERR: u64 = u64::MAX;

// IOIO exit_info_1 bits.
pub const IOIO_TYPE_IN: u64 = 1 << 0;
pub const IOIO_STR: u64 = 1 << 2;
pub const IOIO_REP: u64 = 1 << 3;
pub const IOIO_SIZE_SHIFT: u32 = 4;
pub const IOIO_SIZE_MASK: u64 = 7 << IOIO_SIZE_SHIFT;

// EFER.

/// kvm_segment-style unpacked attributes (type, s, dpl, present, avl, l, db, g).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct SegAttr {
    pub type_: u8,
    pub s: bool,
    pub dpl: u8,
    pub present: bool,
    pub avl: bool,
    pub l: bool,
    pub db: bool,
    pub g: bool,
}

impl SegAttr {
    /// The VMCB's 12-bit packing (descriptor bits 40..47 and 52..55).
    pub fn pack(&self) -> u16 {
        (u16::from(self.type_) & 0xf)
            | (u16::from(self.s)) << 4
            | (u16::from(self.dpl) & 3) << 5
            | (u16::from(self.present)) << 7
            | (u16::from(self.avl)) << 8
            | (u16::from(self.l)) << 9
            | (u16::from(self.db)) << 10
            | (u16::from(self.g)) << 11
    }

    pub fn unpack(a: u16) -> Self {
        SegAttr {
            type_: (a & 0xf) as u8,
            s: a & (1 << 4) != 0,
            dpl: ((a >> 5) & 3) as u8,
            present: a & (1 << 7) != 0,
            avl: a & (1 << 8) != 0,
            l: a & (1 << 9) != 0,
            db: a & (1 << 10) != 0,
            g: a & (1 << 11) != 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seg_attr_roundtrip() {
        // A 64-bit code segment: type 0xb, S, P, L, G  = 0xa9b in VMCB form.
        let cs = SegAttr {
            type_: 0xb,
            s: true,
            present: true,
            l: true,
            g: true,
            ..Default::default()
        };
        assert_eq!(cs.pack(), 0xa9b);
        assert_eq!(SegAttr::unpack(0xa9b), cs);
        for a in 0..0x1000u16 {
            assert_eq!(SegAttr::unpack(a).pack(), a);
        }
    }
}
