// Shared by the host crate (lib.rs) and the kvm.ko build.
pub mod coalesced_mmio;
pub mod halt_poll;
pub mod io_bus;
pub mod ioeventfd;
pub mod memslot;
pub mod stats;
