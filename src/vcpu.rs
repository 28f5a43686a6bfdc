// SPDX-License-Identifier: GPL-2.0-only
//! vCPUs, the generic part (upstream virt/kvm/kvm_main.c): the vCPU struct, its fd
//! (KVM_CREATE_VCPU's anon inode, the mmap of kvm_run and the PIO page, the
//! ioctls under the vCPU mutex) and the kvm_run page accessors. Everything x86
//! is the arch's ([`KvmArch`]): the state under the mutex, and what other
//! threads reach without it.

use core::sync::atomic::{AtomicU32, Ordering};
use kernel::ffi::{c_long, c_void};
use kernel::fs::file::{File, FileDescriptorReservation};
use kernel::prelude::*;
use kernel::str::CString;
use kernel::sync::aref::ARef;
use kernel::sync::lock::Guard;
use kernel::sync::{Arc, MutexGuard};
use kernel::{bindings, new_mutex};

use crate::abi::{ioctl, uapi};
use crate::halt_poll::{self, Params};
use crate::kvm_host::{KvmArch, PreemptNotifier, Vcpu, Vm, Waiter};
use crate::pages::Pages;
use crate::stats::vcpu as st_;
use crate::stats::{self, Counters, StatsSource};
use crate::{glue, statsfmt, user};

pub(crate) const PAGE_SIZE: usize = 4096;

/// kvm_run field offsets (the union starts at 32 on every ABI).
pub(crate) mod run {
    pub(crate) const REQUEST_INTERRUPT_WINDOW: usize = 0;
    pub(crate) const IMMEDIATE_EXIT: usize = 1;
    pub(crate) const EXIT_REASON: usize = 8;
    pub(crate) const U: usize = 32;
    pub(crate) const READY_FOR_INTERRUPT_INJECTION: usize = 12;
    pub(crate) const IF_FLAG: usize = 13;
    pub(crate) const CR8: usize = 16;
    pub(crate) const APIC_BASE: usize = 24;
    pub(crate) const VALID_REGS: usize = 288;
    pub(crate) const DIRTY_REGS: usize = 296;
    pub(crate) const SYNC_REGS: usize = 304;
    pub(crate) const SYNC_SREGS: usize = SYNC_REGS + size_of::<super::uapi::kvm_regs>();
    pub(crate) const SYNC_EVENTS: usize = SYNC_SREGS + size_of::<super::uapi::kvm_sregs>();
    use super::uapi::{kvm_run, kvm_sync_regs};
    use core::mem::offset_of;
    const _: () = assert!(offset_of!(kvm_run, ready_for_interrupt_injection) == 12);
    const _: () = assert!(offset_of!(kvm_run, if_flag) == IF_FLAG);
    const _: () =
        assert!(offset_of!(kvm_run, request_interrupt_window) == REQUEST_INTERRUPT_WINDOW);
    const _: () = assert!(offset_of!(kvm_run, cr8) == CR8);
    const _: () = assert!(offset_of!(kvm_run, apic_base) == APIC_BASE);
    const _: () = assert!(offset_of!(kvm_run, kvm_valid_regs) == VALID_REGS);
    const _: () = assert!(offset_of!(kvm_run, kvm_dirty_regs) == DIRTY_REGS);
    const _: () = assert!(offset_of!(kvm_run, s) == SYNC_REGS);
    const _: () = assert!(SYNC_EVENTS - SYNC_REGS == offset_of!(kvm_sync_regs, events));
    const _: () = assert!(core::mem::offset_of!(super::uapi::kvm_run, exit_reason) == EXIT_REASON);
    const _: () =
        assert!(core::mem::offset_of!(super::uapi::kvm_run, immediate_exit) == IMMEDIATE_EXIT);
    const _: () = assert!(core::mem::offset_of!(super::uapi::kvm_run, __bindgen_anon_1) == U);
}

impl<A: KvmArch> Vcpu<A> {
    /// kvm_vm_ioctl_create_vcpu()'s allocation: the generic pages and waiter, and
    /// the arch state (kvm_arch_vcpu_create()). Called with kvm->lock held.
    pub(crate) fn new(vm: &Vm<A>, id: u32) -> Result<Arc<Self>> {
        let (st, shared) = A::vcpu_create(vm, id)?;
        Arc::pin_init(
            try_pin_init!(Vcpu {
                id,
                run: Pages::new(PAGE_SIZE)?,
                pio: Pages::new(PAGE_SIZE)?,
                waiter: Waiter::new()?,
                preempt_notifier: PreemptNotifier::new()?,
                stats: Counters::new(),
                halt_poll_ns: AtomicU32::new(0),
                arch <- shared,
                state <- new_mutex!(st, "vcpu->mutex"),
            }),
            GFP_KERNEL,
        )
    }

