// SPDX-License-Identifier: GPL-2.0-only
//! eventfd-backed devices (upstream virt/kvm/eventfd.c): ioeventfd, a guest write
//! to a PIO port or MMIO address that signals an eventfd instead of exiting to
//! userspace (KVM_IOEVENTFD), and irqfd, an eventfd whose signal is an interrupt
//! (KVM_IRQFD), with resampling for level-triggered lines. The ioeventfd rules
//! (validation, matching, collisions) are no_std (virt/ioeventfd.rs); this is the
//! eventfd, the bus device and the irqfds.

use core::ptr::NonNull;
use kernel::ffi::c_void;
use kernel::new_mutex;
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};

use crate::abi::uapi;
use crate::glue;
use crate::iodev::eopnotsupp;
use crate::ioeventfd::{self, Invalid, Spec};
use crate::kvm_host::{IoeventfdEntry, IrqSource, KvmArch, KvmIoDevice, Vm};

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

/// What an irqfd's injection needs (upstream irqfd->kvm, ->gsi and whether it has a
/// resampler), at a stable address the glue calls back with.
struct IrqfdTarget<A: KvmArch> {
    /// The VM: it outlives its irqfds, which its fd's release frees
    /// (kvm_irqfd_release()) before it drops its reference.
    vm: *const Vm<A>,
    gsi: u32,
    resample: bool,
}

/// struct kvm_kernel_irqfd_resampler: the resampling irqfds of one GSI share one
/// ack notifier and one level (KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID) on that GSI. An
/// irqfd asserts it; the guest's EOI (or PIC ack) of the GSI deasserts it and
/// signals every resamplefd, so userspace re-triggers the irqfd if its device
/// still wants the line.
#[pin_data]
pub(crate) struct IrqfdResampler {
    pub(crate) gsi: u32,
    /// The irqfds' resamplefds, keyed by their irqfd (upstream resampler->list).
    #[pin]
    fds: Mutex<KVec<(usize, EventfdCtx)>>,
}

impl IrqfdResampler {
    /// irqfd_resampler_notify(): every resamplefd of the GSI is signalled. The
    /// arch's ack notifier calls this after deasserting the resampler's level.
    pub(crate) fn notify(&self) {
        for (_, fd) in self.fds.lock().iter() {
            fd.signal();
        }
    }
}

/// An irqfd (upstream struct kvm_kernel_irqfd): a signal on the eventfd is an edge
/// on the GSI, or, with a resampler, asserts the GSI until the guest acks it. The
/// glue hooks the eventfd's wait queue and injects from a work item; a hang-up of
/// the eventfd leaves the irqfd in place until KVM_IRQFD's deassign or the VM fd's
/// release (the glue holds the eventfd).
pub(crate) struct Irqfd<A: KvmArch> {
    glue: NonNull<c_void>,
    /// The eventfd context's address (the hook holds the reference).
    eventfd_id: usize,
    gsi: u32,
    resampler: Option<Arc<IrqfdResampler>>,
    target: KBox<IrqfdTarget<A>>,
}

// SAFETY: the glue handle is only freed, which any thread may do; the target's VM
// pointer is only dereferenced by the injection and the drop, which the VM outlives.
unsafe impl<A: KvmArch> Send for Irqfd<A> {}

impl<A: KvmArch> Irqfd<A> {
    /// This irqfd's key in its resampler's list: its target's address.
    fn key(&self) -> usize {
        core::ptr::from_ref(&*self.target) as usize
    }
}

impl<A: KvmArch> Drop for Irqfd<A> {
    fn drop(&mut self) {
        // Freeing waits for a running injection: the target is unused after this.
        // SAFETY: made by kvm_glue_irqfd_new(), freed once.
        unsafe { glue::kvm_glue_irqfd_free(self.glue.as_ptr()) }
        if let Some(r) = self.resampler.take() {
            // SAFETY: the VM outlives its irqfds (see IrqfdTarget).
            let vm = unsafe { &*self.target.vm };
            vm.irqfd_resampler_shutdown(&r, self.key());
        }
    }
}

