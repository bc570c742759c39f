/*
 * memory: checks the memory map the VMM passes (PVH start_info memmap) and
 * that all of the RAM it describes is really there and distinct.
 *
 * Prints every entry, the RAM total, then at CPL3 writes a pattern into
 * every 4 KiB page of every RAM range (each 8-byte word holds its own
 * address XOR a constant, so aliased or missing pages show up), and reads
 * it all back. Skipped: everything below 1 MiB, the guest's own image
 * (code, data, page tables, stacks) and anything above 64 GiB (a line says
 * how much was left out). The runtime maps only 4 GiB; this guest adds
 * page directories (2 MiB pages) for RAM between 4 and 64 GiB.
 *
 * Output:  e820 <addr hex> <size hex> <type>   one line per entry
 *          memory: total <bytes> bytes         sum of type-1 entries
 *          memory: verified <pages> pages      exit 0
 *          memory: mismatch at <addr hex> ...  exit 2
 *          memory: no memory map               exit 2
 */
#include "runtime/runtime.h"

#define MAX_RANGES 128
#define PAGE 4096UL
#define LOW_LIMIT 0x100000UL
#define GiB (1UL << 30)
#define MAP_LIMIT_GIB 64
#define PATTERN 0x5aa5c33c0ff0e11eUL

static struct mem_range map[MAX_RANGES];
static int nmap;
static u64 high_limit; /* end of the identity map */
static u64 high_pds[MAP_LIMIT_GIB - 4][512] __attribute__((aligned(4096)));

/*
 * Extend the identity map to cover RAM up to `end` (at most 64 GiB): one
 * page directory per GiB above 4 GiB, linked into free PDPT slots. At CPL0
 * this loop is slow on hosts that emulate CPL0 (~1 ms per GiB), which is
 * why the runtime's own 4 GiB are static data.
 */
static u64 map_ram_above_4g(u64 end)
{
    u64 gibs = (end + GiB - 1) / GiB;
    if (gibs > MAP_LIMIT_GIB)
        gibs = MAP_LIMIT_GIB;
    for (u64 g = 4; g < gibs; g++) {
        u64 *pd = high_pds[g - 4];
        for (u64 i = 0; i < 512; i++)
            pd[i] = (g << 30 | i << 21) | 0x87; /* P | RW | US | PS */
        pdpt[g] = (u64)pd | 0x7;
    }
    write_cr3((u64)pml4); /* not needed for new mappings; cheap insurance */
    return gibs > 4 ? gibs * GiB : 4 * GiB;
}

/* Calls fn(page) for each page to test; stops early if fn returns nonzero. */
static u64 for_each_page(int (*fn)(u64 page))
{
    u64 image_lo = (u64)__image_start, image_hi = (u64)__image_end, count = 0;
    for (int i = 0; i < nmap; i++) {
        if (map[i].type != 1)
            continue;
        u64 lo = (map[i].addr + PAGE - 1) & ~(PAGE - 1);
        u64 hi = (map[i].addr + map[i].size) & ~(PAGE - 1);
        if (lo < LOW_LIMIT)
            lo = LOW_LIMIT;
        if (hi > high_limit)
            hi = high_limit;
        for (u64 p = lo; p < hi; p += PAGE) {
            if (p >= image_lo && p < image_hi)
                continue;
            if (fn(p))
                return count;
            count++;
        }
    }
    return count;
}

static int write_page(u64 page)
{
    volatile u64 *w = (volatile u64 *)page;
    for (u64 i = 0; i < PAGE / 8; i++)
        w[i] = (page + 8 * i) ^ PATTERN;
    return 0;
}

static int check_page(u64 page)
{
    volatile u64 *w = (volatile u64 *)page;
    for (u64 i = 0; i < PAGE / 8; i++) {
        u64 want = (page + 8 * i) ^ PATTERN, got = w[i];
        if (got != want) {
            printf("memory: mismatch at 0x%lx: wrote 0x%lx, read 0x%lx\n", page + 8 * i, want, got);
            exit(2);
        }
    }
    return 0;
}

static void test_user(void)
{
    u64 above = 0;
    for (int i = 0; i < nmap; i++)
        if (map[i].type == 1 && map[i].addr + map[i].size > high_limit)
            above += map[i].addr + map[i].size - (map[i].addr > high_limit ? map[i].addr : high_limit);
    if (above)
        printf("memory: not testing %lu bytes above %lu GiB (not mapped)\n", above, high_limit / GiB);
    for_each_page(write_page);
    u64 pages = for_each_page(check_page);
    printf("memory: verified %lu pages\n", pages);
    exit(0);
}

int main(void)
{
    int n = boot_memmap(map, MAX_RANGES);
    if (n > MAX_RANGES) {
        printf("memory: %d entries, using the first %d\n", n, MAX_RANGES);
        n = MAX_RANGES;
    }
    nmap = n;
    if (!n) {
        puts("memory: no memory map\n");
        return 2;
    }
    u64 total = 0, ram_end = 0;
    for (int i = 0; i < n; i++) {
        printf("e820 0x%lx 0x%lx %u\n", map[i].addr, map[i].size, map[i].type);
        if (map[i].type == 1) {
            total += map[i].size;
            if (map[i].addr + map[i].size > ram_end)
                ram_end = map[i].addr + map[i].size;
        }
    }
    printf("memory: total %lu bytes\n", total);
    high_limit = map_ram_above_4g(ram_end);
    enter_user(test_user);
}