    /// The vCPU mutex, taken killable as upstream (kvm_vcpu_ioctl()): a task that
    /// waits for a vCPU busy in KVM_RUN can still be killed (-EINTR).
    fn lock_killable(&self) -> Result<MutexGuard<'_, A::VcpuArch>> {
        // `Lock` is `#[repr(C)]` with the kernel mutex as its first field.
        let m = core::ptr::from_ref(&self.state)
            .cast::<bindings::mutex>()
            .cast_mut();
        // SAFETY: `m` is the initialized mutex of `self.state` (see above).
        if unsafe { glue::kvm_glue_mutex_lock_killable(m.cast()) } != 0 {
            return Err(EINTR);
        }
        // SAFETY: the mutex was just acquired by this task.
        Ok(unsafe { Guard::new(&self.state, ()) })
    }

    /// kvm_vcpu_ioctl(): the owner check, the vCPU mutex, KVM_RUN, and the arch
    /// ioctls.
    fn kvm_vcpu_ioctl(&self, vm: &Vm<A>, cmd: u32, arg: usize) -> Result<isize> {
        vm.check_owner()?;
        let mut st = self.lock_killable()?;
        self.vcpu_load();
        let r = match cmd {
            ioctl::KVM_RUN if arg != 0 => Err(EINVAL),
            ioctl::KVM_RUN => A::vcpu_ioctl_run(self, vm, &mut st),
            _ => A::vcpu_ioctl(self, vm, &mut st, cmd, arg),
        };
        self.vcpu_put();
        r
    }

    /// vcpu_load(): the arch's view of the CPU this task runs on, kept by the
    /// preempt notifier until vcpu_put(). Under the vCPU mutex.
    fn vcpu_load(&self) {
        // SAFETY: our unregistered notifier (the mutex holder pairs load/put); `self` outlives it.
        unsafe {
            glue::kvm_glue_vcpu_load(self.preempt_notifier.0, core::ptr::from_ref(self).cast())
        }
    }

    /// vcpu_put(): undoes vcpu_load().
    fn vcpu_put(&self) {
        // SAFETY: registered by vcpu_load() of this ioctl.
        unsafe { glue::kvm_glue_vcpu_put(self.preempt_notifier.0) }
    }

    /// The preempt notifier's sched_in (upstream kvm_sched_in()), and vcpu_load()'s.
    pub(crate) fn kvm_sched_in(&self, cpu: u32) {
        A::vcpu_load(self, cpu);
    }

    /// The preempt notifier's sched_out (upstream kvm_sched_out()), and vcpu_put()'s.
    pub(crate) fn kvm_sched_out(&self) {
        A::vcpu_put(self);
    }

    pub(crate) fn run_ptr(&self, off: usize) -> *mut u8 {
        // Callers pass offsets inside the page (constants below PAGE_SIZE).
        self.run.as_ptr().wrapping_add(off % PAGE_SIZE)
    }

    pub(crate) fn run_write<T: Copy>(&self, off: usize, v: T) {
        // SAFETY: inside the kvm_run page (run_ptr), naturally aligned per the ABI; userspace may access it concurrently, hence volatile.
        unsafe { self.run_ptr(off).cast::<T>().write_volatile(v) }
    }

    pub(crate) fn run_read_u8(&self, off: usize) -> u8 {
        // SAFETY: as run_write.
        unsafe { self.run_ptr(off).read_volatile() }
    }

    /// A `T` inside the kvm_run page (offsets are constants of `run`, naturally
    /// aligned and ending inside the page).
    pub(crate) fn run_read<T: Copy>(&self, off: usize) -> T {
        // SAFETY: as run_write; T is a plain uapi type for which any bytes are valid.
        unsafe { self.run_ptr(off).cast::<T>().read_volatile() }
    }

    pub(crate) fn set_exit(&self, reason: u32) {
        self.run_write(run::EXIT_REASON, reason);
    }

    pub(crate) fn pio_data(&self) -> *mut u8 {
        self.pio.as_ptr()
    }
}

/// Both references a vCPU fd holds.
struct VcpuFile<A: KvmArch> {
    vm: Arc<Vm<A>>,
    vcpu: Arc<Vcpu<A>>,
}

