"""Reading ACPI tables back out of guest memory, validating them as an OS would.

`parse_tables(mem, rsdp)` follows RSDP -> XSDT/RSDT -> tables -> DSDT/FACS
and checks signatures, lengths and checksums; `parse_mcfg` decodes an MCFG
table's allocations. The DSDT stays opaque bytes (`iasl -d` reads it). Tests
and debugging tools use this module; it is apart from acpi.py (which builds
the tables and re-exports `parse_tables`) so that a VM's start does not load
it.
"""

from __future__ import annotations

import struct

from pyvirt.memory import GuestMemory

from ..._record import FrozenRecord
from .acpi import FACS_LEN, HEADER_LEN, MCFG_ALLOCATION_LEN

_MCFG_RESERVED = 8  # between the header and the first allocation


class McfgAllocation(FrozenRecord):
    """One MCFG entry: ECAM at `base` for buses `start_bus`..`end_bus` of `segment`."""

    __slots__ = __match_args__ = ("base", "segment", "start_bus", "end_bus")
    base: int
    segment: int
    start_bus: int
    end_bus: int

    def __init__(self, base: int, segment: int, start_bus: int, end_bus: int) -> None:
        self._init(base, segment, start_bus, end_bus)


def parse_mcfg(table: bytes) -> list[McfgAllocation]:
    """Decode an MCFG table (PCI Firmware 3.x, 4.1.2) as `parse_tables` returns it.

    Raises ValueError if it is not an MCFG, its length is not a whole number
    of allocations, or an allocation's bus range is backwards.
    """
    if table[:4] != b"MCFG":
        raise ValueError(f"not an MCFG table: signature {table[:4]!r}")
    body = len(table) - HEADER_LEN - _MCFG_RESERVED
    if body < 0 or body % MCFG_ALLOCATION_LEN:
        raise ValueError(f"MCFG length {len(table)} is not the header plus whole 16-byte allocations")
    out = []
    for off in range(HEADER_LEN + _MCFG_RESERVED, len(table), MCFG_ALLOCATION_LEN):
        base, segment, start_bus, end_bus = struct.unpack_from("<QHBB", table, off)
        if end_bus < start_bus:
            raise ValueError(f"MCFG allocation at {base:#x} has buses {start_bus}-{end_bus}")
        out.append(McfgAllocation(base, segment, start_bus, end_bus))
    return out


def _read_sdt(mem: GuestMemory, addr: int, expect: bytes | None = None) -> bytes:
    header = mem.read(addr, HEADER_LEN)
    signature, length = header[:4], struct.unpack_from("<I", header, 4)[0]
    if expect is not None and signature != expect:
        raise ValueError(f"expected ACPI table {expect!r} at {addr:#x}, found {signature!r}")
    if length < HEADER_LEN:
        raise ValueError(f"ACPI table {signature!r} at {addr:#x} has bad length {length}")
    table = mem.read(addr, length)
    if sum(table) & 0xFF:
        raise ValueError(f"ACPI table {signature!r} at {addr:#x} has a bad checksum")
    return table


def parse_tables(mem: GuestMemory, rsdp: int) -> dict[str, bytes]:
    """Walk RSDP -> XSDT/RSDT -> tables -> DSDT/FACS, validating as we go.

    Returns each table's bytes keyed by signature ("RSDP", "XSDT", "RSDT",
    "FACP", "APIC", "DSDT", "FACS", ...); a repeated signature gets a numeric
    suffix ("SSDT", "SSDT2"). Raises ValueError on a bad signature, checksum,
    or a disagreement between the RSDT and XSDT.
    """
    head = mem.read(rsdp, 20)
    if head[:8] != b"RSD PTR ":
        raise ValueError(f"no RSDP signature at {rsdp:#x}")
    if sum(head) & 0xFF:
        raise ValueError(f"RSDP at {rsdp:#x} has a bad checksum")
    revision, rsdt_addr = head[15], struct.unpack_from("<I", head, 16)[0]
    out: dict[str, bytes] = {}
    xsdt_addrs: list[int] | None = None
    if revision >= 2:
        length = mem.read_u32(rsdp + 20)
        full = mem.read(rsdp, length)
        if sum(full) & 0xFF:
            raise ValueError(f"RSDP at {rsdp:#x} has a bad extended checksum")
        out["RSDP"] = full
        xsdt = _read_sdt(mem, struct.unpack_from("<Q", full, 24)[0], b"XSDT")
        out["XSDT"] = xsdt
        xsdt_addrs = [a for (a,) in struct.iter_unpack("<Q", xsdt[HEADER_LEN:])]
    else:
        out["RSDP"] = head
    rsdt_addrs: list[int] | None = None
    if rsdt_addr:
        rsdt = _read_sdt(mem, rsdt_addr, b"RSDT")
        out["RSDT"] = rsdt
        rsdt_addrs = [a for (a,) in struct.iter_unpack("<I", rsdt[HEADER_LEN:])]
    if xsdt_addrs is not None and rsdt_addrs is not None and xsdt_addrs != rsdt_addrs:
        raise ValueError("RSDT and XSDT list different tables")
    addrs = xsdt_addrs if xsdt_addrs is not None else rsdt_addrs or []

    def add(key: str, data: bytes) -> None:
        n, k = 1, key
        while k in out:
            n += 1
            k = f"{key}{n}"
        out[k] = data

    for addr in addrs:
        table = _read_sdt(mem, addr)
        add(table[:4].decode("ascii", "replace"), table)
        if table[:4] == b"FACP":
            facs32, dsdt32 = struct.unpack_from("<II", table, 36)
            facs64, dsdt64 = struct.unpack_from("<QQ", table, 132) if len(table) >= 148 else (0, 0)
            for name, a32, a64 in (("FACS", facs32, facs64), ("DSDT", dsdt32, dsdt64)):
                if a32 and a64 and a32 != a64:
                    raise ValueError(f"FADT has different 32- and 64-bit {name} addresses")
            if dsdt64 or dsdt32:
                add("DSDT", _read_sdt(mem, dsdt64 or dsdt32, b"DSDT"))
            facs_addr = facs64 or facs32
            if facs_addr:
                facs = mem.read(facs_addr, FACS_LEN)
                if facs[:4] != b"FACS" or struct.unpack_from("<I", facs, 4)[0] < FACS_LEN:
                    raise ValueError(f"bad FACS at {facs_addr:#x}")
                add("FACS", facs)
    return out
