/*
 * virtio-balloon: give memory back to the host and take it again
 * (VIRTIO 1.2 section 5.5).
 *
 * The pool is the RAM above the guest image (from the memory map, minus
 * 1 MiB at the top). Every pool page is written first, so the host really
 * backs it (its RSS rises). Then the guest follows the device's target
 * (config num_pages): it inflates by sending page frame numbers (4 KiB
 * pages, 32-bit PFNs, at most 256 per buffer) through the inflateq, deflates
 * through the deflateq, and writes `actual` after each change. The first
 * time a nonzero target is reached it prints "balloon: DONE" and keeps
 * following the target; once the target is back to 0 (and the pages are
 * deflated) it writes to every returned page, checks it reads back and
 * exits. Between checks it halts; a LAPIC timer (100 Hz) wakes it up, so
 * this guest runs at CPL0 (halting needs it).
 *
 * Command-line words: timeout=<s> (give up after s seconds, default 60),
 * transport=mmio|pci.
 *
 * Output:  balloon: using <where>
 *          balloon: pool <n> pages at 0x<addr>
 *          balloon: touched <n> pages
 *          balloon: target <n> pages               (whenever it changes)
 *          balloon: actual <n> pages               (after each change)
 *          balloon: DONE                           (first nonzero target reached)
 *          balloon: verified <n> returned pages
 *          balloon: PASS                           exit 0
 *          balloon: FAIL <why>                     exit 12
 */
#include "virtio/virtio.h"

#define FAIL_CODE 12

#define VIRTIO_BALLOON_F_MUST_TELL_HOST (1UL << 0)
#define CFG_NUM_PAGES 0
#define CFG_ACTUAL 4
#define INFLATEQ 0
#define DEFLATEQ 1
#define PAGE 4096UL
#define BATCH 256
#define VEC_TIMER 0x40
#define VEC_SPURIOUS 0xff
#define HZ 100

static struct virtio_dev *dev;
static struct virtq *infq, *defq;
static u64 pool_start, pool_pages;
static u32 actual; /* pages in the balloon: pool pages [0, actual) */
static u32 pfns[BATCH];
static volatile u32 ticks;

static void fail(const char *why)
{
    printf("balloon: FAIL %s\n", why);
    exit(FAIL_CODE);
}

static void on_timer(struct intr_frame *f)
{
    (void)f;
    ticks++;
    lapic_write(LAPIC_EOI, 0);
}

static void on_spurious(struct intr_frame *f) { (void)f; }

/* Send pages [from, from + n) of the pool through q, BATCH at a time. */
static void send_pfns(struct virtq *q, u64 from, u64 n)
{
    while (n) {
        u32 k = n < BATCH ? n : BATCH;
        for (u32 i = 0; i < k; i++)
            pfns[i] = (pool_start + (from + i) * PAGE) >> 12;
        struct vbuf b = {pfns, k * 4, 0};
        if (virtq_add(q, &b, 1, pfns) < 0)
            fail("queue full");
        virtq_kick(q);
        if (virtq_wait(q, NULL, 5000) != pfns)
            fail("timeout waiting for the device to take page numbers");
        from += k;
        n -= k;
    }
}

static void follow(u32 target)
{
    if (target > pool_pages)
        target = pool_pages;
    if (target > actual)
        send_pfns(infq, actual, target - actual);
    else if (target < actual)
        send_pfns(defq, target, actual - target);
    else
        return;
    actual = target;
    virtio_cfg_write32(dev, CFG_ACTUAL, actual);
    printf("balloon: actual %u pages\n", actual);
}

static void find_pool(void)
{
    struct mem_range map[64];
    int n = boot_memmap(map, 64);
    u64 lo = ((u64)__image_end + PAGE - 1) & ~(PAGE - 1);
    for (int i = 0; i < n && i < 64; i++) {
        u64 end = map[i].addr + map[i].size;
        if (map[i].type != 1 || lo < map[i].addr || lo >= end)
            continue;
        if (end > (4UL << 30))
            end = 4UL << 30; /* the runtime maps 4 GiB */
        end = (end & ~(PAGE - 1)) - (1UL << 20);
        if (end > lo) {
            pool_start = lo;
            pool_pages = (end - lo) / PAGE;
        }
    }
    if (!pool_pages)
        fail("no RAM above the guest image in the memory map");
}

int main(void)
{
    u32 timeout = cmdline_num("timeout", 60);
    virtio_platform_init();
    dev = virtio_find(VIRTIO_ID_BALLOON);
    if (!dev)
        fail("no virtio-balloon device");
    printf("balloon: using %s\n", dev->where);
    find_pool();
    printf("balloon: pool %lu pages at 0x%lx\n", pool_pages, pool_start);
    for (u64 p = 0; p < pool_pages; p++)
        *(volatile u64 *)(pool_start + p * PAGE) = p;
    printf("balloon: touched %lu pages\n", pool_pages);

    if (!virtio_start(dev, VIRTIO_BALLOON_F_MUST_TELL_HOST))
        fail("device initialisation");
    infq = virtio_queue_setup(dev, INFLATEQ, 0);
    defq = virtio_queue_setup(dev, DEFLATEQ, 0);
    if (!infq || !defq)
        fail("queue setup");
    virtio_driver_ok(dev);

    irq_register(VEC_TIMER, on_timer);
    irq_register(VEC_SPURIOUS, on_spurious);
    lapic_write(LAPIC_SVR, 0x100 | VEC_SPURIOUS);
    lapic_write(LAPIC_TIMER_DIV, 0x3); /* divide by 16 */
    lapic_write(LAPIC_LVT_TIMER, VEC_TIMER | (1 << 17)); /* periodic */
    lapic_write(LAPIC_TIMER_INIT, 1000000000 / 16 / HZ); /* KVM: 1 GHz APIC bus */

    u32 last_target = 0xffffffff;
    int done = 0;
    for (;;) {
        u32 target = virtio_cfg_read32(dev, CFG_NUM_PAGES);
        if (target != last_target) {
            printf("balloon: target %u pages\n", target);
            last_target = target;
        }
        follow(target);
        if (target && actual == (target > pool_pages ? pool_pages : target) && !done) {
            puts("balloon: DONE\n");
            done = 1;
        }
        if (done && !target && !actual)
            break;
        if (virtio_get_status(dev) & VIRTIO_STATUS_NEEDS_RESET)
            fail("device needs reset");
        if (ticks >= timeout * HZ)
            fail(done ? "timeout waiting for the target to return to 0" : "timeout waiting for a target");
        __asm__ volatile("sti; hlt; cli" ::: "memory");
    }
    lapic_write(LAPIC_LVT_TIMER, VEC_TIMER | (1 << 16));
    /* every page given back must be usable again */
    for (u64 p = 0; p < pool_pages; p++)
        *(volatile u64 *)(pool_start + p * PAGE + 8) = p ^ 0x6a09e667f3bcc908UL;
    for (u64 p = 0; p < pool_pages; p++)
        if (*(volatile u64 *)(pool_start + p * PAGE + 8) != (p ^ 0x6a09e667f3bcc908UL))
            fail("a returned page does not hold what was written");
    printf("balloon: verified %lu returned pages\n", pool_pages);
    puts("balloon: PASS\n");
    return 0;
}
