// SPDX-License-Identifier: GPL-2.0-only
//! What the generic core needs from the architecture (upstream: the `kvm_arch_*`
//! hooks include/linux/kvm_host.h declares, and `struct kvm_arch` /
//! `struct kvm_vcpu_arch`), and the two structs they take, as in that header:
//! [`Vm`] (struct kvm) and [`Vcpu`] (struct kvm_vcpu). Their ioctls are in vm.rs
//! and vcpu.rs. The generic files are written against [`KvmArch`] and never name
//! x86 code; kvm_main.rs instantiates them with `arch::kvm_arch::X86`.

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64};
use kernel::ffi::c_void;
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex, SpinLock};

use crate::abi::caps::Host;
use crate::coalesced_mmio::{CoalescedEntry, CoalescedRing};
use crate::eventfd::{Irqfd, IrqfdResampler};
use crate::glue;
use crate::guest_memfd::GmemBinding;
use crate::io_bus::IoRange;
use crate::ioeventfd;
use crate::memslot::Slot;
use crate::pages::Pages;
use crate::stats::{self, Counters};

/// Hands each [first, last) gfn range of an unmap to its argument.
pub(crate) type GfnRanges<'a> = &'a dyn Fn(&mut dyn FnMut(u64, u64));
/// Hands each gfn of a write-protect to its argument.
pub(crate) type Gfns<'a> = &'a dyn Fn(&mut dyn FnMut(u64));

/// The generic irq source ids a line is driven from (upstream
/// KVM_USERSPACE_IRQ_SOURCE_ID, KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID): a line's level
/// is the OR over its sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IrqSource {
    /// KVM_IRQ_LINE and plain irqfds.
    Userspace,
    /// Resampling irqfds: asserted until the guest acks the GSI.
    IrqfdResample,
}

