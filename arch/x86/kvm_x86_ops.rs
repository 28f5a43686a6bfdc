// SPDX-License-Identifier: GPL-2.0-only
//! The vendor seam: upstream's `kvm_x86_ops`, as one list.
//!
//! [`kvm_x86_ops_list!`] is the only place the operations are spelled out (upstream's
//! `kvm-x86-ops.h`). Each user hands it a macro that turns the list into what it
//! needs, so the three views cannot drift apart:
//! - here, [`define_kvm_x86_ops_table!`]: the `#[repr(C)]` table [`KvmX86Ops`]
//!   the vendor registers (all three modules compile this file, so its layout is
//!   the same by construction; `size` catches a vendor built from another revision);
//! - in the vendor modules (arch/x86/vendor.rs): the `KvmX86Vendor` trait each
//!   vendor implements and the `extern "C"` trampolines the table points at;
//! - in kvm.ko (src/vendor.rs): `VendorVcpu`, the safe handle through which the
//!   core calls the table, the one audited place for those calls.
//!
//! Arguments are typed (uapi structs by reference, which have the C ABI of a
//! pointer); results cross as [`FfiRet::Raw`]: a kernel `Result` is 0 or -errno.
use core::ffi::{c_char, c_int, c_void};
use kernel::prelude::*;

use crate::spte::SpteMasks;
use crate::uapi;

/// Indices into [`GuestRegs::gpr`], the hardware encoding (upstream `VCPU_REGS_*`).
pub(crate) mod reg {
    pub(crate) const RAX: usize = 0;
    pub(crate) const RCX: usize = 1;
    pub(crate) const RDX: usize = 2;
    pub(crate) const RBX: usize = 3;
    pub(crate) const RSP: usize = 4;
    pub(crate) const RBP: usize = 5;
    pub(crate) const RSI: usize = 6;
    pub(crate) const RDI: usize = 7;
}

/// The registers kvm.ko owns while the vCPU is outside the guest; the vendor moves
/// RAX/RSP/RIP/RFLAGS in and out of its control structure around each entry and
/// the others in its entry code.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct GuestRegs {
    pub(crate) gpr: [u64; 16],
    pub(crate) rip: u64,
    pub(crate) rflags: u64,
    /// The guest's TPR as CR8 (bits 3:0), kept in sync with the in-kernel LAPIC.
    pub(crate) cr8: u64,
}

/// Why the guest stopped, in vendor-neutral terms (`kind`), with the raw reason for
/// KVM_EXIT_FAIL_ENTRY / internal errors.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct Exit {
    pub(crate) kind: u32,
    /// IO: bit 0 in, bit 1 string, bit 2 rep; NPF: the page-fault error code bits.
    pub(crate) flags: u32,
    pub(crate) hw_reason: u64,
    /// IO: port; NPF: faulting GPA; MSR: index.
    pub(crate) info: u64,
    /// IO: access size in bytes; MSR: value written.
    pub(crate) info2: u64,
    /// RIP after the exiting instruction, when the hardware tells (0 if not).
    pub(crate) next_rip: u64,
}