/// A vCPU's statistics for its stats file, which holds the VM too (as upstream's
/// holds a reference on the kvm).
struct VcpuStats<A: KvmArch> {
    _vm: Arc<Vm<A>>,
    vcpu: Arc<Vcpu<A>>,
}

impl<A: KvmArch> StatsSource for VcpuStats<A> {
    fn read_stats(&self, id: &str, start: u64, out: &mut [u8]) -> usize {
        statsfmt::read(
            id,
            &stats::vcpu::DESCS,
            &self.vcpu.stats.snapshot(),
            start,
            out,
        )
    }
}

/// The file of a new vCPU (upstream create_vcpu_fd()), not installed yet: the
/// caller installs it into `fd` once nothing else can fail.
pub(crate) struct NewVcpuFile {
    fd: FileDescriptorReservation,
    file: ARef<File>,
}

impl NewVcpuFile {
    pub(crate) fn new<A: KvmArch>(vm: Arc<Vm<A>>, vcpu: Arc<Vcpu<A>>) -> Result<Self> {
        let id = vcpu.id;
        let fd = FileDescriptorReservation::get_unused_fd_flags(bindings::O_CLOEXEC)?;
        let f = KBox::into_raw(KBox::new(VcpuFile { vm, vcpu }, GFP_KERNEL)?);
        let mut file = core::ptr::null_mut();
        // SAFETY: on success the file owns `f` (see kvm_vcpu_release).
        let r = unsafe { glue::kvm_glue_vcpu_file(f.cast(), id, &mut file) };
        let Some(file) = core::ptr::NonNull::new(file.cast::<File>()).filter(|_| r == 0) else {
            // SAFETY: not handed over.
            drop(unsafe { KBox::from_raw(f) });
            return Err(Error::from_errno(r));
        };
        // SAFETY: a new file whose one reference anon_inode_getfile() gave us; `File` wraps `struct file` transparently.
        let file = unsafe { ARef::from_raw(file) };
        Ok(NewVcpuFile { fd, file })
    }

    /// Makes the fd visible to userspace; returns it.
    pub(crate) fn install(self) -> isize {
        let fd = self.fd.reserved_fd();
        self.fd.fd_install(self.file);
        fd as isize
    }
}

fn file<'a, A: KvmArch>(p: *mut c_void) -> &'a VcpuFile<A> {
    // SAFETY: private_data of a vCPU file, alive while its fops run.
    unsafe { &*p.cast_const().cast::<VcpuFile<A>>() }
}

/// `unlocked_ioctl` of a vCPU fd.
pub(crate) fn kvm_vcpu_ioctl<A: KvmArch>(p: *mut c_void, cmd: u32, arg: usize) -> c_long {
    let f = file::<A>(p);
    if cmd == ioctl::KVM_GET_STATS_FD {
        // Needs the references, not the vCPU lock.
        let r = f.vm.check_owner().and_then(|()| {
            let id = CString::try_from_fmt(fmt!("kvm-{}/vcpu-{}", f.vm.pid, f.vcpu.id))?;
            let src: KBox<dyn StatsSource> = KBox::new(
                VcpuStats {
                    _vm: f.vm.clone(),
                    vcpu: f.vcpu.clone(),
                },
                GFP_KERNEL,
            )?;
            stats::stats_fd(id, src, c"kvm-vcpu-stats")
        });
        return user::ioctl_ret(r);
    }
    user::ioctl_ret(f.vcpu.kvm_vcpu_ioctl(&f.vm, cmd, arg))
}

/// `compat_ioctl` of a vCPU fd (kvm_vcpu_compat_ioctl()). Upstream converts only
/// KVM_SET_SIGNAL_MASK's compat sigset, which kvm-rs does not implement for any
/// caller (-EINVAL either way); every other vCPU ioctl has the same layout for
/// 32-bit callers.
pub(crate) fn kvm_vcpu_compat_ioctl<A: KvmArch>(p: *mut c_void, cmd: u32, arg: usize) -> c_long {
    if cmd == ioctl::KVM_SET_SIGNAL_MASK {
        return EINVAL.to_errno() as c_long;
    }
    kvm_vcpu_ioctl::<A>(p, cmd, arg)
}

/// `release` of a vCPU fd.
pub(crate) fn kvm_vcpu_release<A: KvmArch>(p: *mut c_void) {
    // SAFETY: handed to the file by NewVcpuFile::new(); release runs once.
    drop(unsafe { KBox::from_raw(p.cast::<VcpuFile<A>>()) });
}

