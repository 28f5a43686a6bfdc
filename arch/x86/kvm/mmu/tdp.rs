// SPDX-License-Identifier: GPL-2.0-only
//! The TDP MMU: one two-dimensional page table per VM (NPT or EPT, 4 or 5 levels,
//! in the format the vendor's masks give) mapping guest-physical pages to pinned
//! pages of the VM's user memory (or referenced guest_memfd pages), filled on NPF exits and zapped when memory slots
//! change. Entry rules live in spte.rs.
//!
//! Zapping is two-phase so that a page is never unpinned while a vCPU might still
//! reach it: [`Mmu::zap`] makes the leaves non-present (keeping the page), the VM
//! then makes every vCPU leave the guest and flush (vm.rs), and only then
//! [`Mmu::release_zapped`] unpins.

use kernel::prelude::*;

use crate::glue;
use crate::hw::spte::{self, SpteMasks, SPTE_GMEM, SPTE_HOST_WRITABLE, SPTE_ZAPPED};
use crate::pages::Pages;

pub(crate) struct Mmu {
    root: Pages,
    /// 4, or 5 when the host uses 5-level paging: the NPT walk has the host's depth
    /// (upstream get_npt_level()).
    levels: u32,
    /// Zeroed pages for new tables, allocated before the MMU lock is taken: the
    /// MMU-notifier path takes the lock, so nothing under it may wait for
    /// reclaim. Tables below the root are freed by walking the tree.
    spare: KVec<Pages>,
    /// Present 4K leaves (the `pages_4k` statistic).
    pub(crate) mapped: u64,
    /// The entry format, as the vendor set it (NPT or EPT).
    masks: SpteMasks,
}

/// Entries of the table at physical address `pa`.
fn entries<'a>(pa: u64) -> &'a [core::sync::atomic::AtomicU64] {
    // SAFETY: `pa` is one of this MMU's table pages (allocated, page-sized and aligned, in the direct map); the hardware reads them concurrently, so entries are accessed atomically. The tables live as long as the Mmu.
    unsafe {
        let p = glue::kvm_glue_phys_to_virt(pa).cast::<core::sync::atomic::AtomicU64>();
        core::slice::from_raw_parts(p, 512)
    }
}

use core::sync::atomic::Ordering::{Acquire, Release};

impl Mmu {
    pub(crate) fn new(masks: SpteMasks) -> Result<Self> {
        Ok(Mmu {
            masks,
            root: Pages::new(4096)?,
            // SAFETY: reads a boot-time property.
            levels: if unsafe { glue::kvm_glue_pgtable_l5_enabled() } != 0 {
                5
            } else {
                spte::LEVELS
            },
            spare: KVec::with_capacity(MAX_LEVELS, GFP_KERNEL)?,
            mapped: 0,
        })
    }

    /// How many spare tables a map() may still need.
    pub(crate) fn spare_needed(&self) -> usize {
        (self.levels as usize - 1).saturating_sub(self.spare.len())
    }

    /// Adds pre-allocated zeroed pages to the spares (capacity is reserved, so
    /// this does not allocate).
    pub(crate) fn topup(&mut self, pages: KVec<Pages>) {
        for p in pages {
            if self.spare.push_within_capacity(p).is_err() {
                break;
            }
        }
    }

    /// The nested CR3.
    pub(crate) fn root_pa(&self) -> u64 {
        self.root.phys()
    }

    /// The leaf entry for `gfn`, if its tables exist.
    fn leaf(&self, gfn: u64) -> Option<&core::sync::atomic::AtomicU64> {
        let mut table = self.root_pa();
        for level in (2..=self.levels).rev() {
            let e = entries(table).get(spte::index(gfn, level))?.load(Acquire);
            if !self.masks.is_present(e) {
                return None;
            }
            table = spte::addr(e);
        }
        entries(table).get(spte::index(gfn, 1))
    }

