// Shared by the host crate (lib.rs) and the vendor module builds, which include only
// the file they need.
pub mod cpuid;
pub mod debugreg;
pub mod emulate;
pub mod ioapic;
pub mod irq_routing;
pub mod lapic;
pub mod mce;
pub mod msr_filter;
pub mod msr_index;
pub mod mtrr;
pub mod pic;
pub mod pit;
pub mod processor_flags;
pub mod sregs;
pub mod svm;
pub mod tsc;
pub mod vmx;
pub mod xstate;
// Files that live beside their kernel-facing users, for upstream's layout.
#[path = "../kvm/mmu/paging.rs"]
pub mod paging;
#[path = "../kvm/mmu/spte.rs"]
pub mod spte;
#[path = "../svm/vmcb.rs"]
pub mod vmcb;
