// SPDX-License-Identifier: GPL-2.0-only
//! guest_memfd (upstream virt/kvm/guest_memfd.c), KVM's half: KVM_CREATE_GUEST_MEMFD,
//! binding memslots to a file's pages (kvm_gmem_bind/unbind), the page a fault maps
//! from a gmem-only slot (kvm_gmem_get_pfn), and unmapping bound ranges from the
//! guest when pages go (punch hole, memory error) or the file is closed. The file
//! system, the page cache and userspace's mmap are the C glue's (src/glue_gmem.c).
//!
//! A file belongs to one VM and pins it (the file's owner, [`GmemFile`], holds a
//! reference); the VM keeps the bindings (upstream keeps them in the file's
//! `bindings` xarray and the slot's `gmem.file`). A binding names its file without a
//! reference, as upstream's slot does: kvm_gmem_release() removes the file's
//! bindings under `Vm::gmem` before the file is freed, and every use of a binding's
//! file happens under that lock.

use core::ptr::NonNull;
use core::sync::atomic::Ordering;
use kernel::ffi::c_void;
use kernel::prelude::*;
use kernel::sync::Arc;

use crate::abi::caps::{GUEST_MEMFD_FLAG_MMAP, GUEST_MEMFD_SUPPORTED_FLAGS};
use crate::abi::uapi;
use crate::glue;
use crate::kvm_host::{KvmArch, Vm};
use crate::memslot::{self, Slot, PAGE_SHIFT, PAGE_SIZE};
use crate::user;

/// A guest_memfd file's owner (upstream struct gmem_file): the VM whose view it is.
struct GmemFile<A: KvmArch> {
    vm: Arc<Vm<A>>,
}

/// A struct file of the glue's guest_memfd file type, not referenced (see the
/// module's comment for why it stays valid).
#[derive(Clone, Copy, PartialEq, Eq)]
struct FilePtr(NonNull<c_void>);

// SAFETY: a struct file may be used from any thread; this is only its address.
unsafe impl Send for FilePtr {}

/// One memslot's pages in one file (an entry of upstream's `bindings` xarray).
pub(crate) struct GmemBinding {
    slot_id: u16,
    base_gfn: u64,
    npages: u64,
    /// The slot's first page in the file (slot->gmem.pgoff).
    pgoff: u64,
    file: FilePtr,
    /// The file's [`GmemFile`]: which file's bindings these are.
    owner: *const c_void,
}

// SAFETY: `owner` is compared, never dereferenced, through a binding.
unsafe impl Send for GmemBinding {}

impl GmemBinding {
    /// The guest frames of file pages [start, end), if the slot has any.
    fn gfns(&self, start: u64, end: u64) -> Option<(u64, u64)> {
        let (lo, hi) = (start.max(self.pgoff), end.min(self.pgoff + self.npages));
        (lo < hi).then(|| {
            (
                self.base_gfn + lo - self.pgoff,
                self.base_gfn + hi - self.pgoff,
            )
        })
    }
}

impl<A: KvmArch> Vm<A> {
    /// KVM_CREATE_GUEST_MEMFD (kvm_gmem_create()): the new fd.
    pub(crate) fn kvm_gmem_create(self: &Arc<Self>, arg: usize) -> Result<isize> {
        let args: uapi::kvm_create_guest_memfd = user::read(arg)?;
        if args.flags & !GUEST_MEMFD_SUPPORTED_FLAGS != 0 {
            return Err(EINVAL);
        }
        // A loff_t: "size <= 0" upstream.
        if args.size == 0 || args.size > i64::MAX as u64 || args.size % PAGE_SIZE != 0 {
            return Err(EINVAL);
        }
        let owner = KBox::new(GmemFile { vm: self.clone() }, GFP_KERNEL)?;
        let raw = KBox::into_raw(owner);
        // SAFETY: on success the file owns `raw` and hands it back once to kvm_rs_gmem_release().
        let fd = unsafe { glue::kvm_glue_gmem_create(raw.cast(), args.size, args.flags) };
        if fd < 0 {
            // SAFETY: no file was created, so `raw` is still ours.
            drop(unsafe { KBox::from_raw(raw) });
            return Err(Error::from_errno(fd));
        }
        Ok(fd as isize)
    }

    /// kvm_gmem_bind(): `slot` (not yet visible) takes its pages from the
    /// guest_memfd `fd` from byte `offset`; a file whose memory userspace can map
    /// backs the slot alone (gmem-only).
    pub(crate) fn kvm_gmem_bind(&self, slot: &mut Slot, fd: u32, offset: u64) -> Result {
        let mut file = core::ptr::null_mut();
        let mut owner = core::ptr::null_mut();
        let (mut size, mut flags) = (0u64, 0u64);
        let (f, o) = (&mut file, &mut owner);
        // SAFETY: plain out-parameters; on success we hold a file reference.
        let r = unsafe { glue::kvm_glue_gmem_fget(fd, f, o, &mut size, &mut flags) };
        if r != 0 {
            return Err(Error::from_errno(r));
        }
        let r = self.gmem_bind_file(slot, file, owner, size, flags, offset);
        // The binding keeps no reference: the file pins the VM, not the other way round.
        // SAFETY: the reference fget() took, put once.
        unsafe { glue::kvm_glue_fput(file) };
        r
    }

