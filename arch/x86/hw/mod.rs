// Shared by the host crate (lib.rs) and the vendor module builds, which include only
// the file they need.
pub mod svm;
pub mod vmx;
