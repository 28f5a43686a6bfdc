// SPDX-License-Identifier: GPL-2.0-only
//! The x86 code both vendors share (upstream arch/x86/kvm), compiled into kvm.ko.
//! One concept a file, named as upstream; the pure logic under it is the no_std
//! crate in arch/x86/hw (mounted as `crate::hw`).

pub(crate) mod clock;
pub(crate) mod cpuid;
pub(crate) mod debug;
pub(crate) mod emulate;
pub(crate) mod i8254;
pub(crate) mod irq;
pub(crate) mod irqchip;
pub(crate) mod kvm_arch;
pub(crate) mod lapic;
pub(crate) mod mmu;
pub(crate) mod msr;
pub(crate) mod regs;
pub(crate) mod vendor;
pub(crate) mod x86;

/// The generic VM and vCPU as x86 code sees them.
pub(crate) type Vm = crate::kvm_host::Vm<kvm_arch::X86>;
pub(crate) type Vcpu = crate::kvm_host::Vcpu<kvm_arch::X86>;
