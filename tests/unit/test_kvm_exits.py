"""Decoding of the kvm_run page into typed exits, from made-up pages."""

import struct

from pyvirt.kvm import exits


def page(reason: int, union: bytes = b"", extra: dict[int, bytes] | None = None) -> bytearray:
    buf = bytearray(4096)
    struct.pack_into("<I", buf, exits.RUN_EXIT_REASON, reason)
    buf[exits.RUN_UNION : exits.RUN_UNION + len(union)] = union
    for off, data in (extra or {}).items():
        buf[off : off + len(data)] = data
    return buf


def test_io_out_carries_data():
    p = page(exits.EXIT_IO, struct.pack("<BBHIQ", exits.IO_OUT, 1, 0x3F8, 3, 0x1000), {0x1000: b"abc"})
    assert exits.decode(p) == exits.IoOut(0x3F8, 1, b"abc")


def test_io_in_keeps_offset():
    p = page(exits.EXIT_IO, struct.pack("<BBHIQ", exits.IO_IN, 4, 0xCFC, 1, 0x1000))
    assert exits.decode(p) == exits.IoIn(0xCFC, 4, 1, 0x1000)


def test_mmio_read_and_write():
    p = page(exits.EXIT_MMIO, struct.pack("<Q8sIB", 0xD0000000, b"\x11\x22\x33\x44" + bytes(4), 4, 1))
    assert exits.decode(p) == exits.MmioWrite(0xD0000000, b"\x11\x22\x33\x44")
    p = page(exits.EXIT_MMIO, struct.pack("<Q8sIB", 0xD0000008, bytes(8), 2, 0))
    assert exits.decode(p) == exits.MmioRead(0xD0000008, 2)


def test_internal_error_and_system_event():
    p = page(exits.EXIT_INTERNAL_ERROR, struct.pack("<II2Q", 1, 2, 0xAB, 0xCD))
    e = exits.decode(p)
    assert e == exits.InternalError(1, (0xAB, 0xCD))
    assert "emulation" in e.describe()
    # a hostile ndata is clamped to the 16 slots the struct has
    p = page(exits.EXIT_INTERNAL_ERROR, struct.pack("<II", 1, 10_000))
    assert len(exits.decode(p).data) == 16
    p = page(exits.EXIT_SYSTEM_EVENT, struct.pack("<II", exits.SYSTEM_EVENT_RESET, 0))
    assert exits.decode(p) == exits.SystemEvent(exits.SYSTEM_EVENT_RESET, ())


def test_simple_and_unknown_exits():
    assert exits.decode(page(exits.EXIT_HLT)) == exits.Hlt()
    assert exits.decode(page(exits.EXIT_SHUTDOWN)) == exits.Shutdown()
    assert exits.decode(page(exits.EXIT_INTR)) == exits.Interrupted()
    other = exits.decode(page(33))
    assert isinstance(other, exits.Other) and other.name == "X86_BUS_LOCK"
