// SPDX-License-Identifier: GPL-2.0-only
//! x86's side of the generic core (upstream: struct kvm_arch, kvm_arch_init_vm(),
//! kvm_arch_vm_ioctl(), kvm_vm_ioctl_enable_cap(), kvm_arch_vcpu_precreate() /
//! _create() of x86.c, and the MMU hooks of mmu.c): [`X86`] implements
//! [`KvmArch`] for kvm_main.rs.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex, SpinLock};
use kernel::{new_mutex, new_spinlock};

use crate::abi::caps::{
    self, Host, MAX_VCPU_IDS, X2APIC_API_DISABLE_BROADCAST_QUIRK, X2APIC_API_USE_32BIT_IDS,
    X2APIC_API_VALID_FLAGS, X2APIC_DISABLE_SUPPRESS_EOI_BROADCAST,
    X2APIC_ENABLE_SUPPRESS_EOI_BROADCAST,
};
use crate::abi::{ioctl, uapi};
use crate::arch::clock::tsc_khz_arg;
use crate::arch::clock::KvmClock;
use crate::arch::i8254::KvmPit;
use crate::arch::irqchip::{self, IoapicDev, Irqchip, PicDev};
use crate::arch::mmu::tdp::Mmu;
use crate::arch::msr::MsrFilter;
use crate::arch::vendor::{self, VendorLoaded, VendorRef};
use crate::arch::x86::VcpuArch;
use crate::arch::{cpuid, msr, regs, Vcpu, Vm};
use crate::eventfd::IrqfdResampler;
use crate::hw::lapic::{self, valid_bus_cycle_ns, Irq, Lapic, APIC_BUS_CYCLE_NS_DEFAULT};
use crate::hw::mce::{KVM_MAX_MCE_BANKS, SUPPORTED_MCE_CAP_SVM};
use crate::hw::msr_filter;
use crate::hw::tsc::TscSync;
use crate::hw::{ioapic, irq_routing, pit};
use crate::io_bus::Bus;
use crate::kvm_host::VmLocked;
use crate::kvm_host::{GfnRanges, Gfns, IrqSource, KvmArch, KvmIoDevice};
use crate::stats;
use crate::{glue, user};

/// KVM_MIN_ALLOC_MMU_PAGES.
const KVM_MIN_ALLOC_MMU_PAGES: usize = 64;

/// x86, for the generic core.
pub(crate) struct X86;

/// `struct kvm_arch`.
/// enum kvm_irqchip_mode.
const IRQCHIP_NONE: u32 = 0;
const IRQCHIP_KERNEL: u32 = 1;
const IRQCHIP_SPLIT: u32 = 2;

/// enum kvm_suppress_eoi_broadcast_mode.
const SUPPRESS_EOI_BROADCAST_QUIRKED: u32 = 0;
const SUPPRESS_EOI_BROADCAST_ENABLED: u32 = 1;
const SUPPRESS_EOI_BROADCAST_DISABLED: u32 = 2;

/// KVM_CAP_SPLIT_IRQCHIP's bound on reserved IOAPIC pins (KVM_MAX_IRQ_ROUTES).
const MAX_NR_RESERVED_IOAPIC_PINS: u64 = irq_routing::MAX_ROUTES as u64;