    /// Lets the guest write a mapped page again (a dirty-logged page's first
    /// write). No flush: a stale read-only TLB entry only faults again.
    pub(crate) fn make_writable(&mut self, gfn: u64) -> bool {
        let Some(e) = self.leaf(gfn) else {
            return false;
        };
        match self.masks.make_writable(e.load(Acquire)) {
            Some(v) => {
                e.store(v, Release);
                true
            }
            None => false,
        }
    }

    /// Replaces a read-only-pinned leaf of `gfn` with the page `hpa`, pinned for
    /// writing (a write after the memory became writable again). Returns the old
    /// page, which the caller unpins after flushing TLBs.
    pub(crate) fn upgrade(&mut self, gfn: u64, hpa: u64, writable: bool) -> Option<u64> {
        let e = self.leaf(gfn)?;
        let cur = e.load(Acquire);
        if !self.masks.is_present(cur) || cur & SPTE_HOST_WRITABLE != 0 {
            return None;
        }
        e.store(self.masks.leaf_logged(hpa, writable), Release);
        Some(spte::addr(cur))
    }

    /// Makes guest writes to `gfn` fault again; true if it was writable (the
    /// caller flushes TLBs before relying on it).
    pub(crate) fn write_protect(&mut self, gfn: u64) -> bool {
        let Some(e) = self.leaf(gfn) else {
            return false;
        };
        let v = e.load(Acquire);
        if self.masks.is_present(v) && self.masks.is_writable(v) {
            e.store(self.masks.write_protect(v), Release);
            return true;
        }
        false
    }

    /// Makes guest writes to every mapped page in [start, end) fault again
    /// (a slot starts dirty logging); true if any was writable. Walks only the
    /// tables that exist, so a huge, mostly unmapped slot costs little.
    pub(crate) fn write_protect_range(&mut self, start: u64, end: u64) -> bool {
        let (mut any, m) = (false, self.masks);
        walk(&m, self.root_pa(), self.levels, 0, start, end, &mut |e| {
            let v = e.load(Acquire);
            if m.is_present(v) && m.is_writable(v) {
                e.store(m.write_protect(v), Release);
                any = true;
            }
        });
        any
    }

    /// Maps `gfn` to the host page `hpa` the caller holds (`page`: how).
    /// Returns `false` if `gfn` was already mapped (another vCPU won the race):
    /// the caller releases its hold.
    pub(crate) fn map(&mut self, gfn: u64, page: &HeldPage, writable: bool) -> Result<bool> {
        let (hpa, pinned_write) = (page.hpa, page.write);
        let mut table = self.root_pa();
        for level in (2..=self.levels).rev() {
            let e = entries(table).get(spte::index(gfn, level)).ok_or(EINVAL)?;
            let cur = e.load(Acquire);
            table = if self.masks.is_present(cur) {
                spte::addr(cur)
            } else {
                // Out of spare tables: the caller tops up and retries.
                let pa = self.spare.pop().ok_or(EAGAIN)?.into_phys();
                e.store(self.masks.table(pa), Release);
                pa
            };
        }
        let e = entries(table).get(spte::index(gfn, 1)).ok_or(EINVAL)?;
        let cur = e.load(Acquire);
        if self.masks.is_present(cur) || cur & SPTE_ZAPPED != 0 {
            return Ok(false);
        }
        let leaf = if pinned_write {
            self.masks.leaf_logged(hpa, writable)
        } else {
            self.masks.leaf(hpa, false)
        };
        let leaf = if page.gmem { leaf | SPTE_GMEM } else { leaf };
        e.store(leaf, Release);
        self.mapped += 1;
        Ok(true)
    }

    /// Makes every leaf in [start, end) non-present; the pages stay pinned until
    /// [`Mmu::release_zapped`]. Returns whether anything was zapped.
    pub(crate) fn zap(&mut self, start: u64, end: u64) -> bool {
        let (mut n, m) = (0, self.masks);
        walk(&m, self.root_pa(), self.levels, 0, start, end, &mut |e| {
            let v = e.load(Acquire);
            if m.is_present(v) {
                e.store(m.zap(v), Release);
                n += 1;
            }
        });
        self.mapped -= n;
        n != 0
    }

