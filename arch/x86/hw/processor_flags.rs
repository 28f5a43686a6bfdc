//! Control-register and RFLAGS bits, once (upstream arch/x86/include/uapi/asm/
//! processor-flags.h), and the NMI vector (asm/irq_vectors.h; the exception
//! vectors are the uapi's `*_VECTOR`).

pub const X86_EFLAGS_CF: u64 = 1 << 0;
/// Bit 1 always reads as 1.
pub const X86_EFLAGS_FIXED: u64 = 1 << 1;
pub const X86_EFLAGS_PF: u64 = 1 << 2;
pub const X86_EFLAGS_AF: u64 = 1 << 4;
pub const X86_EFLAGS_ZF: u64 = 1 << 6;
pub const X86_EFLAGS_SF: u64 = 1 << 7;
pub const X86_EFLAGS_TF: u64 = 1 << 8;
pub const X86_EFLAGS_IF: u64 = 1 << 9;
pub const X86_EFLAGS_DF: u64 = 1 << 10;
pub const X86_EFLAGS_OF: u64 = 1 << 11;
pub const X86_EFLAGS_RF: u64 = 1 << 16;
pub const X86_EFLAGS_VM: u64 = 1 << 17;
pub const X86_EFLAGS_AC: u64 = 1 << 18;

pub const X86_CR0_PE: u64 = 1 << 0;
pub const X86_CR0_WP: u64 = 1 << 16;
pub const X86_CR0_NW: u64 = 1 << 29;
pub const X86_CR0_CD: u64 = 1 << 30;
pub const X86_CR0_PG: u64 = 1 << 31;

pub const X86_CR4_DE: u64 = 1 << 3;
pub const X86_CR4_PSE: u64 = 1 << 4;
pub const X86_CR4_PAE: u64 = 1 << 5;
pub const X86_CR4_MCE: u64 = 1 << 6;
pub const X86_CR4_UMIP: u64 = 1 << 11;
pub const X86_CR4_LA57: u64 = 1 << 12;
pub const X86_CR4_FSGSBASE: u64 = 1 << 16;
pub const X86_CR4_PCIDE: u64 = 1 << 17;
pub const X86_CR4_OSXSAVE: u64 = 1 << 18;
pub const X86_CR4_SMEP: u64 = 1 << 20;
pub const X86_CR4_SMAP: u64 = 1 << 21;
pub const X86_CR4_PKE: u64 = 1 << 22;

pub const NMI_VECTOR: u32 = 2;
