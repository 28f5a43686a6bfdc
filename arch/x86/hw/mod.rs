// Shared by the host crate (lib.rs) and the vendor module builds, which include only
// the file they need.
pub mod cpuid;
pub mod emulate;
pub mod lapic;
pub mod npt;
pub mod sregs;
pub mod svm;
pub mod vmcb;
pub mod vmx;
pub mod xstate;
