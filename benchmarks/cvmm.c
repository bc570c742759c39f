/*
 * cvmm: the smallest useful KVM VMM, the floor the pyvirt benchmarks compare
 * against.  It boots the same PVH ELF guests as pyvirt and QEMU (32-bit
 * protected mode, paging off, at the PHYS32_ENTRY of the Xen note), and
 * handles every port-I/O exit by doing nothing and re-entering KVM_RUN,
 * except a write to the debug-exit port 0xf4, which ends the VM with
 * status (V << 1) | 1, like QEMU's isa-debug-exit and pyvirt.
 *
 *   cvmm [-m MiB] GUEST.elf
 *
 * On exit it prints one line to stderr:
 *   cvmm: exits=N run_ns=T ns_per_exit=X status=S
 * where exits counts the port-I/O exits other than the final debug-exit
 * write and run_ns is the CLOCK_MONOTONIC time from the first KVM_RUN to the
 * debug-exit write.  Like pyvirt and QEMU it creates the in-kernel irqchip
 * (so KVM_RUN does the same interrupt checks) but no other devices.
 *
 * Build: gcc -O2 -Wall -o cvmm cvmm.c
 */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEBUG_EXIT_PORT 0xf4
#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define START_INFO_GPA 0x6000
#define HVM_START_MAGIC 0x336ec578

