/*
 * virtio-bench: how fast a VMM's virtio-blk and virtio-net devices move
 * data, measured from the inside with the guest kit's driver library, so
 * every VMM is driven by exactly the same driver.
 *
 * bench=blk (VIRTIO 1.2 section 5.2), four phases, each running for
 * `seconds` (then the requests in flight are completed and counted):
 *   seq_write   1 MiB writes at increasing offsets (wrapping at the end of
 *               the disk), `seq_qd` in flight; then one FLUSH, not timed,
 *               so the next phase does not compete with write-back
 *   seq_read    1 MiB reads, the same way
 *   rand4k_qd1  4 KiB reads at random 4 KiB-aligned offsets, one at a time
 *   rand4k_qdN  the same with `qd` requests in flight
 * Every request is one descriptor for the header, one for the data and one
 * for the status byte. Read data is not checked (virtio-blk.elf does that).
 *
 * bench=net (5.1): ARPs for the peer, then sends UDP datagrams of `size`
 * payload bytes from ip:sport to peer:port for `seconds`, keeping the
 * transmit queue full; each frame (virtio_net_hdr + Ethernet + IPv4 + UDP)
 * is one descriptor. The payload starts with a 64-bit sequence number
 * (little-endian); the UDP checksum is 0 (none, allowed over IPv4). The
 * figure that matters is what the host receives; the guest reports what
 * the device took from the queue.
 *
 * Both modes poll with interrupts suppressed (VIRTQ_AVAIL_F_NO_INTERRUPT)
 * and kick as a Linux driver without EVENT_IDX does: after a batch of new
 * buffers, unless the device set VIRTQ_USED_F_NO_NOTIFY. All of it runs at
 * CPL3 (set-up included) except discovery and the TSC calibration. A
 * used->idx further ahead than the buffers outstanding is a glitch of the
 * device (a non-atomic store of the index), not a completion: it is
 * counted (used_idx_glitches=) and read again.
 *
 * Time is the TSC. Its rate comes from kvmclock (the pvclock structure KVM
 * fills in after a write to MSR_KVM_SYSTEM_TIME_NEW: tsc_to_system_mul and
 * tsc_shift are KVM's own TSC-to-nanoseconds conversion), else from the
 * virtio library's CPUID estimate, which the output says.
 *
 * Command-line words: bench=blk|net, seconds=<n> (per phase, default 3),
 * transport=mmio|pci, and
 *   blk: qd=<n> (1..32, default 32), seq_qd=<n> (1..8, default 4),
 *        seed=<n> (random offsets)
 *   net: ip= (10.0.2.15), peer= (10.0.2.2), port= (7777), sport= (40000),
 *        size=<payload bytes> (18..1472, default 1400)
 *
 * Output:  bench: using <where>
 *          bench: tsc <khz> kHz (kvmclock|cpuid estimate)
 *          bench: <phase> <ops> requests, <bytes> bytes in <us> us
 *          bench: flush <us> us          (after seq_write, with VIRTIO_BLK_F_FLUSH)
 *          BENCH blk seq_write_mb_per_s=<x> seq_read_mb_per_s=<x>
 *                rand4k_qd1_iops=<x> rand4k_qd<N>_iops=<x> qd=<N> seq_qd=<n>
 *                used_idx_glitches=<n>
 *          net: peer mac xx:xx:xx:xx:xx:xx
 *          BENCH net udp_tx_mbit_per_s=<x> pkts=<n> bytes=<n> payload=<n> us=<n>
 *                used_idx_glitches=<n>
 *          bench: PASS                   exit 0
 *          bench: FAIL <why>             exit 14
 * MB = 10^6 bytes; Mbit/s counts UDP payload bits (10^6 per Mbit). Numbers
 * with decimals are printed with three of them.
 */
#include "virtio/virtio.h"

#define FAIL_CODE 14

static void fail(const char *why)
{
    printf("bench: FAIL %s\n", why);
    exit(FAIL_CODE);
}

