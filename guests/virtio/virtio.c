/*
 * Virtio common part: discovery on both transports, the device
 * initialisation sequence (VIRTIO 1.2 section 3.1.1), feature negotiation,
 * queue set-up and device configuration access, for virtio-mmio (4.2.2,
 * register layout of version 2) and virtio-pci (4.1.4.3, common
 * configuration structure).
 */
#include "virtio.h"

int virtio_pci_scan(struct virtio_dev *out, int max);

struct virtio_dev virtio_devs[VIRTIO_MAX_DEVS];
int virtio_ndevs;
u64 tsc_per_ms = 3000000; /* a guess until virtio_platform_init */

/* ---- virtio-mmio registers (4.2.2) --------------------------------------- */

#define MMIO_MAGIC 0x000
#define MMIO_VERSION 0x004
#define MMIO_DEVICE_ID 0x008
#define MMIO_DEVICE_FEATURES 0x010
#define MMIO_DEVICE_FEATURES_SEL 0x014
#define MMIO_DRIVER_FEATURES 0x020
#define MMIO_DRIVER_FEATURES_SEL 0x024
#define MMIO_QUEUE_SEL 0x030
#define MMIO_QUEUE_NUM_MAX 0x034
#define MMIO_QUEUE_NUM 0x038
#define MMIO_QUEUE_READY 0x044
#define MMIO_QUEUE_NOTIFY 0x050
#define MMIO_INTERRUPT_STATUS 0x060
#define MMIO_INTERRUPT_ACK 0x064
#define MMIO_STATUS 0x070
#define MMIO_QUEUE_DESC 0x080
#define MMIO_QUEUE_DRIVER 0x090
#define MMIO_QUEUE_DEVICE 0x0a0
#define MMIO_CONFIG_GENERATION 0x0fc
#define MMIO_CONFIG 0x100
#define MMIO_MAGIC_VALUE 0x74726976 /* "virt" */

#define MMIO_SLOTS_BASE 0xD0000000UL
#define MMIO_SLOTS 32
#define MMIO_SLOT_STRIDE 0x1000

/* ---- virtio-pci common configuration (4.1.4.3) --------------------------- */

#define PCI_DEVICE_FEATURE_SELECT 0x00
#define PCI_DEVICE_FEATURE 0x04
#define PCI_DRIVER_FEATURE_SELECT 0x08
#define PCI_DRIVER_FEATURE 0x0c
#define PCI_CONFIG_MSIX_VECTOR 0x10
#define PCI_NUM_QUEUES 0x12
#define PCI_DEVICE_STATUS 0x14
#define PCI_CONFIG_GENERATION 0x15
#define PCI_QUEUE_SELECT 0x16
#define PCI_QUEUE_SIZE 0x18
#define PCI_QUEUE_MSIX_VECTOR 0x1a
#define PCI_QUEUE_ENABLE 0x1c
#define PCI_QUEUE_NOTIFY_OFF 0x1e
#define PCI_QUEUE_DESC 0x20
#define PCI_QUEUE_DRIVER 0x28
#define PCI_QUEUE_DEVICE 0x30
#define VIRTIO_MSI_NO_VECTOR 0xffff

/* ---- names --------------------------------------------------------------- */

const char *virtio_type_name(u32 type)
{
    switch (type) {
    case VIRTIO_ID_NET: return "net";
    case VIRTIO_ID_BLOCK: return "blk";
    case VIRTIO_ID_CONSOLE: return "console";
    case VIRTIO_ID_RNG: return "rng";
    case VIRTIO_ID_BALLOON: return "balloon";
    case VIRTIO_ID_VSOCK: return "vsock";
    default: return "other";
    }
}

const char *virtio_transport_name(const struct virtio_dev *d)
{
    return d->transport == VIRTIO_MMIO ? "mmio" : "pci";
}

/* ---- command line -------------------------------------------------------- */

/* Pointer to the value of "key=" on the command line, or NULL. */
static const char *cmdline_value(const char *key)
{
    const char *start = boot_cmdline(), *s = start;
    size_t n = strlen(key);
    for (; *s; s++)
        if ((s == start || s[-1] == ' ') && !strncmp(s, key, n) && s[n] == '=')
            return s + n + 1;
    return NULL;
}

