/*
 * hello: the smallest end-to-end check of a boot protocol. Prints a greeting
 * naming the protocol that entered it, the command line, and exits 0.
 * One source, three images: hello.elf (PVH), hello-multiboot.elf and
 * hello-bzimage.bin (Linux boot protocol).
 */
#include "runtime/runtime.h"

int main(void)
{
    if (boot_protocol == BOOT_MULTIBOOT) {
        struct multiboot_info *mi = (void *)boot_info_ptr;
        puts("hello from multiboot\n");
        if (mi->flags & 1)
            printf("mem_upper: %u\n", mi->mem_upper);
        else
            puts("mem_upper: none\n");
    } else if (boot_protocol == BOOT_LINUX) {
        puts("hello from bzImage\n");
    } else {
        puts("hello from pyvirt guest\n");
    }
    printf("cmdline: %s\n", boot_cmdline());
    return 0;
}
