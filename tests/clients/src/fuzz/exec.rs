//! The fuzzer's executor: the objects it holds (the /dev/kvm fd, VMs, vCPUs, stats
//! fds, guest memory), one operation per index, and the log line each one leaves.
//!
//! Every operation draws its arguments from `Rng::for_op(seed, index)` alone and
//! creates what it needs that is missing, so a subset of a sequence replays with the
//! same arguments (the minimiser relies on it) and both implementations see the same
//! sequence until their results first differ.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::RawFd;
use std::ptr;

use kvm_abi::ioctl::{KVM_CREATE_VM, KVM_GET_STATS_FD, KVM_GET_VCPU_MMAP_SIZE, KVM_RUN};
use kvm_abi::uapi;

use super::guest;
use super::report::errno;
use super::rng::Rng;
use super::table::{self, Arg, Ioctl, Out, Special, Target, IOCTLS, MSR_POOL};

pub const PAGE: usize = 4096;
/// VM slots and vCPUs per VM the fuzzer keeps.
pub const VMS: usize = 3;
pub const VCPUS: usize = 4;
/// Guest memory: four chunks the fuzzer maps, unmaps and points memslots at.
pub const CHUNKS: usize = 4;
pub const CHUNK: usize = 4 << 20;
/// The template slot of /dev/kvm's results.
const KVM_FD: usize = usize::MAX;
/// Argument buffers: this many bytes, then a PROT_NONE guard page, so that a count
/// larger than the buffer makes the kernel fault (EFAULT), not read our heap.
const ARENA: usize = 512 << 10;
/// A user address that is never mapped (below mmap_min_addr) and a kernel one.
const BAD_USER: u64 = 0x1000;
const KERNEL_ADDR: u64 = 0xffff_8880_0000_0000;

pub struct Vcpu {
    pub fd: RawFd,
    /// The `kvm_run` mapping, or null.
    pub run: *mut uapi::kvm_run,
    run_len: usize,
    /// A guest run was interrupted at a random point: its state is not comparable.
    pub tainted: bool,
}

pub struct Vm {
    pub fd: RawFd,
    pub vcpus: [Option<Vcpu>; VCPUS],
    pub tainted: bool,
}

pub struct Chunk {
    pub addr: u64,
    pub mapped: bool,
}

/// One result as the log shows it: compared by the differential run.
pub enum Res {
    Ok(i64),
    /// A new fd (its number is not compared).
    Fd,
    Err(i32),
}

pub struct Fuzzer {
    pub seed: u64,
    log: Box<dyn Write>,
    pub kvm: RawFd,
    pub vms: [Option<Vm>; VMS],
    stats: Vec<RawFd>,
    pub chunks: [Chunk; CHUNKS],
    arena: *mut u8,
    /// The last good output of each GET, by (VM slot or KVM_FD, command): SETs
    /// start from it. Per VM, so that a VM whose state went apart in the
    /// differential run does not change the arguments other VMs get.
    templates: HashMap<(usize, u32), Vec<u8>>,
    eventfds: [RawFd; 2],
    pub mmap_size: usize,
    /// The operation being run, and the sub-step inside it (log line names).
    index: u64,
    sub: u32,
    /// Every line nondeterministic (threads race the sequence).
    pub racy: bool,
    pub ioctls: u64,
    pub guest_runs: u64,
    pub kvm_runs: u64,
}

/// FNV-1a: a short fingerprint of returned state.
pub fn hash(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn mmap_anon(addr: u64, len: usize, flags: i32) -> *mut u8 {
    // SAFETY: an anonymous mapping; with MAP_FIXED_NOREPLACE it cannot replace one.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        p.cast()
    }
}

pub fn close(fd: RawFd) {
    // SAFETY: closing an fd this program owns (or a stale number: EBADF).
    unsafe { libc::close(fd) };
}

