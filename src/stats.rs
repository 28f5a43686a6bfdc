// SPDX-License-Identifier: GPL-2.0-only
//! KVM_GET_STATS_FD on VM and vCPU fds: binary statistics files (format in
//! src/virt/stats.rs). Each file holds a reference to what it describes, as
//! upstream's holds one on the VM.

use core::sync::atomic::{AtomicU64, Ordering};
use kernel::ffi::{c_char, c_long, c_longlong, c_ulong, c_void};
use kernel::prelude::*;
use kernel::str::CString;
use kernel::uaccess::{UserPtr, UserSlice};

use crate::glue;
use crate::statsfmt::Desc;

/// Counters a VM keeps; names as upstream's, so tools find them.
pub(crate) mod vm {
    use super::Desc;
    pub(crate) const REMOTE_TLB_FLUSH: usize = 0;
    pub(crate) const REMOTE_TLB_FLUSH_REQUESTS: usize = 1;
    pub(crate) const PAGES_4K: usize = 2;
    pub(crate) const DESCS: [Desc; 3] = [
        Desc::cumulative("remote_tlb_flush"),
        Desc::cumulative("remote_tlb_flush_requests"),
        Desc::instant("pages_4k"),
    ];
}

/// Counters a vCPU keeps.
pub(crate) mod vcpu {
    use super::Desc;
    pub(crate) const EXITS: usize = 0;
    pub(crate) const IO_EXITS: usize = 1;
    pub(crate) const MMIO_EXITS: usize = 2;
    pub(crate) const SIGNAL_EXITS: usize = 3;
    pub(crate) const IRQ_WINDOW_EXITS: usize = 4;
    pub(crate) const HALT_EXITS: usize = 5;
    pub(crate) const IRQ_EXITS: usize = 6;
    pub(crate) const IRQ_INJECTIONS: usize = 7;
    pub(crate) const HALT_WAKEUP: usize = 8;
    pub(crate) const PF_FIXED: usize = 9;
    pub(crate) const BLOCKING: usize = 10;
    pub(crate) const REQUEST_IRQ_EXITS: usize = 11;
    pub(crate) const INSN_EMULATION_FAIL: usize = 12;
    pub(crate) const HALT_SUCCESSFUL_POLL: usize = 13;
    pub(crate) const HALT_ATTEMPTED_POLL: usize = 14;
    // 15: halt_poll_invalid, which x86 never counts (every wakeup is valid).
    pub(crate) const HALT_POLL_SUCCESS_NS: usize = 16;
    pub(crate) const HALT_POLL_FAIL_NS: usize = 17;
    pub(crate) const HALT_WAIT_NS: usize = 18;
    pub(crate) const DESCS: [Desc; 19] = [
        Desc::cumulative("exits"),
        Desc::cumulative("io_exits"),
        Desc::cumulative("mmio_exits"),
        Desc::cumulative("signal_exits"),
        Desc::cumulative("irq_window_exits"),
        Desc::cumulative("halt_exits"),
        Desc::cumulative("irq_exits"),
        Desc::cumulative("irq_injections"),
        Desc::cumulative("halt_wakeup"),
        Desc::cumulative("pf_fixed"),
        Desc::boolean("blocking"),
        Desc::cumulative("request_irq_exits"),
        Desc::cumulative("insn_emulation_fail"),
        Desc::cumulative("halt_successful_poll"),
        Desc::cumulative("halt_attempted_poll"),
        Desc::cumulative("halt_poll_invalid"),
        Desc::time_nsec("halt_poll_success_ns"),
        Desc::time_nsec("halt_poll_fail_ns"),
        Desc::time_nsec("halt_wait_ns"),
    ];
}

/// A fixed set of counters.
pub(crate) struct Counters<const N: usize>([AtomicU64; N]);

impl<const N: usize> Counters<N> {
    pub(crate) fn new() -> Self {
        Counters([const { AtomicU64::new(0) }; N])
    }

    pub(crate) fn inc(&self, i: usize) {
        self.add(i, 1);
    }

    pub(crate) fn add(&self, i: usize, n: u64) {
        if let Some(c) = self.0.get(i) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn set(&self, i: usize, v: u64) {
        if let Some(c) = self.0.get(i) {
            c.store(v, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> [u64; N] {
        core::array::from_fn(|i| self.0.get(i).map_or(0, |c| c.load(Ordering::Relaxed)))
    }
}

/// What a stats file describes: it holds the references that keep it alive.
pub(crate) trait StatsSource: Send + Sync {
    /// The file's bytes from offset `start` into `out` (statsfmt::read()).
    fn read_stats(&self, id: &str, start: u64, out: &mut [u8]) -> usize;
}

struct StatsFile {
    id: CString,
    source: KBox<dyn StatsSource>,
}

/// KVM_GET_STATS_FD (kvm_vm_ioctl_get_stats_fd(), kvm_vcpu_ioctl_get_stats_fd()):
/// a read-only file named `name` with header id `id`.
pub(crate) fn stats_fd(id: CString, source: KBox<dyn StatsSource>, name: &CStr) -> Result<isize> {
    let f = KBox::into_raw(KBox::new(StatsFile { id, source }, GFP_KERNEL)?);
    // SAFETY: on success the file owns `f` (see kvm_rs_stats_release); `name` is a NUL-terminated string.
    let fd = unsafe { glue::kvm_glue_stats_fd(f.cast(), name.as_char_ptr().cast()) };
    if fd < 0 {
        // SAFETY: not handed over.
        drop(unsafe { KBox::from_raw(f) });
        return Err(Error::from_errno(fd));
    }
    Ok(fd as isize)
}

/// Bytes formatted per step (on the stack).
const CHUNK: usize = 256;

/// kvm_stats_read(): the window [*pos, *pos + size) of the file, short at its end.
fn read(f: &StatsFile, buf: usize, size: usize, pos: &mut i64) -> Result<isize> {
    let id = f.id.to_str().map_err(|_| EINVAL)?;
    let mut w = UserSlice::new(UserPtr::from_addr(buf), size).writer();
    let mut done = 0usize;
    let mut tmp = [0u8; CHUNK];
    while done < size {
        let start = u64::try_from(*pos).map_err(|_| EINVAL)? + done as u64;
        let out = tmp.get_mut(..(size - done).min(CHUNK)).ok_or(EINVAL)?;
        let n = f.source.read_stats(id, start, out);
        if n == 0 {
            break;
        }
        w.write_slice(tmp.get(..n).ok_or(EINVAL)?)?;
        done += n;
    }
    *pos += done as i64;
    Ok(done as isize)
}

#[no_mangle]
pub(crate) extern "C" fn kvm_rs_stats_read(
    p: *mut c_void,
    buf: *mut c_char,
    size: c_ulong,
    pos: *mut c_longlong,
) -> c_long {
    // SAFETY: private_data of a stats file, alive while its fops run.
    let f = unsafe { &*p.cast_const().cast::<StatsFile>() };
    // SAFETY: the file position the VFS passes for this read.
    let pos = unsafe { &mut *pos };
    crate::user::ioctl_ret(read(f, buf as usize, size, pos))
}

#[no_mangle]
pub(crate) extern "C" fn kvm_rs_stats_release(p: *mut c_void) {
    // SAFETY: handed to the file by create(); release runs once.
    drop(unsafe { KBox::from_raw(p.cast::<StatsFile>()) });
}
