/*
 * A minimal virtio driver library for the guest kit: both transports
 * (virtio-mmio version 2 and virtio-pci "modern"), the common device set-up
 * (status, feature negotiation, queues), split virtqueues that are polled
 * (no interrupts), and bounded waits.
 *
 * Written from the Virtual I/O Device (VIRTIO) Version 1.2 specification:
 *   2.1 device status, 2.2 feature bits, 2.7 split virtqueues (2.7.5
 *   descriptors, 2.7.5.3 indirect descriptors, 2.7.6 available ring, 2.7.8
 *   used ring), 3.1 device initialisation, 4.1 virtio over PCI, 4.2 virtio
 *   over MMIO; and the PCI Local Bus specification (configuration mechanism
 *   #1, BAR sizing, capability list).
 *
 * Usage: at CPL0, virtio_platform_init() finds every device on both
 * transports (assigning PCI memory BARs that no firmware assigned, mapping
 * BARs above 4 GiB). Everything after that works at CPL0 or CPL3 (device
 * registers are MMIO in user-accessible pages or ports in the TSS bitmap):
 *
 *     struct virtio_dev *d = virtio_find(VIRTIO_ID_BLOCK);
 *     u64 f = virtio_start(d, VIRTIO_F_INDIRECT_DESC | MY_FEATURES);
 *     struct virtq *q = virtio_queue_setup(d, 0, 0);
 *     virtio_driver_ok(d);
 *     struct vbuf b[2] = {{req, 16, 0}, {status, 1, VBUF_WRITE}};
 *     virtq_add(q, b, 2, token); virtq_kick(q);
 *     virtq_wait(q, &len, 2000);
 *
 * Command-line words (all optional):
 *   transport=mmio|pci              use only devices on that transport
 *   virtio_mmio.device=<size>@<addr>[:<irq>]   one more virtio-mmio device
 *                                   (Linux's syntax; QEMU microvm with
 *                                   acpi=off passes its devices this way)
 */
#ifndef GUEST_VIRTIO_H
#define GUEST_VIRTIO_H

#include "runtime/runtime.h"

/* ---- constants from the specification --------------------------------- */

/* Device IDs (5) */
#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_CONSOLE 3
#define VIRTIO_ID_RNG 4
#define VIRTIO_ID_BALLOON 5
#define VIRTIO_ID_VSOCK 19

/* Device status (2.1) */
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED 0x80

/* Reserved feature bits (6) */
#define VIRTIO_F_INDIRECT_DESC (1UL << 28)
#define VIRTIO_F_EVENT_IDX (1UL << 29)
#define VIRTIO_F_VERSION_1 (1UL << 32)
#define VIRTIO_F_ACCESS_PLATFORM (1UL << 33)
#define VIRTIO_F_RING_PACKED (1UL << 34)

/* Split virtqueue descriptor flags (2.7.5) and ring flags (2.7.6, 2.7.8) */
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VIRTQ_DESC_F_INDIRECT 4
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTQ_USED_F_NO_NOTIFY 1

/* ---- limits of this library ------------------------------------------- */

#define VIRTIO_MAX_DEVS 64
#define VIRTIO_MAX_QUEUES 4   /* per device */
#define VIRTQ_MAX_SIZE 256    /* entries per queue (the library asks for at most this) */
#define VIRTQ_INDIRECT_MAX 16 /* descriptors per indirect table */
#define VIRTIO_QUEUE_POOL 8   /* queues for all devices started at one time */

/* ---- ring layout (2.7.5 - 2.7.8), little-endian on x86 ------------------- */

struct virtq_desc {
    u64 addr;
    u32 len;
    u16 flags;
    u16 next;
};

struct virtq_avail {
    u16 flags;
    u16 idx;
    u16 ring[VIRTQ_MAX_SIZE]; /* then used_event, at ring[size] */
    u16 used_event;
};

struct virtq_used_elem {
    u32 id;
    u32 len;
};

struct virtq_used {
    u16 flags;
    u16 idx;
    struct virtq_used_elem ring[VIRTQ_MAX_SIZE]; /* then avail_event */
    u16 avail_event;
};

struct virtio_dev;

/* One split virtqueue; the rings live in the library's static pool. */
struct virtq {
    struct virtio_dev *dev;
    u16 index;     /* queue number within the device */
    u16 size;      /* entries (power of 2) */
    u16 num_free;  /* free descriptors */
    u16 free_head; /* free descriptors are chained through desc[].next */
    u16 last_used; /* used->idx the driver has consumed up to */
    u16 avail_idx; /* driver's copy of avail->idx */
    u64 notify;    /* address the kick is written to */
    struct virtq_desc *desc;
    struct virtq_avail *avail;
    struct virtq_used *used;
    struct virtq_desc (*indirect)[VIRTQ_INDIRECT_MAX]; /* one table per head */
    void *token[VIRTQ_MAX_SIZE];
    u16 chain_len[VIRTQ_MAX_SIZE]; /* descriptors a head uses (to free them) */
};

enum { VIRTIO_MMIO = 1, VIRTIO_PCI = 2 };

struct virtio_dev {
    int transport;  /* VIRTIO_MMIO or VIRTIO_PCI */
    u32 device_id;  /* VIRTIO_ID_* */
    char where[40]; /* "mmio 0xd0000000" or "pci 00:03.0" */
    /* virtio-mmio */
    u64 base;
    /* virtio-pci: addresses of the structures the capabilities point at */
    u8 bus, slot, fn;
    u64 common, notify_base, isr, devcfg;
    u32 notify_mul, devcfg_len;
    /* state */
    u64 features; /* negotiated */
    int nqueues;  /* queues the device offers (PCI num_queues; MMIO: probed) */
    struct virtq *vq[VIRTIO_MAX_QUEUES];
};