/* ---- time -------------------------------------------------------------- */

#define MSR_KVM_SYSTEM_TIME_NEW 0x4b564d01

/* struct pvclock_vcpu_time_info (Linux Documentation/virt/kvm/x86/msr.rst) */
struct pvclock {
    u32 version;
    u32 pad0;
    u64 tsc_timestamp;
    u64 system_time;
    u32 tsc_to_system_mul;
    signed char tsc_shift;
    u8 flags;
    u8 pad[2];
} __attribute__((aligned(64)));

static struct pvclock pvclock;
static u64 tsc_khz;
static const char *tsc_source = "cpuid estimate";

/* KVM's TSC rate: ns = ((tsc << shift, or >> -shift) * mul) >> 32, so
 * kHz = 10^6 * 2^32 / mul / 2^shift. CPL0 (wrmsr). */
static void calibrate_tsc(void)
{
    tsc_khz = tsc_per_ms;
    u32 a, b, c, d;
    cpuid(0x40000000, 0, &a, &b, &c, &d);
    /* "KVMKVMKVM\0\0\0" */
    if (b != 0x4b4d564b || c != 0x564b4d56 || d != 0x4d)
        return;
    cpuid(0x40000001, 0, &a, &b, &c, &d);
    if (!(a & (1 << 3))) /* KVM_FEATURE_CLOCKSOURCE2 */
        return;
    pvclock.version = 0;
    wrmsr(MSR_KVM_SYSTEM_TIME_NEW, (u64)&pvclock | 1);
    u32 mul = 0;
    int shift = 0;
    for (int tries = 0; tries < 1000; tries++) {
        u32 v = *(volatile u32 *)&pvclock.version;
        barrier();
        mul = *(volatile u32 *)&pvclock.tsc_to_system_mul;
        shift = *(volatile signed char *)&pvclock.tsc_shift;
        barrier();
        if (v && !(v & 1) && v == *(volatile u32 *)&pvclock.version && mul)
            break;
        mul = 0;
    }
    wrmsr(MSR_KVM_SYSTEM_TIME_NEW, 0);
    if (!mul)
        return;
    u64 khz = (1000000UL << 32) / mul;
    khz = shift >= 0 ? khz >> shift : khz << -shift;
    if (khz < 100000 || khz > 100000000) /* 100 MHz .. 100 GHz: else nonsense */
        return;
    tsc_khz = khz;
    tsc_per_ms = khz; /* the library's deadlines too */
    tsc_source = "kvmclock";
}

static u64 tsc_to_us(u64 ticks) { return ticks * 1000 / tsc_khz; }

/* "<int>.<3 digits>" of num/den. */
static void print_ratio(u64 num, u64 den)
{
    if (!den) {
        puts("0.000");
        return;
    }
    u64 milli = (num * 1000 + den / 2) / den;
    printf("%lu.%03lu", milli / 1000, milli % 1000);
}

/* ---- common queue helpers ---------------------------------------------- */

/* Linux's virtqueue_kick without EVENT_IDX: the device may ask for no
 * notifications while it is working through the ring (VIRTQ_USED_F_NO_NOTIFY);
 * the full barrier orders the avail->idx store before the flags load. */
static void kick(struct virtq *q)
{
    virtio_mb();
    if (!(*(volatile u16 *)&q->used->flags & VIRTQ_USED_F_NO_NOTIFY))
        virtq_kick(q);
}

/*
 * virtq_get with a plausibility check of used->idx: the device can have
 * made at most `outstanding` (buffers given and not yet taken back) new
 * entries. A value further ahead is not a completion but a torn or
 * transient store by the device (a VMM writing the index in two steps);
 * it is counted, ignored and read again, so the figures stay right and
 * the output shows it (used_idx_glitches=).
 */
static u64 used_glitches;

static void *get_used(struct virtq *q, u32 outstanding, u32 *len)
{
    u16 idx = *(volatile u16 *)&q->used->idx;
    u16 n = idx - q->last_used;
    if (!n)
        return NULL;
    if (n > outstanding) {
        used_glitches++;
        return NULL;
    }
    barrier();
    return virtq_get(q, len);
}

