// SPDX-License-Identifier: GPL-2.0-only
//! VMs, the generic part (upstream virt/kvm/kvm_main.c): KVM_CREATE_VM, the VM fd
//! ("kvm-vm", one reference; vCPU fds hold one each), memory slots, dirty logs,
//! the MMU notifier and KVM_CREATE_VCPU; the arch state is `arch`
//! ([`KvmArch::VmArch`]). Everything goes with the last reference (upstream
//! kvm_destroy_vm()). The struct is in kvm_host.rs.

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use kernel::ffi::{c_int, c_long, c_void};
use kernel::prelude::*;
use kernel::str::CString;
use kernel::sync::{Arc, ArcBorrow};
use kernel::{new_mutex, new_spinlock};

use crate::abi::{caps, ioctl, uapi};
use crate::coalesced_mmio::CoalescedRing;
use crate::kvm_host::{DirtyLog, KvmArch, KvmIoBuses, OwnerMm, Vcpu, Vm, VmLocked};
use crate::memslot::{self, Slot};
use crate::stats::{self, Counters, StatsSource};
use crate::vcpu::NewVcpuFile;
use crate::{glue, statsfmt, user};

use caps::MAX_VCPUS;

/// KVM_CREATE_VM (kvm_dev_ioctl_create_vm()): returns the new fd.
pub(crate) fn create<A: KvmArch>(vm_type: usize) -> Result<isize> {
    let vm_type = u32::try_from(vm_type).map_err(|_| EINVAL)?;
    let arch = A::vm_init(vm_type)?;
    let buses = KvmIoBuses::new()?;
    let coalesced_ring = CoalescedRing::new()?;
    let vm = Arc::pin_init(
        try_pin_init!(Vm::<A> {
            mm: OwnerMm::current(),
            // SAFETY: reads the current task's pid.
            pid: unsafe { glue::kvm_glue_current_pid() },
            stats: Counters::new(),
            slots <- new_mutex!(KVec::new(), "kvm->slots_lock"),
            dirty <- new_mutex!(KVec::new(), "kvm->dirty_log"),
            locked <- new_mutex!(VmLocked { vcpus: KVec::new() }, "kvm->lock"),
            slots_gen: AtomicU64::new(0),
            notifier_slots <- new_spinlock!(KVec::new(), "kvm->mn_slots"),
            invalidations: AtomicU64::new(0),
            max_halt_poll_ns: AtomicU32::new(0),
            override_halt_poll_ns: AtomicBool::new(false),
            manual_dirty_log_protect: AtomicU64::new(0),
            notifier: AtomicPtr::new(core::ptr::null_mut()),
            buses <- buses,
            ioeventfds <- new_mutex!(KVec::new(), "kvm->ioeventfds"),
            irqfds <- new_mutex!(KVec::new(), "kvm->irqfds.lock"),
            resamplers <- new_mutex!(KVec::new(), "kvm->irqfds.resampler_lock"),
            coalesced_ring,
            ring_lock <- new_spinlock!((), "kvm->ring_lock"),
            coalesced_zones <- new_mutex!(KVec::new(), "kvm->coalesced_zones"),
            gmem <- new_mutex!(KVec::new(), "kvm->gmem_bindings"),
            arch <- arch,
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
    // SAFETY: on success the file owns `raw`'s reference (see kvm_vm_release).
    let fd = unsafe { glue::kvm_glue_vm_fd(raw.cast_mut().cast()) };
    if fd < 0 {
        // SAFETY: the file was not created, so the reference is still ours.
        drop(unsafe { Arc::from_raw(raw) });
        return Err(Error::from_errno(fd));
    }
    Ok(fd as isize)
}

/// KVM_CHECK_EXTENSION on /dev/kvm (`vm` None) and on a VM fd.
pub(crate) fn check_extension<A: KvmArch>(vm: Option<&Vm<A>>, arg: usize) -> isize {
    let host = A::host();
    if !host.vcpus {
        return caps::check_extension(&host, arg as u64) as isize;
    }
    A::arch_check_extension(vm, arg as u64)
        .unwrap_or_else(|| caps::check_extension(&host, arg as u64) as isize)
}

/// A VM's statistics for its stats file (which holds a reference, as upstream's).
struct VmStats<A: KvmArch>(Arc<Vm<A>>);

impl<A: KvmArch> StatsSource for VmStats<A> {
    fn read_stats(&self, id: &str, start: u64, out: &mut [u8]) -> usize {
        statsfmt::read(id, &stats::vm::DESCS, &self.0.stats.snapshot(), start, out)
    }
}

impl<A: KvmArch> Vm<A> {
    /// A VM belongs to the process that created it (fork'ed children get -EIO).
    pub(crate) fn check_owner(&self) -> Result {
        if self.mm.is_current() {
            Ok(())
        } else {
            Err(EIO)
        }
    }

    /// kvm_vm_ioctl(): the generic VM ioctls, then the arch's.
    fn kvm_vm_ioctl(self: &Arc<Self>, cmd: u32, arg: usize) -> Result<isize> {
        self.check_owner()?;
        match cmd {
            ioctl::KVM_CHECK_EXTENSION => Ok(check_extension::<A>(Some(self), arg)),
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
                let region = memslot::Region {
                    slot: r.slot,
                    flags: r.flags,
                    guest_phys_addr: r.guest_phys_addr,
                    memory_size: r.memory_size,
                    userspace_addr: r.userspace_addr,
                    guest_memfd_offset: r.guest_memfd_offset,
                };
                self.kvm_set_memory_region(region, r.guest_memfd)
            }
            ioctl::KVM_CREATE_GUEST_MEMFD => self.kvm_gmem_create(arg),
            ioctl::KVM_CREATE_VCPU => self.kvm_vm_ioctl_create_vcpu(arg),
            ioctl::KVM_GET_STATS_FD => {
                let id = CString::try_from_fmt(fmt!("kvm-{}", self.pid))?;
                let src: KBox<dyn StatsSource> = KBox::new(VmStats(self.clone()), GFP_KERNEL)?;
                stats::stats_fd(id, src, c"kvm-vm-stats")
            }
            ioctl::KVM_GET_DIRTY_LOG => self.kvm_vm_ioctl_get_dirty_log(arg, false),
            ioctl::KVM_CLEAR_DIRTY_LOG => self.kvm_vm_ioctl_clear_dirty_log(arg, false),
            // kvm_vm_ioctl_reset_dirty_pages(): a VM without a dirty ring (kvm-rs
            // offers none: no KVM_CAP_DIRTY_LOG_RING) has nothing to reset.
            ioctl::KVM_RESET_DIRTY_RINGS => Err(EINVAL),
            // kvm_ioctl_create_device(): the struct is read, then no device type
            // is registered (upstream x86 has only VFIO's, which kvm-rs lacks).
            ioctl::KVM_CREATE_DEVICE => {
                let _cd: uapi::kvm_create_device = user::read(arg)?;
                Err(ENODEV)
            }
            ioctl::KVM_ENABLE_CAP => {
                let c: uapi::kvm_enable_cap = user::read(arg)?;
                match c.cap {
                    uapi::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 => self.enable_manual_dirty_log(&c),
                    uapi::KVM_CAP_HALT_POLL => self.enable_halt_poll(&c),
                    _ => A::vm_ioctl(self, cmd, arg),
                }
            }
            ioctl::KVM_REGISTER_COALESCED_MMIO => {
                let z: uapi::kvm_coalesced_mmio_zone = user::read(arg)?;
                self.kvm_vm_ioctl_register_coalesced_mmio(&z)
            }
            ioctl::KVM_UNREGISTER_COALESCED_MMIO => {
                let z: uapi::kvm_coalesced_mmio_zone = user::read(arg)?;
                self.kvm_vm_ioctl_unregister_coalesced_mmio(&z)
            }
            ioctl::KVM_IOEVENTFD => {
                let args: uapi::kvm_ioeventfd = user::read(arg)?;
                self.kvm_ioeventfd(&args)
            }
            ioctl::KVM_IRQFD => {
                let args: uapi::kvm_irqfd = user::read(arg)?;
                self.kvm_irqfd(&args)
            }
            _ => A::vm_ioctl(self, cmd, arg),
        }
    }

    /// kvm_set_memory_region(): checked as upstream (memslot.rs), then the MMU,
    /// dirty logs and the notifier's copy follow the change. A new guest_memfd
    /// slot is bound to file `gmem_fd` first (kvm_gmem_bind()).
    fn kvm_set_memory_region(&self, r: memslot::Region, gmem_fd: u32) -> Result<isize> {
        let lim = memslot::Limits {
            nr_as: 1,
            // SAFETY: reads a constant.
            task_size: unsafe { glue::kvm_glue_task_size_max() },
        };
        let mut slots = self.slots.lock();
        let mut change = memslot::classify(&slots, &r, &lim).map_err(|e| match e {
            memslot::Error::Inval => EINVAL,
            memslot::Error::Exist => EEXIST,
        })?;
        // Reserve first, so that nothing below can fail after the MMU changed.
        slots.reserve(1, GFP_KERNEL)?;
        if let memslot::Change::Create(s) = &mut change {
            if s.has_gmem() {
                self.kvm_gmem_bind(s, gmem_fd, r.guest_memfd_offset)?;
            }
        }
        // kvm_arch_prepare_memory_region(): a new or moved slot must lie below
        // the host's MAXPHYADDR (after binding, as upstream).
        let r = match change {
            memslot::Change::Create(s) | memslot::Change::Move(_, s)
                if s.end_gfn() - 1 > A::kvm_mmu_max_gfn() =>
            {
                Err(EINVAL)
            }
            _ => self.kvm_set_memslot(&mut slots, change),
        };
        if r.is_err() {
            if let memslot::Change::Create(s) = change {
                self.kvm_gmem_unbind(s.id);
            }
        }
        r
    }

    /// kvm_set_memslot(): applies a valid change to the slots (locked).
    fn kvm_set_memslot(&self, slots: &mut KVec<Slot>, change: memslot::Change) -> Result<isize> {
        let old = match change {
            memslot::Change::Delete(i)
            | memslot::Change::Move(i, _)
            | memslot::Change::FlagsOnly(i, _) => slots.get(i).copied(),
            _ => None,
        };
        // kvm_arch_flush_shadow_memslot(): a deleted or moved slot's pages leave
        // the guest. A flags-only change (dirty logging on or off) keeps them, as
        // upstream's KVM_MR_FLAGS_ONLY: starting to log write-protects them
        // below instead, so a pass over memory after it does not fault every
        // page in again. Every change bumps the slot generation under the MMU
        // lock, so a fault that saw the old slot maps nothing.
        let flush = matches!(
            change,
            memslot::Change::Delete(_) | memslot::Change::Move(..)
        );
        A::unmap_gfn_ranges(self, &|zap| {
            if let Some(o) = old.filter(|_| flush) {
                zap(o.base_gfn, o.end_gfn());
            }
        });
        self.update_dirty_logs(old.as_ref(), &change)?;
        match change {
            memslot::Change::Create(s) => {
                let i = memslot::insert_index(slots, &s);
                slots.insert_within_capacity(i, s).map_err(|_| ENOMEM)?;
            }
            memslot::Change::Delete(i) => {
                let o = slots.remove(i).map_err(|_| EINVAL)?;
                if o.has_gmem() {
                    self.kvm_gmem_unbind(o.id);
                }
            }
            memslot::Change::Move(i, s) => {
                slots.remove(i).map_err(|_| EINVAL)?;
                let i = memslot::insert_index(slots, &s);
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
        A::unmap_gfn_ranges(self, &|zap| {
            for s in self.notifier_slots.lock().iter() {
                let (ua, len) = (s.userspace_addr, s.npages << 12);
                let (lo, hi) = (start.max(ua), end.min(ua.saturating_add(len)));
                if lo < hi {
                    let first = s.base_gfn + ((lo - ua) >> 12);
                    let last = s.base_gfn + ((hi - ua + 4095) >> 12);
                    zap(first, last);
                }
            }
        });
    }

    /// Everything is going away (the mm exits before the VM fd is closed).
    fn release_all(&self) {
        A::unmap_gfn_ranges(self, &|zap| zap(0, u64::MAX));
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
        let init_set = self.dirty_log_manual_protect_and_init_set();
        let mut bits = KVVec::from_elem(if init_set { u64::MAX } else { 0 }, words, GFP_KERNEL)?;
        if init_set && n.npages % 64 != 0 {
            // Only the slot's pages: bitmap_set(dirty_bitmap, 0, npages).
            if let Some(last) = bits.last_mut() {
                *last = (1u64 << (n.npages % 64)) - 1;
            }
        }
        let log = DirtyLog {
            id: n.id,
            base_gfn: n.base_gfn,
            npages: n.npages,
            bits,
        };
        logs.push(log, GFP_KERNEL)?;
        drop(logs);
        // Pages already mapped writable must fault on their next write; with
        // every page initially dirty that waits for KVM_CLEAR_DIRTY_LOG
        // (kvm_mmu_slot_apply_flags()).
        if !init_set {
            A::write_protect_gfn_range(self, n.base_gfn, n.end_gfn());
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

    /// kvm_dirty_log_manual_protect_and_init_set().
    fn dirty_log_manual_protect_and_init_set(&self) -> bool {
        self.manual_dirty_log_protect.load(Ordering::Relaxed) & caps::DIRTY_LOG_INITIALLY_SET != 0
    }

    /// KVM_ENABLE_CAP(KVM_CAP_HALT_POLL): the VM's bound on halt polling, in ns
    /// (a u32); -EINVAL for flags or a wider value.
    fn enable_halt_poll(&self, c: &uapi::kvm_enable_cap) -> Result<isize> {
        let ns = u32::try_from(c.args[0]).map_err(|_| EINVAL)?;
        if c.flags != 0 {
            return Err(EINVAL);
        }
        self.max_halt_poll_ns.store(ns, Ordering::Relaxed);
        // Release: a vCPU that sees the override sees the bound.
        self.override_halt_poll_ns.store(true, Ordering::Release);
        Ok(0)
    }

    /// kvm_vcpu_max_halt_poll_ns(): the VM's bound once set, else the module's.
    pub(crate) fn kvm_max_halt_poll_ns(&self, module: u32) -> u32 {
        if self.override_halt_poll_ns.load(Ordering::Acquire) {
            self.max_halt_poll_ns.load(Ordering::Relaxed)
        } else {
            module
        }
    }

    /// KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)
    /// (kvm_vm_ioctl_enable_cap_generic()): INITIALLY_SET only with ENABLE.
    fn enable_manual_dirty_log(&self, c: &uapi::kvm_enable_cap) -> Result<isize> {
        let arg = c.args[0];
        let allowed = if arg & caps::DIRTY_LOG_MANUAL_PROTECT_ENABLE != 0 {
            caps::DIRTY_LOG_MANUAL_CAPS
        } else {
            caps::DIRTY_LOG_MANUAL_PROTECT_ENABLE
        };
        if c.flags != 0 || arg & !allowed != 0 {
            return Err(EINVAL);
        }
        self.manual_dirty_log_protect.store(arg, Ordering::Relaxed);
        Ok(0)
    }

    /// The log of `slot` (a kvm_(clear_)dirty_log slot: address space and id).
    /// x86 has two address spaces; the SMM one never has slots in kvm-rs.
    fn dirty_log_id(slot: u32) -> Result<Option<u16>> {
        let (as_id, id) = (slot >> 16, slot & 0xffff);
        if as_id >= 2 || id >= caps::USER_MEM_SLOTS {
            return Err(EINVAL);
        }
        Ok((as_id == 0).then_some(id as u16))
    }

    /// Write-protects the pages of the set bits of `words` (bit 0 of word 0:
    /// `base`), TLBs flushed (kvm_arch_mmu_enable_log_dirty_pt_masked()).
    fn write_protect_dirty(&self, base: u64, words: &[u64]) {
        A::write_protect_gfns(self, &|wp| {
            for (i, w) in words.iter().enumerate() {
                let mut bits = *w;
                while bits != 0 {
                    let b = u64::from(bits.trailing_zeros());
                    bits &= bits - 1;
                    wp(base + i as u64 * 64 + b);
                }
            }
        });
    }

    /// KVM_GET_DIRTY_LOG (kvm_get_dirty_log_protect()): copies the slot's bitmap
    /// out; without manual protect it also clears it and write-protects the
    /// pages that were dirty, with TLBs flushed before returning.
    fn kvm_vm_ioctl_get_dirty_log(&self, arg: usize, compat: bool) -> Result<isize> {
        let d: uapi::kvm_dirty_log = user::read(arg)?;
        let id = Self::dirty_log_id(d.slot)?;
        let manual = self.manual_dirty_log_protect.load(Ordering::Relaxed) != 0;
        let mut logs = self.dirty.lock();
        let l = logs.iter_mut().find(|l| Some(l.id) == id).ok_or(ENOENT)?;
        let mut snap = KVVec::from_elem(0u64, l.bits.len(), GFP_KERNEL)?;
        for (s, w) in snap.iter_mut().zip(l.bits.iter_mut()) {
            *s = if manual { *w } else { core::mem::take(w) };
        }
        let base = l.base_gfn;
        drop(logs);
        if !manual {
            self.write_protect_dirty(base, &snap);
        }
        // SAFETY: reads the union's pointer member, a plain integer for any bytes.
        let ptr = unsafe { d.__bindgen_anon_1.padding2 };
        user::write_array(user_bitmap(ptr, compat), &snap)?;
        Ok(0)
    }

    /// KVM_CLEAR_DIRTY_LOG (kvm_clear_dirty_log_protect()): clears the bits
    /// userspace passes for pages [first_page, first_page + num_pages) of the
    /// slot's log, 64-page aligned (a shorter tail only at the slot's end), and
    /// write-protects the pages whose bit was set, so their next write logs
    /// them again.
    fn kvm_vm_ioctl_clear_dirty_log(&self, arg: usize, compat: bool) -> Result<isize> {
        let c: uapi::kvm_clear_dirty_log = user::read(arg)?;
        let id = Self::dirty_log_id(c.slot)?;
        if c.first_page % 64 != 0 {
            return Err(EINVAL);
        }
        // Held throughout, as upstream holds slots_lock: the slot cannot change.
        let _slots = self.slots.lock();
        let npages = {
            let logs = self.dirty.lock();
            logs.iter().find(|l| Some(l.id) == id).ok_or(ENOENT)?.npages
        };
        let num = u64::from(c.num_pages);
        let left = npages.checked_sub(c.first_page).ok_or(EINVAL)?;
        if num > left || (num < left && num % 64 != 0) {
            return Err(EINVAL);
        }
        let n = num.div_ceil(64) as usize;
        let mut mask = KVVec::from_elem(0u64, n, GFP_KERNEL)?;
        // SAFETY: reads the union's pointer member, a plain integer for any bytes.
        let ptr = unsafe { c.__bindgen_anon_1.padding2 };
        user::read_into(user_bitmap(ptr, compat), &mut mask)?;
        let first = (c.first_page / 64) as usize;
        let mut logs = self.dirty.lock();
        let l = logs.iter_mut().find(|l| Some(l.id) == id).ok_or(ENOENT)?;
        for (i, m) in mask.iter_mut().enumerate() {
            // Only the bits that really were set get their pages protected.
            match l.bits.get_mut(first + i) {
                Some(w) => {
                    *m &= *w;
                    *w &= !*m;
                }
                None => *m = 0,
            }
        }
        let base = l.base_gfn + c.first_page;
        drop(logs);
        self.write_protect_dirty(base, &mask);
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

    /// kvm_vm_ioctl_create_vcpu(): the fd is installed only after the last step
    /// that can fail, so userspace never sees a vCPU fd that was then torn down.
    fn kvm_vm_ioctl_create_vcpu(self: &Arc<Self>, id: usize) -> Result<isize> {
        let id = u32::try_from(id).map_err(|_| EINVAL)?;
        let mut l = self.locked.lock();
        A::vcpu_precreate(self, &mut l, id)?;
        if l.vcpus.len() >= MAX_VCPUS as usize {
            return Err(EINVAL);
        }
        if l.vcpus.iter().any(|v| v.id == id) {
            return Err(EEXIST);
        }
        l.vcpus.reserve(1, GFP_KERNEL)?;
        let v = Vcpu::new(self, id)?;
        let file = NewVcpuFile::new(self.clone(), v.clone())?;
        l.vcpus.push_within_capacity(v).map_err(|_| ENOMEM)?;
        Ok(file.install())
    }
}

#[pinned_drop]
impl<A: KvmArch> PinnedDrop for Vm<A> {
    fn drop(self: Pin<&mut Self>) {
        let mn = self.notifier.load(Ordering::Acquire);
        if !mn.is_null() {
            // SAFETY: registered in create(); waits for callbacks in flight, none start after.
            unsafe { glue::kvm_glue_mn_unregister(mn) };
        }
        A::kvm_arch_destroy_vm(&self);
    }
}

/// A kvm_(clear_)dirty_log bitmap pointer: a 32-bit caller's is the union's
/// low half (compat_ptr()).
fn user_bitmap(ptr: u64, compat: bool) -> usize {
    (if compat {
        ptr & u64::from(u32::MAX)
    } else {
        ptr
    }) as usize
}

fn notifier_vm<'a, A: KvmArch>(vm: *mut c_void) -> &'a Vm<A> {
    // SAFETY: the notifier is unregistered before the VM is freed (PinnedDrop).
    unsafe { &*vm.cast_const().cast::<Vm<A>>() }
}

/// mmu_notifier invalidate_range_start for the VM's mm: 0, or -EAGAIN when the
/// caller cannot sleep (the MMU lock is a mutex).
pub(crate) fn kvm_mmu_notifier_invalidate_range_start<A: KvmArch>(
    vm: *mut c_void,
    start: u64,
    end: u64,
    blockable: bool,
) -> c_int {
    if !blockable {
        return EAGAIN.to_errno();
    }
    notifier_vm::<A>(vm).invalidate_start(start, end);
    0
}

/// mmu_invalidate_end(): the generation moves on before the count drops, as
/// upstream bumps mmu_invalidate_seq here. Between start and end the primary MMU
/// may still hand out the old page (khugepaged clears its PTEs only after start), so a
/// fault that pinned one then must see a new generation once the count is back to
/// zero, and retry.
pub(crate) fn kvm_mmu_notifier_invalidate_range_end<A: KvmArch>(vm: *mut c_void) {
    let vm = notifier_vm::<A>(vm);
    vm.slots_gen.fetch_add(1, Ordering::SeqCst);
    vm.invalidations.fetch_sub(1, Ordering::SeqCst);
}

pub(crate) fn kvm_mmu_notifier_release<A: KvmArch>(vm: *mut c_void) {
    notifier_vm::<A>(vm).release_all();
}

fn file_vm<A: KvmArch>(vm: *mut c_void) -> Arc<Vm<A>> {
    // SAFETY: private_data set by create(); the file holds a reference while fops run.
    unsafe { ArcBorrow::<Vm<A>>::from_raw(vm.cast_const().cast()) }.into()
}

/// `unlocked_ioctl` of a VM fd.
pub(crate) fn kvm_vm_ioctl<A: KvmArch>(vm: *mut c_void, cmd: u32, arg: usize) -> c_long {
    user::ioctl_ret(file_vm::<A>(vm).kvm_vm_ioctl(cmd, arg))
}

/// `compat_ioctl` of a VM fd (kvm_vm_compat_ioctl()): KVM_GET_DIRTY_LOG and
/// KVM_CLEAR_DIRTY_LOG carry a 32-bit pointer; every other VM ioctl kvm-rs has
/// is laid out alike for 32-bit callers. (Upstream also converts x86's MSR
/// filter for 32-bit callers, which kvm-rs does not yet.)
pub(crate) fn kvm_vm_compat_ioctl<A: KvmArch>(vm: *mut c_void, cmd: u32, arg: usize) -> c_long {
    let vm = match cmd {
        ioctl::KVM_GET_DIRTY_LOG | ioctl::KVM_CLEAR_DIRTY_LOG => file_vm::<A>(vm),
        _ => return kvm_vm_ioctl::<A>(vm, cmd, arg),
    };
    user::ioctl_ret(vm.check_owner().and_then(|()| {
        if cmd == ioctl::KVM_GET_DIRTY_LOG {
            vm.kvm_vm_ioctl_get_dirty_log(arg, true)
        } else {
            vm.kvm_vm_ioctl_clear_dirty_log(arg, true)
        }
    }))
}

/// `release` of a VM fd (kvm_vm_release()): the irqfds go (kvm_irqfd_release()),
/// then the file's reference.
pub(crate) fn kvm_vm_release<A: KvmArch>(vm: *mut c_void) {
    // SAFETY: the reference handed to the file in create(); release runs once.
    let vm = unsafe { Arc::from_raw(vm.cast_const().cast::<Vm<A>>()) };
    vm.kvm_irqfd_release();
    drop(vm);
}
