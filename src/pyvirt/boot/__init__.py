"""Kernel loaders: put a kernel, its command line and initrd into guest memory.

`load_kernel` recognises the image format, loads it with the matching boot
protocol and returns a `BootSpec` telling the VMM how to start the boot vCPU.
Formats, in order of preference when an image supports several:

1. ``pvh``: an ELF with a Xen PHYS32_ENTRY note (type 18); 32-bit entry, EBX =
   hvm_start_info (pvh.py).
2. ``linux``: a bzImage with boot protocol 2.06+; 64-bit entry at load + 0x200
   when the kernel offers it, else 32-bit; RSI = boot_params (bzimage.py).
3. ``multiboot``: a multiboot v1 header; 32-bit entry, EAX = 0x2BADB002, EBX =
   multiboot info (multiboot.py). It comes before ``elf64`` because a 64-bit
   ELF with a multiboot header expects the multiboot entry state.
4. ``elf64``: any other x86-64 ELF, such as an uncompressed vmlinux; 64-bit
   entry at e_entry translated to a physical address, RSI = boot_params
   (vmlinux.py).

`prefer` forces one of these when the image supports it. Everything here is
pure code over a `GuestMemory`: no KVM, so the loaders are tested on bytearrays.
"""

from __future__ import annotations

from pyvirt.memory import GuestMemory, GuestMemoryError

from .common import PROTOCOLS, BootError, BootSpec, check_guest_memory
from .detect import detect as _detect

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from .common import Protocol

__all__ = ["BootSpec", "BootError", "load_kernel", "supported_protocols", "PROTOCOLS"]

# Each loader is imported when load_kernel picks it, so a VM's start loads
# one; these names (and the loaders' helpers) stay reachable from here too.
_LAZY = {
    "load_pvh": "pvh", "pvh_entry": "pvh",
    "load_bzimage": "bzimage", "is_bzimage": "detect",
    "load_multiboot": "multiboot", "MultibootHeader": "multiboot_header", "find_header": "multiboot_header",
    "has_bad_checksum": "multiboot_header", "BAD_CHECKSUM": "multiboot_header",
    "NO_LOAD_ADDRESSES": "multiboot_header",
    "load_vmlinux": "vmlinux", "is_elf64_kernel": "detect",
    "ElfFile": "elf", "is_elf": "elf", "parse_elf": "elf", "Protocol": "common",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


NOT_A_KERNEL = (
    "not a kernel pyvirt can boot: expected a PVH ELF (Xen note 18), a Linux bzImage "
    "(boot protocol 2.06+), an x86-64 ELF vmlinux or a multiboot v1 image"
)

_MISSING = {
    "pvh": "it has no PVH entry note (ELF note 'Xen', type 18)",
    "linux": "it is not a Linux bzImage (no 'HdrS' at 0x202)",
    "elf64": "it is not an x86-64 ELF file",
    "multiboot": "it has no valid multiboot v1 header in its first 8192 bytes",
}


def supported_protocols(kernel: bytes | bytearray | memoryview) -> tuple[Protocol, ...]:
    """The protocols `kernel` could be booted with, the one load_kernel picks first."""
    return _detect(bytes(kernel)).protocols


def load_kernel(
    mem: GuestMemory,
    kernel: bytes | bytearray | memoryview,
    *,
    mem_size: int,
    cmdline: str = "",
    initrd: bytes | bytearray | memoryview | None = None,
    rsdp_addr: int | None = None,
    prefer: str | None = None,
    kernel_name: str = "kernel",
    initrd_name: str = "initrd",
) -> BootSpec:
    """Load `kernel` (and `initrd`) into `mem` for a VM with `mem_size` bytes of RAM.

    `cmdline` goes to layout.CMDLINE; `rsdp_addr` is passed on where the protocol
    has a field for it (PVH, Linux 2.14+). `kernel_name` and `initrd_name` become
    the first word of a multiboot command line and the module string. Raises
    BootError for anything that is not a bootable image or does not fit.
    """
    if prefer is not None and prefer not in PROTOCOLS:
        raise BootError(f"unknown boot protocol {prefer!r}; choose one of {', '.join(PROTOCOLS)}")
    check_guest_memory(mem, mem_size)
    data = bytes(kernel)
    initrd_data = None if initrd is None else bytes(initrd)
    det = _detect(data)
    if prefer is not None:
        if prefer not in det.protocols:
            others = f"; it can be booted as: {', '.join(det.protocols)}" if det.protocols else ""
            raise BootError(f"cannot boot this kernel with the {prefer} protocol: {_MISSING[prefer]}{others}")
        choice = prefer
    elif det.protocols:
        choice = det.protocols[0]
    elif det.problem is not None:
        raise det.problem
    elif det.elf is not None:
        raise BootError(f"{NOT_A_KERNEL} (this is a 32-bit ELF without a PVH note or multiboot header)")
    else:
        raise BootError(NOT_A_KERNEL)

    try:
        if choice == "pvh":
            from .pvh import load_pvh

            assert det.elf is not None
            return load_pvh(mem, data, det.elf, mem_size=mem_size, cmdline=cmdline, initrd=initrd_data,
                            rsdp_addr=rsdp_addr)
        if choice == "linux":
            from .bzimage import load_bzimage

            return load_bzimage(mem, data, mem_size=mem_size, cmdline=cmdline, initrd=initrd_data, rsdp_addr=rsdp_addr)
        if choice == "multiboot":
            from .multiboot import load_multiboot

            return load_multiboot(mem, data, mem_size=mem_size, cmdline=cmdline, initrd=initrd_data,
                                  kernel_name=kernel_name, initrd_name=initrd_name)
        from .vmlinux import load_vmlinux

        assert det.elf is not None
        return load_vmlinux(mem, data, det.elf, mem_size=mem_size, cmdline=cmdline, initrd=initrd_data,
                            rsdp_addr=rsdp_addr)
    except GuestMemoryError as e:
        # The loaders check ranges first; this catches a guest memory smaller than mem_size says.
        raise BootError(f"the kernel does not fit in guest memory ({e}); check the VM's memory size") from e