#[pin_data]
pub(crate) struct VmArch {
    /// The vendor module, pinned for the VM's lifetime (its vCPUs pin it too).
    pub(crate) vendor: VendorRef,
    #[allow(dead_code)] // Read by the vendor hooks of protected VM types.
    vm_type: u32,
    /// The TDP MMU: taken after the generic slots lock, before kvm->lock.
    #[pin]
    pub(crate) mmu: Mutex<Mmu>,
    /// The PIC, IOAPIC and routing table (irqchip.rs), taken before kvm->lock.
    #[pin]
    pub(crate) irqchip: Mutex<Option<KBox<Irqchip>>>,
    /// The PIC's INTR output as the irqchip last left it, for the ExtINT check
    /// on every guest entry, which upstream makes without the PIC's lock too
    /// (kvm_cpu_has_extint() reads pic->output).
    pub(crate) pic_output: Arc<AtomicBool>,
    /// kvm->arch.vpit (i8254.rs): held only to take a reference, before the
    /// irqchip.
    #[pin]
    pub(crate) pit: Mutex<Option<Arc<KvmPit>>>,
    /// kvm->arch.irqchip_mode: set once, by KVM_CREATE_IRQCHIP (KERNEL) or
    /// KVM_CAP_SPLIT_IRQCHIP (SPLIT), before any vCPU exists: vCPUs created
    /// afterwards get an in-kernel LAPIC.
    irqchip_mode: AtomicU32,
    /// kvm->arch.nr_reserved_ioapic_pins: with the split irqchip, the GSIs
    /// below it are the userspace IOAPIC's pins (their level-triggered MSI
    /// routes' EOIs exit to userspace).
    pub(crate) nr_reserved_ioapic_pins: AtomicU32,
    /// KVM_SET_BOOT_CPU_ID (kvm->arch.bsp_vcpu_id): the vCPU that comes out of
    /// reset as the BSP; set only before any vCPU exists, under kvm->lock.
    pub(crate) bsp_vcpu_id: AtomicU32,
    /// KVM_CAP_DISABLE_QUIRKS2: the quirks userspace turned off.
    pub(crate) disabled_quirks: AtomicU64,
    /// KVM_CAP_X86_APIC_BUS_CYCLES_NS: the LAPIC timer's bus cycle, set only
    /// before any vCPU exists, under kvm->lock.
    pub(crate) apic_bus_cycle_ns: AtomicU64,
    /// KVM_CAP_X2APIC_API (kvm->arch.x2apic_format and
    /// x2apic_broadcast_quirk_disabled): KVM_GET/SET_LAPIC and MSIs use 32-bit
    /// x2APIC IDs; 0xff is not an x2APIC broadcast. Only ever turned on, under
    /// the irqchip lock.
    pub(crate) x2apic_format: AtomicBool,
    pub(crate) x2apic_broadcast_quirk_disabled: AtomicBool,
    /// kvm->arch.suppress_eoi_broadcast_mode (SUPPRESS_EOI_BROADCAST_*).
    suppress_eoi_broadcast_mode: AtomicU32,
    /// KVM_CAP_X86_USER_SPACE_MSR: the failed-MSR-access reasons
    /// (KVM_MSR_EXIT_REASON_*) that exit to userspace instead of a #GP.
    pub(crate) user_space_msr_mask: AtomicU32,
    /// KVM_X86_SET_MSR_FILTER (kvm->arch.msr_filter): None allows every access.
    #[pin]
    pub(crate) msr_filter: SpinLock<Option<Arc<MsrFilter>>>,
    /// KVM_CAP_X86_TRIPLE_FAULT_EVENT: KVM_GET/SET_VCPU_EVENTS carry a pending
    /// triple fault (for saving and restoring it).
    pub(crate) triple_fault_event: AtomicBool,
    /// KVM_CAP_EXIT_ON_EMULATION_FAILURE: every emulation failure exits to
    /// userspace, without a #UD for the guest.
    pub(crate) exit_on_emulation_error: AtomicBool,
    /// KVM_CAP_MSR_PLATFORM_INFO: the guest may read MSR_PLATFORM_INFO.
    pub(crate) platform_info_readable: AtomicBool,
    /// Bumped whenever NPT entries are zapped: vCPUs flush their TLB on entry when
    /// it differs from what they last saw.
    pub(crate) tlb_gen: AtomicU64,
    /// Per host CPU: whether one of our vCPUs is in guest mode there (set before
    /// `tlb_gen` is read on entry), so that a flush interrupts only those CPUs.
    in_guest: KVec<AtomicBool>,
    /// KVM_CAP_MAX_VCPU_ID (0: not set yet; fixed at the first KVM_CREATE_VCPU).
    /// Changed only under kvm->lock.
    max_vcpu_ids: AtomicU32,
    /// KVM_SET_TSC_KHZ on the VM: what new vCPUs start with. Changed only under
    /// kvm->lock, while there is no vCPU.
    pub(crate) default_tsc_khz: AtomicU32,
    /// The kvmclock: its offset and the master clock (clock.rs).
    #[pin]
    pub(crate) clock: Mutex<KvmClock>,
    /// The record of the vCPUs' TSC writes (upstream tsc_write_lock and the
    /// last_tsc_*/cur_tsc_* it guards), taken under a vCPU mutex.
    #[pin]
    pub(crate) tsc: SpinLock<TscSync>,
    /// KVM_REQ_MASTERCLOCK_UPDATE, for whichever vCPU enters next.
    pub(crate) masterclock_update: AtomicBool,
    /// Bumped for KVM_REQ_GLOBAL_CLOCK_UPDATE: each vCPU writes its pvclock again.
    pub(crate) clock_gen: AtomicU64,
    /// MSR_KVM_WALL_CLOCK(_NEW) (upstream kvm->arch.wall_clock).
    pub(crate) wall_clock: AtomicU64,
}

/// What other threads reach of an x86 vCPU without its mutex.
#[pin_data]
pub(crate) struct VcpuShared {
    /// The in-kernel LAPIC (when the VM had an irqchip when this vCPU was
    /// created). Other vCPUs lock it briefly to deliver IPIs.
    #[pin]
    pub(crate) lapic: SpinLock<Option<Lapic>>,
    /// The vendor's load state, for vcpu_load/vcpu_put from the preempt notifier.
    pub(crate) loaded: VendorLoaded,
    /// KVM_REQ_STEAL_UPDATE: set when the vCPU's task is scheduled in (or the
    /// steal-time MSR is written), consumed before the next entry.
    pub(crate) steal_update: AtomicBool,
}

/// kvm_arch_vcpu_load(): the vCPU's task runs on `cpu`, preemption off (from
/// vcpu_load() and the preempt notifier's sched_in). A different vCPU than the
/// last one on this CPU gets a branch-predictor barrier, so vCPUs do not share
/// prediction state (upstream's switch_vcpu_ibpb); then the vendor's vcpu_load.
fn kvm_arch_vcpu_load(vcpu: &Vcpu, cpu: u32) {
    // SAFETY: preemption is off for the per-CPU access; the pointer is only compared.
    unsafe { glue::kvm_glue_switch_vcpu_ibpb(core::ptr::from_ref(vcpu).cast()) };
    vcpu.arch.loaded.vcpu_load(cpu);
    // The time it was off the CPU is steal time for the guest.
    vcpu.arch.steal_update.store(true, Ordering::Release);
}

/// kvm_arch_vcpu_put(): the vCPU's task leaves the CPU, preemption off.
fn kvm_arch_vcpu_put(vcpu: &Vcpu) {
    vcpu.arch.loaded.vcpu_put();
}

