"""Linux bzImage loading (the 32- and 64-bit Linux/x86 boot protocols, 2.06+).

A bzImage is a real-mode setup part of (setup_sects + 1) * 512 bytes followed by
the protected-mode kernel (the decompressor). pyvirt skips the real-mode code:
it loads the protected-mode part at 1 MiB (or, for a non-relocatable kernel, at
its pref_address), fills `struct boot_params` at layout.ZERO_PAGE with a copy of
the setup header plus the loader fields, and enters

* in 64-bit mode at load address + 0x200 when xloadflags has XLF_KERNEL_64, or
* in 32-bit protected mode at the load address (code32_start) otherwise,

with RSI/ESI pointing at boot_params either way.

The initrd goes at the highest page-aligned address below both initrd_addr_max
and the end of low RAM, above the memory the kernel needs while it decompresses
(init_size bytes from its runtime start address).
"""

from __future__ import annotations

from pyvirt.arch.x86 import layout
from pyvirt.memory import GuestMemory

from .bootparams import (
    HDR_START,
    LOADED_HIGH,
    XLF_KERNEL_64,
    SetupHeader,
    build_zero_page,
    format_version,
)
from .common import (
    PAGE_SIZE,
    BootError,
    BootSpec,
    align_up,
    check_range,
    encode_cmdline,
    mib,
    place_initrd,
    write_cmdline,
)
from .detect import BZIMAGE_SIGNATURE_OFFSET, is_bzimage  # noqa: F401  (the format check lives with detection)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from .common import Mode

STARTUP_64_OFFSET = 0x200  # the 64-bit entry, relative to the load address
# Kernels before protocol 2.10 don't state init_size; assume they decompress to at
# most this many times their compressed size, at or above 16 MiB.
OLD_KERNEL_EXPANSION = 4
OLD_KERNEL_RUNTIME_START = 16 * layout.MiB


def load_address(hdr: SetupHeader, image_size: int, mem_size: int) -> int:
    """Where the protected-mode part goes: 1 MiB, unless the kernel can't be
    relocated and states a usable preferred address."""
    pref = hdr.pref_address
    if (
        not hdr.relocatable_kernel
        and pref >= layout.HIMEM_START
        and pref % PAGE_SIZE == 0
        and pref + image_size <= layout.low_ram_end(mem_size)
    ):
        return pref
    return layout.HIMEM_START


def footprint_end(hdr: SetupHeader, load: int, image_size: int) -> int:
    """End of the memory the kernel uses before it reads the memory map.

    Runtime start address (boot.rst, init_size): a relocatable kernel moves to
    max(load, pref_address) rounded up to kernel_alignment; a non-relocatable
    one runs at pref_address.
    """
    if hdr.init_size:
        if hdr.relocatable_kernel:
            runtime = align_up(max(load, hdr.pref_address), max(hdr.kernel_alignment, 1))
        else:
            runtime = hdr.pref_address or load
        return max(load + image_size, runtime + hdr.init_size)
    return max(load, OLD_KERNEL_RUNTIME_START) + OLD_KERNEL_EXPANSION * image_size


def load_bzimage(
    mem: GuestMemory,
    data: bytes,
    *,
    mem_size: int,
    cmdline: str = "",
    initrd: bytes | None = None,
    rsdp_addr: int | None = None,
) -> BootSpec:
    hdr = SetupHeader.parse(data)
    if not hdr.loadflags & LOADED_HIGH:
        raise BootError(
            "this is a zImage (loaded below 1 MiB); pyvirt boots bzImages only: rebuild with 'make bzImage'"
        )
    if hdr.setup_size >= len(data):
        raise BootError(
            f"truncated bzImage: the {len(data)}-byte file ends inside its {hdr.setup_size}-byte setup code; "
            f"the file is damaged or incompletely copied"
        )
    image = memoryview(data)[hdr.setup_size :]
    load = load_address(hdr, len(image), mem_size)
    check_range(mem, mem_size, load, len(image), "bzImage kernel")
    needed_end = footprint_end(hdr, load, len(image))
    if needed_end > layout.low_ram_end(mem_size):
        raise BootError(
            f"this kernel needs RAM up to {needed_end:#x} ({mib(needed_end)}) to decompress but the VM has "
            f"{mib(layout.low_ram_end(mem_size))} below the MMIO hole; give the VM more memory"
        )

    limit = min(hdr.cmdline_size, layout.CMDLINE_MAX - 1)
    cmd = encode_cmdline(cmdline, limit)

    initrd_at = None
    if initrd is not None:
        initrd_at = place_initrd(mem, mem_size, len(initrd), above=needed_end, limit=hdr.initrd_addr_max + 1)

    mem.write(load, image)
    if initrd is not None and initrd_at is not None:
        mem.write(initrd_at, initrd)
    write_cmdline(mem, cmd)
    initrd_spec = None if initrd_at is None else (initrd_at, len(initrd or b""))
    zero_page = build_zero_page(
        bytes(data[HDR_START : hdr.header_end]),
        mem_size=mem_size,
        cmdline_ptr=layout.CMDLINE,
        initrd=initrd_spec,
        rsdp_addr=rsdp_addr,
        code32_start=load,
    )
    mem.write(layout.ZERO_PAGE, zero_page)

    long64 = bool(hdr.xloadflags & XLF_KERNEL_64)
    mode: Mode = "long64" if long64 else "protected32"
    entry = load + STARTUP_64_OFFSET if long64 else load
    return BootSpec(
        protocol="linux",
        mode=mode,
        entry=entry,
        regs={"rsi": layout.ZERO_PAGE},
        kernel_start=load,
        kernel_end=load + len(image),
        initrd=initrd_spec,
    )


def describe(data: bytes) -> str:
    """One line about a bzImage for logs: protocol version and entry kind."""
    hdr = SetupHeader.parse(data)
    kind = "64-bit" if hdr.xloadflags & XLF_KERNEL_64 else "32-bit"
    return f"Linux bzImage, boot protocol {format_version(hdr.version)}, {kind} entry"
