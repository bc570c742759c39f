/*
 * Entry points of a bzImage payload (Linux x86 boot protocol). The payload
 * is loaded at 0x100000 (code32_start / pref_address) and this section is
 * linked first, so:
 *   payload + 0x000: 32-bit entry (flat protected mode, paging off,
 *                    ESI = struct boot_params)
 *   payload + 0x200: 64-bit entry (long mode, identity-mapped paging,
 *                    RSI = struct boot_params)
 */
#include "defs.h"

	.section .head.text, "ax"
	.code32
	.globl startup_32
startup_32:
	cli
	cld
	movl	$BOOT_LINUX, boot_protocol
	movl	%esi, boot_info_ptr
	jmp	common32

	.org	0x200
	.code64
	.globl startup_64
startup_64:
	cli
	cld
	movl	$BOOT_LINUX, boot_protocol(%rip)
	movq	%rsi, boot_info_ptr(%rip)
	movq	$boot_stack_top, %rsp
	/* The loader's page tables may not allow CPL3 access: use ours
	 * (also an identity map, so this code keeps running). */
	movq	$pml4, %rax
	movq	%rax, %cr3
	lgdt	gdt_ptr(%rip)
	pushq	$SEL_KCODE64
	pushq	$start64
	lretq
