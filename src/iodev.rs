// SPDX-License-Identifier: GPL-2.0-only
//! The in-kernel I/O buses (upstream struct kvm_io_bus, kvm_io_bus_register_dev(),
//! kvm_io_bus_read()/_write() of virt/kvm/kvm_main.c, and include/kvm/iodev.h):
//! PIO and MMIO ranges mapped to in-kernel devices, which an exit offers an access
//! to before userspace sees it. The types are in kvm_host.rs (as upstream's in
//! kvm_host.h); the range rules are no_std (virt/io_bus.rs).
//!
//! As upstream's SRCU-protected arrays, a bus is replaced, not edited: readers
//! take a reference on the current table and call devices with no bus lock held,
//! so a device may take its own locks; writers build a new table and swap it in.

use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::{new_mutex, new_spinlock};

use crate::io_bus::{self, Bus, BusError, IoRange};
use crate::kvm_host::{KvmArch, KvmIoBus, KvmIoBuses, KvmIoDevice, Table, Vm};

/// -EOPNOTSUPP: what a device answers for an access it does not take (the kernel
/// crate does not name it).
pub(crate) fn eopnotsupp() -> Error {
    Error::from_errno(-(kernel::bindings::EOPNOTSUPP as i32))
}

impl<A: KvmArch> KvmIoBus<A> {
    fn new() -> Result<impl PinInit<Self, Error>> {
        let empty = Arc::new(
            Table {
                ranges: KVec::new(),
                devs: KVec::new(),
            },
            GFP_KERNEL,
        )?;
        Ok(try_pin_init!(KvmIoBus {
            table <- new_spinlock!(empty, "kvm->buses"),
            update <- new_mutex!((), "kvm->buses update"),
        }))
    }

    fn current(&self) -> Arc<Table<A>> {
        self.table.lock().clone()
    }

    /// kvm_io_bus_register_dev(): -ENOSPC when the bus is full.
    fn register(&self, addr: u64, len: u32, dev: Arc<dyn KvmIoDevice<A>>) -> Result {
        let range = IoRange { addr, len };
        let _w = self.update.lock();
        let cur = self.current();
        let i = io_bus::insert_index(&cur.ranges, &range).map_err(|e| match e {
            BusError::Full => ENOSPC,
        })?;
        let n = cur.ranges.len() + 1;
        let mut ranges = KVec::with_capacity(n, GFP_KERNEL)?;
        let mut devs = KVec::with_capacity(n, GFP_KERNEL)?;
        for (j, (r, d)) in cur.ranges.iter().zip(cur.devs.iter()).enumerate() {
            if j == i {
                ranges.push(range, GFP_KERNEL)?;
                devs.push(dev.clone(), GFP_KERNEL)?;
            }
            ranges.push(*r, GFP_KERNEL)?;
            devs.push(d.clone(), GFP_KERNEL)?;
        }
        if i == cur.ranges.len() {
            ranges.push(range, GFP_KERNEL)?;
            devs.push(dev, GFP_KERNEL)?;
        }
        self.swap(Table { ranges, devs })
    }

    /// Publishes `t`; the old table goes (maybe freeing devices) with no lock held.
    fn swap(&self, t: Table<A>) -> Result {
        let new = Arc::new(t, GFP_KERNEL)?;
        let old = core::mem::replace(&mut *self.table.lock(), new);
        drop(old);
        Ok(())
    }

    /// kvm_io_bus_unregister_dev(): every range of `dev` leaves the bus.
    fn unregister(&self, dev: &Arc<dyn KvmIoDevice<A>>) -> Result {
        let _w = self.update.lock();
        let cur = self.current();
        let mut ranges = KVec::with_capacity(cur.ranges.len(), GFP_KERNEL)?;
        let mut devs = KVec::with_capacity(cur.ranges.len(), GFP_KERNEL)?;
        for (r, d) in cur.ranges.iter().zip(cur.devs.iter()) {
            if !Arc::ptr_eq(d, dev) {
                ranges.push(*r, GFP_KERNEL)?;
                devs.push(d.clone(), GFP_KERNEL)?;
            }
        }
        self.swap(Table { ranges, devs })
    }
}

impl<A: KvmArch> KvmIoBuses<A> {
    pub(crate) fn new() -> Result<impl PinInit<Self, Error>> {
        let (mmio, pio, ccw) = (KvmIoBus::new()?, KvmIoBus::new()?, KvmIoBus::new()?);
        Ok(try_pin_init!(KvmIoBuses {
            mmio <- mmio,
            pio <- pio,
            virtio_ccw_notify <- ccw,
        }))
    }

    fn bus(&self, bus: Bus) -> &KvmIoBus<A> {
        match bus {
            Bus::Mmio => &self.mmio,
            Bus::Pio => &self.pio,
            Bus::VirtioCcwNotify => &self.virtio_ccw_notify,
        }
    }
}

impl<A: KvmArch> Vm<A> {
    /// kvm_io_bus_register_dev().
    pub(crate) fn kvm_io_bus_register_dev(
        &self,
        bus: Bus,
        addr: u64,
        len: u32,
        dev: Arc<dyn KvmIoDevice<A>>,
    ) -> Result {
        self.buses.bus(bus).register(addr, len, dev)
    }

    /// kvm_io_bus_unregister_dev().
    pub(crate) fn kvm_io_bus_unregister_dev(
        &self,
        bus: Bus,
        dev: &Arc<dyn KvmIoDevice<A>>,
    ) -> Result {
        self.buses.bus(bus).unregister(dev)
    }

    /// Offers an access of `len` bytes at `addr` to the bus's devices in order
    /// until one takes it (__kvm_io_bus_write()/__kvm_io_bus_read()).
    fn kvm_io_bus_access(
        &self,
        bus: Bus,
        addr: u64,
        len: usize,
        mut access: impl FnMut(&dyn KvmIoDevice<A>) -> Result,
    ) -> Result {
        let t = self.buses.bus(bus).current();
        let range = IoRange {
            addr,
            len: len as u32,
        };
        for i in io_bus::matches(&t.ranges, range) {
            let Some(d) = t.devs.get(i) else { break };
            match access(&**d) {
                Err(e) if e == eopnotsupp() => continue,
                r => return r,
            }
        }
        Err(eopnotsupp())
    }

    /// kvm_io_bus_write(): Ok if a device took the access, Err(EOPNOTSUPP) if
    /// none did (the exit then goes to userspace).
    pub(crate) fn kvm_io_bus_write(&self, bus: Bus, addr: u64, data: &[u8]) -> Result {
        self.kvm_io_bus_access(bus, addr, data.len(), |d| d.write(self, addr, data))
    }

    /// kvm_io_bus_read(), as kvm_io_bus_write().
    pub(crate) fn kvm_io_bus_read(&self, bus: Bus, addr: u64, data: &mut [u8]) -> Result {
        let len = data.len();
        self.kvm_io_bus_access(bus, addr, len, |d| d.read(self, addr, data))
    }
}
