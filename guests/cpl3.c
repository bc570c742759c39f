/*
 * cpl3: how fast plain code runs at CPL3. On hosts that emulate CPL0 (or a
 * VMM that gets CPL3 wrong) this is orders of magnitude lower than native.
 *
 * At CPL3, syncs to a tick of the CMOS RTC seconds register (read with port
 * I/O from CPL3), then runs a tight loop in chunks, checking the RTC between
 * chunks, for 2 RTC seconds.
 *
 * Output:  cpl3: <n> iterations/s    exit 0
 *          cpl3: no RTC              exit 6
 */
#include "runtime/runtime.h"

#define CHUNK (1UL << 20)
#define SECONDS 2

/* The measured loop: one add per iteration, kept by the empty asm. */
static u64 spin(u64 n, u64 x)
{
    for (u64 i = 0; i < n; i++) {
        x += i;
        __asm__ volatile("" : "+r"(x));
    }
    return x;
}

static void cpl3_user(void)
{
    if (!rtc_present()) {
        puts("cpl3: no RTC\n");
        exit(6);
    }
    /* Start on a seconds boundary. */
    u8 s = rtc_seconds_raw();
    for (u32 i = 0; i < 100000000 && rtc_seconds_raw() == s; i++)
        ;
    s = rtc_seconds_raw();
    u64 iters = 0, x = 0;
    for (int edges = 0; edges < SECONDS;) {
        x = spin(CHUNK, x);
        iters += CHUNK;
        u8 t = rtc_seconds_raw();
        if (t != s) {
            s = t;
            edges++;
        }
    }
    printf("cpl3: %lu iterations/s\n", iters / SECONDS);
    exit(0);
}

int main(void) { enter_user(cpl3_user); }
