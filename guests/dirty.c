/*
 * dirty: keeps rewriting memory and checking all of it, for save/restore
 * and live migration.
 *
 * At CPL3: an area of `pages` 4 KiB pages is filled with a pattern, then the
 * guest counts ticks for as long as it runs. Each tick rewrites one page
 * (the next in turn) with the pattern of generation <tick> and checks every
 * word of the area against the pattern its page's generation says it must
 * hold; word w of page p in generation g is splitmix64(p << 40 ^ w << 24 ^
 * g). A VM saved and restored, or migrated, counts on from where it was;
 * a page lost (zero), stale (an older generation) or wrong fails the check.
 *
 * Output:  dirty: <pages> pages at 0x<first> .. 0x<last>
 *          dirty: tick <n> sum 0x<64-bit sum of the area>     every `print` ticks
 *          dirty: PASS <n>                                    exit 0, after tick `ticks=`
 *          dirty: FAIL tick <n> page 0x<addr> word <w>: 0x<got> != 0x<want>   exit 15
 *
 * Command-line words: pages=<n> (default 1024; at most 4096, or 16384 with
 * `spread`), print=<n> (ticks
 * between lines, default 16), ticks=<n> (end after that tick; default:
 * never), spread (the pages are spaced evenly over all RAM above the image
 * instead of one block inside it, so they are far apart).
 *
 * Rate mode, with rate=<MiB/s> on the command line (0 allowed: nothing is
 * written, the guest still reports and verifies): a dirtying workload for
 * live-migration tests and benchmarks. pages=<n> may go up to 262144 (1 GiB);
 * the area is the image's block when it fits there (at most 4096 pages) and
 * `spread` is absent, else spread over RAM as above. Write number n (1, 2, ...)
 * rewrites page (n - 1) mod pages with generation n, as a tick does, but
 * nothing is checked on a write: the guest writes rate * 256 pages a second
 * in batches every millisecond by the TSC (a backlog, e.g. after the VM was
 * paused, is caught up for at most 100 ms). Between batches it polls COM1
 * (LSR bit 0; port I/O works at CPL3 with IOPL 3) for one-letter commands:
 *   v  check every word of the area against its page's generation
 *   q  end: PASS, exit 0
 * (anything else is ignored). Once a second it prints the number of writes so
 * far and the sum of every word of the area: the sum of a pass that reads
 * each page once during the second (a slice of pages per batch), corrected
 * for the pages rewritten after they were read, so it is the area's sum at
 * that moment, as the tick mode's sum is; intact memory gives a sum that
 * depends on the number of writes only. seconds=<n> ends the run after the
 * line of second n (default: never).
 *
 * The TSC frequency is calibrated once, at CPL3 before the area is filled,
 * against PIT channel 2: gate on (port 0x61 bit 0, speaker off), mode 0,
 * count 0xffff, read back with latch commands (the counter follows real
 * time both in KVM's in-kernel PIT and in pyvirt's user-space one on
 * kvm_pvm). Five rounds of 25 ms each accumulate counter steps (mod 2^16,
 * so the counter may wrap) against rdtsc taken around each read (its middle
 * stands for the moment of the latch: the port I/O exits cost tens of us);
 * the median round is the frequency.
 *
 * Rate mode output:
 *          dirty: <pages> pages at 0x<first> .. 0x<last>
 *          dirty: rate <r> MiB/s <r*256> pages/s tsc <kHz> kHz
 *          dirty: second <s> written <writes> sum 0x<64-bit sum of the area>   every second
 *          dirty: VERIFY OK <pages> written <writes>      after `v`, all intact
 *          dirty: PASS <writes>                           exit 0, after `q` or second `seconds=`
 *          dirty: FAIL tick <writes> page 0x<addr> word <w>: 0x<got> != 0x<want>   exit 15, after `v`
 *          dirty: FAIL only <n> of <pages> pages fit in RAM                       exit 15
 *          dirty: FAIL pages=<n>: 1 .. 262144 in rate mode                         exit 15
 *          dirty: FAIL PIT channel 2 does not count                               exit 15
 */
#include "runtime/runtime.h"

#define PAGE 4096UL
#define WORDS (PAGE / 8)
#define TICK_MAX_PAGES 16384
#define MAX_PAGES 262144 /* rate mode: 1 GiB */
#define BLOCK_PAGES 4096 /* without `spread`, the area is in the image: at most 16 MiB */
#define EXIT_FAIL 15
#define ABSENT (~0UL)

/* The area's addresses and generations: 4 MiB of bss for 1 GiB of area. */
static u64 block[BLOCK_PAGES][WORDS] __attribute__((aligned(4096)));
static u64 *area[MAX_PAGES];
static u64 gen[MAX_PAGES];
static u64 npages, print_every, last_tick;
static u64 rate, last_second;
static u64 ram_pages; /* the RAM above the image, in pages (set by spread_pages) */

