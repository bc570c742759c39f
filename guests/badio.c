/*
 * badio: accesses to nothing. Port and MMIO reads that no device claims
 * must return all-ones (as on a PC bus), and writes must be ignored; the
 * VMM must neither crash nor stop the guest.
 *
 * At CPL3: 1-, 2- and 4-byte reads of ports 0x100-0x1ff (step 7), 0x2000
 * and 0xfff0, each followed by a write of junk; then 1/2/4/8-byte reads and
 * writes at a few addresses in 0xd0000000-0xdfffffff (inside the PCI/MMIO
 * hole below 4 GiB, where no VMM puts anything).
 *
 * The command-line word "mmio-any" accepts any MMIO read value (only checks
 * that the accesses complete): QEMU, unlike a PC, reads unassigned MMIO
 * as zero.
 *
 * Output:  badio: <n> port reads ok, <m> mmio reads ok     exit 0
 *          badio: port <p> size <s> read <v>               exit 5
 *          badio: mmio <addr> size <s> read <v>            exit 5
 */
#include "runtime/runtime.h"

static const u64 mmio_addrs[] = {0xd0000000, 0xd0001000, 0xd7654320, 0xdffff000, 0xdffffff8};

static u32 port_read(u16 port, int size)
{
    return size == 1 ? inb(port) : size == 2 ? inw(port) : inl(port);
}

static void port_write(u16 port, int size, u32 v)
{
    if (size == 1)
        outb(port, (u8)v);
    else if (size == 2)
        outw(port, (u16)v);
    else
        outl(port, v);
}

static u64 mmio_read(u64 a, int size)
{
    switch (size) {
    case 1: return mmio_read8(a);
    case 2: return mmio_read16(a);
    case 4: return mmio_read32(a);
    default: return mmio_read64(a);
    }
}

static void mmio_write(u64 a, int size, u64 v)
{
    switch (size) {
    case 1: mmio_write8(a, (u8)v); break;
    case 2: mmio_write16(a, (u16)v); break;
    case 4: mmio_write32(a, (u32)v); break;
    default: mmio_write64(a, v);
    }
}

static u32 ports_ok;

static void check_port(u16 port)
{
    for (int size = 1; size <= 4; size *= 2) {
        u32 ones = size == 4 ? 0xffffffffu : (1u << (8 * size)) - 1;
        u32 v = port_read(port, size);
        if (v != ones) {
            printf("badio: port 0x%x size %d read 0x%x\n", port, size, v);
            exit(5);
        }
        ports_ok++;
        port_write(port, size, 0xa5c3e11e);
    }
}

static void badio_user(void)
{
    for (u32 p = 0x100; p <= 0x1ff; p += 7)
        check_port((u16)p);
    check_port(0x2000);
    check_port(0xfff0);

    u32 mmio_ok = 0;
    int any = cmdline_has("mmio-any");
    if (any)
        puts("badio: mmio read values not checked (mmio-any)\n");
    for (u32 i = 0; i < ARRAY_SIZE(mmio_addrs); i++) {
        for (int size = 1; size <= 8; size *= 2) {
            u64 a = mmio_addrs[i], ones = size == 8 ? ~0UL : (1UL << (8 * size)) - 1;
            u64 v = mmio_read(a, size);
            if (v != ones && !any) {
                printf("badio: mmio 0x%lx size %d read 0x%lx\n", a, size, v);
                exit(5);
            }
            mmio_ok++;
            mmio_write(a, size, 0x5a3c1ee1a5c3e11eUL);
        }
    }
    printf("badio: %u port reads ok, %u mmio reads ok\n", ports_ok, mmio_ok);
    exit(0);
}

int main(void) { enter_user(badio_user); }