pub(crate) trait KvmArch: Sized + Send + Sync + 'static {
    /// `struct kvm_arch`: the VM's arch state.
    type VmArch: Send + Sync;
    /// `struct kvm_vcpu_arch`: the vCPU's arch state, under the vCPU mutex.
    type VcpuArch: Send + Unpin;
    /// The part of a vCPU other threads reach without its mutex (x86: the
    /// in-kernel LAPIC, which IPIs and device interrupts are delivered to).
    type VcpuShared: Send + Sync;

    /// What KVM_CHECK_EXTENSION answers from (kvm_vm_ioctl_check_extension()).
    fn host() -> Host;
    /// KVM_CHECK_EXTENSION answers that need the arch's constants or, on a VM fd
    /// (`vm`), that VM's setting (x86: KVM_CAP_X86_APIC_BUS_CYCLES_NS); None: the
    /// table in abi/caps.rs answers.
    fn arch_check_extension(_vm: Option<&Vm<Self>>, _cap: u64) -> Option<isize> {
        None
    }
    /// kvm_arch_dev_ioctl(): the /dev/kvm ioctls the generic core does not know.
    fn dev_ioctl(cmd: u32, arg: usize) -> Result<isize>;

    /// kvm_arch_init_vm(); -EINVAL for a VM type the arch cannot create.
    fn vm_init(vm_type: u32) -> Result<impl PinInit<Self::VmArch, Error>>;
    /// kvm_arch_vm_ioctl() and kvm_vm_ioctl_enable_cap().
    fn vm_ioctl(vm: &Arc<Vm<Self>>, cmd: u32, arg: usize) -> Result<isize>;
    /// Unmaps guest memory (kvm_arch_flush_shadow_memslot(), kvm_unmap_gfn_range()):
    /// `ranges` hands each [first, last) gfn range to its argument, called with the
    /// arch MMU lock held. `slots_gen` is bumped under that lock first, so a fault
    /// that pinned a page before it does not map it.
    fn unmap_gfn_ranges(vm: &Vm<Self>, ranges: GfnRanges<'_>);
    /// The last guest frame a memslot may reach (kvm_mmu_max_gfn(), checked by
    /// kvm_arch_prepare_memory_region() for new and moved slots).
    fn kvm_mmu_max_gfn() -> u64;
    /// Makes the next guest write to each gfn `gfns` hands over fault, for dirty
    /// logging (kvm_arch_mmu_enable_log_dirty_pt_masked()); TLBs are flushed
    /// before it returns.
    fn write_protect_gfns(vm: &Vm<Self>, gfns: Gfns<'_>);
    /// The same for every mapped page of [start, end)
    /// (kvm_mmu_slot_remove_write_access()).
    fn write_protect_gfn_range(vm: &Vm<Self>, start: u64, end: u64);

    /// kvm_arch_vcpu_precreate(), with kvm->lock held: may refuse `id`.
    fn vcpu_precreate(vm: &Vm<Self>, locked: &mut VmLocked<Self>, id: u32) -> Result;
    /// kvm_arch_vcpu_create(), with kvm->lock held.
    fn vcpu_create(
        vm: &Vm<Self>,
        id: u32,
    ) -> Result<(Self::VcpuArch, impl PinInit<Self::VcpuShared, Error>)>;
    /// kvm_arch_vcpu_ioctl(), under the vCPU mutex.
    fn vcpu_ioctl(
        vcpu: &Vcpu<Self>,
        vm: &Vm<Self>,
        st: &mut Self::VcpuArch,
        cmd: u32,
        arg: usize,
    ) -> Result<isize>;
    /// kvm_arch_vcpu_ioctl_run(), under the vCPU mutex.
    fn vcpu_ioctl_run(vcpu: &Vcpu<Self>, vm: &Vm<Self>, st: &mut Self::VcpuArch) -> Result<isize>;
    /// kvm_arch_vcpu_load(): the vCPU's task runs on `cpu` (vcpu_load() and the
    /// preempt notifier's sched_in), preemption off; shared state only, since the
    /// task may have been preempted anywhere.
    fn vcpu_load(vcpu: &Vcpu<Self>, cpu: u32);
    /// kvm_arch_vcpu_put(): the vCPU's task leaves the CPU, preemption off.
    fn vcpu_put(vcpu: &Vcpu<Self>);

    /// kvm_arch_irqfd_allowed(): whether an irqfd (a resampling one if
    /// `resample`) can be assigned: the interrupt controller is in the kernel.
    fn kvm_arch_irqfd_allowed(vm: &Vm<Self>, resample: bool) -> bool;
    /// kvm_set_irq() for an irqfd: drives `gsi` through the routing table as seen
    /// from `source`, in process context with no lock held.
    fn kvm_set_irq(vm: &Vm<Self>, source: IrqSource, gsi: u32, level: bool);
    /// kvm_register_irq_ack_notifier() for a resampler: when the guest acks its
    /// GSI, the arch deasserts the resampler's level
    /// (KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID) and calls [`IrqfdResampler::notify`].
    fn kvm_register_irq_ack_notifier(vm: &Vm<Self>, r: Arc<IrqfdResampler>) -> Result;
    /// kvm_unregister_irq_ack_notifier(), then the resampler's level deasserted
    /// (irqfd_resampler_shutdown()).
    fn kvm_unregister_irq_ack_notifier(vm: &Vm<Self>, r: &Arc<IrqfdResampler>);
    /// kvm_arch_destroy_vm(): the last reference to the VM is going, before any
    /// of its parts; in-kernel devices with timers or work stop here.
    fn kvm_arch_destroy_vm(vm: &Vm<Self>);
}

/// The creating process's mm, pinned so that the identity check below cannot be
/// fooled by a recycled address.
pub(crate) struct OwnerMm(*mut c_void);

impl OwnerMm {
    pub(crate) fn current() -> Self {
        // SAFETY: called from an ioctl, in process context with a user mm.
        OwnerMm(unsafe { glue::kvm_glue_mm_grab_current() })
    }

    pub(crate) fn is_current(&self) -> bool {
        // SAFETY: `self.0` is pinned by mmgrab until drop.
        unsafe { glue::kvm_glue_mm_is_current(self.0) != 0 }
    }
}

impl Drop for OwnerMm {
    fn drop(&mut self) {
        // SAFETY: balances the mmgrab() of `current()`.
        unsafe { glue::kvm_glue_mm_drop(self.0) }
    }
}

// SAFETY: the mm pointer is only compared and dropped; mmdrop may run on any thread.
unsafe impl Send for OwnerMm {}
// SAFETY: as above, shared access only compares the pointer.
unsafe impl Sync for OwnerMm {}

/// A VM (upstream struct kvm).
#[pin_data(PinnedDrop)]
pub(crate) struct Vm<A: KvmArch> {
    pub(crate) mm: OwnerMm,
    /// The creator's pid, for the stats file id ("kvm-<pid>").
    pub(crate) pid: i32,
    pub(crate) stats: Counters<{ stats::vm::DESCS.len() }>,
    /// Sorted by base gfn (memslot.rs). Taken before the arch MMU lock.
    #[pin]
    pub(crate) slots: Mutex<KVec<Slot>>,
    /// Dirty bitmaps of the slots with KVM_MEM_LOG_DIRTY_PAGES. A leaf lock:
    /// nothing else is taken while it is held.
    #[pin]
    pub(crate) dirty: Mutex<KVec<DirtyLog>>,
    /// kvm->lock: the vCPU list. Taken after the arch MMU lock (kicks walk the
    /// list under it), and after a vCPU's own mutex (IPIs walk the list from a
    /// running vCPU).
    #[pin]
    pub(crate) locked: Mutex<VmLocked<A>>,
    /// Bumped (under the arch MMU lock) whenever slots change or user memory is
    /// invalidated: a fault that pinned a page for an older generation must not
    /// map it (upstream mmu_invalidate_seq).
    pub(crate) slots_gen: AtomicU64,
    /// The slots as the MMU notifier sees them (it must not take `slots`, which
    /// is held across allocations that may reclaim memory of this mm).
    #[pin]
    pub(crate) notifier_slots: SpinLock<KVec<Slot>>,
    /// MMU-notifier invalidations in progress: faults retry until none is
    /// (upstream mmu_invalidate_in_progress).
    pub(crate) invalidations: AtomicU64,
    /// KVM_CAP_HALT_POLL: this VM's bound on halt polling, in place of the
    /// module parameter once set (kvm->max_halt_poll_ns, override_halt_poll_ns).
    pub(crate) max_halt_poll_ns: AtomicU32,
    pub(crate) override_halt_poll_ns: AtomicBool,
    /// KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2's flags (kvm->manual_dirty_log_protect):
    /// KVM_GET_DIRTY_LOG leaves the log to KVM_CLEAR_DIRTY_LOG, and with
    /// INITIALLY_SET a slot starts logging with every page dirty.
    pub(crate) manual_dirty_log_protect: AtomicU64,
    /// The glue's MMU notifier on the owner mm (null if registration failed).
    pub(crate) notifier: AtomicPtr<c_void>,
    /// The PIO and MMIO buses of in-kernel devices (upstream kvm->buses).
    #[pin]
    pub(crate) buses: KvmIoBuses<A>,
    /// KVM_IOEVENTFD's registrations (upstream kvm->ioeventfds, under slots_lock
    /// there); held across a registration's bus change.
    #[pin]
    pub(crate) ioeventfds: Mutex<KVec<IoeventfdEntry<A>>>,
    /// KVM_IRQFD's irqfds (upstream kvm->irqfds.items): released with the VM fd.
    #[pin]
    pub(crate) irqfds: Mutex<KVec<Irqfd<A>>>,
    /// The resamplers of resampling irqfds, one per GSI (upstream
    /// kvm->irqfds.resampler_list under resampler_lock). Taken before the
    /// arch's irqchip lock.
    #[pin]
    pub(crate) resamplers: Mutex<KVec<Arc<IrqfdResampler>>>,
    /// kvm->coalesced_mmio_ring and kvm->ring_lock (coalesced_mmio.rs).
    pub(crate) coalesced_ring: CoalescedRing,
    #[pin]
    pub(crate) ring_lock: SpinLock<()>,
    /// kvm->coalesced_zones (under slots_lock upstream); held across a zone's
    /// bus change.
    #[pin]
    pub(crate) coalesced_zones: Mutex<KVec<CoalescedEntry<A>>>,
    /// The memslots bound to guest_memfd files (guest_memfd.rs). Taken after
    /// `slots`, before the arch MMU lock.
    #[pin]
    pub(crate) gmem: Mutex<KVec<GmemBinding>>,
    /// `struct kvm_arch`.
    #[pin]
    pub(crate) arch: A::VmArch,
}

/// What upstream guards with kvm->lock: the vCPU list and the VM-wide settings that
/// may only change before the first vCPU exists.
pub(crate) struct VmLocked<A: KvmArch> {
    pub(crate) vcpus: KVec<Arc<Vcpu<A>>>,
}

/// The dirty bitmap of one logged slot (bit n: page base_gfn + n).
pub(crate) struct DirtyLog {
    pub(crate) id: u16,
    pub(crate) base_gfn: u64,
    pub(crate) npages: u64,
    /// kvmalloc'ed, as upstream's vmalloc'ed bitmaps: a 256 MiB slot-sized
    /// bitmap is a valid request, not one for the page allocator.
    pub(crate) bits: KVVec<u64>,
}

/// A vCPU's glue waiter (see kvm_glue_waiter_* in the glue header): where it sleeps
/// when halted, what others poke, and which CPU it is in guest mode on.
pub(crate) struct Waiter(*mut c_void);

// SAFETY: the glue object is made for use from any thread (atomics, a waitqueue).
unsafe impl Send for Waiter {}

// SAFETY: as above.
unsafe impl Sync for Waiter {}

impl Waiter {
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: a plain allocation, owned by the Waiter.
        let p = unsafe { glue::kvm_glue_waiter_new() };
        if p.is_null() {
            return Err(ENOMEM);
        }
        Ok(Waiter(p))
    }

    /// Wakes the vCPU, or makes it exit the guest (kvm_vcpu_kick()).
    pub(crate) fn poke(&self) {
        // SAFETY: a live waiter (freed in drop only).
        unsafe { glue::kvm_glue_waiter_poke(self.0) }
    }

    /// Reads and clears the poke flag.
    pub(crate) fn take(&self) -> bool {
        // SAFETY: a live waiter.
        unsafe { glue::kvm_glue_waiter_take(self.0) != 0 }
    }

    /// Reads and clears "the timer fired", which its poke follows.
    pub(crate) fn take_fired(&self) -> bool {
        // SAFETY: a live waiter.
        unsafe { glue::kvm_glue_waiter_take_fired(self.0) != 0 }
    }

    pub(crate) fn pending(&self) -> bool {
        // SAFETY: a live waiter.
        unsafe { glue::kvm_glue_waiter_pending(self.0) != 0 }
    }

    /// Sleeps until poked, the timer fires or a signal is pending; whether it
    /// slept (kvm_vcpu_block()'s "waited").
    pub(crate) fn block(&self) -> bool {
        // SAFETY: a live waiter, called by the vCPU's own thread.
        unsafe { glue::kvm_glue_waiter_block(self.0) != 0 }
    }

    /// Whether a halted vCPU would not sleep now (kvm_vcpu_check_block() < 0).
    pub(crate) fn check_block(&self) -> bool {
        // SAFETY: a live waiter, called by the vCPU's own thread.
        unsafe { glue::kvm_glue_waiter_check_block(self.0) != 0 }
    }

    /// Arms the timer for absolute CLOCK_MONOTONIC `ns` (0 cancels it).
    pub(crate) fn arm(&self, ns: u64) {
        // SAFETY: a live waiter.
        unsafe { glue::kvm_glue_waiter_arm(self.0, ns) }
    }

    /// Publishes guest mode on CPU `cpu_plus_one - 1` (0: outside); a full barrier.
    pub(crate) fn set_cpu(&self, cpu_plus_one: u32) {
        // SAFETY: a live waiter.
        unsafe { glue::kvm_glue_waiter_set_cpu(self.0, cpu_plus_one) }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // SAFETY: allocated by kvm_glue_waiter_new, freed once.
        unsafe { glue::kvm_glue_waiter_free(self.0) }
    }
}