/* The decimal value of "key=<n>" on the command line, or def. */
static u64 number(const char *key, u64 def)
{
    const char *start = boot_cmdline(), *s = start;
    size_t n = strlen(key);
    for (; *s; s++) {
        if ((s == start || s[-1] == ' ') && !strncmp(s, key, n) && s[n] == '=') {
            u64 v = 0;
            for (s += n + 1; *s >= '0' && *s <= '9'; s++)
                v = v * 10 + (u64)(*s - '0');
            return v;
        }
    }
    return def;
}

static inline u64 pattern(u64 page, u64 word, u64 g)
{
    u64 z = (page << 40 ^ word << 24 ^ g) + 0x9e3779b97f4a7c15UL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9UL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebUL;
    return z ^ (z >> 31);
}

static void fill(u64 p, u64 g)
{
    u64 *w = area[p];
    for (u64 i = 0; i < WORDS; i++)
        w[i] = pattern(p, i, g);
    gen[p] = g;
}

/* Every word of the area against its page's generation; the area's sum. */
static u64 check(u64 tick)
{
    u64 sum = 0;
    for (u64 p = 0; p < npages; p++) {
        const volatile u64 *w = area[p];
        for (u64 i = 0; i < WORDS; i++) {
            u64 got = w[i], want = pattern(p, i, gen[p]);
            if (got != want) {
                printf("dirty: FAIL tick %lu page 0x%lx word %lu: 0x%lx != 0x%lx\n", tick, (u64)area[p], i, got,
                       want);
                exit(EXIT_FAIL);
            }
            sum += got;
        }
    }
    return sum;
}

/* Pages spaced evenly over the RAM above the image (below 4 GiB, mapped). */
static u64 spread_pages(void)
{
    struct mem_range map[64];
    int n = boot_memmap(map, 64);
    if (n > 64)
        n = 64;
    u64 lo = ((u64)__image_end + PAGE - 1) & ~(PAGE - 1), total = 0;
    for (int i = 0; i < n; i++) {
        u64 a = map[i].addr < lo ? lo : map[i].addr, e = map[i].addr + map[i].size;
        if (e > 0x100000000UL)
            e = 0x100000000UL;
        if (map[i].type == 1 && e > a)
            total += (e - a) & ~(PAGE - 1);
    }
    ram_pages = total / PAGE;
    u64 stride = total / PAGE / npages * PAGE, k = 0;
    if (stride == 0)
        return 0;
    for (int i = 0; i < n && k < npages; i++) {
        u64 a = map[i].addr < lo ? lo : map[i].addr, e = map[i].addr + map[i].size;
        if (e > 0x100000000UL)
            e = 0x100000000UL;
        a = (a + PAGE - 1) & ~(PAGE - 1);
        for (; map[i].type == 1 && a + PAGE <= e && k < npages; a += stride)
            area[k++] = (u64 *)a;
    }
    return k;
}

static void dirty_user(void)
{
    for (u64 p = 0; p < npages; p++)
        fill(p, 0);
    printf("dirty: %lu pages at 0x%lx .. 0x%lx\n", npages, (u64)area[0], (u64)area[npages - 1]);
    for (u64 tick = 1;; tick++) {
        fill((tick - 1) % npages, tick);
        u64 sum = check(tick);
        if (tick % print_every == 0)
            printf("dirty: tick %lu sum 0x%lx\n", tick, sum);
        if (tick == last_tick) {
            printf("dirty: PASS %lu\n", tick);
            exit(0);
        }
    }
}

/* ---- rate mode ----------------------------------------------------------- */

#define PIT_HZ 1193182UL
#define PIT_CH2 0x42
#define PIT_CMD 0x43
#define PIT_GATE 0x61
#define COM1_LSR (COM1 + 5)
#define BATCHES 1000UL /* a second */
#define CAL_ROUNDS 5
#define CAL_TICKS (PIT_HZ / 40) /* 25 ms */
#define CAL_GIVE_UP (1UL << 36) /* TSC cycles: 7 s at 10 GHz */

static u64 tsc_hz, written;
/* The per-second sum: pages [0, cursor) have been read in this second's pass
 * and their rewrites since are added to pass_sum as differences. */
static u64 cursor, pass_sum;

/* PIT channel 2's counter, and the TSC at the middle of reading it. */
static u16 pit2_read(u64 *tsc)
{
    u64 t0 = rdtsc();
    outb(PIT_CMD, 0x80); /* latch channel 2 */
    u8 lo = inb(PIT_CH2), hi = inb(PIT_CH2);
    *tsc = t0 + (rdtsc() - t0) / 2;
    return (u16)(lo | hi << 8);
}

static u64 calibrate_tsc(void)
{
    u64 hz[CAL_ROUNDS];
    outb(PIT_GATE, (inb(PIT_GATE) & ~0x02) | 0x01); /* gate on, speaker off */
    outb(PIT_CMD, 0xb0);                            /* channel 2, lo/hi byte, mode 0 */
    outb(PIT_CH2, 0xff);
    outb(PIT_CH2, 0xff);
    for (int r = 0; r < CAL_ROUNDS; r++) {
        u64 start, now, ticks = 0;
        u16 last = pit2_read(&start);
        while (ticks < CAL_TICKS) {
            u16 c = pit2_read(&now);
            if (now - start > CAL_GIVE_UP) {
                printf("dirty: FAIL PIT channel 2 does not count\n");
                exit(EXIT_FAIL);
            }
            ticks += (u16)(last - c); /* it counts down, and wraps */
            last = c;
        }
        hz[r] = (now - start) * PIT_HZ / ticks;
    }
    for (int i = 1; i < CAL_ROUNDS; i++) /* insertion sort: the median */
        for (int j = i; j > 0 && hz[j - 1] > hz[j]; j--) {
            u64 t = hz[j];
            hz[j] = hz[j - 1];
            hz[j - 1] = t;
        }
    return hz[CAL_ROUNDS / 2];
}

