// SPDX-License-Identifier: GPL-2.0-only
/*
 * C glue for kvm.ko; see include/kvm_rs_glue.h. Each function is a thin wrapper with
 * no policy: decisions are made in Rust.
 */
#include <linux/anon_inodes.h>
#include <linux/eventfd.h>
#include <linux/file.h>
#include <linux/poll.h>
#include <linux/workqueue.h>
#include <linux/entry-virt.h>
#include <linux/hrtimer.h>
#include <linux/clocksource_ids.h>
#include <linux/timekeeping.h>
#include <linux/kvm_host.h>
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/mmu_notifier.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/preempt.h>
#include <linux/moduleparam.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/sched/stat.h>
#include <linux/slab.h>
#include <linux/smp.h>
#include <linux/wait.h>
#include <trace/events/ipi.h>
#include <asm/debugreg.h>
#include <asm/fpu/api.h>
#include <asm/fpu/xcr.h>
#include <asm/io.h>
#include <asm/tsc.h>
#include <asm/cpufeature.h>
#include <asm/cpuid/api.h>
#include <asm/msr.h>
#include <asm/nospec-branch.h>
#include <asm/processor.h>
#include <asm/virt.h>
#include <asm/vmx.h>

#include "../include/kvm_rs_glue.h"

/*
 * The parameters the KVM selftests and QEMU read from /sys/module/kvm/parameters.
 * Each holds the value that is true of kvm-rs today and refuses any other at load
 * time: a knob for a feature that does not exist yet would be a lie. Each becomes a
 * real, writable parameter in the change that implements what it controls.
 */
static int fixed_bool_set(const char *val, const struct kernel_param *kp)
{
	bool v;

	if (kstrtobool(val, &v))
		return -EINVAL;
	return v == *(bool *)kp->arg ? 0 : -EINVAL;
}

static const struct kernel_param_ops fixed_bool_ops = {
	.set = fixed_bool_set,
	.get = param_get_bool,
};

static int fixed_int_set(const char *val, const struct kernel_param *kp)
{
	int v;

	if (kstrtoint(val, 0, &v))
		return -EINVAL;
	return v == *(int *)kp->arg ? 0 : -EINVAL;
}

static const struct kernel_param_ops fixed_int_ops = {
	.set = fixed_int_set,
	.get = param_get_int,
};

/* No instruction emulator yet, so no forced-emulation prefix. */
static int force_emulation_prefix;
module_param_cb(force_emulation_prefix, &fixed_int_ops, &force_emulation_prefix, 0444);
/* Unknown MSR accesses fault (#GP) as upstream's default. */
static bool ignore_msrs;
module_param_cb(ignore_msrs, &fixed_bool_ops, &ignore_msrs, 0444);
/* No vPMU. */
static bool enable_pmu;
module_param_cb(enable_pmu, &fixed_bool_ops, &enable_pmu, 0444);
/* The MMU is a shadow/NPT MMU, not upstream's TDP MMU. */
static bool tdp_mmu;
module_param_cb(tdp_mmu, &fixed_bool_ops, &tdp_mmu, 0444);

/* Halt polling (kvm_vcpu_halt()): the bound and how a vCPU's window moves. */
static unsigned int halt_poll_ns = 200000; /* KVM_HALT_POLL_NS_DEFAULT */
module_param(halt_poll_ns, uint, 0644);
static unsigned int halt_poll_ns_grow = 2;
module_param(halt_poll_ns_grow, uint, 0644);
static unsigned int halt_poll_ns_grow_start = 10000;
module_param(halt_poll_ns_grow_start, uint, 0644);
static unsigned int halt_poll_ns_shrink = 2;
module_param(halt_poll_ns_shrink, uint, 0644);

void kvm_glue_halt_poll_params(unsigned int out[4])
{
	out[0] = READ_ONCE(halt_poll_ns);
	out[1] = READ_ONCE(halt_poll_ns_grow);
	out[2] = READ_ONCE(halt_poll_ns_grow_start);
	out[3] = READ_ONCE(halt_poll_ns_shrink);
}

/* kvm_vcpu_can_poll() without the deadline: nothing else wants this CPU. */
int kvm_glue_can_poll(void)
{
	return single_task_running() && !need_resched();
}

void kvm_glue_cpu_relax(void)
{
	cpu_relax();
}

static long kvm_dev_fops_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	return kvm_rs_dev_ioctl(cmd, arg);
}

static struct file_operations kvm_chardev_fops = {
	.unlocked_ioctl = kvm_dev_fops_ioctl,
	.compat_ioctl = kvm_dev_fops_ioctl,
	.llseek = noop_llseek,
};

static ssize_t kvm_stats_fops_read(struct file *filp, char __user *buf, size_t size,
				   loff_t *pos)
{
	return kvm_rs_stats_read(filp->private_data, buf, size, pos);
}

static int kvm_stats_fops_release(struct inode *inode, struct file *filp)
{
	kvm_rs_stats_release(filp->private_data);
	return 0;
}

static struct file_operations kvm_stats_fops = {
	.read = kvm_stats_fops_read,
	.release = kvm_stats_fops_release,
	.llseek = noop_llseek,
};

