// SPDX-License-Identifier: GPL-2.0-only
//! The guest TSC and the kvmclock (upstream x86.c's TSC offsetting, TSC
//! synchronization and pvclock parts): the offset kvm.ko keeps and the vendor
//! applies, IA32_TSC and IA32_TSC_ADJUST, and KVM_GET_CLOCK / KVM_SET_CLOCK on the
//! VM's clock. The arithmetic is arch/x86/hw/tsc.rs.

use core::sync::atomic::Ordering;
use kernel::prelude::*;

use crate::abi::caps::KVM_CLOCK_VALID_FLAGS;
use crate::abi::{ioctl, uapi};
use crate::arch::emulate::{read_phys, write_phys};
use crate::arch::x86::{now_tsc as rdtsc, VcpuArch};
use crate::arch::Vm;
use crate::glue;
use crate::hw::tsc::{
    kvm_get_time_scale, pvclock_wall_clock, steal_time_versions, PvclockVcpuTimeInfo, TimeScale,
    TscWrite, KVM_MSR_ENABLED, KVM_STEAL_VALID_BITS, NSEC_PER_SEC, PVCLOCK_GUEST_STOPPED,
    PVCLOCK_TSC_STABLE_BIT, STEAL_TIME_PREEMPTED, STEAL_TIME_STEAL, STEAL_TIME_VERSION,
};
use crate::user;

/// get_kvmclock_base_ns(): boot time at the raw clock's rate.
pub(crate) fn get_kvmclock_base_ns() -> u64 {
    // SAFETY: reads the clock.
    unsafe { glue::kvm_glue_kvmclock_base_ns() }
}

/// The scale from the host's TSC (tsc_khz, what vCPUs run at without TSC
/// scaling) to nanoseconds.
fn host_tsc_scale() -> TimeScale {
    // SAFETY: reads a kernel variable.
    let khz = unsafe { glue::kvm_glue_tsc_khz() };
    kvm_get_time_scale(NSEC_PER_SEC, u64::from(khz) * 1000)
}

/// One reading of the host clocks (kvm_get_walltime_and_clockread()).
struct Snapshot {
    realtime_ns: u64,
    base_ns: u64,
    tsc: u64,
    /// The host clocksource is a stable TSC: the kvmclock can be a linear
    /// function of it (upstream's master clock).
    tsc_based: bool,
}

fn snapshot() -> Snapshot {
    let (mut realtime_ns, mut base_ns, mut tsc) = (0, 0, 0);
    // SAFETY: three valid out-pointers.
    let r = unsafe { glue::kvm_glue_clock_snapshot(&mut realtime_ns, &mut base_ns, &mut tsc) };
    let tsc_based = r != 0;
    Snapshot {
        realtime_ns,
        base_ns,
        tsc,
        tsc_based,
    }
}

/// The VM's clock (upstream kvm->arch.kvmclock_offset and the master clock):
/// kvmclock = base ns + offset; with the master clock, base ns is extrapolated
/// from one (base ns, host TSC) pair at the host's TSC rate, so every vCPU
/// reads the same linear function of the TSC.
pub(crate) struct KvmClock {
    pub(crate) kvmclock_offset: u64,
    pub(crate) use_master_clock: bool,
    pub(crate) master_kernel_ns: u64,
    pub(crate) master_cycle_now: u64,
}

impl KvmClock {
    /// kvm_arch_init_vm(): the clock starts at 0; no master clock before the
    /// first vCPU (no vCPU's TSC to match).
    pub(crate) fn new() -> Self {
        let mut c = KvmClock {
            kvmclock_offset: 0u64.wrapping_sub(get_kvmclock_base_ns()),
            use_master_clock: false,
            master_kernel_ns: 0,
            master_cycle_now: 0,
        };
        c.pvclock_update_vm_gtod_copy(false);
        c
    }

    /// pvclock_update_vm_gtod_copy(): a new master (base ns, TSC) pair, used if
    /// the host clocksource is the TSC and all vCPUs' TSCs are matched.
    pub(crate) fn pvclock_update_vm_gtod_copy(&mut self, vcpus_matched: bool) {
        let s = snapshot();
        self.use_master_clock = s.tsc_based && vcpus_matched;
        self.master_kernel_ns = s.base_ns;
        self.master_cycle_now = s.tsc;
    }