/// irqfd_inject(): the work item's call, in process context.
///
/// # Safety
/// Called by the glue only, with the `owner` kvm_irqfd_assign() registered.
unsafe extern "C" fn irqfd_inject<A: KvmArch>(owner: *mut c_void) {
    // The target lives until kvm_glue_irqfd_free() has waited for this call, and
    // its VM outlives the irqfd (see IrqfdTarget).
    // SAFETY: `owner` is the irqfd's target.
    let t = unsafe { &*owner.cast_const().cast::<IrqfdTarget<A>>() };
    // SAFETY: as above.
    let vm = unsafe { &*t.vm };
    if t.resample {
        A::kvm_set_irq(vm, IrqSource::IrqfdResample, t.gsi, true);
    } else {
        A::kvm_set_irq(vm, IrqSource::Userspace, t.gsi, true);
        A::kvm_set_irq(vm, IrqSource::Userspace, t.gsi, false);
    }
}

const IRQFD_DEASSIGN: u32 = uapi::KVM_IRQFD_FLAG_DEASSIGN;
const IRQFD_RESAMPLE: u32 = uapi::KVM_IRQFD_FLAG_RESAMPLE;

impl<A: KvmArch> Vm<A> {
    /// KVM_IRQFD (kvm_irqfd()).
    pub(crate) fn kvm_irqfd(&self, args: &uapi::kvm_irqfd) -> Result<isize> {
        if args.flags & !(IRQFD_DEASSIGN | IRQFD_RESAMPLE) != 0 {
            return Err(EINVAL);
        }
        if args.flags & IRQFD_DEASSIGN != 0 {
            return self.kvm_irqfd_deassign(args);
        }
        self.kvm_irqfd_assign(args)
    }

    /// kvm_irqfd_assign(): -EINVAL without the in-kernel irqchip (the full one for
    /// a resampling irqfd), -EBADF/-EINVAL for a bad eventfd or resamplefd, -EBUSY
    /// for an eventfd that already is an irqfd.
    fn kvm_irqfd_assign(&self, args: &uapi::kvm_irqfd) -> Result<isize> {
        let resample = args.flags & IRQFD_RESAMPLE != 0;
        if !A::kvm_arch_irqfd_allowed(self, resample) {
            return Err(EINVAL);
        }
        let target = KBox::new(
            IrqfdTarget {
                vm: core::ptr::from_ref(self),
                gsi: args.gsi,
                resample,
            },
            GFP_KERNEL,
        )?;
        let key = core::ptr::from_ref(&*target) as usize;
        // The resampler is in place before the hook can inject (an eventfd
        // signalled before the assign injects at once).
        let resampler = if resample {
            let fd = EventfdCtx::fdget(args.resamplefd as i32)?;
            Some(self.irqfd_resampler_add(args.gsi, key, fd)?)
        } else {
            None
        };
        let r = self.irqfd_hook(args, target, resampler.clone());
        if r.is_err() {
            if let Some(res) = &resampler {
                self.irqfd_resampler_shutdown(res, key);
            }
        }
        r
    }

