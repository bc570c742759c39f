/*
 * PVH boot: an ELF note of type XEN_ELFNOTE_PHYS32_ENTRY (18), owner "Xen",
 * holding the physical address of the 32-bit entry point. The descriptor is
 * 8 bytes, as in 64-bit Linux; readers that take only 4 get the same value
 * (little endian, entry below 4 GiB).
 */
	.section .note.Xen, "a", @note
	.p2align 2
	.long	2f - 1f			/* namesz */
	.long	4f - 3f			/* descsz */
	.long	18			/* type: XEN_ELFNOTE_PHYS32_ENTRY */
1:	.asciz	"Xen"
2:	.p2align 2
3:	.quad	pvh_start32
4:	.p2align 2
