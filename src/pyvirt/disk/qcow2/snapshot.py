"""The internal snapshot table: entries as frozen dataclasses, and back.

Pure code. An entry (docs/interop/qcow2.txt, "Snapshot table entry"):
   0 l1_table_offset u64     8 l1_size u32        12 id length u16
  14 name length u16        16 date seconds u32  20 date nanoseconds u32
  24 vm clock ns u64        32 vm state size u32 36 extra data size u32
  40 extra data (vm_state_size_large u64, disk_size u64, icount u64, ...)
  then the id, the name, and zero padding to a multiple of 8.
Unknown extra data is kept and written back.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import Qcow2Error
from .header import MAX_L1_BYTES

_ENTRY = struct.Struct(">QIHHIIQII")
MAX_EXTRA = 1024
MAX_TABLE_BYTES = 64 << 20
NEW_EXTRA_SIZE = 24  # vm_state_size_large, disk_size, icount: what qemu writes


@dataclass(frozen=True)
class SnapshotInfo:
    """One internal snapshot, as listed by `qemu-img snapshot -l`."""

    id: str
    name: str
    l1_table_offset: int
    l1_size: int
    date_sec: int = 0
    date_nsec: int = 0
    vm_clock_nsec: int = 0
    vm_state_size: int = 0
    disk_size: int | None = None  # None in old images without the extra field
    icount: int | None = None
    extra: bytes = b""

    def info(self) -> dict[str, object]:
        """The entry of `qemu-img info --output json`'s "snapshots" list."""
        d: dict[str, object] = {}
        if self.icount is not None:
            d["icount"] = self.icount
        d.update({"vm-clock-nsec": self.vm_clock_nsec % 1_000_000_000, "name": self.name,
                  "date-sec": self.date_sec, "date-nsec": self.date_nsec,
                  "vm-clock-sec": self.vm_clock_nsec // 1_000_000_000, "id": self.id,
                  "vm-state-size": self.vm_state_size})
        return d


class TruncatedTable(Exception):
    """The buffer ended inside the table: read more and parse again."""


def parse_snapshot_table(buf: bytes, nb: int, cluster_size: int, file_size: int,
                         path: str = "qcow2 image", table_offset: int = 0) -> tuple[list[SnapshotInfo], int]:
    """Parse `nb` entries; returns them and the table's length in bytes.
    Raises TruncatedTable if `buf` is too short, Qcow2Error if corrupt."""
    out = []
    pos = 0
    for i in range(nb):
        if pos + _ENTRY.size > len(buf):
            raise TruncatedTable()
        (l1_off, l1_size, id_len, name_len, date_sec, date_nsec, vm_clock, vm_state,
         extra_len) = _ENTRY.unpack_from(buf, pos)
        where = f"{path}: snapshot table entry {i} at {table_offset + pos:#x}"
        if extra_len > MAX_EXTRA:
            raise Qcow2Error(f"{where}: extra data size {extra_len} is too large")
        size = (_ENTRY.size + extra_len + id_len + name_len + 7) & ~7
        if pos + size > MAX_TABLE_BYTES:
            raise Qcow2Error(f"{where}: the snapshot table exceeds {MAX_TABLE_BYTES >> 20} MiB")
        if pos + size - (-(_ENTRY.size + extra_len + id_len + name_len) % 8) > len(buf):
            raise TruncatedTable()  # (the padding of the last entry may be missing at the end of the file)
        if l1_off % cluster_size:
            raise Qcow2Error(f"{where}: L1 table offset {l1_off:#x} is not cluster aligned")
        if l1_size * 8 > MAX_L1_BYTES:
            raise Qcow2Error(f"{where}: L1 table size {l1_size} is too large")
        if l1_size and (l1_off == 0 or l1_off + l1_size * 8 > file_size):
            raise Qcow2Error(f"{where}: L1 table at {l1_off:#x} ({l1_size} entries) is outside the file")
        p = pos + _ENTRY.size
        extra = bytes(buf[p:p + extra_len])
        p += extra_len
        sid = bytes(buf[p:p + id_len]).decode("utf-8", "replace")
        p += id_len
        name = bytes(buf[p:p + name_len]).decode("utf-8", "replace")
        disk_size = icount = None
        if len(extra) >= 8:
            vm_state = struct.unpack_from(">Q", extra, 0)[0]
        if len(extra) >= 16:
            disk_size = struct.unpack_from(">Q", extra, 8)[0]
        if len(extra) >= 24:
            raw_icount = struct.unpack_from(">Q", extra, 16)[0]
            icount = None if raw_icount == (1 << 64) - 1 else raw_icount
        out.append(SnapshotInfo(sid, name, l1_off, l1_size, date_sec, date_nsec, vm_clock, vm_state,
                                disk_size, icount, extra))
        pos += size
    return out, pos


def pack_snapshot_table(snaps: list[SnapshotInfo]) -> bytes:
    parts = []
    for s in snaps:
        extra = bytearray(s.extra)
        if len(extra) < 16:
            extra.extend(bytes(16 - len(extra)))
        struct.pack_into(">Q", extra, 0, s.vm_state_size)
        if s.disk_size is not None:
            struct.pack_into(">Q", extra, 8, s.disk_size)
        if len(extra) >= 24:
            struct.pack_into(">Q", extra, 16, (1 << 64) - 1 if s.icount is None else s.icount)
        sid, name = s.id.encode(), s.name.encode()
        if len(sid) > 0xFFFF or len(name) > 0xFFFF:
            raise Qcow2Error(f"snapshot id or name {s.name!r} is too long")
        entry = _ENTRY.pack(s.l1_table_offset, s.l1_size, len(sid), len(name), s.date_sec & 0xFFFFFFFF,
                            s.date_nsec, s.vm_clock_nsec, min(s.vm_state_size, 0xFFFFFFFF), len(extra))
        entry += bytes(extra) + sid + name
        parts.append(entry + bytes(-len(entry) % 8))
    return b"".join(parts)
