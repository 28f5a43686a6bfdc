// SPDX-License-Identifier: GPL-2.0-only
//! VMs: created by KVM_CREATE_VM, each behind an anon-inode fd ("kvm-vm") that holds
//! one reference; vCPU fds hold one each. Memory slots, the MMU and the vCPUs live
//! here and go with the last reference (upstream kvm_destroy_vm()).

use core::sync::atomic::{AtomicU64, Ordering};
use kernel::ffi::{c_long, c_uint, c_ulong, c_void};
use kernel::new_mutex;
use kernel::prelude::*;
use kernel::sync::{Arc, ArcBorrow, Mutex};

use crate::abi::{caps, ioctl, uapi};
use crate::memslot::{self, Slot};
use crate::mmu::Mmu;
use crate::vcpu::{self, Vcpu};
use crate::{dev, glue, user, vendor};

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

#[pin_data]
pub(crate) struct Vm {
    mm: OwnerMm,
    #[allow(dead_code)] // Read by the vendor hooks of protected VM types.
    vm_type: u32,
    /// Sorted by base gfn (memslot.rs). Taken before `mmu`.
    #[pin]
    slots: Mutex<KVec<Slot>>,
    #[pin]
    pub(crate) mmu: Mutex<Mmu>,
    /// Taken after `mmu` (kicks walk the list under the MMU lock).
    #[pin]
    vcpus: Mutex<KVec<Arc<Vcpu>>>,
    /// Bumped (under `mmu`) whenever slots change: a fault that pinned a page for
    /// an older generation must not map it.
    pub(crate) slots_gen: AtomicU64,
    /// Bumped whenever NPT entries are zapped: vCPUs flush their TLB on entry when
    /// it differs from what they last saw.
    pub(crate) tlb_gen: AtomicU64,
}

/// KVM_CREATE_VM: returns the new fd.
pub(crate) fn create(vm_type: usize) -> Result<isize> {
    if !caps::vm_type_supported(&vendor::host(), vm_type as u64) {
        return Err(EINVAL);
    }
    let vm = Arc::pin_init(
        try_pin_init!(Vm {
            mm: OwnerMm::current(),
            vm_type: vm_type as u32,
            slots <- new_mutex!(KVec::new()),
            mmu <- new_mutex!(Mmu::new()?),
            vcpus <- new_mutex!(KVec::new()),
            slots_gen: AtomicU64::new(0),
            tlb_gen: AtomicU64::new(0),
        }),
        GFP_KERNEL,
    )?;
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
            }
        }
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

    /// Makes every vCPU flush its TLB before it next runs guest code, and waits
    /// until none is still running on old translations. Called with `mmu` held.
    fn flush_all(&self) {
        self.tlb_gen.fetch_add(1, Ordering::SeqCst);
        for v in self.vcpus.lock().iter() {
            v.kick();
        }
    }

    fn create_vcpu(self: &Arc<Self>, id: usize) -> Result<isize> {
        if id >= MAX_VCPU_IDS as usize {
            return Err(EINVAL);
        }
        let id = id as u32;
        let mut vcpus = self.vcpus.lock();
        if vcpus.len() >= MAX_VCPUS as usize {
            return Err(EINVAL);
        }
        if vcpus.iter().any(|v| v.id == id) {
            return Err(EEXIST);
        }
        vcpus.reserve(1, GFP_KERNEL)?;
        let v = Vcpu::new(id)?;
        let fd = vcpu::create_fd(self.clone(), v.clone())?;
        vcpus.push_within_capacity(v).map_err(|_| ENOMEM)?;
        Ok(fd)
    }
}

/// `unlocked_ioctl` of a VM fd.
#[no_mangle]
pub(crate) extern "C" fn kvm_rs_vm_ioctl(vm: *mut c_void, cmd: c_uint, arg: c_ulong) -> c_long {
    // SAFETY: private_data set by create(); the file holds a reference while fops run.
    let vm: Arc<Vm> = unsafe { ArcBorrow::<Vm>::from_raw(vm.cast_const().cast()) }.into();
    dev::ioctl_ret(vm.ioctl(cmd, arg))
}

/// `release` of a VM fd: drops the file's reference.
#[no_mangle]
pub(crate) extern "C" fn kvm_rs_vm_release(vm: *mut c_void) {
    // SAFETY: the reference handed to the file in create(); release runs once.
    drop(unsafe { Arc::from_raw(vm.cast_const().cast::<Vm>()) });
}