/* Parse a number (decimal, or hex with 0x) with an optional K/M/G suffix. */
static u64 parse_num(const char **pp)
{
    const char *p = *pp;
    u64 v = 0;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        p += 2;
        for (;; p++) {
            int c = *p, dgt;
            if (c >= '0' && c <= '9') dgt = c - '0';
            else if (c >= 'a' && c <= 'f') dgt = c - 'a' + 10;
            else if (c >= 'A' && c <= 'F') dgt = c - 'A' + 10;
            else break;
            v = v * 16 + dgt;
        }
    } else {
        for (; *p >= '0' && *p <= '9'; p++)
            v = v * 10 + (*p - '0');
    }
    if (*p == 'K' || *p == 'k') v <<= 10, p++;
    else if (*p == 'M' || *p == 'm') v <<= 20, p++;
    else if (*p == 'G' || *p == 'g') v <<= 30, p++;
    *pp = p;
    return v;
}

u64 cmdline_num(const char *key, u64 def)
{
    const char *v = cmdline_value(key);
    if (!v || !(*v >= '0' && *v <= '9'))
        return def;
    return parse_num(&v);
}

int cmdline_str(const char *key, char *buf, int size)
{
    const char *v = cmdline_value(key);
    if (!v)
        return 0;
    int i = 0;
    for (; v[i] && v[i] != ' ' && i < size - 1; i++)
        buf[i] = v[i];
    buf[i] = 0;
    return 1;
}

static int transport_allowed(int transport)
{
    char t[8];
    if (!cmdline_str("transport", t, sizeof(t)))
        return 1;
    if (!strncmp(t, "mmio", 5))
        return transport == VIRTIO_MMIO;
    if (!strncmp(t, "pci", 4))
        return transport == VIRTIO_PCI;
    return 1;
}

/* ---- time ---------------------------------------------------------------- */

/* The TSC rate from CPUID (leaf 0x15 crystal ratio, leaf 0x16 base MHz, or
 * the hypervisor timing leaf 0x40000010); a 3 GHz guess otherwise. Timeouts
 * only need the right order of magnitude. */
static void tsc_estimate(void)
{
    u32 a, b, c, d, max;
    cpuid(0, 0, &max, &b, &c, &d);
    if (max >= 0x15) {
        cpuid(0x15, 0, &a, &b, &c, &d);
        if (a && b && c) {
            tsc_per_ms = (u64)c * b / a / 1000;
            return;
        }
    }
    if (max >= 0x16) {
        cpuid(0x16, 0, &a, &b, &c, &d);
        if (a & 0xffff) {
            tsc_per_ms = (u64)(a & 0xffff) * 1000;
            return;
        }
    }
    cpuid(0x40000000, 0, &a, &b, &c, &d);
    if (a >= 0x40000010) {
        cpuid(0x40000010, 0, &a, &b, &c, &d);
        if (a > 100000 && a < 10000000) { /* kHz */
            tsc_per_ms = a;
            return;
        }
    }
}

void delay_ms(u32 ms)
{
    u64 end = deadline_ms(ms);
    while (!expired(end))
        pause();
}

/* ---- discovery ----------------------------------------------------------- */

static void mmio_probe(u64 base)
{
    if (virtio_ndevs == VIRTIO_MAX_DEVS)
        return;
    if (mmio_read32(base + MMIO_MAGIC) != MMIO_MAGIC_VALUE)
        return;
    u32 version = mmio_read32(base + MMIO_VERSION), id = mmio_read32(base + MMIO_DEVICE_ID);
    if (!id)
        return;
    if (version != 2) {
        printf("virtio: mmio 0x%lx: version %u (legacy) not supported\n", base, version);
        return;
    }
    for (int i = 0; i < virtio_ndevs; i++)
        if (virtio_devs[i].transport == VIRTIO_MMIO && virtio_devs[i].base == base)
            return;
    struct virtio_dev *d = &virtio_devs[virtio_ndevs++];
    memset(d, 0, sizeof(*d));
    d->transport = VIRTIO_MMIO;
    d->device_id = id;
    d->base = base;
}