/// One cleared flag per possible CPU id.
fn in_guest_flags() -> Result<KVec<AtomicBool>> {
    let n = kernel::cpu::nr_cpu_ids() as usize;
    let mut v = KVec::with_capacity(n, GFP_KERNEL)?;
    for _ in 0..n {
        v.push(AtomicBool::new(false), GFP_KERNEL)?;
    }
    Ok(v)
}

impl VmArch {
    /// irqchip_in_kernel(): the LAPICs are in the kernel (full or split irqchip).
    pub(crate) fn irqchip_in_kernel(&self) -> bool {
        self.irqchip_mode.load(Ordering::Acquire) != IRQCHIP_NONE
    }

    /// pic_in_kernel() / irqchip_full(): the PIC and IOAPIC are in the kernel too.
    pub(crate) fn pic_in_kernel(&self) -> bool {
        self.irqchip_mode.load(Ordering::Acquire) == IRQCHIP_KERNEL
    }

    /// irqchip_split(): the LAPICs in the kernel, the PIC and IOAPIC in userspace.
    /// kvm_lapic_advertise_suppress_eoi_broadcast(): whether the LAPIC version
    /// offers directed EOI; quirked, only where the IOAPIC is userspace's (the
    /// in-kernel one has no EOI register to direct EOIs to).
    pub(crate) fn kvm_lapic_advertise_suppress_eoi_broadcast(&self) -> bool {
        match self.suppress_eoi_broadcast_mode.load(Ordering::Relaxed) {
            SUPPRESS_EOI_BROADCAST_ENABLED => true,
            SUPPRESS_EOI_BROADCAST_DISABLED => false,
            _ => self.irqchip_split(),
        }
    }

    /// kvm_lapic_suppress_eoi_broadcast()'s mode: whether a guest's SPIV bit
    /// suppresses EOI broadcasts; quirked, only with the in-kernel IOAPIC.
    pub(crate) fn kvm_lapic_honor_suppress_eoi_broadcast(&self) -> bool {
        match self.suppress_eoi_broadcast_mode.load(Ordering::Relaxed) {
            SUPPRESS_EOI_BROADCAST_ENABLED => true,
            SUPPRESS_EOI_BROADCAST_DISABLED => false,
            _ => !self.irqchip_split(),
        }
    }

    pub(crate) fn irqchip_split(&self) -> bool {
        self.irqchip_mode.load(Ordering::Acquire) == IRQCHIP_SPLIT
    }
}

impl KvmArch for X86 {
    type VmArch = VmArch;
    type VcpuArch = VcpuArch;
    type VcpuShared = VcpuShared;

    fn host() -> Host {
        let (vm_types, vcpus) = vendor::vm_types_and_vcpus();
        Host {
            vm_types,
            // SAFETY: reads a counter.
            online_cpus: unsafe { glue::kvm_glue_num_online_cpus() },
            vcpus,
            xsave: regs::host_xcr0() != 0,
            xsave2_size: regs::xsave2_size(),
        }
    }

    fn arch_check_extension(vm: Option<&Vm>, cap: u64) -> Option<isize> {
        match u32::try_from(cap).ok()? {
            uapi::KVM_CAP_X2APIC_API => {
                let mut r = X2APIC_API_VALID_FLAGS;
                if vm.is_some_and(|vm| !vm.arch.irqchip_split()) {
                    r &= !X2APIC_ENABLE_SUPPRESS_EOI_BROADCAST;
                }
                Some(r as isize)
            }
            // The VM's bus cycle, or the default on /dev/kvm (nonzero: supported).
            uapi::KVM_CAP_X86_APIC_BUS_CYCLES_NS => Some(match vm {
                Some(vm) => vm.arch.apic_bus_cycle_ns.load(Ordering::Relaxed) as isize,
                None => APIC_BUS_CYCLE_NS_DEFAULT as isize,
            }),
            _ => None,
        }
    }

    /// kvm_arch_dev_ioctl().
    fn dev_ioctl(cmd: u32, arg: usize) -> Result<isize> {
        // KVM_CAP_MCE reports the banks the vCPUs have.
        const _: () = assert!(caps::MAX_MCE_BANKS as usize == KVM_MAX_MCE_BANKS);
        match cmd {
            ioctl::KVM_GET_SUPPORTED_CPUID => cpuid::kvm_dev_ioctl_get_cpuid(arg),
            ioctl::KVM_GET_MSR_INDEX_LIST => msr::kvm_get_msr_index_list(arg),
            ioctl::KVM_GET_MSR_FEATURE_INDEX_LIST => msr::kvm_get_msr_feature_index_list(arg),
            ioctl::KVM_GET_MSRS => msr::kvm_get_feature_msrs(arg),
            ioctl::KVM_X86_GET_MCE_CAP_SUPPORTED => {
                user::write(arg, &SUPPORTED_MCE_CAP_SVM)?;
                Ok(0)
            }
            // x86's kvm_arch_dev_ioctl() answers unknown commands with -EINVAL.
            _ => Err(EINVAL),
        }
    }

