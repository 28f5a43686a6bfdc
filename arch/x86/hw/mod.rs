// Shared by the host crate (lib.rs) and the vendor module builds, which include only
// the file they need.
pub mod cpuid;
pub mod emulate;
pub mod ioapic;
pub mod irq_routing;
pub mod lapic;
pub mod npt;
pub mod pic;
pub mod sregs;
pub mod svm;
pub mod vmcb;
pub mod vmx;
pub mod xstate;
