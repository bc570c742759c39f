/*
 * Constants shared by the runtime's assembly and C code.
 *
 * GDT layout (selectors):
 *   0x00 null
 *   0x08 kernel code, 64-bit          (CPL0 C code runs here)
 *   0x10 kernel data
 *   0x18 kernel code, 32-bit          (only the SMP trampoline uses it)
 *   0x23 user data  (index 4, DPL3)
 *   0x2b user code  (index 5, DPL3, 64-bit)
 *   0x30 TSS (16-byte descriptor, filled at run time: its base is split
 *        across fields, which no static relocation can express)
 */
#ifndef GUEST_DEFS_H
#define GUEST_DEFS_H

#define SEL_KCODE64 0x08
#define SEL_KDATA 0x10
#define SEL_KCODE32 0x18
#define SEL_UDATA 0x23
#define SEL_UCODE 0x2b
#define SEL_TSS 0x30
#define GDT_ENTRIES 8
#define GDT_LIMIT (GDT_ENTRIES * 8 - 1)

/* Which boot protocol entered the guest (value of `boot_protocol`). */
#define BOOT_PVH 1       /* 32-bit entry, EBX = struct hvm_start_info */
#define BOOT_MULTIBOOT 2 /* 32-bit entry, EAX = 0x2BADB002, EBX = multiboot info */
#define BOOT_LINUX 3     /* bzImage, 32- or 64-bit entry, RSI = struct boot_params */

#define MULTIBOOT_BOOT_MAGIC 0x2BADB002
#define PVH_START_MAGIC 0x336ec578

#define BOOT_STACK_SIZE 16384
#define INTR_STACK_SIZE 16384
#define USER_STACK_SIZE 65536

/* RFLAGS for CPL3 code: bit 1 (always one) and IOPL = 3, so user code can
 * use in/out (and cli/sti) without trapping. */
#define USER_RFLAGS 0x3002

/* TSS: 104-byte 64-bit TSS, 8 KiB I/O bitmap (65536 ports), one 0xff byte. */
#define TSS_IOMAP_OFFSET 104
#define TSS_SIZE (TSS_IOMAP_OFFSET + 8192 + 1)

#define MSR_EFER 0xC0000080
#define EFER_LME 0x100
#define CR0_PE 0x1
#define CR0_PG 0x80000000
#define CR4_PAE 0x20

#endif
