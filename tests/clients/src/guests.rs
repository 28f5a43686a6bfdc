//! kvm-guests: tiny guests run through the standard KVM ABI, inside the test VM.
//!
//! Each case makes a VM (without an in-kernel irqchip unless it tests the LAPIC), one
//! 2 MiB memslot at GPA 0 and vCPU 0, writes hand-assembled machine code into guest memory, sets SREGS/REGS and
//! checks what KVM_RUN reports in `kvm_run`. Every assertion is upstream KVM's
//! behaviour (read from the 7.2 source, cited where not obvious), so the binary passes
//! against the in-tree modules, the reference.
//!
//!     kvm-guests [CASE]      all cases, or only CASE (to bisect a failure)
//!
//! Prints one `ok`/`not ok` line per check and `N passed, M failed`; exits 1 on failure.

use std::ffi::CString;
use std::fmt;
use std::fs;
use std::io::Error;
use std::os::fd::RawFd;
use std::ptr;

use kvm_abi::ioctl::{io, ior, iow, iowr, KVM_CREATE_VM, KVM_GET_VCPU_MMAP_SIZE};
use kvm_abi::uapi;
mod bench;
mod clock;
mod coalesced;
mod debug;
mod gmem;
mod ioeventfd;
mod irq;
mod mce;
mod pit;
mod report;
mod xstate;
use report::{errno, ioctl, show, Report};

use kvm_abi::uapi::{kvm_regs, kvm_run, kvm_segment, kvm_sregs, kvm_userspace_memory_region};

// The vCPU and memslot ioctls this client needs (include/uapi/linux/kvm.h).
const KVM_GET_SUPPORTED_CPUID: u32 = iowr::<uapi::kvm_cpuid2>(0x05);
const KVM_CREATE_VCPU: u32 = io(0x41);
const KVM_SET_USER_MEMORY_REGION: u32 = iow::<kvm_userspace_memory_region>(0x46);
const KVM_RUN: u32 = io(0x80);
const KVM_GET_REGS: u32 = ior::<kvm_regs>(0x81);
const KVM_SET_REGS: u32 = iow::<kvm_regs>(0x82);
const KVM_GET_SREGS: u32 = ior::<kvm_sregs>(0x83);
const KVM_SET_SREGS: u32 = iow::<kvm_sregs>(0x84);
const KVM_SET_CPUID2: u32 = iow::<uapi::kvm_cpuid2>(0x90);
const KVM_CREATE_IRQCHIP: u32 = io(0x60);
const KVM_GET_LAPIC: u32 = ior::<uapi::kvm_lapic_state>(0x8e);
const KVM_GET_MP_STATE: u32 = ior::<uapi::kvm_mp_state>(0x98);
const KVM_GET_TSC_KHZ: u32 = io(0xa3);
const KVM_GET_STATS_FD: u32 = io(0xce);
const KVM_GET_MSRS: u32 = iowr::<uapi::kvm_msrs>(0x88);
const KVM_SET_MSRS: u32 = iow::<uapi::kvm_msrs>(0x89);
const KVM_GET_DIRTY_LOG: u32 = iow::<uapi::kvm_dirty_log>(0x42);
const KVM_MEM_LOG_DIRTY_PAGES: u32 = 1;

const PAGE: u64 = 4096;
const MEM_SIZE: usize = 2 << 20;
/// Where the PIO data lives in the vCPU mapping: `KVM_PIO_PAGE_OFFSET` pages in.
const PIO_OFFSET: u64 = uapi::KVM_PIO_PAGE_OFFSET as u64 * PAGE;
/// x86: `KVM_MEM_SLOTS_NUM - KVM_INTERNAL_MEM_SLOTS` = 32767 - 3.
const KVM_USER_MEM_SLOTS: u32 = 32764;
/// KVM_MAX_CPUID_ENTRIES.
const MAX_CPUID: usize = 256;

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Checks only guests make.
trait Checks {
    fn exit(&mut self, what: &str, got: &Exit, want: &Exit);
    fn reg(&mut self, what: &str, got: u64, want: u64);
}

impl Checks for Report {
    /// Checks the next exit of a guest.
    fn exit(&mut self, what: &str, got: &Exit, want: &Exit) {
        self.check(what, got == want, format!("got {got}, want {want}"));
    }

    /// Checks a register value.
    fn reg(&mut self, what: &str, got: u64, want: u64) {
        self.check(what, got == want, format!("got {got:#x}, want {want:#x}"));
    }
}

/// An ioctl whose argument points to a `T`, the struct `cmd` encodes (or, for the
/// CPUID ioctls, a header followed by as many entries as its `nent` says).
fn ioctl_ref<T>(fd: RawFd, cmd: u32, arg: &mut T) -> Result<i32, i32> {
    // SAFETY: `arg` is valid for reads and writes of the size the command accesses.
    let r = unsafe { libc::ioctl(fd, cmd as libc::c_ulong, arg as *mut T) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

fn open(path: &str, flags: i32) -> Result<RawFd, i32> {
    let c = CString::new(path).map_err(|_| libc::EINVAL)?;
    // SAFETY: `c` is a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        Err(errno())
    } else {
        Ok(fd)
    }
}

fn close(fd: RawFd) {
    // SAFETY: closing an fd this program owns.
    unsafe { libc::close(fd) };
}

/// A setup step that must succeed for the case to go on.
fn sys(what: &str, r: Result<i32, i32>) -> Result<i32, String> {
    r.map_err(|e| format!("{what}: {}", show(Err(e))))
}

/// Anonymous private memory, page aligned.
struct Mem {
    ptr: *mut u8,
    len: usize,
}

impl Mem {
    fn new(len: usize) -> Result<Mem, String> {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap guest memory: {}", Error::last_os_error()));
        }
        Ok(Mem { ptr: p.cast(), len })
    }

    fn addr(&self) -> u64 {
        self.ptr as u64
    }

    /// Replaces the page at `off` with a fresh anonymous one (mmap MAP_FIXED):
    /// the old page is unmapped from this process, as a VMM does when it
    /// reorganizes guest memory.
    fn replace_page(&self, off: u64) -> Result<(), String> {
        assert!(
            off as usize + PAGE as usize <= self.len,
            "outside guest memory"
        );
        // SAFETY: replaces one page inside our own mapping; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                self.ptr.add(off as usize).cast(),
                PAGE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap MAP_FIXED: {}", Error::last_os_error()));
        }
        Ok(())
    }

    fn write(&self, off: u64, bytes: &[u8]) {
        let off = off as usize;
        assert!(off + bytes.len() <= self.len, "write outside guest memory");
        // SAFETY: in bounds of our mapping (checked above); the vCPU is not running.
        unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(off), bytes.len()) };
    }

    fn read(&self, off: u64, len: usize) -> Vec<u8> {
        let off = off as usize;
        assert!(off + len <= self.len, "read outside guest memory");
        let mut v = vec![0; len];
        // SAFETY: in bounds of our mapping (checked above); the vCPU is not running.
        unsafe { ptr::copy_nonoverlapping(self.ptr.add(off), v.as_mut_ptr(), len) };
        v
    }

    fn write_u64(&self, off: u64, v: u64) {
        self.write(off, &v.to_le_bytes());
    }

    fn read_u64(&self, off: u64) -> u64 {
        let b = self.read(off, 8);
        u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping this struct owns.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// What one KVM_RUN came back with.
#[derive(Debug, PartialEq)]
enum Exit {
    /// KVM_EXIT_IO; `data` is what the page at `offset` holds for OUT, empty for IN.
    Io {
        dir: u32,
        size: u8,
        port: u16,
        count: u32,
        offset: u64,
        data: Vec<u8>,
    },
    /// KVM_EXIT_MMIO; `data` is the written bytes, empty for a read.
    Mmio {
        addr: u64,
        len: u32,
        write: bool,
        data: Vec<u8>,
    },
    Hlt,
    Shutdown,
    /// KVM_EXIT_DEBUG: `kvm_run->debug.arch` (dr6 only for #DB; upstream leaves
    /// it as it was for #BP).
    Debug {
        exception: u32,
        pc: u64,
        dr6: u64,
    },
    Other(u32),
    Failed(i32),
}

fn out(port: u16, size: u8, count: u32, data: &[u8]) -> Exit {
    Exit::Io {
        dir: uapi::KVM_EXIT_IO_OUT,
        size,
        port,
        count,
        offset: PIO_OFFSET,
        data: data.to_vec(),
    }
}

fn inp(port: u16, size: u8, count: u32) -> Exit {
    Exit::Io {
        dir: uapi::KVM_EXIT_IO_IN,
        size,
        port,
        count,
        offset: PIO_OFFSET,
        data: Vec::new(),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Io {
                dir,
                size,
                port,
                count,
                offset,
                data,
            } => {
                let d = if *dir == uapi::KVM_EXIT_IO_OUT {
                    "OUT"
                } else if *dir == uapi::KVM_EXIT_IO_IN {
                    "IN"
                } else {
                    "dir?"
                };
                write!(
                    f,
                    "IO {d}({dir}) port {port:#x} size {size} count {count} offset {offset:#x} [{}]",
                    hex(data)
                )
            }
            Exit::Mmio {
                addr,
                len,
                write,
                data,
            } => write!(
                f,
                "MMIO {} {addr:#x} len {len} [{}]",
                if *write { "write" } else { "read" },
                hex(data)
            ),
            Exit::Hlt => write!(f, "HLT"),
            Exit::Shutdown => write!(f, "SHUTDOWN"),
            Exit::Debug { exception, pc, dr6 } => {
                write!(f, "DEBUG exception {exception} pc {pc:#x} dr6 {dr6:#x}")
            }
            Exit::Other(r) => write!(f, "exit_reason {r}"),
            Exit::Failed(e) => write!(f, "KVM_RUN {}", show(Err(*e))),
        }
    }
}

/// `struct kvm_msrs` with one entry.
#[repr(C)]
#[derive(Default)]
struct Msrs1 {
    nmsrs: u32,
    pad: u32,
    entry: uapi::kvm_msr_entry,
}

