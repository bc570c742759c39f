/* Shared by smp.c and smp_trampoline.S. */
#ifndef SMP_H
#define SMP_H
#define MAX_CPUS 64         /* APIC IDs at or above this halt without reporting */
#define AP_STACK_SHIFT 14   /* 16 KiB per AP */
#define TRAMPOLINE_ADDR 0x8000
#define SIPI_VECTOR (TRAMPOLINE_ADDR >> 12)
#endif
