"""A tiny AML encoder: the few ACPI Machine Language terms pyvirt's DSDT needs.

Every function returns the encoded bytes of one term, so callers build a
namespace by nesting calls, e.g.::

    scope("\\_SB_", device("COM1", name("_HID", eisa_id("PNP0501"))))

Encodings follow ACPI 6.5 chapter 20 ("ACPI Machine Language Specification")
and section 6.4 ("Resource Data Types for ACPI"). Only static data objects are
supported (no methods or operators): a VMM's tables describe fixed hardware,
and static objects are what guests evaluate most reliably.
"""

from __future__ import annotations

import struct

# Opcodes (ACPI 6.5 section 20.3 "AML Byte Stream Byte Values").
ZERO_OP = 0x00
ONE_OP = 0x01
NAME_OP = 0x08
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
STRING_PREFIX = 0x0D
QWORD_PREFIX = 0x0E
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F
EXT_OP_PREFIX = 0x5B
DEVICE_OP = 0x82  # after EXT_OP_PREFIX
ROOT_CHAR = 0x5C  # '\'
PARENT_PREFIX = 0x5E  # '^'
ONES_OP = 0xFF

_LEAD_CHARS = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME_CHARS = _LEAD_CHARS | set(b"0123456789")


def pkg_length(content_len: int) -> bytes:
    """Encode a PkgLength for `content_len` bytes that follow it.

    The encoded value counts its own bytes too, which is why the size of the
    encoding is chosen first: one byte holds up to 63, and each of up to three
    extra bytes adds 8 bits above a 4-bit low nibble (ACPI 6.5 section 20.2.4).
    """
    if content_len < 0:
        raise ValueError(f"negative package length {content_len}")
    if content_len + 1 <= 0x3F:
        return bytes([content_len + 1])
    for extra in (1, 2, 3):
        total = content_len + 1 + extra
        if total < 1 << (4 + 8 * extra):
            out = [(extra << 6) | (total & 0x0F)]
            out += [(total >> (4 + 8 * i)) & 0xFF for i in range(extra)]
            return bytes(out)
    raise ValueError(f"AML package of {content_len} bytes exceeds the 256 MiB PkgLength limit")


def name_seg(seg: str) -> bytes:
    """A 4-character NameSeg; short names are padded with '_' as ASL does."""
    raw = seg.encode("ascii")
    if not 1 <= len(raw) <= 4 or raw[0] not in _LEAD_CHARS or any(c not in _NAME_CHARS for c in raw):
        raise ValueError(f"invalid AML name segment {seg!r}")
    return raw.ljust(4, b"_")


def name_string(path: str) -> bytes:
    """Encode a name such as "_S5_", "\\_SB_" or "\\_SB_.COM1"."""
    prefix = b""
    rest = path
    if rest.startswith("\\"):
        prefix, rest = bytes([ROOT_CHAR]), rest[1:]
    else:
        while rest.startswith("^"):
            prefix, rest = prefix + bytes([PARENT_PREFIX]), rest[1:]
    if not rest:
        return prefix + b"\x00"  # NullName: the root itself ("\")
    segs = [name_seg(s) for s in rest.split(".")]
    if len(segs) == 1:
        return prefix + segs[0]
    if len(segs) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + b"".join(segs)
    if len(segs) > 255:
        raise ValueError(f"AML name {path!r} has too many segments")
    return prefix + bytes([MULTI_NAME_PREFIX, len(segs)]) + b"".join(segs)


def integer(value: int) -> bytes:
    """The shortest encoding of an integer constant."""
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    if value == (1 << 64) - 1:
        return bytes([ONES_OP])
    if 0 < value <= 0xFF:
        return bytes([BYTE_PREFIX, value])
    if 0 < value <= 0xFFFF:
        return bytes([WORD_PREFIX]) + struct.pack("<H", value)
    if 0 < value <= 0xFFFFFFFF:
        return bytes([DWORD_PREFIX]) + struct.pack("<I", value)
    if 0 < value < 1 << 64:
        return bytes([QWORD_PREFIX]) + struct.pack("<Q", value)
    raise ValueError(f"AML integer {value} out of range")


def string(text: str) -> bytes:
    """A String constant (ASCII, NUL-terminated)."""
    raw = text.encode("ascii")
    if b"\x00" in raw:
        raise ValueError("AML strings cannot contain NUL")
    return bytes([STRING_PREFIX]) + raw + b"\x00"