/// A VM with one memslot and vCPU 0, its `kvm_run` mapped.
struct Guest {
    kvm: RawFd,
    vm: RawFd,
    vcpu: RawFd,
    run: *mut kvm_run,
    run_size: usize,
    mem: Mem,
}

impl Guest {
    fn new(kvm: RawFd) -> Result<Guest, String> {
        Guest::create(kvm, |_| Ok(()))
    }

    /// With KVM_CREATE_IRQCHIP before the vCPU, so that it has an in-kernel LAPIC.
    fn with_irqchip(kvm: RawFd) -> Result<Guest, String> {
        Guest::create(kvm, |vm| {
            sys("KVM_CREATE_IRQCHIP", ioctl(vm, KVM_CREATE_IRQCHIP, 0)).map(drop)
        })
    }

    /// `chip` runs on the new VM fd before its vCPU exists (the irqchip).
    fn create(kvm: RawFd, chip: impl FnOnce(RawFd) -> Result<(), String>) -> Result<Guest, String> {
        let mem = Mem::new(MEM_SIZE)?;
        let vm = sys("KVM_CREATE_VM", ioctl(kvm, KVM_CREATE_VM, 0))?;
        if let Err(e) = chip(vm) {
            close(vm);
            return Err(e);
        }
        let mut g = Guest {
            kvm,
            vm,
            vcpu: -1,
            run: ptr::null_mut(),
            run_size: 0,
            mem,
        };
        let mut region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: g.mem.addr(),
        };
        sys(
            "KVM_SET_USER_MEMORY_REGION",
            ioctl_ref(vm, KVM_SET_USER_MEMORY_REGION, &mut region),
        )?;
        g.vcpu = sys("KVM_CREATE_VCPU", ioctl(vm, KVM_CREATE_VCPU, 0))?;
        let size = sys(
            "KVM_GET_VCPU_MMAP_SIZE",
            ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0),
        )? as usize;
        g.run = map_run(g.vcpu, size)?;
        g.run_size = size;
        Ok(g)
    }

    fn regs(&self) -> Result<kvm_regs, String> {
        let mut r = kvm_regs::default();
        sys("KVM_GET_REGS", ioctl_ref(self.vcpu, KVM_GET_REGS, &mut r))?;
        Ok(r)
    }

    fn set_regs(&self, mut r: kvm_regs) -> Result<(), String> {
        sys("KVM_SET_REGS", ioctl_ref(self.vcpu, KVM_SET_REGS, &mut r)).map(drop)
    }

    fn sregs(&self) -> Result<kvm_sregs, String> {
        let mut s = kvm_sregs::default();
        sys("KVM_GET_SREGS", ioctl_ref(self.vcpu, KVM_GET_SREGS, &mut s))?;
        Ok(s)
    }

    fn set_sregs(&self, mut s: kvm_sregs) -> Result<(), String> {
        sys("KVM_SET_SREGS", ioctl_ref(self.vcpu, KVM_SET_SREGS, &mut s)).map(drop)
    }

    /// A real-mode handler for IVT entry `vector` at 0000:`at` that reports
    /// itself (`mov al, value; out port, al`) and returns (IRET).
    fn reporting_handler(&self, vector: u8, at: u16, port: u8, value: u8) {
        let [lo, hi] = at.to_le_bytes();
        self.mem.write(u64::from(vector) * 4, &[lo, hi, 0x00, 0x00]);
        self.mem.write(at.into(), &[0xb0, value, 0xe6, port, 0xcf]);
    }

    /// Real mode from the reset state, but with CS at 0 so that RIP is a GPA.
    fn real_mode(&self, rip: u64, rax: u64) -> Result<(), String> {
        let mut s = self.sregs()?;
        s.cs.base = 0;
        s.cs.selector = 0;
        self.set_sregs(s)?;
        self.set_regs(kvm_regs {
            rip,
            rax,
            rflags: 2,
            ..Default::default()
        })
    }

    /// Real mode at `rip` as [`Guest::real_mode`], with a stack at 0000:8000 for
    /// interrupt handlers.
    fn real_mode_stack(&self, rip: u64) -> Result<(), String> {
        self.real_mode(rip, 0)?;
        let mut s = self.sregs()?;
        s.ss.base = 0;
        s.ss.selector = 0;
        self.set_sregs(s)?;
        let mut r = self.regs()?;
        r.rsp = 0x8000;
        self.set_regs(r)
    }

    /// Flat 32-bit protected mode (no paging), segments loaded through SREGS only.
    fn flat32(&self, rip: u64) -> Result<kvm_sregs, String> {
        let mut s = self.sregs()?;
        let code = flat_segment(8, 11);
        let data = flat_segment(0x10, 3);
        s.cs = code;
        (s.ds, s.es, s.fs, s.gs, s.ss) = (data, data, data, data, data);
        s.cr0 = CR0_PE | CR0_ET | CR0_NE;
        self.set_sregs(s)?;
        self.set_regs(kvm_regs {
            rip,
            rflags: 2,
            ..Default::default()
        })?;
        Ok(s)
    }

    /// Copies the vCPU's supported CPUID into the vCPU (long mode needs CPUID.LM).
    fn set_supported_cpuid(&self) -> Result<(), String> {
        set_supported_cpuid(self.kvm, self.vcpu)
    }

    /// KVM_GET_MSRS of one MSR: its value, or None when KVM refuses it (count 0).
    fn get_msr(&self, index: u32) -> Result<Option<u64>, String> {
        let mut m = Msrs1 {
            nmsrs: 1,
            ..Default::default()
        };
        m.entry.index = index;
        let n = sys("KVM_GET_MSRS", ioctl_ref(self.vcpu, KVM_GET_MSRS, &mut m))?;
        Ok((n == 1).then_some(m.entry.data))
    }

    /// KVM_SET_MSRS of one MSR: whether KVM took it.
    fn set_msr(&self, index: u32, data: u64) -> Result<bool, String> {
        let mut m = Msrs1 {
            nmsrs: 1,
            ..Default::default()
        };
        m.entry.index = index;
        m.entry.data = data;
        Ok(sys("KVM_SET_MSRS", ioctl_ref(self.vcpu, KVM_SET_MSRS, &mut m))? == 1)
    }

    fn state(&self) -> kvm_run {
        // SAFETY: `run` maps a whole `kvm_run`; the vCPU is not running.
        unsafe { ptr::read_volatile(self.run) }
    }

    /// Bytes of the vCPU mapping (the PIO data page lives there).
    fn run_bytes(&self, off: u64, len: usize) -> Option<Vec<u8>> {
        let off = usize::try_from(off).ok()?;
        if off.checked_add(len)? > self.run_size {
            return None;
        }
        let mut v = vec![0; len];
        // SAFETY: in bounds of the vCPU mapping (checked above).
        unsafe { ptr::copy_nonoverlapping(self.run.cast::<u8>().add(off), v.as_mut_ptr(), len) };
        Some(v)
    }

    /// Supplies the data of a pending IN at `io.data_offset`.
    fn set_io_data(&self, bytes: &[u8]) {
        // SAFETY: reading the PIO member of the exit union, plain integers.
        let off = unsafe { self.state().__bindgen_anon_1.io.data_offset } as usize;
        assert!(
            off + bytes.len() <= self.run_size,
            "PIO data outside the mapping"
        );
        // SAFETY: in bounds of the vCPU mapping (checked above).
        unsafe {
            ptr::copy_nonoverlapping(bytes.as_ptr(), self.run.cast::<u8>().add(off), bytes.len())
        };
    }

    /// Supplies the data of a pending MMIO read.
    fn set_mmio_data(&self, bytes: &[u8]) {
        let mut d = [0u8; 8];
        d[..bytes.len()].copy_from_slice(bytes);
        // SAFETY: `run` maps a whole `kvm_run`; the vCPU is not running.
        unsafe { ptr::addr_of_mut!((*self.run).__bindgen_anon_1.mmio.data).write_volatile(d) };
    }

    fn set_immediate_exit(&self, v: u8) {
        // SAFETY: `run` maps a whole `kvm_run`; the vCPU is not running.
        unsafe { ptr::addr_of_mut!((*self.run).immediate_exit).write_volatile(v) };
    }

    /// KVM_RUN, and what it exited with.
    fn step(&self) -> Exit {
        if let Err(e) = ioctl(self.vcpu, KVM_RUN, 0) {
            return Exit::Failed(e);
        }
        let r = self.state();
        match r.exit_reason {
            uapi::KVM_EXIT_IO => {
                // SAFETY: the PIO member of the exit union is valid for KVM_EXIT_IO.
                let io = unsafe { r.__bindgen_anon_1.io };
                let data = if u32::from(io.direction) == uapi::KVM_EXIT_IO_OUT {
                    let len = usize::from(io.size) * io.count as usize;
                    self.run_bytes(io.data_offset, len).unwrap_or_default()
                } else {
                    Vec::new()
                };
                Exit::Io {
                    dir: io.direction.into(),
                    size: io.size,
                    port: io.port,
                    count: io.count,
                    offset: io.data_offset,
                    data,
                }
            }
            uapi::KVM_EXIT_MMIO => {
                // SAFETY: the MMIO member of the exit union is valid for KVM_EXIT_MMIO.
                let m = unsafe { r.__bindgen_anon_1.mmio };
                let write = m.is_write != 0;
                Exit::Mmio {
                    addr: m.phys_addr,
                    len: m.len,
                    write,
                    data: if write {
                        m.data[..(m.len as usize).min(8)].to_vec()
                    } else {
                        Vec::new()
                    },
                }
            }
            uapi::KVM_EXIT_HLT => Exit::Hlt,
            uapi::KVM_EXIT_SHUTDOWN => Exit::Shutdown,
            uapi::KVM_EXIT_DEBUG => {
                // SAFETY: the debug member of the exit union is valid for KVM_EXIT_DEBUG.
                let d = unsafe { r.__bindgen_anon_1.debug.arch };
                Exit::Debug {
                    exception: d.exception,
                    pc: d.pc,
                    dr6: if d.exception == uapi::DB_VECTOR {
                        d.dr6
                    } else {
                        0
                    },
                }
            }
            other => Exit::Other(other),
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if !self.run.is_null() {
            // SAFETY: unmapping the vCPU mapping this struct owns.
            unsafe { libc::munmap(self.run.cast(), self.run_size) };
        }
        if self.vcpu >= 0 {
            close(self.vcpu);
        }
        close(self.vm);
    }
}

