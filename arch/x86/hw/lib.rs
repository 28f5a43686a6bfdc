//! Host build of the x86 hardware-facts crate (see src/abi/lib.rs for the scheme).
#![no_std]

#[cfg(test)]
extern crate std;

include!("mod.rs");
