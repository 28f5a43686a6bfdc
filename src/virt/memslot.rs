//! Memory slots: the rules of `KVM_SET_USER_MEMORY_REGION(2)` and GPA lookup, as
//! upstream's kvm_set_memory_region() and the memslot search (virt/kvm/kvm_main.c).
//!
//! The caller keeps the slots in a slice sorted by `base_gfn` (no two overlap, so that
//! order is total); [`classify`] says what a request does to them and [`find`] looks a
//! guest frame up. Storage is the caller's (kvm.ko uses a `KVec`).

pub const PAGE_SHIFT: u32 = 12;
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

/// `KVM_MEM_SLOTS_NUM` and the user-visible part of it on x86 (three are internal).
pub const MEM_SLOTS_NUM: u32 = 32767;
pub const USER_MEM_SLOTS: u32 = MEM_SLOTS_NUM - 3;
/// `KVM_MEM_MAX_NR_PAGES`: dirty bitmaps are indexed with an `unsigned int`.
pub const MEM_MAX_NR_PAGES: u64 = (1 << 31) - 1;

pub const MEM_LOG_DIRTY_PAGES: u32 = 1 << 0;
pub const MEM_READONLY: u32 = 1 << 1;
pub const MEM_GUEST_MEMFD: u32 = 1 << 2;
/// What the version-1 ioctl accepts (`KVM_SET_USER_MEMORY_REGION_V1_FLAGS`).
pub const V1_FLAGS: u32 = MEM_LOG_DIRTY_PAGES | MEM_READONLY;
/// Internal (upstream KVM_MEMSLOT_GMEM_ONLY, never from userspace): the slot's
/// guest_memfd can be mmap'ed, so the guest's pages come from it rather than from
/// `userspace_addr` (the VM has no private memory, so they are all shared).
pub const MEMSLOT_GMEM_ONLY: u32 = 1 << 17;

/// check_memory_region_flags(): the flags a request may carry. guest_memfd slots
/// cannot log dirty pages nor be read-only (their writes fault, not exit as MMIO).
pub fn valid_flags(flags: u32) -> u32 {
    if flags & MEM_GUEST_MEMFD != 0 {
        MEM_GUEST_MEMFD
    } else {
        MEM_LOG_DIRTY_PAGES | MEM_READONLY | MEM_GUEST_MEMFD
    }
}

/// One slot as the rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub id: u16,
    pub base_gfn: u64,
    pub npages: u64,
    pub userspace_addr: u64,
    pub flags: u32,
}

impl Slot {
    pub fn end_gfn(&self) -> u64 {
        self.base_gfn + self.npages
    }

    pub fn contains(&self, gfn: u64) -> bool {
        gfn >= self.base_gfn && gfn < self.end_gfn()
    }

    /// The host virtual address backing `gfn`, which must be in the slot.
    pub fn hva(&self, gfn: u64) -> u64 {
        self.userspace_addr + ((gfn - self.base_gfn) << PAGE_SHIFT)
    }

    pub fn readonly(&self) -> bool {
        self.flags & MEM_READONLY != 0
    }

    pub fn dirty_logging(&self) -> bool {
        self.flags & MEM_LOG_DIRTY_PAGES != 0
    }

    /// Bound to a guest_memfd (KVM_MEM_GUEST_MEMFD).
    pub fn has_gmem(&self) -> bool {
        self.flags & MEM_GUEST_MEMFD != 0
    }

    /// Faults take the page from the guest_memfd (kvm_memslot_is_gmem_only()).
    pub fn is_gmem_only(&self) -> bool {
        self.flags & MEMSLOT_GMEM_ONLY != 0
    }
}

/// `struct kvm_userspace_memory_region2`'s fields that the rules read.
#[derive(Clone, Copy, Debug, Default)]
pub struct Region {
    pub slot: u32,
    pub flags: u32,
    pub guest_phys_addr: u64,
    pub memory_size: u64,
    pub userspace_addr: u64,
    pub guest_memfd_offset: u64,
}

/// The errnos the rules produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    Inval,
    Exist,
}