/// The vCPU fd's `kvm_run` mapping (`size`: KVM_GET_VCPU_MMAP_SIZE).
fn map_run(vcpu: RawFd, size: usize) -> Result<*mut kvm_run, String> {
    // SAFETY: a fresh shared mapping of the vCPU fd, as large as KVM says it is.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            vcpu,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap vCPU: {}", Error::last_os_error()));
    }
    Ok(p.cast())
}

/// KVM_GET_SUPPORTED_CPUID into vCPU `vcpu` (KVM_SET_CPUID2).
fn set_supported_cpuid(kvm: RawFd, vcpu: RawFd) -> Result<(), String> {
    let mut c = Cpuid {
        nent: MAX_CPUID as u32,
        padding: 0,
        entries: [uapi::kvm_cpuid_entry2::default(); MAX_CPUID],
    };
    sys(
        "KVM_GET_SUPPORTED_CPUID",
        ioctl_ref(kvm, KVM_GET_SUPPORTED_CPUID, &mut c),
    )?;
    sys("KVM_SET_CPUID2", ioctl_ref(vcpu, KVM_SET_CPUID2, &mut c)).map(drop)
}

/// `struct kvm_cpuid2` with room for its entries.
#[repr(C)]
struct Cpuid {
    nent: u32,
    padding: u32,
    entries: [uapi::kvm_cpuid_entry2; MAX_CPUID],
}

fn flat_segment(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Real mode port I/O through the fast PIO path: OUT, IN with data from userspace,
/// OUT of what IN read, HLT. Also the health check after `bad-args`.
fn real_io(t: &mut Report, kvm: RawFd, name: &str) -> Result<(), String> {
    let g = Guest::new(kvm)?;
    g.mem.write(
        0x1000,
        &[
            0xb0, 0x42, // mov al, 0x42
            0xe6, 0x10, // out 0x10, al
            0xe4, 0x11, // in al, 0x11
            0xe6, 0x12, // out 0x12, al
            0xf4, // hlt
        ],
    );
    g.real_mode(0x1000, 0xaabb_ccdd)?;
    t.exit(
        &format!("{name}: out 0x10, al"),
        &g.step(),
        &out(0x10, 1, 1, &[0x42]),
    );
    t.exit(&format!("{name}: in al, 0x11"), &g.step(), &inp(0x11, 1, 1));
    g.set_io_data(&[0x99]);
    t.exit(
        &format!("{name}: out 0x12, al gives what IN read"),
        &g.step(),
        &out(0x12, 1, 1, &[0x99]),
    );
    t.exit(&format!("{name}: hlt"), &g.step(), &Exit::Hlt);
    let r = g.regs()?;
    t.reg(&format!("{name}: RIP is past the HLT"), r.rip, 0x1009);
    // An 8-bit IN merges into RAX (kvm_fast_pio_in / complete_fast_pio_in).
    t.reg(
        &format!("{name}: RAX keeps its upper bits"),
        r.rax,
        0xaabb_cc99,
    );
    Ok(())
}

/// One u64 statistic by name from a binary stats fd (KVM_GET_STATS_FD's format).
fn read_stat(fd: RawFd, name: &str) -> Option<u64> {
    let mut h = [0u8; 24];
    // SAFETY: reads into a local buffer of the given size.
    if unsafe { libc::pread(fd, h.as_mut_ptr().cast(), h.len(), 0) } != 24 {
        return None;
    }
    let u = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap()) as usize;
    let (name_size, n, desc_off, data_off) = (u(4), u(8), u(16), u(20));
    let dsize = 16 + name_size;
    let mut d = vec![0u8; dsize * n];
    // SAFETY: as above.
    let r = unsafe { libc::pread(fd, d.as_mut_ptr().cast(), d.len(), desc_off as i64) };
    if r != d.len() as isize {
        return None;
    }
    for i in 0..n {
        let desc = &d[i * dsize..(i + 1) * dsize];
        let nm = &desc[16..];
        let end = nm.iter().position(|&b| b == 0).unwrap_or(nm.len());
        if &nm[..end] == name.as_bytes() {
            let off = u32::from_le_bytes(desc[8..12].try_into().unwrap()) as usize;
            let mut v = [0u8; 8];
            // SAFETY: as above.
            let r = unsafe { libc::pread(fd, v.as_mut_ptr().cast(), 8, (data_off + off) as i64) };
            return (r == 8).then(|| u64::from_le_bytes(v));
        }
    }
    None
}

/// The in-kernel LAPIC: x2APIC mode through MSRs, a one-shot timer that wakes the
/// vCPU from HLT (no KVM_EXIT_HLT with an in-kernel LAPIC) and is delivered through
/// the real-mode IVT, EOI, and KVM_GET_LAPIC / KVM_GET_STATS_FD showing it.
fn lapic_timer(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    let g = Guest::with_irqchip(kvm)?;
    g.set_supported_cpuid()?;
    let mut code = vec![
        0x66, 0xb9, 0x1b, 0, 0, 0, // mov ecx, MSR_IA32_APICBASE
        0x0f, 0x32, // rdmsr
        0x66, 0x0d, 0x00, 0x0c, 0, 0, // or eax, ENABLE | X2APIC
        0x0f, 0x30, // wrmsr
    ];
    let wrmsr = |code: &mut Vec<u8>, msr: u32, val: u32| {
        code.extend([0x66, 0xb9]);
        code.extend(msr.to_le_bytes()); // mov ecx, msr
        code.extend([0x66, 0xb8]);
        code.extend(val.to_le_bytes()); // mov eax, val
        code.extend([0x66, 0x31, 0xd2, 0x0f, 0x30]); // xor edx, edx; wrmsr
    };
    wrmsr(&mut code, 0x80f, 0x1ff); // SVR: software-enabled
    wrmsr(&mut code, 0x83e, 0xb); // TDCR: divide by 1
    wrmsr(&mut code, 0x832, 0x40); // LVTT: one-shot, vector 0x40
    wrmsr(&mut code, 0x838, 1_000_000); // TMICT: 1 ms at KVM's 1 GHz APIC bus
    code.extend([
        0xfb, // sti
        0xf4, // hlt
        0xb0, 0x01, // mov al, 1
        0xe6, 0x11, // out 0x11, al
        0xeb, 0xfe, // jmp $
    ]);
    g.mem.write(0x1000, &code);
    let mut handler = vec![0xb0, 0x42, 0xe6, 0x10]; // mov al, 0x42; out 0x10, al
    wrmsr(&mut handler, 0x80b, 0); // EOI
    handler.push(0xcf); // iret
    g.mem.write(0x2000, &handler);
    // IVT entry 0x40: 0000:2000.
    g.mem.write(0x40 * 4, &[0x00, 0x20, 0x00, 0x00]);
    g.real_mode_stack(0x1000)?;

    t.exit(
        "lapic-timer: the timer interrupt's handler runs",
        &g.step(),
        &out(0x10, 1, 1, &[0x42]),
    );
    let mut l = uapi::kvm_lapic_state::default();
    sys("KVM_GET_LAPIC", ioctl_ref(g.vcpu, KVM_GET_LAPIC, &mut l))?;
    let reg = |l: &uapi::kvm_lapic_state, off: usize| {
        u32::from_le_bytes(std::array::from_fn(|i| l.regs[off + i] as u8))
    };
    t.reg(
        "lapic-timer: LVTT as the guest wrote it",
        reg(&l, 0x320).into(),
        0x40,
    );
    // ISR bit 0x40 (register 0x100 + 0x10 * (0x40 / 32)) while the handler runs.
    t.reg(
        "lapic-timer: vector 0x40 in service",
        (reg(&l, 0x120) & 1).into(),
        1,
    );
    t.reg(
        "lapic-timer: x2APIC id is the vCPU's",
        reg(&l, 0x20).into(),
        0,
    );
    let mut m = uapi::kvm_mp_state::default();
    sys(
        "KVM_GET_MP_STATE",
        ioctl_ref(g.vcpu, KVM_GET_MP_STATE, &mut m),
    )?;
    t.reg(
        "lapic-timer: running again",
        m.mp_state.into(),
        uapi::KVM_MP_STATE_RUNNABLE.into(),
    );
    t.exit(
        "lapic-timer: IRET returns past the HLT",
        &g.step(),
        &out(0x11, 1, 1, &[0x01]),
    );
    sys("KVM_GET_LAPIC", ioctl_ref(g.vcpu, KVM_GET_LAPIC, &mut l))?;
    t.reg(
        "lapic-timer: EOI cleared ISR",
        (reg(&l, 0x120) & 1).into(),
        0,
    );

    let khz = ioctl(g.vm, KVM_GET_TSC_KHZ, 0);
    t.check(
        "lapic-timer: KVM_GET_TSC_KHZ on the VM",
        khz.is_ok_and(|k| k > 0),
        show(khz),
    );
    let vkhz = ioctl(g.vcpu, KVM_GET_TSC_KHZ, 0);
    t.check(
        "lapic-timer: the vCPU's TSC rate is the VM's",
        vkhz == khz,
        show(vkhz),
    );
    let fd = sys("KVM_GET_STATS_FD", ioctl(g.vcpu, KVM_GET_STATS_FD, 0))?;
    let halts = read_stat(fd, "halt_exits");
    t.check(
        "lapic-timer: stats count the HLT",
        halts.is_some_and(|n| n >= 1),
        format!("{halts:?}"),
    );
    let inj = read_stat(fd, "irq_injections");
    t.check(
        "lapic-timer: stats count the injection",
        inj.is_some_and(|n| n >= 1),
        format!("{inj:?}"),
    );
    close(fd);
    Ok(())
}

