// SPDX-License-Identifier: GPL-2.0-only
//! VMs: created by KVM_CREATE_VM, each behind an anon-inode fd ("kvm-vm") that holds
//! one reference; vCPU fds hold one each. Memory slots, the MMU and the vCPUs live
//! here and go with the last reference (upstream kvm_destroy_vm()).

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use kernel::ffi::{c_int, c_long, c_uint, c_ulong, c_void};
use kernel::prelude::*;
use kernel::sync::{Arc, ArcBorrow, Mutex, SpinLock};
use kernel::{new_mutex, new_spinlock};

use crate::abi::{caps, ioctl, uapi};
use crate::arch::irqchip::{self, Irqchip};
use crate::arch::mmu::tdp::Mmu;
use crate::arch::x86::tsc_khz_arg;
use crate::hw::lapic::{self, Irq};
use crate::memslot::{self, Slot};
use crate::stats::{self, Counters};
use crate::vcpu::{NewVcpuFile, Vcpu};
use crate::vendor::VendorRef;
use crate::{dev, glue, user};

/// The creating process's mm, pinned so that the identity check below cannot be
/// fooled by a recycled address.
struct OwnerMm(*mut c_void);

impl OwnerMm {
    fn current() -> Self {
        // SAFETY: called from an ioctl, in process context with a user mm.
        OwnerMm(unsafe { glue::kvm_glue_mm_grab_current() })
    }