static void *wait_used(struct virtq *q, u32 outstanding, u32 *len, u32 ms)
{
    u64 end = deadline_ms(ms);
    for (;;) {
        void *t = get_used(q, outstanding, len);
        if (t || expired(end))
            return t;
        pause();
    }
}

#define STALL_MS 10000 /* no completion for this long: the device is stuck */

/* ---- virtio-blk -------------------------------------------------------- */

#define VIRTIO_BLK_F_SIZE_MAX (1UL << 1)
#define VIRTIO_BLK_F_SEG_MAX (1UL << 2)
#define VIRTIO_BLK_F_RO (1UL << 5)
#define VIRTIO_BLK_F_FLUSH (1UL << 9)
#define BLK_CFG_CAPACITY 0
#define BLK_CFG_SIZE_MAX 8
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define SECTOR 512

#define SEQ_SIZE (1UL << 20)
#define SEQ_MAX_QD 8
#define RAND_SIZE 4096
#define RAND_MAX_QD 32
#define MAX_SLOTS 32

struct blk_req {
    struct {
        u32 type;
        u32 reserved;
        u64 sector;
    } hdr;
    u8 status;
    u8 *buf;
    u32 len;
};

static struct virtio_dev *dev;
static struct blk_req reqs[MAX_SLOTS];
static u8 seq_buf[SEQ_MAX_QD][SEQ_SIZE] __attribute__((aligned(4096)));
static u8 rand_buf[RAND_MAX_QD][RAND_SIZE] __attribute__((aligned(4096)));
static u64 rng_state;

