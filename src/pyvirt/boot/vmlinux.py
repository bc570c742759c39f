"""Uncompressed x86-64 ELF kernels (vmlinux) started in 64-bit mode.

The PT_LOAD segments go to their physical addresses (p_paddr). The entry point
e_entry of a vmlinux is a link-time virtual address such as 0xffffffff81000000;
it is mapped to a physical one through the segment holding it. The vCPU starts
in 64-bit mode on the identity-mapped page tables with RSI pointing at a
`struct boot_params` whose setup header pyvirt makes up (the file has none), as
in the 64-bit Linux boot protocol.
"""

from __future__ import annotations

from pyvirt.arch.x86 import layout
from pyvirt.memory import GuestMemory

from .bootparams import build_zero_page, synthetic_header
from .common import BootError, BootSpec, encode_cmdline, place_initrd, write_cmdline
from .detect import is_elf64_kernel  # (the format check lives with detection)
from .elf import ELFCLASS64, EM_X86_64, ElfFile, entry_physical, load_segments  # noqa: F401


def load_vmlinux(
    mem: GuestMemory,
    data: bytes,
    elf: ElfFile,
    *,
    mem_size: int,
    cmdline: str = "",
    initrd: bytes | None = None,
    rsdp_addr: int | None = None,
) -> BootSpec:
    if not is_elf64_kernel(elf):
        raise BootError("only x86-64 ELF64 kernels can be started in 64-bit mode; this one is 32-bit")
    entry = entry_physical(elf)
    limit = layout.CMDLINE_MAX - 1
    cmd = encode_cmdline(cmdline, limit)

    initrd_spec = None
    if initrd is not None:
        initrd_spec = (place_initrd(mem, mem_size, len(initrd), above=elf.span()[1]), len(initrd))
    start, end = load_segments(mem, data, elf, mem_size)
    if initrd is not None and initrd_spec is not None:
        mem.write(initrd_spec[0], initrd)
    write_cmdline(mem, cmd)
    zero_page = build_zero_page(
        synthetic_header(limit),
        mem_size=mem_size,
        cmdline_ptr=layout.CMDLINE,
        initrd=initrd_spec,
        rsdp_addr=rsdp_addr,
    )
    mem.write(layout.ZERO_PAGE, zero_page)
    return BootSpec(
        protocol="elf64",
        mode="long64",
        entry=entry,
        regs={"rsi": layout.ZERO_PAGE},
        kernel_start=start,
        kernel_end=end,
        initrd=initrd_spec,
    )