/// What a valid request does (upstream's `enum kvm_mr_change`, plus "nothing").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Create(Slot),
    /// Delete the slot at this index of the sorted slice.
    Delete(usize),
    /// Replace the slot at this index with the new one (different base).
    Move(usize, Slot),
    FlagsOnly(usize, Slot),
    None,
}

/// Limits of the address space the slots' host addresses must lie in.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Number of address spaces (`kvm_arch_nr_memslot_as_ids()`); kvm-rs has no SMM,
    /// so 1.
    pub nr_as: u32,
    /// End of user address space (`TASK_SIZE_MAX`), for access_ok().
    pub task_size: u64,
}

/// Validates `r` against `slots` (sorted by base gfn) as kvm_vm_ioctl_set_memory_region()
/// and kvm_set_memory_region() do, in the same order, so the same errno wins.
pub fn classify(slots: &[Slot], r: &Region, lim: &Limits) -> Result<Change, Error> {
    let id = r.slot & 0xffff;
    let as_id = r.slot >> 16;
    if r.flags & !valid_flags(r.flags) != 0 {
        return Err(Error::Inval);
    }
    if r.memory_size & (PAGE_SIZE - 1) != 0 || r.guest_phys_addr & (PAGE_SIZE - 1) != 0 {
        return Err(Error::Inval);
    }
    let ua_end = r.userspace_addr.checked_add(r.memory_size);
    if r.userspace_addr & (PAGE_SIZE - 1) != 0 || ua_end.is_none_or(|e| e > lim.task_size) {
        return Err(Error::Inval);
    }
    if r.flags & MEM_GUEST_MEMFD != 0
        && (r.guest_memfd_offset & (PAGE_SIZE - 1) != 0
            || r.guest_memfd_offset.checked_add(r.memory_size).is_none())
    {
        return Err(Error::Inval);
    }
    if as_id >= lim.nr_as || id >= USER_MEM_SLOTS {
        return Err(Error::Inval);
    }
    if r.guest_phys_addr.checked_add(r.memory_size).is_none() {
        return Err(Error::Inval);
    }
    let npages = r.memory_size >> PAGE_SHIFT;
    if npages > MEM_MAX_NR_PAGES {
        return Err(Error::Inval);
    }
    let id = id as u16;
    let old = slots.iter().position(|s| s.id == id);
    if npages == 0 {
        return old.map(Change::Delete).ok_or(Error::Inval);
    }
    let new = Slot {
        id,
        base_gfn: r.guest_phys_addr >> PAGE_SHIFT,
        npages,
        userspace_addr: r.userspace_addr,
        flags: r.flags,
    };
    let change = match old.and_then(|i| Some((i, slots.get(i)?))) {
        None => Change::Create(new),
        Some((i, o)) => {
            // guest_memfd slots are immutable: they can only be deleted.
            if new.flags & MEM_GUEST_MEMFD != 0
                || o.userspace_addr != new.userspace_addr
                || o.npages != npages
                || (o.flags ^ new.flags) & (MEM_READONLY | MEM_GUEST_MEMFD) != 0
            {
                return Err(Error::Inval);
            }
            if o.base_gfn != new.base_gfn {
                Change::Move(i, new)
            } else if o.flags != new.flags {
                Change::FlagsOnly(i, new)
            } else {
                return Ok(Change::None);
            }
        }
    };
    if matches!(change, Change::Create(_) | Change::Move(..))
        && slots
            .iter()
            .any(|s| s.id != id && s.base_gfn < new.end_gfn() && new.base_gfn < s.end_gfn())
    {
        return Err(Error::Exist);
    }
    Ok(change)
}

/// Where `slot` goes in a slice sorted by base gfn.
pub fn insert_index(slots: &[Slot], slot: &Slot) -> usize {
    slots.partition_point(|s| s.base_gfn < slot.base_gfn)
}