    fn vm_init(vm_type: u32) -> Result<impl PinInit<VmArch, Error>> {
        if !caps::vm_type_supported(&Self::host(), vm_type.into()) {
            return Err(EINVAL);
        }
        let vendor = VendorRef::get()?;
        let mmu = Mmu::new(vendor.ops().tdp_masks)?;
        let in_guest = in_guest_flags()?;
        let pic_output = Arc::new(AtomicBool::new(false), GFP_KERNEL)?;
        Ok(try_pin_init!(VmArch {
            vendor,
            vm_type,
            mmu <- new_mutex!(mmu, "kvm->arch.mmu_lock"),
            irqchip <- new_mutex!(None, "kvm->arch.irqchip"),
            pic_output,
            pit <- new_mutex!(None, "kvm->arch.vpit"),
            irqchip_mode: AtomicU32::new(IRQCHIP_NONE),
            nr_reserved_ioapic_pins: AtomicU32::new(0),
            bsp_vcpu_id: AtomicU32::new(0),
            disabled_quirks: AtomicU64::new(0),
            apic_bus_cycle_ns: AtomicU64::new(APIC_BUS_CYCLE_NS_DEFAULT),
            user_space_msr_mask: AtomicU32::new(0),
            msr_filter <- new_spinlock!(None, "kvm->arch.msr_filter"),
            x2apic_format: AtomicBool::new(false),
            x2apic_broadcast_quirk_disabled: AtomicBool::new(false),
            suppress_eoi_broadcast_mode: AtomicU32::new(SUPPRESS_EOI_BROADCAST_QUIRKED),
            triple_fault_event: AtomicBool::new(false),
            exit_on_emulation_error: AtomicBool::new(false),
            platform_info_readable: AtomicBool::new(true),
            tlb_gen: AtomicU64::new(0),
            in_guest,
            max_vcpu_ids: AtomicU32::new(0),
            // SAFETY: reads a kernel variable.
            default_tsc_khz: AtomicU32::new(unsafe { glue::kvm_glue_tsc_khz() }),
            clock <- new_mutex!(KvmClock::new(), "kvm->arch.kvmclock"),
            tsc <- new_spinlock!(TscSync::default(), "kvm->arch.tsc_write_lock"),
            masterclock_update: AtomicBool::new(false),
            clock_gen: AtomicU64::new(0),
            wall_clock: AtomicU64::new(0),
        }))
    }

    fn vm_ioctl(vm: &Arc<Vm>, cmd: u32, arg: usize) -> Result<isize> {
        kvm_arch_vm_ioctl(vm, cmd, arg)
    }

    fn unmap_gfn_ranges(vm: &Vm, ranges: GfnRanges<'_>) {
        let mut mmu = vm.arch.mmu.lock();
        vm.slots_gen.fetch_add(1, Ordering::SeqCst);
        let (mut any, mut lo, mut hi) = (false, u64::MAX, 0);
        ranges(&mut |first, last| {
            any |= mmu.zap(first, last);
            lo = lo.min(first);
            hi = hi.max(last);
        });
        if any {
            // Zapped leaves keep their pages until no vCPU can use them.
            vm.kvm_flush_remote_tlbs();
            mmu.release_zapped(lo, hi);
            vm.stats.set(stats::vm::PAGES_4K, mmu.mapped);
        }
    }

    fn write_protect_gfn_range(vm: &Vm, start: u64, end: u64) {
        if vm.arch.mmu.lock().write_protect_range(start, end) {
            vm.kvm_flush_remote_tlbs();
        }
    }

    fn kvm_mmu_max_gfn() -> u64 {
        // The host's MAXPHYADDR, not the guest's: NPT/EPT cannot map beyond it.
        (1u64 << (super::mmu::kvm_get_host_maxphyaddr() - 12)) - 1
    }

    fn write_protect_gfns(vm: &Vm, gfns: Gfns<'_>) {
        let mut mmu = vm.arch.mmu.lock();
        let mut any = false;
        gfns(&mut |gfn| any |= mmu.write_protect(gfn));
        if any {
            vm.kvm_flush_remote_tlbs();
        }
    }

