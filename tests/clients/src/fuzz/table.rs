//! The ioctls the fuzzer calls, in the spirit of syzkaller's `dev_kvm.txt`: the fd
//! each belongs to, the shape of its argument, and whether what it returns is
//! deterministic enough to compare between two implementations.

use kvm_abi::ioctl::*;
use kvm_abi::ioctl::{ior, iow, iowr};
use kvm_abi::uapi;

/// Which fd an ioctl is meant for (the fuzzer sometimes sends it elsewhere).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Target {
    Kvm,
    Vm,
    Vcpu,
}

/// How the argument is built.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Arg {
    /// An integer (KVM_CREATE_VCPU's id, KVM_SET_TSS_ADDR's address, ...).
    Int,
    /// A pointer to the struct the command's size field encodes.
    Buf,
    /// A counted array: a u32 count at offset 0, `hdr` bytes of header, then
    /// `entry`-byte entries, at most `max` of them in upstream's limits.
    Counted { hdr: usize, entry: usize, max: u32 },
    /// Built by its own generator (memslots, capabilities, fds, dirty logs).
    Special(Special),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Special {
    CheckExtension,
    CreateVcpu,
    MemRegion,
    MemRegion2,
    EnableCap,
    DirtyLog,
    ClearDirtyLog,
    Irqfd,
    Ioeventfd,
    Msrs,
    Coalesced,
    DeviceAttr,
    IrqLine,
    Msi,
}

/// What of the result the differential run compares.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Out {
    /// The return value only.
    Ret,
    /// The return value and the bytes written back (when the object's state is
    /// deterministic: no interrupted guest run, no running timer).
    State,
}

pub struct Ioctl {
    pub name: &'static str,
    pub cmd: u32,
    pub target: Target,
    pub arg: Arg,
    pub out: Out,
    /// The GET whose result seeds this SET's argument (as a VMM saves and restores).
    pub template: Option<u32>,
}

const fn i(name: &'static str, cmd: u32, target: Target, arg: Arg, out: Out) -> Ioctl {
    Ioctl {
        name,
        cmd,
        target,
        arg,
        out,
        template: None,
    }
}

const fn set(name: &'static str, cmd: u32, target: Target, arg: Arg, from: u32) -> Ioctl {
    Ioctl {
        name,
        cmd,
        target,
        arg,
        out: Out::Ret,
        template: Some(from),
    }
}

use self::Arg::*;
use self::Out::*;
use self::Special as S;
use self::Target::*;

const MSRS: Arg = Special(S::Msrs);
const CPUID: Arg = Counted {
    hdr: 8,
    entry: 40,
    max: 256,
};
const MSR_LIST: Arg = Counted {
    hdr: 4,
    entry: 4,
    max: 4096,
};
const ROUTING: Arg = Counted {
    hdr: 8,
    entry: 48,
    max: 4096,
};
const SIGMASK: Arg = Counted {
    hdr: 4,
    entry: 1,
    max: 128,
};

// Ioctls kvm-rs does not implement but upstream does (or that no x86 KVM knows):
// their errno must still be upstream's.
const KVM_GET_EMULATED_CPUID: u32 = iowr::<uapi::kvm_cpuid2>(0x09);
const KVM_GET_NESTED_STATE: u32 = iowr::<uapi::kvm_nested_state>(0xbe);
const KVM_SET_NESTED_STATE: u32 = iow::<uapi::kvm_nested_state>(0xbf);
const KVM_SET_MEMORY_ATTRIBUTES: u32 = iow::<uapi::kvm_memory_attributes>(0xd2);
const KVM_GET_ONE_REG: u32 = iow::<uapi::kvm_one_reg>(0xab);
const KVM_SET_PMU_EVENT_FILTER: u32 = iow::<uapi::kvm_pmu_event_filter>(0xb2);
const KVM_GET_REG_LIST: u32 = iowr::<uapi::kvm_reg_list>(0xb0);
const KVM_MEMORY_ENCRYPT_OP: u32 = iowr::<u64>(0xba);
const KVM_GET_MP_STATE_BAD_SIZE: u32 = ior::<u64>(0x98);