/* Every "virtio_mmio.device=<size>@<base>[:<irq>]" word. */
static void mmio_cmdline_devices(void)
{
    const char *start = boot_cmdline(), *s = start;
    static const char key[] = "virtio_mmio.device=";
    for (; *s; s++) {
        if ((s != start && s[-1] != ' ') || strncmp(s, key, sizeof(key) - 1))
            continue;
        const char *p = s + sizeof(key) - 1;
        parse_num(&p);
        if (*p++ != '@')
            continue;
        u64 base = parse_num(&p);
        if (base && base < (4UL << 30))
            mmio_probe(base);
    }
}

static void pic_mask_all(void)
{
    /* ICW1-4: vectors 0x20/0x28 (not the exception vectors a reset PIC
     * uses), cascade on IRQ2, 8086 mode; then mask every line. Polled
     * guests want no interrupts; a stray one now lands on a vector the
     * runtime reports and survives. */
    outb(0x20, 0x11); outb(0xa0, 0x11);
    outb(0x21, 0x20); outb(0xa1, 0x28);
    outb(0x21, 0x04); outb(0xa1, 0x02);
    outb(0x21, 0x01); outb(0xa1, 0x01);
    outb(0x21, 0xff); outb(0xa1, 0xff);
}

int virtio_platform_init(void)
{
    pic_mask_all();
    tsc_estimate();
    virtio_ndevs = 0;
    if (transport_allowed(VIRTIO_PCI))
        virtio_ndevs += virtio_pci_scan(virtio_devs, VIRTIO_MAX_DEVS);
    if (transport_allowed(VIRTIO_MMIO)) {
        for (int i = 0; i < MMIO_SLOTS; i++)
            mmio_probe(MMIO_SLOTS_BASE + (u64)i * MMIO_SLOT_STRIDE);
        mmio_cmdline_devices();
    }
    for (int i = 0; i < virtio_ndevs; i++) {
        struct virtio_dev *d = &virtio_devs[i];
        if (d->transport == VIRTIO_MMIO) {
            /* "mmio 0x" + 16 hex digits fits */
            char *w = d->where;
            memcpy(w, "mmio 0x", 7);
            int n = 0;
            for (u64 v = d->base; v || !n; v >>= 4)
                n++;
            for (int k = n - 1; k >= 0; k--)
                w[7 + (n - 1 - k)] = "0123456789abcdef"[(d->base >> (4 * k)) & 15];
            w[7 + n] = 0;
        } else {
            char *w = d->where;
            memcpy(w, "pci 00:00.0", 12);
            w[4] = "0123456789abcdef"[d->bus >> 4];
            w[5] = "0123456789abcdef"[d->bus & 15];
            w[7] = "0123456789abcdef"[d->slot >> 4];
            w[8] = "0123456789abcdef"[d->slot & 15];
            w[10] = '0' + d->fn;
        }
        printf("virtio: %s device %u (%s)\n", d->where, d->device_id, virtio_type_name(d->device_id));
    }
    return virtio_ndevs;
}

struct virtio_dev *virtio_find(u32 type)
{
    for (int i = 0; i < virtio_ndevs; i++)
        if (virtio_devs[i].device_id == type)
            return &virtio_devs[i];
    return NULL;
}

/* ---- register access ------------------------------------------------------ */

#define MMIO(d, r) ((d)->base + (r))
#define COMMON(d, r) ((d)->common + (r))

u8 virtio_get_status(struct virtio_dev *d)
{
    if (d->transport == VIRTIO_MMIO)
        return (u8)mmio_read32(MMIO(d, MMIO_STATUS));
    return mmio_read8(COMMON(d, PCI_DEVICE_STATUS));
}

void virtio_set_status(struct virtio_dev *d, u8 status)
{
    if (d->transport == VIRTIO_MMIO)
        mmio_write32(MMIO(d, MMIO_STATUS), status);
    else
        mmio_write8(COMMON(d, PCI_DEVICE_STATUS), status);
}

