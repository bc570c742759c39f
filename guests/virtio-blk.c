/*
 * virtio-blk: a block device from the inside (VIRTIO 1.2 section 5.2).
 *
 * Reads the capacity, asks for the serial (GET_ID), writes a pattern over
 * the first N sectors (several requests in flight, one data buffer each),
 * flushes (if VIRTIO_BLK_F_FLUSH), reads it all back (through indirect
 * descriptors with the data split in four buffers when
 * VIRTIO_F_INDIRECT_DESC was negotiated) and compares. A read past the end
 * must fail. On a read-only device (VIRTIO_BLK_F_RO) it only reads the N
 * sectors and prints their FNV-1a hash; with the word "try-write" it then
 * tries a write anyway, which must fail with IOERR.
 *
 * Pattern: 8-byte little-endian word j (0..63) of sector s is
 *   seed << 32 | s << 8 | j
 * Command-line words: sectors=<n> (default 256, at most 2048 and the
 * capacity), seed=<n> (32-bit, default 0x5eed0001), transport=mmio|pci.
 *
 * Output:  blk: using <where>
 *          blk: capacity <sectors> sectors
 *          blk: features 0x<negotiated>
 *          blk: serial <text>            ("blk: serial unsupported" on UNSUPP)
 *          blk: wrote <n> sectors
 *          blk: flushed                  (only with VIRTIO_BLK_F_FLUSH)
 *          blk: verified <n> sectors
 *          blk: read past end: status <s>
 *          blk: read-only, <n> sectors fnv1a 0x<hash>   (read-only device)
 *          blk: write to read-only device: status <s>   (read-only + try-write)
 *          blk: PASS                     exit 0
 *          blk: FAIL <why>               exit 8
 */
#include "virtio/virtio.h"

#define FAIL_CODE 8

/* device-specific (5.2.3, 5.2.4, 5.2.6) */
#define VIRTIO_BLK_F_SIZE_MAX (1UL << 1)
#define VIRTIO_BLK_F_SEG_MAX (1UL << 2)
#define VIRTIO_BLK_F_RO (1UL << 5)
#define VIRTIO_BLK_F_BLK_SIZE (1UL << 6)
#define VIRTIO_BLK_F_FLUSH (1UL << 9)
#define CFG_CAPACITY 0
#define CFG_SEG_MAX 12
#define CFG_BLK_SIZE 20
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2

#define SECTOR 512
#define MAX_SECTORS 2048
#define CHUNK 8 /* sectors per write request */
#define MAX_REQS 64

struct req {
    struct {
        u32 type;
        u32 reserved;
        u64 sector;
    } hdr;
    u8 status;
};

static struct virtio_dev *dev;
static struct virtq *vq;
static u64 capacity, nsect, seed;
static int use_indirect, seg_max = 1;
static struct req reqs[MAX_REQS];
static u8 data[MAX_SECTORS * SECTOR] __attribute__((aligned(4096)));
static u8 small[SECTOR] __attribute__((aligned(512)));
static char id[21];

static void fail(const char *why)
{
    printf("blk: FAIL %s\n", why);
    exit(FAIL_CODE);
}

/* One request, waited for; returns its status (0xff: the device never
 * wrote it). */
static u8 do_request(u32 type, u64 sector, void *buf, u32 len, int writable)
{
    struct req *r = &reqs[0];
    r->hdr.type = type;
    r->hdr.reserved = 0;
    r->hdr.sector = sector;
    r->status = 0xff;
    struct vbuf b[3] = {{&r->hdr, sizeof(r->hdr), 0}};
    int n = 1;
    if (len)
        b[n++] = (struct vbuf){buf, len, writable ? VBUF_WRITE : 0};
    b[n++] = (struct vbuf){&r->status, 1, VBUF_WRITE};
    if (virtq_add(vq, b, n, r) < 0)
        fail("queue full");
    virtq_kick(vq);
    if (virtq_wait(vq, NULL, 5000) != r)
        fail("timeout waiting for a request");
    return r->status;
}

/* Run requests over sectors [0, nsect), `per` sectors each, as many in
 * flight as the queue and the request table allow. */
static u32 busy[MAX_REQS]; /* sectors of the request in this slot, 0: free */

static void transfer(u32 type, u32 per)
{
    u64 next = 0, done = 0;
    while (done < nsect) {
        int submitted = 0;
        for (int slot = 0; slot < MAX_REQS && next < nsect; slot++) {
            if (busy[slot])
                continue;
            u32 count = nsect - next < per ? nsect - next : per;
            struct req *r = &reqs[slot];
            r->hdr.type = type;
            r->hdr.reserved = 0;
            r->hdr.sector = next;
            r->status = 0xff;
            u8 *buf = data + next * SECTOR;
            u32 wr = type == VIRTIO_BLK_T_IN ? VBUF_WRITE : 0;
            struct vbuf b[6];
            int n = 0;
            b[n++] = (struct vbuf){&r->hdr, sizeof(r->hdr), 0};
            if (use_indirect && seg_max >= 4 && count % 4 == 0) {
                u32 part = count / 4 * SECTOR;
                for (int k = 0; k < 4; k++)
                    b[n++] = (struct vbuf){buf + k * part, part, wr};
            } else {
                b[n++] = (struct vbuf){buf, count * SECTOR, wr};
            }
            b[n++] = (struct vbuf){&r->status, 1, VBUF_WRITE};
            int head = use_indirect ? virtq_add_indirect(vq, b, n, r) : virtq_add(vq, b, n, r);
            if (head < 0)
                break; /* ring full: reap first */
            busy[slot] = count;
            next += count;
            submitted++;
        }
        if (submitted)
            virtq_kick(vq);
        struct req *r = virtq_wait(vq, NULL, 5000);
        if (!r)
            fail("timeout waiting for requests");
        int slot = r - reqs;
        if (r->status != VIRTIO_BLK_S_OK) {
            printf("blk: request for sector %lu: status %u\n", r->hdr.sector, r->status);
            fail("I/O error");
        }
        done += busy[slot];
        busy[slot] = 0;
    }
}