impl Fuzzer {
    pub fn new(seed: u64, log: Box<dyn Write>) -> Result<Fuzzer, String> {
        let kvm = open_kvm().map_err(|e| format!("open /dev/kvm: errno {e}"))?;
        let arena = mmap_anon(0, ARENA + PAGE, 0);
        if arena.is_null() {
            return Err("mmap arena".into());
        }
        // SAFETY: the last page of our own mapping becomes the guard.
        unsafe { libc::mprotect(arena.add(ARENA).cast(), PAGE, libc::PROT_NONE) };
        let base = mmap_anon(0, CHUNKS * CHUNK, 0);
        if base.is_null() {
            return Err("mmap guest memory".into());
        }
        let chunks = std::array::from_fn(|k| Chunk {
            addr: base as u64 + (k * CHUNK) as u64,
            mapped: true,
        });
        // SAFETY: plain eventfd creation.
        let eventfds = unsafe { [libc::eventfd(0, 0), libc::eventfd(0, 0)] };
        // SAFETY: integer-argument ioctl on our /dev/kvm fd.
        let mmap_size = unsafe { libc::ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE as libc::c_ulong, 0) };
        Ok(Fuzzer {
            seed,
            log,
            kvm,
            vms: [None, None, None],
            stats: Vec::new(),
            chunks,
            arena,
            templates: HashMap::new(),
            eventfds,
            mmap_size: mmap_size.max(PAGE as i32) as usize,
            index: 0,
            sub: 0,
            racy: false,
            ioctls: 0,
            guest_runs: 0,
            kvm_runs: 0,
        })
    }

    /// Writes one log line: `INDEX.SUB TARGET NAME ARGS = RESULT [#HASH]`; a `~`
    /// before the hash (or the result) marks what is not deterministic.
    pub fn log(
        &mut self,
        target: &str,
        name: &str,
        args: &str,
        res: &Res,
        state: Option<(u64, bool)>,
    ) {
        let r = match res {
            Res::Ok(v) => format!("ok {v}"),
            Res::Fd => "ok fd".into(),
            Res::Err(e) => format!("err {}", errname(*e)),
        };
        let racy = if self.racy { "~" } else { "" };
        let st = match state {
            Some((h, det)) => format!(" #{}{h:016x}", if det { "" } else { "~" }),
            None => String::new(),
        };
        let _ = writeln!(
            self.log,
            "{}.{} {target} {name} {args} = {racy}{r}{st}",
            self.index, self.sub
        );
        self.sub += 1;
    }

    pub fn flush(&mut self) {
        let _ = self.log.flush();
    }

    /// The raw ioctl, counted.
    pub fn ioctl(&mut self, fd: RawFd, cmd: u32, arg: u64) -> Res {
        self.ioctls += 1;
        // The argument is an integer or a pointer into memory we own (or a
        // deliberately bad address, which the kernel must refuse with EFAULT).
        // SAFETY: as said above; the kernel validates every user pointer.
        let r = unsafe { libc::ioctl(fd, cmd as libc::c_ulong, arg) };
        if r < 0 {
            Res::Err(errno())
        } else {
            Res::Ok(r as i64)
        }
    }

    /// The argument buffer: `len` bytes ending at the guard page.
    fn arg_buf(&mut self, len: usize) -> &mut [u8] {
        let len = len.min(ARENA);
        // SAFETY: in bounds of the RW part of the arena, which only this thread uses.
        unsafe { std::slice::from_raw_parts_mut(self.arena.add(ARENA - len), len) }
    }

    fn arg_ptr(&self, len: usize) -> u64 {
        self.arena as u64 + (ARENA - len.min(ARENA)) as u64
    }

    /// Runs operation `index`.
    pub fn op(&mut self, index: u64) {
        self.index = index;
        self.sub = 0;
        let mut r = Rng::for_op(self.seed, index);
        match r.below(100) {
            0..=49 => {
                let io = r.pick(IOCTLS);
                let fd = self.target_fd(&mut r, io.target);
                self.table_ioctl(&mut r, io, fd, io.target);
            }
            50..=52 => {
                // A command sent to an fd of the wrong kind.
                let io = r.pick(IOCTLS);
                let t = *r.pick(&[Target::Kvm, Target::Vm, Target::Vcpu]);
                let fd = self.target_fd(&mut r, t);
                self.table_ioctl(&mut r, io, fd, t);
            }
            53..=55 => self.unknown_ioctl(&mut r),
            56..=59 => self.create_vm(&mut r),
            60..=61 => self.close_something(&mut r),
            62..=63 => self.mmap_run(&mut r),
            64..=66 => self.stats_op(&mut r),
            67..=69 => self.memory_op(&mut r),
            70..=71 => self.fork_op(&mut r),
            _ => guest::hostile_guest(self, &mut r),
        }
    }

    /// A VM slot, creating the VM if it is missing.
    pub fn ensure_vm(&mut self, k: usize) -> Option<RawFd> {
        if self.vms[k].is_none() {
            let res = self.ioctl(self.kvm, KVM_CREATE_VM, 0);
            if let Res::Ok(fd) = res {
                self.vms[k] = Some(Vm {
                    fd: fd as RawFd,
                    vcpus: [None, None, None, None],
                    tainted: false,
                });
                self.log("kvm", "CREATE_VM", &format!("vm{k} type=0"), &Res::Fd, None);
            } else {
                self.log("kvm", "CREATE_VM", &format!("vm{k} type=0"), &res, None);
                return None;
            }
        }
        self.vms[k].as_ref().map(|v| v.fd)
    }

    /// A vCPU slot, creating its VM and the vCPU (id = slot) if missing.
    pub fn ensure_vcpu(&mut self, k: usize, j: usize) -> Option<RawFd> {
        let vm = self.ensure_vm(k)?;
        if self.vms[k].as_ref()?.vcpus[j].is_none() {
            let res = self.ioctl(vm, table_cmd("CREATE_VCPU"), j as u64);
            self.log(
                &format!("vm{k}"),
                "CREATE_VCPU",
                &format!("id={j}"),
                &fdres(&res),
                None,
            );
            let Res::Ok(fd) = res else { return None };
            self.add_vcpu(k, j, fd as RawFd);
        }
        self.vms[k].as_ref()?.vcpus[j].as_ref().map(|c| c.fd)
    }

    fn add_vcpu(&mut self, k: usize, j: usize, fd: RawFd) {
        let Some(vm) = self.vms[k].as_mut() else {
            return close(fd);
        };
        if let Some(old) = vm.vcpus[j].take() {
            drop_vcpu(old);
        }
        vm.vcpus[j] = Some(Vcpu {
            fd,
            run: ptr::null_mut(),
            run_len: 0,
            tainted: false,
        });
    }

    /// Maps vCPU (k, j)'s `kvm_run` if it is not mapped yet.
    pub fn ensure_run(&mut self, k: usize, j: usize) -> Option<*mut uapi::kvm_run> {
        let size = self.mmap_size;
        let c = self.vms[k].as_mut()?.vcpus[j].as_mut()?;
        if c.run.is_null() {
            // SAFETY: a shared mapping of a vCPU fd of the size KVM reports.
            let p = unsafe {
                libc::mmap(
                    ptr::null_mut(),
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    c.fd,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return None;
            }
            c.run = p.cast();
            c.run_len = size;
        }
        Some(c.run)
    }

    fn target_fd(&mut self, r: &mut Rng, t: Target) -> RawFd {
        if r.chance(1, 50) {
            return *r.pick(&[-1, 1023, self.eventfds[0]]);
        }
        match t {
            Target::Kvm => self.kvm,
            Target::Vm => {
                let k = r.index(VMS);
                self.ensure_vm(k).unwrap_or(-1)
            }
            Target::Vcpu => {
                let (k, j) = (r.index(VMS), r.index(VCPUS));
                self.ensure_vcpu(k, j).unwrap_or(-1)
            }
        }
    }

    /// The VM slot `fd` belongs to (KVM_FD for anything else).
    fn slot_of(&self, fd: RawFd) -> usize {
        self.vms
            .iter()
            .position(|v| {
                v.as_ref()
                    .is_some_and(|v| v.fd == fd || v.vcpus.iter().flatten().any(|c| c.fd == fd))
            })
            .unwrap_or(KVM_FD)
    }

    /// Whether state read from `fd` is deterministic (no interrupted run behind it).
    fn deterministic(&self, fd: RawFd) -> bool {
        for vm in self.vms.iter().flatten() {
            if vm.fd == fd {
                return !vm.tainted;
            }
            for c in vm.vcpus.iter().flatten() {
                if c.fd == fd {
                    return !c.tainted && !vm.tainted;
                }
            }
        }
        true
    }

    fn fd_name(&self, fd: RawFd) -> String {
        if fd == self.kvm {
            return "kvm".into();
        }
        for (k, vm) in self.vms.iter().enumerate() {
            let Some(vm) = vm else { continue };
            if vm.fd == fd {
                return format!("vm{k}");
            }
            for (j, c) in vm.vcpus.iter().enumerate() {
                if c.as_ref().is_some_and(|c| c.fd == fd) {
                    return format!("vcpu{k}.{j}");
                }
            }
        }
        if self.eventfds.contains(&fd) {
            return "eventfd".into();
        }
        format!("fd({})", if fd < 0 { "-1" } else { "other" })
    }

    /// One ioctl of the table, its argument built as the table says.
    pub fn table_ioctl(&mut self, r: &mut Rng, io: &Ioctl, fd: RawFd, on: Target) {
        let tname = self.fd_name(fd);
        let slot = self.slot_of(fd);
        let (arg, len, desc) = self.build_arg(r, io, on, slot);
        let res = self.ioctl(fd, io.cmd, arg);
        let det = self.deterministic(fd);
        let mut state = None;
        if let Res::Ok(_) = res {
            if table::writes_back(io.cmd) && arg == self.arg_ptr(len) && len > 0 {
                let out = self.arg_buf(len).to_vec();
                if io.out == Out::State {
                    state = Some((hash(&out), det));
                }
                let slot = self.slot_of(fd);
                self.templates.insert((slot, io.cmd), out);
            }
        }
        let creates = matches!(io.arg, Arg::Special(Special::CreateVcpu))
            || matches!(
                io.name,
                "GET_STATS_FD(vcpu)" | "CREATE_GUEST_MEMFD" | "CREATE_DEVICE"
            );
        let shown = if creates { fdres(&res) } else { res_copy(&res) };
        self.log(&tname, io.name, &desc, &shown, state);
        if let (true, Res::Ok(new)) = (creates, res) {
            self.adopt(io, fd, new as RawFd);
        }
    }

    /// Keeps the fd an ioctl created (a vCPU, a stats fd) or closes it.
    fn adopt(&mut self, io: &Ioctl, parent: RawFd, new: RawFd) {
        if io.name == "GET_STATS_FD(vcpu)" {
            if self.stats.len() >= 4 {
                close(self.stats.remove(0));
            }
            return self.stats.push(new);
        }
        if io.name == "CREATE_VCPU" {
            let k = self
                .vms
                .iter()
                .position(|v| v.as_ref().is_some_and(|v| v.fd == parent));
            if let Some(k) = k {
                let free = self.vms[k]
                    .as_ref()
                    .and_then(|v| v.vcpus.iter().position(|c| c.is_none()));
                if let Some(j) = free {
                    return self.add_vcpu(k, j, new);
                }
            }
        }
        close(new);
    }

    fn build_arg(
        &mut self,
        r: &mut Rng,
        io: &Ioctl,
        on: Target,
        slot: usize,
    ) -> (u64, usize, String) {
        let size = table::size_of_cmd(io.cmd);
        match io.arg {
            Arg::Int => {
                let v = if r.chance(1, 2) { 0 } else { r.int() };
                (v, 0, format!("{v:#x}"))
            }
            Arg::Buf => {
                let how = self.fill(r, io, size, slot);
                self.pointer(r, size, how)
            }
            Arg::Counted { hdr, entry, max } => {
                let count = match r.below(10) {
                    0 => 0,
                    1 => 1,
                    2..=3 => 1 + r.below(8) as u32,
                    4 => max.wrapping_sub(1),
                    5 => max,
                    6 => max.wrapping_add(1),
                    7 => *r.pick(&[0x7fff_ffff, 0xffff_ffff, 0x8000_0000]),
                    _ => r.below(max as u64 + 2) as u32,
                };
                let len = (hdr + count as usize * entry).min(ARENA);
                let how = self.fill(r, io, len, slot);
                let b = self.arg_buf(len);
                if b.len() >= 4 {
                    b[..4].copy_from_slice(&count.to_le_bytes());
                }
                let (p, l, d) = self.pointer(r, len, how);
                (p, l, format!("n={count} {d}"))
            }
            Arg::Special(s) => self.special(r, s, on),
        }
    }

    /// Fills the argument buffer: zeros, random bytes, or the saved GET result
    /// (mutated or not).
    fn fill(&mut self, r: &mut Rng, io: &Ioctl, len: usize, slot: usize) -> &'static str {
        let src = io.template.unwrap_or(io.cmd);
        // CPUID and MSR lists come from /dev/kvm.
        let tmpl = self
            .templates
            .get(&(slot, src))
            .or_else(|| self.templates.get(&(KVM_FD, src)))
            .cloned();
        // What follows draws from its own generator: how many values it takes
        // must not depend on whether a template exists.
        let how = r.below(5);
        let mut r = Rng::new(r.next());
        let r = &mut r;
        let b = self.arg_buf(len);
        b.fill(0);
        match (how, tmpl) {
            (0, _) => "zero",
            (1, _) => {
                r.fill(b);
                "random"
            }
            (2, Some(t)) => {
                let n = t.len().min(b.len());
                b[..n].copy_from_slice(&t[..n]);
                "saved"
            }
            (_, Some(t)) => {
                let n = t.len().min(b.len());
                b[..n].copy_from_slice(&t[..n]);
                mutate(r, b);
                "saved+mutated"
            }
            _ => {
                mutate(r, b);
                "zero+mutated"
            }
        }
    }

    /// The argument pointer: mostly the buffer, sometimes NULL, unmapped, misaligned
    /// or a kernel address.
    fn pointer(&mut self, r: &mut Rng, len: usize, how: &str) -> (u64, usize, String) {
        match r.below(16) {
            0 => (0, len, "NULL".into()),
            1 => (BAD_USER, len, "unmapped".into()),
            2 => (KERNEL_ADDR, len, "kernel".into()),
            3 => (self.arg_ptr(len) + 1, len, format!("{how}+misaligned")),
            _ => (self.arg_ptr(len), len, how.into()),
        }
    }

    fn special(&mut self, r: &mut Rng, s: Special, on: Target) -> (u64, usize, String) {
        let _ = on;
        match s {
            Special::CheckExtension => {
                let cap = if r.chance(7, 8) {
                    r.below(260)
                } else {
                    r.int()
                };
                (cap, 0, format!("cap={cap}"))
            }
            Special::CreateVcpu => {
                let id = *r.pick(&[4, 5, 6, 7, 255, 256, 1023, 1024, 4095, 4096, 0xffff_ffff, 0]);
                (id, 0, format!("id={id}"))
            }
            Special::MemRegion | Special::MemRegion2 => {
                self.mem_region(r, s == Special::MemRegion2)
            }
            Special::EnableCap => {
                let mut c = uapi::kvm_enable_cap {
                    cap: if r.chance(7, 8) {
                        r.below(260) as u32
                    } else {
                        r.int() as u32
                    },
                    flags: if r.chance(3, 4) { 0 } else { r.int() as u32 },
                    ..Default::default()
                };
                for a in c.args.iter_mut() {
                    *a = if r.chance(1, 2) { 0 } else { r.int() };
                }
                let d = format!("cap={} flags={:#x} args={:x?}", c.cap, c.flags, c.args);
                self.put(r, &c, d)
            }
            Special::DirtyLog => {
                let mut d = uapi::kvm_dirty_log {
                    slot: self.slot_id(r),
                    ..Default::default()
                };
                d.__bindgen_anon_1.dirty_bitmap = self.arg_ptr(ARENA / 2) as *mut libc::c_void;
                if r.chance(1, 8) {
                    d.__bindgen_anon_1.dirty_bitmap = ptr::null_mut();
                }
                let desc = format!("slot={:#x}", d.slot);
                self.put_at_start(&d, desc)
            }
            Special::ClearDirtyLog => {
                let mut d = uapi::kvm_clear_dirty_log {
                    slot: self.slot_id(r),
                    num_pages: *r.pick(&[0, 1, 63, 64, 65, 512, 1024, 0xffff_ffff]),
                    first_page: *r.pick(&[0, 1, 63, 64, 511, 1 << 20, !63]),
                    ..Default::default()
                };
                d.__bindgen_anon_1.dirty_bitmap = self.arg_ptr(ARENA / 2) as *mut libc::c_void;
                let desc = format!(
                    "slot={:#x} first={:#x} n={}",
                    d.slot, d.first_page, d.num_pages
                );
                self.put_at_start(&d, desc)
            }
            Special::Irqfd => {
                let c = uapi::kvm_irqfd {
                    fd: self.some_fd(r) as u32,
                    gsi: *r.pick(&[0, 1, 4, 8, 23, 24, 255, 1023, 1024, 0xffff_ffff]),
                    flags: *r.pick(&[0, 0, 1, 2, 3, 4, 0x8000_0000]),
                    resamplefd: self.some_fd(r) as u32,
                    ..Default::default()
                };
                let d = format!("gsi={} flags={:#x}", c.gsi, c.flags);
                self.put(r, &c, d)
            }
            Special::Ioeventfd => {
                let c = uapi::kvm_ioeventfd {
                    datamatch: r.int(),
                    addr: *r.pick(&[
                        0,
                        0x20,
                        0x70,
                        0x80,
                        0x3f8,
                        0xcf8,
                        0xffff,
                        0x1_0000,
                        0xfee0_0000,
                        0xd000_0000,
                        0x10_0000,
                    ]),
                    len: *r.pick(&[0, 1, 2, 3, 4, 8, 16]),
                    fd: self.some_fd(r),
                    flags: *r.pick(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 0x100]),
                    ..Default::default()
                };
                let d = format!("addr={:#x} len={} flags={:#x}", c.addr, c.len, c.flags);
                self.put(r, &c, d)
            }
            Special::Msrs => self.msrs(r),
            Special::Coalesced => {
                let mut c = uapi::kvm_coalesced_mmio_zone {
                    addr: *r.pick(&[0, 0x1000, 0xd000_0000, 0xfee0_0000, 0x3f8, u64::MAX - 0xfff]),
                    size: *r.pick(&[0, 1, 4, 0x1000, 0xffff_ffff]),
                    ..Default::default()
                };
                c.__bindgen_anon_1.pio = *r.pick(&[0, 1, 2]);
                let d = format!("addr={:#x} size={:#x}", c.addr, c.size);
                self.put(r, &c, d)
            }
            Special::DeviceAttr => {
                let c = uapi::kvm_device_attr {
                    flags: if r.chance(7, 8) { 0 } else { r.int() as u32 },
                    group: *r.pick(&[0, 0, 1, 2, 0xffff_ffff]),
                    attr: *r.pick(&[0, 0, 1, u64::MAX]),
                    addr: if r.chance(3, 4) {
                        self.arg_ptr(16)
                    } else {
                        *r.pick(&[0, BAD_USER, KERNEL_ADDR])
                    },
                };
                let d = format!("group={} attr={:#x}", c.group, c.attr);
                // The attribute's value lives in the first 16 bytes of the arena's
                // tail; the struct itself goes in front of it.
                let v = r.int();
                self.arg_buf(16)[..8].copy_from_slice(&v.to_le_bytes());
                let p = self.arena as u64;
                // SAFETY: the arena's first bytes, far from the value at its end.
                unsafe { ptr::write_unaligned(p as *mut uapi::kvm_device_attr, c) };
                (p, std::mem::size_of_val(&c), d)
            }
            Special::IrqLine => {
                let mut c = uapi::kvm_irq_level {
                    level: *r.pick(&[0, 1, 1, 2, 0xffff_ffff]),
                    ..Default::default()
                };
                c.__bindgen_anon_1.irq = *r.pick(&[
                    0,
                    1,
                    2,
                    4,
                    8,
                    12,
                    15,
                    16,
                    23,
                    24,
                    255,
                    1024,
                    0x0100_0000 | 3,
                    0x0200_0001,
                ]);
                // SAFETY: the union's irq view was just written.
                let d = format!(
                    "irq={:#x} level={}",
                    // SAFETY: the union's irq view was just written.
                    unsafe { c.__bindgen_anon_1.irq },
                    c.level
                );
                self.put(r, &c, d)
            }
            Special::Msi => {
                let c = uapi::kvm_msi {
                    address_lo: 0xfee0_0000 | (r.below(4) as u32) << 12 | (r.below(16) as u32) << 2,
                    address_hi: if r.chance(7, 8) { 0 } else { r.int() as u32 },
                    data: (r.below(256) as u32)
                        | (r.below(8) as u32) << 8
                        | (r.below(4) as u32) << 14,
                    flags: if r.chance(7, 8) { 0 } else { r.int() as u32 },
                    devid: 0,
                    ..Default::default()
                };
                let d = format!(
                    "addr={:#x}:{:#x} data={:#x} flags={:#x}",
                    c.address_hi, c.address_lo, c.data, c.flags
                );
                self.put(r, &c, d)
            }
        }
    }

    /// Puts `v` at the end of the arena and maybe spoils the pointer.
    fn put<T>(&mut self, r: &mut Rng, v: &T, desc: String) -> (u64, usize, String) {
        let len = std::mem::size_of::<T>();
        let p = self.arg_ptr(len);
        // SAFETY: `len` bytes before the guard page of our arena.
        unsafe { ptr::copy_nonoverlapping(v as *const T as *const u8, p as *mut u8, len) };
        let (p, l, how) = self.pointer(r, len, "");
        (p, l, format!("{desc} {how}").trim_end().to_string())
    }

    /// Puts `v` at the start of the arena (the end holds a bitmap).
    fn put_at_start<T>(&mut self, v: &T, desc: String) -> (u64, usize, String) {
        let len = std::mem::size_of::<T>();
        // SAFETY: `len` bytes at the start of our arena.
        unsafe { ptr::copy_nonoverlapping(v as *const T as *const u8, self.arena, len) };
        (self.arena as u64, len, desc)
    }

    fn slot_id(&self, r: &mut Rng) -> u32 {
        match r.below(8) {
            0..=4 => r.below(6) as u32,
            5 => (1 << 16) | r.below(2) as u32,
            6 => *r.pick(&[32763, 32764, 32765, 0x7fff, 0xffff]),
            _ => r.int() as u32,
        }
    }

    fn some_fd(&self, r: &mut Rng) -> i32 {
        match r.below(8) {
            0..=3 => self.eventfds[0],
            4 => self.eventfds[1],
            5 => -1,
            6 => self.kvm,
            _ => 1000,
        }
    }

    fn mem_region(&mut self, r: &mut Rng, two: bool) -> (u64, usize, String) {
        let slot = self.slot_id(r);
        let flags = match r.below(8) {
            0..=3 => 0,
            4 => uapi::KVM_MEM_LOG_DIRTY_PAGES,
            5 => uapi::KVM_MEM_READONLY,
            6 => *r.pick(&[3, uapi::KVM_MEM_GUEST_MEMFD, 8]),
            _ => r.int() as u32,
        };
        let gpa = match r.below(8) {
            0..=2 => r.below(16) * 0x20_0000,
            3 => r.below(0x10_0000) * 0x1000,
            4 => *r.pick(&[0xfee0_0000, 0xfec0_0000, 0xc000_0000, 0xffff_f000]),
            5 => *r.pick(&[
                1 << 46,
                (1 << 48) - 0x1000,
                (1 << 52) - 0x1000,
                1 << 52,
                1 << 63,
            ]),
            6 => r.below(0x1000) * 0x1000 + 1,
            _ => r.int(),
        };
        let size = match r.below(8) {
            0..=3 => (1 + r.below(4)) * 0x10_0000,
            4 => 0,
            5 => 0x1000,
            6 => *r.pick(&[0x1001, CHUNK as u64 * 4, 1 << 40, 1 << 47, !0xfff]),
            _ => r.int(),
        };
        let chunk = r.index(CHUNKS);
        let uaddr = match r.below(10) {
            0..=6 => self.chunks[chunk].addr + r.below(2) * 0x20_0000,
            7 => self.chunks[chunk].addr + 1,
            8 => *r.pick(&[0, KERNEL_ADDR, BAD_USER, 0x7fff_ffff_f000]),
            _ => r.int(),
        };
        let desc = format!(
            "slot={slot:#x} flags={flags:#x} gpa={gpa:#x} size={size:#x} uaddr=chunk{chunk}"
        );
        if two {
            let m = uapi::kvm_userspace_memory_region2 {
                slot,
                flags,
                guest_phys_addr: gpa,
                memory_size: size,
                userspace_addr: uaddr,
                guest_memfd_offset: if r.chance(3, 4) { 0 } else { r.int() },
                guest_memfd: if r.chance(3, 4) {
                    0
                } else {
                    self.some_fd(r) as u32
                },
                pad1: if r.chance(7, 8) { 0 } else { 1 },
                ..Default::default()
            };
            self.put(r, &m, desc)
        } else {
            let m = uapi::kvm_userspace_memory_region {
                slot,
                flags,
                guest_phys_addr: gpa,
                memory_size: size,
                userspace_addr: uaddr,
            };
            self.put(r, &m, desc)
        }
    }

    fn msrs(&mut self, r: &mut Rng) -> (u64, usize, String) {
        let n = match r.below(8) {
            0 => 0,
            1..=5 => 1 + r.below(4) as u32,
            6 => *r.pick(&[255, 256, 257, 0x8000_0000, 0xffff_ffff]),
            _ => r.below(64) as u32,
        };
        let shown = (n as usize).min(16);
        let len = (8 + n as usize * 16).min(ARENA);
        let mut idx = Vec::new();
        {
            let mut entries = Vec::new();
            for _ in 0..(len.saturating_sub(8) / 16).min(64) {
                let i = if r.chance(7, 8) {
                    *r.pick(MSR_POOL)
                } else {
                    r.int() as u32
                };
                let v = if r.chance(1, 2) {
                    r.int()
                } else {
                    r.below(0x100)
                };
                entries.push((i, v));
            }
            let b = self.arg_buf(len);
            b.fill(0);
            b[..4].copy_from_slice(&n.to_le_bytes());
            for (k, (i, v)) in entries.iter().enumerate() {
                let o = 8 + k * 16;
                b[o..o + 4].copy_from_slice(&i.to_le_bytes());
                b[o + 8..o + 16].copy_from_slice(&v.to_le_bytes());
                if k < shown {
                    idx.push(format!("{i:#x}={v:#x}"));
                }
            }
        }
        let (p, l, how) = self.pointer(r, len, "");
        (
            p,
            l,
            format!("n={n} [{}] {how}", idx.join(","))
                .trim_end()
                .to_string(),
        )
    }

    fn unknown_ioctl(&mut self, r: &mut Rng) {
        let t = *r.pick(&[Target::Kvm, Target::Vm, Target::Vcpu]);
        let fd = self.target_fd(r, t);
        let nr = r.below(256) as u32;
        let dir = r.below(4) as u32;
        let size = *r.pick(&[0u32, 4, 8, 16, 64, 256, 1024, 4096, 0x3fff]);
        let ty = if r.chance(7, 8) {
            uapi::KVMIO
        } else {
            r.below(256) as u32
        };
        let cmd = dir << 30 | size << 16 | ty << 8 | nr;
        // Leave the commands the table knows to the table: their arguments matter.
        if IOCTLS.iter().any(|i| i.cmd == cmd)
            || cmd == KVM_RUN
            || cmd == KVM_CREATE_VM
            || cmd == KVM_GET_STATS_FD
        {
            return;
        }
        let name = self.fd_name(fd);
        self.arg_buf(ARENA).fill(0);
        let res = self.ioctl(fd, cmd, self.arg_ptr(size as usize));
        self.log(&name, "UNKNOWN", &format!("cmd={cmd:#x}"), &res, None);
    }

    fn create_vm(&mut self, r: &mut Rng) {
        let k = r.index(VMS);
        self.drop_vm(k);
        let ty = match r.below(8) {
            0..=5 => 0,
            6 => *r.pick(&[1, 2, 3, 4, 0x100, 0xff]),
            _ => r.int(),
        };
        let res = self.ioctl(self.kvm, KVM_CREATE_VM, ty);
        self.log(
            "kvm",
            "CREATE_VM",
            &format!("vm{k} type={ty:#x}"),
            &fdres(&res),
            None,
        );
        if let Res::Ok(fd) = res {
            self.vms[k] = Some(Vm {
                fd: fd as RawFd,
                vcpus: [None, None, None, None],
                tainted: false,
            });
        }
    }

    pub fn drop_vm(&mut self, k: usize) {
        if let Some(vm) = self.vms[k].take() {
            for c in vm.vcpus.into_iter().flatten() {
                drop_vcpu(c);
            }
            close(vm.fd);
        }
    }

    fn close_something(&mut self, r: &mut Rng) {
        let k = r.index(VMS);
        if r.chance(1, 3) {
            let had = self.vms[k].is_some();
            self.drop_vm(k);
            self.log(&format!("vm{k}"), "close", "", &Res::Ok(had as i64), None);
        } else {
            let j = r.index(VCPUS);
            let c = self.vms[k].as_mut().and_then(|v| v.vcpus[j].take());
            let had = c.is_some();
            if let Some(c) = c {
                drop_vcpu(c);
            }
            self.log(
                &format!("vcpu{k}.{j}"),
                "close",
                "",
                &Res::Ok(had as i64),
                None,
            );
        }
    }

    /// mmap of a vCPU fd: every size, offset and protection, not only the good one.
    fn mmap_run(&mut self, r: &mut Rng) {
        let (k, j) = (r.index(VMS), r.index(VCPUS));
        let Some(fd) = self.ensure_vcpu(k, j) else {
            return;
        };
        let pages = *r.pick(&[0usize, 1, 2, 3, 4, 16]);
        let off = *r.pick(&[0i64, 1, 2, 3, 64]);
        let prot = *r.pick(&[
            libc::PROT_READ | libc::PROT_WRITE,
            libc::PROT_READ,
            libc::PROT_EXEC | libc::PROT_READ,
        ]);
        let shared = r.chance(3, 4);
        let len = pages * PAGE;
        // SAFETY: a new mapping of a vCPU fd; the kernel checks size and offset.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                prot,
                if shared {
                    libc::MAP_SHARED
                } else {
                    libc::MAP_PRIVATE
                },
                fd,
                off * PAGE as i64,
            )
        };
        let res = if p == libc::MAP_FAILED {
            Res::Err(errno())
        } else {
            Res::Ok(0)
        };
        if p != libc::MAP_FAILED {
            // Touch what the mapping claims to have: a fault here is a kernel bug
            // (a page the mapping cannot back), not ours.
            for pg in 0..pages {
                if prot & libc::PROT_READ != 0 && (off as usize + pg) < self.mmap_size / PAGE {
                    // SAFETY: inside the mapping just made, readable.
                    unsafe { ptr::read_volatile((p as *const u8).add(pg * PAGE)) };
                }
            }
            // SAFETY: unmapping the mapping just made.
            unsafe { libc::munmap(p, len) };
        }
        self.log(
            &format!("vcpu{k}.{j}"),
            "mmap",
            &format!("pages={pages} off={off} prot={prot} shared={shared}"),
            &res,
            None,
        );
    }

    /// Stats fds: created, read at odd offsets and sizes, closed.
    fn stats_op(&mut self, r: &mut Rng) {
        match r.below(3) {
            0 => {
                let (k, j) = (r.index(VMS), r.index(VCPUS));
                let fd = if r.chance(1, 2) {
                    self.ensure_vm(k)
                } else {
                    self.ensure_vcpu(k, j)
                };
                let Some(fd) = fd else { return };
                let name = self.fd_name(fd);
                let res = self.ioctl(fd, KVM_GET_STATS_FD, 0);
                self.log(&name, "GET_STATS_FD", "", &fdres(&res), None);
                if let Res::Ok(s) = res {
                    if self.stats.len() >= 4 {
                        close(self.stats.remove(0));
                    }
                    self.stats.push(s as RawFd);
                }
            }
            1 if !self.stats.is_empty() => {
                let fd = self.stats[r.index(self.stats.len())];
                let len = *r.pick(&[0usize, 1, 8, 24, 64, 0x1000, 0x10000]);
                let off = *r.pick(&[0i64, 1, 8, 24, 40, 0x1000, 0x7fff_ffff, -1]);
                let buf = self.arg_ptr(len);
                // SAFETY: reading into our arena; `len` bytes fit before the guard.
                let n = unsafe { libc::pread(fd, buf as *mut libc::c_void, len, off) };
                self.ioctls += 1;
                // The byte count depends on which stats exist: only ok/err is compared.
                let res = if n < 0 { Res::Err(errno()) } else { Res::Ok(0) };
                self.log(
                    "stats",
                    "pread",
                    &format!("len={len} off={off}"),
                    &res,
                    None,
                );
            }
            _ => {
                if let Some(fd) = self.stats.pop() {
                    close(fd);
                }
            }
        }
    }

    /// Guest memory pulled from under the memslots: munmap, remap, MADV_DONTNEED.
    fn memory_op(&mut self, r: &mut Rng) {
        // With racing threads the last chunk is the mutator's.
        let k = r.index(if self.racy { CHUNKS - 1 } else { CHUNKS });
        let addr = self.chunks[k].addr;
        let what = r.below(3);
        let res = match what {
            // Once unmapped, the range may hold another mapping (a kvm_run page,
            // a heap): only our own chunk is ever unmapped.
            0 if !self.chunks[k].mapped => Res::Ok(1),
            0 => {
                // SAFETY: our own chunk; nothing of ours keeps a reference into it.
                let e = unsafe { libc::munmap(addr as *mut libc::c_void, CHUNK) };
                self.chunks[k].mapped = false;
                if e == 0 {
                    Res::Ok(0)
                } else {
                    Res::Err(errno())
                }
            }
            1 => self.remap(k),
            _ if !self.chunks[k].mapped => Res::Ok(1),
            _ => {
                // SAFETY: drops the pages of our own chunk, mapped (checked).
                // SAFETY: drops the pages of our own mapped chunk.
                let e =
                    unsafe { libc::madvise(addr as *mut libc::c_void, CHUNK, libc::MADV_DONTNEED) };
                if e == 0 {
                    Res::Ok(0)
                } else {
                    Res::Err(errno())
                }
            }
        };
        let name = ["munmap", "remap", "madvise"][what as usize];
        self.log(&format!("chunk{k}"), name, "", &res, None);
    }

    pub fn remap(&mut self, k: usize) -> Res {
        if self.chunks[k].mapped {
            return Res::Ok(1);
        }
        let p = mmap_anon(self.chunks[k].addr, CHUNK, libc::MAP_FIXED_NOREPLACE);
        if p as u64 == self.chunks[k].addr {
            self.chunks[k].mapped = true;
            Res::Ok(0)
        } else {
            if !p.is_null() {
                // SAFETY: an old kernel placed it elsewhere: undo it.
                unsafe { libc::munmap(p.cast(), CHUNK) };
            }
            Res::Err(libc::EEXIST)
        }
    }

    /// fork(): the child uses the parent's VM and vCPU fds (upstream: -EIO from
    /// another mm) and creates a VM of its own; the parent logs what it got.
    fn fork_op(&mut self, r: &mut Rng) {
        let (k, j) = (r.index(VMS), r.index(VCPUS));
        let vcpu = self.ensure_vcpu(k, j).unwrap_or(-1);
        let vm = self.vms[k].as_ref().map(|v| v.fd).unwrap_or(-1);
        let (kvm, mem, chunk) = (self.kvm, self.arg_ptr(32), self.chunks[0].addr);
        let mut fds = [0i32; 2];
        // SAFETY: a pipe for the child's results.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return;
        }
        // SAFETY: the child only makes system calls on stack data and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let region = uapi::kvm_userspace_memory_region {
                slot: 9,
                flags: 0,
                guest_phys_addr: 0x4000_0000,
                memory_size: 0x1000,
                userspace_addr: chunk,
            };
            let call = |fd: RawFd, cmd: u32, arg: u64| -> i32 {
                // SAFETY: ioctls on inherited fds with integer or stack arguments.
                let v = unsafe { libc::ioctl(fd, cmd as libc::c_ulong, arg) };
                if v < 0 {
                    -errno()
                } else {
                    v.min(1)
                }
            };
            let out = [
                call(vcpu, KVM_RUN, 0),
                call(vcpu, table_cmd("GET_REGS"), mem),
                call(
                    vm,
                    table_cmd("SET_USER_MEMORY_REGION"),
                    &region as *const _ as u64,
                ),
                call(vm, table_cmd("CREATE_VCPU"), 9),
                call(kvm, KVM_CREATE_VM, 0),
            ];
            // SAFETY: writing our stack array to the pipe, then leaving at once.
            unsafe {
                libc::write(fds[1], out.as_ptr().cast(), std::mem::size_of_val(&out));
                libc::_exit(0);
            }
        }
        close(fds[1]);
        let mut out = [0i32; 5];
        // SAFETY: reading the child's results into a local array.
        let n = unsafe { libc::read(fds[0], out.as_mut_ptr().cast(), std::mem::size_of_val(&out)) };
        close(fds[0]);
        let mut st = 0;
        // SAFETY: reaping the child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        self.ioctls += 5;
        let desc = if n as usize == std::mem::size_of_val(&out) {
            out.iter()
                .map(|v| if *v < 0 { errname(-v) } else { v.to_string() })
                .collect::<Vec<_>>()
                .join(",")
        } else {
            "child died".into()
        };
        let sig = if libc::WIFSIGNALED(st) {
            Res::Err(libc::WTERMSIG(st))
        } else {
            Res::Ok(0)
        };
        self.log(&format!("vcpu{k}.{j}"), "fork", &desc, &sig, None);
    }

    pub fn taint(&mut self, k: usize, j: usize) {
        if let Some(vm) = self.vms[k].as_mut() {
            vm.tainted = true;
            if let Some(c) = vm.vcpus[j].as_mut() {
                c.tainted = true;
            }
        }
    }

    /// Raw fds of every live VM and vCPU (for the racing threads).
    pub fn live_fds(&self) -> (Vec<RawFd>, Vec<RawFd>) {
        let vms = self.vms.iter().flatten().map(|v| v.fd).collect();
        let vcpus = self
            .vms
            .iter()
            .flatten()
            .flat_map(|v| v.vcpus.iter().flatten().map(|c| c.fd))
            .collect();
        (vms, vcpus)
    }

    pub fn supported_cpuid(&mut self) -> Option<Vec<u8>> {
        if let Some(t) = self
            .templates
            .get(&(KVM_FD, kvm_abi::ioctl::KVM_GET_SUPPORTED_CPUID))
        {
            return Some(t.clone());
        }
        let len = 8 + 256 * 40;
        let b = self.arg_buf(len);
        b.fill(0);
        b[..4].copy_from_slice(&256u32.to_le_bytes());
        let p = self.arg_ptr(len);
        match self.ioctl(self.kvm, kvm_abi::ioctl::KVM_GET_SUPPORTED_CPUID, p) {
            Res::Ok(_) => {
                let v = self.arg_buf(len).to_vec();
                self.templates
                    .insert((KVM_FD, kvm_abi::ioctl::KVM_GET_SUPPORTED_CPUID), v.clone());
                Some(v)
            }
            _ => None,
        }
    }

    /// Writes `bytes` into the argument arena and returns its address.
    pub fn stage(&mut self, bytes: &[u8]) -> u64 {
        let b = self.arg_buf(bytes.len());
        b.copy_from_slice(bytes);
        self.arg_ptr(bytes.len())
    }
}

