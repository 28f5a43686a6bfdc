// The ABI modules, shared by the host crate (lib.rs) and the kvm.ko build.
pub mod caps;
pub mod ioctl;
pub mod uapi;