/// REP OUTSB / REP INSB, which KVM emulates.
fn real_string_io(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    let g = Guest::new(kvm)?;
    let bytes = [0xa1, 0xb2, 0xc3, 0xd4];
    g.mem.write(0x2000, &bytes);
    g.mem.write(
        0x1000,
        &[
            0xbe, 0x00, 0x20, // mov si, 0x2000
            0xb9, 0x04, 0x00, // mov cx, 4
            0xba, 0x20, 0x00, // mov dx, 0x20
            0xf3, 0x6e, // rep outsb
            0xbf, 0x00, 0x30, // mov di, 0x3000
            0xb9, 0x03, 0x00, // mov cx, 3
            0xba, 0x21, 0x00, // mov dx, 0x21
            0xf3, 0x6c, // rep insb
            0xf4, // hlt
        ],
    );
    g.real_mode(0x1000, 0)?;
    // OUTS goes to userspace one element per exit: em_out passes count 1 to
    // emulator_pio_out, and x86_emulate_instruction exits before restarting the REP.
    for (i, b) in bytes.iter().enumerate() {
        t.exit(
            &format!("real-string-io: rep outsb element {i} is its own exit"),
            &g.step(),
            &out(0x20, 1, 1, &[*b]),
        );
    }
    // INS reads ahead: pio_in_emulated asks for min(RCX, rest of page, 1024) elements
    // in one exit.
    t.exit(
        "real-string-io: rep insb is one exit of count 3",
        &g.step(),
        &inp(0x21, 1, 3),
    );
    g.set_io_data(&[0x11, 0x22, 0x33]);
    t.exit("real-string-io: hlt", &g.step(), &Exit::Hlt);
    let m = g.mem.read(0x3000, 4);
    t.check(
        "real-string-io: rep insb stored the 3 bytes",
        m == [0x11, 0x22, 0x33, 0],
        hex(&m),
    );
    let r = g.regs()?;
    t.reg("real-string-io: RCX", r.rcx, 0);
    t.reg("real-string-io: RSI", r.rsi, 0x2004);
    t.reg("real-string-io: RDI", r.rdi, 0x3003);
    t.reg("real-string-io: RIP", r.rip, 0x1017);
    Ok(())
}

/// 32-bit protected mode entered through SREGS.
fn pm32(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    let g = Guest::new(kvm)?;
    g.mem.write(
        0x1000,
        &[
            0xb8, 0x78, 0x56, 0x34, 0x12, // mov eax, 0x12345678
            0xe7, 0x30, // out 0x30, eax
            0xf4, // hlt
        ],
    );
    let want = g.flat32(0x1000)?;
    let s = g.sregs()?;
    t.check(
        "pm32: SREGS read back",
        s.cr0 & (CR0_PE | CR0_PG) == CR0_PE
            && s.cs.db == 1
            && s.cs.l == 0
            && s.cs.limit == want.cs.limit
            && s.cs.selector == 8
            && s.ss.db == 1,
        format!("cr0 {:#x} cs {:?}", s.cr0, s.cs),
    );
    t.exit(
        "pm32: out 0x30, eax",
        &g.step(),
        &out(0x30, 4, 1, &0x1234_5678u32.to_le_bytes()),
    );
    t.exit("pm32: hlt", &g.step(), &Exit::Hlt);
    t.reg("pm32: RIP", g.regs()?.rip, 0x1008);
    Ok(())
}

/// KVM_GET_DIRTY_LOG of `slot` into a one-word bitmap (the slot has <= 64 pages).
fn dirty_log(vm: RawFd, slot: u32) -> Result<u64, i32> {
    let mut bits = 0u64;
    let mut d = uapi::kvm_dirty_log {
        slot,
        ..Default::default()
    };
    d.__bindgen_anon_1.padding2 = ptr::addr_of_mut!(bits) as u64;
    ioctl_ref(vm, KVM_GET_DIRTY_LOG, &mut d)?;
    Ok(bits)
}

/// Slot 1: 16 dirty-logged pages at GPA 0x200000.
fn logged_slot(g: &Guest) -> Result<Mem, String> {
    let logged = Mem::new(16 * PAGE as usize)?;
    let mut region = kvm_userspace_memory_region {
        slot: 1,
        flags: KVM_MEM_LOG_DIRTY_PAGES,
        guest_phys_addr: 0x20_0000,
        memory_size: 16 * PAGE,
        userspace_addr: logged.addr(),
    };
    sys(
        "KVM_SET_USER_MEMORY_REGION (logged)",
        ioctl_ref(g.vm, KVM_SET_USER_MEMORY_REGION, &mut region),
    )?;
    Ok(logged)
}

/// Dirty logging: a 16-page slot with KVM_MEM_LOG_DIRTY_PAGES; guest writes show
/// up in KVM_GET_DIRTY_LOG, which clears the log and write-protects again, so
/// a later write to the same page is logged again.
fn dirty_log_case(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    let g = Guest::new(kvm)?;
    let logged = logged_slot(&g)?;
    g.mem.write(
        0x1000,
        &[
            0xc6, 0x05, 0x00, 0x10, 0x20, 0x00, 0x11, // mov byte [0x201000], 0x11
            0xa0, 0x00, 0x30, 0x20, 0x00, // mov al, [0x203000] (a read)
            0xc6, 0x05, 0x00, 0x50, 0x20, 0x00, 0x55, // mov byte [0x205000], 0x55
            0xe6, 0x10, // out 0x10, al
            0xc6, 0x05, 0x01, 0x50, 0x20, 0x00, 0x66, // mov byte [0x205001], 0x66
            0xe6, 0x11, // out 0x11, al
            0xf4, // hlt
        ],
    );
    g.flat32(0x1000)?;
    t.exit("dirty-log: first writes", &g.step(), &out(0x10, 1, 1, &[0]));
    let d = dirty_log(g.vm, 1);
    t.check(
        "dirty-log: pages 1 and 5 dirty, the page only read is not",
        d == Ok(1 << 1 | 1 << 5),
        format!("{d:x?}"),
    );
    let d = dirty_log(g.vm, 1);
    t.check(
        "dirty-log: the log was cleared",
        d == Ok(0),
        format!("{d:x?}"),
    );
    t.exit("dirty-log: second write", &g.step(), &out(0x11, 1, 1, &[0]));
    let d = dirty_log(g.vm, 1);
    t.check(
        "dirty-log: a write to a harvested page is logged again",
        d == Ok(1 << 5),
        format!("{d:x?}"),
    );
    let m = logged.read(0x5000, 2);
    t.check(
        "dirty-log: the writes reached memory",
        m == [0x55, 0x66],
        hex(&m),
    );
    let r = dirty_log(g.vm, 0);
    t.check(
        "dirty-log: a slot without logging is -ENOENT",
        r == Err(libc::ENOENT),
        format!("{r:x?}"),
    );
    // x86 has two address spaces (the second is SMM's, with no slots here).
    let r = dirty_log(g.vm, 1 << 16 | 1);
    t.check(
        "dirty-log: address space 1 has no such slot",
        r == Err(libc::ENOENT),
        format!("{r:x?}"),
    );
    let r = dirty_log(g.vm, 2 << 16 | 1);
    t.check(
        "dirty-log: address space 2 is -EINVAL",
        r == Err(libc::EINVAL),
        format!("{r:x?}"),
    );
    // A 256 GiB logged slot (an 8 MiB bitmap, vmalloc'ed upstream) is a valid
    // request: accepted, its log read and the slot deleted, with no warning from
    // the page allocator (fuzzer finding, issue 15).
    const BIG: u64 = 256 << 30;
    let big = Mem::new(BIG as usize)?;
    let mut region = kvm_userspace_memory_region {
        slot: 2,
        flags: KVM_MEM_LOG_DIRTY_PAGES,
        guest_phys_addr: 64 << 30,
        memory_size: BIG,
        userspace_addr: big.addr(),
    };
    let r = ioctl_ref(g.vm, KVM_SET_USER_MEMORY_REGION, &mut region);
    t.expect("dirty-log: a 256 GiB logged slot", r, Ok(0));
    let mut bits = vec![u64::MAX; (BIG / PAGE / 64) as usize];
    let mut d = uapi::kvm_dirty_log {
        slot: 2,
        ..Default::default()
    };
    d.__bindgen_anon_1.padding2 = bits.as_mut_ptr() as u64;
    let r = ioctl_ref(g.vm, KVM_GET_DIRTY_LOG, &mut d);
    t.check(
        "dirty-log: its 8 MiB log, all clean",
        r == Ok(0) && bits.iter().all(|&w| w == 0),
        format!("{r:?}"),
    );
    region.memory_size = 0;
    let r = ioctl_ref(g.vm, KVM_SET_USER_MEMORY_REGION, &mut region);
    t.expect("dirty-log: delete it", r, Ok(0));
    Ok(())
}

