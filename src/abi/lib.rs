//! Host build of the kvm-rs ABI crate. The modules compile the same files through
//! `#[path = "abi/mod.rs"] mod abi;`, so everything here is `no_std` and refers to
//! its siblings with `super::`, never `crate::`.
#![no_std]

#[cfg(test)]
extern crate std;

include!("mod.rs");
