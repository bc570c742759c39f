/*
 * PCI for virtio guests: configuration mechanism #1 (ports 0xcf8/0xcfc),
 * bus 0 enumeration, memory BAR sizing and assignment, capability parsing
 * (virtio vendor capabilities, VIRTIO 1.2 section 4.1.4).
 *
 * There may be no firmware: BARs that read 0 get an address from the window
 * PCI_WINDOW_START..PCI_WINDOW_END, above every BAR already assigned there.
 * BARs a firmware assigned (QEMU's) are kept; those above 4 GiB get an
 * identity mapping (the runtime maps only the first 4 GiB).
 */
#include "virtio.h"

#define PCI_WINDOW_START 0xC0000000UL
#define PCI_WINDOW_END 0xD0000000UL

#define PCI_CMD 0x04
#define PCI_CMD_MEM 0x02
#define PCI_STATUS_CAPS 0x10
#define PCI_BAR0 0x10
#define PCI_CAP_PTR 0x34
#define PCI_CAP_VENDOR 0x09

/* virtio_pci_cap cfg_type (4.1.4) */
#define VIRTIO_PCI_CAP_COMMON_CFG 1
#define VIRTIO_PCI_CAP_NOTIFY_CFG 2
#define VIRTIO_PCI_CAP_ISR_CFG 3
#define VIRTIO_PCI_CAP_DEVICE_CFG 4

static u32 cfg_addr(int bus, int slot, int fn, int off)
{
    return 0x80000000u | bus << 16 | slot << 11 | fn << 8 | (off & 0xfc);
}

u32 pci_read32(int bus, int slot, int fn, int off)
{
    outl(0xcf8, cfg_addr(bus, slot, fn, off));
    return inl(0xcfc);
}

u16 pci_read16(int bus, int slot, int fn, int off)
{
    outl(0xcf8, cfg_addr(bus, slot, fn, off));
    return inw(0xcfc + (off & 2));
}

u8 pci_read8(int bus, int slot, int fn, int off)
{
    outl(0xcf8, cfg_addr(bus, slot, fn, off));
    return inb(0xcfc + (off & 3));
}

void pci_write32(int bus, int slot, int fn, int off, u32 v)
{
    outl(0xcf8, cfg_addr(bus, slot, fn, off));
    outl(0xcfc, v);
}

void pci_write16(int bus, int slot, int fn, int off, u16 v)
{
    outl(0xcf8, cfg_addr(bus, slot, fn, off));
    outw(0xcfc + (off & 2), v);
}

/* ---- identity mappings above 4 GiB ------------------------------------- */

/* Page directories (2 MiB pages) and PDPTs for BARs firmware put above
 * 4 GiB; a few GiB-sized pieces of address space are enough. */
#define HIGH_PDS 8
#define HIGH_PDPTS 4
static u64 high_pd[HIGH_PDS][512] __attribute__((aligned(4096)));
static u64 high_pdpt[HIGH_PDPTS][512] __attribute__((aligned(4096)));
static int high_pd_used, high_pdpt_used;

/* Identity-map [addr, addr + size) with 2 MiB user pages. CPL0 only (it
 * reloads CR3). Returns 0, or -1 if out of tables or beyond 2^48. */
static int map_identity(u64 addr, u64 size)
{
    if (addr + size <= (4UL << 30))
        return 0;
    if (addr + size > (1UL << 47))
        return -1;
    for (u64 a = addr & ~((1UL << 21) - 1); a < addr + size; a += 1UL << 21) {
        u64 *pml4e = &pml4[(a >> 39) & 511];
        if (!(*pml4e & 1)) {
            if (high_pdpt_used == HIGH_PDPTS)
                return -1;
            *pml4e = (u64)high_pdpt[high_pdpt_used++] | 7;
        }
        u64 *pdpt_tab = (u64 *)(*pml4e & ~0xfffUL);
        u64 *pdpte = &pdpt_tab[(a >> 30) & 511];
        if (!(*pdpte & 1)) {
            if (high_pd_used == HIGH_PDS)
                return -1;
            *pdpte = (u64)high_pd[high_pd_used++] | 7;
        }
        u64 *pd = (u64 *)(*pdpte & ~0xfffUL);
        /* P | RW | US | PS | PCD (uncached: device memory) */
        pd[(a >> 21) & 511] = a | 0x97;
    }
    write_cr3((u64)pml4);
    return 0;
}

/* ---- BARs ---------------------------------------------------------------- */

struct bar {
    u64 addr, size;
    int is64, io;
};