pub static IOCTLS: &[Ioctl] = &[
    // /dev/kvm.
    i("GET_API_VERSION", KVM_GET_API_VERSION, Kvm, Int, Ret),
    i(
        "CHECK_EXTENSION",
        KVM_CHECK_EXTENSION,
        Kvm,
        Special(S::CheckExtension),
        Ret,
    ),
    i("GET_VCPU_MMAP_SIZE", KVM_GET_VCPU_MMAP_SIZE, Kvm, Int, Ret),
    i(
        "GET_SUPPORTED_CPUID",
        KVM_GET_SUPPORTED_CPUID,
        Kvm,
        CPUID,
        Ret,
    ),
    i(
        "GET_EMULATED_CPUID",
        KVM_GET_EMULATED_CPUID,
        Kvm,
        CPUID,
        Ret,
    ),
    i(
        "GET_MSR_INDEX_LIST",
        KVM_GET_MSR_INDEX_LIST,
        Kvm,
        MSR_LIST,
        Ret,
    ),
    i(
        "GET_MSR_FEATURE_INDEX_LIST",
        KVM_GET_MSR_FEATURE_INDEX_LIST,
        Kvm,
        MSR_LIST,
        Ret,
    ),
    i("GET_MSRS(feature)", KVM_GET_MSRS, Kvm, MSRS, Ret),
    i(
        "X86_GET_MCE_CAP_SUPPORTED",
        KVM_X86_GET_MCE_CAP_SUPPORTED,
        Kvm,
        Buf,
        State,
    ),
    // VM.
    i(
        "CHECK_EXTENSION(vm)",
        KVM_CHECK_EXTENSION,
        Vm,
        Special(S::CheckExtension),
        Ret,
    ),
    i(
        "CREATE_VCPU",
        KVM_CREATE_VCPU,
        Vm,
        Special(S::CreateVcpu),
        Ret,
    ),
    i(
        "SET_USER_MEMORY_REGION",
        KVM_SET_USER_MEMORY_REGION,
        Vm,
        Special(S::MemRegion),
        Ret,
    ),
    i(
        "SET_USER_MEMORY_REGION2",
        KVM_SET_USER_MEMORY_REGION2,
        Vm,
        Special(S::MemRegion2),
        Ret,
    ),
    i(
        "GET_DIRTY_LOG",
        KVM_GET_DIRTY_LOG,
        Vm,
        Special(S::DirtyLog),
        Ret,
    ),
    i(
        "CLEAR_DIRTY_LOG",
        KVM_CLEAR_DIRTY_LOG,
        Vm,
        Special(S::ClearDirtyLog),
        Ret,
    ),
    i("SET_NR_MMU_PAGES", KVM_SET_NR_MMU_PAGES, Vm, Int, Ret),
    i("SET_TSS_ADDR", KVM_SET_TSS_ADDR, Vm, Int, Ret),
    i(
        "SET_IDENTITY_MAP_ADDR",
        KVM_SET_IDENTITY_MAP_ADDR,
        Vm,
        Buf,
        Ret,
    ),
    i("CREATE_IRQCHIP", KVM_CREATE_IRQCHIP, Vm, Int, Ret),
    i("IRQ_LINE", KVM_IRQ_LINE, Vm, Special(S::IrqLine), Ret),
    i(
        "IRQ_LINE_STATUS",
        KVM_IRQ_LINE_STATUS,
        Vm,
        Special(S::IrqLine),
        Ret,
    ),
    i("GET_IRQCHIP", KVM_GET_IRQCHIP, Vm, Buf, State),
    set("SET_IRQCHIP", KVM_SET_IRQCHIP, Vm, Buf, KVM_GET_IRQCHIP),
    i("CREATE_PIT", KVM_CREATE_PIT, Vm, Int, Ret),
    i("CREATE_PIT2", KVM_CREATE_PIT2, Vm, Buf, Ret),
    i("GET_PIT", KVM_GET_PIT, Vm, Buf, Ret),
    set("SET_PIT", KVM_SET_PIT, Vm, Buf, KVM_GET_PIT),
    i("GET_PIT2", KVM_GET_PIT2, Vm, Buf, Ret),
    set("SET_PIT2", KVM_SET_PIT2, Vm, Buf, KVM_GET_PIT2),
    i("REINJECT_CONTROL", KVM_REINJECT_CONTROL, Vm, Buf, Ret),
    i(
        "REGISTER_COALESCED_MMIO",
        KVM_REGISTER_COALESCED_MMIO,
        Vm,
        Special(S::Coalesced),
        Ret,
    ),
    i(
        "UNREGISTER_COALESCED_MMIO",
        KVM_UNREGISTER_COALESCED_MMIO,
        Vm,
        Special(S::Coalesced),
        Ret,
    ),
    i("SET_GSI_ROUTING", KVM_SET_GSI_ROUTING, Vm, ROUTING, Ret),
    i("SIGNAL_MSI", KVM_SIGNAL_MSI, Vm, Special(S::Msi), Ret),
    i("IOEVENTFD", KVM_IOEVENTFD, Vm, Special(S::Ioeventfd), Ret),
    i("IRQFD", KVM_IRQFD, Vm, Special(S::Irqfd), Ret),
    i("SET_TSC_KHZ(vm)", KVM_SET_TSC_KHZ, Vm, Int, Ret),
    i("GET_TSC_KHZ(vm)", KVM_GET_TSC_KHZ, Vm, Int, Ret),
    i(
        "ENABLE_CAP(vm)",
        KVM_ENABLE_CAP,
        Vm,
        Special(S::EnableCap),
        Ret,
    ),
    i("SET_BOOT_CPU_ID", KVM_SET_BOOT_CPU_ID, Vm, Int, Ret),
    i("X86_SET_MSR_FILTER", KVM_X86_SET_MSR_FILTER, Vm, Buf, Ret),
    i("SET_CLOCK", KVM_SET_CLOCK, Vm, Buf, Ret),
    i("GET_CLOCK", KVM_GET_CLOCK, Vm, Buf, Ret),
    i("CREATE_GUEST_MEMFD", KVM_CREATE_GUEST_MEMFD, Vm, Buf, Ret),
    i("CREATE_DEVICE", KVM_CREATE_DEVICE, Vm, Buf, Ret),
    i(
        "SET_MEMORY_ATTRIBUTES",
        KVM_SET_MEMORY_ATTRIBUTES,
        Vm,
        Buf,
        Ret,
    ),
    i(
        "SET_PMU_EVENT_FILTER",
        KVM_SET_PMU_EVENT_FILTER,
        Vm,
        Buf,
        Ret,
    ),
    i("MEMORY_ENCRYPT_OP", KVM_MEMORY_ENCRYPT_OP, Vm, Buf, Ret),
    i("RESET_DIRTY_RINGS", KVM_RESET_DIRTY_RINGS, Vm, Int, Ret),
    // vCPU.
    i("NMI", KVM_NMI, Vcpu, Int, Ret),
    i("INTERRUPT", KVM_INTERRUPT, Vcpu, Buf, Ret),
    i("KVMCLOCK_CTRL", KVM_KVMCLOCK_CTRL, Vcpu, Int, Ret),
    i("SET_VAPIC_ADDR", KVM_SET_VAPIC_ADDR, Vcpu, Buf, Ret),
    i("SET_GUEST_DEBUG", KVM_SET_GUEST_DEBUG, Vcpu, Buf, Ret),
    i("X86_SETUP_MCE", KVM_X86_SETUP_MCE, Vcpu, Buf, Ret),
    i("X86_SET_MCE", KVM_X86_SET_MCE, Vcpu, Buf, Ret),
    i("GET_REGS", KVM_GET_REGS, Vcpu, Buf, State),
    set("SET_REGS", KVM_SET_REGS, Vcpu, Buf, KVM_GET_REGS),
    i("GET_SREGS", KVM_GET_SREGS, Vcpu, Buf, State),
    set("SET_SREGS", KVM_SET_SREGS, Vcpu, Buf, KVM_GET_SREGS),
    i("GET_SREGS2", KVM_GET_SREGS2, Vcpu, Buf, State),
    set("SET_SREGS2", KVM_SET_SREGS2, Vcpu, Buf, KVM_GET_SREGS2),
    set(
        "SET_CPUID2",
        KVM_SET_CPUID2,
        Vcpu,
        CPUID,
        KVM_GET_SUPPORTED_CPUID,
    ),
    i("GET_CPUID2", KVM_GET_CPUID2, Vcpu, CPUID, Ret),
    i("GET_MP_STATE", KVM_GET_MP_STATE, Vcpu, Buf, State),
    set(
        "SET_MP_STATE",
        KVM_SET_MP_STATE,
        Vcpu,
        Buf,
        KVM_GET_MP_STATE,
    ),
    i(
        "GET_MP_STATE(bad size)",
        KVM_GET_MP_STATE_BAD_SIZE,
        Vcpu,
        Buf,
        Ret,
    ),
    i("TRANSLATE", KVM_TRANSLATE, Vcpu, Buf, Ret),
    i("GET_MSRS", KVM_GET_MSRS, Vcpu, MSRS, Ret),
    set("SET_MSRS", KVM_SET_MSRS, Vcpu, MSRS, KVM_GET_MSRS),
    i("GET_FPU", KVM_GET_FPU, Vcpu, Buf, State),
    set("SET_FPU", KVM_SET_FPU, Vcpu, Buf, KVM_GET_FPU),
    i("SET_SIGNAL_MASK", KVM_SET_SIGNAL_MASK, Vcpu, SIGMASK, Ret),
    i("GET_LAPIC", KVM_GET_LAPIC, Vcpu, Buf, Ret),
    set("SET_LAPIC", KVM_SET_LAPIC, Vcpu, Buf, KVM_GET_LAPIC),
    i("GET_VCPU_EVENTS", KVM_GET_VCPU_EVENTS, Vcpu, Buf, State),
    set(
        "SET_VCPU_EVENTS",
        KVM_SET_VCPU_EVENTS,
        Vcpu,
        Buf,
        KVM_GET_VCPU_EVENTS,
    ),
    i("GET_DEBUGREGS", KVM_GET_DEBUGREGS, Vcpu, Buf, State),
    set(
        "SET_DEBUGREGS",
        KVM_SET_DEBUGREGS,
        Vcpu,
        Buf,
        KVM_GET_DEBUGREGS,
    ),
    i("GET_XSAVE", KVM_GET_XSAVE, Vcpu, Buf, Ret),
    set("SET_XSAVE", KVM_SET_XSAVE, Vcpu, Buf, KVM_GET_XSAVE),
    i("GET_XSAVE2", KVM_GET_XSAVE2, Vcpu, Buf, Ret),
    i("GET_XCRS", KVM_GET_XCRS, Vcpu, Buf, State),
    set("SET_XCRS", KVM_SET_XCRS, Vcpu, Buf, KVM_GET_XCRS),
    i("SET_TSC_KHZ", KVM_SET_TSC_KHZ, Vcpu, Int, Ret),
    i("GET_TSC_KHZ", KVM_GET_TSC_KHZ, Vcpu, Int, Ret),
    i(
        "ENABLE_CAP",
        KVM_ENABLE_CAP,
        Vcpu,
        Special(S::EnableCap),
        Ret,
    ),
    i(
        "SET_DEVICE_ATTR",
        KVM_SET_DEVICE_ATTR,
        Vcpu,
        Special(S::DeviceAttr),
        Ret,
    ),
    i(
        "GET_DEVICE_ATTR",
        KVM_GET_DEVICE_ATTR,
        Vcpu,
        Special(S::DeviceAttr),
        Ret,
    ),
    i(
        "HAS_DEVICE_ATTR",
        KVM_HAS_DEVICE_ATTR,
        Vcpu,
        Special(S::DeviceAttr),
        Ret,
    ),
    i("GET_NESTED_STATE", KVM_GET_NESTED_STATE, Vcpu, Buf, Ret),
    i("SET_NESTED_STATE", KVM_SET_NESTED_STATE, Vcpu, Buf, Ret),
    i("GET_ONE_REG", KVM_GET_ONE_REG, Vcpu, Buf, Ret),
    i("GET_REG_LIST", KVM_GET_REG_LIST, Vcpu, Buf, Ret),
    i("PRE_FAULT_MEMORY", KVM_PRE_FAULT_MEMORY, Vcpu, Buf, Ret),
    i("GET_STATS_FD(vcpu)", KVM_GET_STATS_FD, Vcpu, Int, Ret),
];