static struct miscdevice kvm_dev = {
	.minor = KVM_MINOR,
	.name = "kvm",
	.fops = &kvm_chardev_fops,
};

static long kvm_vm_fops_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	return kvm_rs_vm_ioctl(filp->private_data, cmd, arg);
}

static int kvm_vm_fops_release(struct inode *inode, struct file *filp)
{
	kvm_rs_vm_release(filp->private_data);
	return 0;
}

static long kvm_vm_fops_compat_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	return kvm_rs_vm_compat_ioctl(filp->private_data, cmd, arg);
}

static struct file_operations kvm_vm_fops = {
	.release = kvm_vm_fops_release,
	.unlocked_ioctl = kvm_vm_fops_ioctl,
	.compat_ioctl = kvm_vm_fops_compat_ioctl,
	.llseek = noop_llseek,
};

static long kvm_vcpu_fops_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	return kvm_rs_vcpu_ioctl(filp->private_data, cmd, arg);
}

static long kvm_vcpu_fops_compat_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	return kvm_rs_vcpu_compat_ioctl(filp->private_data, cmd, arg);
}

static int kvm_vcpu_fops_release(struct inode *inode, struct file *filp)
{
	kvm_rs_vcpu_release(filp->private_data);
	return 0;
}

/* kvm_run, the PIO data page and the coalesced-MMIO ring, as kvm_vcpu_fault(). */
static vm_fault_t kvm_vcpu_fault(struct vm_fault *vmf)
{
	struct page *page = kvm_rs_vcpu_page(vmf->vma->vm_file->private_data, vmf->pgoff);

	if (!page)
		return VM_FAULT_SIGBUS;
	get_page(page);
	vmf->page = page;
	return 0;
}

static const struct vm_operations_struct kvm_vcpu_vm_ops = {
	.fault = kvm_vcpu_fault,
};

static int kvm_vcpu_mmap(struct file *file, struct vm_area_struct *vma)
{
	vma->vm_ops = &kvm_vcpu_vm_ops;
	return 0;
}

static struct file_operations kvm_vcpu_fops = {
	.release = kvm_vcpu_fops_release,
	.unlocked_ioctl = kvm_vcpu_fops_ioctl,
	.compat_ioctl = kvm_vcpu_fops_compat_ioctl,
	.mmap = kvm_vcpu_mmap,
	.llseek = noop_llseek,
};

/*
 * As upstream's kvm_init(): the fops belong to the vendor module, so an open /dev/kvm
 * or VM fd pins kvm-amd/kvm-intel (and through its symbol use, kvm.ko).
 */
int kvm_glue_dev_register(void *owner)
{
	int r;

	kvm_chardev_fops.owner = owner;
	kvm_vm_fops.owner = owner;
	kvm_vcpu_fops.owner = owner;
	kvm_stats_fops.owner = owner;
	r = kvm_glue_gmem_init(owner);
	if (r)
		return r;
	r = misc_register(&kvm_dev);
	if (r)
		kvm_glue_gmem_exit();
	return r;
}

void kvm_glue_dev_deregister(void)
{
	misc_deregister(&kvm_dev);
	kvm_glue_gmem_exit();
}

/* As upstream's kvm_dev_ioctl_create_vm(). */
int kvm_glue_vm_fd(void *vm)
{
	struct file *file;
	int fd;

	fd = get_unused_fd_flags(O_CLOEXEC);
	if (fd < 0)
		return fd;
	file = anon_inode_getfile("kvm-vm", &kvm_vm_fops, vm, O_RDWR);
	if (IS_ERR(file)) {
		put_unused_fd(fd);
		return PTR_ERR(file);
	}
	fd_install(fd, file);
	return fd;
}

/* As upstream's kvm_vm_ioctl_get_stats_fd(): read-only, pread-able. */
int kvm_glue_stats_fd(void *stats, const char *name)
{
	struct file *file;
	int fd;

	fd = get_unused_fd_flags(O_CLOEXEC);
	if (fd < 0)
		return fd;
	file = anon_inode_getfile_fmode(name, &kvm_stats_fops, stats, O_RDONLY, FMODE_PREAD);
	if (IS_ERR(file)) {
		put_unused_fd(fd);
		return PTR_ERR(file);
	}
	fd_install(fd, file);
	return fd;
}

int kvm_glue_current_pid(void)
{
	return task_pid_nr(current);
}

/* As upstream's create_vcpu_fd(), without the fd: the caller installs it last. */
int kvm_glue_vcpu_file(void *vcpu, unsigned int id, void **file)
{
	char name[8 + 1 + 10 + 1];
	struct file *f;

	snprintf(name, sizeof(name), "kvm-vcpu:%u", id);
	f = anon_inode_getfile(name, &kvm_vcpu_fops, vcpu, O_RDWR | O_CLOEXEC);
	if (IS_ERR(f))
		return PTR_ERR(f);
	*file = f;
	return 0;
}

int kvm_glue_try_module_get(void *module)
{
	return try_module_get(module);
}

