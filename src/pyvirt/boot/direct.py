"""Direct boot of a bzImage: decompress on the host, start the kernel proper.

The kernel's own 64-bit entry (startup_64, the ELF entry of the vmlinux inside
the bzImage) takes the same boot_params as the bzImage's 64-bit entry, so
pyvirt loads the vmlinux's segments at their physical addresses, builds
boot_params from the bzImage's real setup header, and skips the guest-side
decompressor and its KASLR. Worth it where guest kernel code is emulated
(kvm_pvm); a normal host boots the bzImage as it is.
"""

from __future__ import annotations

import struct

from pyvirt.arch.x86 import layout
from pyvirt.memory import GuestMemory

from .bootparams import HDR_START, XLF_KERNEL_64, SetupHeader, build_zero_page
from .common import BootError, BootSpec, encode_cmdline, place_initrd, write_cmdline
from .elf import entry_physical, load_segments, parse_elf
from .payload import vmlinux_of
from .vmlinux import is_elf64_kernel


SETUP_DATA_PTR = 0x250  # u64 in the setup header: head of the setup_data list
SETUP_RNG_SEED = 9
RNG_SEED_BYTES = 32


def _with_rng_seed(mem: GuestMemory, zero_page: bytes) -> bytes:
    """Hand the kernel 32 random bytes (setup_data SETUP_RNG_SEED).

    Without them, and with RDRAND turned off for the CPL0 emulator, a kernel
    spends a long time gathering entropy from timer jitter before its RNG is
    ready; with them it is seeded at once.
    """
    import os

    seed = os.urandom(RNG_SEED_BYTES)
    mem.write(layout.SETUP_DATA, struct.pack("<QII", 0, SETUP_RNG_SEED, len(seed)) + seed)
    bp = bytearray(zero_page)
    struct.pack_into("<Q", bp, SETUP_DATA_PTR, layout.SETUP_DATA)
    return bytes(bp)


def load_bzimage_direct(
    mem: GuestMemory,
    data: bytes,
    *,
    mem_size: int,
    cmdline: str = "",
    initrd: bytes | None = None,
    rsdp_addr: int | None = None,
    vmlinux: bytes | None = None,
) -> BootSpec:
    """`vmlinux` is the decompressed payload when the caller already has it."""
    hdr = SetupHeader.parse(data)
    if not hdr.xloadflags & XLF_KERNEL_64:
        raise BootError("direct boot needs a kernel with a 64-bit entry (XLF_KERNEL_64)")
    if vmlinux is None:
        vmlinux = vmlinux_of(data)
    elf = parse_elf(vmlinux)
    if not is_elf64_kernel(elf):
        raise BootError("the bzImage payload is not an x86-64 ELF kernel")
    entry = entry_physical(elf)
    cmd = encode_cmdline(cmdline, min(hdr.cmdline_size, layout.CMDLINE_MAX - 1))
    start, end = elf.span()
    initrd_spec = None
    if initrd is not None:
        # The kernel's brk and early page tables live past _end: leave it room.
        initrd_spec = (place_initrd(mem, mem_size, len(initrd), above=end + (8 << 20),
                                    limit=hdr.initrd_addr_max + 1), len(initrd))
    load_segments(mem, vmlinux, elf, mem_size)
    if initrd is not None and initrd_spec is not None:
        mem.write(initrd_spec[0], initrd)
    write_cmdline(mem, cmd)
    zero_page = build_zero_page(
        bytes(data[HDR_START : hdr.header_end]),
        mem_size=mem_size,
        cmdline_ptr=layout.CMDLINE,
        initrd=initrd_spec,
        rsdp_addr=rsdp_addr,
        code32_start=start,
    )
    if hdr.version >= 0x209:  # setup_data exists since boot protocol 2.09
        zero_page = _with_rng_seed(mem, zero_page)
    mem.write(layout.ZERO_PAGE, zero_page)
    return BootSpec(
        protocol="linux",
        mode="long64",
        entry=entry,
        regs={"rsi": layout.ZERO_PAGE},
        kernel_start=start,
        kernel_end=end,
        initrd=initrd_spec,
    )
