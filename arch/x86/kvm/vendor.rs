// SPDX-License-Identifier: GPL-2.0-only
//! The registered vendor module (kvm-amd or kvm-intel), one at a time, and the
//! only place kvm.ko calls into it: [`VendorRef`] pins the module, [`VendorVcpu`]
//! is a vendor vCPU reached through the table (upstream's `kvm_x86_call()`).

use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::ffi::{c_int, c_void};
use kernel::prelude::*;

use crate::abi::uapi;
use crate::arch::x86::VcpuArch;
use crate::arch::{Vcpu, Vm};
use crate::glue;
use crate::kvm_x86_ops::{
    kvm_core_ops_list, kvm_x86_ops_list, FfiRet, GuestRegs, KvmCoreOps, KvmCoreVcpu, KvmX86Ops,
    Next,
};

static VENDOR: AtomicPtr<KvmX86Ops> = AtomicPtr::new(core::ptr::null_mut());
/// The registered vendor's `struct module`.
static OWNER: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());

/// A reference on the registered vendor module: while one exists the module cannot
/// unload, so its table (and the code it points to) stays valid. VMs and vendor
/// vCPUs hold one, so nothing reaches a vendor that is gone.
pub(crate) struct VendorRef {
    ops: NonNull<KvmX86Ops>,
    owner: NonNull<c_void>,
}

// SAFETY: the table is immutable (`Sync`) and a module reference may be dropped on
// any thread.
unsafe impl Send for VendorRef {}
// SAFETY: as above; shared access only reads the table.
unsafe impl Sync for VendorRef {}

impl VendorRef {
    /// The registered vendor, pinned; -ENODEV when none is.
    ///
    /// Called from the file operations of /dev/kvm and VM fds, which the vendor
    /// module owns: it cannot finish unregistering while they run, so `OWNER` is a
    /// live module here. try_module_get() still refuses a module on its way out.
    pub(crate) fn get() -> Result<Self> {
        let ops = NonNull::new(VENDOR.load(Ordering::Acquire)).ok_or(ENODEV)?;
        let owner = NonNull::new(OWNER.load(Ordering::Acquire)).ok_or(ENODEV)?;
        // SAFETY: a registered module (see above).
        if unsafe { glue::kvm_glue_try_module_get(owner.as_ptr()) } == 0 {
            return Err(ENODEV);
        }
        Ok(VendorRef { ops, owner })
    }

    /// The vendor's table, valid as long as `self` pins the module.
    pub(crate) fn ops(&self) -> &KvmX86Ops {
        // SAFETY: the module, and so its static table, stays loaded while pinned.
        unsafe { self.ops.as_ref() }
    }
}

impl Clone for VendorRef {
    fn clone(&self) -> Self {
        // SAFETY: `self` already holds a reference, so the module is live.
        unsafe { glue::kvm_glue_module_get(self.owner.as_ptr()) };
        VendorRef {
            ops: self.ops,
            owner: self.owner,
        }
    }
}

impl Drop for VendorRef {
    fn drop(&mut self) {
        // SAFETY: balances the reference taken in get() or clone().
        unsafe { glue::kvm_glue_module_put(self.owner.as_ptr()) };
    }
}

/// What the capability logic needs to know about the registered vendor: the VM
/// types it can create and whether it has vCPUs.
pub(crate) fn vm_types_and_vcpus() -> (u32, bool) {
    VendorRef::get().map_or((0, false), |v| (v.ops().vm_types, v.ops().has_vcpus))
}

/// A vendor vCPU (upstream: struct vcpu_svm / vcpu_vmx around the kvm_vcpu) and the
/// vendor that made it, pinned. Its methods are the table's entries; `&mut self`
/// for the ones that change the vendor state, so the vCPU mutex that owns the
/// handle serializes them.
pub(crate) struct VendorVcpu {
    vendor: VendorRef,
    vcpu: NonNull<c_void>,
}

// SAFETY: the vendor state is plain memory owned by this handle; it is only used
// through `&`/`&mut self`, which the owner's mutex serializes.
unsafe impl Send for VendorVcpu {}

