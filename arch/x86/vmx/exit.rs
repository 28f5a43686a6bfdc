// SPDX-License-Identifier: GPL-2.0-only
//! VM-exit handling (upstream vmx_handle_exit() and its kvm_vmx_exit_handlers[]):
//! the exit reason decoded, each handler calling kvm.ko's helpers as SVM's do.

use super::kvm_x86_ops::{KvmCoreVcpu, Next};
use super::vcpu::NoVcpu;

/// vmx_handle_exit(): no VMX vCPU can exist yet, so no exit can reach here.
pub(crate) fn vmx_handle_exit(v: &mut NoVcpu, _core: &mut KvmCoreVcpu) -> Next {
    match *v {}
}
