/*
 * virtio-fuzz: malformed virtqueues against every virtio device found; the
 * VMM must survive them all and every device must still work afterwards.
 *
 * For each device (both transports) and each case below, the guest brings
 * the device up (VERSION_1 and INDIRECT_DESC if offered, every queue up to
 * 4 with 32 entries, DRIVER_OK), plants the malformed chain in the queue
 * the device consumes on a notification (net, console, vsock: 1, others:
 * 0), kicks, and watches for up to 200 ms:
 *   needs-reset  the device set DEVICE_NEEDS_RESET (0x40) in its status
 *   used         it returned the chain (fine for requests that are merely
 *                wrong, e.g. a read past the end; the line shows len and,
 *                for virtio-blk, the status byte)
 *   ignored      nothing happened
 * A used element whose id is outside the queue is a failure. Then the
 * device is reset (its status must read 0). After all cases, the device is
 * brought up properly and must do real work: blk reads sector 0, rng gives
 * bytes, net/console/vsock send a packet, balloon takes and returns a page.
 * Serial output all along shows the VMM is alive. With the command-line
 * word "strict", every structurally broken case (bad index, loop, bad
 * indirect table, address outside RAM, bad ring set-up) must end in
 * needs-reset: "used" or "ignored" is then a failure (the spec only says a
 * device MAY set NEEDS_RESET; QEMU, for one, often just drops the chain).
 *
 * Output:  fuzz: <where> <dev> <case>: needs-reset|used len=<n> [status=<s>]|ignored
 *          fuzz: <where> <dev> works after <n> cases
 *          virtio-fuzz: <cases> cases on <devices> devices, VMM alive
 *          virtio-fuzz: PASS                  exit 0
 *          virtio-fuzz: FAIL <why>            exit 13
 * Command-line words: transport=mmio|pci, strict, only=<case name>,
 * skip=<case name> or skip=<type>:<case name> (any number; QEMU 7.2's
 * virtio-net aborts on tx-tiny with a backend without vnet headers).
 */
#include "virtio/virtio.h"

#define FAIL_CODE 13
#define QSIZE 32 /* entries asked for; q->size is what the device allowed */
#define WATCH_MS 200

#define HUGE_ADDR 0xffffffffffff0000UL
#define WRAP_ADDR 0xfffffffffffffff0UL
#define IOAPIC_ADDR 0xfec00000UL

static struct virtio_dev *dev;
static struct virtq *q; /* the queue under test */
static u64 ram_end;
static u8 scratch[64 * 1024] __attribute__((aligned(4096)));
static struct virtq_desc table[2][64] __attribute__((aligned(16)));
static u8 balloon_page[4096] __attribute__((aligned(4096)));
static u32 balloon_pfn;
static int strict, total_cases;
static char only[32];

static void fail(const char *why)
{
    printf("virtio-fuzz: FAIL %s\n", why);
    exit(FAIL_CODE);
}

/* ---- planting chains ----------------------------------------------------- */

static void setd(int i, u64 addr, u32 len, u16 flags, u16 next)
{
    q->desc[i] = (struct virtq_desc){addr, len, flags, next};
}

static void offer(u16 head)
{
    q->avail->ring[q->avail_idx % q->size] = head;
    barrier();
    q->avail->idx = ++q->avail_idx;
    barrier();
}

static u8 *S(u32 off) { return scratch + off; }
#define A(p) ((u64)(p))

/* A plausible request layout for the device type, so that the device gets
 * past its own parsing to the broken part: readable header + writable tail. */
static void plain_request(int head)
{
    setd(head, A(S(0)), 16, VIRTQ_DESC_F_NEXT, head + 1);
    setd(head + 1, A(S(4096)), 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, head + 2);
    setd(head + 2, A(S(8192)), 1, VIRTQ_DESC_F_WRITE, 0);
}

/* ---- the cases ----------------------------------------------------------- */

/* structural: a device that uses these processed garbage */
#define STRUCT 1
/* sets up the queue itself (raw addresses) */
#define RAW 2
/* only for some device types */
#define ONLY_BLK 4
#define ONLY_TX 8 /* net, vsock, console */