static u64 xorshift64(void)
{
    u64 x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

struct phase_result {
    u64 ops, bytes, ticks;
};

static void blk_submit(struct virtq *q, struct blk_req *r, u32 type, u64 sector)
{
    r->hdr.type = type;
    r->hdr.reserved = 0;
    r->hdr.sector = sector;
    r->status = 0xff;
    struct vbuf b[3] = {
        {&r->hdr, sizeof(r->hdr), 0},
        {r->buf, r->len, type == VIRTIO_BLK_T_IN ? VBUF_WRITE : 0},
        {&r->status, 1, VBUF_WRITE},
    };
    if (virtq_add(q, b, 3, r) < 0)
        fail("queue full");
}

/*
 * One phase: `qd` requests of `len` bytes each in flight until `ms` have
 * passed, then the ones in flight are completed. Sequential phases walk the
 * disk in `len` steps (wrapping), random ones pick len-aligned offsets.
 * The time runs from the first submission to the last completion.
 */
static struct phase_result blk_phase(struct virtq *q, u32 type, u32 len, int qd, int random, u64 capacity, u32 ms)
{
    struct phase_result res = {0, 0, 0};
    u64 units = capacity * SECTOR / len; /* len-sized units on the disk */
    u64 next = 0;
    int inflight = 0;
    u64 start = rdtsc(), end = start + (u64)ms * tsc_khz, last = start;
    for (int i = 0; i < qd; i++) {
        struct blk_req *r = &reqs[i];
        r->len = len;
        r->buf = len == SEQ_SIZE ? seq_buf[i] : rand_buf[i];
        u64 unit = random ? xorshift64() % units : next++ % units;
        blk_submit(q, r, type, unit * (len / SECTOR));
        inflight++;
    }
    kick(q);
    u64 stall = rdtsc() + (u64)STALL_MS * tsc_khz;
    while (inflight) {
        struct blk_req *r = get_used(q, inflight, NULL);
        if (!r) {
            if (expired(stall))
                fail("no completion for 10 s");
            pause();
            continue;
        }
        /* Take every completion that is there, resubmit, kick once. */
        int added = 0;
        u64 now = rdtsc();
        for (; r; r = get_used(q, inflight, NULL)) {
            if (r->status != 0) {
                printf("bench: %s at sector %lu: status %u\n", r->hdr.type == VIRTIO_BLK_T_IN ? "read" : "write",
                       r->hdr.sector, r->status);
                fail("I/O error");
            }
            res.ops++;
            res.bytes += r->len;
            last = now;
            inflight--;
            if (now < end) {
                u64 unit = random ? xorshift64() % units : next++ % units;
                blk_submit(q, r, type, unit * (len / SECTOR));
                inflight++;
                added++;
            }
        }
        if (added)
            kick(q);
        stall = now + (u64)STALL_MS * tsc_khz;
    }
    res.ticks = last - start;
    return res;
}

/* qd > 0 is appended to the name ("rand4k_qd32"). */
static void report_phase(const char *name, int qd, struct phase_result r)
{
    printf("bench: %s", name);
    if (qd)
        printf("%d", qd);
    printf(" %lu requests, %lu bytes in %lu us\n", r.ops, r.bytes, tsc_to_us(r.ticks));
}

static void blk_flush(struct virtq *q)
{
    static struct blk_req fr;
    fr.hdr.type = VIRTIO_BLK_T_FLUSH;
    fr.hdr.reserved = 0;
    fr.hdr.sector = 0;
    fr.status = 0xff;
    struct vbuf b[2] = {{&fr.hdr, sizeof(fr.hdr), 0}, {&fr.status, 1, VBUF_WRITE}};
    if (virtq_add(q, b, 2, &fr) < 0)
        fail("queue full");
    u64 t0 = rdtsc();
    virtq_kick(q);
    if (wait_used(q, 1, NULL, 60000) != &fr || fr.status != 0)
        fail("flush");
    printf("bench: flush %lu us\n", tsc_to_us(rdtsc() - t0));
}

static void bench_blk(void)
{
    u64 f = virtio_start(dev, VIRTIO_BLK_F_RO | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_SIZE_MAX);
    if (!f)
        fail("device initialisation");
    struct virtq *q = virtio_queue_setup(dev, 0, 0);
    if (!q)
        fail("queue setup");
    virtio_driver_ok(dev);
    u64 capacity = virtio_cfg_read64(dev, BLK_CFG_CAPACITY);
    printf("bench: capacity %lu sectors, queue size %u, features 0x%lx\n", capacity, q->size, f);
    if (f & VIRTIO_BLK_F_RO)
        fail("the disk is read-only");
    if (f & VIRTIO_BLK_F_SIZE_MAX && virtio_cfg_read32(dev, BLK_CFG_SIZE_MAX) < SEQ_SIZE)
        fail("size_max below 1 MiB");
    if (capacity * SECTOR < 4 * SEQ_SIZE)
        fail("disk smaller than 4 MiB");

    u32 ms = cmdline_num("seconds", 3) * 1000;
    int qd = cmdline_num("qd", 32), seq_qd = cmdline_num("seq_qd", 4);
    if (qd < 1 || qd > RAND_MAX_QD || seq_qd < 1 || seq_qd > SEQ_MAX_QD)
        fail("qd must be 1..32 and seq_qd 1..8");
    if (q->size < 3 * qd || q->size < 3 * seq_qd)
        fail("queue too small for the queue depth");
    rng_state = cmdline_num("seed", 0x9e3779b97f4a7c15UL) | 1;
    for (int i = 0; i < SEQ_MAX_QD; i++)
        for (u64 k = 0; k < SEQ_SIZE; k += 8)
            *(u64 *)&seq_buf[i][k] = 0x5eed000000000000UL | (u64)i << 32 | k;

    struct phase_result w = blk_phase(q, VIRTIO_BLK_T_OUT, SEQ_SIZE, seq_qd, 0, capacity, ms);
    report_phase("seq_write", 0, w);
    if (f & VIRTIO_BLK_F_FLUSH)
        blk_flush(q);
    struct phase_result rd = blk_phase(q, VIRTIO_BLK_T_IN, SEQ_SIZE, seq_qd, 0, capacity, ms);
    report_phase("seq_read", 0, rd);
    struct phase_result r1 = blk_phase(q, VIRTIO_BLK_T_IN, RAND_SIZE, 1, 1, capacity, ms);
    report_phase("rand4k_qd1", 0, r1);
    struct phase_result rn = blk_phase(q, VIRTIO_BLK_T_IN, RAND_SIZE, qd, 1, capacity, ms);
    report_phase("rand4k_qd", qd, rn);

    /* MB/s = bytes / us; IOPS = ops * 10^6 / us */
    puts("BENCH blk seq_write_mb_per_s=");
    print_ratio(w.bytes, tsc_to_us(w.ticks));
    puts(" seq_read_mb_per_s=");
    print_ratio(rd.bytes, tsc_to_us(rd.ticks));
    puts(" rand4k_qd1_iops=");
    print_ratio(r1.ops * 1000000, tsc_to_us(r1.ticks));
    printf(" rand4k_qd%d_iops=", qd);
    print_ratio(rn.ops * 1000000, tsc_to_us(rn.ticks));
    printf(" qd=%d seq_qd=%d used_idx_glitches=%lu\n", qd, seq_qd, used_glitches);
    if (virtio_get_status(dev) & VIRTIO_STATUS_NEEDS_RESET)
        fail("device needs reset");
    puts("bench: PASS\n");
    exit(0);
}

/* ---- virtio-net -------------------------------------------------------- */

#define VIRTIO_NET_F_MAC (1UL << 5)
#define NET_CFG_MAC 0
#define RXQ 0
#define TXQ 1
#define NET_HDR 12 /* struct virtio_net_hdr_v1 */
#define BUF_SIZE 2048
#define RX_BUFS 32
#define TX_BUFS VIRTQ_MAX_SIZE
#define ETH_ARP 0x0806
#define ETH_IP 0x0800
#define IPPROTO_UDP 17

static struct virtq *rxq, *txq;
static u32 rx_posted;
static u8 rx_buf[RX_BUFS][BUF_SIZE] __attribute__((aligned(4096)));
static u8 tx_buf[TX_BUFS][BUF_SIZE] __attribute__((aligned(4096)));
static u8 mac[6], peer_mac[6];
static int have_peer_mac;
static u32 my_ip, peer_ip;

static u16 get16(const u8 *p) { return p[0] << 8 | p[1]; }
static u32 get32(const u8 *p) { return (u32)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }
static void put16(u8 *p, u16 v) { p[0] = v >> 8; p[1] = v; }
static void put32(u8 *p, u32 v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }

static u16 ip_checksum(const u8 *p, u32 len)
{
    u32 sum = 0;
    for (u32 i = 0; i + 1 < len; i += 2)
        sum += get16(p + i);
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return ~sum & 0xffff;
}

static u32 parse_ip(const char *key, u32 def)
{
    char s[20];
    if (!cmdline_str(key, s, sizeof(s)))
        return def;
    u32 ip = 0, part = 0;
    int dots = 0;
    for (const char *p = s;; p++) {
        if (*p >= '0' && *p <= '9') {
            part = part * 10 + (*p - '0');
        } else if (*p == '.' || !*p) {
            ip = ip << 8 | (part & 255);
            part = 0;
            if (!*p)
                break;
            dots++;
        } else {
            return def;
        }
    }
    return dots == 3 ? ip : def;
}

static void rx_post(u8 *buf)
{
    struct vbuf b = {buf, BUF_SIZE, VBUF_WRITE};
    if (virtq_add(rxq, &b, 1, buf) < 0)
        fail("receive queue full");
    rx_posted++;
}

/* An ARP packet (request: tha unknown) in tx_buf[slot]; sent and waited for. */
static void send_arp(int slot, u16 op, const u8 *dst, const u8 *tha, u32 tpa)
{
    static const u8 bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    u8 *f = tx_buf[slot];
    memset(f, 0, NET_HDR + 60);
    u8 *e = f + NET_HDR;
    memcpy(e, dst ? dst : bcast, 6);
    memcpy(e + 6, mac, 6);
    put16(e + 12, ETH_ARP);
    u8 *a = e + 14;
    put16(a, 1);
    put16(a + 2, ETH_IP);
    a[4] = 6;
    a[5] = 4;
    put16(a + 6, op);
    memcpy(a + 8, mac, 6);
    put32(a + 14, my_ip);
    if (tha)
        memcpy(a + 18, tha, 6);
    put32(a + 24, tpa);
    struct vbuf b = {f, NET_HDR + 60, 0};
    if (virtq_add(txq, &b, 1, f) < 0)
        fail("transmit queue full");
    virtq_kick(txq);
    if (!wait_used(txq, 1, NULL, 2000))
        fail("the device does not use sent frames");
}

/* Receive and recycle frames: learn the peer's MAC from ARP, answer ARP
 * requests for our address (slot 1 is the spare transmit buffer then). */
static void poll_rx(int answer)
{
    u32 len;
    u8 *buf;
    int n = 0;
    while ((buf = get_used(rxq, rx_posted, &len))) {
        rx_posted--;
        const u8 *e = buf + NET_HDR;
        if (len >= NET_HDR + 14 + 28 && get16(e + 12) == ETH_ARP) {
            const u8 *a = e + 14;
            u16 op = get16(a + 6);
            u32 spa = get32(a + 14), tpa = get32(a + 24);
            if (spa == peer_ip && tpa == my_ip && !have_peer_mac) {
                memcpy(peer_mac, a + 8, 6);
                have_peer_mac = 1;
            }
            if (op == 1 && tpa == my_ip && answer)
                send_arp(1, 2, a + 8, a + 8, spa);
        }
        rx_post(buf);
        n++;
    }
    if (n)
        kick(rxq);
}

static void bench_net(void)
{
    u64 f = virtio_start(dev, VIRTIO_NET_F_MAC);
    if (!f)
        fail("device initialisation");
    rxq = virtio_queue_setup(dev, RXQ, 0);
    txq = virtio_queue_setup(dev, TXQ, 0);
    if (!rxq || !txq)
        fail("queue setup");
    if (f & VIRTIO_NET_F_MAC) {
        virtio_cfg_read_bytes(dev, NET_CFG_MAC, mac, 6);
    } else {
        static const u8 def[6] = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
        memcpy(mac, def, 6);
    }
    virtio_driver_ok(dev);
    for (int i = 0; i < RX_BUFS && i < rxq->size; i++)
        rx_post(rx_buf[i]);
    virtq_kick(rxq);
    my_ip = parse_ip("ip", 0x0a00020f);
    peer_ip = parse_ip("peer", 0x0a000202);
    u16 port = cmdline_num("port", 7777), sport = cmdline_num("sport", 40000);
    u32 size = cmdline_num("size", 1400);
    u32 ms = cmdline_num("seconds", 3) * 1000;
    if (size < 18 || size > 1472)
        fail("size must be 18..1472");
    printf("bench: tx queue size %u, rx queue size %u\n", txq->size, rxq->size);

    for (int tries = 0; !have_peer_mac && tries < 5; tries++) {
        send_arp(0, 1, NULL, NULL, peer_ip);
        u64 end = deadline_ms(1000);
        while (!have_peer_mac && !expired(end)) {
            poll_rx(1);
            pause();
        }
    }
    if (!have_peer_mac)
        fail("no ARP reply from the peer");
    printf("net: peer mac %02x:%02x:%02x:%02x:%02x:%02x\n", peer_mac[0], peer_mac[1], peer_mac[2], peer_mac[3],
           peer_mac[4], peer_mac[5]);

    /* One template frame, copied into every transmit buffer. */
    u32 ulen = 8 + size, flen = 14 + 20 + ulen;
    if (flen < 60)
        flen = 60;
    int nbuf = txq->size < TX_BUFS ? txq->size : TX_BUFS;
    for (int i = 0; i < nbuf; i++) {
        u8 *fr = tx_buf[i];
        memset(fr, 0, NET_HDR + flen);
        u8 *e = fr + NET_HDR;
        memcpy(e, peer_mac, 6);
        memcpy(e + 6, mac, 6);
        put16(e + 12, ETH_IP);
        u8 *ip = e + 14;
        ip[0] = 0x45;
        put16(ip + 2, 20 + ulen);
        put16(ip + 6, 0x4000); /* don't fragment: the id may stay 0 */
        ip[8] = 64;
        ip[9] = IPPROTO_UDP;
        put32(ip + 12, my_ip);
        put32(ip + 16, peer_ip);
        put16(ip + 10, ip_checksum(ip, 20));
        u8 *udp = ip + 20;
        put16(udp, sport);
        put16(udp + 2, port);
        put16(udp + 4, ulen);
        for (u32 k = 8; k < ulen; k++)
            udp[k] = (u8)k;
    }

    /* Blast: keep every transmit buffer in the ring until the deadline. */
    u64 seq = 0, sent = 0;
    int inflight = 0, added = 0;
    u64 start = rdtsc(), end = start + (u64)ms * tsc_khz, last = start;
    for (int i = 0; i < nbuf; i++) {
        u8 *fr = tx_buf[i];
        *(u64 *)(fr + NET_HDR + 14 + 20 + 8) = seq++;
        struct vbuf b = {fr, NET_HDR + flen, 0};
        if (virtq_add(txq, &b, 1, fr) < 0)
            break;
        inflight++;
    }
    kick(txq);
    u64 stall = rdtsc() + (u64)STALL_MS * tsc_khz;
    while (inflight) {
        u8 *fr = get_used(txq, inflight, NULL);
        if (!fr) {
            if (expired(stall))
                fail("transmit queue stuck for 10 s");
            poll_rx(0);
            pause();
            continue;
        }
        u64 now = rdtsc();
        for (; fr; fr = get_used(txq, inflight, NULL)) {
            sent++;
            last = now;
            inflight--;
            if (now < end) {
                *(u64 *)(fr + NET_HDR + 14 + 20 + 8) = seq++;
                struct vbuf b = {fr, NET_HDR + flen, 0};
                if (virtq_add(txq, &b, 1, fr) < 0)
                    fail("transmit queue full");
                inflight++;
                added++;
            }
        }
        if (added)
            kick(txq);
        added = 0;
        stall = now + (u64)STALL_MS * tsc_khz;
    }
    u64 us = tsc_to_us(last - start);
    puts("BENCH net udp_tx_mbit_per_s=");
    print_ratio(sent * size * 8, us);
    printf(" pkts=%lu bytes=%lu payload=%u us=%lu used_idx_glitches=%lu\n", sent, sent * size, size, us,
           used_glitches);
    if (virtio_get_status(dev) & VIRTIO_STATUS_NEEDS_RESET)
        fail("device needs reset");
    puts("bench: PASS\n");
    exit(0);
}

/* ---- entry --------------------------------------------------------------- */

static int mode;

static void user(void)
{
    if (mode == 1)
        bench_blk();
    bench_net();
}

int main(void)
{
    char what[8];
    if (!cmdline_str("bench", what, sizeof(what)))
        fail("no bench=blk|net on the command line");
    if (!strncmp(what, "blk", 4))
        mode = 1;
    else if (!strncmp(what, "net", 4))
        mode = 2;
    else
        fail("bench= must be blk or net");
    virtio_platform_init();
    calibrate_tsc();
    printf("bench: tsc %lu kHz (%s)\n", tsc_khz, tsc_source);
    dev = virtio_find(mode == 1 ? VIRTIO_ID_BLOCK : VIRTIO_ID_NET);
    if (!dev)
        fail(mode == 1 ? "no virtio-blk device" : "no virtio-net device");
    printf("bench: using %s\n", dev->where);
    enter_user(user);
}
