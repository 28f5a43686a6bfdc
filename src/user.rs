// SPDX-License-Identifier: GPL-2.0-only
//! Copying uapi structs from and to ioctl arguments.

use core::marker::PhantomData;
use kernel::ffi::c_long;
use kernel::prelude::*;
use kernel::transmute::{AsBytes, FromBytes};
use kernel::uaccess::{UserPtr, UserSlice};

use crate::abi::uapi;

/// A C struct of the uapi that can be copied byte for byte in both directions: the
/// kernel crate's `FromBytes` (any byte pattern is a value) and `AsBytes` (no
/// uninitialized padding: the uapi headers spell their padding out).
pub(crate) trait Pod: FromBytes + AsBytes + Copy + Default {}

impl<T: FromBytes + AsBytes + Copy + Default> Pod for T {}

macro_rules! pod {
    ($($t:ident),* $(,)?) => {$(
        // SAFETY: a uapi struct of integers and arrays with explicit padding:
        // every byte pattern is valid and every byte initialized.
        unsafe impl FromBytes for uapi::$t {}
        // SAFETY: as above.
        unsafe impl AsBytes for uapi::$t {}
    )*};
}

pod!(
    kvm_regs,
    kvm_create_device,
    kvm_sregs,
    kvm_userspace_memory_region,
    kvm_userspace_memory_region2,
    kvm_mp_state,
    kvm_cpuid_entry2,
    kvm_msr_entry,
    kvm_irqchip,
    kvm_lapic_state,
    kvm_enable_cap,
    kvm_device_attr,
    kvm_vcpu_events,
    kvm_debugregs,
    kvm_pre_fault_memory,
    kvm_create_guest_memfd,
    kvm_dirty_log,
    kvm_clear_dirty_log,
    kvm_sregs2,
    kvm_fpu,
    kvm_xcrs,
    kvm_translation,
    kvm_irq_level,
    kvm_irq_routing_entry,
    kvm_msi,
    kvm_ioeventfd,
    kvm_guest_debug,
    kvm_x86_mce,
    kvm_clock_data,
    kvm_irqfd,
    kvm_vapic_addr,
    kvm_pit_config,
    kvm_interrupt,
    kvm_pit_state,
    kvm_pit_state2,
    kvm_reinject_control,
    kvm_coalesced_mmio_zone,
);

/// Reads a `T` at user address `addr` (-EFAULT if unmapped).
pub(crate) fn read<T: Pod>(addr: usize) -> Result<T> {
    UserSlice::new(UserPtr::from_addr(addr), size_of::<T>())
        .reader()
        .read()
}

/// Reads the first `len` bytes of a `T` at `addr`, the rest zero: an older, shorter
/// version of a struct that grew (as upstream copies `kvm_userspace_memory_region`
/// into a zeroed `_region2`).
pub(crate) fn read_prefix<T: Pod>(addr: usize, len: usize) -> Result<T> {
    let mut v = T::default();
    let head = v.as_bytes_mut().get_mut(..len).ok_or(EINVAL)?;
    UserSlice::new(UserPtr::from_addr(addr), len)
        .reader()
        .read_slice(head)?;
    Ok(v)
}

/// Writes `v` at user address `addr` (-EFAULT if unmapped).
pub(crate) fn write<T: Pod>(addr: usize, v: &T) -> Result {
    UserSlice::new(UserPtr::from_addr(addr), size_of::<T>())
        .writer()
        .write(v)
}

/// Reads `n` consecutive `T`s at `addr`.
pub(crate) fn read_array<T: Pod>(addr: usize, n: usize) -> Result<KVec<T>> {
    let mut out = KVec::with_capacity(n, GFP_KERNEL)?;
    let mut r = UserSlice::new(
        UserPtr::from_addr(addr),
        n.checked_mul(size_of::<T>()).ok_or(E2BIG)?,
    )
    .reader();
    for _ in 0..n {
        out.push(r.read()?, GFP_KERNEL)?;
    }
    Ok(out)
}

/// Reads `n` bytes at `addr`.
pub(crate) fn read_bytes(addr: usize, n: usize) -> Result<KVec<u8>> {
    let mut v = KVec::from_elem(0u8, n, GFP_KERNEL)?;
    UserSlice::new(UserPtr::from_addr(addr), n)
        .reader()
        .read_slice(&mut v)?;
    Ok(v)
}

/// Writes `bytes` at `addr`.
pub(crate) fn write_bytes(addr: usize, bytes: &[u8]) -> Result {
    UserSlice::new(UserPtr::from_addr(addr), bytes.len())
        .writer()
        .write_slice(bytes)
}

/// Writes `items` consecutively at `addr`.
pub(crate) fn write_array<T: Pod>(addr: usize, items: &[T]) -> Result {
    UserSlice::new(UserPtr::from_addr(addr), size_of_val(items))
        .writer()
        .write_slice(items.as_bytes())
}

/// Fills `out` from the `T`s at `addr` (a buffer the caller sized, which may be
/// large: a dirty bitmap).
pub(crate) fn read_into<T: Pod>(addr: usize, out: &mut [T]) -> Result {
    UserSlice::new(UserPtr::from_addr(addr), size_of_val(out))
        .reader()
        .read_slice(out.as_bytes_mut())
}

