/*
 * Guest runtime: what a test guest can use.
 *
 * A guest defines `int main(void)`; it runs at CPL0 in long mode with the
 * runtime's GDT, IDT, TSS and an identity map of the first 4 GiB (user
 * accessible). Returning from main exits with its value. Most guests do
 * little at CPL0 and call enter_user() to run their workload at CPL3.
 */
#ifndef GUEST_RUNTIME_H
#define GUEST_RUNTIME_H

#include "defs.h"

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long i64;
typedef unsigned long size_t;

#define NULL ((void *)0)
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

int main(void);

/* ---- exit and CPL3 ----------------------------------------------------- */

/* Write code to the debug-exit port (0xf4): the VMM ends with status
 * (code << 1) | 1. Halts (or spins at CPL3) if the VMM ignores it. */
void exit(int code) __attribute__((noreturn));
/* Drop to CPL3 (IOPL 3, IF as now) on the user stack and call fn there.
 * fn should end with exit(); if it returns, the guest exits 0. */
void enter_user(void (*fn)(void)) __attribute__((noreturn));
int current_cpl(void);

/* ---- serial console (COM1) --------------------------------------------- */

void putc(char c);
void puts(const char *s); /* no newline added */
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- memory ------------------------------------------------------------ */

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strncmp(const char *a, const char *b, size_t n);

/* Linker symbols: the whole image (code, data, page tables, stacks, bss). */
extern char __image_start[], __image_end[];
/* The runtime's page tables: pdpt[0..3] map 0-4 GiB, pdpt[4..511] are free. */
extern u64 pml4[512], pdpt[512];
static inline void write_cr3(u64 v) { __asm__ volatile("mov %0, %%cr3" : : "r"(v) : "memory"); }

/* ---- interrupts -------------------------------------------------------- */

struct intr_frame {
    u64 r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax;
    u64 vector, error;
    u64 rip, cs, rflags, rsp, ss; /* pushed by the CPU */
};

typedef void (*irq_handler)(struct intr_frame *f);
/* Handle vector (32..255). Exceptions (0..31) always report and exit 0x7f. */
void irq_register(int vector, irq_handler fn);
void load_idt(void); /* for APs: the BSP's IDT */

/* ---- boot information -------------------------------------------------- */

extern u32 boot_protocol;  /* BOOT_PVH, BOOT_MULTIBOOT or BOOT_LINUX */
extern u64 boot_info_ptr;  /* start_info / multiboot info / boot_params */

struct hvm_start_info {
    u32 magic; /* 0x336ec578 */
    u32 version;
    u32 flags;
    u32 nr_modules;
    u64 modlist_paddr;
    u64 cmdline_paddr;
    u64 rsdp_paddr;
    u64 memmap_paddr; /* version >= 1 */
    u32 memmap_entries;
    u32 reserved;
};

struct hvm_memmap_entry {
    u64 addr;
    u64 size;
    u32 type;
    u32 reserved;
};

struct multiboot_info {
    u32 flags;
    u32 mem_lower, mem_upper; /* KiB; flags bit 0 */
    u32 boot_device;
    u32 cmdline;              /* flags bit 2 */
    u32 mods_count, mods_addr;
    u32 syms[4];
    u32 mmap_length, mmap_addr; /* flags bit 6 */
};

struct mem_range {
    u64 addr, size;
    u32 type; /* e820 type: 1 = RAM */
};

const char *boot_cmdline(void);          /* "" when there is none */
int cmdline_has(const char *word);       /* word is one of the command line's words */
int boot_memmap(struct mem_range *out, int max); /* entries found (may exceed max) */
u64 boot_rsdp(void);                     /* ACPI RSDP address or 0 */

/* ---- port I/O, MMIO, MSRs, CPUID --------------------------------------- */

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline u8 mmio_read8(u64 a) { return *(volatile u8 *)a; }
static inline u16 mmio_read16(u64 a) { return *(volatile u16 *)a; }
static inline u32 mmio_read32(u64 a) { return *(volatile u32 *)a; }
static inline u64 mmio_read64(u64 a) { return *(volatile u64 *)a; }
static inline void mmio_write8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static inline void mmio_write16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static inline void mmio_write32(u64 a, u32 v) { *(volatile u32 *)a = v; }
static inline void mmio_write64(u64 a, u64 v) { *(volatile u64 *)a = v; }

static inline u64 rdmsr(u32 msr)
{
    u32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((u64)hi << 32) | lo;
}
static inline void wrmsr(u32 msr, u64 v)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)));
}
static inline void cpuid(u32 leaf, u32 sub, u32 *a, u32 *b, u32 *c, u32 *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}
static inline u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}
static inline u64 read_cr2(void) { u64 v; __asm__ volatile("mov %%cr2, %0" : "=r"(v)); return v; }
static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void pause(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

/* xchg with memory is implicitly locked: a spinlock without fences. */
static inline u32 xchg32(volatile u32 *p, u32 v)
{
    __asm__ volatile("xchgl %0, %1" : "+r"(v), "+m"(*p) : : "memory");
    return v;
}
static inline void spin_lock(volatile u32 *l) { while (xchg32(l, 1)) while (*l) pause(); }
static inline void spin_unlock(volatile u32 *l) { xchg32(l, 0); }

/* ---- devices ----------------------------------------------------------- */

#define COM1 0x3f8
#define DEBUG_EXIT_PORT 0xf4

/* fw_cfg (QEMU's firmware configuration interface, I/O ports). */
#define FW_CFG_SIGNATURE 0x00
#define FW_CFG_RAM_SIZE 0x03
#define FW_CFG_NB_CPUS 0x05
int fwcfg_present(void); /* signature reads "QEMU" */
void fwcfg_read(u16 key, void *buf, u32 len);
u16 fwcfg_nb_cpus(void);  /* 0 without fw_cfg */
u64 fwcfg_ram_size(void); /* 0 without fw_cfg */

/* CMOS RTC. */
struct rtc_time {
    int year, month, day, hour, minute, second;
};
void rtc_read(struct rtc_time *t);
u8 rtc_seconds_raw(void); /* seconds register as stored (BCD or binary) */
int rtc_present(void);    /* register A reads as something other than 0xff */
/* Spin (pause loop; call it at CPL3, where it runs natively) until
 * *v >= target or about max_seconds have passed by the RTC; returns whether
 * v got there. The RTC is read every 65536 spins; a cap on the spins ends
 * the wait even without an RTC, or with one that never ticks. */
int wait_for(volatile u32 *v, u32 target, u32 max_seconds);

/* Local APIC (xAPIC, MMIO at 0xfee00000). */
#define LAPIC_BASE 0xfee00000UL
#define LAPIC_ID 0x020
#define LAPIC_EOI 0x0b0
#define LAPIC_SVR 0x0f0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_CUR 0x390
#define LAPIC_TIMER_DIV 0x3e0
static inline u32 lapic_read(u32 reg) { return mmio_read32(LAPIC_BASE + reg); }
static inline void lapic_write(u32 reg, u32 v) { mmio_write32(LAPIC_BASE + reg, v); }
/* CPUID leaf 1, EBX[31:24]. Call it at CPL0: some hypervisors (PVM) let
 * CPUID run unintercepted at CPL3, where it describes the host CPU. */
u32 cpu_apic_id(void);

#endif
