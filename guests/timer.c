/*
 * timer: interrupt delivery from the legacy and local timers, and the RTC.
 *
 * 1. 8259 PIC remapped to vectors 0x20-0x2f, only IRQ0 unmasked; PIT
 *    channel 0 at 100 Hz; the LAPIC passes PIC interrupts through LINT0
 *    (ExtINT). Count ticks until 20 arrive (or ~3 s by the RTC).
 * 2. LAPIC timer, periodic, vector 0x40, ~100 Hz on KVM's 1 GHz APIC bus.
 *    Count the same way.
 * 3. Read the CMOS RTC.
 * The waiting runs at CPL3 with IF=1, so interrupts arrive from CPL3 (the
 * CPU switches to the TSS's RSP0 stack) into CPL0 handlers.
 *
 * Output:  timer: pit <n> ticks
 *          timer: lapic <n> ticks
 *          rtc: YYYY-MM-DD HH:MM:SS     ("rtc: none" without a CMOS RTC)
 * Exit 0 if both counts are > 0, else 4.
 */
#include "runtime/runtime.h"

#define PIC1_CMD 0x20
#define PIC1_DATA 0x21
#define PIC2_CMD 0xa0
#define PIC2_DATA 0xa1
#define PIC_EOI 0x20
#define PIT_CH0 0x40
#define PIT_CMD 0x43
#define PIT_HZ 1193182
#define TICK_HZ 100
#define WANT_TICKS 20
#define MAX_SECONDS 3

#define VEC_PIT 0x20
#define VEC_PIC_SPURIOUS 0x27
#define VEC_LAPIC_TIMER 0x40
#define VEC_LAPIC_SPURIOUS 0xff

static volatile u32 pit_ticks, lapic_ticks;

static void on_pit(struct intr_frame *f)
{
    (void)f;
    pit_ticks++;
    outb(PIC1_CMD, PIC_EOI);
}

static void on_lapic_timer(struct intr_frame *f)
{
    (void)f;
    lapic_ticks++;
    lapic_write(LAPIC_EOI, 0);
}

/* Spurious interrupts get no EOI (there is nothing in service). */
static void on_spurious(struct intr_frame *f) { (void)f; }

static void pic_init(void)
{
    outb(PIC1_CMD, 0x11); /* ICW1: edge, cascade, ICW4 follows */
    outb(PIC2_CMD, 0x11);
    outb(PIC1_DATA, 0x20); /* ICW2: vector base */
    outb(PIC2_DATA, 0x28);
    outb(PIC1_DATA, 0x04); /* ICW3: slave on IRQ2 */
    outb(PIC2_DATA, 0x02);
    outb(PIC1_DATA, 0x01); /* ICW4: 8086 mode */
    outb(PIC2_DATA, 0x01);
    outb(PIC1_DATA, 0xfe); /* only IRQ0 (PIT) */
    outb(PIC2_DATA, 0xff);
}

static void pit_start(void)
{
    u16 div = PIT_HZ / TICK_HZ;
    outb(PIT_CMD, 0x34); /* channel 0, lo/hi byte, mode 2 (rate generator) */
    outb(PIT_CH0, div & 0xff);
    outb(PIT_CH0, div >> 8);
}

static void timer_user(void)
{
    wait_for(&pit_ticks, WANT_TICKS, MAX_SECONDS);
    outb(PIC1_DATA, 0xff); /* mask IRQ0 again */
    u32 pit = pit_ticks;

    lapic_write(LAPIC_TIMER_DIV, 0x3); /* divide by 16 */
    lapic_write(LAPIC_LVT_TIMER, VEC_LAPIC_TIMER | (1 << 17)); /* periodic */
    lapic_write(LAPIC_TIMER_INIT, 1000000000 / 16 / TICK_HZ);
    wait_for(&lapic_ticks, WANT_TICKS, MAX_SECONDS);
    lapic_write(LAPIC_LVT_TIMER, VEC_LAPIC_TIMER | (1 << 16)); /* masked */
    lapic_write(LAPIC_TIMER_INIT, 0);
    u32 lapic = lapic_ticks;

    printf("timer: pit %u ticks\n", pit);
    printf("timer: lapic %u ticks\n", lapic);
    if (rtc_present()) {
        struct rtc_time t;
        rtc_read(&t);
        printf("rtc: %04d-%02d-%02d %02d:%02d:%02d\n", t.year, t.month, t.day, t.hour, t.minute, t.second);
    } else {
        puts("rtc: none\n");
    }
    exit(pit > 0 && lapic > 0 ? 0 : 4);
}

int main(void)
{
    irq_register(VEC_PIT, on_pit);
    irq_register(VEC_PIC_SPURIOUS, on_spurious);
    irq_register(VEC_LAPIC_TIMER, on_lapic_timer);
    irq_register(VEC_LAPIC_SPURIOUS, on_spurious);
    /* LAPIC on, PIC interrupts through LINT0 as ExtINT (virtual wire), NMI
     * on LINT1, its timer masked until needed. Without this, KVM's LAPIC
     * does not accept PIC interrupts once the VMM leaves LINT0 masked. */
    lapic_write(LAPIC_SVR, 0x100 | VEC_LAPIC_SPURIOUS);
    lapic_write(LAPIC_LVT_LINT0, 0x700);
    lapic_write(LAPIC_LVT_LINT1, 0x400);
    lapic_write(LAPIC_LVT_TIMER, VEC_LAPIC_TIMER | (1 << 16));
    pic_init();
    pit_start();
    sti();
    enter_user(timer_user); /* keeps IF=1 */
}