    /// The master clock as a pvclock structure on the host's TSC.
    fn master_hv_clock(&self) -> PvclockVcpuTimeInfo {
        PvclockVcpuTimeInfo {
            tsc_timestamp: self.master_cycle_now,
            system_time: self.master_kernel_ns.wrapping_add(self.kvmclock_offset),
            scale: host_tsc_scale(),
            ..Default::default()
        }
    }

    /// __get_kvmclock(): the clock now, with the host's realtime and TSC at the
    /// same instant when the host clocksource is the TSC.
    pub(crate) fn get_kvmclock(&self) -> uapi::kvm_clock_data {
        let mut d = uapi::kvm_clock_data::default();
        if self.use_master_clock {
            let s = snapshot();
            if s.tsc_based {
                d.realtime = s.realtime_ns;
                d.host_tsc = s.tsc;
                d.flags |= uapi::KVM_CLOCK_REALTIME | uapi::KVM_CLOCK_HOST_TSC;
            } else {
                d.host_tsc = rdtsc();
            }
            d.flags |= uapi::KVM_CLOCK_TSC_STABLE;
            d.clock = self.master_hv_clock().read_cycles(d.host_tsc);
        } else {
            d.clock = get_kvmclock_base_ns().wrapping_add(self.kvmclock_offset);
        }
        d
    }

    /// kvm_vm_ioctl_set_clock(): the clock reads `data.clock` now (plus the
    /// realtime elapsed since `data.realtime` with KVM_CLOCK_REALTIME, never
    /// backwards).
    pub(crate) fn set_kvmclock(
        &mut self,
        data: &uapi::kvm_clock_data,
        vcpus_matched: bool,
    ) -> Result {
        if data.flags & !KVM_CLOCK_VALID_FLAGS != 0 {
            return Err(EINVAL);
        }
        self.pvclock_update_vm_gtod_copy(vcpus_matched);
        let mut clock = data.clock;
        if data.flags & uapi::KVM_CLOCK_REALTIME != 0 {
            // SAFETY: reads the clock.
            let now_real_ns = unsafe { glue::kvm_glue_ktime_real_ns() };
            if now_real_ns > data.realtime {
                clock = clock.wrapping_add(now_real_ns - data.realtime);
            }
        }
        let now_raw_ns = if self.use_master_clock {
            self.master_kernel_ns
        } else {
            get_kvmclock_base_ns()
        };
        self.kvmclock_offset = clock.wrapping_sub(now_raw_ns);
        Ok(())
    }
}

impl Vm {
    /// KVM_GET_CLOCK (kvm_vm_ioctl_get_clock()).
    pub(crate) fn kvm_vm_ioctl_get_clock(&self, arg: usize) -> Result<isize> {
        let d = self.arch.clock.lock().get_kvmclock();
        user::write(arg, &d)?;
        Ok(0)
    }

    /// KVM_SET_CLOCK (kvm_vm_ioctl_set_clock()).
    pub(crate) fn kvm_vm_ioctl_set_clock(&self, arg: usize) -> Result<isize> {
        let d: uapi::kvm_clock_data = user::read(arg)?;
        let matched = self.vcpus_matched_tsc();
        self.arch.clock.lock().set_kvmclock(&d, matched)?;
        // kvm_end_pvclock_update(): every vCPU's pvclock follows.
        self.kvm_gen_kvmclock_update();
        Ok(0)
    }

    /// Whether every vCPU runs with the TSC of the current generation of TSC
    /// writes (upstream nr_vcpus_matched_tsc + 1 == online_vcpus), a condition
    /// of the master clock.
    fn vcpus_matched_tsc(&self) -> bool {
        let online = self.locked.lock().vcpus.len();
        let matched = self.arch.tsc.lock().nr_vcpus_matched_tsc as usize;
        matched + 1 == online
    }