/// Dirty logging switched on for a slot the guest already wrote (a flags-only
/// change, as QEMU's migration does): the pages stay mapped but write-protected,
/// so only the writes after the switch are logged; switched off, the slot has no
/// log again and writes go on.
fn dirty_log_enable(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    let g = Guest::new(kvm)?;
    let mem = Mem::new(16 * PAGE as usize)?;
    let mut region = kvm_userspace_memory_region {
        slot: 1,
        flags: 0,
        guest_phys_addr: 0x20_0000,
        memory_size: 16 * PAGE,
        userspace_addr: mem.addr(),
    };
    sys(
        "KVM_SET_USER_MEMORY_REGION",
        ioctl_ref(g.vm, KVM_SET_USER_MEMORY_REGION, &mut region),
    )?;
    g.mem.write(
        0x1000,
        &[
            0xc6, 0x05, 0x00, 0x10, 0x20, 0x00, 0x11, // mov byte [0x201000], 0x11
            0xc6, 0x05, 0x00, 0x20, 0x20, 0x00, 0x22, // mov byte [0x202000], 0x22
            0xe6, 0x10, // out 0x10, al
            0xc6, 0x05, 0x01, 0x10, 0x20, 0x00, 0x33, // mov byte [0x201001], 0x33
            0xc6, 0x05, 0x00, 0x30, 0x20, 0x00, 0x44, // mov byte [0x203000], 0x44
            0xa0, 0x00, 0x20, 0x20, 0x00, // mov al, [0x202000] (a read)
            0xe6, 0x11, // out 0x11, al
            0xc6, 0x05, 0x00, 0x40, 0x20, 0x00, 0x55, // mov byte [0x204000], 0x55
            0xe6, 0x12, // out 0x12, al
        ],
    );
    g.flat32(0x1000)?;
    t.exit(
        "dirty-log-enable: writes before logging",
        &g.step(),
        &out(0x10, 1, 1, &[0]),
    );
    region.flags = KVM_MEM_LOG_DIRTY_PAGES;
    let r = ioctl_ref(g.vm, KVM_SET_USER_MEMORY_REGION, &mut region);
    t.expect("dirty-log-enable: logging switched on", r, Ok(0));
    t.exit(
        "dirty-log-enable: writes while logging",
        &g.step(),
        &out(0x11, 1, 1, &[0x22]),
    );
    let d = dirty_log(g.vm, 1);
    t.check(
        "dirty-log-enable: only pages written since are dirty",
        d == Ok(1 << 1 | 1 << 3),
        format!("{d:x?}"),
    );
    region.flags = 0;
    let r = ioctl_ref(g.vm, KVM_SET_USER_MEMORY_REGION, &mut region);
    t.expect("dirty-log-enable: logging switched off", r, Ok(0));
    t.exit(
        "dirty-log-enable: writes after",
        &g.step(),
        &out(0x12, 1, 1, &[0x22]),
    );
    let r = dirty_log(g.vm, 1);
    t.check(
        "dirty-log-enable: the slot has no log again",
        r == Err(libc::ENOENT),
        format!("{r:x?}"),
    );
    let m = [
        mem.read(0x1000, 2),
        mem.read(0x2000, 1),
        mem.read(0x3000, 1),
        mem.read(0x4000, 1),
    ];
    t.check(
        "dirty-log-enable: every write reached memory",
        m == [vec![0x11, 0x33], vec![0x22], vec![0x44], vec![0x55]],
        format!("{m:x?}"),
    );
    Ok(())
}

/// KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with INITIALLY_SET: a slot starts logging
/// with every page dirty, KVM_GET_DIRTY_LOG no longer clears the log,
/// KVM_CLEAR_DIRTY_LOG does (64-page aligned) and write-protects what it cleared
/// so the next guest write is logged again (kvm_clear_dirty_log_protect()).
fn dirty_log_manual(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    const KVM_CHECK_EXTENSION: u32 = io(0x03);
    const KVM_CLEAR_DIRTY_LOG: u32 = iowr::<uapi::kvm_clear_dirty_log>(0xc0);
    let cap = uapi::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2;
    let r = ioctl(kvm, KVM_CHECK_EXTENSION, cap.into());
    t.expect("dirty-manual: ENABLE | INITIALLY_SET offered", r, Ok(3));
    let g = Guest::new(kvm)?;
    let e = enable_cap(g.vm, cap, 2, 0);
    t.expect(
        "dirty-manual: INITIALLY_SET without ENABLE",
        e,
        Err(libc::EINVAL),
    );
    let e = enable_cap(g.vm, cap, 1, 1);
    t.expect("dirty-manual: flags", e, Err(libc::EINVAL));
    let e = enable_cap(g.vm, cap, 4 | 1, 0);
    t.expect("dirty-manual: an unknown option", e, Err(libc::EINVAL));
    t.expect(
        "dirty-manual: enable both",
        enable_cap(g.vm, cap, 3, 0),
        Ok(0),
    );
    let logged = logged_slot(&g)?;
    let all = (1u64 << 16) - 1;
    let d = dirty_log(g.vm, 1);
    t.check(
        "dirty-manual: every page starts dirty",
        d == Ok(all),
        format!("{d:x?}"),
    );
    let d = dirty_log(g.vm, 1);
    t.check(
        "dirty-manual: GET does not clear",
        d == Ok(all),
        format!("{d:x?}"),
    );
    let clear = |slot: u32, first: u64, num: u32, mut mask: u64| {
        let mut c = uapi::kvm_clear_dirty_log {
            slot,
            num_pages: num,
            first_page: first,
            ..Default::default()
        };
        c.__bindgen_anon_1.padding2 = ptr::addr_of_mut!(mask) as u64;
        ioctl_ref(g.vm, KVM_CLEAR_DIRTY_LOG, &mut c)
    };
    for (what, slot, first, num, want) in [
        ("an unaligned first page", 1, 1, 15, libc::EINVAL),
        ("past the slot's end", 1, 0, 17, libc::EINVAL),
        ("a first page past the slot", 1, 64, 0, libc::EINVAL),
        ("a slot without a log", 0, 0, 16, libc::ENOENT),
        ("address space 2", 2 << 16 | 1, 0, 16, libc::EINVAL),
    ] {
        let r = clear(slot, first, num, all);
        t.expect(&format!("dirty-manual: CLEAR with {what}"), r, Err(want));
    }
    t.expect("dirty-manual: CLEAR pages 0-3", clear(1, 0, 16, 0xf), Ok(0));
    let d = dirty_log(g.vm, 1);
    t.check(
        "dirty-manual: only those cleared",
        d == Ok(all & !0xf),
        format!("{d:x?}"),
    );
    t.expect("dirty-manual: CLEAR all", clear(1, 0, 16, all), Ok(0));
    g.mem.write(
        0x1000,
        &[
            0xc6, 0x05, 0x00, 0x20, 0x20, 0x00, 0x22, // mov byte [0x202000], 0x22
            0xe6, 0x10, // out 0x10, al
            0xc6, 0x05, 0x00, 0x20, 0x20, 0x00, 0x33, // mov byte [0x202000], 0x33
            0xe6, 0x11, // out 0x11, al
            0xf4, // hlt
        ],
    );
    g.flat32(0x1000)?;
    t.exit(
        "dirty-manual: a write to page 2",
        &g.step(),
        &out(0x10, 1, 1, &[0]),
    );
    let d = dirty_log(g.vm, 1);
    t.check(
        "dirty-manual: page 2 is logged",
        d == Ok(1 << 2),
        format!("{d:x?}"),
    );
    t.expect("dirty-manual: CLEAR page 2", clear(1, 0, 16, 1 << 2), Ok(0));
    t.exit(
        "dirty-manual: page 2 written again",
        &g.step(),
        &out(0x11, 1, 1, &[0]),
    );
    let d = dirty_log(g.vm, 1);
    t.check(
        "dirty-manual: CLEAR write-protected it: logged again",
        d == Ok(1 << 2),
        format!("{d:x?}"),
    );
    t.check(
        "dirty-manual: the write reached memory",
        logged.read(0x2000, 1) == [0x33],
        "",
    );
    Ok(())
}

/// Guest memory that the VMM unmaps and maps again: the guest must see the new
/// page, not the one it had mapped (KVM's MMU notifier).
fn remap(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    let g = Guest::new(kvm)?;
    g.mem.write(0x3000, &[0x11]);
    g.mem.write(
        0x1000,
        &[
            0xa0, 0x00, 0x30, // mov al, [0x3000]
            0xe6, 0x10, // out 0x10, al
            0xa0, 0x00, 0x30, // mov al, [0x3000]
            0xe6, 0x11, // out 0x11, al
            0xf4, // hlt
        ],
    );
    g.real_mode(0x1000, 0)?;
    t.exit("remap: the old page", &g.step(), &out(0x10, 1, 1, &[0x11]));
    g.mem.replace_page(0x3000)?;
    g.mem.write(0x3000, &[0x22]);
    t.exit("remap: the new page", &g.step(), &out(0x11, 1, 1, &[0x22]));
    Ok(())
}

/// 64-bit long mode with identity-mapped 2 MiB page tables.
fn long64(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    let g = Guest::new(kvm)?;
    // PML4 at 0x10000 -> PDPT at 0x11000 -> PD at 0x12000, PD[0] a 2 MiB page at 0.
    g.mem.write_u64(0x10000, 0x11000 | 3); // present, writable
    g.mem.write_u64(0x11000, 0x12000 | 3);
    g.mem.write_u64(0x12000, 0x83); // present, writable, PS
    g.mem.write(
        0x1000,
        &[
            0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22,
            0x11, // mov rax, 0x1122334455667788
            0xe7, 0x40, // out 0x40, eax
            0x48, 0x89, 0x04, 0x25, 0x00, 0xf0, 0x1f, 0x00, // mov [0x1ff000], rax
            0xf4, // hlt
        ],
    );
    let mut s = g.flat32(0x1000)?;
    s.cs.l = 1;
    s.cs.db = 0;
    s.cr3 = 0x10000;
    s.cr4 = CR4_PAE;
    s.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
    s.efer = EFER_LME | EFER_LMA;
    // Without KVM_SET_CPUID2 the guest has no CPUID.LM, so EFER.LME is invalid
    // (kvm_is_valid_sregs -> kvm_valid_efer -> __kvm_valid_efer).
    let mut s0 = s;
    t.expect(
        "long64: SET_SREGS into long mode without CPUID.LM",
        ioctl_ref(g.vcpu, KVM_SET_SREGS, &mut s0),
        Err(libc::EINVAL),
    );
    g.set_supported_cpuid()?;
    g.set_sregs(s)?;
    let back = g.sregs()?;
    t.check(
        "long64: SREGS read back",
        back.efer & (EFER_LME | EFER_LMA) == EFER_LME | EFER_LMA
            && back.cr0 & CR0_PG != 0
            && back.cr3 == 0x10000
            && back.cs.l == 1,
        format!(
            "efer {:#x} cr0 {:#x} cr3 {:#x} cs.l {}",
            back.efer, back.cr0, back.cr3, back.cs.l
        ),
    );
    t.exit(
        "long64: out 0x40, eax",
        &g.step(),
        &out(0x40, 4, 1, &0x5566_7788u32.to_le_bytes()),
    );
    t.exit("long64: hlt", &g.step(), &Exit::Hlt);
    let m = g.mem.read_u64(0x1f_f000);
    t.reg(
        "long64: the store reached guest memory",
        m,
        0x1122_3344_5566_7788,
    );
    let r = g.regs()?;
    t.reg("long64: RAX", r.rax, 0x1122_3344_5566_7788);
    t.reg("long64: RIP", r.rip, 0x1015);
    Ok(())
}