    fn is_current(&self) -> bool {
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

use caps::{MAX_VCPUS, MAX_VCPU_IDS};

/// KVM_MIN_ALLOC_MMU_PAGES.
const KVM_MIN_ALLOC_MMU_PAGES: usize = 64;

#[pin_data(PinnedDrop)]
pub(crate) struct Vm {
    mm: OwnerMm,
    /// The vendor module, pinned for the VM's lifetime (its vCPUs pin it too).
    pub(crate) vendor: VendorRef,
    /// The creator's pid, for the stats file id ("kvm-<pid>").
    pub(crate) pid: i32,
    pub(crate) stats: Counters<{ stats::vm::DESCS.len() }>,
    #[allow(dead_code)] // Read by the vendor hooks of protected VM types.
    vm_type: u32,
    /// Sorted by base gfn (memslot.rs). Taken before `mmu`.
    #[pin]
    slots: Mutex<KVec<Slot>>,
    #[pin]
    pub(crate) mmu: Mutex<Mmu>,
    /// Dirty bitmaps of the slots with KVM_MEM_LOG_DIRTY_PAGES. A leaf lock:
    /// nothing else is taken while it is held.
    #[pin]
    dirty: Mutex<KVec<DirtyLog>>,
    /// Taken after `mmu` (kicks walk the list under the MMU lock), and after a
    /// vCPU's own state (IPIs walk the list from a running vCPU).
    #[pin]
    pub(crate) locked: Mutex<VmLocked>,
    /// The PIC, IOAPIC and routing table (irqchip.rs), taken before `locked`.
    #[pin]
    pub(crate) irqchip: Mutex<Option<KBox<Irqchip>>>,
    /// Set once by KVM_CREATE_IRQCHIP, before any vCPU exists: vCPUs created
    /// afterwards get an in-kernel LAPIC.
    pub(crate) has_irqchip: AtomicBool,
    /// KVM_CAP_DISABLE_QUIRKS2: the quirks userspace turned off.
    pub(crate) disabled_quirks: AtomicU64,
    /// KVM_CAP_MSR_PLATFORM_INFO: the guest may read MSR_PLATFORM_INFO.
    pub(crate) platform_info_readable: AtomicBool,
    /// Bumped (under `mmu`) whenever slots change: a fault that pinned a page for
    /// an older generation must not map it.
    pub(crate) slots_gen: AtomicU64,
    /// Bumped whenever NPT entries are zapped: vCPUs flush their TLB on entry when
    /// it differs from what they last saw.
    pub(crate) tlb_gen: AtomicU64,
    /// Per host CPU: whether one of our vCPUs is in guest mode there (set before
    /// `tlb_gen` is read on entry), so that a flush interrupts only those CPUs.
    in_guest: KVec<AtomicBool>,
    /// The slots as the MMU notifier sees them (it must not take `slots`, which
    /// is held across allocations that may reclaim memory of this mm).
    #[pin]
    notifier_slots: SpinLock<KVec<Slot>>,
    /// MMU-notifier invalidations in progress: faults retry until none is.
    invalidations: AtomicU64,
    /// The glue's MMU notifier on the owner mm (null if registration failed).
    notifier: AtomicPtr<c_void>,
}

/// What upstream guards with kvm->lock: the vCPU list and the VM-wide settings that
/// may only change before the first vCPU exists.
pub(crate) struct VmLocked {
    pub(crate) vcpus: KVec<Arc<Vcpu>>,
    /// KVM_CAP_MAX_VCPU_ID (0: not set yet; fixed at the first KVM_CREATE_VCPU).
    max_vcpu_ids: u32,
    /// KVM_SET_TSC_KHZ on the VM: what new vCPUs start with.
    pub(crate) default_tsc_khz: u32,
}

/// The dirty bitmap of one logged slot (bit n: page base_gfn + n).
struct DirtyLog {
    id: u16,
    base_gfn: u64,
    npages: u64,
    bits: KVec<u64>,
}

/// One cleared flag per possible CPU id.
fn in_guest_flags() -> Result<KVec<AtomicBool>> {
    // SAFETY: reads a kernel variable.
    let n = unsafe { glue::kvm_glue_nr_cpu_ids() } as usize;
    let mut v = KVec::with_capacity(n, GFP_KERNEL)?;
    for _ in 0..n {
        v.push(AtomicBool::new(false), GFP_KERNEL)?;
    }
    Ok(v)
}

/// KVM_CREATE_VM: returns the new fd.
pub(crate) fn create(vm_type: usize) -> Result<isize> {
    if !caps::vm_type_supported(&dev::host(), vm_type as u64) {
        return Err(EINVAL);
    }
    let vendor = VendorRef::get()?;
    let vm = Arc::pin_init(
        try_pin_init!(Vm {
            mm: OwnerMm::current(),
            vendor,
            // SAFETY: reads the current task's pid.
            pid: unsafe { glue::kvm_glue_current_pid() },
            stats: Counters::new(),
            vm_type: vm_type as u32,
            slots <- new_mutex!(KVec::new()),
            mmu <- new_mutex!(Mmu::new()?),
            dirty <- new_mutex!(KVec::new()),
            locked <- new_mutex!(VmLocked {
                vcpus: KVec::new(),
                max_vcpu_ids: 0,
                // SAFETY: reads a kernel variable.
                default_tsc_khz: unsafe { glue::kvm_glue_tsc_khz() },
            }),
            irqchip <- new_mutex!(None),
            has_irqchip: AtomicBool::new(false),
            platform_info_readable: AtomicBool::new(true),
            disabled_quirks: AtomicU64::new(0),
            slots_gen: AtomicU64::new(0),
            tlb_gen: AtomicU64::new(0),
            in_guest: in_guest_flags()?,
            notifier_slots <- new_spinlock!(KVec::new()),
            invalidations: AtomicU64::new(0),
            notifier: AtomicPtr::new(core::ptr::null_mut()),
        }),
        GFP_KERNEL,
    )?;
    // The notifier holds no reference: it is unregistered when the VM drops.
    // SAFETY: `vm` outlives the notifier (see Drop); called in process context with the creator's mm.
    let mn = unsafe { glue::kvm_glue_mn_register(Arc::as_ptr(&vm).cast_mut().cast()) };
    if mn.is_null() {
        return Err(ENOMEM);
    }
    vm.notifier.store(mn, Ordering::Release);
    let raw = Arc::into_raw(vm);
    // SAFETY: on success the file owns `raw`'s reference (see kvm_rs_vm_release).
    let fd = unsafe { glue::kvm_glue_vm_fd(raw.cast_mut().cast()) };
    if fd < 0 {
        // SAFETY: the file was not created, so the reference is still ours.
        drop(unsafe { Arc::from_raw(raw) });
        return Err(Error::from_errno(fd));
    }
    Ok(fd as isize)
}

impl Vm {
    /// A VM belongs to the process that created it (fork'ed children get -EIO).
    pub(crate) fn check_owner(&self) -> Result {
        if self.mm.is_current() {
            Ok(())
        } else {
            Err(EIO)
        }
    }

    fn ioctl(self: &Arc<Self>, cmd: u32, arg: usize) -> Result<isize> {
        self.check_owner()?;
        match cmd {
            ioctl::KVM_CHECK_EXTENSION => Ok(dev::check_extension(arg)),
            ioctl::KVM_SET_USER_MEMORY_REGION | ioctl::KVM_SET_USER_MEMORY_REGION2 => {
                let v1 = cmd == ioctl::KVM_SET_USER_MEMORY_REGION;
                let len = if v1 {
                    size_of::<uapi::kvm_userspace_memory_region>()
                } else {
                    size_of::<uapi::kvm_userspace_memory_region2>()
                };
                let r: uapi::kvm_userspace_memory_region2 = user::read_prefix(arg, len)?;
                if v1 && r.flags & !memslot::V1_FLAGS != 0 {
                    return Err(EINVAL);
                }
                self.set_memory_region(memslot::Region {
                    slot: r.slot,
                    flags: r.flags,
                    guest_phys_addr: r.guest_phys_addr,
                    memory_size: r.memory_size,
                    userspace_addr: r.userspace_addr,
                })
            }
            ioctl::KVM_CREATE_VCPU => self.create_vcpu(arg),
            ioctl::KVM_GET_STATS_FD => stats::vm_fd(self.clone()),
            ioctl::KVM_GET_DIRTY_LOG => self.get_dirty_log(arg, false),
            ioctl::KVM_ENABLE_CAP => {
                let c: uapi::kvm_enable_cap = user::read(arg)?;
                self.enable_cap(&c)
            }
            ioctl::KVM_GET_TSC_KHZ => Ok(self.locked.lock().default_tsc_khz as isize),
            ioctl::KVM_SET_TSC_KHZ => {
                // Without TSC scaling any rate is accepted here, as upstream; whether
                // a vCPU can run at it is KVM_SET_TSC_KHZ on the vCPU's business.
                let khz = tsc_khz_arg(arg);
                let mut l = self.locked.lock();
                if !l.vcpus.is_empty() {
                    return Err(EINVAL);
                }
                l.default_tsc_khz = khz;
                Ok(0)
            }
            // A cap on shadow-MMU pages (kvm_vm_ioctl_set_nr_mmu_pages()). The NPT
            // MMU has no shadow pages, as upstream's TDP MMU: only the bound is checked.
            ioctl::KVM_SET_NR_MMU_PAGES => {
                if arg < KVM_MIN_ALLOC_MMU_PAGES {
                    return Err(EINVAL);
                }
                Ok(0)
            }
            // SVM has no real-mode TSS or identity map to place (svm_set_tss_addr()).
            ioctl::KVM_SET_TSS_ADDR => Ok(0),
            ioctl::KVM_SET_IDENTITY_MAP_ADDR => {
                let _addr: u64 = user::read(arg)?;
                if !self.locked.lock().vcpus.is_empty() {
                    return Err(EINVAL);
                }
                Ok(0)
            }
            ioctl::KVM_CREATE_IRQCHIP => {
                let mut chip = self.irqchip.lock();
                if chip.is_some() {
                    return Err(EEXIST);
                }
                // Held until the flag is set: a vCPU created meanwhile would lack
                // its LAPIC.
                let l = self.locked.lock();
                if !l.vcpus.is_empty() {
                    return Err(EINVAL);
                }
                *chip = Some(KBox::new(Irqchip::new()?, GFP_KERNEL)?);
                self.has_irqchip.store(true, Ordering::SeqCst);
                drop(l);
                Ok(0)
            }
            ioctl::KVM_GET_IRQCHIP => {
                let mut c: uapi::kvm_irqchip = user::read(arg)?;
                self.irqchip.lock().as_ref().ok_or(ENXIO)?.get(&mut c)?;
                user::write(arg, &c)?;
                Ok(0)
            }
            ioctl::KVM_SET_IRQCHIP => {
                let c: uapi::kvm_irqchip = user::read(arg)?;
                let mut chip = self.irqchip.lock();
                let chip = (*chip).as_mut().ok_or(ENXIO)?;
                chip.set(&c, &self.locked.lock().vcpus)?;
                Ok(0)
            }
            ioctl::KVM_IRQ_LINE | ioctl::KVM_IRQ_LINE_STATUS => {
                let mut ev: uapi::kvm_irq_level = user::read(arg)?;
                let mut chip = self.irqchip.lock();
                let chip = (*chip).as_mut().ok_or(ENXIO)?;
                // SAFETY: the union's variants are plain integers.
                let gsi = unsafe { ev.__bindgen_anon_1.irq };
                let status = chip.set_irq(gsi, ev.level != 0, &self.locked.lock().vcpus);
                if cmd == ioctl::KVM_IRQ_LINE_STATUS {
                    ev.__bindgen_anon_1.status = status;
                    user::write(arg, &ev)?;
                }
                Ok(0)
            }
            ioctl::KVM_SET_GSI_ROUTING => {
                let mut chip = self.irqchip.lock();
                // kvm_arch_can_set_irq_routing(): only with an in-kernel irqchip.
                let chip = (*chip).as_mut().ok_or(EINVAL)?;
                let routes = irqchip::read_routes(arg, false)?;
                chip.set_routes(routes);
                Ok(0)
            }
            ioctl::KVM_SIGNAL_MSI => {
                let msi: uapi::kvm_msi = user::read(arg)?;
                let chip = self.irqchip.lock();
                if chip.is_none() {
                    return Err(EINVAL);
                }
                let r = irqchip::signal_msi(&msi, &self.locked.lock().vcpus)?;
                // Upstream returns kvm_set_msi()'s -1 (no destination) as is, which
                // userspace sees as -EPERM.
                if r < 0 {
                    return Err(EPERM);
                }
                Ok(r as isize)
            }
            // x86's kvm_arch_vm_ioctl() answers unknown commands with -ENOTTY.
            _ => Err(ENOTTY),
        }
    }

    fn set_memory_region(&self, r: memslot::Region) -> Result<isize> {
        let lim = memslot::Limits {
            nr_as: 1,
            // SAFETY: reads a constant.
            task_size: unsafe { glue::kvm_glue_task_size_max() },
        };
        let mut slots = self.slots.lock();
        let change = memslot::classify(&slots, &r, &lim).map_err(|e| match e {
            memslot::Error::Inval => EINVAL,
            memslot::Error::Exist => EEXIST,
        })?;
        // Reserve first, so that nothing below can fail after the MMU changed.
        slots.reserve(1, GFP_KERNEL)?;
        let old = match change {
            memslot::Change::Delete(i)
            | memslot::Change::Move(i, _)
            | memslot::Change::FlagsOnly(i, _) => slots.get(i).copied(),
            _ => None,
        };
        {
            let mut mmu = self.mmu.lock();
            self.slots_gen.fetch_add(1, Ordering::SeqCst);
            if let Some(o) = old {
                if mmu.zap(o.base_gfn, o.end_gfn()) {
                    self.flush_all();
                }
                mmu.release_zapped(o.base_gfn, o.end_gfn());
                self.stats.set(stats::vm::PAGES_4K, mmu.mapped);
            }
        }
        self.update_dirty_logs(old.as_ref(), &change)?;
        match change {
            memslot::Change::Create(s) => {
                let i = memslot::insert_index(&slots, &s);
                slots.insert_within_capacity(i, s).map_err(|_| ENOMEM)?;
            }
            memslot::Change::Delete(i) => {
                slots.remove(i).map_err(|_| EINVAL)?;
            }
            memslot::Change::Move(i, s) => {
                slots.remove(i).map_err(|_| EINVAL)?;
                let i = memslot::insert_index(&slots, &s);
                slots.insert_within_capacity(i, s).map_err(|_| ENOMEM)?;
            }
            memslot::Change::FlagsOnly(i, s) => {
                if let Some(o) = slots.get_mut(i) {
                    *o = s;
                }
            }
            memslot::Change::None => {}
        }
        // The notifier's copy; built outside its spinlock (it allocates).
        let mut copy = KVec::with_capacity(slots.len(), GFP_KERNEL)?;
        for s in slots.iter() {
            copy.push(*s, GFP_KERNEL)?;
        }
        let old_copy = core::mem::replace(&mut *self.notifier_slots.lock(), copy);
        drop(old_copy);
        Ok(0)
    }

    pub(crate) fn invalidating(&self) -> bool {
        self.invalidations.load(Ordering::SeqCst) != 0
    }

    /// The owner mm's pages in [start, end) are going away (mmu_notifier
    /// invalidate_range_start): unmap them from every vCPU and unpin them, and
    /// keep faults from mapping them again until the invalidation ends.
    fn invalidate_start(&self, start: u64, end: u64) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        let mut mmu = self.mmu.lock();
        self.slots_gen.fetch_add(1, Ordering::SeqCst);
        let mut any = false;
        for s in self.notifier_slots.lock().iter() {
            let (ua, len) = (s.userspace_addr, s.npages << 12);
            let (lo, hi) = (start.max(ua), end.min(ua.saturating_add(len)));
            if lo < hi {
                let first = s.base_gfn + ((lo - ua) >> 12);
                let last = s.base_gfn + ((hi - ua + 4095) >> 12);
                any |= mmu.zap(first, last);
            }
        }
        if any {
            self.flush_all();
            mmu.release_zapped(0, u64::MAX);
            self.stats.set(stats::vm::PAGES_4K, mmu.mapped);
        }
    }

    /// Everything is going away (the mm exits before the VM fd is closed).
    fn release_all(&self) {
        let mut mmu = self.mmu.lock();
        self.slots_gen.fetch_add(1, Ordering::SeqCst);
        if mmu.zap(0, u64::MAX) {
            self.flush_all();
        }
        mmu.release_zapped(0, u64::MAX);
        self.stats.set(stats::vm::PAGES_4K, mmu.mapped);
    }

    /// Keeps the dirty bitmaps in step with a slot change (before it is applied,
    /// with the slots locked): a slot that starts logging gets a clean bitmap and
    /// its pages write-protected, one that stops or goes away loses it.
    fn update_dirty_logs(&self, old: Option<&Slot>, change: &memslot::Change) -> Result {
        let new = match change {
            memslot::Change::Create(s)
            | memslot::Change::Move(_, s)
            | memslot::Change::FlagsOnly(_, s) => Some(*s),
            _ => None,
        };
        let mut logs = self.dirty.lock();
        if let Some(o) = old {
            if new.is_none_or(|n| !n.dirty_logging() || n.base_gfn != o.base_gfn) {
                logs.retain(|l| l.id != o.id);
            }
        }
        let Some(n) = new.filter(|n| n.dirty_logging()) else {
            return Ok(());
        };
        if logs.iter().any(|l| l.id == n.id) {
            return Ok(());
        }
        let words = n.npages.div_ceil(64) as usize;
        let log = DirtyLog {
            id: n.id,
            base_gfn: n.base_gfn,
            npages: n.npages,
            bits: KVec::from_elem(0u64, words, GFP_KERNEL)?,
        };
        logs.push(log, GFP_KERNEL)?;
        drop(logs);
        // Pages already mapped writable must fault on their next write.
        let mut mmu = self.mmu.lock();
        let mut any = false;
        for gfn in n.base_gfn..n.end_gfn() {
            any |= mmu.write_protect(gfn);
        }
        if any {
            self.flush_all();
        }
        Ok(())
    }

    /// Marks `gfn` dirty if its slot logs (kvm_vcpu_mark_page_dirty()).
    pub(crate) fn mark_dirty(&self, gfn: u64) {
        let mut logs = self.dirty.lock();
        if let Some(l) = logs
            .iter_mut()
            .find(|l| gfn >= l.base_gfn && gfn - l.base_gfn < l.npages)
        {
            let n = gfn - l.base_gfn;
            if let Some(w) = l.bits.get_mut((n / 64) as usize) {
                *w |= 1 << (n % 64);
            }
        }
    }

    /// KVM_GET_DIRTY_LOG (kvm_get_dirty_log_protect() without manual protect):
    /// copies the slot's bitmap out, clears it and write-protects the pages that
    /// were dirty, with TLBs flushed before returning.
    fn get_dirty_log(&self, arg: usize, compat: bool) -> Result<isize> {
        let d: uapi::kvm_dirty_log = user::read(arg)?;
        // x86 has two address spaces; the SMM one never has slots in kvm-rs.
        let (as_id, id) = (d.slot >> 16, d.slot & 0xffff);
        if as_id >= 2 || id >= caps::USER_MEM_SLOTS {
            return Err(EINVAL);
        }
        let mut logs = self.dirty.lock();
        let l = logs
            .iter_mut()
            .find(|l| as_id == 0 && u32::from(l.id) == id)
            .ok_or(ENOENT)?;
        let snap = KVec::from_elem(0u64, l.bits.len(), GFP_KERNEL)?;
        let mut snap = snap;
        for (s, w) in snap.iter_mut().zip(l.bits.iter_mut()) {
            *s = core::mem::take(w);
        }
        let base = l.base_gfn;
        drop(logs);
        let mut mmu = self.mmu.lock();
        let mut any = false;
        for (i, w) in snap.iter().enumerate() {
            let mut bits = *w;
            while bits != 0 {
                let b = u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                any |= mmu.write_protect(base + i as u64 * 64 + b);
            }
        }
        if any {
            self.flush_all();
        }
        drop(mmu);
        // SAFETY: reads the union's pointer member, a plain integer for any bytes.
        let ptr = unsafe { d.__bindgen_anon_1.padding2 };
        // A 32-bit caller's bitmap pointer is the union's low half (compat_ptr()).
        let ptr = if compat {
            ptr & u64::from(u32::MAX)
        } else {
            ptr
        } as usize;
        user::write_array(ptr, &snap)?;
        Ok(0)
    }

    /// The slot containing `gfn` and the slot generation it was read at.
    pub(crate) fn find_slot(&self, gfn: u64) -> (Option<Slot>, u64) {
        let slots = self.slots.lock();
        (
            memslot::find(&slots, gfn).copied(),
            self.slots_gen.load(Ordering::SeqCst),
        )
    }

    /// KVM_ENABLE_CAP on the VM (upstream kvm_vm_ioctl_enable_cap()).
    fn enable_cap(&self, c: &uapi::kvm_enable_cap) -> Result<isize> {
        if c.flags != 0 {
            return Err(EINVAL);
        }
        match c.cap {
            uapi::KVM_CAP_MAX_VCPU_ID => {
                let want = c.args[0];
                if want > u64::from(MAX_VCPU_IDS) {
                    return Err(EINVAL);
                }
                let mut l = self.locked.lock();
                // Settable once, before any vCPU (which fixes it at the maximum).
                if u64::from(l.max_vcpu_ids) == want {
                    Ok(0)
                } else if l.max_vcpu_ids == 0 {
                    l.max_vcpu_ids = want as u32;
                    Ok(0)
                } else {
                    Err(EINVAL)
                }
            }
            uapi::KVM_CAP_DISABLE_QUIRKS2 => {
                if c.args[0] & !u64::from(caps::SUPPORTED_QUIRKS) != 0 {
                    return Err(EINVAL);
                }
                self.disabled_quirks.fetch_or(c.args[0], Ordering::Relaxed);
                Ok(0)
            }
            uapi::KVM_CAP_MSR_PLATFORM_INFO => {
                self.platform_info_readable
                    .store(c.args[0] != 0, Ordering::Relaxed);
                Ok(0)
            }
            _ => Err(EINVAL),
        }
    }

    /// Delivers an interrupt message from the LAPIC of vCPU `source` to every
    /// vCPU whose LAPIC it addresses (upstream kvm_irq_delivery_to_apic()).
    /// Lowest-priority delivery goes to the first match (upstream arbitrates).
    pub(crate) fn deliver_irq(&self, irq: &Irq, source: u32) {
        let l = self.locked.lock();
        for v in l.vcpus.iter() {
            if v.deliver_irq(irq, source) && irq.delivery_mode == lapic::delivery::LOWEST {
                break;
            }
        }
    }

    /// Makes every vCPU flush its TLB before it next runs guest code, and waits
    /// until none is still running on old translations. Called with `mmu` held.
    /// As upstream's kvm_flush_remote_tlbs(), only CPUs where one of our vCPUs is
    /// in guest mode get a (waited-for) IPI; the flags, not the vCPU list, say
    /// which, because that list's lock is held across allocations (the MMU
    /// notifier calls this).
    pub(crate) fn flush_all(&self) {
        self.stats.inc(stats::vm::REMOTE_TLB_FLUSH_REQUESTS);
        self.stats.inc(stats::vm::REMOTE_TLB_FLUSH);
        // Pairs with set_in_guest(): a vCPU either sees the new generation on
        // entry or is seen in guest mode here.
        self.tlb_gen.fetch_add(1, Ordering::SeqCst);
        for (cpu, f) in self.in_guest.iter().enumerate() {
            if f.load(Ordering::SeqCst) {
                // SAFETY: process context, interrupts on; returns once the CPU took the IPI, so it left guest mode.
                unsafe { glue::kvm_glue_kick_cpu_wait(cpu as u32) };
            }
        }
    }

    /// Marks this CPU as running one of our vCPUs in guest mode (or not).
    /// Called with interrupts off, so `cpu` is the current CPU throughout.
    pub(crate) fn set_in_guest(&self, cpu: u32, on: bool) {
        if let Some(f) = self.in_guest.get(cpu as usize) {
            f.store(on, Ordering::SeqCst);
        }
    }

    fn create_vcpu(self: &Arc<Self>, id: usize) -> Result<isize> {
        let mut l = self.locked.lock();
        // kvm_arch_vcpu_precreate(): the first vCPU fixes the id limit.
        if l.max_vcpu_ids == 0 {
            l.max_vcpu_ids = MAX_VCPU_IDS;
        }
        if id >= l.max_vcpu_ids as usize {
            return Err(EINVAL);
        }
        let id = id as u32;
        if l.vcpus.len() >= MAX_VCPUS as usize {
            return Err(EINVAL);
        }
        if l.vcpus.iter().any(|v| v.id == id) {
            return Err(EEXIST);
        }
        l.vcpus.reserve(1, GFP_KERNEL)?;
        let v = Vcpu::new(
            self,
            id,
            self.has_irqchip.load(Ordering::SeqCst),
            l.default_tsc_khz,
        )?;
        // As upstream kvm_vm_ioctl_create_vcpu(): the fd is installed only after
        // the last step that can fail, so userspace never sees a vCPU fd that
        // was then torn down.
        let file = NewVcpuFile::new(self.clone(), v.clone())?;
        l.vcpus.push_within_capacity(v).map_err(|_| ENOMEM)?;
        Ok(file.install())
    }
}

#[pinned_drop]
impl PinnedDrop for Vm {
    fn drop(self: Pin<&mut Self>) {
        let mn = self.notifier.load(Ordering::Acquire);
        if !mn.is_null() {
            // SAFETY: registered in create(); waits for callbacks in flight, none start after.
            unsafe { glue::kvm_glue_mn_unregister(mn) };
        }
    }
}

fn notifier_vm<'a>(vm: *mut c_void) -> &'a Vm {
    // SAFETY: the notifier is unregistered before the VM is freed (PinnedDrop).
    unsafe { &*vm.cast_const().cast::<Vm>() }
}

/// mmu_notifier invalidate_range_start for the VM's mm: 0, or -EAGAIN when the
/// caller cannot sleep (the MMU lock is a mutex).
#[no_mangle]
pub(crate) extern "C" fn kvm_rs_mn_invalidate_start(
    vm: *mut c_void,
    start: c_ulong,
    end: c_ulong,
    blockable: c_int,
) -> c_int {
    if blockable == 0 {
        return EAGAIN.to_errno();
    }
    notifier_vm(vm).invalidate_start(start as u64, end as u64);
    0
}

#[no_mangle]
pub(crate) extern "C" fn kvm_rs_mn_invalidate_end(vm: *mut c_void) {
    notifier_vm(vm).invalidations.fetch_sub(1, Ordering::SeqCst);
}

#[no_mangle]
pub(crate) extern "C" fn kvm_rs_mn_release(vm: *mut c_void) {
    notifier_vm(vm).release_all();
}

/// `unlocked_ioctl` of a VM fd.
#[no_mangle]
pub(crate) extern "C" fn kvm_rs_vm_ioctl(vm: *mut c_void, cmd: c_uint, arg: c_ulong) -> c_long {
    // SAFETY: private_data set by create(); the file holds a reference while fops run.
    let vm: Arc<Vm> = unsafe { ArcBorrow::<Vm>::from_raw(vm.cast_const().cast()) }.into();
    user::ioctl_ret(vm.ioctl(cmd, arg))
}

/// `compat_ioctl` of a VM fd (kvm_vm_compat_ioctl()): KVM_GET_DIRTY_LOG carries a
/// 32-bit pointer; every other VM ioctl kvm-rs has is laid out alike for 32-bit
/// callers. (Upstream also converts KVM_CLEAR_DIRTY_LOG and x86's MSR filter,
/// which kvm-rs does not implement for any caller.)
#[no_mangle]
pub(crate) extern "C" fn kvm_rs_vm_compat_ioctl(
    vm: *mut c_void,
    cmd: c_uint,
    arg: c_ulong,
) -> c_long {
    if cmd != ioctl::KVM_GET_DIRTY_LOG {
        return kvm_rs_vm_ioctl(vm, cmd, arg);
    }
    // SAFETY: as kvm_rs_vm_ioctl.
    let vm: Arc<Vm> = unsafe { ArcBorrow::<Vm>::from_raw(vm.cast_const().cast()) }.into();
    user::ioctl_ret(vm.check_owner().and_then(|()| vm.get_dirty_log(arg, true)))
}

/// `release` of a VM fd: drops the file's reference.
#[no_mangle]
pub(crate) extern "C" fn kvm_rs_vm_release(vm: *mut c_void) {
    // SAFETY: the reference handed to the file in create(); release runs once.
    drop(unsafe { Arc::from_raw(vm.cast_const().cast::<Vm>()) });
}