impl VendorVcpu {
    /// A new vendor vCPU in its reset state (upstream vcpu_create), and its load
    /// state for the preempt notifier.
    pub(crate) fn create(vendor: &VendorRef) -> Result<(Self, VendorLoaded)> {
        let mut p = core::ptr::null_mut();
        let mut l = core::ptr::null();
        // SAFETY: the table is pinned; `p` and `l` are valid out-pointers.
        let r = unsafe { (vendor.ops().vcpu_create)(&mut p, &mut l) };
        Result::from_raw(r)?;
        // Owned from here on, so that an error below frees them.
        let load = NonNull::new(l.cast_mut()).map(|load| VendorLoaded {
            vendor: vendor.clone(),
            load,
        });
        let vcpu = NonNull::new(p).map(|vcpu| VendorVcpu {
            vendor: vendor.clone(),
            vcpu,
        });
        match (vcpu, load) {
            (Some(v), Some(l)) => Ok((v, l)),
            _ => Err(ENOMEM),
        }
    }

    /// Makes the vendor vCPU reached through `v`, the pointer the vendor's
    /// handle_exit lent back with a helper call (a reborrow of its own `&mut`), so
    /// that calls into the vendor from the helper use the vendor's borrow; returns
    /// the handle's own pointer, put back when the helper returns.
    fn lend(&mut self, v: *mut c_void) -> NonNull<c_void> {
        match NonNull::new(v) {
            Some(v) => core::mem::replace(&mut self.vcpu, v),
            None => self.vcpu,
        }
    }
}

impl Drop for VendorVcpu {
    fn drop(&mut self) {
        // SAFETY: made by this vendor's vcpu_create, freed once; `vendor` pins it.
        unsafe { (self.vendor.ops().vcpu_free)(self.vcpu.as_ptr()) };
    }
}

/// A vendor vCPU's load state (upstream: what vcpu_load()/vcpu_put() touch, like
/// VMX's loaded_vmcs): shared, because the preempt notifier reaches it while the
/// vCPU's task is preempted anywhere, including inside the vendor.
pub(crate) struct VendorLoaded {
    vendor: VendorRef,
    load: NonNull<c_void>,
}

// SAFETY: the vendor's load state is `Send + Sync` (the trait requires it); the
// handle only passes shared pointers to it.
unsafe impl Send for VendorLoaded {}
// SAFETY: as above.
unsafe impl Sync for VendorLoaded {}

impl Drop for VendorLoaded {
    fn drop(&mut self) {
        // SAFETY: made by this vendor's vcpu_create, freed once; `vendor` pins it.
        unsafe { (self.vendor.ops().load_free)(self.load.as_ptr()) };
    }
}