/// Accesses to a GPA without a memslot go to userspace as MMIO.
fn mmio(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    let g = Guest::new(kvm)?;
    g.mem.write(
        0x1000,
        &[
            0xc7, 0x05, 0x00, 0x00, 0x00, 0xd0, 0xef, 0xbe, 0xad,
            0xde, // mov dword [0xd0000000], 0xdeadbeef
            0xa1, 0x04, 0x00, 0x00, 0xd0, // mov eax, [0xd0000004]
            0xe7, 0x50, // out 0x50, eax
            0xf4, // hlt
        ],
    );
    g.flat32(0x1000)?;
    t.exit(
        "mmio: write",
        &g.step(),
        &Exit::Mmio {
            addr: 0xd000_0000,
            len: 4,
            write: true,
            data: 0xdead_beefu32.to_le_bytes().to_vec(),
        },
    );
    t.exit(
        "mmio: read",
        &g.step(),
        &Exit::Mmio {
            addr: 0xd000_0004,
            len: 4,
            write: false,
            data: Vec::new(),
        },
    );
    g.set_mmio_data(&0xcafe_f00du32.to_le_bytes());
    t.exit(
        "mmio: the read returned what userspace supplied",
        &g.step(),
        &out(0x50, 4, 1, &0xcafe_f00du32.to_le_bytes()),
    );
    t.exit("mmio: hlt", &g.step(), &Exit::Hlt);
    t.reg("mmio: RIP", g.regs()?.rip, 0x1012);
    Ok(())
}

/// #UD with an empty IDT: #GP, #DF, shutdown.
fn triple_fault(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    let g = Guest::new(kvm)?;
    g.mem.write(0x1000, &[0x0f, 0x0b]); // ud2
    let mut s = g.flat32(0x1000)?;
    s.idt.base = 0;
    s.idt.limit = 0;
    g.set_sregs(s)?;
    t.exit(
        "triple-fault: ud2 with IDT limit 0",
        &g.step(),
        &Exit::Shutdown,
    );
    if fs::metadata("/sys/module/kvm_amd").is_ok() {
        // SVM: the VMCB is undefined after a SHUTDOWN intercept, so KVM INITs the vCPU
        // (svm.c shutdown_interception -> kvm_vcpu_reset).
        let r = g.regs()?;
        let s = g.sregs()?;
        t.check(
            "triple-fault: SVM INITs the vCPU after SHUTDOWN",
            r.rip == 0xfff0 && s.cs.selector == 0xf000 && s.cr0 & CR0_PE == 0,
            format!("rip {:#x} cs {:#x} cr0 {:#x}", r.rip, s.cs.selector, s.cr0),
        );
    }
    triple_fault_event(t, kvm)
}

/// KVM_CAP_X86_TRIPLE_FAULT_EVENT: a triple fault userspace makes pending with
/// KVM_SET_VCPU_EVENTS (as a migration restores one) is reported back and shuts
/// the guest down at its next entry; without the capability the flag is refused.
fn triple_fault_event(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    const KVM_GET_VCPU_EVENTS: u32 = ior::<uapi::kvm_vcpu_events>(0x9f);
    const KVM_SET_VCPU_EVENTS: u32 = iow::<uapi::kvm_vcpu_events>(0xa0);
    const KVM_ENABLE_CAP: u32 = iow::<uapi::kvm_enable_cap>(0xa3);
    let g = Guest::new(kvm)?;
    g.mem.write(0x1000, &[0xf4]); // hlt
    g.real_mode_stack(0x1000)?;
    let mut e = uapi::kvm_vcpu_events::default();
    sys(
        "KVM_GET_VCPU_EVENTS",
        ioctl_ref(g.vcpu, KVM_GET_VCPU_EVENTS, &mut e),
    )?;
    t.check(
        "triple-fault-event: not reported without the capability",
        e.flags & uapi::KVM_VCPUEVENT_VALID_TRIPLE_FAULT == 0,
        format!("flags {:#x}", e.flags),
    );
    e.flags |= uapi::KVM_VCPUEVENT_VALID_TRIPLE_FAULT;
    e.triple_fault.pending = 1;
    t.expect(
        "triple-fault-event: refused without the capability",
        ioctl_ref(g.vcpu, KVM_SET_VCPU_EVENTS, &mut e),
        Err(libc::EINVAL),
    );
    let mut c = uapi::kvm_enable_cap {
        cap: uapi::KVM_CAP_X86_TRIPLE_FAULT_EVENT,
        args: [1, 0, 0, 0],
        ..Default::default()
    };
    sys(
        "KVM_ENABLE_CAP(X86_TRIPLE_FAULT_EVENT)",
        ioctl_ref(g.vm, KVM_ENABLE_CAP, &mut c),
    )?;
    let mut e = uapi::kvm_vcpu_events::default();
    sys(
        "KVM_GET_VCPU_EVENTS",
        ioctl_ref(g.vcpu, KVM_GET_VCPU_EVENTS, &mut e),
    )?;
    t.check(
        "triple-fault-event: reported, none pending",
        e.flags & uapi::KVM_VCPUEVENT_VALID_TRIPLE_FAULT != 0 && e.triple_fault.pending == 0,
        format!("flags {:#x} pending {}", e.flags, e.triple_fault.pending),
    );
    e.triple_fault.pending = 1;
    sys(
        "KVM_SET_VCPU_EVENTS",
        ioctl_ref(g.vcpu, KVM_SET_VCPU_EVENTS, &mut e),
    )?;
    let mut back = uapi::kvm_vcpu_events::default();
    sys(
        "KVM_GET_VCPU_EVENTS",
        ioctl_ref(g.vcpu, KVM_GET_VCPU_EVENTS, &mut back),
    )?;
    t.check(
        "triple-fault-event: pending after KVM_SET_VCPU_EVENTS",
        back.triple_fault.pending == 1,
        format!("pending {}", back.triple_fault.pending),
    );
    t.exit(
        "triple-fault-event: the pending triple fault shuts the guest down",
        &g.step(),
        &Exit::Shutdown,
    );
    Ok(())
}