def eisa_id(pnp: str) -> bytes:
    """EisaId("PNP0501"): a compressed 7-character id as a DWord constant.

    Three letters of 5 bits each and four hex digits, stored big-endian; ASL
    compilers always emit the DWord form, so we do too (not the shortest).
    """
    if len(pnp) != 7 or not pnp[:3].isalpha() or not pnp[:3].isupper():
        raise ValueError(f"invalid EISA id {pnp!r}")
    vendor = 0
    for ch in pnp[:3]:
        vendor = (vendor << 5) | (ord(ch) - 0x40)
    product = int(pnp[3:], 16)
    return bytes([DWORD_PREFIX]) + struct.pack(">HH", vendor, product)


def name(path: str, obj: bytes) -> bytes:
    """Name(path, obj), where obj is an encoded data object."""
    return bytes([NAME_OP]) + name_string(path) + obj


def package(*elements: bytes) -> bytes:
    """Package(){...} of already-encoded data objects."""
    if len(elements) > 255:
        raise ValueError("AML Package holds at most 255 elements (VarPackage not supported)")
    body = bytes([len(elements)]) + b"".join(elements)
    return bytes([PACKAGE_OP]) + pkg_length(len(body)) + body


def buffer(data: bytes) -> bytes:
    """Buffer(){...} initialised with `data`."""
    body = integer(len(data)) + data
    return bytes([BUFFER_OP]) + pkg_length(len(body)) + body


