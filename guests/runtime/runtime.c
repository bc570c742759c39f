/*
 * Guest runtime, C half: CPU tables set up at run time, interrupt dispatch,
 * exit, boot information and small device helpers.
 */
#include "runtime.h"

extern u64 gdt_tss[2];
extern u8 tss[TSS_SIZE];
extern char intr_stack_top[];
extern char isr_stubs[];

/* 64-bit interrupt gate: 16 bytes. */
struct idt_gate {
    u16 off_lo;
    u16 sel;
    u8 ist;
    u8 type_attr;
    u16 off_mid;
    u32 off_hi;
    u32 reserved;
};

static struct idt_gate idt[256] __attribute__((aligned(16)));
static irq_handler handlers[256];

static struct __attribute__((packed)) {
    u16 limit;
    u64 base;
} idt_ptr;

void load_idt(void) { __asm__ volatile("lidt %0" : : "m"(idt_ptr)); }

static void setup_tss(void)
{
    /* The TSS base is scattered over the 16-byte descriptor, which is why
     * this is done here rather than in the static GDT. Type 0x89 = present,
     * available 64-bit TSS. */
    u64 base = (u64)tss, limit = TSS_SIZE - 1;
    *(u64 *)(tss + 4) = (u64)intr_stack_top;      /* RSP0: for interrupts at CPL3 */
    *(u16 *)(tss + 102) = TSS_IOMAP_OFFSET;       /* bitmap: all ports allowed */
    tss[TSS_SIZE - 1] = 0xff;                     /* the bitmap's terminator */
    gdt_tss[0] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89UL << 40) |
                 (((base >> 24) & 0xff) << 56);
    gdt_tss[1] = base >> 32;
    __asm__ volatile("ltr %w0" : : "r"(SEL_TSS));
}

static void setup_idt(void)
{
    /* Interrupt gates (0x8e: present, DPL0, IF cleared on entry). DPL0 also
     * means CPL3 cannot raise them with `int n`. */
    for (int v = 0; v < 256; v++) {
        u64 a = (u64)isr_stubs + 16 * v;
        idt[v] = (struct idt_gate){(u16)a, SEL_KCODE64, 0, 0x8e, (u16)(a >> 16), (u32)(a >> 32), 0};
    }
    idt_ptr.limit = sizeof(idt) - 1;
    idt_ptr.base = (u64)idt;
    load_idt();
}

void irq_register(int vector, irq_handler fn)
{
    if (vector >= 32 && vector < 256)
        handlers[vector] = fn;
}

void isr_dispatch(struct intr_frame *f)
{
    if (f->vector >= 32 && handlers[f->vector]) {
        handlers[f->vector](f);
        return;
    }
    if (f->vector >= 32) {
        /* A stray interrupt is reported, not fatal: the guest may still
         * produce its result. */
        printf("INTERRUPT %lu unexpected rip=0x%lx\n", f->vector, f->rip);
        return;
    }
    printf("EXCEPTION %lu err=0x%lx rip=0x%lx cr2=0x%lx\n", f->vector, f->error, f->rip, read_cr2());
    printf("  cs=0x%lx rflags=0x%lx rsp=0x%lx ss=0x%lx\n", f->cs, f->rflags, f->rsp, f->ss);
    exit(0x7f);
}

int current_cpl(void)
{
    u16 cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    return cs & 3;
}

void exit(int code)
{
    outb(DEBUG_EXIT_PORT, (u8)code);
    /* Only reached if the VMM has no debug-exit device. */
    if (current_cpl() == 0)
        for (;;)
            __asm__ volatile("cli; hlt");
    for (;;)
        pause();
}

/* Called from entry.S on the boot stack, at CPL0, interrupts off. */
void runtime_start(void) __attribute__((noreturn));
void runtime_start(void)
{
    setup_tss();
    setup_idt();
    exit(main());
}

/* ---- boot information -------------------------------------------------- */

