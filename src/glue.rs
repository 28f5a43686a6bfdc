// SPDX-License-Identifier: GPL-2.0-only
//! The C glue (include/kvm_rs_glue.h, src/glue.c) as bindgen sees it. Also compiled
//! into the vendor modules, which call the `kvm_glue_*` functions kvm.ko exports.
#![allow(
    non_camel_case_types,
    non_upper_case_globals,
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]

include!(concat!(env!("KVM_RS_GEN"), "/glue.rs"));
