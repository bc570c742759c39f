/*
 * Real-mode part ("setup") of hello-bzimage.bin: 1 boot sector + 1 setup
 * sector. mkbzimage.py writes the setup header fields (0x1f1..0x26b); this
 * file provides the code around them.
 *
 * Loaders that use the 64-bit or 32-bit entry never run this code. A loader
 * that follows the 16-bit protocol (QEMU's -kernel does) enters at
 * setup_seg+0x20:0, i.e. file offset 0x200, in real mode; the code below then
 * does what Linux's setup would do, minus everything optional: load a flat
 * GDT, enter protected mode and jump to code32_start with ESI = the boot
 * params (the loader's copy of this setup, which starts 0x200 before CS:0).
 *
 * Everything is addressed relative to `rm_base` (file offset 0x200 = CS:0)
 * so the object needs no relocations and objcopy -O binary is the image.
 */
	.code16
	.text
bootsect:
	/* Not a BIOS boot sector: stop if something boots it anyway. */
	cli
1:	hlt
	jmp	1b

	.org	0x200
rm_base:
	jmp	setup16			/* the header's "jump" field (0x200) */

	.org	0x270			/* past the setup header */
setup16:
	cli
	cld
	movw	%cs, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movzwl	%ax, %ebx
	shll	$4, %ebx		/* EBX = linear address of CS:0 */
	leal	-0x200(%ebx), %esi	/* ESI = struct boot_params */
	leal	(gdt - rm_base)(%ebx), %eax
	movl	%eax, (gdtr - rm_base + 2)
	lgdtl	(gdtr - rm_base)
	movl	(0x214 - 0x200), %eax	/* header field code32_start */
	movl	%eax, (farptr - rm_base)
	movl	%cr0, %eax
	orl	$1, %eax
	movl	%eax, %cr0
	/* Data segments can be loaded before CS changes; the far pointer is
	 * then read through CS, whose cached real-mode base still applies. */
	movw	$0x18, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	%ax, %fs
	movw	%ax, %gs
	xorl	%ebx, %ebx		/* the 32-bit protocol wants EBP, EDI, EBX zero */
	xorl	%ebp, %ebp
	xorl	%edi, %edi
	ljmpl	*%cs:(farptr - rm_base)

	.p2align 3
gdt:	/* the boot protocol's selectors: __BOOT_CS = 0x10, __BOOT_DS = 0x18 */
	.quad	0
	.quad	0
	.quad	0x00cf9b000000ffff	/* 0x10: flat 32-bit code */
	.quad	0x00cf93000000ffff	/* 0x18: flat data */
gdt_end:
gdtr:
	.word	gdt_end - gdt - 1
	.long	0			/* base, patched above */
farptr:
	.long	0			/* offset: code32_start */
	.word	0x10			/* selector */

	.org	0x400			/* setup = boot sector + 1 sector */