static void c_head_out_of_range(void) { offer(q->size + 7); }
static void c_head_max(void) { offer(0xffff); }
static void c_next_out_of_range(void)
{
    setd(0, A(S(0)), 16, VIRTQ_DESC_F_NEXT, q->size + 3);
    offer(0);
}
static void c_next_loop(void)
{
    setd(0, A(S(0)), 16, VIRTQ_DESC_F_NEXT, 1);
    setd(1, A(S(64)), 16, VIRTQ_DESC_F_NEXT, 0);
    offer(0);
}
static void c_self_loop(void)
{
    setd(0, A(S(0)), 16, VIRTQ_DESC_F_NEXT, 0);
    offer(0);
}
static void c_long_loop(void)
{
    for (int i = 0; i < q->size; i++)
        setd(i, A(S(64 * i)), 64, VIRTQ_DESC_F_NEXT, (i + 1) % q->size);
    offer(0);
}
static void c_indirect_bad_len(void)
{
    memset(table, 0, sizeof(table));
    table[0][0] = (struct virtq_desc){A(S(0)), 16, 0, 0};
    setd(0, A(table[0]), 17, VIRTQ_DESC_F_INDIRECT, 0);
    offer(0);
}
static void c_indirect_zero_len(void)
{
    setd(0, A(table[0]), 0, VIRTQ_DESC_F_INDIRECT, 0);
    offer(0);
}
static void c_indirect_nested(void)
{
    table[1][0] = (struct virtq_desc){A(S(0)), 16, 0, 0};
    table[0][0] = (struct virtq_desc){A(table[1]), 16, VIRTQ_DESC_F_INDIRECT, 0};
    setd(0, A(table[0]), 16, VIRTQ_DESC_F_INDIRECT, 0);
    offer(0);
}
static void c_indirect_and_next(void)
{
    table[0][0] = (struct virtq_desc){A(S(0)), 16, 0, 0};
    setd(0, A(table[0]), 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1);
    setd(1, A(S(64)), 16, 0, 0);
    offer(0);
}
static void c_indirect_next_out_of_range(void)
{
    table[0][0] = (struct virtq_desc){A(S(0)), 16, VIRTQ_DESC_F_NEXT, 5};
    table[0][1] = (struct virtq_desc){A(S(64)), 16, 0, 0};
    setd(0, A(table[0]), 32, VIRTQ_DESC_F_INDIRECT, 0);
    offer(0);
}
static void c_indirect_loop(void)
{
    table[0][0] = (struct virtq_desc){A(S(0)), 16, VIRTQ_DESC_F_NEXT, 1};
    table[0][1] = (struct virtq_desc){A(S(64)), 16, VIRTQ_DESC_F_NEXT, 0};
    setd(0, A(table[0]), 32, VIRTQ_DESC_F_INDIRECT, 0);
    offer(0);
}
static void c_indirect_huge_table(void)
{
    setd(0, A(table[0]), 0xfffffff0, VIRTQ_DESC_F_INDIRECT, 0);
    offer(0);
}
static void c_indirect_table_at_huge_address(void)
{
    setd(0, HUGE_ADDR, 64, VIRTQ_DESC_F_INDIRECT, 0);
    offer(0);
}
static void c_buffer_at_huge_address(void)
{
    plain_request(0);
    q->desc[0].addr = HUGE_ADDR;
    q->desc[1].addr = HUGE_ADDR + 0x1000;
    offer(0);
}
static void c_buffer_wraps(void)
{
    plain_request(0);
    q->desc[0].addr = WRAP_ADDR;
    q->desc[0].len = 0x100;
    offer(0);
}
static void c_buffer_in_mmio_hole(void)
{
    plain_request(0);
    q->desc[1].addr = IOAPIC_ADDR;
    q->desc[1].len = 4096;
    offer(0);
}
static void c_buffer_past_ram_end(void)
{
    plain_request(0);
    q->desc[1].addr = ram_end - 16;
    q->desc[1].len = 4096;
    offer(0);
}
static void c_huge_length(void)
{
    setd(0, A(S(0)), 0xffffffff, VIRTQ_DESC_F_NEXT, 1);
    setd(1, A(S(8192)), 1, VIRTQ_DESC_F_WRITE, 0);
    offer(0);
}
static void c_writable_then_readable(void)
{
    setd(0, A(S(4096)), 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
    setd(1, A(S(0)), 16, 0, 0);
    offer(0);
}
static void c_zero_length(void)
{
    setd(0, A(S(0)), 0, 0, 0);
    offer(0);
}
static void c_avail_idx_jump(void)
{
    /* 1000 entries "available" in a ring of at most 32 */
    plain_request(0);
    for (int i = 0; i < q->size; i++)
        q->avail->ring[i] = 0;
    q->avail_idx += 1000;
    q->avail->idx = q->avail_idx;
}
static void c_duplicate_head(void)
{
    plain_request(0);
    offer(0);
    offer(0);
}
static void c_indirect_many_buffers(void)
{
    /* 64 x 64 KiB: 4 MiB of "request" in one chain */
    for (int i = 0; i < 64; i++)
        table[0][i] = (struct virtq_desc){A(scratch), sizeof(scratch), i < 63 ? VIRTQ_DESC_F_NEXT : 0, i + 1};
    setd(0, A(table[0]), sizeof(table[0]), VIRTQ_DESC_F_INDIRECT, 0);
    offer(0);
}
static void c_notify_bad_queue(void)
{
    plain_request(0);
    offer(0);
    /* kicked below with a queue index the device does not have */
}

/* RAW cases: the queue under test is programmed here */
static u64 raw_notify;
static void c_rings_at_huge_address(void)
{
    raw_notify = virtio_queue_program(dev, q->index, q->size, HUGE_ADDR, HUGE_ADDR + 0x1000, HUGE_ADDR + 0x2000);
}
static void c_used_ring_outside_ram(void)
{
    plain_request(0);
    offer(0);
    raw_notify = virtio_queue_program(dev, q->index, q->size, A(q->desc), A(q->avail), ram_end + 0x100000);
}
static void c_queue_size_not_power_of_2(void)
{
    plain_request(0);
    offer(0);
    raw_notify = virtio_queue_program(dev, q->index, 3, A(q->desc), A(q->avail), A(q->used));
}
static void c_queue_size_too_big(void)
{
    plain_request(0);
    offer(0);
    raw_notify = virtio_queue_program(dev, q->index, 0x8000, A(q->desc), A(q->avail), A(q->used));
}

/* request-level (valid chains, wrong contents) */
struct blk_hdr {
    u32 type, reserved;
    u64 sector;
};
static void blk_req(u32 type, u64 sector, u32 len, int readable_data)
{
    struct blk_hdr *h = (void *)S(0);
    h->type = type;
    h->reserved = 0;
    h->sector = sector;
    S(8192)[0] = 0xff;
    setd(0, A(h), 16, VIRTQ_DESC_F_NEXT, 1);
    setd(1, A(S(4096)), len, VIRTQ_DESC_F_NEXT | (readable_data ? 0 : VIRTQ_DESC_F_WRITE), 2);
    setd(2, A(S(8192)), 1, VIRTQ_DESC_F_WRITE, 0);
    offer(0);
}
static void c_blk_sector_overflow(void) { blk_req(0, 0xfffffffffffffff0UL, 4096, 0); }
static void c_blk_unaligned_len(void) { blk_req(0, 0, 100, 0); }
static void c_blk_bad_type(void) { blk_req(0x12345, 0, 512, 0); }
static void c_blk_short_header(void)
{
    setd(0, A(S(0)), 8, VIRTQ_DESC_F_NEXT, 1);
    setd(1, A(S(8192)), 1, VIRTQ_DESC_F_WRITE, 0);
    S(8192)[0] = 0xff;
    offer(0);
}
static void c_blk_no_writable(void)
{
    struct blk_hdr *h = (void *)S(0);
    *h = (struct blk_hdr){0, 0, 0};
    setd(0, A(h), 16, VIRTQ_DESC_F_NEXT, 1);
    setd(1, A(S(4096)), 512, 0, 0);
    offer(0);
}
static void c_tx_tiny(void)
{
    setd(0, A(S(0)), 4, 0, 0);
    offer(0);
}
static void c_tx_oversize(void)
{
    /* 17 x 4 KiB (if the ring is that long; else indirect): more than
     * any frame or packet may be */
    if (q->size < 17) {
        for (int i = 0; i < 17; i++)
            table[0][i] = (struct virtq_desc){A(S(4096 * (i % 16))), 4096, i < 16 ? VIRTQ_DESC_F_NEXT : 0, i + 1};
        setd(0, A(table[0]), 17 * 16, VIRTQ_DESC_F_INDIRECT, 0);
        offer(0);
        return;
    }
    for (int i = 0; i < 17; i++)
        setd(i, A(S(4096 * (i % 16))), 4096, i < 16 ? VIRTQ_DESC_F_NEXT : 0, i + 1);
    offer(0);
}
static void c_tx_len_mismatch(void)
{
    /* vsock: a header claiming 4096 payload bytes with 10 behind it; net:
     * a header and a 10-byte frame */
    memset(S(0), 0, 64);
    *(u32 *)S(24) = 4096; /* virtio_vsock_hdr.len */
    *(u16 *)S(28) = 1;    /* type STREAM */
    *(u16 *)S(30) = 5;    /* op RW */
    setd(0, A(S(0)), 44, VIRTQ_DESC_F_NEXT, 1);
    setd(1, A(S(4096)), 10, 0, 0);
    offer(0);
}

struct fcase {
    const char *name;
    void (*plant)(void);
    int flags;
};

static const struct fcase cases[] = {
    {"head-out-of-range", c_head_out_of_range, STRUCT},
    {"head-0xffff", c_head_max, STRUCT},
    {"next-out-of-range", c_next_out_of_range, STRUCT},
    {"next-loop", c_next_loop, STRUCT},
    {"self-loop", c_self_loop, STRUCT},
    {"chain-loop-whole-ring", c_long_loop, STRUCT},
    {"indirect-bad-len", c_indirect_bad_len, STRUCT},
    {"indirect-zero-len", c_indirect_zero_len, STRUCT},
    {"indirect-nested", c_indirect_nested, STRUCT},
    {"indirect-with-next", c_indirect_and_next, STRUCT},
    {"indirect-next-out-of-range", c_indirect_next_out_of_range, STRUCT},
    {"indirect-loop", c_indirect_loop, STRUCT},
    {"indirect-huge-table", c_indirect_huge_table, STRUCT},
    {"indirect-table-at-huge-address", c_indirect_table_at_huge_address, STRUCT},
    {"buffer-at-huge-address", c_buffer_at_huge_address, STRUCT},
    {"buffer-wraps-address-space", c_buffer_wraps, STRUCT},
    {"buffer-in-mmio-hole", c_buffer_in_mmio_hole, STRUCT},
    {"buffer-past-ram-end", c_buffer_past_ram_end, STRUCT},
    {"huge-length", c_huge_length, STRUCT},
    {"writable-then-readable", c_writable_then_readable, 0},
    {"zero-length", c_zero_length, 0},
    {"avail-idx-jump", c_avail_idx_jump, STRUCT},
    {"duplicate-head", c_duplicate_head, 0},
    {"indirect-4MiB-chain", c_indirect_many_buffers, 0},
    {"notify-bad-queue", c_notify_bad_queue, 0},
    {"rings-at-huge-address", c_rings_at_huge_address, STRUCT | RAW},
    {"used-ring-outside-ram", c_used_ring_outside_ram, STRUCT | RAW},
    {"queue-size-3", c_queue_size_not_power_of_2, STRUCT | RAW},
    {"queue-size-0x8000", c_queue_size_too_big, STRUCT | RAW},
    {"blk-sector-overflow", c_blk_sector_overflow, ONLY_BLK},
    {"blk-unaligned-len", c_blk_unaligned_len, ONLY_BLK},
    {"blk-bad-type", c_blk_bad_type, ONLY_BLK},
    {"blk-short-header", c_blk_short_header, ONLY_BLK},
    {"blk-no-writable-buffer", c_blk_no_writable, ONLY_BLK},
    {"tx-tiny", c_tx_tiny, ONLY_TX},
    {"tx-oversize", c_tx_oversize, ONLY_TX},
    {"tx-len-mismatch", c_tx_len_mismatch, ONLY_TX},
};

/* ---- running them ---------------------------------------------------------- */

static int test_queue(struct virtio_dev *d)
{
    u32 t = d->device_id;
    return t == VIRTIO_ID_NET || t == VIRTIO_ID_CONSOLE || t == VIRTIO_ID_VSOCK ? 1 : 0;
}

/* Start the device with every queue (up to 4); returns the one under test. */
static struct virtq *bring_up(struct virtio_dev *d)
{
    if (!virtio_start(d, VIRTIO_F_INDIRECT_DESC))
        return NULL;
    int tq = test_queue(d), n = d->nqueues < VIRTIO_MAX_QUEUES ? d->nqueues : VIRTIO_MAX_QUEUES;
    struct virtq *t = NULL;
    for (int i = 0; i < n; i++) {
        /* RAW cases reprogram the queue under test afterwards (still
         * before DRIVER_OK) */
        struct virtq *vq = virtio_queue_setup(d, i, QSIZE);
        if (!vq)
            return NULL;
        if (i == tq)
            t = vq;
    }
    if (t && t->size < 4) {
        printf("fuzz: %s: queue %d has only %u entries\n", d->where, tq, t->size);
        return NULL;
    }
    return t;
}

static void run_case(const struct fcase *c)
{
    q = bring_up(dev);
    if (!q)
        fail("device did not come up before a case");
    raw_notify = 0;
    memset(scratch, 0, 16384);
    c->plant();
    virtio_driver_ok(dev);
    if (c->plant == c_notify_bad_queue) {
        if (dev->transport == VIRTIO_MMIO)
            mmio_write32(q->notify, 1000);
        else
            mmio_write16(q->notify, 1000);
    } else if (raw_notify) {
        if (dev->transport == VIRTIO_MMIO)
            mmio_write32(raw_notify, q->index);
        else
            mmio_write16(raw_notify, q->index);
    } else {
        virtq_kick(q);
    }
    /* watch */
    u64 end = deadline_ms(WATCH_MS);
    const char *outcome = "ignored";
    int used = 0;
    u32 used_id = 0, used_len = 0;
    while (!expired(end)) {
        if (*(volatile u16 *)&q->used->idx != 0) {
            used = 1;
            used_id = ((volatile struct virtq_used_elem *)q->used->ring)[0].id;
            used_len = ((volatile struct virtq_used_elem *)q->used->ring)[0].len;
            outcome = "used";
            break;
        }
        if (virtio_get_status(dev) & VIRTIO_STATUS_NEEDS_RESET) {
            outcome = "needs-reset";
            break;
        }
        delay_ms(1);
    }
    printf("fuzz: %s %s %s: %s", dev->where, virtio_type_name(dev->device_id), c->name, outcome);
    if (used) {
        printf(" len=%u", used_len);
        if (dev->device_id == VIRTIO_ID_BLOCK)
            printf(" status=%u", S(8192)[0]);
    }
    putc('\n');
    total_cases++;
    if (used && used_id >= q->size) {
        printf("fuzz: used id %u in a %u-entry queue\n", used_id, q->size);
        fail("device returned an id outside the queue");
    }
    if (strict && (c->flags & STRUCT) && outcome[0] != 'n')
        fail("a structurally broken case did not set NEEDS_RESET (strict)");
    if (virtio_get_status(dev) & VIRTIO_STATUS_FAILED)
        fail("device status shows FAILED");
    if (virtio_reset(dev))
        fail("device status did not return to 0 after a reset");
}

/* After the cases: one real request must work. */
static void works(void)
{
    q = bring_up(dev);
    if (!q)
        fail("device did not come up after the cases");
    virtio_driver_ok(dev);
    u8 *st = S(8192);
    u32 len;
    memset(scratch, 0, 16384);
    struct vbuf b[3];
    int n = 0;
    switch (dev->device_id) {
    case VIRTIO_ID_BLOCK: {
        struct blk_hdr *h = (void *)S(0);
        *h = (struct blk_hdr){0, 0, 0};
        *st = 0xff;
        b[n++] = (struct vbuf){h, 16, 0};
        b[n++] = (struct vbuf){S(4096), 512, VBUF_WRITE};
        b[n++] = (struct vbuf){st, 1, VBUF_WRITE};
        break;
    }
    case VIRTIO_ID_RNG:
        b[n++] = (struct vbuf){S(4096), 16, VBUF_WRITE};
        break;
    case VIRTIO_ID_NET: {
        /* virtio_net_hdr (zero) + a broadcast frame to nobody */
        u8 *f = S(4096);
        memset(f, 0xff, 6);
        f[6] = 0x52, f[7] = 0x54, f[11] = 0x01;
        f[12] = 0x88, f[13] = 0xb5; /* local experimental ethertype */
        b[n++] = (struct vbuf){S(0), 12, 0};
        b[n++] = (struct vbuf){f, 60, 0};
        break;
    }
    case VIRTIO_ID_CONSOLE:
        b[n++] = (struct vbuf){"virtio-fuzz\n", 12, 0};
        break;
    case VIRTIO_ID_VSOCK: {
        /* a REQUEST to host port 1 from cid (config) port 1: the device
         * takes it (and may answer with RST) */
        u64 cid = virtio_cfg_read64(dev, 0);
        memset(S(0), 0, 44);
        *(u64 *)S(0) = cid;
        *(u64 *)S(8) = 2;
        *(u32 *)S(16) = 1;
        *(u32 *)S(20) = 1;
        *(u16 *)S(28) = 1; /* STREAM */
        *(u16 *)S(30) = 1; /* REQUEST */
        b[n++] = (struct vbuf){S(0), 44, 0};
        break;
    }
    case VIRTIO_ID_BALLOON:
        b[n++] = (struct vbuf){&balloon_pfn, 4, 0};
        break;
    default:
        if (virtio_get_status(dev) & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED))
            fail("device not healthy after the cases");
        return;
    }
    if (virtq_add(q, b, n, scratch) < 0)
        fail("queue full");
    virtq_kick(q);
    if (!virtq_wait(q, &len, 2000))
        fail("device does not work after the cases");
    if (dev->device_id == VIRTIO_ID_BLOCK && *st != 0)
        fail("virtio-blk read of sector 0 failed after the cases");
    if (dev->device_id == VIRTIO_ID_BALLOON) {
        /* and take the page back */
        q = dev->vq[1];
        struct vbuf d = {&balloon_pfn, 4, 0};
        if (!q || virtq_add(q, &d, 1, scratch) < 0)
            fail("balloon deflate queue");
        virtq_kick(q);
        if (!virtq_wait(q, &len, 2000))
            fail("balloon did not return the page");
    }
    if (virtio_get_status(dev) & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED))
        fail("device not healthy after the cases");
    virtio_reset(dev);
}