void kvm_glue_module_get(void *module)
{
	__module_get(module);
}

void kvm_glue_module_put(void *module)
{
	module_put(module);
}

int kvm_glue_mutex_lock_killable(void *mutex)
{
	return mutex_lock_killable((struct mutex *)mutex);
}

int kvm_glue_xfer_to_guest_mode_handle_work(void)
{
	if (!__xfer_to_guest_mode_work_pending())
		return 0;
	return xfer_to_guest_mode_handle_work();
}

int kvm_glue_xfer_to_guest_mode_work_pending(void)
{
	xfer_to_guest_mode_prepare();
	return xfer_to_guest_mode_work_pending();
}

void kvm_glue_guest_timing_enter_irqoff(void)
{
	guest_timing_enter_irqoff();
}

void kvm_glue_guest_timing_exit_irqoff(void)
{
	guest_timing_exit_irqoff();
}

/* noinstr, as svm_vcpu_enter_exit(): RCU is not watching between these two. */
noinstr void kvm_glue_guest_state_enter_irqoff(void)
{
	guest_state_enter_irqoff();
}
EXPORT_SYMBOL_GPL(kvm_glue_guest_state_enter_irqoff);

noinstr void kvm_glue_guest_state_exit_irqoff(void)
{
	guest_state_exit_irqoff();
}
EXPORT_SYMBOL_GPL(kvm_glue_guest_state_exit_irqoff);

void kvm_glue_cond_resched(void)
{
	cond_resched();
}

unsigned long long kvm_glue_task_size_max(void)
{
	return TASK_SIZE_MAX;
}

unsigned int kvm_glue_tsc_khz(void)
{
	return tsc_khz;
}

void kvm_glue_irq_disable(void)
{
	local_irq_disable();
}

void kvm_glue_irq_enable(void)
{
	local_irq_enable();
}

void kvm_glue_preempt_disable(void)
{
	preempt_disable();
}

void kvm_glue_preempt_enable(void)
{
	preempt_enable();
}

int kvm_glue_eventfd_ctx_fdget(int fd, void **ctx)
{
	struct eventfd_ctx *e = eventfd_ctx_fdget(fd);

	if (IS_ERR(e))
		return PTR_ERR(e);
	*ctx = e;
	return 0;
}

void kvm_glue_eventfd_ctx_put(void *ctx)
{
	eventfd_ctx_put(ctx);
}

void kvm_glue_eventfd_signal(void *ctx)
{
	eventfd_signal(ctx);
}

/* An irqfd's hook on its eventfd (upstream struct kvm_kernel_irqfd's wait, pt and
 * inject): a priority waiter that consumes the count and injects from a work item,
 * in process context, through @inject_fn. */
struct kvm_glue_irqfd {
	wait_queue_entry_t wait;
	poll_table pt;
	struct eventfd_ctx *eventfd;
	struct work_struct inject;
	void (*inject_fn)(void *owner);
	void *owner;
	int ret;
};

static void kvm_glue_irqfd_inject(struct work_struct *work)
{
	struct kvm_glue_irqfd *p = container_of(work, struct kvm_glue_irqfd, inject);

	p->inject_fn(p->owner);
}

/* irqfd_wakeup(), with the wait-queue lock held and interrupts off. A hang-up is
 * left for the owner's deassign or the VM's release, which hold the eventfd. */
static int kvm_glue_irqfd_wakeup(wait_queue_entry_t *wait, unsigned int mode, int sync,
				 void *key)
{
	struct kvm_glue_irqfd *p = container_of(wait, struct kvm_glue_irqfd, wait);
	u64 cnt;

	if (!(key_to_poll(key) & EPOLLIN))
		return 0;
	eventfd_ctx_do_read(p->eventfd, &cnt);
	schedule_work(&p->inject);
	return 1;
}

/* kvm_irqfd_register(): only one irqfd, in any VM, per eventfd. */
static void kvm_glue_irqfd_register(struct file *file, wait_queue_head_t *wqh,
				    poll_table *pt)
{
	struct kvm_glue_irqfd *p = container_of(pt, struct kvm_glue_irqfd, pt);

	init_waitqueue_func_entry(&p->wait, kvm_glue_irqfd_wakeup);
	p->ret = add_wait_queue_priority_exclusive(wqh, &p->wait);
}

int kvm_glue_irqfd_new(int fd, void (*inject_fn)(void *owner), void *owner, void **out,
		       void **ctx)
{
	struct kvm_glue_irqfd *p;
	struct eventfd_ctx *e;
	__poll_t events;
	CLASS(fd, f)(fd);

	if (fd_empty(f))
		return -EBADF;
	e = eventfd_ctx_fileget(fd_file(f));
	if (IS_ERR(e))
		return PTR_ERR(e);
	p = kzalloc(sizeof(*p), GFP_KERNEL_ACCOUNT);
	if (!p) {
		eventfd_ctx_put(e);
		return -ENOMEM;
	}
	p->eventfd = e;
	p->inject_fn = inject_fn;
	p->owner = owner;
	INIT_WORK(&p->inject, kvm_glue_irqfd_inject);
	init_poll_funcptr(&p->pt, kvm_glue_irqfd_register);
	events = vfs_poll(fd_file(f), &p->pt);
	if (p->ret) {
		int ret = p->ret;

		eventfd_ctx_put(e);
		kfree(p);
		return ret;
	}
	/* An event signalled before the irqfd existed is injected now. */
	if (events & EPOLLIN)
		schedule_work(&p->inject);
	*out = p;
	*ctx = e;
	return 0;
}

