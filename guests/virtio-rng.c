/*
 * virtio-rng: entropy from the device (VIRTIO 1.2 section 5.4).
 *
 * Asks for 64 bytes twice (one device-writable buffer each; the device may
 * fill less, so it asks again until 64 bytes arrived) and checks that
 * neither block is all zeros and that they differ.
 *
 * Output:  virtio: <where> device 4 (rng)       from discovery
 *          rng: using <where>
 *          rng: block 1: <first 16 bytes hex>
 *          rng: block 2: <first 16 bytes hex>
 *          rng: PASS                             exit 0
 *          rng: FAIL <why>                       exit 9
 */
#include "virtio/virtio.h"

#define FAIL_CODE 9

static struct virtio_dev *dev;
static struct virtq *vq;
static u8 block[2][64];
static u8 chunk[64];

static void fail(const char *why)
{
    printf("rng: FAIL %s\n", why);
    exit(FAIL_CODE);
}

static void get_block(u8 *out)
{
    u32 got = 0;
    for (int tries = 0; got < 64 && tries < 64; tries++) {
        memset(chunk, 0, sizeof(chunk));
        struct vbuf b = {chunk, 64 - got, VBUF_WRITE};
        if (virtq_add(vq, &b, 1, chunk) < 0)
            fail("queue full");
        virtq_kick(vq);
        u32 len;
        if (!virtq_wait(vq, &len, 3000))
            fail("timeout waiting for the device");
        if (len > 64 - got)
            fail("device wrote more than the buffer");
        memcpy(out + got, chunk, len);
        got += len;
    }
    if (got < 64)
        fail("device keeps returning short reads");
}

static void hex16(const char *label, const u8 *b)
{
    printf("rng: %s: ", label);
    for (int i = 0; i < 16; i++)
        printf("%02x", b[i]);
    putc('\n');
}

static int all_zero(const u8 *b)
{
    for (int i = 0; i < 64; i++)
        if (b[i])
            return 0;
    return 1;
}

static void user(void)
{
    if (!virtio_start(dev, 0))
        fail("device initialisation");
    vq = virtio_queue_setup(dev, 0, 0);
    if (!vq)
        fail("queue setup");
    virtio_driver_ok(dev);
    get_block(block[0]);
    get_block(block[1]);
    hex16("block 1", block[0]);
    hex16("block 2", block[1]);
    if (all_zero(block[0]) || all_zero(block[1]))
        fail("all-zero block");
    if (!memcmp(block[0], block[1], 64))
        fail("both blocks are the same");
    if (virtio_get_status(dev) & VIRTIO_STATUS_NEEDS_RESET)
        fail("device needs reset");
    puts("rng: PASS\n");
    exit(0);
}

int main(void)
{
    virtio_platform_init();
    dev = virtio_find(VIRTIO_ID_RNG);
    if (!dev)
        fail("no virtio-rng device");
    printf("rng: using %s\n", dev->where);
    enter_user(user);
}