static void die(const char *what)
{
    fprintf(stderr, "cvmm: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void fail(const char *msg)
{
    fprintf(stderr, "cvmm: %s\n", msg);
    exit(1);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* One program header, whatever the ELF class. */
struct seg { uint32_t type; uint64_t off, paddr, filesz, memsz; };

static int get_seg(const uint8_t *img, size_t len, int is64, uint64_t phoff,
                   unsigned entsize, unsigned i, struct seg *s)
{
    uint64_t at = phoff + (uint64_t)i * entsize;
    if (at + entsize > len)
        return -1;
    if (is64) {
        const Elf64_Phdr *p = (const Elf64_Phdr *)(img + at);
        *s = (struct seg){ p->p_type, p->p_offset, p->p_paddr, p->p_filesz, p->p_memsz };
    } else {
        const Elf32_Phdr *p = (const Elf32_Phdr *)(img + at);
        *s = (struct seg){ p->p_type, p->p_offset, p->p_paddr, p->p_filesz, p->p_memsz };
    }
    return s->off + s->filesz > len ? -1 : 0;
}

/* Copy the PT_LOAD segments into guest memory; return the PVH entry point. */
static uint32_t load_pvh_elf(const uint8_t *img, size_t len, uint8_t *mem, size_t memsz)
{
    if (len < sizeof(Elf32_Ehdr) || memcmp(img, ELFMAG, SELFMAG) != 0)
        fail("not an ELF file");
    int is64 = img[EI_CLASS] == ELFCLASS64;
    uint64_t phoff;
    unsigned phnum, phentsize;
    if (is64) {
        const Elf64_Ehdr *eh = (const Elf64_Ehdr *)img;
        phoff = eh->e_phoff; phnum = eh->e_phnum; phentsize = eh->e_phentsize;
    } else {
        const Elf32_Ehdr *eh = (const Elf32_Ehdr *)img;
        phoff = eh->e_phoff; phnum = eh->e_phnum; phentsize = eh->e_phentsize;
    }
    int64_t entry = -1;
    for (unsigned i = 0; i < phnum; i++) {
        struct seg s;
        if (get_seg(img, len, is64, phoff, phentsize, i, &s) < 0)
            fail("truncated ELF program header or segment");
        if (s.type == PT_LOAD) {
            if (s.paddr + s.memsz > memsz || s.filesz > s.memsz)
                fail("ELF segment outside guest memory");
            memcpy(mem + s.paddr, img + s.off, s.filesz);
            memset(mem + s.paddr + s.filesz, 0, s.memsz - s.filesz);
        } else if (s.type == PT_NOTE) {
            /* Walk the notes: Elf_Nhdr (namesz, descsz, type), name, desc, 4-aligned. */
            uint64_t p = s.off, end = s.off + s.filesz;
            while (p + 12 <= end) {
                const uint32_t *nh = (const uint32_t *)(img + p);
                uint64_t name = p + 12, desc = name + ((nh[0] + 3) & ~3u);
                uint64_t next = desc + ((nh[1] + 3) & ~3u);
                if (next > end)
                    break;
                if (nh[2] == XEN_ELFNOTE_PHYS32_ENTRY && nh[0] == 4 &&
                    memcmp(img + name, "Xen", 4) == 0 && (nh[1] == 4 || nh[1] == 8))
                    entry = *(const uint32_t *)(img + desc);
                p = next;
            }
        }
    }
    if (entry < 0)
        fail("no PVH entry note (Xen, type 18) in the ELF file");
    return (uint32_t)entry;
}

static struct kvm_segment flat(uint16_t sel, uint8_t type)
{
    return (struct kvm_segment){ .base = 0, .limit = 0xffffffff, .selector = sel,
                                 .type = type, .present = 1, .dpl = 0, .db = 1,
                                 .s = 1, .l = 0, .g = 1 };
}

int main(int argc, char **argv)
{
    size_t mem_mib = 2;
    int opt;
    while ((opt = getopt(argc, argv, "m:")) != -1) {
        if (opt == 'm')
            mem_mib = strtoul(optarg, NULL, 0);
        else
            goto usage;
    }
    if (optind + 1 != argc || mem_mib < 2) {
usage:
        fprintf(stderr, "usage: cvmm [-m MiB (>= 2)] GUEST.elf\n");
        return 2;
    }

    /* Read the guest image. */
    int fd = open(argv[optind], O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        die(argv[optind]);
    uint8_t *img = malloc(st.st_size);
    if (!img || read(fd, img, st.st_size) != st.st_size)
        die("read guest image");
    close(fd);

    /* KVM, the VM and its memory. */
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die("/dev/kvm");
    if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
        fail("unexpected KVM API version");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0)
        die("KVM_CREATE_VM");
    ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000ul); /* Intel without unrestricted guest; else harmless */
    if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0)
        die("KVM_CREATE_IRQCHIP");

    size_t memsz = mem_mib << 20;
    uint8_t *mem = mmap(NULL, memsz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED)
        die("mmap guest memory");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = memsz, .userspace_addr = (uintptr_t)mem,
    };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        die("KVM_SET_USER_MEMORY_REGION");

    uint32_t entry = load_pvh_elf(img, st.st_size, mem, memsz);
    /*
     * A minimal hvm_start_info for EBX: magic, version 1, an empty command
     * line and a one-entry memory map (all of guest memory is RAM).
     */
    uint8_t *si = mem + START_INFO_GPA;
    *(uint32_t *)(si + 0) = HVM_START_MAGIC;
    *(uint32_t *)(si + 4) = 1;                          /* version */
    *(uint64_t *)(si + 24) = START_INFO_GPA + 0x100;    /* cmdline_paddr: "" */
    *(uint64_t *)(si + 40) = START_INFO_GPA + 0x200;    /* memmap_paddr */
    *(uint32_t *)(si + 48) = 1;                         /* memmap_entries */
    *(uint64_t *)(si + 0x200) = 0;                      /* addr */
    *(uint64_t *)(si + 0x208) = memsz;                  /* size */
    *(uint32_t *)(si + 0x210) = 1;                      /* type: E820 RAM */

    /* The vCPU, in the PVH entry state. */
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0)
        die("KVM_CREATE_VCPU");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size < (int)sizeof(struct kvm_run))
        die("KVM_GET_VCPU_MMAP_SIZE");
    struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        die("mmap kvm_run");

    /* CPUID: what KVM supports, unfiltered (a 64-bit guest needs at least the long-mode bit). */
    int ncpuid = 256;
    struct kvm_cpuid2 *cpuid = calloc(1, sizeof(*cpuid) + ncpuid * sizeof(struct kvm_cpuid_entry2));
    if (!cpuid)
        die("calloc");
    cpuid->nent = ncpuid;
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) < 0)
        die("KVM_GET_SUPPORTED_CPUID");
    if (ioctl(vcpu, KVM_SET_CPUID2, cpuid) < 0)
        die("KVM_SET_CPUID2");

    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
        die("KVM_GET_SREGS");
    sregs.cs = flat(0x08, 0xb);                 /* execute/read, accessed */
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = flat(0x10, 0x3); /* read/write, accessed */
    sregs.cr0 = 0x11;                           /* PE | ET, paging off */
    sregs.cr4 = 0;
    sregs.efer = 0;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
        die("KVM_SET_SREGS");
    struct kvm_regs regs = { .rip = entry, .rflags = 0x2, .rbx = START_INFO_GPA };
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
        die("KVM_SET_REGS");

    /* The run loop: count port-I/O exits until the debug-exit write. */
    uint64_t exits = 0, t0 = now_ns(), t1;
    int status = -1;
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            die("KVM_RUN");
        }
        if (run->exit_reason == KVM_EXIT_IO) {
            uint8_t *data = (uint8_t *)run + run->io.data_offset;
            if (run->io.direction == KVM_EXIT_IO_OUT && run->io.port == DEBUG_EXIT_PORT) {
                status = (data[0] << 1) | 1;
                break;
            }
            if (run->io.direction == KVM_EXIT_IO_IN) /* an unclaimed port reads all-ones */
                memset(data, 0xff, (size_t)run->io.size * run->io.count);
            exits++;
            continue;
        }
        if (run->exit_reason == KVM_EXIT_HLT) {
            status = 0;
            break;
        }
        fprintf(stderr, "cvmm: unexpected exit reason %u", run->exit_reason);
        if (run->exit_reason == KVM_EXIT_INTERNAL_ERROR)
            fprintf(stderr, " (internal error, suberror %u)", run->internal.suberror);
        if (run->exit_reason == KVM_EXIT_FAIL_ENTRY)
            fprintf(stderr, " (entry failure %#llx)",
                    (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
        fprintf(stderr, "\n");
        return 36;
    }
    t1 = now_ns();
    fprintf(stderr, "cvmm: exits=%llu run_ns=%llu ns_per_exit=%.1f status=%d\n",
            (unsigned long long)exits, (unsigned long long)(t1 - t0),
            exits ? (double)(t1 - t0) / (double)exits : 0.0, status);
    return status;
}
