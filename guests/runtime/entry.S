/*
 * Guest runtime entry: from a boot protocol's 32-bit (or 64-bit) entry state
 * to C code in long mode at CPL0, plus the static descriptor tables, page
 * tables, interrupt stubs and the drop to CPL3.
 *
 * Code running at CPL0 is slow on some hosts (nested KVM backends emulate it
 * instruction by instruction), so everything that can be static data is:
 * the page tables and GDT are assembled here, not built by loops.
 */
#include "defs.h"

/* ------------------------------------------------------------------------ */
/* 32-bit entry: PVH and multiboot                                          */
/* ------------------------------------------------------------------------ */

	.section .text.entry32, "ax"
	.code32
	.globl pvh_start32, mb_start32
/*
 * PVH (the ELF note points here): flat 32-bit protected mode, paging off,
 * EBX = hvm_start_info. Multiboot (the ELF entry of multiboot images): the
 * same, with EAX = 0x2BADB002 and EBX = multiboot info. Separate entry
 * points because PVH leaves EAX undefined (it may well hold the multiboot
 * magic). No stack is guaranteed, so none is used until long mode.
 */
pvh_start32:
	cli
	cld
	movl	$BOOT_PVH, boot_protocol
	movl	%ebx, boot_info_ptr
	jmp	common32

mb_start32:
	cli
	cld
	movl	$BOOT_MULTIBOOT, boot_protocol
	movl	%ebx, boot_info_ptr
	jmp	common32

	.globl common32
/* Shared with the bzImage 32-bit entry: protected mode -> long mode. */
common32:
	lgdt	gdt_ptr			/* 32-bit form reads limit + low 4 bytes of base */
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
	orl	$(CR0_PG | CR0_PE), %eax
	movl	%eax, %cr0		/* now in compatibility mode */
	ljmp	$SEL_KCODE64, $start64

/* ------------------------------------------------------------------------ */
/* 64-bit common path                                                       */
/* ------------------------------------------------------------------------ */

	.text
	.code64
	.globl start64
start64:
	movl	$SEL_KDATA, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	xorl	%eax, %eax
	movl	%eax, %fs
	movl	%eax, %gs
	movq	$boot_stack_top, %rsp
	/* ELF loaders zero .bss for us; a bzImage payload is a flat binary,
	 * so for the Linux protocol the runtime has to do it. */
	cmpl	$BOOT_LINUX, boot_protocol(%rip)
	jne	1f
	movq	$__bss_start, %rdi
	movq	$__bss_end, %rcx
	subq	%rdi, %rcx
	shrq	$3, %rcx
	xorl	%eax, %eax
	rep stosq
1:	call	runtime_start		/* never returns */
2:	cli
	hlt
	jmp	2b

/* ------------------------------------------------------------------------ */
/* Drop to CPL3: enter_user(fn) -- never returns                            */
/* ------------------------------------------------------------------------ */

	.globl enter_user
enter_user:
	/* Keep the current IF so a guest can choose to take interrupts at
	 * CPL3; always IOPL 3 so user code can do port I/O. */
	pushfq
	popq	%rax
	andl	$0x200, %eax
	orl	$USER_RFLAGS, %eax
	/* fn starts as if called: [rsp] is a return address and rsp + 8 is
	 * 16-byte aligned, as the ABI has it at function entry */
	movq	$user_stack_top - 8, %rsi
	movq	$user_returned, %rdx
	movq	%rdx, (%rsi)
	pushq	$SEL_UDATA		/* ss */
	pushq	%rsi			/* rsp */
	pushq	%rax			/* rflags */
	pushq	$SEL_UCODE		/* cs */
	pushq	%rdi			/* rip */
	iretq

/* A user function that returns exits 0, like main returning 0. */
user_returned:
	xorl	%edi, %edi
	subq	$8, %rsp		/* realign for the call */
	call	exit

/* ------------------------------------------------------------------------ */
/* Interrupt and exception stubs                                            */
/* ------------------------------------------------------------------------ */

/*
 * One 16-byte stub per vector (the IDT setup relies on the stride). Each
 * pushes a dummy error code where the CPU pushes none, then the vector.
 */
	.p2align 4
	.globl isr_stubs