    /// KVM_REQ_MASTERCLOCK_UPDATE (kvm_update_masterclock()): after a TSC write,
    /// at the next entry of any vCPU, whether the master clock can be used; every
    /// vCPU's pvclock then follows.
    pub(crate) fn kvm_update_masterclock(&self) {
        if self.arch.masterclock_update.swap(false, Ordering::AcqRel) {
            let matched = self.vcpus_matched_tsc();
            self.arch.clock.lock().pvclock_update_vm_gtod_copy(matched);
            self.kvm_gen_kvmclock_update();
        }
    }

    /// KVM_REQ_GLOBAL_CLOCK_UPDATE: every vCPU writes its pvclock again before its
    /// next entry.
    pub(crate) fn kvm_gen_kvmclock_update(&self) {
        self.arch.clock_gen.fetch_add(1, Ordering::AcqRel);
    }

    /// kvm_get_wall_clock_epoch(): the wall-clock time at kvmclock 0.
    fn kvm_get_wall_clock_epoch(&self) -> u64 {
        let d = self.arch.clock.lock().get_kvmclock();
        let real = if d.flags & uapi::KVM_CLOCK_REALTIME != 0 {
            d.realtime
        } else {
            // SAFETY: reads the clock.
            unsafe { glue::kvm_glue_ktime_real_ns() }
        };
        real.wrapping_sub(d.clock)
    }

    /// kvm_write_wall_clock(): `struct pvclock_wall_clock` at `gpa` (0: none),
    /// under its version protocol (odd while being written).
    pub(crate) fn kvm_write_wall_clock(&self, gpa: u64) {
        if gpa == 0 {
            return;
        }
        let Some(old) = self.guest_version(gpa) else {
            return;
        };
        // The next odd version (an odd one found is junk from before the first
        // write, as kvm_write_wall_clock() takes it).
        let version = old.wrapping_add(1) | 1;
        let wall = self.kvm_get_wall_clock_epoch();
        let wc = pvclock_wall_clock(
            version,
            (wall / NSEC_PER_SEC) as u32,
            (wall % NSEC_PER_SEC) as u32,
        );
        self.write_versioned(gpa, version, &wc);
    }

    /// The version word of a pvclock structure in guest memory.
    fn guest_version(&self, gpa: u64) -> Option<u32> {
        let mut v = [0u8; 4];
        read_phys(self, gpa, &mut v)?;
        Some(u32::from_le_bytes(v))
    }

    /// A pvclock structure `bytes` (version first) at `gpa` under the version
    /// protocol: the odd `version` while the rest is written, then the next one.
    fn write_versioned(&self, gpa: u64, version: u32, bytes: &[u8]) {
        if write_phys(self, gpa, &version.to_le_bytes()).is_none() {
            return;
        }
        let _ = write_phys(self, gpa.wrapping_add(4), bytes.get(4..).unwrap_or(&[]));
        let _ = write_phys(self, gpa, &version.wrapping_add(1).to_le_bytes());
    }

    /// kvm_guest_time_update(): the vCPU's pvclock structure (MSR_KVM_SYSTEM_TIME)
    /// from the VM clock: with the master clock, one (kvmclock, TSC) pair for all
    /// vCPUs and the stable bit; otherwise the current time and TSC.
    pub(crate) fn kvm_guest_time_update(&self, st: &mut VcpuArch) {
        st.clock_update = false;
        st.clock_gen = self.arch.clock_gen.load(Ordering::Acquire);
        if st.pv_time & KVM_MSR_ENABLED == 0 {
            return;
        }
        let (host_tsc, kernel_ns, offset, master) = {
            let c = self.arch.clock.lock();
            if c.use_master_clock {
                (
                    c.master_cycle_now,
                    c.master_kernel_ns,
                    c.kvmclock_offset,
                    true,
                )
            } else {
                (rdtsc(), get_kvmclock_base_ns(), c.kvmclock_offset, false)
            }
        };
        let mut flags = if master { PVCLOCK_TSC_STABLE_BIT } else { 0 };
        if core::mem::take(&mut st.pvclock_set_guest_stopped_request) {
            flags |= PVCLOCK_GUEST_STOPPED;
        }
        let gpa = st.pv_time & !KVM_MSR_ENABLED;
        let Some(old) = self.guest_version(gpa) else {
            return;
        };
        // kvm_setup_guest_pvclock(): odd while being written, even after.
        let version = old.wrapping_add(1) | 1;
        let hv = PvclockVcpuTimeInfo {
            version,
            tsc_timestamp: kvm_read_l1_tsc(st, host_tsc),
            system_time: kernel_ns.wrapping_add(offset),
            scale: host_tsc_scale(),
            flags,
        };
        self.write_versioned(gpa, version, &hv.to_bytes());
        st.pv_time_cpu = current_cpu();
    }

