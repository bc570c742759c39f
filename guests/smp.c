/*
 * smp: brings up every CPU the VMM reports and has each one say hello.
 *
 * The CPU count comes from fw_cfg (NB_CPUS), or from the ACPI MADT when
 * fw_cfg is absent or the command line contains "madt"; "cpus=<n>" on the
 * command line overrides both (to test the timeout path). The BSP copies the
 * real-mode trampoline to 0x8000 and, from CPL3 (the LAPIC page is user
 * accessible), broadcasts INIT-SIPI-SIPI. Each AP enters long mode on its
 * own stack, prints "cpu <k> apic <id>" under an xchg spinlock, counts
 * itself and halts. The BSP waits (at most ~5 s by the CMOS RTC) for all
 * of them (wait_for: a pause loop bounded by the CMOS RTC).
 *
 * Output:  cpu 0 apic <id>            (the BSP, then one line per AP)
 *          smp: <N> cpus online       exit 0
 *          smp: timeout, <k> of <N> cpus online   exit 3
 */
#include "runtime/runtime.h"
#include "smp.h"

#define TIMEOUT_SECONDS 5

extern char ap_trampoline[], ap_trampoline_end[];
/* AP with APIC ID i runs on ap_stacks[i] (ap_start64 computes its top). */
char ap_stacks[MAX_CPUS][1 << AP_STACK_SHIFT] __attribute__((aligned(16)));

static volatile u32 print_lock;
static volatile u32 cpus_online = 1; /* the BSP */
static u32 ncpus;
static u32 bsp_apic_id;

/* Called by ap_start64 (smp_trampoline.S) at CPL0 on the AP's own stack. */
void ap_main(u32 apic_id) __attribute__((noreturn));
void ap_main(u32 apic_id)
{
    load_idt();
    spin_lock(&print_lock);
    u32 k = cpus_online;
    printf("cpu %u apic %u\n", k, apic_id);
    /* Count only after printing, so the BSP cannot report (and exit)
     * before this AP's line is out. */
    cpus_online = k + 1;
    spin_unlock(&print_lock);
    for (;;)
        __asm__ volatile("cli; hlt");
}

static int sum_ok(const u8 *p, u32 len)
{
    u8 s = 0;
    for (u32 i = 0; i < len; i++)
        s += p[i];
    return s == 0;
}

/* Enabled processors in the MADT (types 0 = local APIC, 9 = x2APIC). */
static u32 madt_count_cpus(void)
{
    u8 *rsdp = (u8 *)boot_rsdp();
    if (!rsdp || memcmp(rsdp, "RSD PTR ", 8) || !sum_ok(rsdp, 20))
        return 0;
    int xsdt = rsdp[15] >= 2 && *(u64 *)(rsdp + 24);
    u64 sdt_addr = xsdt ? *(u64 *)(rsdp + 24) : *(u32 *)(rsdp + 16);
    u8 *sdt = (u8 *)sdt_addr;
    u32 len = *(u32 *)(sdt + 4), esize = xsdt ? 8 : 4;
    for (u32 off = 36; off + esize <= len; off += esize) {
        u8 *t = (u8 *)(xsdt ? *(u64 *)(sdt + off) : *(u32 *)(sdt + off));
        if (memcmp(t, "APIC", 4))
            continue;
        u32 tlen = *(u32 *)(t + 4), n = 0;
        for (u32 e = 44; e + 2 <= tlen && t[e + 1] >= 2; e += t[e + 1]) {
            if (t[e] == 0 && (*(u32 *)(t + e + 4) & 1))
                n++;
            else if (t[e] == 9 && (*(u32 *)(t + e + 8) & 1))
                n++;
        }
        return n;
    }
    return 0;
}

/* The decimal value of "key=<n>" on the command line, or 0. */
static u32 cmdline_number(const char *key)
{
    const char *start = boot_cmdline(), *s = start;
    size_t n = strlen(key);
    for (; *s; s++) {
        if ((s == start || s[-1] == ' ') && !strncmp(s, key, n) && s[n] == '=') {
            u32 v = 0;
            for (s += n + 1; *s >= '0' && *s <= '9'; s++)
                v = v * 10 + (u32)(*s - '0');
            return v;
        }
    }
    return 0;
}

static void delay(u32 n)
{
    for (u32 i = 0; i < n; i++)
        pause();
}

static void send_ipi(u32 icr_lo)
{
    lapic_write(LAPIC_ICR_HI, 0);
    lapic_write(LAPIC_ICR_LO, icr_lo);
    for (int i = 0; i < 100000 && (lapic_read(LAPIC_ICR_LO) & (1 << 12)); i++) /* delivery pending */
        pause();
}

/* ICR: destination shorthand "all excluding self", level assert. */
#define ICR_ALL_BUT_SELF (3 << 18)
#define ICR_ASSERT (1 << 14)
#define ICR_INIT (5 << 8)
#define ICR_STARTUP (6 << 8)

static void bsp_user(void)
{
    printf("cpu 0 apic %u\n", bsp_apic_id);
    if (ncpus > 1) {
        memcpy((void *)TRAMPOLINE_ADDR, ap_trampoline, ap_trampoline_end - ap_trampoline);
        lapic_write(LAPIC_SVR, 0x1ff); /* software-enable the LAPIC, spurious vector 0xff */
        /* The classic sequence; the delays (~6 ms and ~0.6 ms at ~30 ns per
         * pause) stand in for the 10 ms and 200 us real hardware wants. */
        send_ipi(ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_INIT);
        delay(200000);
        send_ipi(ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_STARTUP | SIPI_VECTOR);
        delay(20000);
        send_ipi(ICR_ALL_BUT_SELF | ICR_ASSERT | ICR_STARTUP | SIPI_VECTOR);
    }
    wait_for(&cpus_online, ncpus, TIMEOUT_SECONDS);
    spin_lock(&print_lock);
    u32 online = cpus_online;
    if (online < ncpus) {
        printf("smp: timeout, %u of %u cpus online\n", online, ncpus);
        exit(3);
    }
    printf("smp: %u cpus online\n", online);
    exit(0);
}

int main(void)
{
    u32 n = cmdline_number("cpus");
    const char *src = "cmdline";
    if (!n && !cmdline_has("madt")) {
        n = fwcfg_nb_cpus();
        src = "fw_cfg";
    }
    if (!n) {
        n = madt_count_cpus();
        src = "madt";
    }
    if (!n) {
        n = 1;
        src = "default";
    }
    if (n > MAX_CPUS)
        n = MAX_CPUS;
    ncpus = n;
    /* CPUID at CPL0: some hypervisors only intercept it there, and at CPL3
     * it would report the host CPU's APIC ID. */
    bsp_apic_id = cpu_apic_id();
    printf("smp: %u cpus expected (%s)\n", n, src);
    enter_user(bsp_user);
}
