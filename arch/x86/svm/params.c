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