    /// The eventfd's hook and the irqfd in the list; on failure nothing of it
    /// remains but the resampler entry, which the caller removes.
    fn irqfd_hook(
        &self,
        args: &uapi::kvm_irqfd,
        target: KBox<IrqfdTarget<A>>,
        resampler: Option<Arc<IrqfdResampler>>,
    ) -> Result<isize> {
        let mut list = self.irqfds.lock();
        list.reserve(1, GFP_KERNEL)?;
        let (mut handle, mut ctx) = (core::ptr::null_mut(), core::ptr::null_mut());
        let owner = core::ptr::from_ref(&*target).cast_mut().cast::<c_void>();
        // The irqfd owns `owner` and the handle, and frees the handle first.
        // SAFETY: `owner` stays valid while the handle lives; valid out-pointers.
        let r = unsafe {
            glue::kvm_glue_irqfd_new(
                args.fd as i32,
                Some(irqfd_inject::<A>),
                owner,
                &mut handle,
                &mut ctx,
            )
        };
        if r != 0 {
            return Err(Error::from_errno(r));
        }
        let glue = NonNull::new(handle).ok_or(ENOMEM)?;
        list.push_within_capacity(Irqfd {
            glue,
            eventfd_id: ctx as usize,
            gsi: args.gsi,
            resampler,
            target,
        })
        .map_err(|_| ENOMEM)?;
        Ok(0)
    }

    /// The resampler of `gsi` (made, with its ack notifier, if it is the GSI's
    /// first resampling irqfd) with `fd` added as irqfd `key`'s resamplefd.
    fn irqfd_resampler_add(
        &self,
        gsi: u32,
        key: usize,
        fd: EventfdCtx,
    ) -> Result<Arc<IrqfdResampler>> {
        let mut all = self.resamplers.lock();
        let r = match all.iter().find(|r| r.gsi == gsi) {
            Some(r) => r.clone(),
            None => {
                all.reserve(1, GFP_KERNEL)?;
                let r = Arc::pin_init(
                    pin_init!(IrqfdResampler {
                        gsi,
                        fds <- new_mutex!(KVec::new(), "resampler->list"),
                    }),
                    GFP_KERNEL,
                )?;
                A::kvm_register_irq_ack_notifier(self, r.clone())?;
                all.push_within_capacity(r.clone()).map_err(|_| ENOMEM)?;
                r
            }
        };
        let pushed = r.fds.lock().push((key, fd), GFP_KERNEL);
        if let Err(e) = pushed {
            drop(all);
            self.irqfd_resampler_shutdown(&r, key);
            return Err(e.into());
        }
        Ok(r)
    }

    /// irqfd_resampler_shutdown(): irqfd `key` leaves its resampler; the last one
    /// out unregisters the ack notifier and deasserts the resampler's level.
    fn irqfd_resampler_shutdown(&self, r: &Arc<IrqfdResampler>, key: usize) {
        let mut all = self.resamplers.lock();
        let empty = {
            let mut fds = r.fds.lock();
            if let Some(i) = fds.iter().position(|(k, _)| *k == key) {
                let _ = fds.remove(i);
            }
            fds.is_empty()
        };
        if !empty {
            return;
        }
        if let Some(i) = all.iter().position(|x| Arc::ptr_eq(x, r)) {
            let _ = all.remove(i);
        }
        A::kvm_unregister_irq_ack_notifier(self, r);
    }

    /// kvm_irqfd_deassign(): every irqfd of this eventfd and GSI goes; none
    /// injects once this returns.
    fn kvm_irqfd_deassign(&self, args: &uapi::kvm_irqfd) -> Result<isize> {
        let e = EventfdCtx::fdget(args.fd as i32)?;
        let mut gone = KVec::new();
        {
            let mut list = self.irqfds.lock();
            let mut i = 0;
            while i < list.len() {
                let hit = list
                    .get(i)
                    .is_some_and(|f| f.eventfd_id == e.id() && f.gsi == args.gsi);
                if hit {
                    // Room for it was reserved; a failed push only frees it here.
                    let f = list.remove(i)?;
                    let _ = gone.push(f, GFP_KERNEL);
                } else {
                    i += 1;
                }
            }
        }
        // Freed outside the lock: freeing waits for a running injection.
        drop(gone);
        Ok(0)
    }

    /// kvm_irqfd_release(): the VM fd is closing; every irqfd goes.
    pub(crate) fn kvm_irqfd_release(&self) {
        let all = core::mem::replace(&mut *self.irqfds.lock(), KVec::new());
        drop(all);
    }
}
