/*
 * virtio-net: a network card from the inside (VIRTIO 1.2 section 5.1), with
 * hand-made Ethernet, ARP, IPv4, ICMP and UDP.
 *
 * Uses the MAC from the config space (VIRTIO_NET_F_MAC; 52:54:00:12:34:56
 * otherwise), fills the receive queue with 2 KiB buffers (each one
 * descriptor holding the 12-byte virtio_net_hdr and the frame) and sends
 * frames as two descriptors (header, frame). Then:
 *   1. ARP: asks for the peer's MAC (1 s per try, 5 tries); ARP requests for
 *      the guest's own address are answered all along;
 *   2. ICMP: an echo request to the peer; the reply must match (id, seq,
 *      payload) and have good IPv4 and ICMP checksums;
 *   3. UDP: a datagram to peer:port; the reply from peer:port must carry the
 *      same payload (IPv4 and UDP checksums checked).
 * No offloads are negotiated, so every received frame must be complete and
 * correctly checksummed.
 *
 * Command-line words: ip=<a.b.c.d> (default 10.0.2.15), peer=<a.b.c.d>
 * (10.0.2.2), port=<n> (UDP echo port, 7777), sport=<n> (40000),
 * no-ping (skip step 2), transport=mmio|pci.
 *
 * Output:  net: using <where>
 *          net: mac xx:xx:xx:xx:xx:xx
 *          net: link up|down             (with VIRTIO_NET_F_STATUS)
 *          net: ip <a.b.c.d> peer <a.b.c.d>
 *          net: peer mac xx:xx:xx:xx:xx:xx
 *          net: ping reply from <a.b.c.d> seq <n>
 *          net: udp echo ok, <n> bytes from <a.b.c.d>:<port>
 *          net: answered <n> arp requests
 *          net: PASS                     exit 0
 *          net: FAIL <why>               exit 10
 */
#include "virtio/virtio.h"

#define FAIL_CODE 10

#define VIRTIO_NET_F_MAC (1UL << 5)
#define VIRTIO_NET_F_STATUS (1UL << 16)
#define CFG_MAC 0
#define CFG_STATUS 6
#define VIRTIO_NET_S_LINK_UP 1

#define RXQ 0
#define TXQ 1
#define RX_BUFS 32
#define BUF_SIZE 2048
#define TX_BUFS 16
#define HDR_LEN 12 /* struct virtio_net_hdr with num_buffers (VERSION_1) */

#define ETH_ARP 0x0806
#define ETH_IP 0x0800
#define IPPROTO_ICMP 1
#define IPPROTO_UDP 17

static struct virtio_dev *dev;
static struct virtq *rxq, *txq;
static u8 rx_buf[RX_BUFS][BUF_SIZE] __attribute__((aligned(4096)));
static u8 tx_frame[TX_BUFS][BUF_SIZE] __attribute__((aligned(4096)));
static u8 tx_hdr[TX_BUFS][HDR_LEN];
static int tx_busy[TX_BUFS];
static u8 mac[6], peer_mac[6];
static int have_peer_mac;
static u32 my_ip, peer_ip; /* host order */
static u32 arp_answered;

static void fail(const char *why)
{
    printf("net: FAIL %s\n", why);
    exit(FAIL_CODE);
}

/* ---- byte order and checksums ------------------------------------------ */

static u16 get16(const u8 *p) { return p[0] << 8 | p[1]; }
static u32 get32(const u8 *p) { return (u32)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }
static void put16(u8 *p, u16 v) { p[0] = v >> 8; p[1] = v; }
static void put32(u8 *p, u32 v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }

/* One's-complement sum of 16-bit big-endian words (RFC 1071). */
static u32 sum16(const u8 *p, u32 len, u32 sum)
{
    for (u32 i = 0; i + 1 < len; i += 2)
        sum += get16(p + i);
    if (len & 1)
        sum += p[len - 1] << 8;
    return sum;
}

static u16 fold(u32 sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return ~sum & 0xffff;
}

/* UDP checksum over the pseudo-header and the datagram. */
static u16 udp_sum(u32 src, u32 dst, const u8 *udp, u32 len)
{
    u8 ph[12];
    put32(ph, src);
    put32(ph + 4, dst);
    ph[8] = 0;
    ph[9] = IPPROTO_UDP;
    put16(ph + 10, len);
    return fold(sum16(udp, len, sum16(ph, 12, 0)));
}

