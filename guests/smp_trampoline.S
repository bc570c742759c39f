/*
 * AP start-up trampoline. smp.c copies [ap_trampoline, ap_trampoline_end)
 * to TRAMPOLINE_ADDR (0x8000) and sends SIPIs with vector 0x08, so each AP
 * starts here in real mode at CS:IP = 0x0800:0000.
 *
 * real mode -> 32-bit protected mode (the runtime's GDT, selector 0x18)
 * -> long mode with the runtime's page tables -> ap_start64 in the image.
 * Addresses inside the copy are TRAMPOLINE_ADDR + (label - ap_trampoline).
 */
#include "defs.h"
#include "smp.h"

#define REL(x) ((x) - ap_trampoline)

	.section .rodata
	.globl ap_trampoline, ap_trampoline_end
	.p2align 4
	.code16
ap_trampoline:
	cli
	cld
	movw	%cs, %ax
	movw	%ax, %ds
	lgdtl	REL(tramp_gdtr)
	movl	%cr0, %eax
	orl	$CR0_PE, %eax
	movl	%eax, %cr0
	ljmpl	$SEL_KCODE32, $(TRAMPOLINE_ADDR + REL(tramp32))

	.code32
tramp32:
	movl	$SEL_KDATA, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%cr4, %eax
	orl	$CR4_PAE, %eax
	movl	%eax, %cr4
	movl	$pml4, %eax
	movl	%eax, %cr3
	movl	$MSR_EFER, %ecx
	rdmsr
	orl	$EFER_LME, %eax
	wrmsr
	movl	%cr0, %eax
	orl	$CR0_PG, %eax
	movl	%eax, %cr0
	ljmp	$SEL_KCODE64, $ap_start64

	.p2align 3
tramp_gdtr:
	/* The runtime's GDT; real mode can only reach it through a 32-bit
	 * base (lgdtl), which it has: the image is below 16 MiB. */
	.word	GDT_LIMIT
	.long	gdt
ap_trampoline_end:

	.text
	.code64
/* Long mode, CPL0, no stack yet: pick one by APIC ID, then call C. */
ap_start64:
	movl	$SEL_KDATA, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	$1, %eax
	cpuid
	shrl	$24, %ebx		/* initial APIC ID */
	cmpl	$MAX_CPUS, %ebx
	jae	1f
	leaq	1(%rbx), %rax
	shlq	$AP_STACK_SHIFT, %rax
	addq	$ap_stacks, %rax
	movq	%rax, %rsp
	movl	%ebx, %edi
	call	ap_main			/* does not return */
1:	cli
	hlt
	jmp	1b
