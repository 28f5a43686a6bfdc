// SPDX-License-Identifier: GPL-2.0-only
//! The in-kernel PIT (upstream arch/x86/kvm/i8254.c): KVM_CREATE_PIT(2), its ports
//! on the PIO bus (0x40-0x43, and port 0x61 with KVM_PIT_SPEAKER_DUMMY), channel
//! 0's timer driving GSI 0 with upstream's tick reinjection, KVM_GET/SET_PIT(2) and
//! KVM_REINJECT_CONTROL. The 8254 itself is the no_std model (hw/pit.rs).
//!
//! Lock order: the VM's PIT slot (`vm.arch.pit`, only to take a reference), the
//! PIT's state, then the irqchip (the timer's injection, which starting or stopping
//! the timer waits for). The irqchip reaches the PIT only through [`PitShared`]'s
//! atomics (its ack and mask notifiers), never its state lock.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::ffi::c_void;
use kernel::new_mutex;
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};

use crate::abi::uapi;
use crate::arch::kvm_arch::X86;
use crate::arch::Vm;
use crate::glue;
use crate::hw::pit::{self, Channel, Pit, Reinject, TimerAction};
use crate::io_bus::Bus;
use crate::iodev::eopnotsupp;
use crate::kvm_host::KvmIoDevice;

/// What the timer interrupt, the injection work and the irqchip's notifiers share
/// (upstream's kvm_kpit_state atomics, its hrtimer and the kvm_pit worker).
pub(crate) struct PitShared {
    /// The VM: kvm_free_pit() stops the timer and its work before the VM goes.
    vm: *const Vm,
    reinject: Reinject,
    /// The glue's timer; set once right after allocation, freed in drop.
    timer: AtomicPtr<c_void>,
}

// SAFETY: the VM pointer is only dereferenced by the injection work, which
// kvm_free_pit() waits out before the VM is freed; the rest is atomics and the glue
// timer, whose calls are safe from any thread.
unsafe impl Send for PitShared {}
// SAFETY: as above.
unsafe impl Sync for PitShared {}

impl PitShared {
    fn timer(&self) -> *mut c_void {
        self.timer.load(Ordering::Acquire)
    }

    /// kvm_pit_ack_irq(): the guest acked GSI 0 (the PIC's INTA with auto-EOI or
    /// its EOI, or the IOAPIC pin's EOI); a tick still pending is injected next.
    pub(crate) fn kvm_pit_ack_irq(&self) {
        if self.reinject.ack() {
            // SAFETY: the timer lives as long as `self`.
            unsafe { glue::kvm_glue_pit_timer_queue(self.timer()) };
        }
    }

    /// pit_mask_notifier(): GSI 0 was unmasked; ticks missed while masked are
    /// dropped.
    pub(crate) fn pit_mask_notifier(&self, masked: bool) {
        if !masked {
            self.reinject.reset();
        }
    }
}

impl Drop for PitShared {
    fn drop(&mut self) {
        // SAFETY: our timer (or NULL); nothing uses it after this.
        unsafe { glue::kvm_glue_pit_timer_free(self.timer()) };
    }
}

/// pit_timer_fn(), in the timer's interrupt.
///
/// # Safety
/// `owner` is the [`PitShared`] the glue timer was created with.
unsafe extern "C" fn pit_timer_fired(owner: *mut c_void) {
    // SAFETY: `owner` is the PitShared the timer was created for; the timer is freed before it.
    let s = unsafe { &*owner.cast_const().cast::<PitShared>() };
    s.reinject.timer_fired();
}

/// pit_do_work(): a tick as an edge on GSI 0, unless the last one is not acked yet.
/// (Upstream also sends it to LAPICs whose LVT0 is in NMI mode, the NMI watchdog
/// through virtual wire; kvm-rs does not yet.)
///
/// # Safety
/// As [`pit_timer_fired`]; the VM outlives the work (kvm_free_pit() waits it out).
unsafe extern "C" fn pit_do_work(owner: *mut c_void) {
    // SAFETY: as in pit_timer_fired(); the work is waited out before it goes.
    let s = unsafe { &*owner.cast_const().cast::<PitShared>() };
    if !s.reinject.take_inject() {
        return;
    }
    // SAFETY: kvm_free_pit() waits this work out before the VM is freed.
    let vm = unsafe { &*s.vm };
    vm.kvm_set_irq_source(pit::GSI, pit::SOURCE_ID, true);
    vm.kvm_set_irq_source(pit::GSI, pit::SOURCE_ID, false);
}

/// struct kvm_pit.
#[pin_data]
pub(crate) struct KvmPit {
    #[pin]
    state: Mutex<Pit>,
    shared: Arc<PitShared>,
    /// The port devices, to unregister them again.
    devs: KVec<Arc<dyn KvmIoDevice<X86>>>,
}

fn now() -> u64 {
    // SAFETY: reads the monotonic clock.
    unsafe { glue::kvm_glue_ktime_ns() }
}