/// Argument checking of the memslot and vCPU ioctls, then a guest still runs.
fn bad_args(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    {
        let mem = Mem::new(MEM_SIZE)?;
        let vm = sys("KVM_CREATE_VM", ioctl(kvm, KVM_CREATE_VM, 0))?;
        let set = |slot: u32, gpa: u64, size: u64, hva: u64| {
            let mut region = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: gpa,
                memory_size: size,
                userspace_addr: hva,
            };
            ioctl_ref(vm, KVM_SET_USER_MEMORY_REGION, &mut region)
        };
        let (hva, size) = (mem.addr(), MEM_SIZE as u64);
        // kvm_set_memory_region's sanity checks.
        t.expect(
            "bad-args: memslot GPA not page aligned",
            set(0, 0x1001, size, hva),
            Err(libc::EINVAL),
        );
        t.expect(
            "bad-args: memslot size not page aligned",
            set(0, 0, 0x1001, hva),
            Err(libc::EINVAL),
        );
        t.expect(
            "bad-args: memslot HVA not page aligned",
            set(0, 0, size, hva + 1),
            Err(libc::EINVAL),
        );
        t.expect(
            "bad-args: memslot GPA range wraps",
            set(0, !(PAGE - 1), size, hva),
            Err(libc::EINVAL),
        );
        // kvm_vm_ioctl_set_memory_region: (u16)slot >= KVM_USER_MEM_SLOTS.
        t.expect(
            "bad-args: memslot id KVM_USER_MEM_SLOTS",
            set(KVM_USER_MEM_SLOTS, 0, size, hva),
            Err(libc::EINVAL),
        );
        // Deleting (size 0) a slot that does not exist: -EINVAL (!old || !old->npages).
        t.expect(
            "bad-args: deleting an empty memslot",
            set(5, 0, 0, 0),
            Err(libc::EINVAL),
        );
        t.expect("bad-args: memslot 0", set(0, 0, size, hva), Ok(0));
        // The same region again changes nothing and succeeds.
        t.expect("bad-args: memslot 0 again", set(0, 0, size, hva), Ok(0));
        // A live slot's size and HVA cannot change, only its GPA and flags.
        t.expect(
            "bad-args: resizing memslot 0",
            set(0, 0, size / 2, hva),
            Err(libc::EINVAL),
        );
        // kvm_check_memslot_overlap.
        t.expect(
            "bad-args: memslot 1 overlapping memslot 0",
            set(1, size / 2, size, hva),
            Err(libc::EEXIST),
        );
        t.expect(
            "bad-args: memslot 1 adjacent to memslot 0",
            set(1, size, size, hva),
            Ok(0),
        );
        t.expect(
            "bad-args: memslot 1 over exactly memslot 0's range",
            set(1, 0, size, hva),
            Err(libc::EEXIST),
        );
        // kvm_arch_prepare_memory_region(): past the host's MAXPHYADDR (52 at most).
        t.expect(
            "bad-args: memslot 1 beyond MAXPHYADDR",
            set(1, 1 << 52, PAGE, hva),
            Err(libc::EINVAL),
        );
        t.expect("bad-args: deleting memslot 1", set(1, size, 0, 0), Ok(0));
        // The routing table's header is copied first: -EFAULT, even without an
        // irqchip (which would be -EINVAL).
        const KVM_SET_GSI_ROUTING: u32 = iow::<uapi::kvm_irq_routing>(0x6a);
        t.expect(
            "bad-args: SET_GSI_ROUTING(NULL) without an irqchip",
            ioctl(vm, KVM_SET_GSI_ROUTING, 0),
            Err(libc::EFAULT),
        );
        t.expect(
            "bad-args: deleting memslot 1 twice",
            set(1, size, 0, 0),
            Err(libc::EINVAL),
        );

        // vCPU ids: kvm_vm_ioctl_create_vcpu / kvm_arch_vcpu_precreate.
        t.expect(
            "bad-args: CREATE_VCPU(0xffffffff)",
            ioctl(vm, KVM_CREATE_VCPU, 0xffff_ffff),
            Err(libc::EINVAL),
        );
        let vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
        t.check("bad-args: CREATE_VCPU(0)", vcpu.is_ok(), show(vcpu));
        t.expect(
            "bad-args: CREATE_VCPU(0) twice",
            ioctl(vm, KVM_CREATE_VCPU, 0),
            Err(libc::EEXIST),
        );
        if let Ok(vcpu) = vcpu {
            // The vCPU ioctls copy to/from the user pointer: a NULL one is -EFAULT.
            t.expect(
                "bad-args: GET_REGS(NULL)",
                ioctl(vcpu, KVM_GET_REGS, 0),
                Err(libc::EFAULT),
            );
            t.expect(
                "bad-args: SET_REGS(NULL)",
                ioctl(vcpu, KVM_SET_REGS, 0),
                Err(libc::EFAULT),
            );
            t.expect(
                "bad-args: GET_SREGS(NULL)",
                ioctl(vcpu, KVM_GET_SREGS, 0),
                Err(libc::EFAULT),
            );
            t.expect(
                "bad-args: SET_SREGS(NULL)",
                ioctl(vcpu, KVM_SET_SREGS, 0),
                Err(libc::EFAULT),
            );
            // kvm_vcpu_ioctl: KVM_RUN takes no argument.
            t.expect(
                "bad-args: KVM_RUN(1)",
                ioctl(vcpu, KVM_RUN, 1),
                Err(libc::EINVAL),
            );
            // kvm_vcpu_ioctl: a foreign ioctl type; kvm_arch_vcpu_ioctl: unknown KVM one.
            t.expect(
                "bad-args: vCPU TCGETS",
                ioctl(vcpu, libc::TCGETS as u32, 0),
                Err(libc::EINVAL),
            );
            t.expect(
                "bad-args: vCPU unknown KVM ioctl",
                ioctl(vcpu, io(0xfe), 0),
                Err(libc::EINVAL),
            );
            // kvm_is_valid_sregs / kvm_is_valid_cr0.
            let mut s = kvm_sregs::default();
            let got = ioctl_ref(vcpu, KVM_GET_SREGS, &mut s);
            t.expect("bad-args: GET_SREGS", got, Ok(0));
            let mut bad = s;
            bad.cr0 = CR0_PG | CR0_ET;
            t.expect(
                "bad-args: SET_SREGS with CR0.PG but not PE",
                ioctl_ref(vcpu, KVM_SET_SREGS, &mut bad),
                Err(libc::EINVAL),
            );
            let mut bad = s;
            bad.cs.l = 1;
            t.expect(
                "bad-args: SET_SREGS with CS.L outside long mode",
                ioctl_ref(vcpu, KVM_SET_SREGS, &mut bad),
                Err(libc::EINVAL),
            );
            bad_args_msrs(t, vcpu);
            bad_args_vcpu_caps(t, vcpu);
            close(vcpu);
        }
        bad_args_vm_caps(t, vm);
        close(vm);
    }
    real_io(t, kvm, "bad-args: afterwards real-io")
}

/// __kvm_set_msr(): linear-address MSRs refuse non-canonical values (KVM_SET_MSRS
/// stops there); SYSENTER_EIP is made canonical instead (AMD ignores its upper
/// half).
fn bad_args_msrs(t: &mut Report, vcpu: RawFd) {
    const MSR_FS_BASE: u32 = 0xc000_0100;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    let msr = |cmd: u32, index: u32, data: u64| {
        let mut m = Msrs1 {
            nmsrs: 1,
            ..Default::default()
        };
        m.entry.index = index;
        m.entry.data = data;
        (ioctl_ref(vcpu, cmd, &mut m), m.entry.data)
    };
    let bad = 0x8000_0000_0000_0000;
    for (name, index) in [("FS_BASE", MSR_FS_BASE), ("LSTAR", MSR_LSTAR)] {
        let (r, _) = msr(KVM_SET_MSRS, index, bad);
        t.expect(
            &format!("bad-args: SET_MSRS of a non-canonical {name}"),
            r,
            Ok(0),
        );
    }
    let (r, _) = msr(KVM_SET_MSRS, MSR_IA32_SYSENTER_EIP, bad | 0x1234);
    t.expect(
        "bad-args: SET_MSRS of a non-canonical SYSENTER_EIP",
        r,
        Ok(1),
    );
    let (r, v) = msr(KVM_GET_MSRS, MSR_IA32_SYSENTER_EIP, 0);
    t.check(
        "bad-args: which reads back canonical",
        r == Ok(1) && v == 0x1234,
        format!("{r:?} {v:#x}"),
    );
}

const KVM_ENABLE_CAP: u32 = iow::<uapi::kvm_enable_cap>(0xa3);

fn enable_cap(fd: RawFd, cap: u32, arg: u64, flags: u32) -> Result<i32, i32> {
    let mut c = uapi::kvm_enable_cap {
        cap,
        flags,
        args: [arg, 0, 0, 0],
        ..Default::default()
    };
    ioctl_ref(fd, KVM_ENABLE_CAP, &mut c)
}

/// The VM-level x86 capabilities' errnos, on a VM with a vCPU and no irqchip.
fn bad_args_vm_caps(t: &mut Report, vm: RawFd) {
    const KVM_CHECK_EXTENSION: u32 = io(0x03);
    const KVM_X86_SET_MSR_FILTER: u32 = iow::<uapi::kvm_msr_filter>(0xc6);
    let x2apic_enable_suppress = 1 << 2;
    let x2apic_disable_suppress = 1 << 3;
    let cases: [(&str, u32, u64, i32); 7] = [
        (
            "APIC_BUS_CYCLES_NS(0)",
            uapi::KVM_CAP_X86_APIC_BUS_CYCLES_NS,
            0,
            libc::EINVAL,
        ),
        // kvm_vm_ioctl_enable_cap(): the LAPIC's bus needs the in-kernel irqchip.
        (
            "APIC_BUS_CYCLES_NS(40) without an irqchip",
            uapi::KVM_CAP_X86_APIC_BUS_CYCLES_NS,
            40,
            libc::ENXIO,
        ),
        (
            "X86_USER_SPACE_MSR(unknown reason)",
            uapi::KVM_CAP_X86_USER_SPACE_MSR,
            1 << 3,
            libc::EINVAL,
        ),
        (
            "X2APIC_API(unknown flag)",
            uapi::KVM_CAP_X2APIC_API,
            1 << 4,
            libc::EINVAL,
        ),
        (
            "X2APIC_API(enable and disable EOI suppression)",
            uapi::KVM_CAP_X2APIC_API,
            x2apic_enable_suppress | x2apic_disable_suppress,
            libc::EINVAL,
        ),
        (
            "X2APIC_API(enable EOI suppression) without the split irqchip",
            uapi::KVM_CAP_X2APIC_API,
            x2apic_enable_suppress,
            libc::EINVAL,
        ),
        (
            "EXIT_ON_EMULATION_FAILURE(2)",
            uapi::KVM_CAP_EXIT_ON_EMULATION_FAILURE,
            2,
            libc::EINVAL,
        ),
    ];
    for (what, cap, arg, errno) in cases {
        t.expect(
            &format!("bad-args: ENABLE_CAP {what}"),
            enable_cap(vm, cap, arg, 0),
            Err(errno),
        );
    }
    t.expect(
        "bad-args: CHECK_EXTENSION(X2APIC_API) on a VM without the split irqchip",
        ioctl(vm, KVM_CHECK_EXTENSION, uapi::KVM_CAP_X2APIC_API as u64),
        Ok(0xb),
    );
    t.expect(
        "bad-args: X86_SET_MSR_FILTER(NULL)",
        ioctl(vm, KVM_X86_SET_MSR_FILTER, 0),
        Err(libc::EFAULT),
    );
    let mut f = uapi::kvm_msr_filter {
        flags: 2,
        ..Default::default()
    };
    t.expect(
        "bad-args: X86_SET_MSR_FILTER with an unknown flag",
        ioctl_ref(vm, KVM_X86_SET_MSR_FILTER, &mut f),
        Err(libc::EINVAL),
    );
    f.flags = uapi::KVM_MSR_FILTER_DEFAULT_DENY;
    t.expect(
        "bad-args: X86_SET_MSR_FILTER denying all without a range",
        ioctl_ref(vm, KVM_X86_SET_MSR_FILTER, &mut f),
        Err(libc::EINVAL),
    );
    f.flags = 0;
    f.ranges[0] = uapi::kvm_msr_filter_range {
        flags: uapi::KVM_MSR_FILTER_READ,
        nmsrs: 1,
        base: 0x10,
        bitmap: ptr::null_mut(),
    };
    t.expect(
        "bad-args: X86_SET_MSR_FILTER with a NULL bitmap",
        ioctl_ref(vm, KVM_X86_SET_MSR_FILTER, &mut f),
        Err(libc::EFAULT),
    );
    f.ranges[0].flags = 4;
    t.expect(
        "bad-args: X86_SET_MSR_FILTER with an unknown range flag",
        ioctl_ref(vm, KVM_X86_SET_MSR_FILTER, &mut f),
        Err(libc::EINVAL),
    );
}