    /// Before an entry: the pvclock structure again if the VM clock changed, the
    /// vCPU asked (a TSC or MSR write), or, without the master clock, the vCPU
    /// moved to another CPU (kvm_arch_vcpu_load()'s request).
    pub(crate) fn kvm_check_clock_update(&self, st: &mut VcpuArch) {
        // kvm_arch_vcpu_load()'s test, made once per CPU change (not at every
        // entry) and only for a vCPU that has a pvclock.
        let cpu = current_cpu();
        let mut moved = false;
        if st.pv_time & KVM_MSR_ENABLED != 0 && st.pv_time_cpu != cpu {
            if self.arch.clock.lock().use_master_clock {
                st.pv_time_cpu = cpu;
            } else {
                moved = true;
            }
        }
        if st.clock_update || moved || st.clock_gen != self.arch.clock_gen.load(Ordering::Acquire) {
            self.kvm_guest_time_update(st);
        }
    }

    /// record_steal_time(): the run-queue delay since the last update is added
    /// to the guest's steal time, under an odd version; preempted is cleared.
    pub(crate) fn record_steal_time(&self, st: &mut VcpuArch) {
        if st.st_msr_val & KVM_MSR_ENABLED == 0 {
            return;
        }
        let gpa = st.st_msr_val & KVM_STEAL_VALID_BITS;
        let mut v = [0u8; 4];
        let mut steal = [0u8; 8];
        if read_phys(self, gpa + STEAL_TIME_VERSION, &mut v).is_none()
            || read_phys(self, gpa + STEAL_TIME_STEAL, &mut steal).is_none()
        {
            return;
        }
        let (odd, even) = steal_time_versions(u32::from_le_bytes(v));
        // SAFETY: reads the current task's scheduler statistics.
        let run_delay = unsafe { glue::kvm_glue_run_delay() };
        let steal =
            u64::from_le_bytes(steal).wrapping_add(run_delay.wrapping_sub(st.st_last_steal));
        st.st_last_steal = run_delay;
        let _ = write_phys(self, gpa + STEAL_TIME_PREEMPTED, &[0]);
        let _ = write_phys(self, gpa + STEAL_TIME_VERSION, &odd.to_le_bytes());
        let _ = write_phys(self, gpa + STEAL_TIME_STEAL, &steal.to_le_bytes());
        let _ = write_phys(self, gpa + STEAL_TIME_VERSION, &even.to_le_bytes());
    }

    /// kvm_synchronize_tsc(): a vCPU's TSC is set to `data` (None: the vCPU is
    /// being created), matched to the other vCPUs' when the write is close to
    /// theirs.
    pub(crate) fn kvm_synchronize_tsc(&self, st: &mut VcpuArch, data: Option<u64>) {
        let ns = get_kvmclock_base_ns();
        // SAFETY: reads a kernel variable.
        let unstable = unsafe { glue::kvm_glue_check_tsc_unstable() } != 0;
        let w = self.arch.tsc.lock().synchronize(
            data,
            rdtsc(),
            ns,
            st.tsc_khz,
            unstable,
            st.this_tsc_generation,
        );
        self.kvm_tsc_written(st, w);
    }

    /// The end of __kvm_synchronize_tsc(): the vCPU runs at the offset, in the
    /// write's generation, and kvm_track_tsc_matching() may bring the master
    /// clock or end it.
    fn kvm_tsc_written(&self, st: &mut VcpuArch, w: TscWrite) {
        st.this_tsc_generation = w.generation;
        kvm_vcpu_write_tsc_offset(st, w.offset);
        self.arch.masterclock_update.store(true, Ordering::Release);
    }
}