u64 virtio_device_features(struct virtio_dev *d)
{
    u64 f = 0;
    for (u32 sel = 0; sel < 2; sel++) {
        u32 v;
        if (d->transport == VIRTIO_MMIO) {
            mmio_write32(MMIO(d, MMIO_DEVICE_FEATURES_SEL), sel);
            v = mmio_read32(MMIO(d, MMIO_DEVICE_FEATURES));
        } else {
            mmio_write32(COMMON(d, PCI_DEVICE_FEATURE_SELECT), sel);
            v = mmio_read32(COMMON(d, PCI_DEVICE_FEATURE));
        }
        f |= (u64)v << (32 * sel);
    }
    return f;
}

static void set_driver_features(struct virtio_dev *d, u64 f)
{
    for (u32 sel = 0; sel < 2; sel++) {
        u32 v = (u32)(f >> (32 * sel));
        if (d->transport == VIRTIO_MMIO) {
            mmio_write32(MMIO(d, MMIO_DRIVER_FEATURES_SEL), sel);
            mmio_write32(MMIO(d, MMIO_DRIVER_FEATURES), v);
        } else {
            mmio_write32(COMMON(d, PCI_DRIVER_FEATURE_SELECT), sel);
            mmio_write32(COMMON(d, PCI_DRIVER_FEATURE), v);
        }
    }
}

u32 virtio_config_generation(struct virtio_dev *d)
{
    if (d->transport == VIRTIO_MMIO)
        return mmio_read32(MMIO(d, MMIO_CONFIG_GENERATION));
    return mmio_read8(COMMON(d, PCI_CONFIG_GENERATION));
}

static u64 cfg_base(struct virtio_dev *d)
{
    return d->transport == VIRTIO_MMIO ? d->base + MMIO_CONFIG : d->devcfg;
}

static int cfg_ok(struct virtio_dev *d, u32 off, u32 size)
{
    if (d->transport == VIRTIO_PCI)
        return d->devcfg && off + size <= d->devcfg_len;
    return off + size <= 0x1000 - MMIO_CONFIG;
}

u8 virtio_cfg_read8(struct virtio_dev *d, u32 off) { return cfg_ok(d, off, 1) ? mmio_read8(cfg_base(d) + off) : 0; }
u16 virtio_cfg_read16(struct virtio_dev *d, u32 off) { return cfg_ok(d, off, 2) ? mmio_read16(cfg_base(d) + off) : 0; }
u32 virtio_cfg_read32(struct virtio_dev *d, u32 off) { return cfg_ok(d, off, 4) ? mmio_read32(cfg_base(d) + off) : 0; }
void virtio_cfg_write8(struct virtio_dev *d, u32 off, u8 v)
{
    if (cfg_ok(d, off, 1))
        mmio_write8(cfg_base(d) + off, v);
}
void virtio_cfg_write32(struct virtio_dev *d, u32 off, u32 v)
{
    if (cfg_ok(d, off, 4))
        mmio_write32(cfg_base(d) + off, v);
}

u64 virtio_cfg_read64(struct virtio_dev *d, u32 off)
{
    u64 v = 0;
    for (int tries = 0; tries < 100; tries++) {
        u32 g = virtio_config_generation(d);
        v = virtio_cfg_read32(d, off) | (u64)virtio_cfg_read32(d, off + 4) << 32;
        if (virtio_config_generation(d) == g)
            break;
    }
    return v;
}

void virtio_cfg_read_bytes(struct virtio_dev *d, u32 off, void *buf, u32 len)
{
    u8 *b = buf;
    for (int tries = 0; tries < 100; tries++) {
        u32 g = virtio_config_generation(d);
        for (u32 i = 0; i < len; i++)
            b[i] = virtio_cfg_read8(d, off + i);
        if (virtio_config_generation(d) == g)
            break;
    }
}

/* ---- queue memory pool ----------------------------------------------------- */

struct vq_mem {
    struct virtq_desc desc[VIRTQ_MAX_SIZE];                      /* 4 KiB, 16-aligned */
    struct virtq_desc indirect[VIRTQ_MAX_SIZE][VIRTQ_INDIRECT_MAX];
    struct virtq_avail avail __attribute__((aligned(4096)));      /* 2-aligned */
    struct virtq_used used __attribute__((aligned(4096)));        /* 4-aligned */
} __attribute__((aligned(4096)));

static struct vq_mem vq_pool[VIRTIO_QUEUE_POOL];
static struct virtq vq_state[VIRTIO_QUEUE_POOL];
static struct virtio_dev *vq_owner[VIRTIO_QUEUE_POOL];