/// The page at `pgoff` of the vCPU mapping (struct page *), or null (SIGBUS).
pub(crate) fn kvm_vcpu_page<A: KvmArch>(p: *mut c_void, pgoff: usize) -> *mut c_void {
    let f = file::<A>(p);
    let v = &f.vcpu;
    let page = match pgoff as u32 {
        0 => v.run.as_ptr(),
        uapi::KVM_PIO_PAGE_OFFSET => v.pio.as_ptr(),
        // The VM's coalesced-MMIO ring, the same page through every vCPU.
        uapi::KVM_COALESCED_MMIO_PAGE_OFFSET => f.vm.coalesced_ring.as_ptr(),
        _ => return core::ptr::null_mut(),
    };
    // SAFETY: a page of this vCPU, in the direct map.
    unsafe { glue::kvm_glue_virt_to_page(page.cast()) }
}

/// The clock halt polling measures with (ktime_get()).
fn ktime_ns() -> u64 {
    // SAFETY: reads the monotonic clock; any context.
    unsafe { glue::kvm_glue_ktime_ns() }
}

/// The halt-polling module parameters: the bound, then how windows move.
fn halt_poll_params() -> (u32, Params) {
    let mut p = [0u32; 4];
    // SAFETY: fills the four-element array it is given.
    unsafe { glue::kvm_glue_halt_poll_params(p.as_mut_ptr()) };
    let [max, grow, grow_start, shrink] = p;
    (
        max,
        Params {
            grow,
            grow_start,
            shrink,
        },
    )
}

impl<A: KvmArch> Vcpu<A> {
    /// kvm_vcpu_block(): sleeps until poked (an interrupt, the LAPIC timer) or a
    /// signal is pending; whether it slept.
    pub(crate) fn kvm_vcpu_block(&self) -> bool {
        self.stats.set(st_::BLOCKING, 1);
        let waited = self.waiter.block();
        self.stats.set(st_::BLOCKING, 0);
        // Upstream counts the wakeup on the waker's side, when it found the vCPU
        // asleep (kvm_vcpu_wake_up()).
        if waited {
            self.stats.inc(st_::HALT_WAKEUP);
        }
        waited
    }

    /// kvm_vcpu_halt(): a halted vCPU first polls for a wake event for up to its
    /// halt_poll_ns (when `poll_allowed`: the guest has not turned polling off),
    /// then sleeps; the window is then grown or shrunk from how long the halt
    /// lasted (halt_poll.rs).
    pub(crate) fn kvm_vcpu_halt(&self, vm: &Vm<A>, poll_allowed: bool) {
        let (module_max, _) = halt_poll_params();
        let max = vm.kvm_max_halt_poll_ns(module_max);
        let window = self.halt_poll_ns.load(Ordering::Relaxed).min(max);
        let do_poll = poll_allowed && window != 0;
        let start = ktime_ns();
        let (mut cur, mut poll_end) = (start, start);
        let mut woken_polling = false;
        if do_poll {
            let stop = start.saturating_add(window.into());
            loop {
                if self.waiter.check_block() {
                    woken_polling = true;
                    break;
                }
                // SAFETY: a pause hint; any context.
                unsafe { glue::kvm_glue_cpu_relax() };
                cur = ktime_ns();
                poll_end = cur;
                // SAFETY: reads this CPU's run queue and this task's flags.
                if unsafe { glue::kvm_glue_can_poll() } == 0 || cur >= stop {
                    break;
                }
            }
        }
        let mut waited = false;
        if !woken_polling {
            waited = self.kvm_vcpu_block();
            cur = ktime_ns();
            if waited {
                self.stats
                    .add(st_::HALT_WAIT_NS, cur.saturating_sub(poll_end));
            }
        }
        // The whole halt, polling included.
        let halt_ns = cur.saturating_sub(start);
        if do_poll {
            // update_halt_poll_stats(): successful if the vCPU never slept.
            let poll_ns = poll_end.saturating_sub(start);
            self.stats.inc(st_::HALT_ATTEMPTED_POLL);
            if waited {
                self.stats.add(st_::HALT_POLL_FAIL_NS, poll_ns);
            } else {
                self.stats.inc(st_::HALT_SUCCESSFUL_POLL);
                self.stats.add(st_::HALT_POLL_SUCCESS_NS, poll_ns);
            }
        }
        if poll_allowed {
            // The bound again, in case it changed meanwhile.
            let (module_max, p) = halt_poll_params();
            let max = vm.kvm_max_halt_poll_ns(module_max);
            let next = halt_poll::adjust(window, halt_ns, max, p);
            self.halt_poll_ns.store(next, Ordering::Relaxed);
        }
    }
}
