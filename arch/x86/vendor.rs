// SPDX-License-Identifier: GPL-2.0-only
//! The vendor side of registration with kvm.ko (compiled into kvm-amd and kvm-intel):
//! the [`KvmX86Vendor`] trait each implements, the table built from it, and [`Registration`],
//! which ties virtualization on every CPU to being registered.

use core::ffi::{c_int, c_void, CStr};
use kernel::prelude::*;

use super::cpus::{self, EnabledCpus, PerCpu};
use super::glue;
use kernel::sync::Arc;

use super::kvm_x86_ops::{
    kvm_core_ops_list, kvm_x86_ops_list, recv_ptr, FfiRet, GuestRegs, KvmCoreVcpu, KvmX86Ops, Next,
};
use super::spte::SpteMasks;
use super::uapi;

/// Implemented by each vendor module: upstream's `kvm_x86_ops` as a trait, one
/// method per entry of [`kvm_x86_ops_list!`] (the first argument the vendor vCPU,
/// shared for `ref` entries, exclusive for `mut` ones; its load state for `load`).
macro_rules! define_vendor_trait {
    ($($(#[$doc:meta])* fn $name:ident($recv:ident $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        pub(crate) trait KvmX86Vendor {
            /// Module name ("kvm_amd", "kvm_intel").
            const NAME: &'static CStr;
            /// Bit `n` set when VMs of type `n` (`KVM_X86_*_VM`) can be created.
            const VM_TYPES: u32;
            /// Whether vCPUs can be created.
            const HAS_VCPUS: bool;
            /// The entry format of the TDP tables kvm.ko builds for this vendor.
            const TDP_MASKS: SpteMasks;
            /// MSR_IA32_UCODE_REV of a new vCPU (KVM_X86_QUIRK_STUFF_FEATURE_MSRS).
            const RESET_MICROCODE_VERSION: u64;
            /// Per-vCPU state (VMCB or VMCS and what goes with it).
            type Vcpu: Send;
            /// What vcpu_load/vcpu_put touch: the preempt notifier runs them while
            /// the vCPU's task may be anywhere in its own use of [`Self::Vcpu`], so
            /// this is shared (atomics) and apart from it.
            type Loaded: Send + Sync;

            /// A vCPU in the architectural reset state, and its load state.
            fn vcpu_create() -> Result<(KBox<Self::Vcpu>, Arc<Self::Loaded>)>;
            /// The supported value of a feature MSR the vendor owns (upstream
            /// get_feature_msr), None for any other MSR.
            fn get_feature_msr(index: u32) -> Option<u64>;
            $($(#[$doc])*
            fn $name(v: recv_ty!($recv, Self::Vcpu, Self::Loaded) $(, $arg: $ty)*) -> $ret;)*
        }

        // The C-ABI entries of the table: each turns the opaque pointer back into
        // the `KBox<V::Vcpu>` that vcpu_create() leaked.
        $(
            /// # Safety
            /// Called by kvm.ko only (src/vendor.rs, `VendorVcpu`): `v` from
            /// `vcpu_create::<V>()`, not freed, with the access the entry declares
            /// (exclusive for `mut`), or its load state from the same call for
            /// `load`; pointer arguments valid for the call.
            unsafe extern "C" fn $name<V: KvmX86Vendor>(v: recv_ptr!($recv) $(, $arg: $ty)*)
                -> <$ret as FfiRet>::Raw {
                // SAFETY: as the function's contract says.
                let v = unsafe { recv_deref!($recv, v, V::Vcpu, V::Loaded) };
                V::$name(v $(, $arg)*).into_raw()
            }
        )*

        /// The table for vendor `V`, to be kept in a `static` while registered.
        #[expect(
            clippy::disallowed_methods,
            reason = "const context, where CStrExt::as_char_ptr cannot be called; the name is ASCII"
        )]
        pub(crate) const fn ops<V: KvmX86Vendor>() -> KvmX86Ops {
            KvmX86Ops {
                size: core::mem::size_of::<KvmX86Ops>(),
                name: V::NAME.as_ptr(),
                vm_types: V::VM_TYPES,
                has_vcpus: V::HAS_VCPUS,
                tdp_masks: V::TDP_MASKS,
                reset_microcode_version: V::RESET_MICROCODE_VERSION,
                get_feature_msr: get_feature_msr::<V>,
                vcpu_create: vcpu_create::<V>,
                vcpu_free: vcpu_free::<V>,
                load_free: load_free::<V>,
                $($name: $name::<V>,)*
            }
        }
    };
}

macro_rules! recv_ty {
    (ref, $t:ty, $l:ty) => {
        &$t
    };
    (mut, $t:ty, $l:ty) => {
        &mut $t
    };
    (exit, $t:ty, $l:ty) => {
        &mut $t
    };
    (load, $t:ty, $l:ty) => {
        &$l
    };
}

macro_rules! recv_deref {
    (ref, $p:ident, $t:ty, $l:ty) => {
        &*$p.cast::<$t>()
    };
    (mut, $p:ident, $t:ty, $l:ty) => {
        &mut *$p.cast::<$t>()
    };
    (exit, $p:ident, $t:ty, $l:ty) => {
        &mut *$p.cast::<$t>()
    };
    (load, $p:ident, $t:ty, $l:ty) => {
        &*$p.cast::<$l>()
    };
}

