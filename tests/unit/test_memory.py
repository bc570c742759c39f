"""GuestMemory: bounds checks, views, multiple regions."""

import pytest

from pyvirt.memory import GuestMemory, GuestMemoryError, Region


def test_read_write_roundtrip():
    m = GuestMemory.from_bytearray(0x10000)
    m.write(0x100, b"hello")
    assert m.read(0x100, 5) == b"hello"
    m.write_u32(0x200, 0xDEADBEEF)
    assert m.read_u32(0x200) == 0xDEADBEEF
    m.write_u64(0x208, 1 << 63)
    assert m.read_u64(0x208) == 1 << 63
    m.write_u16(0x210, 0xBEEF)
    assert m.read_u16(0x210) == 0xBEEF


@pytest.mark.parametrize("gpa,length", [(0x10000, 1), (0xFFFF, 2), (-1, 1), (0, 0x10001), (1 << 40, 8)])
def test_out_of_bounds_is_refused(gpa, length):
    m = GuestMemory.from_bytearray(0x10000)
    with pytest.raises(GuestMemoryError):
        m.read(gpa, length)
    with pytest.raises(GuestMemoryError):
        m.write(gpa, b"x" * length)
    assert not m.contains(gpa, length)


def test_regions_with_hole():
    m = GuestMemory([Region(0, 0x1000, bytearray(0x1000)), Region(0x4000, 0x1000, bytearray(0x1000))])
    m.write(0x4FFF, b"z")
    assert m.read(0x4FFF, 1) == b"z"
    with pytest.raises(GuestMemoryError):
        m.read(0x2000, 1)
    with pytest.raises(GuestMemoryError):  # a view never spans two regions
        m.read(0xFFF, 2)
    assert m.size == 0x2000


def test_overlapping_regions_rejected():
    with pytest.raises(GuestMemoryError):
        GuestMemory([Region(0, 0x2000, bytearray(0x2000)), Region(0x1000, 0x1000, bytearray(0x1000))])


def test_view_is_zero_copy():
    m = GuestMemory.from_bytearray(0x1000)
    v = m.view(0x10, 4)
    v[:] = b"abcd"
    assert m.read(0x10, 4) == b"abcd"


def test_cstr_is_bounded():
    m = GuestMemory.from_bytearray(0x100)
    m.write(0x10, b"abc\0def")
    assert m.read_cstr(0x10) == b"abc"
    m.fill(0, 0x100, ord("x"))
    assert m.read_cstr(0xF0) == b"x" * 16  # stops at the end of memory


def test_anonymous_region_requires_page_multiple():
    with pytest.raises(GuestMemoryError):
        Region.anonymous(0, 1000)
    r = Region.anonymous(0, 8192)
    assert r.host_address() != 0
    r.view.release()
    r.buf.close()


def test_discard_zeroes_whole_pages_only():
    for mem in (GuestMemory.from_bytearray(16 * 4096), GuestMemory([Region.anonymous(0, 4 << 20)])):
        mem.write(0, b"\xaa" * (16 * 4096))
        mem.discard(100, 3 * 4096)  # covers pages 1 and 2 fully, 0 and 3 partly
        assert mem.read(0, 4096) == b"\xaa" * 4096
        assert mem.read(4096, 2 * 4096) == bytes(2 * 4096)
        assert mem.read(3 * 4096, 4096) == b"\xaa" * 4096
        mem.discard(5 * 4096, 10)  # less than a page: nothing
        assert mem.read(5 * 4096, 10) == b"\xaa" * 10


def test_discard_outside_memory_is_refused():
    mem = GuestMemory.from_bytearray(4 * 4096)
    with pytest.raises(GuestMemoryError):
        mem.discard(2 * 4096, 8 * 4096)


def test_map_file_loads_pages_lazily_and_never_writes_the_file(tmp_path):
    """What a snapshot restore does: file pages mapped privately over anonymous memory."""
    import os

    from pyvirt.memory import GuestMemoryError, Region

    path = tmp_path / "pages"
    path.write_bytes(b"A" * 4096 + b"B" * 4096 + b"C" * 4096)
    r = Region.anonymous(0x100000, 16 * 4096)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert r.map_file(fd, [(4096, 8192, 4096), (8 * 4096, 4096, 0)]) == 2
    finally:
        os.close(fd)  # the mapping keeps the file
    mem = GuestMemory([r])
    assert r.file_backed
    assert mem.read(0x100000, 4096) == bytes(4096)  # not mapped: anonymous zeros
    assert mem.read(0x101000, 8192) == b"B" * 4096 + b"C" * 4096
    assert mem.read(0x108000, 4096) == b"A" * 4096
    mem.write(0x101000, b"guest")  # a private copy of the page
    assert path.read_bytes()[4096:4101] == b"BBBBB"
    mem.discard(0x101000, 8192)  # reads zero afterwards, not the file's bytes
    assert mem.read(0x101000, 8192) == bytes(8192)
    assert mem.read(0x108000, 4096) == b"A" * 4096
    for bad in [(1, 4096, 0), (0, 4096, 1), (15 * 4096, 8192, 0), (0, 0, 0)]:
        with pytest.raises(GuestMemoryError):
            r.map_file(-1, [bad])
    with pytest.raises(GuestMemoryError):
        Region(0, 4096, bytearray(4096)).map_file(-1, [(0, 4096, 0)])
    r.view.release()
    r.buf.close()  # type: ignore[union-attr]
