// SPDX-License-Identifier: GPL-2.0-only
//! Coalesced MMIO and PIO (upstream virt/kvm/coalesced_mmio.c): KVM_(UN)REGISTER_
//! COALESCED_MMIO's zones as bus devices that append writes to the VM's ring page
//! (mapped by userspace through each vCPU at KVM_COALESCED_MMIO_PAGE_OFFSET)
//! instead of exiting. The zone and ring rules are no_std
//! (virt/coalesced_mmio.rs); this is the page and the devices.

use core::sync::atomic::{fence, AtomicU32, Ordering};
use kernel::prelude::*;
use kernel::sync::Arc;

use crate::abi::uapi;
use crate::coalesced::{self, Invalid, Zone};
use crate::io_bus::Bus;
use crate::iodev::eopnotsupp;
use crate::kvm_host::{KvmArch, KvmIoDevice, Vm};
use crate::pages::Pages;

/// kvm->coalesced_mmio_ring: the page userspace reads and we append to.
pub(crate) struct CoalescedRing {
    page: Pages,
}

impl CoalescedRing {
    /// kvm_coalesced_mmio_init(): a zeroed page.
    pub(crate) fn new() -> Result<Self> {
        Ok(CoalescedRing {
            page: Pages::new(coalesced::RING_SIZE)?,
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.page.as_ptr()
    }

    /// The header word at `off` (first or last), shared with userspace.
    fn word(&self, off: usize) -> &AtomicU32 {
        // The page lives as long as `self` and is only ever accessed atomically or by bytes.
        // SAFETY: `off` is 0 or 4, inside the page and 4-byte aligned.
        unsafe { &*self.page.as_ptr().add(off).cast::<AtomicU32>() }
    }

    /// Appends an entry (coalesced_mmio_write(), under kvm->ring_lock): false when
    /// the ring is full, and the write goes on as an ordinary one.
    fn append(&self, addr: u64, data: &[u8], pio: u32) -> bool {
        let first = self.word(coalesced::RING_FIRST).load(Ordering::Acquire);
        let last = self.word(coalesced::RING_LAST).load(Ordering::Relaxed);
        let Some(i) = coalesced::insert_index(first, last) else {
            return false;
        };
        let e = coalesced::encode(addr, data, pio);
        // Userspace may read the entry concurrently, as upstream's page.
        // SAFETY: insert_index() bounds `i` below MAX, so the entry lies inside the page.
        unsafe {
            let dst = self.page.as_ptr().add(coalesced::entry_offset(i));
            core::ptr::copy_nonoverlapping(e.as_ptr(), dst, e.len());
        }
        // smp_wmb(): the entry before the index that publishes it.
        fence(Ordering::Release);
        self.word(coalesced::RING_LAST)
            .store(coalesced::next_last(i), Ordering::Relaxed);
        true
    }
}

/// struct kvm_coalesced_mmio_dev: one zone on its bus.
pub(crate) struct CoalescedMmioDev {
    pub(crate) zone: Zone,
}

impl<A: KvmArch> KvmIoDevice<A> for CoalescedMmioDev {
    /// Reads go to the next device, or userspace.
    fn read(&self, _vm: &Vm<A>, _addr: u64, _data: &mut [u8]) -> Result {
        Err(eopnotsupp())
    }

    /// coalesced_mmio_write().
    fn write(&self, vm: &Vm<A>, addr: u64, data: &[u8]) -> Result {
        if !self.zone.in_range(addr, data.len() as u64) {
            return Err(eopnotsupp());
        }
        let _g = vm.ring_lock.lock();
        if vm.coalesced_ring.append(addr, data, self.zone.pio) {
            Ok(())
        } else {
            Err(eopnotsupp())
        }
    }
}

/// One registration (the list of kvm->coalesced_zones).
pub(crate) struct CoalescedEntry<A: KvmArch> {
    zone: Zone,
    dev: Arc<dyn KvmIoDevice<A>>,
}

fn zone(z: &uapi::kvm_coalesced_mmio_zone) -> Result<Zone> {
    // SAFETY: both union members are the same u32.
    let pio = unsafe { z.__bindgen_anon_1.pio };
    Zone::new(z.addr, z.size, pio).map_err(|_: Invalid| EINVAL)
}

fn bus(z: &Zone) -> Bus {
    if z.pio != 0 {
        Bus::Pio
    } else {
        Bus::Mmio
    }
}

impl<A: KvmArch> Vm<A> {
    /// kvm_vm_ioctl_register_coalesced_mmio(): -EINVAL for a bad `pio`, the bus's
    /// errno (-ENOSPC when full) otherwise.
    pub(crate) fn kvm_vm_ioctl_register_coalesced_mmio(
        &self,
        z: &uapi::kvm_coalesced_mmio_zone,
    ) -> Result<isize> {
        let zone = zone(z)?;
        let mut list = self.coalesced_zones.lock();
        list.reserve(1, GFP_KERNEL)?;
        let dev: Arc<dyn KvmIoDevice<A>> = Arc::new(CoalescedMmioDev { zone }, GFP_KERNEL)?;
        self.kvm_io_bus_register_dev(bus(&zone), zone.addr, zone.size, dev.clone())?;
        list.push(CoalescedEntry { zone, dev }, GFP_KERNEL)?;
        Ok(0)
    }

    /// kvm_vm_ioctl_unregister_coalesced_mmio(): every zone of that kind holding
    /// the given range goes; 0 whether or not one did, as upstream.
    pub(crate) fn kvm_vm_ioctl_unregister_coalesced_mmio(
        &self,
        z: &uapi::kvm_coalesced_mmio_zone,
    ) -> Result<isize> {
        let zone = zone(z)?;
        let mut list = self.coalesced_zones.lock();
        let mut i = 0;
        while let Some(e) = list.get(i) {
            if e.zone.pio == zone.pio && e.zone.in_range(zone.addr, zone.size.into()) {
                // A failed unregister (no memory for the new table) leaves the
                // device on the bus; upstream then drops the whole bus. Keep the
                // entry so a retry can remove it.
                if self
                    .kvm_io_bus_unregister_dev(bus(&e.zone), &e.dev)
                    .is_err()
                {
                    break;
                }
                let _ = list.remove(i);
            } else {
                i += 1;
            }
        }
        Ok(0)
    }
}
