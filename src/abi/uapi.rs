//! `include/uapi/linux/kvm.h` (and x86's `asm/kvm.h`) as bindgen sees it, generated at
//! build time from the kernel being built against, so the layouts are QEMU's by
//! construction.
#![allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    unsafe_op_in_unsafe_fn,
    missing_docs,
    unnecessary_transmutes,
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks
)]

include!(concat!(env!("KVM_RS_GEN"), "/uapi.rs"));