static void fill_pattern(void)
{
    for (u64 s = 0; s < nsect; s++) {
        u64 *w = (u64 *)(data + s * SECTOR);
        for (u64 j = 0; j < SECTOR / 8; j++)
            w[j] = seed << 32 | s << 8 | j;
    }
}

static void check_pattern(void)
{
    for (u64 s = 0; s < nsect; s++) {
        u64 *w = (u64 *)(data + s * SECTOR);
        for (u64 j = 0; j < SECTOR / 8; j++)
            if (w[j] != (seed << 32 | s << 8 | j)) {
                printf("blk: sector %lu word %lu: read 0x%lx, wrote 0x%lx\n", s, j, w[j], seed << 32 | s << 8 | j);
                fail("data mismatch");
            }
    }
}

static u64 fnv1a(const u8 *p, u64 n)
{
    u64 h = 0xcbf29ce484222325UL;
    for (u64 i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3UL;
    return h;
}

static void user(void)
{
    u64 f = virtio_start(dev, VIRTIO_F_INDIRECT_DESC | VIRTIO_BLK_F_RO | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_BLK_SIZE |
                                  VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_SIZE_MAX);
    if (!f)
        fail("device initialisation");
    vq = virtio_queue_setup(dev, 0, 0);
    if (!vq)
        fail("queue setup");
    virtio_driver_ok(dev);
    capacity = virtio_cfg_read64(dev, CFG_CAPACITY);
    printf("blk: capacity %lu sectors\n", capacity);
    printf("blk: features 0x%lx\n", f);
    if (f & VIRTIO_BLK_F_BLK_SIZE)
        printf("blk: block size %u\n", virtio_cfg_read32(dev, CFG_BLK_SIZE));
    use_indirect = !!(f & VIRTIO_F_INDIRECT_DESC);
    seg_max = f & VIRTIO_BLK_F_SEG_MAX ? (int)virtio_cfg_read32(dev, CFG_SEG_MAX) : 1 << 30;

    /* GET_ID: 20 bytes, NUL-padded if shorter */
    memset(id, 0, sizeof(id));
    u8 st = do_request(VIRTIO_BLK_T_GET_ID, 0, id, 20, 1);
    if (st == VIRTIO_BLK_S_OK) {
        for (int i = 0; i < 20; i++)
            if (id[i] && (id[i] < 32 || id[i] > 126))
                id[i] = '?';
        printf("blk: serial %s\n", id);
    } else if (st == VIRTIO_BLK_S_UNSUPP) {
        puts("blk: serial unsupported\n");
    } else {
        printf("blk: GET_ID status %u\n", st);
        fail("GET_ID");
    }

    nsect = cmdline_num("sectors", 256);
    seed = cmdline_num("seed", 0x5eed0001) & 0xffffffff;
    if (nsect > MAX_SECTORS)
        nsect = MAX_SECTORS;
    if (nsect > capacity)
        nsect = capacity;
    if (!nsect)
        fail("no sectors to test");

    if (f & VIRTIO_BLK_F_RO) {
        transfer(VIRTIO_BLK_T_IN, 16);
        printf("blk: read-only, %lu sectors fnv1a 0x%016lx\n", nsect, fnv1a(data, nsect * SECTOR));
        if (cmdline_has("try-write")) {
            memset(small, 0xa5, SECTOR);
            st = do_request(VIRTIO_BLK_T_OUT, 0, small, SECTOR, 0);
            printf("blk: write to read-only device: status %u\n", st);
            if (st != VIRTIO_BLK_S_IOERR)
                fail("write to a read-only device did not fail with IOERR");
        }
    } else {
        fill_pattern();
        transfer(VIRTIO_BLK_T_OUT, CHUNK);
        printf("blk: wrote %lu sectors\n", nsect);
        if (f & VIRTIO_BLK_F_FLUSH) {
            st = do_request(VIRTIO_BLK_T_FLUSH, 0, NULL, 0, 0);
            if (st != VIRTIO_BLK_S_OK) {
                printf("blk: flush status %u\n", st);
                fail("flush");
            }
            puts("blk: flushed\n");
        }
        memset(data, 0, nsect * SECTOR);
        transfer(VIRTIO_BLK_T_IN, 16);
        check_pattern();
        printf("blk: verified %lu sectors\n", nsect);
    }

    st = do_request(VIRTIO_BLK_T_IN, capacity, small, SECTOR, 1);
    printf("blk: read past end: status %u\n", st);
    if (st == VIRTIO_BLK_S_OK || st == 0xff)
        fail("a read past the end did not fail");
    if (virtio_get_status(dev) & VIRTIO_STATUS_NEEDS_RESET)
        fail("device needs reset");
    puts("blk: PASS\n");
    exit(0);
}

int main(void)
{
    virtio_platform_init();
    dev = virtio_find(VIRTIO_ID_BLOCK);
    if (!dev)
        fail("no virtio-blk device");
    printf("blk: using %s\n", dev->where);
    enter_user(user);
}