/* irqfd_shutdown(): off the wait queue, no injection running or to come. */
void kvm_glue_irqfd_free(void *irqfd)
{
	struct kvm_glue_irqfd *p = irqfd;
	u64 cnt;

	eventfd_ctx_remove_wait_queue(p->eventfd, &p->wait, &cnt);
	flush_work(&p->inject);
	eventfd_ctx_put(p->eventfd);
	kfree(p);
}

struct kvm_glue_pit_timer {
	struct hrtimer timer;
	struct work_struct expired;
	u64 period;
	bool periodic;
	void (*fired)(void *owner);
	void (*expired_fn)(void *owner);
	void *owner;
};

static void kvm_glue_pit_expired(struct work_struct *work)
{
	struct kvm_glue_pit_timer *t = container_of(work, struct kvm_glue_pit_timer, expired);

	t->expired_fn(t->owner);
}

/* pit_timer_fn(). */
static enum hrtimer_restart kvm_glue_pit_timer_fn(struct hrtimer *h)
{
	struct kvm_glue_pit_timer *t = container_of(h, struct kvm_glue_pit_timer, timer);

	t->fired(t->owner);
	schedule_work(&t->expired);
	if (!READ_ONCE(t->periodic))
		return HRTIMER_NORESTART;
	hrtimer_add_expires_ns(h, READ_ONCE(t->period));
	return HRTIMER_RESTART;
}

void *kvm_glue_pit_timer_new(void (*fired)(void *owner), void (*expired)(void *owner),
			     void *owner)
{
	struct kvm_glue_pit_timer *t = kzalloc(sizeof(*t), GFP_KERNEL_ACCOUNT);

	if (!t)
		return NULL;
	hrtimer_setup(&t->timer, kvm_glue_pit_timer_fn, CLOCK_MONOTONIC, HRTIMER_MODE_ABS);
	INIT_WORK(&t->expired, kvm_glue_pit_expired);
	t->fired = fired;
	t->expired_fn = expired;
	t->owner = owner;
	return t;
}

void kvm_glue_pit_timer_stop(void *p)
{
	struct kvm_glue_pit_timer *t = p;

	hrtimer_cancel(&t->timer);
	flush_work(&t->expired);
}

void kvm_glue_pit_timer_start(void *p, unsigned long long first_ns,
			      unsigned long long period_ns, int periodic)
{
	struct kvm_glue_pit_timer *t = p;

	kvm_glue_pit_timer_stop(t);
	WRITE_ONCE(t->period, period_ns);
	WRITE_ONCE(t->periodic, periodic);
	hrtimer_start(&t->timer, ktime_add_ns(ktime_get(), first_ns), HRTIMER_MODE_ABS);
}

void kvm_glue_pit_timer_queue(void *p)
{
	struct kvm_glue_pit_timer *t = p;

	schedule_work(&t->expired);
}

void kvm_glue_pit_timer_free(void *p)
{
	struct kvm_glue_pit_timer *t = p;

	if (!t)
		return;
	/* The work may re-arm nothing, but the timer may queue the work: timer first. */
	hrtimer_cancel(&t->timer);
	cancel_work_sync(&t->expired);
	kfree(t);
}

static DEFINE_PER_CPU(const void *, kvm_glue_last_vcpu);

struct kvm_glue_preempt {
	struct preempt_notifier pn;
	const void *vcpu;
};

static void kvm_glue_sched_in(struct preempt_notifier *pn, int cpu)
{
	kvm_rs_sched_in(container_of(pn, struct kvm_glue_preempt, pn)->vcpu, cpu);
}

static void kvm_glue_sched_out(struct preempt_notifier *pn, struct task_struct *next)
{
	kvm_rs_sched_out(container_of(pn, struct kvm_glue_preempt, pn)->vcpu);
}

static struct preempt_ops kvm_glue_preempt_ops = {
	.sched_in = kvm_glue_sched_in,
	.sched_out = kvm_glue_sched_out,
};

void *kvm_glue_preempt_new(void)
{
	struct kvm_glue_preempt *p = kzalloc(sizeof(*p), GFP_KERNEL_ACCOUNT);

	if (!p)
		return NULL;
	preempt_notifier_init(&p->pn, &kvm_glue_preempt_ops);
	preempt_notifier_inc();
	return p;
}

void kvm_glue_preempt_free(void *pn)
{
	struct kvm_glue_preempt *p = pn;
	int cpu;

	if (!p)
		return;
	/* As kvm_arch_vcpu_destroy(): a new vCPU at this address still gets its IBPB. */
	if (p->vcpu)
		for_each_possible_cpu(cpu)
			cmpxchg(per_cpu_ptr(&kvm_glue_last_vcpu, cpu), p->vcpu, NULL);
	preempt_notifier_dec();
	kfree(p);
}