/// The slot containing `gfn`, if any.
pub fn find(slots: &[Slot], gfn: u64) -> Option<&Slot> {
    let i = slots.partition_point(|s| s.base_gfn <= gfn);
    slots.get(i.checked_sub(1)?).filter(|s| s.contains(gfn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    const LIM: Limits = Limits {
        nr_as: 1,
        task_size: 0x7fff_ffff_f000,
    };

    fn region(slot: u32, gpa: u64, size: u64, ua: u64) -> Region {
        Region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: ua,
            guest_memfd_offset: 0,
        }
    }

    /// Applies a change the way kvm.ko does (sorted insert / remove / replace).
    fn apply(slots: &mut Vec<Slot>, c: Change) {
        match c {
            Change::Create(s) => {
                let i = insert_index(slots, &s);
                slots.insert(i, s);
            }
            Change::Delete(i) => {
                slots.remove(i);
            }
            Change::Move(i, s) => {
                slots.remove(i);
                let i = insert_index(slots, &s);
                slots.insert(i, s);
            }
            Change::FlagsOnly(i, s) => slots[i] = s,
            Change::None => {}
        }
    }

    fn set(slots: &mut Vec<Slot>, r: Region) -> Result<(), Error> {
        let c = classify(slots, &r, &LIM)?;
        apply(slots, c);
        Ok(())
    }

    #[test]
    fn alignment_and_ranges() {
        let s = Vec::new();
        let ok = region(0, 0x1000, 0x2000, 0x10000);
        assert!(matches!(classify(&s, &ok, &LIM), Ok(Change::Create(_))));
        for bad in [
            Region {
                guest_phys_addr: 0x1001,
                ..ok
            },
            Region {
                memory_size: 0x2001,
                ..ok
            },
            Region {
                userspace_addr: 0x10008,
                ..ok
            },
            Region {
                userspace_addr: 0x7fff_ffff_e000,
                ..ok
            },
            Region {
                userspace_addr: !0xfff,
                ..ok
            },
            Region {
                guest_phys_addr: !0xfff,
                ..ok
            },
            Region {
                slot: USER_MEM_SLOTS,
                ..ok
            },
            Region {
                slot: 1 << 16,
                ..ok
            },
            Region {
                flags: MEM_GUEST_MEMFD | MEM_LOG_DIRTY_PAGES,
                ..ok
            },
            Region {
                flags: MEM_GUEST_MEMFD | MEM_READONLY,
                ..ok
            },
            Region {
                flags: MEM_GUEST_MEMFD,
                guest_memfd_offset: 0x800,
                ..ok
            },
            Region {
                flags: MEM_GUEST_MEMFD,
                guest_memfd_offset: !0xfff,
                ..ok
            },
            Region {
                flags: MEMSLOT_GMEM_ONLY,
                ..ok
            },
            Region {
                flags: 1 << 3,
                ..ok
            },
            Region {
                memory_size: (MEM_MAX_NR_PAGES + 1) << PAGE_SHIFT,
                userspace_addr: 0,
                ..ok
            },
        ] {
            assert_eq!(classify(&s, &bad, &LIM), Err(Error::Inval), "{bad:?}");
        }
    }

    #[test]
    fn create_overlap_delete_move() {
        let mut s = Vec::new();
        set(&mut s, region(0, 0x10000, 0x10000, 0x100000)).unwrap();
        set(&mut s, region(1, 0x0, 0x10000, 0x200000)).unwrap();
        assert_eq!(s[0].id, 1, "kept sorted by gfn");
        // Overlapping either end, or contained, is -EEXIST.
        assert_eq!(
            set(&mut s, region(2, 0x1f000, 0x2000, 0)),
            Err(Error::Exist)
        );
        assert_eq!(
            set(&mut s, region(2, 0x0f000, 0x2000, 0)),
            Err(Error::Exist)
        );
        assert_eq!(
            set(&mut s, region(2, 0x12000, 0x1000, 0)),
            Err(Error::Exist)
        );
        // Adjacent is fine.
        set(&mut s, region(2, 0x20000, 0x1000, 0x300000)).unwrap();
        // Deleting an empty slot is -EINVAL; deleting twice too.
        assert_eq!(set(&mut s, region(7, 0, 0, 0)), Err(Error::Inval));
        set(&mut s, region(2, 0, 0, 0)).unwrap();
        assert_eq!(set(&mut s, region(2, 0, 0, 0)), Err(Error::Inval));
        // Move: same size and hva, new base; may not land on another slot.
        assert_eq!(
            set(&mut s, region(0, 0x8000, 0x10000, 0x100000)),
            Err(Error::Exist)
        );
        set(&mut s, region(0, 0x40000, 0x10000, 0x100000)).unwrap();
        assert_eq!(find(&s, 0x40).map(|x| x.id), Some(0));
        assert_eq!(find(&s, 0x10), None);
        // Resize or new hva of an existing slot: -EINVAL (delete, then create).
        assert_eq!(
            set(&mut s, region(0, 0x40000, 0x20000, 0x100000)),
            Err(Error::Inval)
        );
        assert_eq!(
            set(&mut s, region(0, 0x40000, 0x10000, 0x900000)),
            Err(Error::Inval)
        );
        // Same again: nothing to do.
        assert_eq!(
            classify(&s, &region(0, 0x40000, 0x10000, 0x100000), &LIM),
            Ok(Change::None)
        );
    }

    #[test]
    fn flags_changes() {
        let mut s = Vec::new();
        set(&mut s, region(3, 0, 0x4000, 0x100000)).unwrap();
        let log = Region {
            flags: MEM_LOG_DIRTY_PAGES,
            ..region(3, 0, 0x4000, 0x100000)
        };
        assert!(matches!(
            classify(&s, &log, &LIM),
            Ok(Change::FlagsOnly(0, _))
        ));
        set(&mut s, log).unwrap();
        assert!(s[0].dirty_logging());
        // READONLY cannot be toggled on an existing slot.
        let ro = Region {
            flags: MEM_READONLY,
            ..region(3, 0, 0x4000, 0x100000)
        };
        assert_eq!(classify(&s, &ro, &LIM), Err(Error::Inval));
    }

    #[test]
    fn guest_memfd_slots_are_immutable() {
        let mut s = Vec::new();
        let gmem = Region {
            flags: MEM_GUEST_MEMFD,
            guest_memfd_offset: 0x2000,
            ..region(4, 0x1_0000_0000, 0x4000, 0)
        };
        assert!(matches!(classify(&s, &gmem, &LIM), Ok(Change::Create(_))));
        set(&mut s, gmem).unwrap();
        assert!(s[0].has_gmem() && !s[0].is_gmem_only());
        // Any change but deletion, even to the same values, is -EINVAL.
        assert_eq!(classify(&s, &gmem, &LIM), Err(Error::Inval));
        let moved = Region {
            guest_phys_addr: 0x2_0000_0000,
            ..gmem
        };
        assert_eq!(classify(&s, &moved, &LIM), Err(Error::Inval));
        let plain = Region { flags: 0, ..gmem };
        assert_eq!(classify(&s, &plain, &LIM), Err(Error::Inval));
        assert_eq!(
            classify(&s, &region(4, 0, 0, 0), &LIM),
            Ok(Change::Delete(0))
        );
        // A plain slot cannot become one.
        set(&mut s, region(5, 0, 0x4000, 0x100000)).unwrap();
        let to_gmem = Region {
            flags: MEM_GUEST_MEMFD,
            ..region(5, 0, 0x4000, 0x100000)
        };
        assert_eq!(classify(&s, &to_gmem, &LIM), Err(Error::Inval));
    }

    #[test]
    fn lookup() {
        let mut s = Vec::new();
        for (id, gpa) in [(0u32, 0x0u64), (1, 0x100000), (2, 0x40000)] {
            set(&mut s, region(id, gpa, 0x2000, 0x1000_0000 + gpa)).unwrap();
        }
        assert_eq!(find(&s, 0x40).map(|x| x.id), Some(2));
        assert_eq!(find(&s, 0x41).map(|x| x.hva(0x41)), Some(0x1004_1000));
        assert_eq!(find(&s, 0x42), None);
        assert_eq!(find(&s, 0x2), None);
        assert_eq!(find(&s, u64::MAX), None);
        assert_eq!(find(&[], 0), None);
    }
}