/// One table entry as a method: on [`VendorVcpu`] for `ref`/`mut` entries (the
/// receiver gives the access the entry declares), on [`VendorLoaded`] for `load`
/// ones; `exit` (handle_exit) has its own caller, [`kvm_x86_handle_exit`].
macro_rules! vendor_call {
    (ref, $($entry:tt)*) => { vendor_call!(@on VendorVcpu, &Self, vcpu, $($entry)*); };
    (mut, $($entry:tt)*) => { vendor_call!(@on VendorVcpu, &mut Self, vcpu, $($entry)*); };
    (load, $($entry:tt)*) => { vendor_call!(@on VendorLoaded, &Self, load, $($entry)*); };
    (exit, $($entry:tt)*) => {};
    (@on $on:ident, $recv:ty, $field:ident,
     $(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        impl $on {
            $(#[$doc])*
            pub(crate) fn $name(self: $recv $(, $arg: $ty)*) -> $ret {
                // SAFETY: `vcpu`/`load` is live state of the pinned vendor, made by its vcpu_create.
                let raw = unsafe { (self.vendor.ops().$name)(self.$field.as_ptr() $(, $arg)*) };
                <$ret as FfiRet>::from_raw(raw)
            }
        }
    };
}

macro_rules! define_vendor_calls {
    ($($(#[$doc:meta])* fn $name:ident($recv:ident $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        $(vendor_call!($recv, $(#[$doc])* fn $name($($arg: $ty),*) -> $ret);)*
    };
}

kvm_x86_ops_list!(define_vendor_calls);

/// What kvm.ko's helpers work on while the vendor's handle_exit runs (upstream:
/// the `struct kvm_vcpu` every helper gets).
struct ExitCtx<'a> {
    vcpu: &'a Vcpu,
    vm: &'a Vm,
    st: &'a mut VcpuArch,
}

/// `kvm_x86_call(handle_exit)`: the vendor handles the exit of its last vcpu_run,
/// calling back into kvm.ko's helpers (the table below) on `st`.
pub(crate) fn kvm_x86_handle_exit(vcpu: &Vcpu, vm: &Vm, st: &mut VcpuArch) -> Next {
    // Copied out before `st` is lent to the context: the vendor's `&mut` comes
    // from this pointer, kvm.ko's calls from inside the helpers from the one it
    // lends back (VendorVcpu::lend).
    let handle_exit = st.vendor.vendor.ops().handle_exit;
    let v = st.vendor.vcpu.as_ptr();
    let mut ctx = ExitCtx { vcpu, vm, st };
    let mut core = KvmCoreVcpu {
        ops: &KVM_CORE_OPS,
        ctx: core::ptr::from_mut(&mut ctx).cast(),
    };
    // SAFETY: `v` is a live vCPU of the pinned vendor, used only through the call; `core` outlives it.
    let raw = unsafe { handle_exit(v, &mut core) };
    Next::from_raw(raw)
}

/// The C-ABI entries of [`KvmCoreOps`]: each finds its [`ExitCtx`] and calls the
/// helper of the same name on `Vcpu` (arch/x86/kvm/x86.rs and the files beside it).
macro_rules! define_core_ops {
    ($($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(
            /// # Safety
            /// Called by the vendor's handle_exit only, through the `KvmCoreVcpu`
            /// kvm_x86_handle_exit() made: `ctx` its context, `v` the vendor vCPU lent back.
            unsafe extern "C" fn $name(ctx: *mut c_void, v: *mut c_void $(, $arg: $ty)*)
                -> <$ret as FfiRet>::Raw {
                // SAFETY: as the function's contract says; the context outlives the call.
                let ctx = unsafe { &mut *ctx.cast::<ExitCtx<'_>>() };
                let (vcpu, vm) = (ctx.vcpu, ctx.vm);
                let st = &mut *ctx.st;
                let own = st.vendor.lend(v);
                let r: $ret = vcpu.$name(vm, st $(, $arg)*);
                st.vendor.vcpu = own;
                r.into_raw()
            }
        )*

        static KVM_CORE_OPS: KvmCoreOps = KvmCoreOps { $($name,)* };
    };
}
kvm_core_ops_list!(define_core_ops);

/// Called by a vendor module's init. Mirrors kvm_x86_vendor_init() + kvm_init():
/// -EEXIST when another vendor is loaded, then /dev/kvm appears.
#[no_mangle]
pub(crate) extern "C" fn kvm_rs_vendor_register(
    ops: *const KvmX86Ops,
    owner: *mut c_void,
) -> c_int {
    // SAFETY: the vendor passes its static table or null.
    let Some(new) = (unsafe { ops.as_ref() }) else {
        return EINVAL.to_errno();
    };
    if new.size != core::mem::size_of::<KvmX86Ops>() {
        pr_err!(
            "vendor module built against a different kvm.ko (ops size {})\n",
            new.size
        );
        return EINVAL.to_errno();
    }
    if let Err(old) = VENDOR.compare_exchange(
        core::ptr::null_mut(),
        ops.cast_mut(),
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        // SAFETY: `old` is the registered (so still loaded) vendor's static table.
        let old = unsafe { CStr::from_char_ptr((*old).name.cast()) };
        pr_err!(
            "already loaded vendor module '{}'\n",
            old.to_str().unwrap_or("?")
        );
        return EEXIST.to_errno();
    }
    OWNER.store(owner, Ordering::Release);
    // SAFETY: `owner` is the vendor's THIS_MODULE; its exit deregisters the device.
    let r = unsafe { glue::kvm_glue_dev_register(owner) };
    if r != 0 {
        OWNER.store(core::ptr::null_mut(), Ordering::Release);
        VENDOR.store(core::ptr::null_mut(), Ordering::Release);
        pr_err!("cannot register /dev/kvm: {}\n", r);
    }
    r
}

/// Called by the vendor module's exit. No VM can exist: VM fds pin the vendor module.
#[no_mangle]
pub(crate) extern "C" fn kvm_rs_vendor_unregister(ops: *const KvmX86Ops) {
    if VENDOR.load(Ordering::Acquire).cast_const() != ops {
        pr_err!("unregister from a vendor module that is not registered\n");
        return;
    }
    // SAFETY: the device was registered by kvm_rs_vendor_register for this vendor.
    unsafe { glue::kvm_glue_dev_deregister() };
    OWNER.store(core::ptr::null_mut(), Ordering::Release);
    VENDOR.store(core::ptr::null_mut(), Ordering::Release);
}