/// `_IOC_SIZE(cmd)`.
pub fn size_of_cmd(cmd: u32) -> usize {
    ((cmd >> 16) & 0x3fff) as usize
}

/// `_IOC_DIR(cmd)` includes `_IOC_READ` (the kernel writes the argument back).
pub fn writes_back(cmd: u32) -> bool {
    cmd >> 30 & 2 != 0
}

/// MSR indices the fuzzer reads and writes: architectural, AMD, KVM PV, x2APIC,
/// machine check banks, MTRRs, and a few that exist nowhere.
pub const MSR_POOL: &[u32] = &[
    0x10,
    0x1b,
    0x34,
    0x3a,
    0x3b,
    0x48,
    0x49,
    0x8b,
    0xce,
    0xfe,
    0x10a,
    0x140,
    0x174,
    0x175,
    0x176,
    0x179,
    0x17a,
    0x17b,
    0x1a0,
    0x1d9,
    0x200,
    0x201,
    0x20e,
    0x20f,
    0x250,
    0x258,
    0x259,
    0x268,
    0x26f,
    0x277,
    0x2ff,
    0x400,
    0x401,
    0x402,
    0x403,
    0x41f,
    0x4d0,
    0x6e0,
    0x800,
    0x802,
    0x803,
    0x808,
    0x80b,
    0x80f,
    0x828,
    0x830,
    0x832,
    0x838,
    0x839,
    0x83e,
    0x83f,
    0xda0,
    0x4b56_4d00,
    0x4b56_4d01,
    0x4b56_4d02,
    0x4b56_4d03,
    0x4b56_4d04,
    0x4b56_4d05,
    0x4b56_4d06,
    0x4b56_4d07,
    0x11,
    0x12,
    0x4000_0000,
    0x4000_0001,
    0xc000_0080,
    0xc000_0081,
    0xc000_0082,
    0xc000_0083,
    0xc000_0084,
    0xc000_0100,
    0xc000_0101,
    0xc000_0102,
    0xc000_0103,
    0xc000_0104,
    0xc001_0000,
    0xc001_0004,
    0xc001_0010,
    0xc001_0015,
    0xc001_0114,
    0xc001_0117,
    0xc001_011f,
    0xc001_0200,
    0xc001_0201,
    0xc001_1029,
    0xc001_0140,
    0xdead_beef,
    0xffff_ffff,
];
