"""What every kernel loader shares: the result type, the error, and placement rules.

`BootSpec` is what a loader hands to the VMM: the CPU mode and entry point, the
registers to preload, and where the kernel and initrd ended up. `BootError` is the
only exception the loaders raise; its message says what is wrong with the image
or the VM configuration and what to change.

The helpers here decide where things go in guest RAM:

* `BOOT_AREAS` lists the low-memory ranges pyvirt itself writes (boot GDT/IDT,
  start info, zero page, page tables, command line, multiboot strings, EBDA/MP
  table and the BIOS area with the ACPI tables). Kernel segments may be loaded
  below 1 MiB (guest kits put an SMP trampoline at 0x8000), but never on top of
  one of these.
* `place_initrd` puts an initrd at the highest page-aligned address below a
  limit, above whatever the kernel occupies.
"""

from __future__ import annotations

from pyvirt._record import FrozenRecord
from pyvirt.arch.x86 import layout
from pyvirt.memory import GuestMemory

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Literal

    Protocol = Literal["pvh", "linux", "elf64", "multiboot"]
    Mode = Literal["protected32", "long64"]


def __getattr__(name: str) -> object:
    # The Literal types, for code that uses them at run time: importing typing
    # costs a VM's start, so they are built only when asked for.
    if name in ("Protocol", "Mode"):
        from typing import Literal

        return Literal["pvh", "linux", "elf64", "multiboot"] if name == "Protocol" else Literal["protected32", "long64"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


PAGE_SIZE = 4096
PROTOCOLS: tuple[Protocol, ...] = ("pvh", "linux", "elf64", "multiboot")

# Multiboot module list and the strings it points to live here (see layout.MODULES).
MODULES_SIZE = 0x1000


class BootError(ValueError):
    """A kernel image or boot configuration pyvirt cannot use; the message says why."""


class BootSpec(FrozenRecord):
    """How to start the vCPU after a kernel was loaded into guest memory.

    The VMM sets up flat 4 GiB code/data segments for `protected32` and, for
    `long64`, the identity-mapped page tables at layout.PML4 as well.
    """

    __slots__ = __match_args__ = ("protocol", "mode", "entry", "regs", "kernel_start", "kernel_end", "initrd")
    protocol: Protocol
    mode: Mode
    entry: int  # guest-physical entry point
    regs: dict[str, int]  # general registers to load, e.g. {"rsi": ZERO_PAGE}; not part of the hash
    kernel_start: int
    kernel_end: int  # [kernel_start, kernel_end) holds the loaded image
    initrd: tuple[int, int] | None  # (gpa, size) of the initrd, if one was loaded

    def __init__(self, protocol: Protocol, mode: Mode, entry: int, regs: dict[str, int], kernel_start: int,
                 kernel_end: int, initrd: tuple[int, int] | None) -> None:
        self._init(protocol, mode, entry, regs, kernel_start, kernel_end, initrd)

    def __hash__(self) -> int:
        return hash((self.protocol, self.mode, self.entry, self.kernel_start, self.kernel_end, self.initrd))


class Area(FrozenRecord):
    """A guest-physical range pyvirt fills in itself: [start, end)."""

    __slots__ = __match_args__ = ("name", "start", "end")
    name: str
    start: int
    end: int

    def __init__(self, name: str, start: int, end: int) -> None:
        self._init(name, start, end)


BOOT_AREAS: tuple[Area, ...] = (
    Area("real-mode IVT, BIOS data area and boot GDT/IDT", 0, 0x1000),
    Area("Linux setup_data (RNG seed)", layout.SETUP_DATA, layout.SETUP_DATA + PAGE_SIZE),
    Area("PVH start info / multiboot info", layout.PVH_INFO, layout.PVH_INFO + PAGE_SIZE),
    Area("Linux boot_params (zero page)", layout.ZERO_PAGE, layout.ZERO_PAGE + PAGE_SIZE),
    Area("boot page tables", layout.PML4, layout.PD + 4 * PAGE_SIZE),
    Area("kernel command line", layout.CMDLINE, layout.CMDLINE + layout.CMDLINE_MAX),
    Area("multiboot module list", layout.MODULES, layout.MODULES + MODULES_SIZE),
    Area("EBDA/MP table, VGA hole and BIOS/ACPI area", layout.EBDA_START, layout.HIMEM_START),
)


def align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align if align > 1 else value


def align_down(value: int, align: int) -> int:
    return value // align * align if align > 1 else value


def mib(n: int) -> str:
    """A size for messages: '12.5 MiB'."""
    return f"{n / layout.MiB:.1f} MiB".replace(".0 MiB", " MiB")


def check_guest_memory(mem: GuestMemory, mem_size: int) -> None:
    """Refuse a guest too small to hold pyvirt's boot structures and a kernel."""
    if mem_size <= layout.HIMEM_START or not mem.contains(0, layout.HIMEM_START):
        raise BootError(
            f"guest memory of {mib(mem_size)} is too small to boot a kernel; give the VM at least 2 MiB"
        )


def check_range(mem: GuestMemory, mem_size: int, start: int, size: int, what: str) -> None:
    """Refuse to write `what` at [start, start+size) unless it is plain guest RAM.

    The range must lie in RAM below the MMIO hole and must not cover anything in
    BOOT_AREAS.
    """
    end = start + size
    top = layout.low_ram_end(mem_size)
    if start < 0 or end > top or not mem.contains(start, max(size, 1)):
        raise BootError(
            f"{what} at {start:#x}..{end:#x} does not fit in guest RAM (0..{top:#x}); "
            f"give the VM more memory or rebuild the kernel for a lower address"
        )
    for area in BOOT_AREAS:
        if start < area.end and area.start < end and size > 0:
            raise BootError(
                f"{what} at {start:#x}..{end:#x} overlaps the {area.name} at "
                f"{area.start:#x}..{area.end:#x} that pyvirt fills in; link the kernel at another address"
            )


def encode_cmdline(cmdline: str, limit: int) -> bytes:
    """The command line as bytes (no terminator), at most `limit` bytes long."""
    data = cmdline.encode("utf-8")
    if b"\0" in data:
        raise BootError("the kernel command line contains a NUL character; remove it")
    if len(data) > limit:
        raise BootError(
            f"the kernel command line is {len(data)} bytes but this kernel accepts at most {limit}; shorten it"
        )
    return data


def write_cmdline(mem: GuestMemory, cmdline: bytes, gpa: int = layout.CMDLINE) -> None:
    """Write a NUL-terminated command line (already length-checked) at `gpa`."""
    if len(cmdline) + 1 > layout.CMDLINE_MAX:
        raise BootError(
            f"the kernel command line is {len(cmdline)} bytes; pyvirt passes at most "
            f"{layout.CMDLINE_MAX - 1}; shorten it"
        )
    mem.write(gpa, cmdline + b"\0")


def place_initrd(mem: GuestMemory, mem_size: int, size: int, *, above: int, limit: int | None = None) -> int:
    """Where an initrd of `size` bytes goes: the highest page-aligned address that
    keeps it below `limit` (exclusive; default the end of low RAM) and at or above
    `above` (the end of the kernel's footprint).
    """
    if size <= 0:
        raise BootError("the initrd is empty; pass a non-empty initrd or leave it out")
    top = layout.low_ram_end(mem_size)
    if limit is not None:
        top = min(top, limit)
    floor = max(align_up(above, PAGE_SIZE), layout.HIMEM_START)
    gpa = align_down(top - size, PAGE_SIZE)
    if gpa < floor or not mem.contains(gpa, size):
        room = max(0, top - floor)
        raise BootError(
            f"initrd of {mib(size)} does not fit below {top:#x} above the kernel (which ends at "
            f"{above:#x}); only {mib(room)} is free there; give the VM more memory or use a smaller initrd"
        )
    return gpa


def zero(mem: GuestMemory, gpa: int, size: int) -> None:
    """Zero [gpa, gpa+size) in bounded chunks (BSS can be large)."""
    if size <= 0:
        return
    chunk = 1 << 20
    zeros = bytes(min(chunk, size))
    view = mem.view(gpa, size)
    for off in range(0, size, chunk):
        n = min(chunk, size - off)
        view[off : off + n] = zeros[:n]