impl Drop for Fuzzer {
    fn drop(&mut self) {
        for k in 0..VMS {
            self.drop_vm(k);
        }
        for fd in self.stats.drain(..) {
            close(fd);
        }
        close(self.kvm);
        for fd in self.eventfds {
            close(fd);
        }
        let _ = self.log.flush();
    }
}

fn drop_vcpu(c: Vcpu) {
    if !c.run.is_null() {
        // SAFETY: unmapping the kvm_run mapping this vCPU owned.
        unsafe { libc::munmap(c.run.cast(), c.run_len) };
    }
    close(c.fd);
}

fn res_copy(r: &Res) -> Res {
    match r {
        Res::Ok(v) => Res::Ok(*v),
        Res::Err(e) => Res::Err(*e),
        Res::Fd => Res::Fd,
    }
}

/// A creating command's result with the fd number hidden.
pub fn fdres(r: &Res) -> Res {
    match r {
        Res::Ok(_) => Res::Fd,
        Res::Err(e) => Res::Err(*e),
        Res::Fd => Res::Fd,
    }
}

pub fn table_cmd(name: &str) -> u32 {
    IOCTLS
        .iter()
        .find(|i| i.name == name)
        .map(|i| i.cmd)
        .unwrap_or(0)
}

/// Sets a few aligned fields of `b` to edge values or random bits.
fn mutate(r: &mut Rng, b: &mut [u8]) {
    if b.is_empty() {
        return;
    }
    for _ in 0..1 + r.below(4) {
        let w = *r.pick(&[1usize, 2, 4, 8]);
        if b.len() < w {
            continue;
        }
        let at = r.index(b.len() / w) * w;
        let v = r.int().to_le_bytes();
        b[at..at + w].copy_from_slice(&v[..w]);
    }
}

pub fn open_kvm() -> Result<RawFd, i32> {
    // SAFETY: a NUL-terminated constant path.
    let fd = unsafe { libc::open(c"/dev/kvm".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        Err(errno())
    } else {
        Ok(fd)
    }
}

pub fn errname(e: i32) -> String {
    let n = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ENOTTY => "ENOTTY",
        libc::EFBIG => "EFBIG",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => return format!("errno{e}"),
    };
    n.to_string()
}
