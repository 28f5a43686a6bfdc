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

/// What an exit handler decided, as upstream's handlers return it: re-enter the
/// guest (1), or go back to userspace with KVM_RUN's result (0 with kvm_run filled
/// in, or -errno).
#[derive(Clone, Copy)]
pub(crate) enum Next {
    /// Re-enter the guest.
    Guest,
    /// Return to userspace with this KVM_RUN result.
    User(Result),
}

/// Page-fault error code bits (upstream PFERR_*_MASK) as the TDP exits report them.
pub(crate) mod pferr {
    pub(crate) const PRESENT: u64 = 1 << 0;
    pub(crate) const WRITE: u64 = 1 << 1;
    pub(crate) const FETCH: u64 = 1 << 4;
}

/// The stats a vendor's exit handler counts (upstream `++vcpu->stat.*` in the
/// vendor's handlers), for [`KvmCoreOps`]' `kvm_stat_inc`.
pub(crate) mod vcpu_stat {
    /// A host interrupt ended the run (irq_exits).
    pub(crate) const IRQ_EXITS: u32 = 0;
    /// The interrupt window asked for opened (irq_window_exits).
    pub(crate) const IRQ_WINDOW_EXITS: u32 = 1;
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
ffi_ret_plain!((), bool, u64);

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

/// Upstream's convention for exit handlers: 1, 0 or -errno.
impl FfiRet for Next {
    type Raw = c_int;
    fn into_raw(self) -> c_int {
        match self {
            Next::Guest => 1,
            Next::User(r) => r.into_raw(),
        }
    }
    fn from_raw(raw: c_int) -> Self {
        match raw {
            1 => Next::Guest,
            r => Next::User(Result::from_raw(r)),
        }
    }
}

/// The vendor operations, in table order. `$cb!` receives each as
/// `fn name(ref|mut|exit|load, args...) -> ret;`: `ref` operations read the vendor
/// vCPU, `mut` ones change it, `exit` (handle_exit) changes it and calls back into
/// kvm.ko; `load` ones get only its load state (what the preempt notifier may
/// touch while the vCPU's task is preempted anywhere, so shared and separate from
/// the vCPU). Types are named as the expansion site sees
/// them (`uapi`, `GuestRegs`, `Next`, `KvmCoreVcpu` in scope there).
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
            /// The vCPU's task runs on `cpu` now (upstream vcpu_load, from
            /// vcpu_load() and the preempt notifier's sched_in, preemption off).
            fn vcpu_load(load, cpu: u32) -> ();
            /// The vCPU's task leaves the CPU (upstream vcpu_put: at the end of a
            /// vCPU ioctl and at sched_out, preemption off).
            fn vcpu_put(load) -> ();
            /// Enters the guest once, with interrupts and preemption off (upstream
            /// vcpu_run). `flush`: drop this guest's TLB entries first.
            fn vcpu_run(mut, regs: &mut GuestRegs, flush: bool) -> ();
            /// Handles the exit of the last vcpu_run (upstream handle_exit), with
            /// interrupts on: the vendor decodes it and calls kvm.ko's helpers
            /// through `core` (kvm_emulate_cpuid(), kvm_mmu_page_fault()...).
            fn handle_exit(exit, core: &mut KvmCoreVcpu) -> Next;
            /// Queues exception `vector` (with `error_code` if `has_error`) for the
            /// next entry (upstream inject_exception).
            fn queue_exception(mut, vector: u32, has_error: bool, error_code: u32) -> ();
            /// Queues the #BP or #OF an `insn_len`-byte INT3, INT n or INTO at RIP
            /// raised: the guest's handler returns past it (upstream
            /// svm_update_soft_interrupt_rip()).
            fn queue_soft_exception(mut, vector: u32, insn_len: u32) -> ();
            /// Reads an MSR the vendor keeps into `data`; false when it is not one.
            fn get_msr(ref, index: u32, data: &mut u64) -> bool;
            /// Writes an MSR the vendor keeps; false when it is not one.
            fn set_msr(mut, index: u32, data: u64) -> bool;
            /// Whether an external interrupt can be injected now: the guest's
            /// RFLAGS.IF (`rflags`), no interrupt shadow, no other event pending.
            fn interrupt_allowed(ref, rflags: u64) -> bool;
            /// Injects external interrupt `vector` on the next entry.
            fn inject_irq(mut, vector: u8) -> ();
            /// Makes the guest exit as soon as it can take an interrupt (its handler
            /// counts `vcpu_stat::IRQ_WINDOW_EXITS`; kvm.ko injects on re-entry).
            fn enable_irq_window(mut) -> ();
            /// Injects an NMI on the next entry if nothing else is being injected,
            /// NMIs are not masked and the guest is not in an interrupt shadow;
            /// false if it cannot now. An injected NMI masks NMIs until its IRET.
            fn inject_nmi(mut) -> bool;
            /// Whether an NMI could be injected now (upstream nmi_allowed).
            fn nmi_allowed(ref) -> bool;
            /// Whether NMIs are masked (an NMI handler runs; upstream get_nmi_mask).
            fn get_nmi_mask(ref) -> bool;
            /// Makes the guest exit as soon as an NMI can be injected (upstream
            /// enable_nmi_window): at the IRET that unmasks, or after one
            /// single-stepped instruction.
            fn enable_nmi_window(mut) -> ();
            /// Puts the vendor state in the INIT state (segments, CRs, EFER; kvm.ko
            /// owns the registers), as upstream vcpu_reset(init_event).
            fn vcpu_reset(mut) -> ();
            /// The event being injected and the interrupt shadow, as `struct
            /// kvm_vcpu_events` has them (exception, interrupt, nmi.injected and
            /// .masked, shadow).
            fn get_events(ref, e: &mut uapi::kvm_vcpu_events) -> ();
            /// Sets them from a validated `struct kvm_vcpu_events`.
            fn set_events(mut, e: &uapi::kvm_vcpu_events) -> ();
            /// DR6 (`n` = 6) or DR7 (`n` = 7) of the guest.
            fn get_dr(ref, n: u32) -> u64;
            fn set_dr(mut, n: u32, val: u64) -> ();
            /// The guest's CR4 as it runs (it may change it without an exit).
            fn get_cr4(ref) -> u64;
            /// After `kvm_debugreg_wont_exit`, once kvm.ko saved DR0-3: intercept
            /// debug-register accesses again (upstream sync_dirty_debug_regs).
            fn sync_dirty_debug_regs(mut) -> ();
            /// KVM_SET_GUEST_DEBUG changed `guest_debug` (`KVM_GUESTDBG_*`, 0 when
            /// off): #BP exits to userspace with USE_SW_BP, #DB with SINGLESTEP or
            /// USE_HW_BP, guest debug-register accesses are emulated while any is
            /// on (upstream update_exception_bitmap and vcpu->guest_debug).
            fn update_exception_bitmap(mut, guest_debug: u32) -> ();
            /// KVM_X86_SETUP_MCE accepted `mcg_cap`: what of it the vendor's vCPUs
            /// keep (upstream setup_mce; SVM's MCG_CAP has bits 8:0 only).
            fn setup_mce(ref, mcg_cap: u64) -> u64;
            /// The guest's TSC is the host's plus `offset` (upstream
            /// write_tsc_offset; kvm.ko keeps the offset).
            fn write_tsc_offset(mut, offset: u64) -> ();
            /// The last exit as upstream's get_exit_info reports it in an
            /// emulation failure: reason, info 1, info 2, the interrupt info and
            /// its error code.
            fn get_exit_info(ref, info: &mut [u64; 5]) -> ();
        }
    };
}

