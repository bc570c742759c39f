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
 */
#include "runtime/runtime.h"

#define PAGE 4096UL
#define WORDS (PAGE / 8)
#define MAX_PAGES 16384
#define BLOCK_PAGES 4096 /* without `spread`, the area is in the image: at most 16 MiB */
#define EXIT_FAIL 15

static u64 block[BLOCK_PAGES][WORDS] __attribute__((aligned(4096)));
static u64 *area[MAX_PAGES];
static u64 gen[MAX_PAGES];
static u64 npages, print_every, last_tick;

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

int main(void)
{
    npages = number("pages", 1024);
    if (npages < 1 || npages > MAX_PAGES)
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