const char *boot_cmdline(void)
{
    u64 p = 0;
    if (boot_protocol == BOOT_PVH) {
        struct hvm_start_info *si = (void *)boot_info_ptr;
        if (si->magic == PVH_START_MAGIC)
            p = si->cmdline_paddr;
    } else if (boot_protocol == BOOT_MULTIBOOT) {
        struct multiboot_info *mi = (void *)boot_info_ptr;
        if (mi->flags & (1 << 2))
            p = mi->cmdline;
    } else if (boot_protocol == BOOT_LINUX) {
        /* struct boot_params: setup header field cmd_line_ptr at 0x228,
         * ext_cmd_line_ptr (high 32 bits) at 0x0c8. */
        u8 *bp = (u8 *)boot_info_ptr;
        p = *(u32 *)(bp + 0x228) | ((u64) * (u32 *)(bp + 0x0c8) << 32);
    }
    return p ? (const char *)p : "";
}

int cmdline_has(const char *word)
{
    const char *start = boot_cmdline(), *s = start;
    size_t n = strlen(word);
    for (; *s; s++)
        if ((s == start || s[-1] == ' ') && !strncmp(s, word, n) && (s[n] == ' ' || !s[n]))
            return 1;
    return 0;
}

int boot_memmap(struct mem_range *out, int max)
{
    int n = 0;
    if (boot_protocol == BOOT_PVH) {
        struct hvm_start_info *si = (void *)boot_info_ptr;
        if (si->magic != PVH_START_MAGIC || si->version < 1 || !si->memmap_paddr)
            return 0;
        struct hvm_memmap_entry *e = (void *)si->memmap_paddr;
        for (u32 i = 0; i < si->memmap_entries; i++, n++)
            if (n < max)
                out[n] = (struct mem_range){e[i].addr, e[i].size, e[i].type};
    } else if (boot_protocol == BOOT_MULTIBOOT) {
        struct multiboot_info *mi = (void *)boot_info_ptr;
        if (!(mi->flags & (1 << 6)))
            return 0;
        /* Entries: u32 size (not counting itself), u64 addr, u64 len, u32 type. */
        u64 p = mi->mmap_addr, end = p + mi->mmap_length;
        while (p < end) {
            u32 size = *(u32 *)p;
            if (n < max)
                out[n] = (struct mem_range){*(u64 *)(p + 4), *(u64 *)(p + 12), *(u32 *)(p + 20)};
            n++;
            p += size + 4;
        }
    } else if (boot_protocol == BOOT_LINUX) {
        /* boot_params: e820_entries (u8) at 0x1e8, table of 20-byte
         * {u64 addr, u64 size, u32 type} entries at 0x2d0. */
        u8 *bp = (u8 *)boot_info_ptr;
        int count = bp[0x1e8];
        for (int i = 0; i < count; i++, n++) {
            u8 *e = bp + 0x2d0 + 20 * i;
            if (n < max)
                out[n] = (struct mem_range){*(u64 *)e, *(u64 *)(e + 8), *(u32 *)(e + 16)};
        }
    }
    return n;
}

u64 boot_rsdp(void)
{
    if (boot_protocol == BOOT_PVH) {
        struct hvm_start_info *si = (void *)boot_info_ptr;
        if (si->magic == PVH_START_MAGIC && si->rsdp_paddr)
            return si->rsdp_paddr;
    } else if (boot_protocol == BOOT_LINUX) {
        u64 p = *(u64 *)(boot_info_ptr + 0x070); /* boot_params.acpi_rsdp_addr */
        if (p)
            return p;
    }
    /* Legacy search: the BIOS area 0xe0000-0xfffff, 16-byte aligned. */
    for (u64 a = 0xe0000; a < 0x100000; a += 16)
        if (!memcmp((void *)a, "RSD PTR ", 8))
            return a;
    return 0;
}

/* ---- fw_cfg -------------------------------------------------------------- */

#define FW_CFG_PORT_SEL 0x510
#define FW_CFG_PORT_DATA 0x511