/// The receiver of a table entry as it crosses: the vendor vCPU, or its load state.
macro_rules! recv_ptr {
    (ref) => {
        *mut c_void
    };
    (mut) => {
        *mut c_void
    };
    (exit) => {
        *mut c_void
    };
    (load) => {
        *const c_void
    };
}
#[allow(unused_imports, reason = "for the vendor side (arch/x86/vendor.rs)")]
pub(crate) use recv_ptr;

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
            /// MSR_IA32_UCODE_REV of a new vCPU under
            /// KVM_X86_QUIRK_STUFF_FEATURE_MSRS (upstream: set in the vendor's
            /// vCPU init).
            pub(crate) reset_microcode_version: u64,
            /// A feature MSR the vendor offers (upstream get_feature_msr): its
            /// supported value into `*data`; false when the vendor has none such.
            pub(crate) get_feature_msr: extern "C" fn(index: u32, data: &mut u64) -> bool,
            /// A vCPU in its reset state into `*vcpu` and its load state into
            /// `*load`; 0 or -errno.
            pub(crate) vcpu_create:
                unsafe extern "C" fn(vcpu: &mut *mut c_void, load: &mut *const c_void) -> c_int,
            /// Frees a vCPU `vcpu_create` made.
            pub(crate) vcpu_free: unsafe extern "C" fn(*mut c_void),
            /// Drops the load state `vcpu_create` made (once the preempt notifier
            /// can no longer run).
            pub(crate) load_free: unsafe extern "C" fn(*const c_void),
            $($(#[$doc])*
            pub(crate) $name: unsafe extern "C" fn(recv_ptr!($recv) $(, $ty)*) -> <$ret as FfiRet>::Raw,)*
        }
    };
}
kvm_x86_ops_list!(define_kvm_x86_ops_table);

// SAFETY: the table is immutable after construction and `name` points to a static
// string, so sharing it between threads is sound.
unsafe impl Sync for KvmX86Ops {}