void virtio_release_queues(struct virtio_dev *d)
{
    for (int i = 0; i < VIRTIO_QUEUE_POOL; i++)
        if (vq_owner[i] == d)
            vq_owner[i] = NULL;
    for (int i = 0; i < VIRTIO_MAX_QUEUES; i++)
        d->vq[i] = NULL;
}

/* ---- life cycle ------------------------------------------------------------ */

int virtio_reset(struct virtio_dev *d)
{
    virtio_set_status(d, 0);
    /* 4.1.4.3.2 / 4.2.2.2: the driver waits for the status to read 0 */
    u64 end = deadline_ms(1000);
    int ok = 0;
    do {
        if (virtio_get_status(d) == 0) {
            ok = 1;
            break;
        }
        pause();
    } while (!expired(end));
    virtio_release_queues(d);
    d->features = 0;
    return ok ? 0 : -1;
}

static void fail(struct virtio_dev *d, const char *why)
{
    printf("virtio: %s: %s\n", d->where, why);
    virtio_set_status(d, virtio_get_status(d) | VIRTIO_STATUS_FAILED);
}

u64 virtio_start(struct virtio_dev *d, u64 wanted)
{
    if (virtio_reset(d)) {
        fail(d, "reset: status did not read 0");
        return 0;
    }
    virtio_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE);
    virtio_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    u64 offered = virtio_device_features(d);
    if (!(offered & VIRTIO_F_VERSION_1)) {
        fail(d, "device does not offer VIRTIO_F_VERSION_1");
        return 0;
    }
    u64 f = (offered & wanted) | VIRTIO_F_VERSION_1;
    set_driver_features(d, f);
    virtio_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
    if (!(virtio_get_status(d) & VIRTIO_STATUS_FEATURES_OK)) {
        fail(d, "FEATURES_OK not accepted");
        return 0;
    }
    d->features = f;
    if (d->transport == VIRTIO_PCI) {
        d->nqueues = mmio_read16(COMMON(d, PCI_NUM_QUEUES));
        /* no MSI-X: report nothing through vectors (polling) */
        mmio_write16(COMMON(d, PCI_CONFIG_MSIX_VECTOR), VIRTIO_MSI_NO_VECTOR);
    } else {
        int n = 0;
        for (; n < 16; n++) {
            mmio_write32(MMIO(d, MMIO_QUEUE_SEL), n);
            if (!mmio_read32(MMIO(d, MMIO_QUEUE_NUM_MAX)))
                break;
        }
        d->nqueues = n;
    }
    return f;
}

u16 virtio_queue_max(struct virtio_dev *d, int index)
{
    if (index >= d->nqueues)
        return 0;
    if (d->transport == VIRTIO_MMIO) {
        mmio_write32(MMIO(d, MMIO_QUEUE_SEL), index);
        u32 m = mmio_read32(MMIO(d, MMIO_QUEUE_NUM_MAX));
        return m > 0xffff ? 0xffff : (u16)m;
    }
    mmio_write16(COMMON(d, PCI_QUEUE_SELECT), index);
    return mmio_read16(COMMON(d, PCI_QUEUE_SIZE));
}

