//! Host build of the generic-logic crate (see src/abi/lib.rs for the scheme).
#![no_std]

#[cfg(test)]
extern crate std;

include!("mod.rs");
