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
pub const KVM_GET_MSR_INDEX_LIST: u32 = iowr::<uapi::kvm_msr_list>(0x02);
pub const KVM_X86_GET_MCE_CAP_SUPPORTED: u32 = ior::<u64>(0x9d);
pub const KVM_GET_MSR_FEATURE_INDEX_LIST: u32 = iowr::<uapi::kvm_msr_list>(0x0a);

// VM ioctls.
pub const KVM_CREATE_VCPU: u32 = io(0x41);
pub const KVM_SET_USER_MEMORY_REGION: u32 = iow::<uapi::kvm_userspace_memory_region>(0x46);
pub const KVM_SET_USER_MEMORY_REGION2: u32 = iow::<uapi::kvm_userspace_memory_region2>(0x49);
pub const KVM_GET_DIRTY_LOG: u32 = iow::<uapi::kvm_dirty_log>(0x42);
pub const KVM_CLEAR_DIRTY_LOG: u32 = iowr::<uapi::kvm_clear_dirty_log>(0xc0);
pub const KVM_SET_NR_MMU_PAGES: u32 = io(0x44);
pub const KVM_SET_TSS_ADDR: u32 = io(0x47);
pub const KVM_SET_IDENTITY_MAP_ADDR: u32 = iow::<u64>(0x48);
pub const KVM_CREATE_IRQCHIP: u32 = io(0x60);
pub const KVM_IRQ_LINE: u32 = iow::<uapi::kvm_irq_level>(0x61);
pub const KVM_GET_IRQCHIP: u32 = iowr::<uapi::kvm_irqchip>(0x62);
pub const KVM_SET_IRQCHIP: u32 = ior::<uapi::kvm_irqchip>(0x63);
pub const KVM_IRQ_LINE_STATUS: u32 = iowr::<uapi::kvm_irq_level>(0x67);
pub const KVM_CREATE_PIT: u32 = io(0x64);
pub const KVM_REGISTER_COALESCED_MMIO: u32 = iow::<uapi::kvm_coalesced_mmio_zone>(0x67);
pub const KVM_UNREGISTER_COALESCED_MMIO: u32 = iow::<uapi::kvm_coalesced_mmio_zone>(0x68);
pub const KVM_GET_PIT: u32 = iowr::<uapi::kvm_pit_state>(0x65);
pub const KVM_SET_PIT: u32 = ior::<uapi::kvm_pit_state>(0x66);
pub const KVM_REINJECT_CONTROL: u32 = io(0x71);
pub const KVM_CREATE_PIT2: u32 = iow::<uapi::kvm_pit_config>(0x77);
pub const KVM_GET_PIT2: u32 = ior::<uapi::kvm_pit_state2>(0x9f);
pub const KVM_SET_PIT2: u32 = iow::<uapi::kvm_pit_state2>(0xa0);
pub const KVM_SET_GSI_ROUTING: u32 = iow::<uapi::kvm_irq_routing>(0x6a);
pub const KVM_SIGNAL_MSI: u32 = iow::<uapi::kvm_msi>(0xa5);
pub const KVM_IOEVENTFD: u32 = iow::<uapi::kvm_ioeventfd>(0x79);
pub const KVM_IRQFD: u32 = iow::<uapi::kvm_irqfd>(0x76);
pub const KVM_SET_TSC_KHZ: u32 = io(0xa2);
pub const KVM_GET_TSC_KHZ: u32 = io(0xa3);
pub const KVM_ENABLE_CAP: u32 = iow::<uapi::kvm_enable_cap>(0xa3);
pub const KVM_SET_BOOT_CPU_ID: u32 = io(0x78);
pub const KVM_X86_SET_MSR_FILTER: u32 = iow::<uapi::kvm_msr_filter>(0xc6);
pub const KVM_GET_STATS_FD: u32 = io(0xce);
pub const KVM_CREATE_GUEST_MEMFD: u32 = iowr::<uapi::kvm_create_guest_memfd>(0xd4);
pub const KVM_RESET_DIRTY_RINGS: u32 = io(0xc7);
pub const KVM_CREATE_DEVICE: u32 = iowr::<uapi::kvm_create_device>(0xe0);
pub const KVM_PRE_FAULT_MEMORY: u32 = iowr::<uapi::kvm_pre_fault_memory>(0xd5);

