/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The C glue of kvm-rs: kernel services that the 7.2 Rust kernel crate does not offer
 * (fixed-minor misc device with an owner, anon-inode fds, on_each_cpu, MSR access with
 * exception fixup, the core kernel's SVM/VMX enable refcount, mm pinning).
 *
 * Only plain C types and opaque pointers cross this line, so the bindgen output
 * (generated/glue.rs) does not depend on the kernel's c_flags.
 *
 *   kvm_glue_*  implemented in C (src/glue.c, src/glue_gmem.c), called from Rust; exported to the
 *               vendor modules, which have no C of their own.
 *   kvm_rs_*    implemented in Rust, called from C (the fops of /dev/kvm and VM fds)
 *               or by the vendor modules (registration).
 */
#ifndef KVM_RS_GLUE_H
#define KVM_RS_GLUE_H

enum kvm_glue_virt {
	KVM_GLUE_VIRT_SVM = 1,
	KVM_GLUE_VIRT_VMX = 2,
};

/* /dev/kvm (misc minor 232) with file operations owned by the vendor module. */
int kvm_glue_dev_register(void *owner);
void kvm_glue_dev_deregister(void);
/* A new O_CLOEXEC fd for a VM; on success the file owns the caller's reference. */
int kvm_glue_vm_fd(void *vm);

/*
 * guest_memfd (src/glue_gmem.c; upstream virt/kvm/guest_memfd.c). init/exit come
 * with /dev/kvm (the pseudo file system and its inode cache; @module owns the
 * files). create(): a new fd of @size bytes with GUEST_MEMFD_FLAG_* @flags whose
 * file owns @owner, handed back to kvm_rs_gmem_release() when the file goes;
 * punch holes and memory errors call kvm_rs_gmem_invalidate_start(@owner, first
 * index, end index) then _end() around dropping pages, under the mapping's
 * invalidate_lock. fget(): -EBADF, -EINVAL (not a guest_memfd), or 0 with a file
 * reference (kvm_glue_fput()) and its owner, size and flags. get_page(): the page
 * at @index, allocated and zeroed if absent, with a reference for the caller
 * (kvm_glue_put_page_phys()); the file must be kept alive by the caller.
 */
int kvm_glue_gmem_init(void *module);
void kvm_glue_gmem_exit(void);
int kvm_glue_gmem_create(void *owner, unsigned long long size, unsigned long long flags);
int kvm_glue_gmem_fget(unsigned int fd, void **file, void **owner, unsigned long long *size,
		       unsigned long long *flags);
void kvm_glue_fput(void *file);
int kvm_glue_gmem_get_page(void *file, unsigned long index, unsigned long long *phys);
void kvm_glue_put_page_phys(unsigned long long phys);

/* The creating process's mm, pinned (mmgrab) for the VM's lifetime. */
void *kvm_glue_mm_grab_current(void);
void kvm_glue_mm_drop(void *mm);
int kvm_glue_mm_is_current(const void *mm);

unsigned int kvm_glue_num_online_cpus(void);
/* Runs fn(data) on every online CPU, with interrupts off, and waits for all. */
void kvm_glue_on_each_cpu(void (*fn)(void *data), void *data);

void kvm_glue_cpuid(unsigned int leaf, unsigned int subleaf, unsigned int regs[4]);
int kvm_glue_rdmsr_safe(unsigned int msr, unsigned long long *val);
int kvm_glue_wrmsr_safe(unsigned int msr, unsigned long long val);
/* kvm_get_arch_capabilities(): MSR_IA32_ARCH_CAPABILITIES as KVM offers it. */
unsigned long long kvm_glue_arch_capabilities(void);
/* sched_info_on(), and current's run-queue wait (sched_info.run_delay, ns). */
int kvm_glue_sched_info_on(void);
unsigned long long kvm_glue_run_delay(void);
/* Whether LFENCE serializes (AMD DE_CFG bit 1 is then offered). */
int kvm_glue_lfence_rdtsc(void);
/* x86_virt_get_ref()/put_ref() on the calling CPU (EFER.SVME, or VMXON by the core). */
int kvm_glue_virt_get_ref(enum kvm_glue_virt virt);
void kvm_glue_virt_put_ref(enum kvm_glue_virt virt);
unsigned long long kvm_glue_page_to_phys(void *page);

/*
 * An MMU notifier on the current mm for VM @vm, calling kvm_rs_mn_*; NULL on
 * failure. Unregistering waits for callbacks in flight.
 */
void *kvm_glue_mn_register(void *vm);
void kvm_glue_mn_unregister(void *mn);
/* A waiting IPI to @cpu: a vCPU in guest mode there has exited when it returns. */
void kvm_glue_kick_cpu_wait(unsigned int cpu);
/* A binary-stats fd (read-only, pread-able); on success the file owns @stats. */
int kvm_glue_stats_fd(void *stats, const char *name);
int kvm_glue_current_pid(void);
/*
 * A vCPU's file ("kvm-vcpu:<id>") into *@file, not installed in any fd; on success
 * the file owns @vcpu. 0 or -errno.
 */
int kvm_glue_vcpu_file(void *vcpu, unsigned int id, void **file);

/* References on a vendor module (struct module *): try_module_get() etc. */
int kvm_glue_try_module_get(void *module);
void kvm_glue_module_get(void *module);
void kvm_glue_module_put(void *module);
/* mutex_lock_killable() on a kernel struct mutex: 0, or -EINTR for a fatal signal. */
int kvm_glue_mutex_lock_killable(void *mutex);

/* The calling task. */
void kvm_glue_cond_resched(void);
unsigned long long kvm_glue_task_size_max(void);
unsigned int kvm_glue_tsc_khz(void);

void kvm_glue_irq_disable(void);
void kvm_glue_irq_enable(void);
/*
 * Pending task work before entering the guest (entry-virt.h): with interrupts on,
 * handle it (signals give -EINTR, reschedule, notify-resume) as upstream's
 * kvm_xfer_to_guest_mode_handle_work(); with interrupts off, only ask whether any
 * is pending (kvm_vcpu_exit_request()).
 */
int kvm_glue_xfer_to_guest_mode_handle_work(void);
int kvm_glue_xfer_to_guest_mode_work_pending(void);
/*
 * Guest time and state accounting around the world switch (kvm_host.h), with
 * interrupts off: timing around the whole entry (vcpu_enter_guest()), state
 * (RCU, context tracking, lockdep's view of IRQs) right around VMRUN/VMLAUNCH.
 */
void kvm_glue_guest_timing_enter_irqoff(void);
void kvm_glue_guest_timing_exit_irqoff(void);
void kvm_glue_guest_state_enter_irqoff(void);
void kvm_glue_guest_state_exit_irqoff(void);
/* Around guest entry as vcpu_enter_guest(): no preemption from the exit's IRQ. */
void kvm_glue_preempt_disable(void);
void kvm_glue_preempt_enable(void);

/* Guest memory: one user page of the current mm pinned; unpinned by its address. */
int kvm_glue_pin_user_page(unsigned long long hva, int write, unsigned long long *phys);
void kvm_glue_unpin_phys(unsigned long long phys, int dirty);
void *kvm_glue_phys_to_virt(unsigned long long phys);
int kvm_glue_pgtable_l5_enabled(void);
/* Zeroed, physically contiguous kernel memory (SVM's IOPM/MSRPM). */
void *kvm_glue_alloc_pages_exact(unsigned long size);
void kvm_glue_free_pages_exact(void *p, unsigned long size);
unsigned long long kvm_glue_virt_to_phys(void *p);
void *kvm_glue_virt_to_page(void *p);

/*
 * A vCPU's waiter: where a halted vCPU sleeps, and what other vCPUs, its LAPIC
 * timer (an hrtimer) and interrupt sources poke. A poke sets a pending flag,
 * wakes the sleeper and, when the vCPU is in guest mode on another CPU, sends that
 * CPU a reschedule IPI so the guest exits.
 */
void *kvm_glue_waiter_new(void);
/* Publishes that the vCPU is in guest mode on @cpu_plus_one - 1 (0: it is not). */
void kvm_glue_waiter_set_cpu(void *w, unsigned int cpu_plus_one);
unsigned int kvm_glue_waiter_cpu(void *w);
void kvm_glue_waiter_free(void *w);
/* Arms the timer for absolute CLOCK_MONOTONIC @ns (0: cancels it). */
void kvm_glue_waiter_arm(void *w, unsigned long long ns);
void kvm_glue_waiter_poke(void *w);
/* Reads and clears the pending flag. */
int kvm_glue_waiter_take(void *w);
/* Reads and clears "the timer fired" (set before its poke). */
int kvm_glue_waiter_take_fired(void *w);
int kvm_glue_waiter_pending(void *w);
/* Sleeps until poked or a signal is pending; returns whether it slept. */
int kvm_glue_waiter_block(void *w);
/* Whether the vCPU has a reason to stop halting: poked, or a signal pending. */
int kvm_glue_waiter_check_block(void *w);
/* halt_poll_ns, halt_poll_ns_grow, halt_poll_ns_grow_start, halt_poll_ns_shrink. */
void kvm_glue_halt_poll_params(unsigned int out[4]);
/* Whether the CPU may keep polling (single_task_running() && !need_resched()). */
int kvm_glue_can_poll(void);
void kvm_glue_cpu_relax(void);
unsigned long long kvm_glue_ktime_ns(void);
unsigned long long kvm_glue_rdtsc(void);
/* The kvmclock base: CLOCK_MONOTONIC_RAW plus the boot offset (upstream
 * get_kvmclock_base_ns()). */
unsigned long long kvm_glue_kvmclock_base_ns(void);
unsigned long long kvm_glue_ktime_real_ns(void);
/* One snapshot of CLOCK_REALTIME, the kvmclock base and the clocksource counter;
 * 1 when that counter is a stable TSC (upstream's master clock). */
int kvm_glue_clock_snapshot(unsigned long long *realtime_ns, unsigned long long *base_ns,
			    unsigned long long *tsc);
int kvm_glue_check_tsc_unstable(void);

/* The guest FPU (struct fpu_guest): allocated, swapped in/out around KVM_RUN. */
void *kvm_glue_fpu_alloc(void);
void kvm_glue_fpu_free(void *gfpu);
void kvm_glue_fpu_load(void *gfpu, int enter);
unsigned int kvm_glue_fpu_uabi_size(void *gfpu);
void kvm_glue_fpu_get_xsave(void *gfpu, void *buf, unsigned int size, unsigned long long mask);
int kvm_glue_fpu_set_xsave(void *gfpu, void *buf, unsigned long long mask);
unsigned long long kvm_glue_fpu_xfeatures(void *gfpu);
void *kvm_glue_fpu_fxsave(void *gfpu);
unsigned long long kvm_glue_host_xcr0(void);
void kvm_glue_load_guest_db(const unsigned long long *db);
void kvm_glue_save_guest_db(unsigned long long *db);
void kvm_glue_restore_host_db(void);
void kvm_glue_xsetbv(unsigned long long xcr0);
/* With interrupts off, just before entry: reload the FPU if a switch dropped it. */
void kvm_glue_fpu_prepare_entry(void);

/* eventfd_ctx_fdget(@fd) into *@ctx: 0, -EBADF, or -EINVAL (not an eventfd). */
int kvm_glue_eventfd_ctx_fdget(int fd, void **ctx);
void kvm_glue_eventfd_ctx_put(void *ctx);
void kvm_glue_eventfd_signal(void *ctx);
/* An irqfd on eventfd @fd: each signal calls @inject_fn(@owner) from a work item
 * (process context), a pending one right away. 0 with the handle in *out and the
 * eventfd context in *ctx (held by the handle); -EBADF, -EINVAL (not an eventfd),
 * -EBUSY (already an irqfd's), -ENOMEM. */
int kvm_glue_irqfd_new(int fd, void (*inject_fn)(void *owner), void *owner, void **out,
		       void **ctx);
/* Unhooks it; returns once no injection runs, then frees it. */
void kvm_glue_irqfd_free(void *irqfd);

/* The PIT's channel-0 timer (upstream kvm_kpit_state's hrtimer and the kvm_pit
 * worker): @fired(@owner) runs in the timer interrupt at each expiry, then
 * @expired(@owner) from a work item (process context). NULL on -ENOMEM. */
void *kvm_glue_pit_timer_new(void (*fired)(void *owner), void (*expired)(void *owner),
			     void *owner);
/* create_pit_timer(): cancels the timer and waits out @expired, then fires first
 * @first_ns from now and, if @periodic, every @period_ns after that. */
void kvm_glue_pit_timer_start(void *t, unsigned long long first_ns,
			      unsigned long long period_ns, int periodic);
/* destroy_pit_timer(): cancels the timer and waits out @expired. */
void kvm_glue_pit_timer_stop(void *t);
/* Queues @expired again (an acked tick with more pending). */
void kvm_glue_pit_timer_queue(void *t);
/* Stops it for good and frees it. */
void kvm_glue_pit_timer_free(void *t);

/*
 * A vCPU's preempt notifier (upstream vcpu->preempt_notifier): while a vCPU ioctl
 * runs, sched_in/sched_out call kvm_rs_sched_in/out(@vcpu). new() enables the
 * notifier static key (preempt_notifier_inc) until free().
 */
void *kvm_glue_preempt_new(void);
void kvm_glue_preempt_free(void *pn);
/* vcpu_load(): registers the notifier for @vcpu and calls kvm_rs_sched_in(). */
void kvm_glue_vcpu_load(void *pn, const void *vcpu);
/* vcpu_put(): calls kvm_rs_sched_out() and unregisters the notifier. */
void kvm_glue_vcpu_put(void *pn);
/*
 * With preemption off: an IBPB if @vcpu is not the last vCPU loaded on this CPU
 * and the host asks for one on vCPU switches (switch_vcpu_ibpb).
 */
void kvm_glue_switch_vcpu_ibpb(const void *vcpu);

#ifndef __KVM_RS_BINDGEN__
long kvm_rs_dev_ioctl(unsigned int cmd, unsigned long arg);
long kvm_rs_vm_ioctl(void *vm, unsigned int cmd, unsigned long arg);
long kvm_rs_vm_compat_ioctl(void *vm, unsigned int cmd, unsigned long arg);
void kvm_rs_vm_release(void *vm);
long kvm_rs_vcpu_ioctl(void *vcpu, unsigned int cmd, unsigned long arg);
long kvm_rs_vcpu_compat_ioctl(void *vcpu, unsigned int cmd, unsigned long arg);
void kvm_rs_vcpu_release(void *vcpu);
void *kvm_rs_vcpu_page(void *vcpu, unsigned long pgoff);
int kvm_rs_mn_invalidate_start(void *vm, unsigned long start, unsigned long end,
			       int blockable);
void kvm_rs_mn_invalidate_end(void *vm);
void kvm_rs_mn_release(void *vm);
void kvm_rs_sched_in(const void *vcpu, int cpu);
void kvm_rs_sched_out(const void *vcpu);
long kvm_rs_stats_read(void *stats, char __user *buf, unsigned long size, long long *pos);
void kvm_rs_stats_release(void *stats);
void kvm_rs_gmem_invalidate_start(void *owner, unsigned long start, unsigned long end);
void kvm_rs_gmem_invalidate_end(void *owner);
void kvm_rs_gmem_release(void *owner);
int kvm_rs_vendor_register(const void *ops, void *owner);
void kvm_rs_vendor_unregister(const void *ops);
#endif

#endif /* KVM_RS_GLUE_H */
