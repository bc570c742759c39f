/*
 * Multiboot (v1) header: must sit 4-byte aligned in the first 8 KiB of the
 * file. Flags: bit 0 = page-align modules, bit 1 = provide memory info.
 * No bit 16: the loader reads the ELF program headers for placement.
 * The loader enters mb_start32 (the ELF entry) with EAX = 0x2BADB002.
 */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003

	.section .multiboot, "a"
	.p2align 2
	.long	MB_MAGIC
	.long	MB_FLAGS
	.long	-(MB_MAGIC + MB_FLAGS)