/* Write number `written + 1`: page (written mod npages) gets that generation.
 * The old words are read as they are replaced, so a page already summed in
 * this second's pass corrects the pass by its difference. */
static void write_next(void)
{
    u64 p = written % npages, g = ++written, d = 0;
    u64 *w = area[p];
    for (u64 i = 0; i < WORDS; i++) {
        u64 v = pattern(p, i, g);
        d += v - w[i];
        w[i] = v;
    }
    gen[p] = g;
    if (p < cursor)
        pass_sum += d;
}

/* Read up to n more pages into this second's pass. */
static void sum_pages(u64 n)
{
    for (; n && cursor < npages; n--, cursor++) {
        const volatile u64 *w = area[cursor];
        u64 s = 0;
        for (u64 i = 0; i < WORDS; i++)
            s += w[i];
        pass_sum += s;
    }
}

/* Commands waiting on COM1. */
static void poll_serial(void)
{
    while (inb(COM1_LSR) & 1) {
        char c = (char)inb(COM1);
        if (c == 'v') {
            check(written);
            printf("dirty: VERIFY OK %lu written %lu\n", npages, written);
        } else if (c == 'q') {
            printf("dirty: PASS %lu\n", written);
            exit(0);
        }
    }
}

static void rate_user(void)
{
    tsc_hz = calibrate_tsc();
    for (u64 p = 0; p < npages; p++)
        fill(p, 0);
    u64 pps = rate * 256, period = tsc_hz / BATCHES, acc = 0;
    /* The pass reads its pages within about half a second. */
    u64 slice = npages / (BATCHES / 2) + 1;
    printf("dirty: %lu pages at 0x%lx .. 0x%lx\n", npages, (u64)area[0], (u64)area[npages - 1]);
    printf("dirty: rate %lu MiB/s %lu pages/s tsc %lu kHz\n", rate, pps, tsc_hz / 1000);
    u64 t0 = rdtsc(), next_batch = t0 + period, next_second = t0 + tsc_hz;
    for (;;) {
        u64 now = rdtsc();
        if (now >= next_second) {
            sum_pages(npages);
            u64 s = (now - t0) / tsc_hz;
            printf("dirty: second %lu written %lu sum 0x%lx\n", s, written, pass_sum);
            if (last_second != ABSENT && s >= last_second) {
                printf("dirty: PASS %lu\n", written);
                exit(0);
            }
            cursor = pass_sum = 0;
            next_second = t0 + (s + 1) * tsc_hz;
        } else if (now >= next_batch) {
            if (now - next_batch > BATCHES / 10 * period)
                next_batch = now; /* paused, or a long verify: forget the backlog beyond 100 ms */
            next_batch += period;
            acc += pps;
            for (u64 n = acc / BATCHES; n; n--)
                write_next();
            acc %= BATCHES;
            sum_pages(slice);
            poll_serial();
        } else {
            pause();
        }
    }
}

static void rate_main(void)
{
    npages = number("pages", 1024);
    last_second = number("seconds", ABSENT);
    if (npages < 1 || npages > MAX_PAGES) {
        printf("dirty: FAIL pages=%lu: 1 .. %d in rate mode\n", npages, MAX_PAGES);
        exit(EXIT_FAIL);
    }
    if (npages <= BLOCK_PAGES && !cmdline_has("spread")) {
        for (u64 p = 0; p < npages; p++)
            area[p] = block[p];
    } else {
        u64 got = spread_pages();
        if (got < npages) {
            printf("dirty: FAIL only %lu of %lu pages fit in RAM\n", got ? got : ram_pages, npages);
            exit(EXIT_FAIL);
        }
    }
    enter_user(rate_user);
}

int main(void)
{
    rate = number("rate", ABSENT);
    if (rate != ABSENT)
        rate_main();
    npages = number("pages", 1024);
    if (npages < 1 || npages > TICK_MAX_PAGES)
        npages = 1024;
    print_every = number("print", 16);
    if (print_every == 0)
        print_every = 1;
    last_tick = number("ticks", 0);
    if (cmdline_has("spread")) {
        u64 got = spread_pages();
        if (got < npages) {
            printf("dirty: FAIL only %lu of %lu pages fit in RAM\n", got, npages);
            return EXIT_FAIL;
        }
    } else {
        if (npages > BLOCK_PAGES)
            npages = BLOCK_PAGES;
        for (u64 p = 0; p < npages; p++)
            area[p] = block[p];
    }
    enter_user(dirty_user);
}
