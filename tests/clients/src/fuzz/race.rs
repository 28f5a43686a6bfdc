//! `--threads N`: while the main thread runs the sequence, N threads keep entering
//! whichever vCPUs exist (KVM_RUN racing the sequence's memslot changes, register
//! ioctls, closes and forks) and one more thread moves a memslot over guest memory
//! it unmaps and maps again. Nothing of this is deterministic: the log marks every
//! line so, and the differential run does not use it.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvm_abi::ioctl::{KVM_GET_REGS, KVM_SET_USER_MEMORY_REGION};
use kvm_abi::uapi;

use super::exec::CHUNK;
use super::guest::{install_kick, run_once};
use super::rng::Rng;

#[derive(Default)]
pub struct Shared {
    pub vms: Mutex<Vec<RawFd>>,
    pub vcpus: Mutex<Vec<RawFd>>,
    stop: AtomicBool,
    pub calls: AtomicU64,
}

pub struct Race {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

fn pick(r: &mut Rng, v: &Mutex<Vec<RawFd>>) -> Option<RawFd> {
    let v = v.lock().ok()?;
    if v.is_empty() {
        None
    } else {
        Some(v[r.index(v.len())])
    }
}

impl Race {
    /// `racer_chunk`: guest memory only the mutator touches.
    pub fn start(n: usize, seed: u64, racer_chunk: u64) -> Race {
        install_kick();
        let shared = Arc::new(Shared::default());
        let mut threads = Vec::new();
        for t in 0..n {
            let s = shared.clone();
            threads.push(std::thread::spawn(move || {
                let mut r = Rng::new(seed ^ (t as u64 + 1) << 32);
                let mut regs = uapi::kvm_regs::default();
                while !s.stop.load(Ordering::Relaxed) {
                    let Some(fd) = pick(&mut r, &s.vcpus) else {
                        std::thread::yield_now();
                        continue;
                    };
                    if r.chance(3, 4) {
                        let _ = run_once(fd);
                    } else {
                        // SAFETY: a register read into a local struct.
                        unsafe { libc::ioctl(fd, KVM_GET_REGS as libc::c_ulong, &mut regs) };
                    }
                    s.calls.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        let s = shared.clone();
        threads.push(std::thread::spawn(move || {
            let mut r = Rng::new(seed ^ 0xdead);
            // Only a chunk this thread mapped is unmapped: once unmapped, the
            // range may hold someone else's mapping.
            let mut mapped = true;
            while !s.stop.load(Ordering::Relaxed) {
                let Some(vm) = pick(&mut r, &s.vms) else {
                    std::thread::yield_now();
                    continue;
                };
                match r.below(4) {
                    0 | 1 => {
                        let m = uapi::kvm_userspace_memory_region {
                            slot: 7,
                            flags: r.below(2) as u32,
                            guest_phys_addr: 0x40_0000 * (1 + r.below(4)),
                            memory_size: if r.chance(1, 3) { 0 } else { 0x20_0000 },
                            userspace_addr: racer_chunk,
                        };
                        // SAFETY: the region struct lives on our stack.
                        unsafe { libc::ioctl(vm, KVM_SET_USER_MEMORY_REGION as libc::c_ulong, &m) };
                    }
                    2 if mapped => {
                        // The racer's own chunk, mapped; nothing in userspace
                        // reads or writes it.
                        // SAFETY: as said above.
                        unsafe { libc::munmap(racer_chunk as *mut libc::c_void, CHUNK) };
                        mapped = false;
                    }
                    2 => {}
                    _ => {
                        // SAFETY: maps the racer's chunk back, never over another mapping.
                        unsafe {
                            let p = libc::mmap(
                                racer_chunk as *mut libc::c_void,
                                CHUNK,
                                libc::PROT_READ | libc::PROT_WRITE,
                                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                                -1,
                                0,
                            );
                            if p != libc::MAP_FAILED && p as u64 != racer_chunk {
                                libc::munmap(p, CHUNK);
                            }
                            mapped |= p as u64 == racer_chunk;
                        }
                    }
                }
                s.calls.fetch_add(1, Ordering::Relaxed);
            }
        }));
        Race { shared, threads }
    }

    pub fn publish(&self, vms: Vec<RawFd>, vcpus: Vec<RawFd>) {
        if let Ok(mut v) = self.shared.vms.lock() {
            *v = vms;
        }
        if let Ok(mut v) = self.shared.vcpus.lock() {
            *v = vcpus;
        }
    }

    /// Stops the threads; returns how many calls they made.
    pub fn stop(self) -> u64 {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.shared.calls.load(Ordering::Relaxed)
    }
}