void fwcfg_read(u16 key, void *buf, u32 len)
{
    u8 *b = buf;
    outw(FW_CFG_PORT_SEL, key);
    for (u32 i = 0; i < len; i++)
        b[i] = inb(FW_CFG_PORT_DATA);
}

int fwcfg_present(void)
{
    char sig[4];
    fwcfg_read(FW_CFG_SIGNATURE, sig, 4);
    return !memcmp(sig, "QEMU", 4);
}

u16 fwcfg_nb_cpus(void)
{
    u8 b[2];
    if (!fwcfg_present())
        return 0;
    fwcfg_read(FW_CFG_NB_CPUS, b, 2);
    return b[0] | b[1] << 8;
}

u64 fwcfg_ram_size(void)
{
    u8 b[8];
    u64 v = 0;
    if (!fwcfg_present())
        return 0;
    fwcfg_read(FW_CFG_RAM_SIZE, b, 8);
    for (int i = 7; i >= 0; i--)
        v = v << 8 | b[i];
    return v;
}

/* ---- CMOS RTC ------------------------------------------------------------ */

static u8 cmos_read(u8 reg)
{
    outb(0x70, reg); /* bit 7 clear: NMIs stay enabled */
    return inb(0x71);
}

u8 rtc_seconds_raw(void) { return cmos_read(0x00); }

int rtc_present(void) { return cmos_read(0x0a) != 0xff; }

int wait_for(volatile u32 *v, u32 target, u32 max_seconds)
{
    int rtc = rtc_present();
    u8 last = rtc ? rtc_seconds_raw() : 0;
    u32 seconds = 0;
    /* A pause takes ~30 ns on current CPUs (~3 ns on some older ones): the
     * budget is the limit without an RTC and a generous backstop with one
     * (an RTC that never ticks). */
    u64 budget = (u64)(max_seconds + 1) << (rtc ? 27 : 25);
    for (u64 i = 1; *v < target; i++) {
        pause();
        if (i >= budget)
            return 0;
        if (!rtc || (i & 0xffff))
            continue;
        u8 s = rtc_seconds_raw();
        if (s != last) {
            last = s;
            if (++seconds > max_seconds)
                return 0;
        }
    }
    return 1;
}

static int from_bcd(u8 v) { return (v & 0x0f) + (v >> 4) * 10; }

static void rtc_read_raw(u8 r[7])
{
    /* Wait while an update is in progress (it lasts < 2 ms); bounded, so a
     * missing RTC (reads 0xff) cannot hang the guest. */
    for (int i = 0; i < 100000 && (cmos_read(0x0a) & 0x80); i++)
        pause();
    static const u8 regs[7] = {0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32};
    for (int i = 0; i < 7; i++)
        r[i] = cmos_read(regs[i]);
}

void rtc_read(struct rtc_time *t)
{
    u8 a[7], b[7];
    /* Read until two reads agree, so an update between them can't tear. */
    rtc_read_raw(a);
    for (int tries = 0; tries < 5; tries++) {
        rtc_read_raw(b);
        if (!memcmp(a, b, 7))
            break;
        memcpy(a, b, 7);
    }
    u8 regb = cmos_read(0x0b);
    int binary = regb & 0x04, h24 = regb & 0x02;
    u8 hour = a[2];
    int pm = !h24 && (hour & 0x80);
    hour &= 0x7f;
    int v[7];
    for (int i = 0; i < 7; i++)
        v[i] = binary ? a[i] : from_bcd(a[i]);
    v[2] = binary ? hour : from_bcd(hour);
    if (!h24) /* 12-hour clock: 12 AM is 0, 12 PM is 12 */
        v[2] = (v[2] % 12) + (pm ? 12 : 0);
    t->second = v[0];
    t->minute = v[1];
    t->hour = v[2];
    t->day = v[3];
    t->month = v[4];
    t->year = (a[6] ? v[6] : 20) * 100 + v[5];
}

/* ---- CPU ----------------------------------------------------------------- */

u32 cpu_apic_id(void)
{
    u32 a, b, c, d;
    cpuid(1, 0, &a, &b, &c, &d);
    return b >> 24;
}