/// Values of [`Exit::kind`].
pub(crate) mod exit {
    /// Nothing for kvm.ko to do (a host interrupt, already handled): re-enter.
    pub(crate) const NONE: u32 = 0;
    pub(crate) const IO: u32 = 1;
    pub(crate) const HLT: u32 = 2;
    pub(crate) const SHUTDOWN: u32 = 3;
    pub(crate) const NPF: u32 = 4;
    pub(crate) const CPUID: u32 = 5;
    pub(crate) const RDMSR: u32 = 6;
    pub(crate) const WRMSR: u32 = 7;
    pub(crate) const VMMCALL: u32 = 8;
    pub(crate) const FAIL_ENTRY: u32 = 9;
    /// An exit kvm-rs does not handle: KVM_EXIT_INTERNAL_ERROR with `hw_reason`.
    pub(crate) const UNHANDLED: u32 = 10;
    /// The guest executed an instruction it must get #UD for (VMRUN, XSETBV...).
    pub(crate) const UD: u32 = 11;
    /// The guest can take an interrupt now (the window `enable_irq_window` asked for).
    pub(crate) const IRQ_WINDOW: u32 = 12;
    /// The guest raised #UD (intercepted so that kvm.ko can fix up the other
    /// vendor's hypercall instruction); kvm.ko re-injects it otherwise.
    pub(crate) const INVALID_OPCODE: u32 = 13;
    /// XSETBV: XCR `RCX` := `EDX:EAX`, for kvm.ko to check and switch on entries.
    pub(crate) const XSETBV: u32 = 14;
    /// The guest's first debug-register access since DR0-3 were last saved: the
    /// vendor stopped intercepting them, kvm.ko loads DR0-3 for the entries until
    /// the next exit (upstream KVM_DEBUGREG_WONT_EXIT). The instruction runs again.
    pub(crate) const DR_ACCESS: u32 = 15;

    pub(crate) const IO_IN: u32 = 1 << 0;
    pub(crate) const IO_STRING: u32 = 1 << 1;
    pub(crate) const IO_REP: u32 = 1 << 2;

    pub(crate) const PF_PRESENT: u32 = 1 << 0;
    pub(crate) const PF_WRITE: u32 = 1 << 1;
    pub(crate) const PF_FETCH: u32 = 1 << 4;
    /// NPF while the CPU was delivering an event (exit_int_info valid).
    pub(crate) const VECTORING: u32 = 1 << 31;
}

/// A result type of a vendor operation and how it crosses the C ABI.
pub(crate) trait FfiRet {
    type Raw;
    fn into_raw(self) -> Self::Raw;
    fn from_raw(raw: Self::Raw) -> Self;
}

macro_rules! ffi_ret_plain {
    ($($t:ty),*) => {$(
        impl FfiRet for $t {
            type Raw = $t;
            fn into_raw(self) -> $t {
                self
            }
            fn from_raw(raw: $t) -> $t {
                raw
            }
        }
    )*};
}
ffi_ret_plain!((), bool, u64, Exit);