// vCPU ioctls.
pub const KVM_RUN: u32 = io(0x80);
pub const KVM_NMI: u32 = io(0x9a);
pub const KVM_INTERRUPT: u32 = iow::<uapi::kvm_interrupt>(0x86);
pub const KVM_KVMCLOCK_CTRL: u32 = io(0xad);
pub const KVM_SET_VAPIC_ADDR: u32 = iow::<uapi::kvm_vapic_addr>(0x93);
pub const KVM_SET_GUEST_DEBUG: u32 = iow::<uapi::kvm_guest_debug>(0x9b);
pub const KVM_SET_CLOCK: u32 = iow::<uapi::kvm_clock_data>(0x7b);
pub const KVM_GET_CLOCK: u32 = ior::<uapi::kvm_clock_data>(0x7c);
pub const KVM_X86_SETUP_MCE: u32 = iow::<u64>(0x9c);
pub const KVM_X86_SET_MCE: u32 = iow::<uapi::kvm_x86_mce>(0x9e);
pub const KVM_GET_REGS: u32 = ior::<uapi::kvm_regs>(0x81);
pub const KVM_SET_REGS: u32 = iow::<uapi::kvm_regs>(0x82);
pub const KVM_GET_SREGS: u32 = ior::<uapi::kvm_sregs>(0x83);
pub const KVM_SET_SREGS: u32 = iow::<uapi::kvm_sregs>(0x84);
pub const KVM_SET_CPUID2: u32 = iow::<uapi::kvm_cpuid2>(0x90);
pub const KVM_GET_CPUID2: u32 = iowr::<uapi::kvm_cpuid2>(0x91);
pub const KVM_GET_MP_STATE: u32 = ior::<uapi::kvm_mp_state>(0x98);
pub const KVM_SET_MP_STATE: u32 = iow::<uapi::kvm_mp_state>(0x99);
pub const KVM_TRANSLATE: u32 = iowr::<uapi::kvm_translation>(0x85);
pub const KVM_GET_MSRS: u32 = iowr::<uapi::kvm_msrs>(0x88);
pub const KVM_SET_MSRS: u32 = iow::<uapi::kvm_msrs>(0x89);
pub const KVM_GET_FPU: u32 = ior::<uapi::kvm_fpu>(0x8c);
pub const KVM_SET_FPU: u32 = iow::<uapi::kvm_fpu>(0x8d);
pub const KVM_SET_SIGNAL_MASK: u32 = iow::<uapi::kvm_signal_mask>(0x8b);
pub const KVM_GET_LAPIC: u32 = ior::<uapi::kvm_lapic_state>(0x8e);
pub const KVM_SET_LAPIC: u32 = iow::<uapi::kvm_lapic_state>(0x8f);
pub const KVM_GET_VCPU_EVENTS: u32 = ior::<uapi::kvm_vcpu_events>(0x9f);
pub const KVM_SET_VCPU_EVENTS: u32 = iow::<uapi::kvm_vcpu_events>(0xa0);
pub const KVM_GET_DEBUGREGS: u32 = ior::<uapi::kvm_debugregs>(0xa1);
pub const KVM_SET_DEBUGREGS: u32 = iow::<uapi::kvm_debugregs>(0xa2);
pub const KVM_GET_XSAVE: u32 = ior::<uapi::kvm_xsave>(0xa4);
pub const KVM_SET_XSAVE: u32 = iow::<uapi::kvm_xsave>(0xa5);
pub const KVM_GET_XCRS: u32 = ior::<uapi::kvm_xcrs>(0xa6);
pub const KVM_SET_XCRS: u32 = iow::<uapi::kvm_xcrs>(0xa7);
pub const KVM_GET_SREGS2: u32 = ior::<uapi::kvm_sregs2>(0xcc);
pub const KVM_SET_SREGS2: u32 = iow::<uapi::kvm_sregs2>(0xcd);
pub const KVM_GET_XSAVE2: u32 = ior::<uapi::kvm_xsave>(0xcf);
// Device attributes (on a vCPU: the TSC offset group).
pub const KVM_SET_DEVICE_ATTR: u32 = iow::<uapi::kvm_device_attr>(0xe1);
pub const KVM_GET_DEVICE_ATTR: u32 = iow::<uapi::kvm_device_attr>(0xe2);
pub const KVM_HAS_DEVICE_ATTR: u32 = iow::<uapi::kvm_device_attr>(0xe3);

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
        // struct kvm_guest_debug: control, pad, debugreg[8] (72 bytes).
        assert_eq!(KVM_SET_GUEST_DEBUG, 0x4048_ae9b);
        assert_eq!(KVM_X86_GET_MCE_CAP_SUPPORTED, 0x8008_ae9d);
        // struct kvm_x86_mce: status, addr, misc, mcg_status, bank, pad (64 bytes).
        assert_eq!(KVM_X86_SET_MCE, 0x4040_ae9e);
        // struct kvm_clock_data: clock, flags, pad0, realtime, host_tsc, pad[4].
        assert_eq!(KVM_GET_CLOCK, 0x8030_ae7c);
        assert_eq!(
            iow::<super::super::uapi::kvm_userspace_memory_region>(0x46),
            0x4020_ae46
        );
        assert_eq!(iow::<super::super::uapi::kvm_sregs>(0x84), 0x4138_ae84);
        assert_eq!(KVM_GET_LAPIC, 0x8400_ae8e);
        assert_eq!(KVM_GET_IRQCHIP, 0xc208_ae62);
        assert_eq!(KVM_SET_IRQCHIP, 0x8208_ae63);
        // The values in QEMU's and the selftests' headers.
        assert_eq!(KVM_IRQ_LINE, 0x4008_ae61);
        assert_eq!(KVM_IRQ_LINE_STATUS, 0xc008_ae67);
        assert_eq!(KVM_SET_GSI_ROUTING, 0x4008_ae6a);
        assert_eq!(KVM_SIGNAL_MSI, 0x4020_aea5);
        assert_eq!(KVM_ENABLE_CAP, 0x4068_aea3);
        assert_eq!(KVM_GET_VCPU_EVENTS, 0x8040_ae9f);
        assert_eq!(KVM_GET_MSRS, 0xc008_ae88);
        assert_eq!(KVM_GET_XSAVE, 0x9000_aea4);
        assert_eq!(KVM_GET_FPU, 0x81a0_ae8c);
        assert_eq!(KVM_GET_DEBUGREGS, 0x8080_aea1);
        assert_eq!(KVM_GET_XCRS, 0x8188_aea6);
        assert_eq!(KVM_TRANSLATE, 0xc018_ae85);
        assert_eq!(KVM_GET_SREGS2, 0x8140_aecc);
        assert_eq!(KVM_SET_SIGNAL_MASK, 0x4004_ae8b);
        // struct kvm_pit_state: 3 channels of 24 bytes; _state2 adds flags and
        // 9 reserved words; kvm_pit_config is 16 words.
        assert_eq!(KVM_GET_PIT, 0xc048_ae65);
        assert_eq!(KVM_SET_PIT, 0x8048_ae66);
        assert_eq!(KVM_CREATE_PIT2, 0x4040_ae77);
        assert_eq!(KVM_GET_PIT2, 0x8070_ae9f);
        assert_eq!(KVM_SET_PIT2, 0x4070_aea0);
        assert_eq!(KVM_REINJECT_CONTROL, 0xae71);
        assert_eq!(KVM_REGISTER_COALESCED_MMIO, 0x4010_ae67);
        assert_eq!(KVM_UNREGISTER_COALESCED_MMIO, 0x4010_ae68);
        // struct kvm_msr_filter: flags, then 16 ranges of 24 bytes.
        assert_eq!(KVM_X86_SET_MSR_FILTER, 0x4188_aec6);
        // struct kvm_device_attr: flags, group, attr, addr (24 bytes).
        assert_eq!(KVM_SET_DEVICE_ATTR, 0x4018_aee1);
        assert_eq!(KVM_HAS_DEVICE_ATTR, 0x4018_aee3);
    }

    #[test]
    fn type_byte() {
        assert_eq!(ioc_type(KVM_CREATE_VM), KVMIO);
        assert_eq!(ioc_type(0x5401 /* TCGETS */), 0x54);
    }
}