static void print_ip(u32 ip) { printf("%u.%u.%u.%u", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255); }
static void print_mac(const u8 *m) { printf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]); }

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

/* ---- transmit ---------------------------------------------------------- */

static void reap_tx(void)
{
    u32 len;
    u8 *f;
    while ((f = virtq_get(txq, &len)))
        tx_busy[(f - &tx_frame[0][0]) / BUF_SIZE] = 0;
}

/* A free frame buffer to build a frame in. */
static u8 *tx_alloc(void)
{
    u64 end = deadline_ms(2000);
    for (;;) {
        reap_tx();
        for (int i = 0; i < TX_BUFS; i++)
            if (!tx_busy[i]) {
                memset(tx_frame[i], 0, BUF_SIZE);
                return tx_frame[i];
            }
        if (expired(end))
            fail("transmit queue stuck (the device does not use sent frames)");
        pause();
    }
}

static void tx_send(u8 *frame, u32 len)
{
    int i = (frame - &tx_frame[0][0]) / BUF_SIZE;
    if (len < 60)
        len = 60; /* Ethernet minimum (without FCS); the buffer is zeroed */
    memset(tx_hdr[i], 0, HDR_LEN);
    struct vbuf b[2] = {{tx_hdr[i], HDR_LEN, 0}, {frame, len, 0}};
    if (virtq_add(txq, b, 2, frame) < 0)
        fail("transmit queue full");
    tx_busy[i] = 1;
    virtq_kick(txq);
}

static u8 *eth_header(u8 *f, const u8 *dst, u16 type)
{
    memcpy(f, dst, 6);
    memcpy(f + 6, mac, 6);
    put16(f + 12, type);
    return f + 14;
}

static void send_arp(u16 op, const u8 *eth_dst, const u8 *tha, u32 tpa)
{
    static const u8 bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    u8 *f = tx_alloc();
    u8 *a = eth_header(f, eth_dst ? eth_dst : bcast, ETH_ARP);
    put16(a, 1);          /* htype: Ethernet */
    put16(a + 2, ETH_IP); /* ptype */
    a[4] = 6;
    a[5] = 4;
    put16(a + 6, op);
    memcpy(a + 8, mac, 6);
    put32(a + 14, my_ip);
    if (tha)
        memcpy(a + 18, tha, 6);
    put32(a + 24, tpa);
    tx_send(f, 14 + 28);
}

/* An IPv4 packet to the peer with `len` bytes of payload already at
 * frame + 34; returns the frame length. */
static u32 ip_wrap(u8 *f, u8 proto, u32 len)
{
    static u16 ip_id = 1;
    u8 *ip = eth_header(f, peer_mac, ETH_IP);
    ip[0] = 0x45;
    put16(ip + 2, 20 + len);
    put16(ip + 4, ip_id++);
    put16(ip + 6, 0x4000); /* don't fragment */
    ip[8] = 64;
    ip[9] = proto;
    put32(ip + 12, my_ip);
    put32(ip + 16, peer_ip);
    put16(ip + 10, fold(sum16(ip, 20, 0)));
    return 14 + 20 + len;
}

/* ---- receive ----------------------------------------------------------- */

/* What the receive path is waiting for. */
enum { WANT_ARP, WANT_PING, WANT_UDP };
static int want;
static int got;
static u16 ping_id = 0x7076, ping_seq;
static u8 ping_data[56];
static u8 udp_data[100];
static u16 udp_port, udp_sport;

static void rx_post(u8 *buf)
{
    struct vbuf b = {buf, BUF_SIZE, VBUF_WRITE};
    if (virtq_add(rxq, &b, 1, buf) < 0)
        fail("receive queue full");
}