macro_rules! channel_copy {
    ($from:expr => $to:path) => {{
        let c = $from;
        $to {
            count: c.count,
            latched_count: c.latched_count,
            count_latched: c.count_latched,
            status_latched: c.status_latched,
            status: c.status,
            read_state: c.read_state,
            write_state: c.write_state,
            write_latch: c.write_latch,
            rw_mode: c.rw_mode,
            mode: c.mode,
            bcd: c.bcd,
            gate: c.gate,
            count_load_time: c.count_load_time,
        }
    }};
}

fn to_model(u: &[uapi::kvm_pit_channel_state; 3]) -> [Channel; 3] {
    [
        channel_copy!(u[0] => Channel),
        channel_copy!(u[1] => Channel),
        channel_copy!(u[2] => Channel),
    ]
}

fn to_uapi(c: &[Channel; 3]) -> [uapi::kvm_pit_channel_state; 3] {
    [
        channel_copy!(c[0] => uapi::kvm_pit_channel_state),
        channel_copy!(c[1] => uapi::kvm_pit_channel_state),
        channel_copy!(c[2] => uapi::kvm_pit_channel_state),
    ]
}

impl KvmPit {
    /// Carries out what the model asked of the timer (create_pit_timer() and
    /// destroy_pit_timer()), with the state lock held as upstream.
    fn timer_action(&self, a: TimerAction) {
        let t = self.shared.timer();
        match a {
            TimerAction::None => {}
            TimerAction::Start {
                first_ns,
                period_ns,
                periodic,
            } => {
                // SAFETY: our timer; the glue waits out a running injection first.
                unsafe { glue::kvm_glue_pit_timer_start(t, first_ns, period_ns, periodic.into()) };
                self.shared.reinject.reset();
            }
            // SAFETY: as above.
            TimerAction::Stop => unsafe { glue::kvm_glue_pit_timer_stop(t) },
        }
    }

    /// KVM_GET_PIT.
    pub(crate) fn get_pit(&self) -> uapi::kvm_pit_state {
        uapi::kvm_pit_state {
            channels: to_uapi(&self.state.lock().channels),
        }
    }

    /// KVM_SET_PIT (kvm_vm_ioctl_set_pit()).
    pub(crate) fn set_pit(&self, s: &uapi::kvm_pit_state) {
        let mut st = self.state.lock();
        let a = st.set_channels(&to_model(&s.channels), now());
        self.timer_action(a);
    }

    /// KVM_GET_PIT2: the reserved words read 0.
    pub(crate) fn get_pit2(&self) -> uapi::kvm_pit_state2 {
        let st = self.state.lock();
        uapi::kvm_pit_state2 {
            channels: to_uapi(&st.channels),
            flags: st.flags,
            ..Default::default()
        }
    }

    /// KVM_SET_PIT2 (kvm_vm_ioctl_set_pit2()): the flags as given.
    pub(crate) fn set_pit2(&self, s: &uapi::kvm_pit_state2) {
        let mut st = self.state.lock();
        let a = st.set_state2(&to_model(&s.channels), s.flags, now());
        self.timer_action(a);
    }

    /// kvm_pit_set_reinject(), under the state lock as KVM_REINJECT_CONTROL's:
    /// the ack and mask notifiers are registered with the irqchip while on.
    fn kvm_pit_set_reinject(&self, vm: &Vm, on: bool) {
        let _st = self.state.lock();
        if !self.shared.reinject.set(on) {
            return;
        }
        if let Some(chip) = (*vm.arch.irqchip.lock()).as_mut() {
            chip.set_pit_notifier(on.then(|| self.shared.clone()));
        }
    }

    /// KVM_REINJECT_CONTROL (kvm_vm_ioctl_reinject()).
    pub(crate) fn kvm_vm_ioctl_reinject(&self, vm: &Vm, c: &uapi::kvm_reinject_control) {
        self.kvm_pit_set_reinject(vm, c.pit_reinject != 0);
    }
}

/// The PIT's ports 0x40-0x43 (upstream pit_dev_ops).
struct PitDev;

/// Port 0x61 (upstream speaker_dev_ops).
struct SpeakerDev;

/// The VM's PIT, while it has one.
fn vm_pit(vm: &Vm) -> Result<Arc<KvmPit>> {
    (*vm.arch.pit.lock()).clone().ok_or_else(eopnotsupp)
}

/// Upstream copies an int: up to 4 bytes of the value, the rest 0.
fn put_int(data: &mut [u8], v: u8) {
    data.fill(0);
    if let Some(b) = data.first_mut() {
        *b = v;
    }
}

impl KvmIoDevice<X86> for PitDev {
    /// pit_ioport_read().
    fn read(&self, vm: &Vm, addr: u64, data: &mut [u8]) -> Result {
        let port = pit_port(addr)?;
        let pit = vm_pit(vm)?;
        let v = pit.state.lock().ioport_read(port, now());
        put_int(data, v);
        Ok(())
    }

    /// pit_ioport_write(): the low byte is what the PIT sees.
    fn write(&self, vm: &Vm, addr: u64, data: &[u8]) -> Result {
        let port = pit_port(addr)?;
        let pit = vm_pit(vm)?;
        let val = data.first().copied().unwrap_or(0);
        let mut st = pit.state.lock();
        let a = st.ioport_write(port, val, now());
        pit.timer_action(a);
        Ok(())
    }
}