/// A vCPU's preempt notifier (upstream vcpu->preempt_notifier): registered while a
/// vCPU ioctl runs, so that the arch hears when the task moves between CPUs.
pub(crate) struct PreemptNotifier(pub(crate) *mut c_void);

// SAFETY: the glue object is only registered and unregistered by the task holding
// the vCPU mutex; the scheduler's callbacks read it.
unsafe impl Send for PreemptNotifier {}
// SAFETY: as above.
unsafe impl Sync for PreemptNotifier {}

impl PreemptNotifier {
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: a plain allocation, owned by the PreemptNotifier.
        let p = unsafe { glue::kvm_glue_preempt_new() };
        if p.is_null() {
            return Err(ENOMEM);
        }
        Ok(PreemptNotifier(p))
    }
}

impl Drop for PreemptNotifier {
    fn drop(&mut self) {
        // SAFETY: from kvm_glue_preempt_new, freed once; vcpu_put() unregistered it.
        unsafe { glue::kvm_glue_preempt_free(self.0) }
    }
}

/// A vCPU (upstream struct kvm_vcpu).
#[pin_data]
pub(crate) struct Vcpu<A: KvmArch> {
    pub(crate) id: u32,
    pub(crate) run: Pages,
    pub(crate) pio: Pages,
    /// Where the vCPU sleeps when halted; also says which CPU it is in guest mode
    /// on (for kicks).
    pub(crate) waiter: Waiter,
    pub(crate) preempt_notifier: PreemptNotifier,
    pub(crate) stats: Counters<{ stats::vcpu::DESCS.len() }>,
    /// vcpu->halt_poll_ns: how long the vCPU polls when it next halts (only its
    /// own thread changes it).
    pub(crate) halt_poll_ns: AtomicU32,
    /// What other threads reach without the vCPU mutex.
    #[pin]
    pub(crate) arch: A::VcpuShared,
    /// The vCPU mutex (upstream vcpu->mutex) and the arch state it guards.
    #[pin]
    pub(crate) state: Mutex<A::VcpuArch>,
}

