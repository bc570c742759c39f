/*
 * pyvirt benchmark guest: a PVH ELF that does PIO_COUNT one-byte writes to
 * port PIO_PORT and then writes EXIT_VALUE to the debug-exit port 0xf4 (so a
 * VMM with QEMU's isa-debug-exit semantics ends with (EXIT_VALUE << 1) | 1).
 *
 * Build-time switches (cpp -D):
 *   PIO_COUNT=N   number of `out` instructions in the loop (default 0)
 *   PIO_PORT=P    port written in the loop (default 0x80, the POST-code port)
 *   EXIT_VALUE=V  byte written to port 0xf4 at the end (default 0x15: status 43,
 *                 which no VMM uses for an error of its own)
 *   CPL3=1        run the loop in ring 3 (IOPL=3) instead of ring 0
 *   IDLE=1        do no I/O at all: `cli; hlt` forever (for RSS sampling)
 *   HELLO=1       first write "Hello from the pyvirt benchmark guest\n" to COM1
 *                 (0x3f8); the stand-in for guests/build/hello.elf
 *
 * PVH entry state (Xen's hvm_start_info ABI): 32-bit protected mode, paging
 * off, flat CS/DS, EBX = start info.  The GDTR is unspecified, so the guest
 * loads its own GDT before touching a segment register.  It needs no IDT: no
 * interrupt is enabled and nothing is expected to fault (a fault would be a
 * triple fault, which every VMM reports as an error, not a success).
 *
 * Why a CPL3 variant: on a kvm_pvm host, guest ring-0 code is emulated
 * instruction by instruction while ring-3 code runs natively, so a ring-0
 * loop mostly measures the emulator.  In ring 3 with IOPL=3 the `out` is
 * still allowed and still exits to the VMM, but `dec`/`jnz` run natively.
 */

#ifndef PIO_COUNT
#define PIO_COUNT 0
#endif
#ifndef EXIT_VALUE
#define EXIT_VALUE 0x15
#endif
#ifndef PIO_PORT
#define PIO_PORT 0x80
#endif

#define SEL_CODE0 0x08
#define SEL_DATA0 0x10
#define SEL_CODE3 (0x18 | 3)
#define SEL_DATA3 (0x20 | 3)
#define EFLAGS_IOPL3 0x3002         /* IOPL=3, reserved bit 1, IF=0 */

        .code32

        /* XEN_ELFNOTE_PHYS32_ENTRY: name "Xen", type 18, 4-byte entry. */
        .section .note.Xen, "a", @note
        .balign 4
        .long 4                 /* namesz, including the NUL */
        .long 4                 /* descsz */
        .long 18                /* type */
        .asciz "Xen"
        .long _start

        .text
        .globl _start
_start:
        cli
        lgdt gdt_desc
        ljmp $SEL_CODE0, $1f
1:      movw $SEL_DATA0, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %fs
        movw %ax, %gs
        movw %ax, %ss
        movl $stack0_top, %esp

#if defined(IDLE) && IDLE
2:      hlt
        jmp 2b
#else

#if defined(CPL3) && CPL3
        /*
         * Enter ring 3 with SYSEXIT rather than IRET: KVM's instruction
         * emulator (which runs all ring-0 code on kvm_pvm) cannot emulate a
         * protected-mode IRET or an outer-privilege far return, but it can
         * emulate POPF, WRMSR and SYSEXIT.  SYSEXIT loads CS = SYSENTER_CS+16
         * and SS = SYSENTER_CS+24 (with RPL 3), EIP = EDX, ESP = ECX; with
         * SYSENTER_CS = 0x08 those are the ring-3 descriptors 0x18 and 0x20.
         * POPF at CPL0 sets IOPL=3, which SYSEXIT leaves alone.
         */
        pushl $EFLAGS_IOPL3
        popfl
        movl $0x174, %ecx               /* IA32_SYSENTER_CS */
        movl $SEL_CODE0, %eax
        xorl %edx, %edx
        wrmsr
        movl $ring3, %edx
        movl $stack3_top, %ecx
        sysexit
ring3:
        movw $SEL_DATA3, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %fs
        movw %ax, %gs
#endif

#if defined(HELLO) && HELLO
        movl $hello_msg, %esi
4:      lodsb
        testb %al, %al
        jz 5f
        movw $0x3f8, %dx
        outb %al, %dx
        jmp 4b
5:
#endif

        movl $PIO_COUNT, %ecx
        xorl %eax, %eax
        testl %ecx, %ecx
        jz done
loop:
        outb %al, $PIO_PORT
        decl %ecx
        jnz loop
done:
        movl $EXIT_VALUE, %eax
        outb %al, $0xf4         /* debug-exit: status (EXIT_VALUE << 1) | 1 */
        /* The VMM should have stopped by now.  Spin (hlt would fault in ring 3). */
3:      pause
        jmp 3b
#endif

        .section .rodata
        .balign 8
gdt:
        .quad 0                         /* null */
        .quad 0x00cf9a000000ffff        /* 0x08 code, ring 0, flat 32-bit */
        .quad 0x00cf92000000ffff        /* 0x10 data, ring 0, flat */
        .quad 0x00cffa000000ffff        /* 0x18 code, ring 3, flat 32-bit */
        .quad 0x00cff2000000ffff        /* 0x20 data, ring 3, flat */
gdt_end:
gdt_desc:
        .word gdt_end - gdt - 1
        .long gdt
hello_msg:
        .asciz "Hello from the pyvirt benchmark guest\n"

        .bss
        .balign 16
        .skip 4096
stack0_top:
        .skip 4096
stack3_top:
