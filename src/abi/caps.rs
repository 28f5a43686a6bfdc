//! `KVM_CHECK_EXTENSION`: what kvm-rs reports, and only what works.
//!
//! Every capability starts absent (0, as upstream answers for an unknown one) and is
//! added here in the same change that makes it work, with a test in the VM that
//! exercises it. The answer can depend on the VM (`KVM_CHECK_EXTENSION` on a VM fd) and
//! on the vendor module, which `Host` describes.

use super::uapi;

/// What the loaded vendor module and the core offer, as far as capabilities care.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Host {
    /// Bit `n` set when `KVM_CREATE_VM` accepts machine type `n` (`KVM_X86_*_VM`).
    pub vm_types: u32,
    /// Online CPUs (`KVM_CAP_NR_VCPUS`, the recommended maximum).
    pub online_cpus: u32,
    /// Whether the vendor can create vCPUs (kvm-intel cannot yet).
    pub vcpus: bool,
    /// Whether the host has XSAVE (XCR0), so that guests can have XCRs.
    pub xsave: bool,
    /// `KVM_GET_XSAVE2`'s buffer size (at least `struct kvm_xsave`).
    pub xsave2_size: u32,
}

/// Upstream x86's limits with CONFIG_KVM_MAX_NR_VCPUS=1024 (the test kernel's).
pub const MAX_VCPUS: u32 = 1024;
/// `KVM_MAX_VCPU_IDS`: `KVM_VCPU_ID_RATIO` (4) ids per vCPU.
pub const MAX_VCPU_IDS: u32 = MAX_VCPUS * 4;
/// The quirks KVM_CAP_DISABLE_QUIRKS2 can turn off: those kvm-rs implements
/// both ways.
pub const SUPPORTED_QUIRKS: u32 = uapi::KVM_X86_QUIRK_FIX_HYPERCALL_INSN
    | uapi::KVM_X86_QUIRK_STUFF_FEATURE_MSRS
    | uapi::KVM_X86_QUIRK_MWAIT_NEVER_UD_FAULTS
    | uapi::KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT;
/// The `struct kvm_guest_debug` controls x86 supports (upstream
/// KVM_GUESTDBG_VALID_MASK), the answer to KVM_CAP_SET_GUEST_DEBUG2.
pub const GUESTDBG_VALID_MASK: u32 = uapi::KVM_GUESTDBG_ENABLE
    | uapi::KVM_GUESTDBG_SINGLESTEP
    | uapi::KVM_GUESTDBG_USE_HW_BP
    | uapi::KVM_GUESTDBG_USE_SW_BP
    | uapi::KVM_GUESTDBG_INJECT_BP
    | uapi::KVM_GUESTDBG_INJECT_DB
    | uapi::KVM_GUESTDBG_BLOCKIRQ;
/// KVM_CLOCK_VALID_FLAGS: the KVM_GET_CLOCK flags there are, what
/// KVM_CAP_ADJUST_CLOCK reports and KVM_SET_CLOCK accepts back.
pub const KVM_CLOCK_VALID_FLAGS: u32 =
    uapi::KVM_CLOCK_TSC_STABLE | uapi::KVM_CLOCK_REALTIME | uapi::KVM_CLOCK_HOST_TSC;
/// KVM_CAP_X2APIC_API flags (`_BITULL` macros, which bindgen does not expand):
/// 32-bit x2APIC IDs in KVM_GET/SET_LAPIC and MSI routes, and no 0xff
/// broadcast in x2APIC mode.
pub const X2APIC_API_USE_32BIT_IDS: u32 = 1 << 0;
pub const X2APIC_API_DISABLE_BROADCAST_QUIRK: u32 = 1 << 1;
/// Whether the LAPIC's suppress-EOI-broadcast (directed EOI) is offered and
/// honored: always (only with the split irqchip, whose IOAPIC is userspace's),
/// or never; without either, upstream's quirk.
pub const X2APIC_ENABLE_SUPPRESS_EOI_BROADCAST: u32 = 1 << 2;
pub const X2APIC_DISABLE_SUPPRESS_EOI_BROADCAST: u32 = 1 << 3;
/// KVM_X2APIC_API_VALID_FLAGS, also what KVM_CHECK_EXTENSION reports (on a VM
/// without the split irqchip, without ENABLE_SUPPRESS_EOI_BROADCAST).
pub const X2APIC_API_VALID_FLAGS: u32 = X2APIC_API_USE_32BIT_IDS
    | X2APIC_API_DISABLE_BROADCAST_QUIRK
    | X2APIC_ENABLE_SUPPRESS_EOI_BROADCAST
    | X2APIC_DISABLE_SUPPRESS_EOI_BROADCAST;
/// `KVM_MAX_MCE_BANKS` (also arch/x86/hw/mce.rs, which sizes the banks by it).
pub const MAX_MCE_BANKS: u32 = 32;
/// GUEST_MEMFD_FLAG_MMAP and GUEST_MEMFD_FLAG_INIT_SHARED (`1ULL << n` in the uapi).
pub const GUEST_MEMFD_FLAG_MMAP: u64 = 1 << 0;
pub const GUEST_MEMFD_FLAG_INIT_SHARED: u64 = 1 << 1;
/// kvm_gmem_get_supported_flags() for a VM without private memory.
pub const GUEST_MEMFD_SUPPORTED_FLAGS: u64 = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED;
/// KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE and KVM_DIRTY_LOG_INITIALLY_SET, x86's
/// KVM_DIRTY_LOG_MANUAL_CAPS (what KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 reports).
pub const DIRTY_LOG_MANUAL_PROTECT_ENABLE: u64 = 1 << 0;
pub const DIRTY_LOG_INITIALLY_SET: u64 = 1 << 1;
pub const DIRTY_LOG_MANUAL_CAPS: u64 = DIRTY_LOG_MANUAL_PROTECT_ENABLE | DIRTY_LOG_INITIALLY_SET;
/// `KVM_USER_MEM_SLOTS` on x86.
pub const USER_MEM_SLOTS: u32 = 32764;

/// The answer to `KVM_CHECK_EXTENSION(cap)`, on `/dev/kvm` or on a VM fd.
/// `cap` is the raw ioctl argument (a C `long`): any value is valid input.
pub fn check_extension(host: &Host, cap: u64) -> i32 {
    let Ok(cap) = u32::try_from(cap) else {
        return 0;
    };
    match cap {
        // The VM fd answers KVM_CHECK_EXTENSION (vm.rs).
        uapi::KVM_CAP_CHECK_EXTENSION_VM => 1,
        // KVM_CREATE_VM checks the type against this mask (dev.rs).
        uapi::KVM_CAP_VM_TYPES => host.vm_types as i32,
        // Memory slots and vCPUs (vm.rs, vcpu.rs), where the vendor runs them.
        uapi::KVM_CAP_USER_MEMORY
        | uapi::KVM_CAP_USER_MEMORY2
        // Deleting a slot, and slots adjacent to each other, work (always 1
        // upstream; QEMU requires both).
        | uapi::KVM_CAP_DESTROY_MEMORY_REGION_WORKS
        | uapi::KVM_CAP_JOIN_MEMORY_REGIONS_WORKS
        // Read-only slots (writes to them exit as MMIO, mmu/mod.rs), and guest
        // mappings that follow the host's through the MMU notifier (vm.rs).
        | uapi::KVM_CAP_READONLY_MEM
        | uapi::KVM_CAP_SYNC_MMU
        // KVM_EXIT_INTERNAL_ERROR carries ndata/data (vcpu.rs).
        | uapi::KVM_CAP_INTERNAL_ERROR_DATA
        | uapi::KVM_CAP_EXT_CPUID
        | uapi::KVM_CAP_IMMEDIATE_EXIT
        // A VM's own bound on halt polling (vm.rs, vcpu.rs).
        | uapi::KVM_CAP_HALT_POLL
        // KVM_CREATE_GUEST_MEMFD and KVM_MEM_GUEST_MEMFD slots (guest_memfd.rs).
        | uapi::KVM_CAP_GUEST_MEMFD
            if host.vcpus =>
        {
            1
        }
        // What KVM_CREATE_GUEST_MEMFD accepts: every kvm-rs VM lacks private
        // memory, so its guest_memfd can be mmap'ed and starts shared
        // (kvm_gmem_get_supported_flags()).
        uapi::KVM_CAP_GUEST_MEMFD_FLAGS if host.vcpus => GUEST_MEMFD_SUPPORTED_FLAGS as i32,
        // KVM_GET_DIRTY_LOG without clearing, KVM_CLEAR_DIRTY_LOG (vm.rs).
        uapi::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 if host.vcpus => DIRTY_LOG_MANUAL_CAPS as i32,
        // KVM_GET/SET_TSC_KHZ, the binary stats fds, KVM_ENABLE_CAP on the VM,
        // MP states with the in-kernel LAPIC, KVM_SET_NR_MMU_PAGES, the SVM no-ops
        // KVM_SET_TSS_ADDR / KVM_SET_IDENTITY_MAP_ADDR (vm.rs, vcpu.rs, stats.rs).
        uapi::KVM_CAP_GET_TSC_KHZ
        | uapi::KVM_CAP_BINARY_STATS_FD
        | uapi::KVM_CAP_ENABLE_CAP_VM
        | uapi::KVM_CAP_MP_STATE
        | uapi::KVM_CAP_MMU_SHADOW_CACHE_CONTROL
        | uapi::KVM_CAP_SET_TSS_ADDR
        | uapi::KVM_CAP_SET_IDENTITY_MAP_ADDR
        // KVM_GET/SET_VCPU_EVENTS (with the interrupt shadow), DEBUGREGS, XSAVE.
        | uapi::KVM_CAP_VCPU_EVENTS
        | uapi::KVM_CAP_INTR_SHADOW
        | uapi::KVM_CAP_DEBUGREGS
        | uapi::KVM_CAP_XSAVE
        | uapi::KVM_CAP_MSR_PLATFORM_INFO
        | uapi::KVM_CAP_PRE_FAULT_MEMORY
        // KVM_GET/SET_SREGS2 with the PAE PDPTRs (vcpu/regs.rs).
        | uapi::KVM_CAP_SREGS2
        // The in-kernel PIC/IOAPIC behind KVM_IRQ_LINE(_STATUS), and MSIs
        // (irqchip.rs).
        | uapi::KVM_CAP_IRQCHIP
        // The in-kernel PIT with its reinjection control (i8254.rs).
        | uapi::KVM_CAP_PIT
        | uapi::KVM_CAP_PIT2
        | uapi::KVM_CAP_PIT_STATE2
        | uapi::KVM_CAP_REINJECT_CONTROL
        // The LAPICs in the kernel, the PIC and IOAPIC in userspace: KVM_INTERRUPT's
        // ExtINT, interrupt-window and IOAPIC-EOI exits (kvm_arch.rs, irq.rs).
        | uapi::KVM_CAP_SPLIT_IRQCHIP
        // KVM_SET_BOOT_CPU_ID: which vCPU comes out of reset as the BSP (kvm_arch.rs).
        | uapi::KVM_CAP_SET_BOOT_CPU_ID
        // Coalesced PIO zones, beside the MMIO ones below (coalesced_mmio.rs).
        | uapi::KVM_CAP_COALESCED_PIO
        | uapi::KVM_CAP_IRQ_INJECT_STATUS
        | uapi::KVM_CAP_SIGNAL_MSI
        // KVM_NMI, with NMI masking until the handler's IRET (x86.rs, svm/).
        | uapi::KVM_CAP_USER_NMI
        // KVM_IOEVENTFD on the PIO and MMIO buses, any width or none (eventfd.rs).
        | uapi::KVM_CAP_IOEVENTFD
        | uapi::KVM_CAP_IOEVENTFD_NO_LENGTH
        | uapi::KVM_CAP_IOEVENTFD_ANY_LENGTH
        // KVM_IRQFD, with resampling for level-triggered GSIs (eventfd.rs).
        | uapi::KVM_CAP_IRQFD
        | uapi::KVM_CAP_IRQFD_RESAMPLE
        // KVM_SET_VAPIC_ADDR's TPR page (x86.rs).
        | uapi::KVM_CAP_VAPIC
        // The kvmclock pvclock pages and KVM_KVMCLOCK_CTRL (clock.rs).
        | uapi::KVM_CAP_KVMCLOCK_CTRL
        // KVM_SET_GUEST_DEBUG: single-step (also over instructions KVM emulates
        // or skips, which makes it robust), software and hardware breakpoints
        // (x86.rs, svm/exit.rs).
        | uapi::KVM_CAP_SET_GUEST_DEBUG
        | uapi::KVM_CAP_X86_ROBUST_SINGLESTEP
        // KVM_{HAS,GET,SET}_DEVICE_ATTR on a vCPU: the TSC offset (clock.rs).
        | uapi::KVM_CAP_VCPU_ATTRIBUTES
        // KVM_GET_MSR_FEATURE_INDEX_LIST and KVM_GET_MSRS on /dev/kvm (msr.rs).
        | uapi::KVM_CAP_GET_MSR_FEATURES
        // KVM_ENABLE_CAP on a vCPU, for KVM_CAP_ENFORCE_PV_FEATURE_CPUID: the PV
        // MSRs and hypercalls only as the guest's KVM_CPUID_FEATURES offers.
        | uapi::KVM_CAP_ENABLE_CAP
        | uapi::KVM_CAP_ENFORCE_PV_FEATURE_CPUID
        // Emulation failures carry the instruction bytes and exit information;
        // KVM_CAP_EXIT_ON_EMULATION_FAILURE makes every one exit (emulate.rs).
        | uapi::KVM_CAP_EXIT_ON_EMULATION_FAILURE
        // Failed guest MSR accesses exit to userspace where it asks, and the MSR
        // filter (KVM_X86_SET_MSR_FILTER) says which accesses KVM handles (msr.rs).
        | uapi::KVM_CAP_X86_USER_SPACE_MSR
        | uapi::KVM_CAP_X86_MSR_FILTER
        // A pending triple fault in KVM_GET/SET_VCPU_EVENTS (regs.rs).
        | uapi::KVM_CAP_X86_TRIPLE_FAULT_EVENT
            if host.vcpus =>
        {
            1
        }
        uapi::KVM_CAP_SET_GUEST_DEBUG2 if host.vcpus => GUESTDBG_VALID_MASK as i32,
        // KVM_X86_SETUP_MCE / KVM_X86_SET_MCE and the bank MSRs: the most banks a
        // vCPU can have (KVM_MAX_MCE_BANKS).
        uapi::KVM_CAP_MCE if host.vcpus => MAX_MCE_BANKS as i32,
        // The coalesced-MMIO ring's page offset in the vCPU mapping.
        uapi::KVM_CAP_COALESCED_MMIO => uapi::KVM_COALESCED_MMIO_PAGE_OFFSET as i32,
        // KVM_GET_CLOCK / KVM_SET_CLOCK (arch/x86/kvm/clock.rs).
        uapi::KVM_CAP_ADJUST_CLOCK if host.vcpus => KVM_CLOCK_VALID_FLAGS as i32,
        // KVM_SET_GSI_ROUTING: the number of routes (KVM_MAX_IRQ_ROUTES).
        uapi::KVM_CAP_IRQ_ROUTING if host.vcpus => 4096,
        // kvm_run's sync_regs exchange (vcpu.rs).
        uapi::KVM_CAP_SYNC_REGS if host.vcpus => uapi::KVM_SYNC_X86_VALID_FIELDS as i32,
        // KVM_GET/SET_XCRS and the guest XCR0 it sets (vcpu/regs.rs).
        uapi::KVM_CAP_XCRS if host.vcpus => i32::from(host.xsave),
        uapi::KVM_CAP_XSAVE2 if host.vcpus => host.xsave2_size as i32,
        uapi::KVM_CAP_DISABLE_QUIRKS2 if host.vcpus => SUPPORTED_QUIRKS as i32,
        uapi::KVM_CAP_NR_MEMSLOTS if host.vcpus => USER_MEM_SLOTS as i32,
        uapi::KVM_CAP_NR_VCPUS if host.vcpus => host.online_cpus.min(MAX_VCPUS) as i32,
        uapi::KVM_CAP_MAX_VCPUS if host.vcpus => MAX_VCPUS as i32,
        uapi::KVM_CAP_MAX_VCPU_ID if host.vcpus => MAX_VCPU_IDS as i32,
        _ => 0,
    }
}