    /// Unpins the pages of zapped leaves in [start, end).
    pub(crate) fn release_zapped(&mut self, start: u64, end: u64) {
        walk(
            &self.masks,
            self.root_pa(),
            self.levels,
            0,
            start,
            end,
            &mut |e| {
                let v = e.load(Acquire);
                if v & SPTE_ZAPPED != 0 {
                    e.store(0, Release);
                    unpin(v);
                }
            },
        );
    }
}

/// A host page the fault path holds for mapping: a GUP pin on the VM's user
/// memory (for writing if `write`), or a reference on a guest_memfd page
/// (`gmem`, always writable). A leaf that maps it takes the hold over.
pub(crate) struct HeldPage {
    pub(crate) hpa: u64,
    pub(crate) write: bool,
    pub(crate) gmem: bool,
}

impl HeldPage {
    /// Gives the hold up (the page was not mapped, or is mapped by another leaf).
    pub(crate) fn release(self) {
        release_page(self.hpa, false, self.gmem);
    }
}

fn release_page(hpa: u64, dirty: bool, gmem: bool) {
    if gmem {
        // SAFETY: the reference kvm_glue_gmem_get_page() took, released once.
        unsafe { glue::kvm_glue_put_page_phys(hpa) }
    } else {
        // SAFETY: the pin kvm_glue_pin_user_page() took, released once.
        unsafe { glue::kvm_glue_unpin_phys(hpa, i32::from(dirty)) }
    }
}

/// Releases the hold a leaf has on its page; the leaf is cleared first, so this
/// is the only release.
fn unpin(leaf: u64) {
    release_page(
        spte::addr(leaf),
        leaf & SPTE_HOST_WRITABLE != 0,
        leaf & SPTE_GMEM != 0,
    )
}

/// Calls `f` on every leaf entry (present or zapped) covering [start, end) under
/// the table at `pa` of `level`, whose first gfn is `base`.
fn walk(
    m: &SpteMasks,
    pa: u64,
    level: u32,
    base: u64,
    start: u64,
    end: u64,
    f: &mut impl FnMut(&core::sync::atomic::AtomicU64),
) {
    let span = spte::entry_span(level);
    for (i, e) in entries(pa).iter().enumerate() {
        let eb = spte::entry_base(base, level, i);
        if eb >= end || eb.saturating_add(span) <= start {
            continue;
        }
        let v = e.load(Acquire);
        if level == 1 {
            if v != 0 {
                f(e);
            }
        } else if m.is_present(v) {
            walk(m, spte::addr(v), level - 1, eb, start, end, f);
        }
    }
}

/// Frees the tables below the table at `pa` of `level` (not `pa` itself).
fn free_tables(m: &SpteMasks, pa: u64, level: u32) {
    if level <= 1 {
        return;
    }
    for e in entries(pa) {
        let v = e.load(Acquire);
        if m.is_present(v) {
            free_tables(m, spte::addr(v), level - 1);
            e.store(0, Release);
            // SAFETY: a table page linked in map() from into_phys(); unlinked above, freed once.
            drop(unsafe { Pages::from_phys(spte::addr(v), 4096) });
        }
    }
}

impl Drop for Mmu {
    fn drop(&mut self) {
        // No vCPU can run any more (they are freed before the MMU): unpin all.
        walk(
            &self.masks,
            self.root_pa(),
            self.levels,
            0,
            0,
            u64::MAX,
            &mut |e| {
                let v = e.load(Acquire);
                e.store(0, Release);
                unpin(v);
            },
        );
        free_tables(&self.masks, self.root_pa(), self.levels);
    }
}

/// The deepest NPT (5-level host paging).
const MAX_LEVELS: usize = 5;
