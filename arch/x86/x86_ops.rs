// SPDX-License-Identifier: GPL-2.0-only
//! The vendor table: what kvm-amd.ko or kvm-intel.ko hands to kvm.ko, the equivalent
//! of upstream's `kvm_x86_ops`. All three modules compile this file, so the C layout
//! is the same by construction; `size` catches a vendor module built from a different
//! revision of it.
//!
//! Vendors build it with `vendor::ops::<V>()` (arch/x86/vendor.rs); kvm.ko only ever
//! sees the table. Entries are added with the features that use them.

use core::ffi::{c_char, c_int, c_void};

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

/// Opaque per-vCPU vendor state (a VMCB and friends).
pub(crate) type VendorVcpu = *mut c_void;

#[repr(C)]
pub(crate) struct X86VendorOps {
    /// `size_of::<X86VendorOps>()` as the vendor was built.
    pub(crate) size: usize,
    /// Module name, NUL-terminated, for messages.
    pub(crate) name: *const c_char,
    /// Bit `n` set when VMs of type `n` (`KVM_X86_*_VM`) can be created.
    pub(crate) vm_types: u32,
    /// Whether `vcpu_create` can succeed (capabilities depend on it).
    pub(crate) has_vcpus: bool,
    /// A vCPU in its reset state (null: -ENOMEM).
    pub(crate) vcpu_create: unsafe extern "C" fn() -> VendorVcpu,
    pub(crate) vcpu_free: unsafe extern "C" fn(VendorVcpu),
    /// `struct kvm_sregs` in and out (the vendor owns segments, CRs, EFER, tables).
    pub(crate) get_sregs: unsafe extern "C" fn(VendorVcpu, *mut c_void),
    /// 0, or -EINVAL for a state the hardware would refuse.
    pub(crate) set_sregs: unsafe extern "C" fn(VendorVcpu, *const c_void) -> c_int,
    /// Enters the guest once. Interrupts are off; `nested_cr3` is the guest-physical
    /// page-table root; `flush` asks for this guest's TLB entries to be dropped.
    pub(crate) run: unsafe extern "C" fn(
        VendorVcpu,
        regs: *mut GuestRegs,
        nested_cr3: u64,
        flush: bool,
        exit: *mut Exit,
    ),
    /// Queues exception `vector` (with `error_code` if `has_error`) for the next entry.
    pub(crate) queue_exception:
        unsafe extern "C" fn(VendorVcpu, vector: u32, has_error: bool, error_code: u32),
    /// Reads/writes an MSR the vendor keeps; 0, or 1 when it is not one of them.
    pub(crate) get_msr: unsafe extern "C" fn(VendorVcpu, index: u32, data: *mut u64) -> c_int,
    pub(crate) set_msr: unsafe extern "C" fn(VendorVcpu, index: u32, data: u64) -> c_int,
    /// Whether an external interrupt can be injected now: the guest's RFLAGS.IF
    /// (`rflags`), no interrupt shadow, no other event being injected.
    pub(crate) interrupt_allowed: unsafe extern "C" fn(VendorVcpu, rflags: u64) -> bool,
    /// Injects external interrupt `vector` on the next entry.
    pub(crate) inject_irq: unsafe extern "C" fn(VendorVcpu, vector: u32),
    /// Makes the guest exit with `exit::IRQ_WINDOW` as soon as it can take an interrupt.
    pub(crate) enable_irq_window: unsafe extern "C" fn(VendorVcpu),
    /// Puts the vendor state in the INIT state (segments, CRs, EFER; kvm.ko owns
    /// the registers).
    pub(crate) reset: unsafe extern "C" fn(VendorVcpu),
    /// Injects an NMI on the next entry if nothing else is being injected and the
    /// guest is not in an interrupt shadow; false if it cannot now.
    pub(crate) inject_nmi: unsafe extern "C" fn(VendorVcpu) -> bool,
    /// The event being injected and the interrupt shadow, as `struct
    /// kvm_vcpu_events` has them (exception, interrupt, nmi.injected, shadow).
    pub(crate) get_events: unsafe extern "C" fn(VendorVcpu, *mut c_void),
    /// Sets them from a validated `struct kvm_vcpu_events`.
    pub(crate) set_events: unsafe extern "C" fn(VendorVcpu, *const c_void),
    /// DR6 (`n` = 6) or DR7 (`n` = 7) of the guest.
    pub(crate) get_dr: unsafe extern "C" fn(VendorVcpu, n: u32) -> u64,
    pub(crate) set_dr: unsafe extern "C" fn(VendorVcpu, n: u32, val: u64),
    /// The guest's CR4 as it runs (it may change it without an exit).
    pub(crate) get_cr4: unsafe extern "C" fn(VendorVcpu) -> u64,
    /// Intercepts debug-register accesses again after `exit::DR_ACCESS`, once
    /// kvm.ko saved DR0-3 (upstream sync_dirty_debug_regs).
    pub(crate) intercept_dr: unsafe extern "C" fn(VendorVcpu),
}

// SAFETY: the table is immutable after construction and `name` points to a static
// string, so sharing it between threads is sound.
unsafe impl Sync for X86VendorOps {}