/* "skip=<case>" (any number of them, or "skip=<type>:<case>" for one
 * device type, e.g. skip=net:tx-tiny). */
static int skipped(const char *name)
{
    const char *start = boot_cmdline(), *p = start;
    const char *type = virtio_type_name(dev->device_id);
    for (; *p; p++) {
        if ((p != start && p[-1] != ' ') || strncmp(p, "skip=", 5))
            continue;
        const char *v = p + 5;
        size_t tl = strlen(type);
        if (!strncmp(v, type, tl) && v[tl] == ':')
            v += tl + 1;
        size_t n = strlen(name);
        if (!strncmp(v, name, n) && (v[n] == ' ' || !v[n]))
            return 1;
    }
    return 0;
}

static void user(void)
{
    int ndev = 0;
    for (int i = 0; i < virtio_ndevs; i++) {
        dev = &virtio_devs[i];
        int ncases = 0;
        for (u32 k = 0; k < ARRAY_SIZE(cases); k++) {
            const struct fcase *c = &cases[k];
            if ((c->flags & ONLY_BLK) && dev->device_id != VIRTIO_ID_BLOCK)
                continue;
            if ((c->flags & ONLY_TX) && !test_queue(dev))
                continue;
            if (only[0] && strncmp(only, c->name, sizeof(only)))
                continue;
            if (skipped(c->name))
                continue;
            run_case(c);
            ncases++;
        }
        works();
        printf("fuzz: %s %s works after %d cases\n", dev->where, virtio_type_name(dev->device_id), ncases);
        ndev++;
    }
    if (!ndev)
        fail("no virtio devices");
    printf("virtio-fuzz: %d cases on %d devices, VMM alive\n", total_cases, ndev);
    puts("virtio-fuzz: PASS\n");
    exit(0);
}

int main(void)
{
    virtio_platform_init();
    strict = cmdline_has("strict");
    cmdline_str("only", only, sizeof(only));
    balloon_pfn = (u64)balloon_page >> 12;
    struct mem_range map[64];
    int n = boot_memmap(map, 64);
    for (int i = 0; i < n && i < 64; i++)
        if (map[i].type == 1 && map[i].addr + map[i].size > ram_end)
            ram_end = map[i].addr + map[i].size;
    if (!ram_end)
        ram_end = 64UL << 20;
    enter_user(user);
}