    fn gmem_bind_file(
        &self,
        slot: &mut Slot,
        file: *mut c_void,
        owner: *mut c_void,
        size: u64,
        flags: u64,
        offset: u64,
    ) -> Result {
        // SAFETY: our caller holds a file reference; the owner is freed only at the file's release.
        let of = unsafe { &*owner.cast_const().cast::<GmemFile<A>>() };
        if !core::ptr::eq(Arc::as_ptr(&of.vm), self) {
            return Err(EINVAL);
        }
        let bytes = slot.npages << PAGE_SHIFT;
        if offset % PAGE_SIZE != 0 || offset.checked_add(bytes).is_none_or(|e| e > size) {
            return Err(EINVAL);
        }
        let file = FilePtr(NonNull::new(file).ok_or(EINVAL)?);
        let (start, end) = (offset >> PAGE_SHIFT, (offset >> PAGE_SHIFT) + slot.npages);
        let mut bindings = self.gmem.lock();
        if bindings
            .iter()
            .any(|b| b.file == file && b.pgoff < end && start < b.pgoff + b.npages)
        {
            return Err(EEXIST);
        }
        bindings.push(
            GmemBinding {
                slot_id: slot.id,
                base_gfn: slot.base_gfn,
                npages: slot.npages,
                pgoff: start,
                file,
                owner: owner.cast_const(),
            },
            GFP_KERNEL,
        )?;
        if flags & GUEST_MEMFD_FLAG_MMAP != 0 {
            slot.flags |= memslot::MEMSLOT_GMEM_ONLY;
        }
        Ok(())
    }

    /// kvm_gmem_unbind(): the slot is gone (or was never installed).
    pub(crate) fn kvm_gmem_unbind(&self, slot_id: u16) {
        self.gmem.lock().retain(|b| b.slot_id != slot_id);
    }

    /// The host physical address of `gfn`'s page in `slot`'s guest_memfd, with a
    /// page reference for the caller (kvm_gmem_get_pfn()). -EFAULT once the file
    /// is closed; -EHWPOISON for a poisoned page.
    pub(crate) fn kvm_gmem_get_pfn(&self, slot: &Slot, gfn: u64) -> Result<u64> {
        let bindings = self.gmem.lock();
        let b = bindings
            .iter()
            .find(|b| b.slot_id == slot.id && b.base_gfn == slot.base_gfn)
            .ok_or(EFAULT)?;
        let index = gfn
            .checked_sub(b.base_gfn)
            .filter(|&i| i < b.npages)
            .ok_or(EFAULT)?
            + b.pgoff;
        let mut phys = 0;
        // SAFETY: a listed binding's file has not finished releasing and stays alive while `bindings` is held.
        let r = unsafe { glue::kvm_glue_gmem_get_page(b.file.0.as_ptr(), index, &mut phys) };
        if r != 0 {
            return Err(Error::from_errno(r));
        }
        Ok(phys)
    }

    /// Unmaps the guest frames that file pages [start, end) of `owner`'s file back.
    fn gmem_unmap(&self, bindings: &[GmemBinding], owner: *const c_void, start: u64, end: u64) {
        A::unmap_gfn_ranges(self, &|zap| {
            for b in bindings.iter().filter(|b| b.owner == owner) {
                if let Some((first, last)) = b.gfns(start, end) {
                    zap(first, last);
                }
            }
        });
    }
}

fn owner_ref<'a, A: KvmArch>(owner: *mut c_void) -> &'a GmemFile<A> {
    // SAFETY: the glue passes the owner of a file that is not yet released.
    unsafe { &*owner.cast_const().cast::<GmemFile<A>>() }
}

/// kvm_gmem_invalidate_start(): pages [start, end) of the file are going; faults
/// retry until the matching end (upstream kvm_mmu_invalidate_start()).
pub(crate) fn kvm_gmem_invalidate_start<A: KvmArch>(owner: *mut c_void, start: u64, end: u64) {
    let vm = &owner_ref::<A>(owner).vm;
    vm.invalidations.fetch_add(1, Ordering::SeqCst);
    let bindings = vm.gmem.lock();
    vm.gmem_unmap(&bindings, owner.cast_const(), start, end);
}

/// kvm_gmem_invalidate_end(): as the MMU notifier's end, the generation moves on
/// before the count drops, so a fault that got a page before the pages went
/// does not map it.
pub(crate) fn kvm_gmem_invalidate_end<A: KvmArch>(owner: *mut c_void) {
    let vm = &owner_ref::<A>(owner).vm;
    vm.slots_gen.fetch_add(1, Ordering::SeqCst);
    vm.invalidations.fetch_sub(1, Ordering::SeqCst);
}

/// kvm_gmem_release(): the file's bindings go and their frames leave the guest
/// (a fault on the slots now fails with -EFAULT); the memory lives on with the
/// inode until its last mapping goes. Then the file's VM reference.
pub(crate) fn kvm_gmem_release<A: KvmArch>(owner: *mut c_void) {
    // SAFETY: handed over by kvm_gmem_create(); the glue calls this once, last.
    let of = unsafe { KBox::from_raw(owner.cast::<GmemFile<A>>()) };
    let vm = &of.vm;
    let mut bindings = vm.gmem.lock();
    vm.gmem_unmap(&bindings, owner.cast_const(), 0, u64::MAX);
    bindings.retain(|b| b.owner != owner.cast_const());
    drop(bindings);
    drop(of);
}
