// SPDX-License-Identifier: GPL-2.0-only
//! Zeroed, physically contiguous kernel pages with a kernel address and a physical
//! address: VMCBs, page tables, the kvm_run page. (The kernel crate's `Page` has no
//! permanent kernel mapping to hand out.)

use core::ptr::NonNull;
use kernel::prelude::*;

use super::glue;

pub(crate) struct Pages {
    ptr: NonNull<u8>,
    size: usize,
}

impl Pages {
    /// `size` bytes, a multiple of the page size, zeroed.
    pub(crate) fn new(size: usize) -> Result<Self> {
        // SAFETY: a plain allocation; null is checked.
        let p = unsafe { glue::kvm_glue_alloc_pages_exact(size as u64) };
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(ENOMEM)?;
        Ok(Pages { ptr, size })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    // kvm.ko's MMU tables use these two; the vendor modules include this file too.
    #[allow(dead_code)]
    /// Hands the pages over as their physical address; [`Pages::from_phys`]
    /// takes them back.
    pub(crate) fn into_phys(self) -> u64 {
        let pa = self.phys();
        core::mem::forget(self);
        pa
    }

    #[allow(dead_code)]
    /// # Safety
    /// `pa` and `size` come from [`Pages::into_phys`] of pages not taken back yet.
    pub(crate) unsafe fn from_phys(pa: u64, size: usize) -> Self {
        // SAFETY: `pa` is in the direct map (allocated by new()).
        let p = unsafe { glue::kvm_glue_phys_to_virt(pa) };
        Pages {
            // The caller's contract: a live allocation, so not null.
            ptr: NonNull::new(p.cast::<u8>()).unwrap_or(NonNull::dangling()),
            size,
        }
    }

    pub(crate) fn phys(&self) -> u64 {
        // SAFETY: a live allocation in the kernel's direct map.
        unsafe { glue::kvm_glue_virt_to_phys(self.ptr.as_ptr().cast()) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with this size; freed once.
        unsafe { glue::kvm_glue_free_pages_exact(self.ptr.as_ptr().cast(), self.size as u64) }
    }
}

// SAFETY: plain memory; users synchronize access to its contents themselves.
unsafe impl Send for Pages {}
// SAFETY: as above.
unsafe impl Sync for Pages {}