/* A buffer of a chain: readable by the device unless VBUF_WRITE. */
struct vbuf {
    const void *addr;
    u32 len;
    u32 flags;
};
#define VBUF_WRITE 1

/* ---- discovery (CPL0) --------------------------------------------------- */

extern struct virtio_dev virtio_devs[VIRTIO_MAX_DEVS];
extern int virtio_ndevs;

/* Mask and remap the legacy PIC (so a stray interrupt cannot land on an
 * exception vector), estimate the TSC rate, scan PCI bus 0 and the
 * virtio-mmio slots. Prints one line per device:
 *   virtio: <where> device <id> (<name>)
 * Returns the number of devices. Call at CPL0 (CPUID, page tables). */
int virtio_platform_init(void);
/* First device of `type` (on the transport the command line allows). */
struct virtio_dev *virtio_find(u32 type);
const char *virtio_type_name(u32 type);
const char *virtio_transport_name(const struct virtio_dev *d);

/* ---- device life cycle (3.1) --------------------------------------------- */

/* Reset, ACKNOWLEDGE, DRIVER, negotiate: the driver accepts
 * `wanted & offered` plus VIRTIO_F_VERSION_1, sets FEATURES_OK and checks
 * it stuck. Returns the negotiated features, or 0 on failure (printed; the
 * device is left with FAILED set). Also frees the device's queues. */
u64 virtio_start(struct virtio_dev *d, u64 wanted);
/* Device features as offered (64 bits). */
u64 virtio_device_features(struct virtio_dev *d);
/* Set up queue `index` with at most `max_size` entries (0: as many as the
 * library allows). NULL if the device has no such queue or it is in use. */
struct virtq *virtio_queue_setup(struct virtio_dev *d, int index, u16 max_size);
/* Program queue `index` with raw values and enable it; returns the
 * address its notifications are written to. virtio_queue_setup uses it;
 * the fuzz guest feeds it nonsense. */
u64 virtio_queue_program(struct virtio_dev *d, int index, u16 size, u64 desc, u64 avail, u64 used);
/* Largest size the device allows for queue `index` (0: no such queue). */
u16 virtio_queue_max(struct virtio_dev *d, int index);
void virtio_driver_ok(struct virtio_dev *d);
u8 virtio_get_status(struct virtio_dev *d);
void virtio_set_status(struct virtio_dev *d, u8 status);
/* Write 0 to the status and wait (bounded) for it to read 0. Releases the
 * device's queues. Returns 0 on success, -1 if the status never cleared. */
int virtio_reset(struct virtio_dev *d);
/* Release all queues of all devices (the pool is shared). */
void virtio_release_queues(struct virtio_dev *d);

/* ---- device-specific configuration --------------------------------------- */

u8 virtio_cfg_read8(struct virtio_dev *d, u32 off);
u16 virtio_cfg_read16(struct virtio_dev *d, u32 off);
u32 virtio_cfg_read32(struct virtio_dev *d, u32 off);
/* Two 32-bit reads under a config-generation check (2.5.1). */
u64 virtio_cfg_read64(struct virtio_dev *d, u32 off);
void virtio_cfg_read_bytes(struct virtio_dev *d, u32 off, void *buf, u32 len);
void virtio_cfg_write8(struct virtio_dev *d, u32 off, u8 v);
void virtio_cfg_write32(struct virtio_dev *d, u32 off, u32 v);
u32 virtio_config_generation(struct virtio_dev *d);

/* ---- split virtqueues ----------------------------------------------------- */

/* Add a chain of n buffers (device-readable ones first, then writable ones,
 * as the spec requires of drivers). Uses an indirect table when `indirect`
 * and the feature was negotiated. Returns the head index, or -1 if the ring
 * is full. token comes back from virtq_get/virtq_wait. */
int virtq_add(struct virtq *q, const struct vbuf *bufs, int n, void *token);
int virtq_add_indirect(struct virtq *q, const struct vbuf *bufs, int n, void *token);
/* Notify the device of queue q (always: the library does not use
 * notification suppression). */
void virtq_kick(struct virtq *q);
/* One used entry, if any: returns its token (NULL if none) and frees its
 * descriptors; *len (if len is not NULL) gets the bytes the device wrote.
 * Tokens must not be NULL. */
void *virtq_get(struct virtq *q, u32 *len);
/* virtq_get with a bounded wait; NULL on timeout. */
void *virtq_wait(struct virtq *q, u32 *len, u32 timeout_ms);
/* Used entries not yet consumed. */
u16 virtq_pending_used(struct virtq *q);

/* ---- time ------------------------------------------------------------------- */

extern u64 tsc_per_ms; /* estimated by virtio_platform_init */
static inline u64 deadline_ms(u32 ms) { return rdtsc() + (u64)ms * tsc_per_ms; }
static inline int expired(u64 deadline) { return rdtsc() >= deadline; }
void delay_ms(u32 ms); /* spin (call at CPL3 for accuracy's sake) */

/* ---- small helpers for guests ---------------------------------------------- */

/* Value of "key=value" on the command line (number: decimal or 0x hex);
 * `def` if absent. */
u64 cmdline_num(const char *key, u64 def);
/* Copy the value of "key=..." (up to a space) into buf; 0 if absent. */
int cmdline_str(const char *key, char *buf, int size);
/* A full barrier (a locked add: no fence instructions, see README). */
static inline void virtio_mb(void) { __asm__ volatile("lock; addl $0, (%%rsp)" ::: "memory", "cc"); }

#endif