/// A device on a bus (upstream struct kvm_io_device_ops). Each returns
/// Err(EOPNOTSUPP) for an access it does not take, so the next device on the
/// same range, or userspace, gets it.
pub(crate) trait KvmIoDevice<A: KvmArch>: Send + Sync {
    /// Fills `data` (the access's length) from `addr`.
    fn read(&self, vm: &Vm<A>, addr: u64, data: &mut [u8]) -> Result;
    /// Takes `data` written at `addr`.
    fn write(&self, vm: &Vm<A>, addr: u64, data: &[u8]) -> Result;
}

/// One KVM_IOEVENTFD registration (upstream struct _ioeventfd's list entry): the
/// device as the bus holds it, and what a deassign compares.
pub(crate) struct IoeventfdEntry<A: KvmArch> {
    pub(crate) spec: ioeventfd::Spec,
    /// The eventfd context's address (the device holds the reference).
    pub(crate) eventfd_id: usize,
    pub(crate) dev: Arc<dyn KvmIoDevice<A>>,
}

/// One table: the sorted ranges and their devices, index for index.
pub(crate) struct Table<A: KvmArch> {
    pub(crate) ranges: KVec<IoRange>,
    pub(crate) devs: KVec<Arc<dyn KvmIoDevice<A>>>,
}

/// One bus (upstream struct kvm_io_bus).
#[pin_data]
pub(crate) struct KvmIoBus<A: KvmArch> {
    /// The current table; held only to take a reference or to swap, so a
    /// spinlock: every in-kernel PIO and MMIO access takes it (upstream reads
    /// the pointer under SRCU, with no lock at all).
    #[pin]
    pub(crate) table: SpinLock<Arc<Table<A>>>,
    /// Serializes writers, which allocate the new table (they may sleep).
    #[pin]
    pub(crate) update: Mutex<()>,
}

/// The buses of a VM (upstream kvm->buses).
#[pin_data]
pub(crate) struct KvmIoBuses<A: KvmArch> {
    #[pin]
    pub(crate) mmio: KvmIoBus<A>,
    #[pin]
    pub(crate) pio: KvmIoBus<A>,
    /// s390's; on x86 only a place KVM_IOEVENTFD can register (as upstream).
    #[pin]
    pub(crate) virtio_ccw_notify: KvmIoBus<A>,
}