/* Size BAR i of a function (memory decoding is switched off meanwhile). */
static void bar_probe(int b, int s, int f, int i, struct bar *out)
{
    int off = PCI_BAR0 + 4 * i;
    u32 lo = pci_read32(b, s, f, off);
    out->io = lo & 1;
    out->is64 = !out->io && ((lo >> 1) & 3) == 2;
    out->addr = out->size = 0;
    if (out->io)
        return;
    u32 hi = out->is64 ? pci_read32(b, s, f, off + 4) : 0;
    u16 cmd = pci_read16(b, s, f, PCI_CMD);
    pci_write16(b, s, f, PCI_CMD, cmd & ~PCI_CMD_MEM);
    pci_write32(b, s, f, off, 0xffffffff);
    u64 mask = pci_read32(b, s, f, off) & ~0xfUL;
    pci_write32(b, s, f, off, lo);
    if (out->is64) {
        pci_write32(b, s, f, off + 4, 0xffffffff);
        mask |= (u64)pci_read32(b, s, f, off + 4) << 32;
        pci_write32(b, s, f, off + 4, hi);
    } else {
        mask |= 0xffffffff00000000UL;
    }
    pci_write16(b, s, f, PCI_CMD, cmd);
    out->addr = ((u64)hi << 32) | (lo & ~0xfUL);
    out->size = (mask & ~0xfUL) ? ~(mask & ~0xfUL) + 1 : 0;
}

static u64 window_next = PCI_WINDOW_START;

/* Everything firmware already placed in the window: allocate above it. */
static void note_assigned(int b, int s, int f)
{
    u8 htype = pci_read8(b, s, f, 0x0e) & 0x7f;
    int nbars = htype == 0 ? 6 : htype == 1 ? 2 : 0;
    for (int i = 0; i < nbars; i++) {
        struct bar bar;
        bar_probe(b, s, f, i, &bar);
        if (!bar.io && bar.size && bar.addr >= PCI_WINDOW_START && bar.addr < PCI_WINDOW_END &&
            bar.addr + bar.size > window_next)
            window_next = bar.addr + bar.size;
        if (bar.is64)
            i++;
    }
}

/* The address of memory BAR i, assigning one if it has none. 0 if the BAR
 * is absent, is an I/O BAR, or there is no room. */
static u64 bar_address(int b, int s, int f, int i)
{
    struct bar bar;
    bar_probe(b, s, f, i, &bar);
    if (bar.io || !bar.size)
        return 0;
    if (bar.addr) {
        if (map_identity(bar.addr, bar.size)) {
            printf("virtio: pci %02x:%02x.%x BAR%d at 0x%lx cannot be mapped\n", b, s, f, i, bar.addr);
            return 0;
        }
        return bar.addr;
    }
    u64 a = (window_next + bar.size - 1) & ~(bar.size - 1);
    if (a + bar.size > PCI_WINDOW_END) {
        printf("virtio: pci %02x:%02x.%x BAR%d: no room for 0x%lx bytes\n", b, s, f, i, bar.size);
        return 0;
    }
    window_next = a + bar.size;
    printf("virtio: pci %02x:%02x.%x BAR%d := 0x%lx (0x%lx bytes)\n", b, s, f, i, a, bar.size);
    int off = PCI_BAR0 + 4 * i;
    pci_write32(b, s, f, off, (u32)a);
    if (bar.is64)
        pci_write32(b, s, f, off + 4, 0);
    return a;
}

/* ---- virtio devices ------------------------------------------------------ */

/* virtio-pci device IDs: 0x1040 + type (modern), 0x1000..0x103f
 * (transitional: the type is the subsystem device ID). */
static u32 virtio_type_of(int b, int s, int f)
{
    u32 id = pci_read32(b, s, f, 0);
    if ((id & 0xffff) != 0x1af4)
        return 0;
    u16 dev = id >> 16;
    if (dev >= 0x1040 && dev <= 0x107f)
        return dev - 0x1040;
    if (dev >= 0x1000 && dev <= 0x103f)
        return pci_read16(b, s, f, 0x2e);
    return 0;
}