/// The vCPU's device attributes and KVM_ENABLE_CAP errnos.
fn bad_args_vcpu_caps(t: &mut Report, vcpu: RawFd) {
    const KVM_GET_DEVICE_ATTR: u32 = iow::<uapi::kvm_device_attr>(0xe2);
    const KVM_HAS_DEVICE_ATTR: u32 = iow::<uapi::kvm_device_attr>(0xe3);
    let attr = |group: u32, attr: u64, addr: u64| uapi::kvm_device_attr {
        flags: 0,
        group,
        attr,
        addr,
    };
    // (what, ioctl, group, attribute, result)
    type AttrCase = (&'static str, u32, u32, u64, Result<i32, i32>);
    let cases: [AttrCase; 4] = [
        (
            "HAS_DEVICE_ATTR(TSC_CTRL, TSC_OFFSET)",
            KVM_HAS_DEVICE_ATTR,
            0,
            0,
            Ok(0),
        ),
        (
            "HAS_DEVICE_ATTR(unknown group)",
            KVM_HAS_DEVICE_ATTR,
            1,
            0,
            Err(libc::ENXIO),
        ),
        (
            "HAS_DEVICE_ATTR(TSC_CTRL, unknown attribute)",
            KVM_HAS_DEVICE_ATTR,
            0,
            1,
            Err(libc::ENXIO),
        ),
        (
            "GET_DEVICE_ATTR(TSC_OFFSET) into NULL",
            KVM_GET_DEVICE_ATTR,
            0,
            0,
            Err(libc::EFAULT),
        ),
    ];
    for (what, cmd, group, a, want) in cases {
        t.expect(
            &format!("bad-args: {what}"),
            ioctl_ref(vcpu, cmd, &mut attr(group, a, 0)),
            want,
        );
    }
    t.expect(
        "bad-args: vCPU ENABLE_CAP with flags",
        enable_cap(vcpu, uapi::KVM_CAP_ENFORCE_PV_FEATURE_CPUID, 1, 1),
        Err(libc::EINVAL),
    );
    t.expect(
        "bad-args: vCPU ENABLE_CAP of a VM capability",
        enable_cap(vcpu, uapi::KVM_CAP_X2APIC_API, 1, 0),
        Err(libc::EINVAL),
    );
}

/// `kvm_run.immediate_exit`: KVM_RUN returns -EINTR without running the guest, but
/// completes a pending IN first.
fn immediate_exit(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    let g = Guest::new(kvm)?;
    g.mem.write(
        0x1000,
        &[
            0xb0, 0x42, // mov al, 0x42
            0xe6, 0x10, // out 0x10, al
            0xe4, 0x11, // in al, 0x11
            0xe6, 0x12, // out 0x12, al
            0xf4, // hlt
        ],
    );
    g.real_mode(0x1000, 0)?;
    g.set_immediate_exit(1);
    t.expect(
        "immediate-exit: KVM_RUN is -EINTR",
        ioctl(g.vcpu, KVM_RUN, 0),
        Err(libc::EINTR),
    );
    // kvm_arch_vcpu_ioctl_run returns -EINTR for !wants_to_run without writing
    // exit_reason (only a pending signal sets KVM_EXIT_INTR), so a fresh vCPU still
    // reads KVM_EXIT_UNKNOWN.
    let reason = g.state().exit_reason;
    t.check(
        "immediate-exit: exit_reason untouched",
        reason == uapi::KVM_EXIT_UNKNOWN,
        reason,
    );
    t.reg(
        "immediate-exit: the guest did not run",
        g.regs()?.rip,
        0x1000,
    );
    g.set_immediate_exit(0);
    t.exit(
        "immediate-exit: then runs",
        &g.step(),
        &out(0x10, 1, 1, &[0x42]),
    );
    t.exit("immediate-exit: in al, 0x11", &g.step(), &inp(0x11, 1, 1));
    g.set_io_data(&[0x99]);
    g.set_immediate_exit(1);
    t.expect(
        "immediate-exit: KVM_RUN with a pending IN is -EINTR",
        ioctl(g.vcpu, KVM_RUN, 0),
        Err(libc::EINTR),
    );
    // complete_userspace_io runs before the wants_to_run check.
    let r = g.regs()?;
    t.check(
        "immediate-exit: the pending IN completed",
        r.rip == 0x1006 && r.rax & 0xff == 0x99,
        format!("rip {:#x} rax {:#x}", r.rip, r.rax),
    );
    g.set_immediate_exit(0);
    t.exit(
        "immediate-exit: out 0x12, al",
        &g.step(),
        &out(0x12, 1, 1, &[0x99]),
    );
    t.exit("immediate-exit: hlt", &g.step(), &Exit::Hlt);
    Ok(())
}

/// Halt polling (kvm_vcpu_halt()) and KVM_CAP_HALT_POLL: the VM's bound is
/// checked as upstream's, 0 turns polling off for the VM, and with a bound far
/// above the timer's period the window grows until polls catch the wakeups.
fn halt_poll(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    const KVM_CHECK_EXTENSION: u32 = io(0x03);
    const HALTS: u32 = 40;
    /// The timer period, and a bound 40 times as long.
    const PERIOD_NS: u32 = 500_000;
    const BOUND_NS: u64 = 20_000_000;
    let cap = uapi::KVM_CAP_HALT_POLL;
    t.expect(
        "halt-poll: KVM_CAP_HALT_POLL",
        ioctl(kvm, KVM_CHECK_EXTENSION, cap.into()),
        Ok(1),
    );
    let polls = |bound: u64| -> Result<(u64, u64, u64), String> {
        let g = Guest::with_irqchip(kvm)?;
        sys("KVM_ENABLE_CAP", enable_cap(g.vm, cap, bound, 0))?;
        bench::timer_halts(&g, HALTS, PERIOD_NS)?;
        bench::run_to_done(&g, "halt-poll")?;
        let fd = sys("KVM_GET_STATS_FD", ioctl(g.vcpu, KVM_GET_STATS_FD, 0))?;
        let s = |n| read_stat(fd, n).unwrap_or(u64::MAX);
        let r = (
            s("halt_exits"),
            s("halt_attempted_poll"),
            s("halt_successful_poll"),
        );
        close(fd);
        Ok(r)
    };
    let g = Guest::new(kvm)?;
    t.expect(
        "halt-poll: flags are -EINVAL",
        enable_cap(g.vm, cap, 1000, 1),
        Err(libc::EINVAL),
    );
    t.expect(
        "halt-poll: a bound past 32 bits is -EINVAL",
        enable_cap(g.vm, cap, 1 << 32, 0),
        Err(libc::EINVAL),
    );
    drop(g);
    let (halts, attempted, _) = polls(0)?;
    t.check(
        "halt-poll: bound 0, the vCPU never polls",
        halts == u64::from(HALTS) && attempted == 0,
        format!("{halts} halts, {attempted} polls"),
    );
    let (halts, attempted, ok) = polls(BOUND_NS)?;
    t.check(
        "halt-poll: a large bound, polls catch timer wakeups",
        halts == u64::from(HALTS) && attempted > 0 && ok > 0,
        format!("{halts} halts, {attempted} polls, {ok} successful"),
    );
    Ok(())
}

type Case = fn(&mut Report, RawFd) -> Result<(), String>;

fn main() {
    let cases: [(&str, Case); 33] = [
        ("real-io", |t, kvm| real_io(t, kvm, "real-io")),
        ("real-string-io", real_string_io),
        ("pm32", pm32),
        ("long64", long64),
        ("mmio", mmio),
        ("triple-fault", triple_fault),
        ("bad-args", bad_args),
        ("immediate-exit", immediate_exit),
        ("lapic-timer", lapic_timer),
        ("dirty-log", dirty_log_case),
        ("dirty-manual", dirty_log_manual),
        ("dirty-log-enable", dirty_log_enable),
        ("remap", remap),
        ("xstate", xstate::xstate),
        ("sregs2", xstate::sregs2_case),
        ("debugregs", xstate::debugregs),
        ("pic", irq::pic),
        ("ioapic", irq::ioapic),
        ("irq-routing", irq::routing),
        ("ioeventfd", ioeventfd::ioeventfd_case),
        ("nmi", irq::nmi),
        ("guest-debug", debug::guest_debug),
        ("mce", mce::mce),
        ("clock", clock::clock),
        ("irqfd", irq::irqfd_case),
        ("irqfd-resample", irq::irqfd_resample_case),
        ("split-irqchip", irq::split_irqchip),
        ("mtrr", mce::mtrr),
        ("vapic", irq::vapic),
        ("pit", pit::pit),
        ("coalesced-mmio", coalesced::coalesced),
        ("gmem", gmem::gmem),
        ("halt-poll", halt_poll),
    ];
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == "--bench") {
        let code = match open("/dev/kvm", libc::O_RDWR | libc::O_CLOEXEC) {
            Ok(kvm) => bench::main(kvm, &args[2..]),
            Err(e) => {
                println!("not ok - open /dev/kvm: {}", Error::from_raw_os_error(e));
                1
            }
        };
        std::process::exit(code);
    }
    let only = args.get(1).cloned();
    if let Some(name) = &only {
        if !cases.iter().any(|(n, _)| n == name) {
            let names: Vec<_> = cases.iter().map(|(n, _)| *n).collect();
            eprintln!("usage: kvm-guests [{}]", names.join("|"));
            std::process::exit(2);
        }
    }
    let mut t = Report {
        passed: 0,
        failed: 0,
    };
    let kvm = match open("/dev/kvm", libc::O_RDWR | libc::O_CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => {
            t.check("open /dev/kvm", false, Error::from_raw_os_error(e));
            println!("{} passed, {} failed", t.passed, t.failed);
            std::process::exit(1);
        }
    };
    for (name, case) in cases {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        if let Err(e) = case(&mut t, kvm) {
            t.check(&format!("{name}: setup"), false, e);
        }
    }
    close(kvm);
    println!("{} passed, {} failed", t.passed, t.failed);
    std::process::exit(if t.failed == 0 { 0 } else { 1 });
}