/// One return convention for fallible operations: 0, or a negative errno.
impl FfiRet for Result {
    type Raw = c_int;
    fn into_raw(self) -> c_int {
        match self {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }
    fn from_raw(raw: c_int) -> Self {
        match raw {
            0 => Ok(()),
            e => Err(Error::from_errno(e)),
        }
    }
}

/// The vendor operations, in table order. `$cb!` receives each as
/// `fn name(ref|mut, args...) -> ret;`: `ref` operations read the vendor vCPU, `mut`
/// ones change it. Types are named as the expansion site sees them (`uapi`,
/// `GuestRegs`, `Exit` in scope there).
macro_rules! kvm_x86_ops_list {
    ($cb:ident) => {
        $cb! {
            /// `struct kvm_sregs` out (the vendor owns segments, CRs, EFER, tables).
            fn get_sregs(ref, s: &mut uapi::kvm_sregs) -> ();
            /// `struct kvm_sregs` in; -EINVAL for a state the hardware would refuse.
            fn set_sregs(mut, s: &uapi::kvm_sregs) -> Result;
            /// Points the vCPU's two-dimensional paging at `root_hpa`, the root of
            /// the guest-physical page tables (upstream load_mmu_pgd).
            fn load_mmu_pgd(mut, root_hpa: u64) -> ();
            /// Enters the guest once, with interrupts and preemption off (upstream
            /// vcpu_run). `flush`: drop this guest's TLB entries first.
            fn vcpu_run(mut, regs: &mut GuestRegs, flush: bool) -> Exit;
            /// Queues exception `vector` (with `error_code` if `has_error`) for the
            /// next entry (upstream inject_exception).
            fn queue_exception(mut, vector: u32, has_error: bool, error_code: u32) -> ();
            /// Reads an MSR the vendor keeps into `data`; false when it is not one.
            fn get_msr(ref, index: u32, data: &mut u64) -> bool;
            /// Writes an MSR the vendor keeps; false when it is not one.
            fn set_msr(mut, index: u32, data: u64) -> bool;
            /// Whether an external interrupt can be injected now: the guest's
            /// RFLAGS.IF (`rflags`), no interrupt shadow, no other event pending.
            fn interrupt_allowed(ref, rflags: u64) -> bool;
            /// Injects external interrupt `vector` on the next entry.
            fn inject_irq(mut, vector: u8) -> ();
            /// Makes the guest exit with `exit::IRQ_WINDOW` as soon as it can take
            /// an interrupt.
            fn enable_irq_window(mut) -> ();
            /// Injects an NMI on the next entry if nothing else is being injected
            /// and the guest is not in an interrupt shadow; false if it cannot now.
            fn inject_nmi(mut) -> bool;
            /// Puts the vendor state in the INIT state (segments, CRs, EFER; kvm.ko
            /// owns the registers), as upstream vcpu_reset(init_event).
            fn vcpu_reset(mut) -> ();
            /// The event being injected and the interrupt shadow, as `struct
            /// kvm_vcpu_events` has them (exception, interrupt, nmi.injected, shadow).
            fn get_events(ref, e: &mut uapi::kvm_vcpu_events) -> ();
            /// Sets them from a validated `struct kvm_vcpu_events`.
            fn set_events(mut, e: &uapi::kvm_vcpu_events) -> ();
            /// DR6 (`n` = 6) or DR7 (`n` = 7) of the guest.
            fn get_dr(ref, n: u32) -> u64;
            fn set_dr(mut, n: u32, val: u64) -> ();
            /// The guest's CR4 as it runs (it may change it without an exit).
            fn get_cr4(ref) -> u64;
            /// After `exit::DR_ACCESS`, once kvm.ko saved DR0-3: intercept
            /// debug-register accesses again (upstream sync_dirty_debug_regs).
            fn sync_dirty_debug_regs(mut) -> ();
        }
    };
}

/// Expands the list into the table.
macro_rules! define_kvm_x86_ops_table {
    ($($(#[$doc:meta])* fn $name:ident($recv:ident $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        /// What a vendor module registers with kvm.ko (upstream struct kvm_x86_ops).
        #[repr(C)]
        pub(crate) struct KvmX86Ops {
            /// `size_of::<KvmX86Ops>()` as the vendor was built.
            pub(crate) size: usize,
            /// Module name, NUL-terminated, for messages.
            pub(crate) name: *const c_char,
            /// Bit `n` set when VMs of type `n` (`KVM_X86_*_VM`) can be created.
            pub(crate) vm_types: u32,
            /// Whether `vcpu_create` can succeed (capabilities depend on it).
            pub(crate) has_vcpus: bool,
            /// The two-dimensional paging format (upstream: the masks a vendor
            /// sets, kvm_mmu_set_ept_masks() for VMX).
            pub(crate) tdp_masks: SpteMasks,
            /// A vCPU in its reset state into `*out`; 0 or -errno.
            pub(crate) vcpu_create: unsafe extern "C" fn(out: &mut *mut c_void) -> c_int,
            /// Frees a vCPU `vcpu_create` made.
            pub(crate) vcpu_free: unsafe extern "C" fn(*mut c_void),
            $($(#[$doc])*
            pub(crate) $name: unsafe extern "C" fn(*mut c_void $(, $ty)*) -> <$ret as FfiRet>::Raw,)*
        }
    };
}
kvm_x86_ops_list!(define_kvm_x86_ops_table);

// SAFETY: the table is immutable after construction and `name` points to a static
// string, so sharing it between threads is sound.
unsafe impl Sync for KvmX86Ops {}

// Path-scoped, so the users need not come after this file in their crate root.
pub(crate) use kvm_x86_ops_list;
