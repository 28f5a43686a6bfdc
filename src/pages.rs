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
