"""QEMU's fw_cfg firmware configuration interface, legacy I/O-port flavour.

Firmware (SeaBIOS, OVMF, qboot) and Linux's qemu_fw_cfg driver read the
machine description here: a 16-bit selector picks an item, then the data
port returns the item's bytes one after another.

Layout (`PORT` 0x510, `LENGTH` 2): a 2-byte write at offset 0 (port 0x510)
sets the selector and rewinds to the item's first byte. A 1-byte write at
offset 0 is taken as the whole selector with a zero high byte (QEMU would
treat it as a data write, which it ignores; accepting it costs nothing and
reaches every well-known key). A 4-byte write at offset 0 selects its low 16
bits. Reads at offset 1 (port 0x511) return the next byte of the item; a
wider read returns successive bytes, first byte lowest. Past an item's end,
and for unknown selectors, data reads 0. Offset 0 is write-only and reads
all-ones. Writes to the data port are ignored (QEMU dropped them in 2.4),
and there is no DMA interface (the ID item has only bit 0, "traditional").

Items, little-endian unless noted: 0x00 signature "QEMU", 0x01 ID, 0x03
RAM size (u64), 0x05 CPU count (u16), 0x0f max CPUs (u16), 0x14 command
line size (u32, counting its NUL), 0x15 command line bytes + NUL, 0x19 the
file directory (big-endian: u32 count, then per file u32 size, u16 selector,
u16 reserved, char name[56]), and named files from selector 0x20 up.

State: `FwCfgState` holds the selector and read offset only. The items are
a function of the VM's configuration, which the VMM rebuilds identically
before restoring, and they can be large (kernels, ACPI tables).
"""

from __future__ import annotations

import struct
import threading

from ._common import VALID_SIZES, check_int, check_state_type, lazy_states, ones

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from .states import FwCfgState

__getattr__ = lazy_states(__name__, ("FwCfgState",))

PORT = 0x510
LENGTH = 2
SIGNATURE, ID, RAM_SIZE, NB_CPUS, MAX_CPUS = 0x00, 0x01, 0x03, 0x05, 0x0F
CMDLINE_SIZE, CMDLINE_DATA, FILE_DIR, FILE_FIRST = 0x14, 0x15, 0x19, 0x20
FILE_LAST = 0x3FFF  # bit 14 would make it the write channel
ID_TRADITIONAL = 0x01
MAX_NAME = 55  # name[56] keeps room for the NUL
_DIR_ENTRY = struct.Struct(">IHH56s")


class FwCfg:
    LENGTH = LENGTH

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[int, bytes] = {}
        self._files: list[tuple[str, int]] = []
        self._selector = 0
        self._offset = 0
        self.add_item(SIGNATURE, b"QEMU")
        self.add_item(ID, ID_TRADITIONAL.to_bytes(4, "little"))
        self._update_dir()

    @classmethod
    def for_vm(cls, ncpus: int, ram_size: int, cmdline: bytes = b"", e820: bytes = b"") -> "FwCfg":
        """The items a PC firmware looks for; `e820` is the raw etc/e820 table
        (20-byte entries: u64 address, u64 length, u32 type, little-endian)."""
        if not 1 <= ncpus <= 0xFFFF:
            raise ValueError(f"fw_cfg: {ncpus} CPUs does not fit the u16 count")
        if not 0 <= ram_size < 1 << 64:
            raise ValueError(f"fw_cfg: RAM size {ram_size:#x} does not fit in a u64")
        cfg = cls()
        cfg.add_item(RAM_SIZE, ram_size.to_bytes(8, "little"))
        cfg.add_item(NB_CPUS, ncpus.to_bytes(2, "little"))
        cfg.add_item(MAX_CPUS, ncpus.to_bytes(2, "little"))
        data = bytes(cmdline).removesuffix(b"\0")
        if b"\0" in data:
            raise ValueError("fw_cfg: the kernel command line contains a NUL byte")
        data += b"\0"
        cfg.add_item(CMDLINE_SIZE, len(data).to_bytes(4, "little"))
        cfg.add_item(CMDLINE_DATA, data)
        if e820:
            cfg.add_file("etc/e820", e820)
        return cfg

    def add_item(self, key: int, data: bytes) -> None:
        """Set a well-known or arch-local (0x8000+) item; replaces any earlier value."""
        if not 0 <= key <= 0xFFFF or key == FILE_DIR or FILE_FIRST <= key <= FILE_LAST:
            raise ValueError(f"fw_cfg: key {key:#x} is not a well-known item (files use add_file)")
        with self._lock:
            self._items[key] = bytes(data)

    def add_file(self, name: str, data: bytes) -> int:
        """Publish a named file in the directory; returns its selector."""
        raw = name.encode("utf-8")
        if not raw or len(raw) > MAX_NAME or b"\0" in raw:
            raise ValueError(f"fw_cfg: file name {name!r} must be 1-{MAX_NAME} bytes without NUL")
        if len(data) > 0xFFFFFFFF:
            raise ValueError(f"fw_cfg: file {name!r} is larger than 4 GiB")
        with self._lock:
            if any(n == name for n, _ in self._files):
                raise ValueError(f"fw_cfg: file {name!r} already exists")
            key = FILE_FIRST + len(self._files)
            if key > FILE_LAST:
                raise ValueError(f"fw_cfg: no selector left for file {name!r}")
            self._files.append((name, key))
            self._items[key] = bytes(data)
            self._update_dir()
        return key

    def item(self, key: int) -> bytes | None:
        with self._lock:
            return self._items.get(key)

    def _update_dir(self) -> None:
        entries = b"".join(_DIR_ENTRY.pack(len(self._items[key]), key, 0, name.encode("utf-8"))
                           for name, key in self._files)
        self._items[FILE_DIR] = len(self._files).to_bytes(4, "big") + entries

    # -- bus interface ---------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if size not in VALID_SIZES or offset != 1:
            return ones(size)
        with self._lock:
            item = self._items.get(self._selector, b"")
            start = min(self._offset, len(item))
            chunk = item[start:start + size]
            self._offset = start + len(chunk)
        return int.from_bytes(chunk.ljust(size, b"\0"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        if size not in VALID_SIZES or offset != 0:
            return
        with self._lock:
            self._selector = value & ones(size) & 0xFFFF
            self._offset = 0

    # -- state -----------------------------------------------------------
    def state(self) -> FwCfgState:
        from .states import FwCfgState

        with self._lock:
            return FwCfgState(selector=self._selector, offset=self._offset)

    def restore(self, state: FwCfgState) -> None:
        from .states import FwCfgState

        check_state_type(state, FwCfgState)
        selector = check_int("fw_cfg selector", state.selector, 0, 0xFFFF)
        with self._lock:
            length = len(self._items.get(selector, b""))
            check_int(f"fw_cfg offset into item {selector:#x}", state.offset, 0, length)
            self._selector, self._offset = selector, state.offset