def scope(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([SCOPE_OP]) + pkg_length(len(body)) + body


def device(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([EXT_OP_PREFIX, DEVICE_OP]) + pkg_length(len(body)) + body


# Resource descriptors (ACPI 6.5 section 6.4): the bytes inside a _CRS buffer.


def io_port(base: int, length: int, *, alignment: int = 1) -> bytes:
    """IO(Decode16, base, base, alignment, length): a fixed range of ports."""
    if not 0 <= base <= 0xFFFF or not 0 <= length <= 0xFF:
        raise ValueError(f"I/O range {base:#x}+{length:#x} does not fit an IO descriptor")
    # Small item type 0x08, 7 data bytes; information bit 0 = full 16-bit decode.
    return struct.pack("<BBHHBB", 0x47, 0x01, base, base, alignment, length)


def irq_no_flags(*irqs: int) -> bytes:
    """IRQNoFlags(){...}: ISA IRQs, edge-triggered active-high."""
    mask = 0
    for irq in irqs:
        if not 0 <= irq <= 15:
            raise ValueError(f"ISA IRQ {irq} out of range 0-15")
        mask |= 1 << irq
    return struct.pack("<BH", 0x22, mask)  # small item type 0x04, 2 data bytes


def memory32_fixed(base: int, length: int, *, writable: bool = True) -> bytes:
    """Memory32Fixed(ReadWrite|ReadOnly, base, length): an MMIO window."""
    if not 0 <= base <= 0xFFFFFFFF or not 0 <= length <= 0xFFFFFFFF:
        raise ValueError(f"memory range {base:#x}+{length:#x} does not fit a Memory32Fixed descriptor")
    return struct.pack("<BHBII", 0x86, 9, int(writable), base, length)


def interrupt(*gsis: int, edge: bool = True, active_high: bool = True, shared: bool = False) -> bytes:
    """Interrupt(ResourceConsumer, ...){gsi, ...}: extended interrupt descriptor.

    Unlike IRQNoFlags this reaches any GSI (not just ISA 0-15), which is what
    MMIO devices wired straight to IOAPIC pins need. The defaults are
    Edge, ActiveHigh, Exclusive; `edge=False` is Level, `active_high=False`
    ActiveLow, `shared=True` Shared.
    """
    if not 1 <= len(gsis) <= 255:
        raise ValueError("an Interrupt descriptor lists 1-255 interrupts")
    for gsi in gsis:
        if not 0 <= gsi <= 0xFFFFFFFF:
            raise ValueError(f"interrupt number {gsi} does not fit an Interrupt descriptor (32 bits)")
    flags = 0x01  # consumer
    flags |= 0x02 if edge else 0
    flags |= 0 if active_high else 0x04
    flags |= 0x08 if shared else 0
    data = struct.pack("<BB", flags, len(gsis)) + b"".join(struct.pack("<I", g) for g in gsis)
    return struct.pack("<BH", 0x89, len(data)) + data


# Address space descriptors (section 6.4.3.5): a resource type, general flags
# (bit 0 set = ResourceConsumer, clear = ResourceProducer; bit 1 set =
# SubDecode; bit 2 MinFixed; bit 3 MaxFixed), type-specific flags, then five
# fields of the descriptor's width: granularity, minimum, maximum, translation
# offset, length. We only describe fixed windows with no translation.
ADDR_SPACE_MEMORY, ADDR_SPACE_IO, ADDR_SPACE_BUS = 0, 1, 2
_ADDR_CONSUMER = 0x01
_ADDR_MIN_FIXED = 0x04
_ADDR_MAX_FIXED = 0x08
_IO_ENTIRE_RANGE = 0x03  # _RNG: decodes ISA and non-ISA ports alike
_MEM_READ_WRITE = 0x01  # _RW
_MEM_CACHEABLE = 0x01 << 1  # _MEM = 1 (0 is NonCacheable)
_MEM_PREFETCHABLE = 0x03 << 1  # _MEM = 3

# (large resource item tag, struct format letter) per descriptor width.
_WORD_ADDR = (0x88, "H")
_DWORD_ADDR = (0x87, "I")
_QWORD_ADDR = (0x8A, "Q")


def _address_space(kind: tuple[int, str], resource_type: int, minimum: int, maximum: int, *,
                   producer: bool, type_flags: int, what: str) -> bytes:
    tag, fmt = kind
    limit = (1 << (8 * struct.calcsize(fmt))) - 1
    if not 0 <= minimum <= maximum <= limit:
        raise ValueError(f"{what} range {minimum:#x}-{maximum:#x} is empty or does not fit in "
                         f"{struct.calcsize(fmt) * 8} bits")
    length = maximum - minimum + 1
    if length > limit:
        # A window covering the whole space has a length one past the field's
        # maximum; no descriptor can say that.
        raise ValueError(f"{what} range {minimum:#x}-{maximum:#x} is longer than its length field holds")
    general = _ADDR_MIN_FIXED | _ADDR_MAX_FIXED | (0 if producer else _ADDR_CONSUMER)
    # Granularity 0: the range is fixed, so there is no alignment to describe
    # (the field only matters to an OS that would move the window).
    data = struct.pack(f"<BBB5{fmt}", resource_type, general, type_flags, 0, minimum, maximum, 0, length)
    return struct.pack("<BH", tag, len(data)) + data


def word_bus_number(minimum: int, maximum: int, *, producer: bool = True) -> bytes:
    """WordBusNumber(ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, min, max, 0, len).

    The buses a host bridge decodes, as its _CRS reports them.
    """
    if maximum > 0xFF:
        raise ValueError(f"PCI bus number {maximum:#x} out of range 0-0xff")
    return _address_space(_WORD_ADDR, ADDR_SPACE_BUS, minimum, maximum, producer=producer, type_flags=0,
                          what="bus number")


def word_io(minimum: int, maximum: int, *, producer: bool = True) -> bytes:
    """WordIO(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, min, max, 0, len).

    A window of I/O ports a bridge forwards (producer) or uses (consumer).
    """
    return _address_space(_WORD_ADDR, ADDR_SPACE_IO, minimum, maximum, producer=producer,
                          type_flags=_IO_ENTIRE_RANGE, what="I/O port")


def _memory_flags(cacheable: bool, prefetchable: bool, writable: bool) -> int:
    flags = _MEM_READ_WRITE if writable else 0
    if prefetchable:
        flags |= _MEM_PREFETCHABLE
    elif cacheable:
        flags |= _MEM_CACHEABLE
    return flags


def dword_memory(minimum: int, maximum: int, *, producer: bool = True, cacheable: bool = False,
                 prefetchable: bool = False, writable: bool = True) -> bytes:
    """DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, ...).

    A 32-bit memory window, `minimum`..`maximum` inclusive; the defaults are
    what a host bridge's MMIO window for BARs usually says.
    """
    return _address_space(_DWORD_ADDR, ADDR_SPACE_MEMORY, minimum, maximum, producer=producer,
                          type_flags=_memory_flags(cacheable, prefetchable, writable), what="memory")


def qword_memory(minimum: int, maximum: int, *, producer: bool = True, cacheable: bool = False,
                 prefetchable: bool = False, writable: bool = True) -> bytes:
    """QWordMemory(...): like `dword_memory` for windows that reach above 4 GiB."""
    return _address_space(_QWORD_ADDR, ADDR_SPACE_MEMORY, minimum, maximum, producer=producer,
                          type_flags=_memory_flags(cacheable, prefetchable, writable), what="memory")


def resource_template(*descriptors: bytes) -> bytes:
    """ResourceTemplate(){...}: descriptors plus the end tag, as a Buffer.

    The end tag's checksum byte is 0, which the spec defines as "treat the
    checksum as valid"; ASL compilers emit the same.
    """
    return buffer(b"".join(descriptors) + b"\x79\x00")