/// Whether `KVM_CREATE_VM(ty)` may create a VM, as `kvm_is_vm_type_supported()`.
pub fn vm_type_supported(host: &Host, ty: u64) -> bool {
    ty < 32 && host.vm_types & (1 << ty) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Host = Host {
        vm_types: 1 << uapi::KVM_X86_DEFAULT_VM,
        online_cpus: 2,
        vcpus: true,
        xsave: true,
        xsave2_size: 4096,
    };

    #[test]
    fn unknown_and_out_of_range_caps_are_absent() {
        assert_eq!(check_extension(&HOST, uapi::KVM_CAP_X2APIC_API as u64), 0);
        assert_eq!(check_extension(&HOST, 100_000), 0);
        assert_eq!(check_extension(&HOST, u64::MAX), 0);
        assert_eq!(
            check_extension(&HOST, 1 << 32 | uapi::KVM_CAP_CHECK_EXTENSION_VM as u64),
            0
        );
    }

    #[test]
    fn reported_caps() {
        assert_eq!(
            check_extension(&HOST, uapi::KVM_CAP_CHECK_EXTENSION_VM as u64),
            1
        );
        assert_eq!(check_extension(&HOST, uapi::KVM_CAP_VM_TYPES as u64), 1);
        let none = Host::default();
        assert_eq!(check_extension(&none, uapi::KVM_CAP_VM_TYPES as u64), 0);
        assert_eq!(check_extension(&HOST, uapi::KVM_CAP_USER_MEMORY as u64), 1);
        assert_eq!(check_extension(&HOST, uapi::KVM_CAP_NR_VCPUS as u64), 2);
        assert_eq!(
            check_extension(&HOST, uapi::KVM_CAP_MAX_VCPU_ID as u64),
            4096
        );
        assert_eq!(
            check_extension(&HOST, uapi::KVM_CAP_NR_MEMSLOTS as u64),
            32764
        );
        // A vendor without vCPUs (kvm-intel today) claims none of it.
        let novcpu = Host {
            vcpus: false,
            ..HOST
        };
        assert_eq!(
            check_extension(&novcpu, uapi::KVM_CAP_USER_MEMORY as u64),
            0
        );
        assert_eq!(check_extension(&novcpu, uapi::KVM_CAP_MAX_VCPUS as u64), 0);
        assert_eq!(
            check_extension(&novcpu, uapi::KVM_CAP_GET_TSC_KHZ as u64),
            0
        );
        assert_eq!(check_extension(&HOST, uapi::KVM_CAP_GET_TSC_KHZ as u64), 1);
        assert_eq!(
            check_extension(&HOST, uapi::KVM_CAP_BINARY_STATS_FD as u64),
            1
        );
        assert_eq!(check_extension(&HOST, uapi::KVM_CAP_XSAVE2 as u64), 4096);
        assert_eq!(check_extension(&HOST, uapi::KVM_CAP_IRQCHIP as u64), 1);
        assert_eq!(check_extension(&HOST, uapi::KVM_CAP_PIT2 as u64), 1);
        assert_eq!(
            check_extension(&HOST, uapi::KVM_CAP_SPLIT_IRQCHIP as u64),
            1
        );
        assert_eq!(
            check_extension(&HOST, uapi::KVM_CAP_IRQFD_RESAMPLE as u64),
            1
        );
        assert_eq!(
            check_extension(&HOST, uapi::KVM_CAP_IRQ_ROUTING as u64),
            4096
        );
        assert_eq!(check_extension(&novcpu, uapi::KVM_CAP_IRQCHIP as u64), 0);
        assert_eq!(check_extension(&HOST, uapi::KVM_CAP_XCRS as u64), 1);
        let noxsave = Host {
            xsave: false,
            ..HOST
        };
        assert_eq!(check_extension(&noxsave, uapi::KVM_CAP_XCRS as u64), 0);
        assert_eq!(check_extension(&novcpu, uapi::KVM_CAP_XSAVE2 as u64), 0);
        assert_eq!(
            check_extension(&HOST, uapi::KVM_CAP_SET_GUEST_DEBUG2 as u64),
            0x001f_0003
        );
        assert_eq!(
            check_extension(&novcpu, uapi::KVM_CAP_X86_ROBUST_SINGLESTEP as u64),
            0
        );
        assert_eq!(check_extension(&HOST, uapi::KVM_CAP_MCE as u64), 32);
        assert_eq!(
            check_extension(&HOST, uapi::KVM_CAP_ADJUST_CLOCK as u64),
            0xe
        );
    }

    #[test]
    fn vm_types() {
        assert!(vm_type_supported(&HOST, uapi::KVM_X86_DEFAULT_VM as u64));
        assert!(!vm_type_supported(
            &HOST,
            uapi::KVM_X86_SW_PROTECTED_VM as u64
        ));
        assert!(!vm_type_supported(&HOST, 31));
        assert!(!vm_type_supported(&HOST, 32));
        assert!(!vm_type_supported(&HOST, u64::MAX));
    }
}
