// SPDX-License-Identifier: GPL-2.0-only
//! Per-CPU hardware virtualization for the vendor modules: run a check on every CPU,
//! and keep SVM/VMX enabled on every CPU (through the core kernel's
//! x86_virt_get_ref(), which sets EFER.SVME or does VMXON) for the module's lifetime.
//!
//! CPUs onlined after load are not enabled yet (upstream uses a cpuhp callback); the
//! test VMs do not hotplug CPUs.

use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use kernel::prelude::*;

use super::glue;

/// Runs `f(cpu)` on every online CPU with interrupts disabled and waits for all.
pub(crate) fn on_each_cpu<F: Fn(usize) + Sync>(f: &F) {
    extern "C" fn trampoline<F: Fn(usize) + Sync>(data: *mut c_void) {
        // SAFETY: `data` is the `&F` passed below, alive until on_each_cpu returns.
        let f = unsafe { &*data.cast_const().cast::<F>() };
        f(kernel::cpu::CpuId::current().as_u32() as usize)
    }
    // SAFETY: on_each_cpu(wait=1) returns after every call, so `f` outlives them.
    unsafe {
        glue::kvm_glue_on_each_cpu(
            Some(trampoline::<F>),
            core::ptr::from_ref(f).cast_mut().cast(),
        )
    }
}

/// Number of possible CPU ids (per-CPU arrays are indexed by them).
pub(crate) fn nr_cpu_ids() -> usize {
    kernel::cpu::nr_cpu_ids() as usize
}

/// CPUID on the calling CPU: [eax, ebx, ecx, edx].
pub(crate) fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let mut r = [0u32; 4];
    // SAFETY: `r` is a valid 4-element array for the glue to fill.
    unsafe { glue::kvm_glue_cpuid(leaf, subleaf, r.as_mut_ptr()) };
    r
}

/// RDMSR with exception fixup: `None` if the MSR faults.
pub(crate) fn rdmsr(msr: u32) -> Option<u64> {
    let mut v = 0u64;
    // SAFETY: `v` is a valid out-pointer; a faulting MSR is caught by the fixup.
    (unsafe { glue::kvm_glue_rdmsr_safe(msr, &mut v) } == 0).then_some(v)
}

/// WRMSR with exception fixup.
#[allow(dead_code)] // kvm-intel writes no MSR yet.
pub(crate) fn wrmsr(msr: u32, val: u64) -> Result {
    // SAFETY: a faulting write is caught by the exception fixup.
    match unsafe { glue::kvm_glue_wrmsr_safe(msr, val) } {
        0 => Ok(()),
        _ => Err(EIO),
    }
}

/// Runs `check` on every CPU; returns the first CPU that failed and its error.
pub(crate) fn check_all<E: Copy + Send>(
    check: impl Fn() -> Result<(), E> + Sync,
) -> Result<(), (usize, E)> {
    struct First<E> {
        cpu: AtomicU32,
        err: UnsafeCell<Option<E>>,
    }
    // SAFETY: `err` is written only by the one CPU that wins the `cpu` exchange, and
    // read only after on_each_cpu() has waited for every CPU.
    unsafe impl<E: Send> Sync for First<E> {}
    impl<E> First<E> {
        fn record(&self, cpu: usize, e: E) {
            let won = self
                .cpu
                .compare_exchange(u32::MAX, cpu as u32, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if won {
                // SAFETY: we won the exchange, so no other CPU writes `err`.
                unsafe { *self.err.get() = Some(e) };
            }
        }
    }
    let first = First {
        cpu: AtomicU32::new(u32::MAX),
        err: UnsafeCell::new(None),
    };
    on_each_cpu(&|cpu| {
        if let Err(e) = check() {
            first.record(cpu, e);
        }
    });
    // SAFETY: every writer has finished (on_each_cpu waited).
    match (first.cpu.load(Ordering::Acquire), unsafe {
        *first.err.get()
    }) {
        (cpu, Some(e)) => Err((cpu as usize, e)),
        _ => Ok(()),
    }
}

/// `-EOPNOTSUPP`, what upstream's vendor modules return on a CPU without SVM/VMX
/// (the kernel crate has no constant for it).
pub(crate) fn eopnotsupp() -> Error {
    Error::from_errno(-(kernel::bindings::EOPNOTSUPP as i32))
}

/// Vendor-specific per-CPU state set up after, and torn down before, the core kernel
/// enables/disables SVM or VMX on that CPU.
pub(crate) trait PerCpu: Sync {
    /// Runs on the CPU, interrupts off.
    fn enable(&self) -> Result;
    /// Runs on the CPU, interrupts off; only after a successful `enable`.
    fn disable(&self);
}

/// SVM or VMX enabled on every online CPU; disabled again on drop.
pub(crate) struct EnabledCpus<T: PerCpu> {
    virt: glue::kvm_glue_virt,
    state: KVec<T>,
    enabled: KVec<AtomicBool>,
}

impl<T: PerCpu> EnabledCpus<T> {
    /// `state` has one entry per CPU id (see [`nr_cpu_ids`]).
    pub(crate) fn enable(virt: glue::kvm_glue_virt, state: KVec<T>) -> Result<Self> {
        let mut enabled = KVec::with_capacity(state.len(), GFP_KERNEL)?;
        for _ in 0..state.len() {
            enabled.push(AtomicBool::new(false), GFP_KERNEL)?;
        }
        let this = EnabledCpus {
            virt,
            state,
            enabled,
        };
        let err = AtomicI32::new(0);
        on_each_cpu(&|cpu| {
            if let Err(e) = this.enable_cpu(cpu) {
                err.store(e.to_errno(), Ordering::Release);
            }
        });
        match err.load(Ordering::Acquire) {
            0 => Ok(this),
            // Dropping `this` disables the CPUs that did enable.
            e => Err(Error::from_errno(e)),
        }
    }

    #[allow(dead_code)] // kvm-amd reads its per-CPU state; kvm-intel has none yet.
    pub(crate) fn state(&self) -> &[T] {
        &self.state
    }

    fn enable_cpu(&self, cpu: usize) -> Result {
        let (Some(state), Some(flag)) = (self.state.get(cpu), self.enabled.get(cpu)) else {
            return Err(EINVAL);
        };
        // SAFETY: on the target CPU with interrupts off, as x86_virt_get_ref() wants.
        let r = unsafe { glue::kvm_glue_virt_get_ref(self.virt) };
        if r != 0 {
            return Err(Error::from_errno(r));
        }
        if let Err(e) = state.enable() {
            // SAFETY: balances the get_ref above on the same CPU.
            unsafe { glue::kvm_glue_virt_put_ref(self.virt) };
            return Err(e);
        }
        flag.store(true, Ordering::Release);
        Ok(())
    }

    fn disable_cpu(&self, cpu: usize) {
        if let (Some(state), Some(flag)) = (self.state.get(cpu), self.enabled.get(cpu)) {
            if flag.swap(false, Ordering::AcqRel) {
                state.disable();
                // SAFETY: this CPU took a reference in enable_cpu().
                unsafe { glue::kvm_glue_virt_put_ref(self.virt) };
            }
        }
    }
}

impl<T: PerCpu> Drop for EnabledCpus<T> {
    fn drop(&mut self) {
        on_each_cpu(&|cpu| self.disable_cpu(cpu));
    }
}
