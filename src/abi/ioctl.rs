//! ioctl command numbers of the KVM ABI.
//!
//! bindgen cannot translate the function-like `_IO*` macros of `kvm.h`, so the numbers
//! are computed here with the same encoding as `include/uapi/asm-generic/ioctl.h`
//! (x86 uses the generic layout), with the argument sizes taken from the bindgen'd
//! structs. The host tests pin a few against values seen from C.

use super::uapi::{self, KVMIO};

const NRBITS: u32 = 8;
const TYPEBITS: u32 = 8;
const SIZEBITS: u32 = 14;
const NRSHIFT: u32 = 0;
const TYPESHIFT: u32 = NRSHIFT + NRBITS;
const SIZESHIFT: u32 = TYPESHIFT + TYPEBITS;
const DIRSHIFT: u32 = SIZESHIFT + SIZEBITS;

const NONE: u32 = 0;
const WRITE: u32 = 1;
const READ: u32 = 2;

/// `_IOC(dir, type, nr, size)`. A size that does not fit in 14 bits is a build error,
/// as `_IOC_TYPECHECK` makes it one in C.
pub const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    assert!(size < (1 << SIZEBITS));
    (dir << DIRSHIFT) | (ty << TYPESHIFT) | (nr << NRSHIFT) | ((size as u32) << SIZESHIFT)
}

/// `_IO(KVMIO, nr)`.
pub const fn io(nr: u32) -> u32 {
    ioc(NONE, KVMIO, nr, 0)
}

/// `_IOR(KVMIO, nr, T)`.
pub const fn ior<T>(nr: u32) -> u32 {
    ioc(READ, KVMIO, nr, core::mem::size_of::<T>())
}

/// `_IOW(KVMIO, nr, T)`.
pub const fn iow<T>(nr: u32) -> u32 {
    ioc(WRITE, KVMIO, nr, core::mem::size_of::<T>())
}

/// `_IOWR(KVMIO, nr, T)`.
pub const fn iowr<T>(nr: u32) -> u32 {
    ioc(READ | WRITE, KVMIO, nr, core::mem::size_of::<T>())
}

/// The `type` byte of an ioctl number (`_IOC_TYPE`).
pub const fn ioc_type(cmd: u32) -> u32 {
    (cmd >> TYPESHIFT) & ((1 << TYPEBITS) - 1)
}

// /dev/kvm ioctls.
pub const KVM_GET_API_VERSION: u32 = io(0x00);
pub const KVM_CREATE_VM: u32 = io(0x01);
pub const KVM_CHECK_EXTENSION: u32 = io(0x03);
pub const KVM_GET_VCPU_MMAP_SIZE: u32 = io(0x04);
pub const KVM_GET_SUPPORTED_CPUID: u32 = iowr::<uapi::kvm_cpuid2>(0x05);

// VM ioctls.
pub const KVM_CREATE_VCPU: u32 = io(0x41);
pub const KVM_SET_USER_MEMORY_REGION: u32 = iow::<uapi::kvm_userspace_memory_region>(0x46);
pub const KVM_SET_USER_MEMORY_REGION2: u32 = iow::<uapi::kvm_userspace_memory_region2>(0x49);

// vCPU ioctls.
pub const KVM_RUN: u32 = io(0x80);
pub const KVM_GET_REGS: u32 = ior::<uapi::kvm_regs>(0x81);
pub const KVM_SET_REGS: u32 = iow::<uapi::kvm_regs>(0x82);
pub const KVM_GET_SREGS: u32 = ior::<uapi::kvm_sregs>(0x83);
pub const KVM_SET_SREGS: u32 = iow::<uapi::kvm_sregs>(0x84);
pub const KVM_SET_CPUID2: u32 = iow::<uapi::kvm_cpuid2>(0x90);
pub const KVM_GET_CPUID2: u32 = iowr::<uapi::kvm_cpuid2>(0x91);
pub const KVM_GET_MP_STATE: u32 = ior::<uapi::kvm_mp_state>(0x98);
pub const KVM_SET_MP_STATE: u32 = iow::<uapi::kvm_mp_state>(0x99);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_c_values() {
        // Values printed by a C program that includes <linux/kvm.h> (the macros).
        assert_eq!(KVM_GET_API_VERSION, 0xae00);
        assert_eq!(KVM_CREATE_VM, 0xae01);
        assert_eq!(KVM_CHECK_EXTENSION, 0xae03);
        assert_eq!(KVM_GET_VCPU_MMAP_SIZE, 0xae04);
        // Struct-sized ones: the layout comes from bindgen, the encoding from here.
        assert_eq!(iowr::<super::super::uapi::kvm_cpuid2>(0x05), 0xc008_ae05);
        assert_eq!(ior::<super::super::uapi::kvm_regs>(0x81), 0x8090_ae81);
        assert_eq!(
            iow::<super::super::uapi::kvm_userspace_memory_region>(0x46),
            0x4020_ae46
        );
        assert_eq!(iow::<super::super::uapi::kvm_sregs>(0x84), 0x4138_ae84);
    }

    #[test]
    fn type_byte() {
        assert_eq!(ioc_type(KVM_CREATE_VM), KVMIO);
        assert_eq!(ioc_type(0x5401 /* TCGETS */), 0x54);
    }
}