void kvm_glue_vcpu_load(void *pn, const void *vcpu)
{
	struct kvm_glue_preempt *p = pn;
	int cpu = get_cpu();

	p->vcpu = vcpu;
	preempt_notifier_register(&p->pn);
	kvm_rs_sched_in(vcpu, cpu);
	put_cpu();
}

void kvm_glue_vcpu_put(void *pn)
{
	struct kvm_glue_preempt *p = pn;

	preempt_disable();
	kvm_rs_sched_out(p->vcpu);
	preempt_notifier_unregister(&p->pn);
	preempt_enable();
}

void kvm_glue_switch_vcpu_ibpb(const void *vcpu)
{
	if (vcpu == __this_cpu_read(kvm_glue_last_vcpu))
		return;
	if (static_branch_likely(&switch_vcpu_ibpb))
		indirect_branch_prediction_barrier();
	__this_cpu_write(kvm_glue_last_vcpu, vcpu);
}

struct kvm_glue_waiter {
	struct hrtimer timer;
	wait_queue_head_t wq;
	atomic_t pending;
	/* The timer fired since the vCPU last looked: only then is the clock read. */
	atomic_t fired;
	unsigned int guest_cpu;
};

void kvm_glue_waiter_poke(void *p)
{
	struct kvm_glue_waiter *w = p;
	unsigned int cpu;

	atomic_set(&w->pending, 1);
	/* Pairs with the vCPU publishing guest mode before it checks pending. */
	smp_mb__after_atomic();
	cpu = READ_ONCE(w->guest_cpu);
	if (cpu) {
		/* On its own CPU the vCPU is not in the guest while this runs. */
		if (cpu - 1 != get_cpu())
			smp_send_reschedule(cpu - 1);
		put_cpu();
	}
	wake_up_interruptible(&w->wq);
}

static enum hrtimer_restart kvm_glue_waiter_fire(struct hrtimer *t)
{
	struct kvm_glue_waiter *w = container_of(t, struct kvm_glue_waiter, timer);

	atomic_set(&w->fired, 1);
	kvm_glue_waiter_poke(w);
	return HRTIMER_NORESTART;
}

void kvm_glue_waiter_set_cpu(void *p, unsigned int cpu_plus_one)
{
	struct kvm_glue_waiter *w = p;

	WRITE_ONCE(w->guest_cpu, cpu_plus_one);
	/* Pairs with kvm_glue_waiter_poke(): publish before reading pending. */
	smp_mb();
}

unsigned int kvm_glue_waiter_cpu(void *p)
{
	struct kvm_glue_waiter *w = p;

	return READ_ONCE(w->guest_cpu);
}

void *kvm_glue_waiter_new(void)
{
	struct kvm_glue_waiter *w = kzalloc(sizeof(*w), GFP_KERNEL_ACCOUNT);

	if (!w)
		return NULL;
	hrtimer_setup(&w->timer, kvm_glue_waiter_fire, CLOCK_MONOTONIC, HRTIMER_MODE_ABS);
	init_waitqueue_head(&w->wq);
	return w;
}

void kvm_glue_waiter_free(void *p)
{
	struct kvm_glue_waiter *w = p;

	if (!w)
		return;
	hrtimer_cancel(&w->timer);
	kfree(w);
}

void kvm_glue_waiter_arm(void *p, unsigned long long ns)
{
	struct kvm_glue_waiter *w = p;

	if (!ns)
		hrtimer_cancel(&w->timer);
	else
		hrtimer_start(&w->timer, ns_to_ktime(ns), HRTIMER_MODE_ABS);
}

int kvm_glue_waiter_take(void *p)
{
	struct kvm_glue_waiter *w = p;

	return atomic_xchg(&w->pending, 0);
}

int kvm_glue_waiter_take_fired(void *p)
{
	struct kvm_glue_waiter *w = p;

	return atomic_xchg(&w->fired, 0);
}

int kvm_glue_waiter_pending(void *p)
{
	struct kvm_glue_waiter *w = p;

	return atomic_read(&w->pending);
}

int kvm_glue_waiter_block(void *p)
{
	struct kvm_glue_waiter *w = p;

	/* kvm_vcpu_block()'s "waited": whether the task slept at all. */
	if (atomic_read(&w->pending) || signal_pending(current))
		return 0;
	wait_event_interruptible(w->wq, atomic_read(&w->pending));
	return 1;
}

/* kvm_vcpu_check_block() for a halted vCPU: poked, or a signal to handle. */
int kvm_glue_waiter_check_block(void *p)
{
	struct kvm_glue_waiter *w = p;

	return atomic_read(&w->pending) || signal_pending(current);
}

unsigned long long kvm_glue_ktime_ns(void)
{
	return ktime_get_ns();
}

unsigned long long kvm_glue_rdtsc(void)
{
	return rdtsc();
}
EXPORT_SYMBOL_GPL(kvm_glue_rdtsc);

