/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * VMRUN for kvm-amd.ko, after upstream's __svm_vcpu_run (arch/x86/kvm/svm/vmenter.S),
 * without SPEC_CTRL switching (kvm-rs does not expose it to guests yet).
 */
#include <linux/linkage.h>
#include <asm/asm.h>
#include <asm/frame.h>
#include <asm/nospec-branch.h>

/* struct GuestRegs (arch/x86/kvm_x86_ops.rs): gpr[16] in hardware order. */
#define R_RCX (1 * 8)
#define R_RDX (2 * 8)
#define R_RBX (3 * 8)
#define R_RBP (5 * 8)
#define R_RSI (6 * 8)
#define R_RDI (7 * 8)
#define R_R8  (8 * 8)
#define R_R9  (9 * 8)
#define R_R10 (10 * 8)
#define R_R11 (11 * 8)
#define R_R12 (12 * 8)
#define R_R13 (13 * 8)
#define R_R14 (14 * 8)
#define R_R15 (15 * 8)

.section .noinstr.text, "ax"

/*
 * u32 __kvm_rs_svm_vcpu_run(u64 vmcb_pa, struct GuestRegs *regs, u64 host_save_pa)
 *
 * Host state that VMRUN does not switch (FS, GS, TR, LDTR, KernelGSBase,
 * STAR/LSTAR/CSTAR/SFMASK, SYSENTER_*) goes through VMSAVE to the per-CPU area and
 * back with VMLOAD; the guest's through its own VMCB.
 * Called with GIF clear and RFLAGS.IF set (by the caller, apart from VMRUN, so that
 * VMRUN is not in an STI shadow): a host interrupt arriving in the guest is an INTR
 * #VMEXIT (V_INTR_MASKING with the host's IF set), taken by the caller once it has
 * cleared IF and set GIF again and then enables interrupts.
 *
 * Returns 0, or 1 if VMSAVE, VMLOAD or VMRUN faulted (#GP, e.g. SVM disabled under
 * us): the exception table skips the instruction, as upstream's does for VMRUN
 * while rebooting, and the caller reports a failed entry instead of an oops.
 */
SYM_FUNC_START(__kvm_rs_svm_vcpu_run)
	push %rbp
	mov  %rsp, %rbp
	push %r15
	push %r14
	push %r13
	push %r12
	push %rbx
	push $0			/* 24(%rsp): fault flag, the return value */
	push %rdx		/* 16(%rsp): host save area */
	push %rsi		/*  8(%rsp): regs */
	push %rdi		/*  0(%rsp): vmcb */

	mov %rdx, %rax
901:	vmsave %rax
911:	mov %rdi, %rax
902:	vmload %rax
912:

	mov R_RCX(%rsi), %rcx
	mov R_RDX(%rsi), %rdx
	mov R_RBX(%rsi), %rbx
	mov R_RBP(%rsi), %rbp
	mov R_RDI(%rsi), %rdi
	mov R_R8(%rsi),  %r8
	mov R_R9(%rsi),  %r9
	mov R_R10(%rsi), %r10
	mov R_R11(%rsi), %r11
	mov R_R12(%rsi), %r12
	mov R_R13(%rsi), %r13
	mov R_R14(%rsi), %r14
	mov R_R15(%rsi), %r15
	mov R_RSI(%rsi), %rsi

903:	vmrun %rax
913:
	/* RAX and RSP are the host's again (restored by #VMEXIT). */
	mov 8(%rsp), %rax
	mov %rcx, R_RCX(%rax)
	mov %rdx, R_RDX(%rax)
	mov %rbx, R_RBX(%rax)
	mov %rbp, R_RBP(%rax)
	mov %rsi, R_RSI(%rax)
	mov %rdi, R_RDI(%rax)
	mov %r8,  R_R8(%rax)
	mov %r9,  R_R9(%rax)
	mov %r10, R_R10(%rax)
	mov %r11, R_R11(%rax)
	mov %r12, R_R12(%rax)
	mov %r13, R_R13(%rax)
	mov %r14, R_R14(%rax)
	mov %r15, R_R15(%rax)

	mov 0(%rsp), %rax
904:	vmsave %rax
914:	mov 16(%rsp), %rax
905:	vmload %rax
915:

	/* Stuff the RSB before any RET, as upstream. */
	FILL_RETURN_BUFFER %rax, RSB_CLEAR_LOOPS, X86_FEATURE_RSB_VMEXIT

	/* No guest value may survive in a register (speculation). */
	xor %ecx, %ecx
	xor %edx, %edx
	xor %esi, %esi
	xor %edi, %edi
	xor %r8d, %r8d
	xor %r9d, %r9d
	xor %r10d, %r10d
	xor %r11d, %r11d

	add $24, %rsp
	pop %rax
	pop %rbx
	pop %r12
	pop %r13
	pop %r14
	pop %r15
	pop %rbp
	RET

	/* A faulting SVM instruction: note it and go on after it. */
921:	movq $1, 24(%rsp)
	jmp 911b
922:	movq $1, 24(%rsp)
	jmp 912b
923:	movq $1, 24(%rsp)
	jmp 913b
924:	movq $1, 24(%rsp)
	jmp 914b
925:	movq $1, 24(%rsp)
	jmp 915b

	_ASM_EXTABLE(901b, 921b)
	_ASM_EXTABLE(902b, 922b)
	_ASM_EXTABLE(903b, 923b)
	_ASM_EXTABLE(904b, 924b)
	_ASM_EXTABLE(905b, 925b)
SYM_FUNC_END(__kvm_rs_svm_vcpu_run)