isr_stubs:
	.set vec, 0
	.rept 256
	.p2align 4
	.if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
	.else
	pushq	$0
	.endif
	pushq	$vec
	jmp	isr_common
	.set vec, vec + 1
	.endr

/*
 * Save only the caller-saved registers: the C dispatcher preserves the
 * rest. With the CPU frame, vector and error code that makes 16 quadwords,
 * so RSP stays 16-byte aligned for the call (the CPU aligns it on entry).
 */
isr_common:
	pushq	%rax
	pushq	%rcx
	pushq	%rdx
	pushq	%rsi
	pushq	%rdi
	pushq	%r8
	pushq	%r9
	pushq	%r10
	pushq	%r11
	cld				/* the C code may assume DF = 0 */
	movq	%rsp, %rdi
	call	isr_dispatch
	popq	%r11
	popq	%r10
	popq	%r9
	popq	%r8
	popq	%rdi
	popq	%rsi
	popq	%rdx
	popq	%rcx
	popq	%rax
	addq	$16, %rsp		/* vector and error code */
	iretq

/* ------------------------------------------------------------------------ */
/* Static data: GDT, TSS, page tables, stacks                               */
/* ------------------------------------------------------------------------ */

	.data
	.p2align 4
	.globl gdt, gdt_ptr
gdt:
	/* accessed bits preset so the CPU never writes the table */
	.quad	0			/* 0x00 null */
	.quad	0x00af9b000000ffff	/* 0x08 kernel code 64: P DPL0 code, L, G */
	.quad	0x00cf93000000ffff	/* 0x10 kernel data: P DPL0 data rw, D/B, G */
	.quad	0x00cf9b000000ffff	/* 0x18 kernel code 32: P DPL0 code, D, G */
	.quad	0x00cff3000000ffff	/* 0x20 user data (0x23): P DPL3 data rw */
	.quad	0x00affb000000ffff	/* 0x28 user code 64 (0x2b): P DPL3 code, L */
	.globl gdt_tss
gdt_tss:
	.quad	0, 0			/* 0x30 TSS, see runtime_start */
gdt_end:
	.if (gdt_end - gdt) != (GDT_ENTRIES * 8)
	.error "GDT size does not match GDT_ENTRIES"
	.endif

	.p2align 3
	.word	0, 0, 0			/* aligns the base below to 8 bytes */
gdt_ptr:
	.word	GDT_LIMIT
	.quad	gdt

	/* boot_protocol/boot_info_ptr live in .data, not .bss, because the
	 * bzImage path zeroes .bss after recording them. */
	.p2align 3
	.globl boot_protocol, boot_info_ptr
boot_info_ptr:
	.quad	0
boot_protocol:
	.long	0

/*
 * Identity map of the first 4 GiB with 2 MiB pages. Every entry is
 * Present | Writable | User so CPL3 code can touch all of memory (guest
 * test code, device MMIO and the LAPIC included). A guest that needs more
 * (memory) links further page directories into pdpt[4..].
 */
	.section .data.pagetables, "aw"
	.p2align 12
	.globl pml4, pdpt
pml4:
	.quad	pdpt + 0x7
	.fill	511, 8, 0
pdpt:
	.quad	pd + 0x0007, pd + 0x1007, pd + 0x2007, pd + 0x3007
	.fill	508, 8, 0
pd:
	.set addr, 0
	.rept 2048
	.quad	addr | 0x87		/* P | RW | US | PS (2 MiB page) */
	.set addr, addr + 0x200000
	.endr

	.section .bss
	.p2align 12
	.globl boot_stack_top, intr_stack_top, user_stack_top
boot_stack:
	.skip	BOOT_STACK_SIZE
boot_stack_top:
intr_stack:
	.skip	INTR_STACK_SIZE
intr_stack_top:
user_stack:
	.skip	USER_STACK_SIZE
user_stack_top:

/*
 * 64-bit TSS followed by an I/O permission bitmap that allows every port
 * (all zero bits, then the required 0xff byte). With IOPL 3 the bitmap is
 * not consulted, but some hypervisors don't keep a guest's IOPL for CPL3
 * (they emulate I/O after a #GP and check the bitmap instead), so port I/O
 * from CPL3 relies on the bitmap too. runtime_start fills in RSP0, the
 * bitmap offset and the final byte.
 */
	.p2align 4
	.globl tss
tss:
	.skip	TSS_SIZE
