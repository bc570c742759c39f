/*
 * virtio-vsock: a stream connection to the host (VIRTIO 1.2 section 5.10).
 *
 * Reads the guest CID from the config space, fills the rx queue (each
 * buffer: a 44-byte header descriptor and a 4 KiB payload descriptor) and
 * the event queue, then connects to the host (CID 2): REQUEST, waits for
 * RESPONSE (RST: refused), sends the message as one RW packet within the
 * peer's credit, reads RW packets until as many bytes came back, compares,
 * and disconnects cleanly: SHUTDOWN (both directions), then waits for the
 * peer's RST (sends its own RST if none comes, as 5.10.6.6 says).
 * CREDIT_REQUESTs are answered with CREDIT_UPDATEs; every packet carries
 * the guest's buf_alloc and fwd_cnt.
 *
 * Command-line words: port=<n> (host port, default 1234), sport=<n> (guest
 * port, default 50000), msg=<text> (default hello), transport=mmio|pci.
 *
 * Output:  vsock: using <where>
 *          vsock: guest cid <n>
 *          vsock: connected to 2:<port> from <cid>:<sport>
 *          vsock: sent <n> bytes
 *          vsock: received "<text>"
 *          vsock: closed by peer RST | vsock: no RST from peer, sent RST
 *          vsock: PASS                   exit 0
 *          vsock: FAIL <why>             exit 11
 */
#include "virtio/virtio.h"

#define FAIL_CODE 11

#define VIRTIO_VSOCK_F_STREAM (1UL << 0)
#define CFG_GUEST_CID 0
#define HOST_CID 2
#define TYPE_STREAM 1
enum { OP_INVALID, OP_REQUEST, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST };
#define SHUTDOWN_RCV 1
#define SHUTDOWN_SEND 2

struct vsock_hdr {
    u64 src_cid;
    u64 dst_cid;
    u32 src_port;
    u32 dst_port;
    u32 len;
    u16 type;
    u16 op;
    u32 flags;
    u32 buf_alloc;
    u32 fwd_cnt;
} __attribute__((packed));

#define RXQ 0
#define TXQ 1
#define EVQ 2
#define RX_BUFS 16
#define RX_PAYLOAD 4096
#define TX_SLOTS 16
#define EV_BUFS 4

static struct virtio_dev *dev;
static struct virtq *rxq, *txq, *evq;
static struct vsock_hdr rx_hdr[RX_BUFS];
static u8 rx_data[RX_BUFS][RX_PAYLOAD] __attribute__((aligned(4096)));
static struct vsock_hdr tx_hdr[TX_SLOTS];
static u8 tx_data[TX_SLOTS][256];
static int tx_busy[TX_SLOTS];
static u32 events[EV_BUFS];

static u64 guest_cid;
static u32 port, sport;
static u32 fwd_cnt;                     /* bytes received and consumed */
static u32 tx_cnt;                      /* bytes sent */
static u32 peer_buf_alloc, peer_fwd_cnt; /* the peer's credit */
static char msg[128];
static u8 echo[256];
static u32 echo_len;

static void fail(const char *why)
{
    printf("vsock: FAIL %s\n", why);
    exit(FAIL_CODE);
}

static void rx_post(int i)
{
    struct vbuf b[2] = {{&rx_hdr[i], sizeof(rx_hdr[i]), VBUF_WRITE}, {rx_data[i], RX_PAYLOAD, VBUF_WRITE}};
    if (virtq_add(rxq, b, 2, &rx_hdr[i]) < 0)
        fail("rx queue full");
}

static void reap_tx(void)
{
    struct vsock_hdr *h;
    while ((h = virtq_get(txq, NULL)))
        tx_busy[h - tx_hdr] = 0;
}

static void send_pkt(u16 op, u32 flags, const void *data, u32 len)
{
    u64 end = deadline_ms(2000);
    int i = -1;
    while (i < 0) {
        reap_tx();
        for (int k = 0; k < TX_SLOTS; k++)
            if (!tx_busy[k]) {
                i = k;
                break;
            }
        if (i < 0 && expired(end))
            fail("tx queue stuck (the device does not use sent packets)");
    }
    struct vsock_hdr *h = &tx_hdr[i];
    memset(h, 0, sizeof(*h));
    h->src_cid = guest_cid;
    h->dst_cid = HOST_CID;
    h->src_port = sport;
    h->dst_port = port;
    h->len = len;
    h->type = TYPE_STREAM;
    h->op = op;
    h->flags = flags;
    h->buf_alloc = RX_BUFS * RX_PAYLOAD;
    h->fwd_cnt = fwd_cnt;
    struct vbuf b[2] = {{h, sizeof(*h), 0}, {tx_data[i], len, 0}};
    if (len)
        memcpy(tx_data[i], data, len);
    tx_busy[i] = 1;
    if (virtq_add(txq, b, len ? 2 : 1, h) < 0)
        fail("tx queue full");
    virtq_kick(txq);
}

/* Wait (bounded) for a packet of this connection; handles credit requests
 * and consumes RW payload into echo[]. Returns its op, or -1 on timeout. */