unsigned long long kvm_glue_kvmclock_base_ns(void)
{
	return ktime_to_ns(ktime_add(ktime_get_raw(), ktime_mono_to_any(0, TK_OFFS_BOOT)));
}

unsigned long long kvm_glue_ktime_real_ns(void)
{
	return ktime_get_real_ns();
}

int kvm_glue_clock_snapshot(unsigned long long *realtime_ns, unsigned long long *base_ns,
			    unsigned long long *tsc)
{
	struct system_time_snapshot snap;

	ktime_get_snapshot_id(CLOCK_REALTIME, &snap);
	*realtime_ns = ktime_to_ns(snap.systime);
	*base_ns = ktime_to_ns(ktime_add(snap.monoraw, ktime_mono_to_any(0, TK_OFFS_BOOT)));
	*tsc = snap.cycles;
	return snap.valid && snap.cs_id == CSID_X86_TSC && !check_tsc_unstable();
}

int kvm_glue_check_tsc_unstable(void)
{
	return check_tsc_unstable();
}

static void kvm_glue_kick_nop(void *unused)
{
}

void kvm_glue_kick_cpu_wait(unsigned int cpu)
{
	smp_call_function_single(cpu, kvm_glue_kick_nop, NULL, 1);
}

struct kvm_glue_mn {
	struct mmu_notifier mn;
	void *vm;
};

static int kvm_glue_mn_start(struct mmu_notifier *mn, const struct mmu_notifier_range *range)
{
	struct kvm_glue_mn *g = container_of(mn, struct kvm_glue_mn, mn);

	return kvm_rs_mn_invalidate_start(g->vm, range->start, range->end,
					  mmu_notifier_range_blockable(range));
}

static void kvm_glue_mn_end(struct mmu_notifier *mn, const struct mmu_notifier_range *range)
{
	struct kvm_glue_mn *g = container_of(mn, struct kvm_glue_mn, mn);

	kvm_rs_mn_invalidate_end(g->vm);
}

static void kvm_glue_mn_release(struct mmu_notifier *mn, struct mm_struct *mm)
{
	struct kvm_glue_mn *g = container_of(mn, struct kvm_glue_mn, mn);

	kvm_rs_mn_release(g->vm);
}

static const struct mmu_notifier_ops kvm_glue_mn_ops = {
	.invalidate_range_start = kvm_glue_mn_start,
	.invalidate_range_end = kvm_glue_mn_end,
	.release = kvm_glue_mn_release,
};

void *kvm_glue_mn_register(void *vm)
{
	struct kvm_glue_mn *g = kzalloc(sizeof(*g), GFP_KERNEL_ACCOUNT);

	if (!g)
		return NULL;
	g->vm = vm;
	g->mn.ops = &kvm_glue_mn_ops;
	if (mmu_notifier_register(&g->mn, current->mm)) {
		kfree(g);
		return NULL;
	}
	return g;
}

void kvm_glue_mn_unregister(void *p)
{
	struct kvm_glue_mn *g = p;

	mmu_notifier_unregister(&g->mn, g->mn.mm);
	kfree(g);
}


int kvm_glue_pin_user_page(unsigned long long hva, int write, unsigned long long *phys)
{
	struct page *page;
	/*
	 * Long-term: the page stays pinned while the guest maps it, so GUP first
	 * migrates it out of movable and CMA memory, as for any long-lived pin.
	 */
	int r = pin_user_pages_fast(hva, 1, FOLL_LONGTERM | (write ? FOLL_WRITE : 0), &page);

	if (r != 1)
		return r < 0 ? r : -EFAULT;
	*phys = page_to_phys(page);
	return 0;
}

void kvm_glue_unpin_phys(unsigned long long phys, int dirty)
{
	struct page *page = pfn_to_page(phys >> PAGE_SHIFT);

	/*
	 * Called from the MMU notifier too, which must not take the folio lock:
	 * marked dirty without it, as upstream's kvm_set_page_dirty().
	 */
	if (dirty)
		SetPageDirty(page);
	unpin_user_page(page);
}

void *kvm_glue_phys_to_virt(unsigned long long phys)
{
	return phys_to_virt(phys);
}

int kvm_glue_pgtable_l5_enabled(void)
{
	return pgtable_l5_enabled();
}

void *kvm_glue_alloc_pages_exact(unsigned long size)
{
	return alloc_pages_exact(size, GFP_KERNEL | __GFP_ZERO);
}
EXPORT_SYMBOL_GPL(kvm_glue_alloc_pages_exact);

void kvm_glue_free_pages_exact(void *p, unsigned long size)
{
	free_pages_exact(p, size);
}
EXPORT_SYMBOL_GPL(kvm_glue_free_pages_exact);

unsigned long long kvm_glue_virt_to_phys(void *p)
{
	return virt_to_phys(p);
}
EXPORT_SYMBOL_GPL(kvm_glue_virt_to_phys);

void *kvm_glue_virt_to_page(void *p)
{
	return virt_to_page(p);
}

