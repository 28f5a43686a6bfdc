// SPDX-License-Identifier: GPL-2.0-only
/*
 * kvm-amd's module parameters, visible in /sys/module/kvm_amd/parameters as
 * upstream's (the kernel crate has no sysfs-visible parameters). svm.rs reads them.
 */
#include <linux/moduleparam.h>

/*
 * Nested paging (upstream npt_enabled, "npt"). kvm-rs has no shadow MMU, so npt=0,
 * or a CPU without NPT, makes the module refuse to load instead of falling back.
 */
bool kvm_rs_svm_npt = true;
module_param_named(npt, kvm_rs_svm_npt, bool, 0444);

/*
 * AVIC (upstream "avic", default off). kvm-rs does not implement AVIC, so the
 * parameter reads N and avic=1 is refused at load rather than ignored.
 */
static bool kvm_rs_svm_avic;

static int avic_set(const char *val, const struct kernel_param *kp)
{
	bool on;
	int r = kstrtobool(val, &on);

	if (r)
		return r;
	if (on) {
		pr_err("kvm_amd: avic=1: AVIC is not implemented in kvm-rs\n");
		return -EINVAL;
	}
	return param_set_bool(val, kp);
}

static const struct kernel_param_ops avic_ops = {
	.set = avic_set,
	.get = param_get_bool,
};
module_param_cb(avic, &avic_ops, &kvm_rs_svm_avic, 0444);