/// pit_in_range().
fn pit_port(addr: u64) -> Result<u16> {
    let base = u64::from(pit::BASE_ADDRESS);
    if (base..base + u64::from(pit::MEM_LENGTH)).contains(&addr) {
        Ok(addr as u16)
    } else {
        Err(eopnotsupp())
    }
}

fn speaker_port(addr: u64) -> Result {
    if addr == u64::from(pit::SPEAKER_BASE_ADDRESS) {
        Ok(())
    } else {
        Err(eopnotsupp())
    }
}

impl KvmIoDevice<X86> for SpeakerDev {
    fn read(&self, vm: &Vm, addr: u64, data: &mut [u8]) -> Result {
        speaker_port(addr)?;
        let pit = vm_pit(vm)?;
        let v = pit.state.lock().speaker_read(now());
        put_int(data, v);
        Ok(())
    }

    fn write(&self, vm: &Vm, addr: u64, data: &[u8]) -> Result {
        speaker_port(addr)?;
        let pit = vm_pit(vm)?;
        let val = data.first().copied().unwrap_or(0);
        pit.state.lock().speaker_write(val, now());
        Ok(())
    }
}

impl Vm {
    /// KVM_CREATE_PIT(2) (kvm_create_pit()): -EEXIST if there is one, -ENOENT
    /// without an in-kernel PIC. Any flags are taken, as upstream; only
    /// KVM_PIT_SPEAKER_DUMMY means anything (a port 0x61 device).
    pub(crate) fn kvm_create_pit(&self, flags: u32) -> Result<isize> {
        let mut slot = self.arch.pit.lock();
        if slot.is_some() {
            return Err(EEXIST);
        }
        if !self.arch.pic_in_kernel() {
            return Err(ENOENT);
        }
        let shared = Arc::new(
            PitShared {
                vm: core::ptr::from_ref(self),
                reinject: Reinject::new(),
                timer: AtomicPtr::new(core::ptr::null_mut()),
            },
            GFP_KERNEL,
        )?;
        let owner = Arc::as_ptr(&shared).cast_mut().cast::<c_void>();
        // SAFETY: the callbacks take `owner`, which frees the timer before it goes.
        let t = unsafe {
            glue::kvm_glue_pit_timer_new(Some(pit_timer_fired), Some(pit_do_work), owner)
        };
        let t = NonNull::new(t).ok_or(ENOMEM)?;
        shared.timer.store(t.as_ptr(), Ordering::Release);

        let mut devs = KVec::with_capacity(2, GFP_KERNEL)?;
        let dev: Arc<dyn KvmIoDevice<X86>> = Arc::new(PitDev, GFP_KERNEL)?;
        devs.push(dev, GFP_KERNEL)?;
        if flags & pit::SPEAKER_DUMMY != 0 {
            let dev: Arc<dyn KvmIoDevice<X86>> = Arc::new(SpeakerDev, GFP_KERNEL)?;
            devs.push(dev, GFP_KERNEL)?;
        }
        let pit = Arc::pin_init(
            try_pin_init!(KvmPit {
                state <- new_mutex!(Pit::new(now()), "kvm_kpit_state->lock"),
                shared,
                devs,
            }),
            GFP_KERNEL,
        )?;
        pit.kvm_pit_set_reinject(self, true);
        let ranges = [
            (pit::BASE_ADDRESS, pit::MEM_LENGTH),
            (pit::SPEAKER_BASE_ADDRESS, pit::SPEAKER_MEM_LENGTH),
        ];
        let mut r = Ok(());
        for (dev, (port, len)) in pit.devs.iter().zip(ranges) {
            r = r.and_then(|()| {
                self.kvm_io_bus_register_dev(Bus::Pio, port.into(), len, dev.clone())
            });
        }
        if let Err(e) = r {
            for dev in pit.devs.iter() {
                let _ = self.kvm_io_bus_unregister_dev(Bus::Pio, dev);
            }
            pit.kvm_pit_set_reinject(self, false);
            return Err(e);
        }
        *slot = Some(pit);
        Ok(0)
    }

    /// The PIT for an ioctl: -ENXIO without one.
    pub(crate) fn vpit(&self) -> Result<Arc<KvmPit>> {
        (*self.arch.pit.lock()).clone().ok_or(ENXIO)
    }

    /// kvm_free_pit(), when the VM is destroyed: off the buses and the irqchip, the
    /// timer and its work stopped before the VM they point at goes.
    pub(crate) fn kvm_free_pit(&self) {
        let Some(pit) = self.arch.pit.lock().take() else {
            return;
        };
        for dev in pit.devs.iter() {
            let _ = self.kvm_io_bus_unregister_dev(Bus::Pio, dev);
        }
        pit.kvm_pit_set_reinject(self, false);
        // SAFETY: our timer; stopping it waits out its injection.
        unsafe { glue::kvm_glue_pit_timer_stop(pit.shared.timer()) };
        drop(pit);
    }
}