impl Vm {
    /// kvm_vcpu_ioctl_device_attr(): the vCPU's one attribute group is the TSC's
    /// (KVM_VCPU_TSC_CTRL), whose one attribute is the offset, read and written as
    /// a u64 at `addr`; anything else is -ENXIO.
    pub(crate) fn kvm_vcpu_ioctl_device_attr(
        &self,
        st: &mut VcpuArch,
        cmd: u32,
        attr: &uapi::kvm_device_attr,
    ) -> Result<isize> {
        if attr.group != uapi::KVM_VCPU_TSC_CTRL
            || attr.attr != u64::from(uapi::KVM_VCPU_TSC_OFFSET)
        {
            return Err(ENXIO);
        }
        let addr = usize::try_from(attr.addr).map_err(|_| EFAULT)?;
        match cmd {
            ioctl::KVM_GET_DEVICE_ATTR => user::write(addr, &st.l1_tsc_offset)?,
            ioctl::KVM_SET_DEVICE_ATTR => {
                let offset: u64 = user::read(addr)?;
                self.kvm_arch_tsc_set_offset(st, offset);
            }
            _ => {}
        }
        Ok(0)
    }

    /// kvm_arch_tsc_set_attr(KVM_VCPU_TSC_OFFSET).
    fn kvm_arch_tsc_set_offset(&self, st: &mut VcpuArch, offset: u64) {
        let ns = get_kvmclock_base_ns();
        let w = self.arch.tsc.lock().set_offset(
            offset,
            rdtsc(),
            ns,
            st.tsc_khz,
            st.this_tsc_generation,
        );
        self.kvm_tsc_written(st, w);
    }
}

/// kvm_set_tsc_khz() without TSC scaling: the rate is recorded either way (as
/// upstream's virtual_tsc_khz), but only one within upstream's 250 ppm tolerance
/// of the host's succeeds. Upstream "catches up" a faster guest TSC instead of
/// failing; kvm-rs does not emulate that.
pub(crate) fn set_tsc_khz(st: &mut VcpuArch, khz: u32) -> Result {
    st.tsc_khz = khz;
    // SAFETY: reads a kernel variable.
    let host = u64::from(unsafe { glue::kvm_glue_tsc_khz() });
    let lo = host * (1_000_000 - 250) / 1_000_000;
    let hi = host * (1_000_000 + 250) / 1_000_000;
    if (lo..=hi).contains(&u64::from(khz)) {
        Ok(())
    } else {
        Err(EINVAL)
    }
}

/// KVM_SET_TSC_KHZ's argument (VM and vCPU): the low 32 bits, 0 for the host's rate.
pub(crate) fn tsc_khz_arg(arg: usize) -> u32 {
    match arg as u32 {
        // SAFETY: reads a kernel variable.
        0 => unsafe { glue::kvm_glue_tsc_khz() },
        khz => khz,
    }
}

/// The CPU this runs on, as a hint (the task may move right after).
fn current_cpu() -> u32 {
    kernel::cpu::CpuId::current().as_u32()
}

/// kvm_vcpu_write_tsc_offset(): the offset the guest's TSC runs at; the pvclock
/// structure's TSC stamp follows.
pub(crate) fn kvm_vcpu_write_tsc_offset(st: &mut VcpuArch, offset: u64) {
    st.l1_tsc_offset = offset;
    st.vendor.write_tsc_offset(offset);
    st.clock_update = true;
}

/// adjust_tsc_offset_guest(): the guest moved its own TSC by `adj`.
pub(crate) fn adjust_tsc_offset_guest(st: &mut VcpuArch, adj: u64) {
    let offset = st.l1_tsc_offset.wrapping_add(adj);
    kvm_vcpu_write_tsc_offset(st, offset);
}

/// kvm_read_l1_tsc(): the guest's TSC at host TSC `host_tsc`.
pub(crate) fn kvm_read_l1_tsc(st: &VcpuArch, host_tsc: u64) -> u64 {
    host_tsc.wrapping_add(st.l1_tsc_offset)
}