/// kvm.ko's helpers a vendor's `handle_exit` calls (upstream: the functions x86.c
/// and mmu.c export to kvm-amd and kvm-intel), as one list. `$cb!` receives each as
/// `fn name(args...) -> ret;`. Every helper gets the vendor vCPU back (the one
/// `handle_exit` was called for), so that kvm.ko's calls into the vendor from
/// inside the helper go through the vendor's own borrow.
macro_rules! kvm_core_ops_list {
    ($cb:ident) => {
        $cb! {
            /// HLT: sleep while halted with the LAPIC in the kernel, else KVM_EXIT_HLT.
            fn kvm_emulate_halt(next_rip: u64) -> Next;
            /// CPUID from the vCPU's table.
            fn kvm_emulate_cpuid(next_rip: u64) -> Next;
            /// RDMSR ECX into EDX:EAX, or #GP.
            fn kvm_emulate_rdmsr(next_rip: u64) -> Next;
            /// WRMSR EDX:EAX into ECX, or #GP.
            fn kvm_emulate_wrmsr(next_rip: u64) -> Next;
            /// A KVM hypercall (VMMCALL/VMCALL).
            fn kvm_emulate_hypercall(next_rip: u64) -> Next;
            /// XSETBV: XCR ECX := EDX:EAX, or #GP.
            fn kvm_emulate_xsetbv(next_rip: u64) -> Next;
            /// MONITOR or MWAIT: a NOP, or #UD where the VM wants it.
            fn kvm_emulate_monitor_mwait(next_rip: u64) -> Next;
            /// An instruction with nothing to emulate (INVD, WBINVD): skipped.
            fn kvm_emulate_as_nop(next_rip: u64) -> Next;
            /// IN/OUT (not string) of `size` bytes at `port`: an in-kernel device
            /// or KVM_EXIT_IO.
            fn kvm_fast_pio(size: u32, port: u16, input: bool, next_rip: u64) -> Next;
            /// The instruction at RIP through the emulator (INS/OUTS).
            fn kvm_emulate_instruction() -> Next;
            /// A TDP fault at `gpa` (`error_code`: `pferr` bits; `vectoring`: the
            /// CPU was delivering an event): map the page or emulate the MMIO
            /// access. `exit_reason` is the vendor's, reported if it cannot be handled.
            fn kvm_mmu_page_fault(gpa: u64, error_code: u64, vectoring: bool, exit_reason: u64) -> Next;
            /// #UD in the guest: the other vendor's hypercall patched, or #UD back.
            fn handle_ud() -> Next;
            /// kvm_vcpu_reset(): the vCPU to its INIT (`init_event`) state; calls
            /// the vendor's vcpu_reset.
            fn kvm_vcpu_reset(init_event: bool) -> ();
            /// `kvm_run->exit_reason = reason` (the handler then returns to userspace).
            fn set_exit_reason(reason: u32) -> ();
            /// KVM_EXIT_FAIL_ENTRY with the vendor's reason.
            fn kvm_prepare_fail_entry_exit(hardware_entry_failure_reason: u64) -> Next;
            /// KVM_EXIT_INTERNAL_ERROR for an exit the vendor does not handle.
            fn kvm_prepare_unexpected_reason_exit(exit_reason: u64) -> Next;
            /// Counts a `vcpu_stat` event.
            fn kvm_stat_inc(stat: u32) -> ();
            /// The guest accesses DR0-3 without exits until the next exit
            /// (upstream KVM_DEBUGREG_WONT_EXIT): kvm.ko loads them for the entries.
            fn kvm_debugreg_wont_exit() -> ();
            /// Exception `vector` for the guest with its payload (for #DB: the
            /// cause, active-high DR6 bits, which go into the guest's DR6).
            fn kvm_queue_exception_p(vector: u32, payload: u64) -> ();
            /// KVM_EXIT_DEBUG with `kvm_run->debug.arch` as given (the handler then
            /// returns to userspace).
            fn set_debug_exit(exception: u32, pc: u64, dr6: u64, dr7: u64) -> ();
        }
    };
}
pub(crate) use kvm_core_ops_list;

/// Expands the core list into its table.
macro_rules! define_kvm_core_ops_table {
    ($($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        /// kvm.ko's helpers for exit handlers, the table behind [`KvmCoreVcpu`].
        #[repr(C)]
        pub(crate) struct KvmCoreOps {
            $($(#[$doc])*
            pub(crate) $name:
                unsafe extern "C" fn(ctx: *mut c_void, vcpu: *mut c_void $(, $ty)*)
                    -> <$ret as FfiRet>::Raw,)*
        }
    };
}
kvm_core_ops_list!(define_kvm_core_ops_table);

/// What `handle_exit` gets: kvm.ko's helpers and the state they work on, valid for
/// that call only (upstream: the `struct kvm_vcpu` the vendor's vCPU embeds).
#[repr(C)]
pub(crate) struct KvmCoreVcpu {
    pub(crate) ops: &'static KvmCoreOps,
    /// kvm.ko's exit context; opaque to the vendor.
    pub(crate) ctx: *mut c_void,
}

// Path-scoped, so the users need not come after this file in their crate root.
pub(crate) use kvm_x86_ops_list;
