// SPDX-License-Identifier: GPL-2.0-only
//! eventfd-backed devices (upstream virt/kvm/eventfd.c): ioeventfd, a guest write
//! to a PIO port or MMIO address that signals an eventfd instead of exiting to
//! userspace (KVM_IOEVENTFD). The rules (validation, matching, collisions) are
//! no_std (virt/ioeventfd.rs); this is the eventfd and the bus device.

use core::ptr::NonNull;
use kernel::ffi::c_void;
use kernel::prelude::*;
use kernel::sync::Arc;

use crate::abi::uapi;
use crate::glue;
use crate::iodev::eopnotsupp;
use crate::ioeventfd::{self, Invalid, Spec};
use crate::kvm_host::{IoeventfdEntry, KvmArch, KvmIoDevice, Vm};

// The no_std names are the uapi's bits (bindgen sees only the enum behind them).
const _: () = {
    assert!(ioeventfd::FLAG_DATAMATCH == 1 << uapi::kvm_ioeventfd_flag_nr_datamatch);
    assert!(ioeventfd::FLAG_PIO == 1 << uapi::kvm_ioeventfd_flag_nr_pio);
    assert!(ioeventfd::FLAG_DEASSIGN == 1 << uapi::kvm_ioeventfd_flag_nr_deassign);
    assert!(
        ioeventfd::FLAG_VIRTIO_CCW_NOTIFY == 1 << uapi::kvm_ioeventfd_flag_nr_virtio_ccw_notify
    );
    assert!(ioeventfd::FLAG_FAST_MMIO == 1 << uapi::kvm_ioeventfd_flag_nr_fast_mmio);
    assert!(ioeventfd::VALID_FLAG_MASK == (1 << uapi::kvm_ioeventfd_flag_nr_max) - 1);
};

/// A reference on an eventfd's context (upstream struct eventfd_ctx *).
pub(crate) struct EventfdCtx(NonNull<c_void>);

// SAFETY: an eventfd context is reference-counted and eventfd_signal() may be called
// from any context and thread.
unsafe impl Send for EventfdCtx {}
// SAFETY: as above.
unsafe impl Sync for EventfdCtx {}

impl EventfdCtx {
    /// eventfd_ctx_fdget(): -EBADF for a bad fd, -EINVAL for one that is not an eventfd.
    pub(crate) fn fdget(fd: i32) -> Result<Self> {
        let mut ctx = core::ptr::null_mut();
        // SAFETY: `ctx` is a valid out-pointer; the fd is looked up in the caller's table.
        let r = unsafe { glue::kvm_glue_eventfd_ctx_fdget(fd, &mut ctx) };
        if r != 0 {
            return Err(Error::from_errno(r));
        }
        NonNull::new(ctx).map(EventfdCtx).ok_or(EINVAL)
    }

    /// eventfd_signal(): adds 1 to the counter and wakes its readers.
    pub(crate) fn signal(&self) {
        // SAFETY: a context this handle holds a reference on.
        unsafe { glue::kvm_glue_eventfd_signal(self.0.as_ptr()) }
    }

    /// The context's address: which eventfd this is, while a reference is held.
    pub(crate) fn id(&self) -> usize {
        self.0.as_ptr() as usize
    }
}

impl Drop for EventfdCtx {
    fn drop(&mut self) {
        // SAFETY: drops the reference eventfd_ctx_fdget() took.
        unsafe { glue::kvm_glue_eventfd_ctx_put(self.0.as_ptr()) }
    }
}

/// struct _ioeventfd: the bus device.
struct Ioeventfd {
    spec: Spec,
    eventfd: EventfdCtx,
}

impl<A: KvmArch> KvmIoDevice<A> for Ioeventfd {
    /// Reads are not for ioeventfds: the next device, or userspace, gets them.
    fn read(&self, _vm: &Vm<A>, _addr: u64, _data: &mut [u8]) -> Result {
        Err(eopnotsupp())
    }

    /// ioeventfd_write(): a matching write signals the eventfd and is done.
    fn write(&self, _vm: &Vm<A>, addr: u64, data: &[u8]) -> Result {
        if !self.spec.in_range(addr, data) {
            return Err(eopnotsupp());
        }
        self.eventfd.signal();
        Ok(())
    }
}

impl<A: KvmArch> Vm<A> {
    /// kvm_ioeventfd(): KVM_IOEVENTFD, assign or deassign.
    pub(crate) fn kvm_ioeventfd(&self, args: &uapi::kvm_ioeventfd) -> Result<isize> {
        // Every refusal is -EINVAL upstream.
        let spec = ioeventfd::spec(args.addr, args.len, args.flags, args.datamatch)
            .map_err(|_: Invalid| EINVAL)?;
        let eventfd = EventfdCtx::fdget(args.fd)?;
        if args.flags & ioeventfd::FLAG_DEASSIGN != 0 {
            self.kvm_deassign_ioeventfd(&spec, &eventfd)?;
        } else {
            self.kvm_assign_ioeventfd(spec, eventfd)?;
        }
        Ok(0)
    }

    /// kvm_assign_ioeventfd_idx(): -EEXIST for a registration that would share
    /// writes with one already there.
    fn kvm_assign_ioeventfd(&self, spec: Spec, eventfd: EventfdCtx) -> Result {
        let mut list = self.ioeventfds.lock();
        if list.iter().any(|e| spec.collides(&e.spec)) {
            return Err(EEXIST);
        }
        list.reserve(1, GFP_KERNEL)?;
        let eventfd_id = eventfd.id();
        let dev: Arc<dyn KvmIoDevice<A>> = Arc::new(Ioeventfd { spec, eventfd }, GFP_KERNEL)?;
        self.kvm_io_bus_register_dev(spec.bus, spec.addr, spec.len, dev.clone())?;
        list.push(
            IoeventfdEntry {
                spec,
                eventfd_id,
                dev,
            },
            GFP_KERNEL,
        )?;
        Ok(())
    }

    /// kvm_deassign_ioeventfd_idx(): -ENOENT unless a registration with this
    /// eventfd, bus, address, length and match matches.
    fn kvm_deassign_ioeventfd(&self, spec: &Spec, eventfd: &EventfdCtx) -> Result {
        let mut list = self.ioeventfds.lock();
        let i = list
            .iter()
            .position(|e| e.eventfd_id == eventfd.id() && spec.deassigns(&e.spec))
            .ok_or(ENOENT)?;
        if let Some(e) = list.get(i) {
            self.kvm_io_bus_unregister_dev(e.spec.bus, &e.dev)?;
        }
        list.remove(i).map_err(|_| EINVAL)?;
        Ok(())
    }
}