u64 virtio_queue_program(struct virtio_dev *d, int index, u16 size, u64 da, u64 aa, u64 ua)
{
    if (d->transport == VIRTIO_MMIO) {
        mmio_write32(MMIO(d, MMIO_QUEUE_SEL), index);
        if (mmio_read32(MMIO(d, MMIO_QUEUE_READY)))
            mmio_write32(MMIO(d, MMIO_QUEUE_READY), 0); /* reprogramming (fuzz) */
        mmio_write32(MMIO(d, MMIO_QUEUE_NUM), size);
        mmio_write32(MMIO(d, MMIO_QUEUE_DESC), (u32)da);
        mmio_write32(MMIO(d, MMIO_QUEUE_DESC + 4), (u32)(da >> 32));
        mmio_write32(MMIO(d, MMIO_QUEUE_DRIVER), (u32)aa);
        mmio_write32(MMIO(d, MMIO_QUEUE_DRIVER + 4), (u32)(aa >> 32));
        mmio_write32(MMIO(d, MMIO_QUEUE_DEVICE), (u32)ua);
        mmio_write32(MMIO(d, MMIO_QUEUE_DEVICE + 4), (u32)(ua >> 32));
        mmio_write32(MMIO(d, MMIO_QUEUE_READY), 1);
        return MMIO(d, MMIO_QUEUE_NOTIFY);
    }
    mmio_write16(COMMON(d, PCI_QUEUE_SELECT), index);
    mmio_write16(COMMON(d, PCI_QUEUE_SIZE), size);
    mmio_write16(COMMON(d, PCI_QUEUE_MSIX_VECTOR), VIRTIO_MSI_NO_VECTOR);
    /* 64-bit fields as two 32-bit writes, low half first */
    mmio_write32(COMMON(d, PCI_QUEUE_DESC), (u32)da);
    mmio_write32(COMMON(d, PCI_QUEUE_DESC + 4), (u32)(da >> 32));
    mmio_write32(COMMON(d, PCI_QUEUE_DRIVER), (u32)aa);
    mmio_write32(COMMON(d, PCI_QUEUE_DRIVER + 4), (u32)(aa >> 32));
    mmio_write32(COMMON(d, PCI_QUEUE_DEVICE), (u32)ua);
    mmio_write32(COMMON(d, PCI_QUEUE_DEVICE + 4), (u32)(ua >> 32));
    u16 off = mmio_read16(COMMON(d, PCI_QUEUE_NOTIFY_OFF));
    mmio_write16(COMMON(d, PCI_QUEUE_ENABLE), 1);
    return d->notify_base + (u64)off * d->notify_mul;
}

struct virtq *virtio_queue_setup(struct virtio_dev *d, int index, u16 max_size)
{
    if (index < 0 || index >= VIRTIO_MAX_QUEUES || d->vq[index])
        return NULL;
    u16 devmax = virtio_queue_max(d, index);
    if (!devmax) {
        printf("virtio: %s: no queue %d\n", d->where, index);
        return NULL;
    }
    u16 size = VIRTQ_MAX_SIZE;
    if (max_size && max_size < size)
        size = max_size;
    while (size > devmax)
        size >>= 1;
    /* the size must be a power of 2 (2.7) */
    while (size & (size - 1))
        size &= size - 1;
    int slot = -1;
    for (int i = 0; i < VIRTIO_QUEUE_POOL; i++)
        if (!vq_owner[i]) {
            slot = i;
            break;
        }
    if (slot < 0 || !size) {
        printf("virtio: %s: no memory for queue %d\n", d->where, index);
        return NULL;
    }
    struct vq_mem *m = &vq_pool[slot];
    struct virtq *q = &vq_state[slot];
    /* only what this size uses (memset is slow at CPL0 on some hosts) */
    memset(m->desc, 0, size * sizeof(struct virtq_desc));
    memset(&m->avail, 0, 6 + 2 * size);
    memset(&m->used, 0, 6 + 8 * size);
    memset(q, 0, sizeof(*q));
    vq_owner[slot] = d;
    q->dev = d;
    q->index = index;
    q->size = size;
    q->desc = m->desc;
    q->avail = &m->avail;
    q->used = &m->used;
    q->indirect = m->indirect;
    q->num_free = size;
    q->free_head = 0;
    for (u16 i = 0; i < size; i++)
        q->desc[i].next = i + 1 < size ? i + 1 : 0;
    /* polled: ask the device not to interrupt */
    q->avail->flags = VIRTQ_AVAIL_F_NO_INTERRUPT;
    if (d->transport == VIRTIO_MMIO) {
        mmio_write32(MMIO(d, MMIO_QUEUE_SEL), index);
        if (mmio_read32(MMIO(d, MMIO_QUEUE_READY))) {
            printf("virtio: %s: queue %d already ready\n", d->where, index);
            vq_owner[slot] = NULL;
            return NULL;
        }
    }
    q->notify = virtio_queue_program(d, index, size, (u64)q->desc, (u64)q->avail, (u64)q->used);
    d->vq[index] = q;
    return q;
}

void virtio_driver_ok(struct virtio_dev *d)
{
    virtio_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK |
                             VIRTIO_STATUS_DRIVER_OK);
}