static void handle_arp(const u8 *a, u32 len)
{
    if (len < 28 || get16(a) != 1 || get16(a + 2) != ETH_IP || a[4] != 6 || a[5] != 4)
        return;
    u16 op = get16(a + 6);
    u32 spa = get32(a + 14), tpa = get32(a + 24);
    if (op == 1 && tpa == my_ip) {
        send_arp(2, a + 8, a + 8, spa);
        arp_answered++;
    }
    if (op == 2 && spa == peer_ip && tpa == my_ip && !have_peer_mac) {
        memcpy(peer_mac, a + 8, 6);
        have_peer_mac = 1;
        if (want == WANT_ARP)
            got = 1;
    }
    /* a request from the peer also tells us its MAC */
    if (op == 1 && spa == peer_ip && tpa == my_ip && !have_peer_mac) {
        memcpy(peer_mac, a + 8, 6);
        have_peer_mac = 1;
        if (want == WANT_ARP)
            got = 1;
    }
}

static void handle_ip(const u8 *ip, u32 len)
{
    if (len < 20 || (ip[0] >> 4) != 4)
        return;
    u32 ihl = (ip[0] & 15) * 4, total = get16(ip + 2);
    if (ihl < 20 || total < ihl || total > len)
        return;
    u32 src = get32(ip + 12), dst = get32(ip + 16);
    if (dst != my_ip || src != peer_ip)
        return;
    if (fold(sum16(ip, ihl, 0)) != 0) {
        puts("net: bad IPv4 header checksum in a received packet\n");
        fail("checksum");
    }
    if ((get16(ip + 6) & 0x3fff) != 0)
        return; /* a fragment */
    const u8 *p = ip + ihl;
    u32 plen = total - ihl;
    if (ip[9] == IPPROTO_ICMP && want == WANT_PING && plen >= 8 + sizeof(ping_data)) {
        if (p[0] != 0 || get16(p + 4) != ping_id || get16(p + 6) != ping_seq)
            return;
        if (fold(sum16(p, plen, 0)) != 0) {
            puts("net: bad ICMP checksum in the echo reply\n");
            fail("checksum");
        }
        if (plen != 8 + sizeof(ping_data) || memcmp(p + 8, ping_data, sizeof(ping_data)))
            fail("echo reply payload differs");
        got = 1;
    } else if (ip[9] == IPPROTO_UDP && want == WANT_UDP && plen >= 8) {
        u32 ulen = get16(p + 4);
        if (get16(p) != udp_port || get16(p + 2) != udp_sport || ulen < 8 || ulen > plen)
            return;
        if (get16(p + 6) && udp_sum(src, dst, p, ulen) != 0) {
            puts("net: bad UDP checksum in the reply\n");
            fail("checksum");
        }
        if (ulen - 8 != sizeof(udp_data) || memcmp(p + 8, udp_data, sizeof(udp_data))) {
            printf("net: udp reply of %u bytes differs\n", ulen - 8);
            fail("udp echo payload differs");
        }
        got = 1;
    }
}

static void handle_frame(const u8 *f, u32 len)
{
    if (len < 14)
        return;
    static const u8 bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    if (memcmp(f, mac, 6) && memcmp(f, bcast, 6))
        return;
    u16 type = get16(f + 12);
    if (type == ETH_ARP)
        handle_arp(f + 14, len - 14);
    else if (type == ETH_IP)
        handle_ip(f + 14, len - 14);
}

/* Process received frames until `got` or timeout; returns got. */
static int poll_rx(u32 ms)
{
    u64 end = deadline_ms(ms);
    got = 0;
    while (!got) {
        u32 len;
        u8 *buf = virtq_get(rxq, &len);
        if (buf) {
            if (len > BUF_SIZE)
                fail("device wrote more than the receive buffer");
            if (len > HDR_LEN)
                handle_frame(buf + HDR_LEN, len - HDR_LEN);
            rx_post(buf);
            virtq_kick(rxq);
            continue;
        }
        reap_tx();
        if (expired(end))
            break;
        pause();
    }
    return got;
}

/* ---- the test ---------------------------------------------------------- */