/* Parse the virtio capabilities of one function into d; 0 if usable. */
static int parse_caps(struct virtio_dev *d, int b, int s, int f)
{
    u64 bars[6] = {0};
    int have_bar[6] = {0};
    int found = 0;
    if (!(pci_read16(b, s, f, 0x06) & PCI_STATUS_CAPS))
        return -1;
    u8 p = pci_read8(b, s, f, PCI_CAP_PTR) & 0xfc;
    for (int guard = 0; p >= 0x40 && guard < 48; guard++) {
        u8 id = pci_read8(b, s, f, p), next = pci_read8(b, s, f, p + 1) & 0xfc;
        if (id == PCI_CAP_VENDOR) {
            /* struct virtio_pci_cap: vndr, next, len, cfg_type, bar, id,
             * pad[2], offset (le32), length (le32); notify adds the
             * multiplier (le32) */
            u8 type = pci_read8(b, s, f, p + 3), bar = pci_read8(b, s, f, p + 4);
            u32 off = pci_read32(b, s, f, p + 8), len = pci_read32(b, s, f, p + 12);
            if (bar < 6 && type >= 1 && type <= 4 && !(found & (1 << type))) {
                if (!have_bar[bar]) {
                    bars[bar] = bar_address(b, s, f, bar);
                    have_bar[bar] = 1;
                }
                if (bars[bar]) {
                    u64 a = bars[bar] + off;
                    found |= 1 << type;
                    if (type == VIRTIO_PCI_CAP_COMMON_CFG)
                        d->common = a;
                    else if (type == VIRTIO_PCI_CAP_NOTIFY_CFG) {
                        d->notify_base = a;
                        d->notify_mul = pci_read32(b, s, f, p + 16);
                    } else if (type == VIRTIO_PCI_CAP_ISR_CFG)
                        d->isr = a;
                    else {
                        d->devcfg = a;
                        d->devcfg_len = len;
                    }
                }
            }
        }
        p = next;
    }
    int need = 1 << VIRTIO_PCI_CAP_COMMON_CFG | 1 << VIRTIO_PCI_CAP_NOTIFY_CFG | 1 << VIRTIO_PCI_CAP_ISR_CFG;
    if ((found & need) != need)
        return -1;
    /* Memory decoding on; bus mastering too (the device reads our rings). */
    pci_write16(b, s, f, PCI_CMD, pci_read16(b, s, f, PCI_CMD) | PCI_CMD_MEM | 0x4);
    return 0;
}

/* Add a struct virtio_dev for every virtio function on bus 0. */
int virtio_pci_scan(struct virtio_dev *out, int max)
{
    int n = 0;
    /* Command-line word "pci-unassign": forget what firmware assigned to
     * virtio functions, so the no-firmware path runs under QEMU too. */
    if (cmdline_has("pci-unassign"))
        for (int s = 0; s < 32; s++)
            for (int f = 0; f < 8; f++)
                if (virtio_type_of(0, s, f)) {
                    pci_write16(0, s, f, PCI_CMD, pci_read16(0, s, f, PCI_CMD) & ~PCI_CMD_MEM);
                    for (int i = 0; i < 6; i++) {
                        u32 lo = pci_read32(0, s, f, PCI_BAR0 + 4 * i);
                        if (lo & 1)
                            continue;
                        pci_write32(0, s, f, PCI_BAR0 + 4 * i, 0);
                        if (((lo >> 1) & 3) == 2)
                            pci_write32(0, s, f, PCI_BAR0 + 4 * ++i, 0);
                    }
                }
    /* pass 1: what firmware (if any) assigned */
    for (int s = 0; s < 32; s++)
        for (int f = 0; f < 8; f++) {
            u32 id = pci_read32(0, s, f, 0);
            if ((id & 0xffff) == 0xffff) {
                if (f == 0)
                    break;
                continue;
            }
            note_assigned(0, s, f);
            if (f == 0 && !(pci_read8(0, s, f, 0x0e) & 0x80))
                break; /* single-function device */
        }
    /* pass 2: virtio devices */
    for (int s = 0; s < 32 && n < max; s++)
        for (int f = 0; f < 8 && n < max; f++) {
            u32 id = pci_read32(0, s, f, 0);
            if ((id & 0xffff) == 0xffff) {
                if (f == 0)
                    break;
                continue;
            }
            u32 type = virtio_type_of(0, s, f);
            if (type) {
                struct virtio_dev *d = &out[n];
                memset(d, 0, sizeof(*d));
                d->transport = VIRTIO_PCI;
                d->device_id = type;
                d->bus = 0;
                d->slot = s;
                d->fn = f;
                if (!parse_caps(d, 0, s, f))
                    n++;
                else
                    printf("virtio: pci 00:%02x.%x: type %u without usable virtio capabilities\n", s, f, type);
            }
            if (f == 0 && !(pci_read8(0, s, f, 0x0e) & 0x80))
                break;
        }
    return n;
}