    fn vcpu_precreate(vm: &Vm, _locked: &mut VmLocked<X86>, id: u32) -> Result {
        // The first vCPU fixes the id limit.
        let _ = vm.arch.max_vcpu_ids.compare_exchange(
            0,
            MAX_VCPU_IDS,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if id >= vm.arch.max_vcpu_ids.load(Ordering::Relaxed) {
            return Err(EINVAL);
        }
        Ok(())
    }

    fn vcpu_create(vm: &Vm, id: u32) -> Result<(VcpuArch, impl PinInit<VcpuShared, Error>)> {
        let irqchip = vm.arch.irqchip_in_kernel();
        let tsc_khz = vm.arch.default_tsc_khz.load(Ordering::Relaxed);
        let bsp = id == vm.arch.bsp_vcpu_id.load(Ordering::Relaxed);
        let stuff = vm.kvm_check_has_quirk(uapi::KVM_X86_QUIRK_STUFF_FEATURE_MSRS);
        let (mut arch, loaded) = VcpuArch::new(&vm.arch.vendor, irqchip, bsp, tsc_khz, stuff)?;
        // kvm_arch_vcpu_postcreate(): TSC 0, or the other vCPUs' TSC.
        vm.kvm_synchronize_tsc(&mut arch, None);
        let bus_cycle_ns = vm.arch.apic_bus_cycle_ns.load(Ordering::Relaxed);
        let honor_suppress_eoi = vm.arch.kvm_lapic_honor_suppress_eoi_broadcast();
        let no_broadcast_quirk = vm
            .arch
            .x2apic_broadcast_quirk_disabled
            .load(Ordering::Relaxed);
        let lapic = irqchip.then(|| {
            let mut l = Lapic::with_reset_bsp(id, tsc_khz, bsp);
            l.set_bus_cycle_ns(bus_cycle_ns);
            l.set_broadcast_quirk_disabled(no_broadcast_quirk);
            l.set_honor_suppress_eoi(honor_suppress_eoi);
            l
        });
        Ok((
            arch,
            try_pin_init!(VcpuShared {
                lapic <- new_spinlock!(lapic, "apic->lock"),
                loaded,
                steal_update: AtomicBool::new(false),
            }),
        ))
    }

    fn vcpu_load(vcpu: &Vcpu, cpu: u32) {
        kvm_arch_vcpu_load(vcpu, cpu);
    }

    fn vcpu_put(vcpu: &Vcpu) {
        kvm_arch_vcpu_put(vcpu);
    }

    fn kvm_arch_irqfd_allowed(vm: &Vm, resample: bool) -> bool {
        // Resampling needs the in-kernel IOAPIC or PIC to see the ack.
        if resample {
            vm.arch.pic_in_kernel()
        } else {
            vm.arch.irqchip_in_kernel()
        }
    }

    fn kvm_set_irq(vm: &Vm, source: IrqSource, gsi: u32, level: bool) {
        vm.kvm_set_irq_source(gsi, irqchip::source_id(source), level);
    }

    fn kvm_register_irq_ack_notifier(vm: &Vm, r: Arc<IrqfdResampler>) -> Result {
        let mut chip = vm.arch.irqchip.lock();
        match (*chip).as_mut() {
            Some(c) => c.register_resampler(r),
            None => Err(EINVAL),
        }
    }

    fn kvm_unregister_irq_ack_notifier(vm: &Vm, r: &Arc<IrqfdResampler>) {
        let mut chip = vm.arch.irqchip.lock();
        if let Some(c) = (*chip).as_mut() {
            c.unregister_resampler(r, &vm.locked.lock().vcpus);
        }
    }

    fn kvm_arch_destroy_vm(vm: &Vm) {
        vm.kvm_free_pit();
    }

    fn vcpu_ioctl(vcpu: &Vcpu, vm: &Vm, st: &mut VcpuArch, cmd: u32, arg: usize) -> Result<isize> {
        vcpu.kvm_arch_vcpu_ioctl(vm, st, cmd, arg)
    }

    fn vcpu_ioctl_run(vcpu: &Vcpu, vm: &Vm, st: &mut VcpuArch) -> Result<isize> {
        vcpu.kvm_arch_vcpu_ioctl_run(vm, st)
    }
}

/// kvm_pic_init() and kvm_ioapic_init(): the PIC's ports and the IOAPIC's window
/// on the buses; none stays registered if one cannot be.
fn register_irqchip_devices(vm: &Vm) -> Result {
    let pic: Arc<dyn KvmIoDevice<X86>> = Arc::new(PicDev, GFP_KERNEL)?;
    let ioapic: Arc<dyn KvmIoDevice<X86>> = Arc::new(IoapicDev, GFP_KERNEL)?;
    let mut r = Ok(());
    for (port, len) in irqchip::PIC_PORTS {
        r = r.and_then(|()| vm.kvm_io_bus_register_dev(Bus::Pio, port, len, pic.clone()));
    }
    let (base, len) = (ioapic::DEFAULT_BASE, ioapic::MEM_LENGTH as u32);
    r = r.and_then(|()| vm.kvm_io_bus_register_dev(Bus::Mmio, base, len, ioapic.clone()));
    if r.is_err() {
        // Unregistering allocates too; a device it cannot remove declines every
        // access while the VM has no irqchip.
        let _ = vm.kvm_io_bus_unregister_dev(Bus::Pio, &pic);
        let _ = vm.kvm_io_bus_unregister_dev(Bus::Mmio, &ioapic);
    }
    r
}

/// kvm_arch_vm_ioctl().
fn kvm_arch_vm_ioctl(vm: &Arc<Vm>, cmd: u32, arg: usize) -> Result<isize> {
    match cmd {
        ioctl::KVM_ENABLE_CAP => {
            let c: uapi::kvm_enable_cap = user::read(arg)?;
            kvm_vm_ioctl_enable_cap(vm, &c)
        }
        ioctl::KVM_GET_TSC_KHZ => Ok(vm.arch.default_tsc_khz.load(Ordering::Relaxed) as isize),
        ioctl::KVM_GET_CLOCK => vm.kvm_vm_ioctl_get_clock(arg),
        ioctl::KVM_SET_CLOCK => vm.kvm_vm_ioctl_set_clock(arg),
        ioctl::KVM_SET_TSC_KHZ => {
            // Without TSC scaling any rate is accepted here, as upstream; whether
            // a vCPU can run at it is KVM_SET_TSC_KHZ on the vCPU's business.
            let khz = tsc_khz_arg(arg);
            let l = vm.locked.lock();
            if !l.vcpus.is_empty() {
                return Err(EINVAL);
            }
            vm.arch.default_tsc_khz.store(khz, Ordering::Relaxed);
            Ok(0)
        }
        // A cap on shadow-MMU pages (kvm_vm_ioctl_set_nr_mmu_pages()). The NPT
        // MMU has no shadow pages, as upstream's TDP MMU: only the bound is checked.
        ioctl::KVM_X86_SET_MSR_FILTER => msr::kvm_vm_ioctl_set_msr_filter(vm, arg),
        ioctl::KVM_SET_NR_MMU_PAGES => {
            if arg < KVM_MIN_ALLOC_MMU_PAGES {
                return Err(EINVAL);
            }
            Ok(0)
        }
        // SVM has no real-mode TSS or identity map to place (svm_set_tss_addr()).
        // kvm_vm_ioctl_set_tss_addr(): the TSS's three pages must fit below 4 GiB.
        ioctl::KVM_SET_TSS_ADDR if arg as u64 > u64::from(crate::hw::sregs::TSS_ADDR_LIMIT) => {
            Err(EINVAL)
        }
        ioctl::KVM_SET_TSS_ADDR => Ok(0),
        // Upstream checks for vCPUs before it reads the address (the fuzzer's
        // differential run found the order).
        ioctl::KVM_SET_IDENTITY_MAP_ADDR => {
            if !vm.locked.lock().vcpus.is_empty() {
                return Err(EINVAL);
            }
            let _addr: u64 = user::read(arg)?;
            Ok(0)
        }
        ioctl::KVM_SET_BOOT_CPU_ID => {
            let l = vm.locked.lock();
            let max = vm.arch.max_vcpu_ids.load(Ordering::Relaxed);
            if !l.vcpus.is_empty() {
                Err(EBUSY)
            } else if arg > MAX_VCPU_IDS as usize || (max != 0 && arg > max as usize) {
                Err(EINVAL)
            } else {
                vm.arch.bsp_vcpu_id.store(arg as u32, Ordering::Relaxed);
                Ok(0)
            }
        }
        ioctl::KVM_CREATE_IRQCHIP => {
            let mut chip = vm.arch.irqchip.lock();
            if chip.is_some() {
                return Err(EEXIST);
            }
            // Held until the flag is set: a vCPU created meanwhile would lack
            // its LAPIC.
            let l = vm.locked.lock();
            if !l.vcpus.is_empty() {
                return Err(EINVAL);
            }
            let mut new = KBox::new(Irqchip::new(vm.arch.pic_output.clone())?, GFP_KERNEL)?;
            new.x2apic_format = vm.arch.x2apic_format.load(Ordering::Relaxed);
            register_irqchip_devices(vm)?;
            *chip = Some(new);
            vm.arch
                .irqchip_mode
                .store(IRQCHIP_KERNEL, Ordering::Release);
            drop(l);
            Ok(0)
        }
        ioctl::KVM_GET_IRQCHIP => {
            let mut c: uapi::kvm_irqchip = user::read(arg)?;
            if !vm.arch.pic_in_kernel() {
                return Err(ENXIO);
            }
            vm.arch.irqchip.lock().as_ref().ok_or(ENXIO)?.get(&mut c)?;
            user::write(arg, &c)?;
            Ok(0)
        }
        ioctl::KVM_SET_IRQCHIP => {
            let c: uapi::kvm_irqchip = user::read(arg)?;
            if !vm.arch.pic_in_kernel() {
                return Err(ENXIO);
            }
            let mut chip = vm.arch.irqchip.lock();
            let chip = (*chip).as_mut().ok_or(ENXIO)?;
            chip.set(&c, &vm.locked.lock().vcpus)?;
            Ok(0)
        }
        ioctl::KVM_IRQ_LINE | ioctl::KVM_IRQ_LINE_STATUS => {
            let mut ev: uapi::kvm_irq_level = user::read(arg)?;
            let mut chip = vm.arch.irqchip.lock();
            let chip = (*chip).as_mut().ok_or(ENXIO)?;
            // SAFETY: the union's variants are plain integers.
            let gsi = unsafe { ev.__bindgen_anon_1.irq };
            let source = irqchip::SOURCE_USERSPACE;
            let status = chip.set_irq(source, gsi, ev.level != 0, &vm.locked.lock().vcpus);
            if cmd == ioctl::KVM_IRQ_LINE_STATUS {
                ev.__bindgen_anon_1.status = status;
                user::write(arg, &ev)?;
            }
            Ok(0)
        }
        ioctl::KVM_SET_GSI_ROUTING => {
            // The header is copied first: an unreadable one is -EFAULT even
            // without an irqchip.
            crate::user::Fam::<crate::user::IrqRouting>::read_header(arg)?;
            let mut chip = vm.arch.irqchip.lock();
            // kvm_arch_can_set_irq_routing(): only with an in-kernel irqchip.
            let chip = (*chip).as_mut().ok_or(EINVAL)?;
            let routes = irqchip::read_routes(arg, vm.arch.irqchip_split(), chip.x2apic_format)?;
            chip.set_routes(routes);
            Ok(0)
        }
        ioctl::KVM_SIGNAL_MSI => {
            let msi: uapi::kvm_msi = user::read(arg)?;
            let chip = vm.arch.irqchip.lock();
            if chip.is_none() {
                return Err(EINVAL);
            }
            let x2apic_format = vm.arch.x2apic_format.load(Ordering::Relaxed);
            let r = irqchip::signal_msi(&msi, &vm.locked.lock().vcpus, x2apic_format)?;
            // Upstream returns kvm_set_msi()'s -1 (no destination) as is, which
            // userspace sees as -EPERM.
            if r < 0 {
                return Err(EPERM);
            }
            Ok(r as isize)
        }
        ioctl::KVM_CREATE_PIT => vm.kvm_create_pit(pit::SPEAKER_DUMMY),
        ioctl::KVM_CREATE_PIT2 => {
            let c: uapi::kvm_pit_config = user::read(arg)?;
            vm.kvm_create_pit(c.flags)
        }
        ioctl::KVM_GET_PIT => {
            // Read first, as upstream: a bad pointer is -EFAULT before -ENXIO.
            let _: uapi::kvm_pit_state = user::read(arg)?;
            let s = vm.vpit()?.get_pit();
            user::write(arg, &s)?;
            Ok(0)
        }
        ioctl::KVM_SET_PIT => {
            let s: uapi::kvm_pit_state = user::read(arg)?;
            vm.vpit()?.set_pit(&s);
            Ok(0)
        }
        ioctl::KVM_GET_PIT2 => {
            let s = vm.vpit()?.get_pit2();
            user::write(arg, &s)?;
            Ok(0)
        }
        ioctl::KVM_SET_PIT2 => {
            let s: uapi::kvm_pit_state2 = user::read(arg)?;
            vm.vpit()?.set_pit2(&s);
            Ok(0)
        }
        ioctl::KVM_REINJECT_CONTROL => {
            let c: uapi::kvm_reinject_control = user::read(arg)?;
            vm.vpit()?.kvm_vm_ioctl_reinject(vm, &c);
            Ok(0)
        }
        // x86's kvm_arch_vm_ioctl() answers unknown commands with -ENOTTY.
        _ => Err(ENOTTY),
    }
}

/// Applies a VM-wide LAPIC setting to the in-kernel LAPIC of each vCPU in `vcpus`.
fn for_each_lapic(vcpus: &[Arc<Vcpu>], mut f: impl FnMut(&mut Lapic)) {
    for v in vcpus.iter() {
        if let Some(a) = (*v.arch.lapic.lock()).as_mut() {
            f(a);
        }
    }
}

/// KVM_ENABLE_CAP on the VM (upstream kvm_vm_ioctl_enable_cap()).
fn kvm_vm_ioctl_enable_cap(vm: &Vm, c: &uapi::kvm_enable_cap) -> Result<isize> {
    if c.flags != 0 {
        return Err(EINVAL);
    }
    match c.cap {
        uapi::KVM_CAP_SPLIT_IRQCHIP => {
            if c.args[0] > MAX_NR_RESERVED_IOAPIC_PINS {
                return Err(EINVAL);
            }
            let mut chip = vm.arch.irqchip.lock();
            if chip.is_some() {
                return Err(EEXIST);
            }
            // Held until the mode is set, as KVM_CREATE_IRQCHIP.
            let l = vm.locked.lock();
            if !l.vcpus.is_empty() {
                return Err(EEXIST);
            }
            // The routing table starts empty; userspace's IOAPIC sets MSI routes.
            let mut new = KBox::new(Irqchip::new_split(vm.arch.pic_output.clone()), GFP_KERNEL)?;
            new.x2apic_format = vm.arch.x2apic_format.load(Ordering::Relaxed);
            *chip = Some(new);
            vm.arch
                .nr_reserved_ioapic_pins
                .store(c.args[0] as u32, Ordering::Relaxed);
            vm.arch.irqchip_mode.store(IRQCHIP_SPLIT, Ordering::Release);
            drop(l);
            Ok(0)
        }
        uapi::KVM_CAP_MAX_VCPU_ID => {
            let want = c.args[0];
            if want > u64::from(MAX_VCPU_IDS) {
                return Err(EINVAL);
            }
            // Settable once, before any vCPU (which fixes it at the maximum);
            // changed only under kvm->lock.
            let _l = vm.locked.lock();
            let cur = vm.arch.max_vcpu_ids.load(Ordering::Relaxed);
            if u64::from(vm.arch.bsp_vcpu_id.load(Ordering::Relaxed)) > want {
                // The boot CPU's id must stay below the limit.
                Err(EINVAL)
            } else if u64::from(cur) == want {
                Ok(0)
            } else if cur == 0 {
                vm.arch.max_vcpu_ids.store(want as u32, Ordering::Relaxed);
                Ok(0)
            } else {
                Err(EINVAL)
            }
        }
        uapi::KVM_CAP_DISABLE_QUIRKS2 => {
            if c.args[0] & !u64::from(caps::SUPPORTED_QUIRKS) != 0 {
                return Err(EINVAL);
            }
            vm.arch
                .disabled_quirks
                .fetch_or(c.args[0], Ordering::Relaxed);
            Ok(0)
        }
        uapi::KVM_CAP_X86_APIC_BUS_CYCLES_NS => {
            if !valid_bus_cycle_ns(c.args[0]) {
                return Err(EINVAL);
            }
            let l = vm.locked.lock();
            if !vm.arch.irqchip_in_kernel() {
                Err(ENXIO)
            } else if !l.vcpus.is_empty() {
                Err(EINVAL)
            } else {
                vm.arch
                    .apic_bus_cycle_ns
                    .store(c.args[0], Ordering::Relaxed);
                Ok(0)
            }
        }
        uapi::KVM_CAP_X86_USER_SPACE_MSR => {
            if c.args[0] & !u64::from(msr_filter::EXIT_REASON_VALID_MASK) != 0 {
                return Err(EINVAL);
            }
            vm.arch
                .user_space_msr_mask
                .store(c.args[0] as u32, Ordering::Relaxed);
            Ok(0)
        }
        uapi::KVM_CAP_X2APIC_API => {
            let (enable, disable) = (
                c.args[0] & u64::from(X2APIC_ENABLE_SUPPRESS_EOI_BROADCAST) != 0,
                c.args[0] & u64::from(X2APIC_DISABLE_SUPPRESS_EOI_BROADCAST) != 0,
            );
            if c.args[0] & !u64::from(X2APIC_API_VALID_FLAGS) != 0
                || enable && disable
                || enable && !vm.arch.irqchip_split()
            {
                return Err(EINVAL);
            }
            let mut chip = vm.arch.irqchip.lock();
            if c.args[0] & u64::from(X2APIC_API_USE_32BIT_IDS) != 0 {
                vm.arch.x2apic_format.store(true, Ordering::Relaxed);
                if let Some(c) = (*chip).as_mut() {
                    c.x2apic_format = true;
                }
            }
            if c.args[0] & u64::from(X2APIC_API_DISABLE_BROADCAST_QUIRK) != 0 {
                // Held with the irqchip lock, so a vCPU being created sees the
                // flag or is in the list.
                let l = vm.locked.lock();
                vm.arch
                    .x2apic_broadcast_quirk_disabled
                    .store(true, Ordering::Relaxed);
                for_each_lapic(&l.vcpus, |a| a.set_broadcast_quirk_disabled(true));
            }
            if enable || disable {
                let mode = if enable {
                    SUPPRESS_EOI_BROADCAST_ENABLED
                } else {
                    SUPPRESS_EOI_BROADCAST_DISABLED
                };
                let l = vm.locked.lock();
                vm.arch
                    .suppress_eoi_broadcast_mode
                    .store(mode, Ordering::Relaxed);
                let honor = vm.arch.kvm_lapic_honor_suppress_eoi_broadcast();
                for_each_lapic(&l.vcpus, |a| a.set_honor_suppress_eoi(honor));
            }
            drop(chip);
            Ok(0)
        }
        uapi::KVM_CAP_X86_TRIPLE_FAULT_EVENT => {
            vm.arch
                .triple_fault_event
                .store(c.args[0] != 0, Ordering::Relaxed);
            Ok(0)
        }
        uapi::KVM_CAP_EXIT_ON_EMULATION_FAILURE => {
            if c.args[0] & !1 != 0 {
                return Err(EINVAL);
            }
            vm.arch
                .exit_on_emulation_error
                .store(c.args[0] != 0, Ordering::Relaxed);
            Ok(0)
        }
        uapi::KVM_CAP_MSR_PLATFORM_INFO => {
            vm.arch
                .platform_info_readable
                .store(c.args[0] != 0, Ordering::Relaxed);
            Ok(0)
        }
        _ => Err(EINVAL),
    }
}

impl Vm {
    /// kvm_msr_allowed(): the VM's MSR filter lets a guest access of `kind`
    /// (msr_filter::FILTER_READ/WRITE) to `index` through.
    pub(crate) fn kvm_msr_allowed(&self, index: u32, kind: u32) -> bool {
        let f = self.arch.msr_filter.lock().clone();
        f.is_none_or(|f| f.allowed(index, kind))
    }