static void user(void)
{
    u64 f = virtio_start(dev, VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS);
    if (!f)
        fail("device initialisation");
    rxq = virtio_queue_setup(dev, RXQ, 0);
    txq = virtio_queue_setup(dev, TXQ, 0);
    if (!rxq || !txq)
        fail("queue setup");
    if (f & VIRTIO_NET_F_MAC) {
        virtio_cfg_read_bytes(dev, CFG_MAC, mac, 6);
    } else {
        static const u8 def[6] = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
        memcpy(mac, def, 6);
    }
    virtio_driver_ok(dev);
    for (int i = 0; i < RX_BUFS && i < rxq->size; i++)
        rx_post(rx_buf[i]);
    virtq_kick(rxq);

    puts("net: mac ");
    print_mac(mac);
    putc('\n');
    if (f & VIRTIO_NET_F_STATUS)
        printf("net: link %s\n", virtio_cfg_read16(dev, CFG_STATUS) & VIRTIO_NET_S_LINK_UP ? "up" : "down");
    my_ip = parse_ip("ip", 0x0a00020f);
    peer_ip = parse_ip("peer", 0x0a000202);
    udp_port = cmdline_num("port", 7777);
    udp_sport = cmdline_num("sport", 40000);
    puts("net: ip ");
    print_ip(my_ip);
    puts(" peer ");
    print_ip(peer_ip);
    putc('\n');

    /* 1. ARP for the peer */
    want = WANT_ARP;
    for (int tries = 0; !have_peer_mac && tries < 5; tries++) {
        send_arp(1, NULL, NULL, peer_ip);
        poll_rx(1000);
    }
    if (!have_peer_mac)
        fail("no ARP reply from the peer");
    puts("net: peer mac ");
    print_mac(peer_mac);
    putc('\n');

    /* 2. ICMP echo */
    if (!cmdline_has("no-ping")) {
        want = WANT_PING;
        for (u32 i = 0; i < sizeof(ping_data); i++)
            ping_data[i] = 0x20 + i;
        int ok = 0;
        for (int tries = 0; !ok && tries < 3; tries++) {
            ping_seq = tries + 1;
            u8 *fr = tx_alloc();
            u8 *icmp = fr + 34;
            icmp[0] = 8; /* echo request */
            icmp[1] = 0;
            put16(icmp + 4, ping_id);
            put16(icmp + 6, ping_seq);
            memcpy(icmp + 8, ping_data, sizeof(ping_data));
            put16(icmp + 2, fold(sum16(icmp, 8 + sizeof(ping_data), 0)));
            tx_send(fr, ip_wrap(fr, IPPROTO_ICMP, 8 + sizeof(ping_data)));
            ok = poll_rx(1000);
        }
        if (!ok)
            fail("no ICMP echo reply");
        puts("net: ping reply from ");
        print_ip(peer_ip);
        printf(" seq %u\n", ping_seq);
    }

    /* 3. UDP echo */
    want = WANT_UDP;
    u64 nonce = rdtsc();
    for (u32 i = 0; i < sizeof(udp_data); i++)
        udp_data[i] = "pyvirt virtio-net udp echo "[i % 27] ^ (i >= 27 ? (u8)(nonce >> (8 * (i % 8))) & 0x1f : 0);
    int ok = 0;
    for (int tries = 0; !ok && tries < 3; tries++) {
        u8 *fr = tx_alloc();
        u8 *udp = fr + 34;
        u32 ulen = 8 + sizeof(udp_data);
        put16(udp, udp_sport);
        put16(udp + 2, udp_port);
        put16(udp + 4, ulen);
        memcpy(udp + 8, udp_data, sizeof(udp_data));
        u16 cs = udp_sum(my_ip, peer_ip, udp, ulen);
        put16(udp + 6, cs ? cs : 0xffff);
        tx_send(fr, ip_wrap(fr, IPPROTO_UDP, ulen));
        ok = poll_rx(1000);
    }
    if (!ok)
        fail("no UDP echo reply");
    printf("net: udp echo ok, %u bytes from ", (u32)sizeof(udp_data));
    print_ip(peer_ip);
    printf(":%u\n", udp_port);
    /* a moment to answer late ARP requests, then report */
    want = -1;
    poll_rx(100);
    printf("net: answered %u arp requests\n", arp_answered);
    if (virtio_get_status(dev) & VIRTIO_STATUS_NEEDS_RESET)
        fail("device needs reset");
    puts("net: PASS\n");
    exit(0);
}

int main(void)
{
    virtio_platform_init();
    dev = virtio_find(VIRTIO_ID_NET);
    if (!dev)
        fail("no virtio-net device");
    printf("net: using %s\n", dev->where);
    enter_user(user);
}