static int next_packet(u32 ms)
{
    u64 end = deadline_ms(ms);
    for (;;) {
        u32 len;
        struct vsock_hdr *h = virtq_get(rxq, &len);
        if (!h) {
            reap_tx();
            /* event queue: a transport reset means the connection is gone */
            u32 *ev = virtq_get(evq, NULL);
            if (ev) {
                printf("vsock: event %u\n", *ev);
                struct vbuf b = {ev, 4, VBUF_WRITE};
                virtq_add(evq, &b, 1, ev);
                virtq_kick(evq);
            }
            if (expired(end))
                return -1;
            pause();
            continue;
        }
        int i = h - rx_hdr;
        struct vsock_hdr hh = *h;
        if (len < sizeof(*h) || hh.len > RX_PAYLOAD || len < sizeof(*h) + hh.len) {
            printf("vsock: short packet: used len %u, header len %u\n", len, hh.len);
            fail("malformed packet from the device");
        }
        if (hh.op == OP_RW && hh.len) {
            u32 n = hh.len;
            if (echo_len + n > sizeof(echo))
                n = sizeof(echo) - echo_len;
            memcpy(echo + echo_len, rx_data[i], n);
            echo_len += n;
        }
        rx_post(i);
        virtq_kick(rxq);
        if (hh.src_cid != HOST_CID || hh.dst_cid != guest_cid || hh.src_port != port || hh.dst_port != sport) {
            printf("vsock: ignoring op %u from %lu:%u to %lu:%u\n", hh.op, hh.src_cid, hh.src_port, hh.dst_cid,
                   hh.dst_port);
            continue;
        }
        if (hh.type != TYPE_STREAM) {
            printf("vsock: packet of type %u\n", hh.type);
            fail("wrong socket type");
        }
        peer_buf_alloc = hh.buf_alloc;
        peer_fwd_cnt = hh.fwd_cnt;
        if (hh.op == OP_RW)
            fwd_cnt += hh.len; /* consumed at once */
        if (hh.op == OP_CREDIT_REQUEST) {
            send_pkt(OP_CREDIT_UPDATE, 0, NULL, 0);
            continue;
        }
        return hh.op;
    }
}

static void user(void)
{
    u64 f = virtio_start(dev, VIRTIO_VSOCK_F_STREAM);
    if (!f)
        fail("device initialisation");
    rxq = virtio_queue_setup(dev, RXQ, 0);
    txq = virtio_queue_setup(dev, TXQ, 0);
    evq = virtio_queue_setup(dev, EVQ, 0);
    if (!rxq || !txq || !evq)
        fail("queue setup");
    guest_cid = virtio_cfg_read64(dev, CFG_GUEST_CID);
    virtio_driver_ok(dev);
    for (int i = 0; i < RX_BUFS && 2 * i + 1 < rxq->size; i++)
        rx_post(i);
    virtq_kick(rxq);
    for (int i = 0; i < EV_BUFS && i < evq->size; i++) {
        struct vbuf b = {&events[i], 4, VBUF_WRITE};
        virtq_add(evq, &b, 1, &events[i]);
    }
    virtq_kick(evq);
    printf("vsock: guest cid %lu\n", guest_cid);
    if (guest_cid < 3)
        fail("guest cid must be 3 or more");

    port = cmdline_num("port", 1234);
    sport = cmdline_num("sport", 50000);
    if (!cmdline_str("msg", msg, sizeof(msg)))
        memcpy(msg, "hello", 6);
    u32 mlen = strlen(msg);

    send_pkt(OP_REQUEST, 0, NULL, 0);
    int op;
    do
        op = next_packet(5000);
    while (op == OP_CREDIT_UPDATE);
    if (op == OP_RST)
        fail("connection refused (RST)");
    if (op != OP_RESPONSE) {
        printf("vsock: got op %d instead of RESPONSE\n", op);
        fail("no RESPONSE to the connection request");
    }
    printf("vsock: connected to 2:%u from %lu:%u\n", port, guest_cid, sport);

    /* credit: the peer can take buf_alloc - (tx_cnt - fwd_cnt) bytes */
    for (int tries = 0; peer_buf_alloc - (tx_cnt - peer_fwd_cnt) < mlen; tries++) {
        if (tries == 3)
            fail("no credit from the peer");
        send_pkt(OP_CREDIT_REQUEST, 0, NULL, 0);
        op = next_packet(1000);
        if (op == OP_RST || op == OP_SHUTDOWN)
            fail("peer closed the connection");
    }
    send_pkt(OP_RW, 0, msg, mlen);
    tx_cnt += mlen;
    printf("vsock: sent %u bytes\n", mlen);

    while (echo_len < mlen) {
        op = next_packet(5000);
        if (op < 0)
            fail("timeout waiting for the echo");
        if (op == OP_RST)
            fail("peer reset the connection");
        if (op == OP_SHUTDOWN && echo_len < mlen)
            fail("peer shut down before echoing everything");
    }
    echo[echo_len < sizeof(echo) ? echo_len : sizeof(echo) - 1] = 0;
    printf("vsock: received \"%s\"\n", (char *)echo);
    if (echo_len != mlen || memcmp(echo, msg, mlen))
        fail("echo differs from what was sent");

    send_pkt(OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND, NULL, 0);
    u64 end = deadline_ms(3000);
    for (;;) {
        op = next_packet(500);
        if (op == OP_RST) {
            puts("vsock: closed by peer RST\n");
            break;
        }
        if (expired(end)) {
            send_pkt(OP_RST, 0, NULL, 0);
            puts("vsock: no RST from peer, sent RST\n");
            break;
        }
    }
    if (virtio_get_status(dev) & VIRTIO_STATUS_NEEDS_RESET)
        fail("device needs reset");
    puts("vsock: PASS\n");
    exit(0);
}

int main(void)
{
    virtio_platform_init();
    dev = virtio_find(VIRTIO_ID_VSOCK);
    if (!dev)
        fail("no virtio-vsock device");
    printf("vsock: using %s\n", dev->where);
    enter_user(user);
}