/// An ioctl handler's result as the C file operation returns it: value or -errno.
pub(crate) fn ioctl_ret(r: Result<isize>) -> c_long {
    match r {
        Ok(v) => v as c_long,
        Err(e) => e.to_errno() as c_long,
    }
}

/// The header of a uapi struct that is followed by a flexible array of `Entry`
/// (`struct kvm_cpuid2`, `kvm_msrs`, `kvm_msr_list`, `kvm_irq_routing`): with
/// [`Fam`], the one place that reads and writes such counted arrays, as rust-vmm's
/// FamStruct. (bindgen's structs end in a non-`Copy` array marker, hence these.)
///
/// # Safety
/// `Self` must have exactly the header's layout, so the entries start at
/// `size_of::<Self>()`.
pub(crate) unsafe trait FamHeader: Pod {
    type Entry: Pod;
    fn count(&self) -> usize;
    fn set_count(&mut self, n: usize);
}

/// A count and a padding (or flags) word: `kvm_cpuid2`, `kvm_msrs`, `kvm_irq_routing`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct CountWord<E> {
    pub(crate) n: u32,
    /// Padding, or `kvm_irq_routing`'s flags.
    pub(crate) word: u32,
    entries: PhantomData<E>,
}

/// A bare count: `kvm_msr_list`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct Count<E> {
    pub(crate) n: u32,
    entries: PhantomData<E>,
}

pub(crate) type Cpuid2 = CountWord<uapi::kvm_cpuid_entry2>;
pub(crate) type Msrs = CountWord<uapi::kvm_msr_entry>;
pub(crate) type IrqRouting = CountWord<uapi::kvm_irq_routing_entry>;
pub(crate) type MsrList = Count<u32>;

const _: () = assert!(size_of::<Cpuid2>() == size_of::<uapi::kvm_cpuid2>());
const _: () = assert!(size_of::<Msrs>() == size_of::<uapi::kvm_msrs>());
const _: () = assert!(size_of::<IrqRouting>() == size_of::<uapi::kvm_irq_routing>());
const _: () = assert!(size_of::<MsrList>() == size_of::<uapi::kvm_msr_list>());

// SAFETY: two u32s, no padding (the marker is zero-sized).
unsafe impl<E: Pod> FromBytes for CountWord<E> {}
// SAFETY: as above.
unsafe impl<E: Pod> AsBytes for CountWord<E> {}
// SAFETY: one u32 (the marker is zero-sized).
unsafe impl<E: Pod> FromBytes for Count<E> {}
// SAFETY: as above.
unsafe impl<E: Pod> AsBytes for Count<E> {}

// SAFETY: the layouts are the uapi headers' (asserted above).
unsafe impl<E: Pod> FamHeader for CountWord<E> {
    type Entry = E;
    fn count(&self) -> usize {
        self.n as usize
    }
    fn set_count(&mut self, n: usize) {
        self.n = n as u32;
    }
}

// SAFETY: as above.
unsafe impl<E: Pod> FamHeader for Count<E> {
    type Entry = E;
    fn count(&self) -> usize {
        self.n as usize
    }
    fn set_count(&mut self, n: usize) {
        self.n = n as u32;
    }
}

/// A counted array at user address `addr`.
pub(crate) struct Fam<H: FamHeader> {
    addr: usize,
    pub(crate) header: H,
}

impl<H: FamHeader> Fam<H> {
    /// Reads the header at `addr`.
    pub(crate) fn read_header(addr: usize) -> Result<Self> {
        Ok(Fam {
            addr,
            header: read(addr)?,
        })
    }

    fn entries_addr(&self) -> Result<usize> {
        self.addr.checked_add(size_of::<H>()).ok_or(EFAULT)
    }

    /// The `count` entries the header announces; `Err(too_many)` past `max`.
    pub(crate) fn read_entries(&self, max: usize, too_many: Error) -> Result<KVec<H::Entry>> {
        let n = self.header.count();
        if n > max {
            return Err(too_many);
        }
        read_array(self.entries_addr()?, n)
    }

    /// Writes `entries` back in place, leaving the header as it is.
    pub(crate) fn write_entries(&self, entries: &[H::Entry]) -> Result {
        write_array(self.entries_addr()?, entries)
    }

    /// The output protocol of upstream's counted arrays: the count written back
    /// is the real one; -E2BIG (count updated first when `count_first`, as
    /// KVM_GET_MSR_INDEX_LIST does) when the caller's room is smaller.
    pub(crate) fn write_all(mut self, entries: &[H::Entry], count_first: bool) -> Result {
        let room = self.header.count();
        self.header.set_count(entries.len());
        if count_first {
            write(self.addr, &self.header)?;
        }
        if room < entries.len() {
            return Err(E2BIG);
        }
        write_array(self.entries_addr()?, entries)?;
        if !count_first {
            write(self.addr, &self.header)?;
        }
        Ok(())
    }
}