kvm_x86_ops_list!(define_vendor_trait);

/// # Safety
/// Called by kvm.ko only, with valid out-pointers.
unsafe extern "C" fn vcpu_create<V: KvmX86Vendor>(
    vcpu: &mut *mut c_void,
    load: &mut *const c_void,
) -> c_int {
    match V::vcpu_create() {
        Ok((b, l)) => {
            *vcpu = KBox::into_raw(b).cast();
            *load = Arc::into_raw(l).cast();
            0
        }
        Err(e) => e.to_errno(),
    }
}

/// The table's get_feature_msr entry: the vendor's answer into `*data`.
extern "C" fn get_feature_msr<V: KvmX86Vendor>(index: u32, data: &mut u64) -> bool {
    match V::get_feature_msr(index) {
        Some(v) => {
            *data = v;
            true
        }
        None => false,
    }
}

/// # Safety
/// Called by kvm.ko only: `l` from `vcpu_create::<V>()`, freed once, not used after.
unsafe extern "C" fn load_free<V: KvmX86Vendor>(l: *const c_void) {
    if !l.is_null() {
        // SAFETY: `l` came from Arc::into_raw in vcpu_create::<V>(), dropped once.
        drop(unsafe { Arc::from_raw(l.cast::<V::Loaded>()) });
    }
}

/// kvm.ko's helpers as a vendor's exit handler calls them: `core.kvm_emulate_cpuid(v,
/// next_rip)`. `v` is the vendor vCPU `handle_exit` got, reborrowed for the call,
/// so kvm.ko may call back into the vendor through it while the helper runs.
macro_rules! define_core_calls {
    ($($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        #[allow(dead_code, reason = "a vendor calls the helpers its exits need")]
        impl KvmCoreVcpu {
            $($(#[$doc])*
            pub(crate) fn $name<T>(&mut self, v: &mut T $(, $arg: $ty)*) -> $ret {
                let v = core::ptr::from_mut(v).cast::<c_void>();
                // SAFETY: `self` exists only inside handle_exit; `v` is its vCPU, exclusively lent.
                let raw = unsafe { (self.ops.$name)(self.ctx, v $(, $arg)*) };
                <$ret as FfiRet>::from_raw(raw)
            })*
        }
    };
}
kvm_core_ops_list!(define_core_calls);

/// # Safety
/// Called by kvm.ko only: `v` from `vcpu_create::<V>()`, freed once, not used after.
unsafe extern "C" fn vcpu_free<V: KvmX86Vendor>(v: *mut c_void) {
    if !v.is_null() {
        // SAFETY: `v` came from vcpu_create::<V>() and kvm.ko frees it once.
        drop(unsafe { KBox::from_raw(v.cast::<V::Vcpu>()) });
    }
}

// Exported by kvm.ko (src/vendor.rs, exported from src/glue.c).
extern "C" {
    pub(crate) fn kvm_rs_vendor_register(ops: *const KvmX86Ops, owner: *mut c_void) -> c_int;
    pub(crate) fn kvm_rs_vendor_unregister(ops: *const KvmX86Ops);
}

/// A registered vendor with virtualization enabled on every CPU. Dropping it first
/// unregisters (no VM can exist then: VM fds pin the vendor module), then disables
/// virtualization on every CPU and frees the per-CPU state.
pub(crate) struct Registration<T: PerCpu> {
    ops: &'static KvmX86Ops,
    #[allow(dead_code)] // Held for its Drop; read through per_cpu().
    cpus: EnabledCpus<T>,
}

impl<T: PerCpu> Registration<T> {
    /// Enables `virt` on every CPU with per-CPU state from `per_cpu`, then registers
    /// `ops` (a static) with kvm.ko on behalf of `module`.
    pub(crate) fn new(
        ops: &'static KvmX86Ops,
        module: &'static ThisModule,
        virt: glue::kvm_glue_virt,
        per_cpu: impl Fn() -> Result<T>,
    ) -> Result<Self> {
        let n = cpus::nr_cpu_ids();
        let mut state = KVec::with_capacity(n, GFP_KERNEL)?;
        for _ in 0..n {
            state.push(per_cpu()?, GFP_KERNEL)?;
        }
        let cpus = EnabledCpus::enable(virt, state)?;
        // SAFETY: `ops` is static, `module` is ours; drop() unregisters before both go.
        let r = unsafe { kvm_rs_vendor_register(ops, module.as_ptr().cast()) };
        if r != 0 {
            return Err(Error::from_errno(r));
        }
        Ok(Registration { ops, cpus })
    }

    /// The per-CPU state, indexed by CPU id.
    #[allow(dead_code)] // As EnabledCpus::state.
    pub(crate) fn per_cpu(&self) -> &[T] {
        self.cpus.state()
    }
}

impl<T: PerCpu> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: registered in new().
        unsafe { kvm_rs_vendor_unregister(self.ops) };
    }
}