void *kvm_glue_fpu_alloc(void)
{
	struct fpu_guest *gfpu = kzalloc(sizeof(*gfpu), GFP_KERNEL_ACCOUNT);

	if (gfpu && !fpu_alloc_guest_fpstate(gfpu)) {
		kfree(gfpu);
		return NULL;
	}
	return gfpu;
}

unsigned int kvm_glue_fpu_uabi_size(void *gfpu)
{
	return ((struct fpu_guest *)gfpu)->uabi_size;
}

/* The features the guest FPU state holds (what the host saves and restores). */
u64 kvm_glue_fpu_xfeatures(void *gfpu)
{
	return ((struct fpu_guest *)gfpu)->xfeatures;
}

/* The legacy region KVM_GET/SET_FPU access in place, as upstream (512 bytes). */
void *kvm_glue_fpu_fxsave(void *gfpu)
{
	return &((struct fpu_guest *)gfpu)->fpstate->regs.fxsave;
}

/* KVM_GET_XSAVE/XSAVE2: the state of the features in @mask (the guest's). */
void kvm_glue_fpu_get_xsave(void *gfpu, void *buf, unsigned int size, u64 mask)
{
	fpu_copy_guest_fpstate_to_uabi(gfpu, buf, size, mask, 0);
}

/* KVM_SET_XSAVE (kvm_vcpu_ioctl_x86_set_xsave()): features outside @mask are -EINVAL. */
int kvm_glue_fpu_set_xsave(void *gfpu, void *buf, u64 mask)
{
	struct fpu_guest *g = gfpu;
	union fpregs_state *xstate = buf;
	u32 pkru = 0;

	xstate->xsave.header.xfeatures &= ~g->fpstate->xfd;
	return fpu_copy_uabi_to_guest_fpstate(g, buf, mask, &pkru);
}

/*
 * Guest DR0-3 in the hardware around an entry (upstream vcpu_enter_guest()):
 * host breakpoints off first, the host's back after the exit (#VMEXIT leaves
 * DR7 with all breakpoints disabled). Interrupts are off.
 */
void kvm_glue_load_guest_db(const u64 *db)
{
	set_debugreg(DR7_FIXED_1, 7);
	set_debugreg(db[0], 0);
	set_debugreg(db[1], 1);
	set_debugreg(db[2], 2);
	set_debugreg(db[3], 3);
}

void kvm_glue_save_guest_db(u64 *db)
{
	get_debugreg(db[0], 0);
	get_debugreg(db[1], 1);
	get_debugreg(db[2], 2);
	get_debugreg(db[3], 3);
}

void kvm_glue_restore_host_db(void)
{
	if (hw_breakpoint_active())
		hw_breakpoint_restore();
}

/* The host's XCR0 (0 without XSAVE), as upstream's kvm_host.xcr0. */
u64 kvm_glue_host_xcr0(void)
{
	return boot_cpu_has(X86_FEATURE_OSXSAVE) ? xgetbv(XCR_XFEATURE_ENABLED_MASK) : 0;
}

/* Loads XCR0 around guest entry (kvm_load_xfeatures()); interrupts are off. */
void kvm_glue_xsetbv(u64 xcr0)
{
	xsetbv(XCR_XFEATURE_ENABLED_MASK, xcr0);
}

void kvm_glue_fpu_free(void *gfpu)
{
	if (gfpu)
		fpu_free_guest_fpstate(gfpu);
	kfree(gfpu);
}

void kvm_glue_fpu_load(void *gfpu, int enter)
{
	fpu_swap_kvm_fpstate(gfpu, enter);
}

void kvm_glue_fpu_prepare_entry(void)
{
	if (test_thread_flag(TIF_NEED_FPU_LOAD))
		switch_fpu_return();
}

void *kvm_glue_mm_grab_current(void)
{
	mmgrab(current->mm);
	return current->mm;
}

void kvm_glue_mm_drop(void *mm)
{
	mmdrop(mm);
}

int kvm_glue_mm_is_current(const void *mm)
{
	return current->mm == mm;
}

unsigned int kvm_glue_num_online_cpus(void)
{
	return num_online_cpus();
}

void kvm_glue_on_each_cpu(void (*fn)(void *data), void *data)
{
	on_each_cpu(fn, data, 1);
}
EXPORT_SYMBOL_GPL(kvm_glue_on_each_cpu);

void kvm_glue_cpuid(unsigned int leaf, unsigned int subleaf, unsigned int regs[4])
{
	cpuid_count(leaf, subleaf, &regs[0], &regs[1], &regs[2], &regs[3]);
}
EXPORT_SYMBOL_GPL(kvm_glue_cpuid);

int kvm_glue_rdmsr_safe(unsigned int msr, unsigned long long *val)
{
	u64 v;
	int r = rdmsrq_safe(msr, &v);

	*val = r ? 0 : v;
	return r;
}
EXPORT_SYMBOL_GPL(kvm_glue_rdmsr_safe);

int kvm_glue_wrmsr_safe(unsigned int msr, unsigned long long val)
{
	return wrmsrq_safe(msr, val);
}
EXPORT_SYMBOL_GPL(kvm_glue_wrmsr_safe);