    /// kvm_check_has_quirk(): userspace has not disabled `quirk`.
    pub(crate) fn kvm_check_has_quirk(&self, quirk: u32) -> bool {
        self.arch.disabled_quirks.load(Ordering::Relaxed) & u64::from(quirk) == 0
    }

    /// kvm_set_irq(): drives `gsi` as irq source `source`, if there is an irqchip.
    pub(crate) fn kvm_set_irq_source(&self, gsi: u32, source: u32, level: bool) {
        let mut chip = self.arch.irqchip.lock();
        if let Some(c) = (*chip).as_mut() {
            c.set_irq(source, gsi, level, &self.locked.lock().vcpus);
        }
    }

    /// Makes every vCPU flush its TLB before it next runs guest code, and waits
    /// until none is still running on old translations. Called with `mmu` held.
    /// As upstream's kvm_flush_remote_tlbs(), only CPUs where one of our vCPUs is
    /// in guest mode get a (waited-for) IPI; the flags, not the vCPU list, say
    /// which, because that list's lock is held across allocations (the MMU
    /// notifier calls this).
    pub(crate) fn kvm_flush_remote_tlbs(&self) {
        self.stats.inc(stats::vm::REMOTE_TLB_FLUSH_REQUESTS);
        self.stats.inc(stats::vm::REMOTE_TLB_FLUSH);
        // Pairs with set_in_guest(): a vCPU either sees the new generation on
        // entry or is seen in guest mode here.
        self.arch.tlb_gen.fetch_add(1, Ordering::SeqCst);
        for (cpu, f) in self.arch.in_guest.iter().enumerate() {
            if f.load(Ordering::SeqCst) {
                // SAFETY: process context, interrupts on; returns once the CPU took the IPI, so it left guest mode.
                unsafe { glue::kvm_glue_kick_cpu_wait(cpu as u32) };
            }
        }
    }

    /// Marks this CPU as running one of our vCPUs in guest mode (or not).
    /// Called with interrupts off, so `cpu` is the current CPU throughout.
    pub(crate) fn set_in_guest(&self, cpu: u32, on: bool) {
        if let Some(f) = self.arch.in_guest.get(cpu as usize) {
            f.store(on, Ordering::SeqCst);
        }
    }

    /// Delivers an interrupt message from the LAPIC of vCPU `source` to every
    /// vCPU whose LAPIC it addresses (upstream kvm_irq_delivery_to_apic()).
    /// Lowest-priority delivery goes to the first match (upstream arbitrates).
    pub(crate) fn kvm_irq_delivery_to_apic(&self, irq: &Irq, source: u32) {
        let l = self.locked.lock();
        for v in l.vcpus.iter() {
            if v.deliver_irq(irq, source) && irq.delivery_mode == lapic::delivery::LOWEST {
                break;
            }
        }
    }
}