/* The ARCH_CAPABILITIES bits KVM can let a guest see (upstream x86.c). */
#define KVM_SUPPORTED_ARCH_CAP \
	(ARCH_CAP_RDCL_NO | ARCH_CAP_IBRS_ALL | ARCH_CAP_RSBA | \
	 ARCH_CAP_SKIP_VMENTRY_L1DFLUSH | ARCH_CAP_SSB_NO | ARCH_CAP_MDS_NO | \
	 ARCH_CAP_PSCHANGE_MC_NO | ARCH_CAP_TSX_CTRL_MSR | ARCH_CAP_TAA_NO | \
	 ARCH_CAP_SBDR_SSDP_NO | ARCH_CAP_FBSDP_NO | ARCH_CAP_PSDP_NO | \
	 ARCH_CAP_FB_CLEAR | ARCH_CAP_RRSBA | ARCH_CAP_PBRSB_NO | ARCH_CAP_GDS_NO | \
	 ARCH_CAP_RFDS_NO | ARCH_CAP_RFDS_CLEAR | ARCH_CAP_BHI_NO | ARCH_CAP_ITS_NO)

/*
 * kvm_get_arch_capabilities(): the host's ARCH_CAPABILITIES as far as KVM
 * passes them on, plus the "not affected" bits for the bugs the host kernel
 * found it does not have. Kept in C with upstream's body: it reads the
 * kernel's bug bits and mitigation state, which Rust cannot.
 */
unsigned long long kvm_glue_arch_capabilities(void)
{
	u64 host = 0;
	u64 data;

	if (boot_cpu_has(X86_FEATURE_ARCH_CAPABILITIES))
		rdmsrq_safe(MSR_IA32_ARCH_CAPABILITIES, &host);
	data = host & KVM_SUPPORTED_ARCH_CAP;
	data |= ARCH_CAP_PSCHANGE_MC_NO;
	if (l1tf_vmx_mitigation != VMENTER_L1D_FLUSH_NEVER)
		data |= ARCH_CAP_SKIP_VMENTRY_L1DFLUSH;
	if (!boot_cpu_has_bug(X86_BUG_CPU_MELTDOWN))
		data |= ARCH_CAP_RDCL_NO;
	if (!boot_cpu_has_bug(X86_BUG_SPEC_STORE_BYPASS))
		data |= ARCH_CAP_SSB_NO;
	if (!boot_cpu_has_bug(X86_BUG_MDS))
		data |= ARCH_CAP_MDS_NO;
	if (!boot_cpu_has_bug(X86_BUG_RFDS))
		data |= ARCH_CAP_RFDS_NO;
	if (!boot_cpu_has_bug(X86_BUG_ITS))
		data |= ARCH_CAP_ITS_NO;
	if (!boot_cpu_has(X86_FEATURE_RTM))
		data &= ~ARCH_CAP_TAA_NO;
	else if (!boot_cpu_has_bug(X86_BUG_TAA))
		data |= ARCH_CAP_TAA_NO;
	if (!boot_cpu_has_bug(X86_BUG_GDS) || gds_ucode_mitigated())
		data |= ARCH_CAP_GDS_NO;
	return data;
}
EXPORT_SYMBOL_GPL(kvm_glue_arch_capabilities);

int kvm_glue_sched_info_on(void)
{
	return sched_info_on();
}
EXPORT_SYMBOL_GPL(kvm_glue_sched_info_on);

/* The time the current task waited on a run queue (KVM's steal time source). */
unsigned long long kvm_glue_run_delay(void)
{
#ifdef CONFIG_SCHED_INFO
	return current->sched_info.run_delay;
#else
	return 0;
#endif
}
EXPORT_SYMBOL_GPL(kvm_glue_run_delay);

int kvm_glue_lfence_rdtsc(void)
{
	return cpu_feature_enabled(X86_FEATURE_LFENCE_RDTSC);
}
EXPORT_SYMBOL_GPL(kvm_glue_lfence_rdtsc);

static int glue_virt_feature(enum kvm_glue_virt virt)
{
	return virt == KVM_GLUE_VIRT_SVM ? X86_FEATURE_SVM : X86_FEATURE_VMX;
}

int kvm_glue_virt_get_ref(enum kvm_glue_virt virt)
{
	return x86_virt_get_ref(glue_virt_feature(virt));
}
EXPORT_SYMBOL_GPL(kvm_glue_virt_get_ref);

void kvm_glue_virt_put_ref(enum kvm_glue_virt virt)
{
	x86_virt_put_ref(glue_virt_feature(virt));
}
EXPORT_SYMBOL_GPL(kvm_glue_virt_put_ref);

unsigned long long kvm_glue_page_to_phys(void *page)
{
	return page_to_phys((struct page *)page);
}
EXPORT_SYMBOL_GPL(kvm_glue_page_to_phys);

/* Implemented in Rust (src/vendor.rs); exported here because only C can. */
EXPORT_SYMBOL_GPL(kvm_rs_vendor_register);
EXPORT_SYMBOL_GPL(kvm_rs_vendor_unregister);
