"""Finding the pages a migration must send again (migration/dirty.py): KVM
dirty bitmaps decoded, pages merged into runs, and the VMM's own writes
recorded by GuestMemory. The KVM side is a fake VM: no /dev/kvm needed."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirt.kvm import ioctls
from pyvirt.memory.guest import GuestMemory, GuestMemoryError, Region
from pyvirt.migration.dirty import PAGE, DirtyLog, VmmWrites, bitmap_pages, page_runs


def words(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}Q", *values)


# --- KVM dirty bitmaps ---------------------------------------------------------------

@pytest.mark.parametrize("bitmap, first, pages", [
    (b"", 0, []),
    (bytes(64), 0, []),
    (words(1), 0, [0]),
    (words(1 << 63), 0, [63]),
    (words(0b1011), 0, [0, 1, 3]),
    (words(0, 1), 0, [64]),
    (words(1 << 5, 0, 1 << 63 | 1), 0, [5, 128, 191]),
    (words(2**64 - 1), 0, list(range(64))),
    (words(0b101), 256, [256, 258]),  # a slot at 1 MiB: page numbers are absolute
    (words(0, 1 << 1), 0x100000, [0x100000 + 65]),
])
def test_bitmap_pages(bitmap, first, pages):
    assert bitmap_pages(bitmap, first) == pages
    assert bitmap_pages(bytearray(bitmap), first) == pages  # what Vm.get_dirty_log returns


def test_bitmap_bytes_are_little_endian_words():
    # Bit 0 of byte 1 is page 8; byte 7's top bit is page 63 (KVM's layout on x86).
    assert bitmap_pages(b"\0\1\0\0\0\0\0\x80", 0) == [8, 63]


@pytest.mark.parametrize("size", [1, 7, 9, 15])
def test_a_bitmap_of_partial_words_is_refused(size):
    with pytest.raises(ValueError, match=f"{size} bytes is not whole 64-bit words"):
        bitmap_pages(bytes(size), 0)


@settings(max_examples=100, deadline=None)
@given(st.sets(st.integers(0, 64 * 8 - 1)), st.integers(0, 2**40))
def test_bitmap_pages_finds_exactly_the_set_bits(pages, first):
    bits = bytearray(64)
    for p in pages:
        bits[p // 8] |= 1 << (p % 8)
    assert bitmap_pages(bits, first) == sorted(first + p for p in pages)


# --- runs -------------------------------------------------------------------------------

@pytest.mark.parametrize("pages, max_pages, runs", [
    ([], 1 << 30, []),
    ([5], 1 << 30, [(5 * PAGE, PAGE)]),
    ([0, 1, 2, 3], 1 << 30, [(0, 4 * PAGE)]),
    ([0, 1, 3, 4, 9], 1 << 30, [(0, 2 * PAGE), (3 * PAGE, 2 * PAGE), (9 * PAGE, PAGE)]),
    ([9, 3, 0, 4, 1], 1 << 30, [(0, 2 * PAGE), (3 * PAGE, 2 * PAGE), (9 * PAGE, PAGE)]),  # unsorted
    ({7, 6, 5}, 1 << 30, [(5 * PAGE, 3 * PAGE)]),  # any iterable
    (range(10), 4, [(0, 4 * PAGE), (4 * PAGE, 4 * PAGE), (8 * PAGE, 2 * PAGE)]),  # cut at max_pages
    (range(8), 4, [(0, 4 * PAGE), (4 * PAGE, 4 * PAGE)]),
    (range(3), 1, [(0, PAGE), (PAGE, PAGE), (2 * PAGE, PAGE)]),
    ([0x100000, 0x100001], 1 << 30, [(0x100000 * PAGE, 2 * PAGE)]),
])
def test_page_runs(pages, max_pages, runs):
    assert page_runs(pages, max_pages) == runs


@settings(max_examples=100, deadline=None)
@given(st.sets(st.integers(0, 300)), st.integers(1, 20))
def test_page_runs_cover_each_page_once(pages, max_pages):
    runs = page_runs(pages, max_pages)
    covered = [gpa // PAGE + i for gpa, length in runs for i in range(length // PAGE)]
    assert covered == sorted(pages)
    assert all(0 < length <= max_pages * PAGE and gpa % PAGE == 0 for gpa, length in runs)
    # Runs are maximal: two runs touch only where the first was cut at max_pages.
    for (g1, l1), (g2, _) in zip(runs, runs[1:]):
        assert g1 + l1 < g2 or l1 == max_pages * PAGE


# --- GuestMemory write tracking -----------------------------------------------------------

def two_regions() -> GuestMemory:
    return GuestMemory([Region(0, 16 * PAGE, bytearray(16 * PAGE)),
                        Region(0x100000, 16 * PAGE, bytearray(16 * PAGE))])


def test_tracking_is_off_by_default():
    mem = two_regions()
    mem.write(0, b"x" * PAGE)
    mem.discard(0, PAGE)
    assert mem.written is None
    assert mem.take_written() == set()


def test_views_record_every_page_they_touch():
    mem = two_regions()
    mem.track_writes(True)
    mem.view(PAGE - 1, 2)  # two bytes across a page boundary
    mem.write(5 * PAGE, b"a" * PAGE)  # exactly one page
    mem.write_u32(0x100000 + 3 * PAGE + 4092, 1)  # the last 4 bytes of a page
    mem.view(8 * PAGE + 100, 2 * PAGE)  # starts inside page 8, ends inside page 10
    assert mem.take_written() == {0, 1, 5, 0x100 + 3, 8, 9, 10}


def test_empty_views_record_nothing_and_bad_ones_raise_first():
    mem = two_regions()
    mem.track_writes(True)
    mem.view(3 * PAGE, 0)
    with pytest.raises(GuestMemoryError):
        mem.view(15 * PAGE, 2 * PAGE)  # crosses the end of the region
    assert mem.take_written() == set()


def test_reads_are_recorded_too():
    # A view does not say what it is for: a few pages more are sent, none is missed.
    mem = two_regions()
    mem.track_writes(True)
    mem.read(2 * PAGE, 8)
    mem.read_u64(0x100000)
    assert mem.take_written() == {2, 0x100}


def test_discard_records_the_whole_pages_it_drops():
    mem = two_regions()
    mem.write(0, b"\xff" * (16 * PAGE))
    mem.track_writes(True)
    mem.take_written()
    mem.discard(PAGE + 1, 3 * PAGE)  # whole pages 2 and 3 only
    assert mem.take_written() == {2, 3}
    assert mem.read(2 * PAGE, 2 * PAGE) == bytes(2 * PAGE) and mem.read(PAGE, 1) == b"\xff"
    mem.take_written()  # those reads
    mem.discard(5 * PAGE + 1, 10)  # no whole page: nothing dropped, nothing recorded
    assert mem.take_written() == set()


def test_take_resets_and_recording_goes_on():
    mem = two_regions()
    mem.track_writes(True)
    mem.write(0, b"a")
    assert mem.take_written() == {0}
    assert mem.take_written() == set()
    mem.write(PAGE, b"b")
    assert mem.take_written() == {1}


def test_stopping_forgets_and_restarting_begins_empty():
    mem = two_regions()
    mem.track_writes(True)
    mem.write(0, b"a")
    mem.track_writes(False)
    mem.write(PAGE, b"b")
    assert mem.take_written() == set() and mem.written is None
    mem.track_writes(True)
    assert mem.take_written() == set()


# --- VmmWrites ----------------------------------------------------------------------------

def test_vmm_writes_keep_every_page_for_the_final_round():
    mem = two_regions()
    vmm = VmmWrites(mem)
    mem.write(0, b"before")  # before start: not the migration's business
    vmm.start()
    mem.write(PAGE, b"a")
    assert vmm.fetch() == {1}
    mem.write(2 * PAGE, b"b")
    mem.write(PAGE, b"c")
    assert vmm.fetch() == {1, 2}
    assert vmm.fetch() == set()
    mem.write(0x100000, b"d")  # not fetched yet: everything() takes it too
    assert vmm.everything() == {1, 2, 0x100}
    assert vmm.fetch() == set()
    vmm.stop()
    assert mem.written is None


# --- DirtyLog over a fake VM -----------------------------------------------------------------

class FakeVm:
    """KVM_SET_USER_MEMORY_REGION and KVM_GET_DIRTY_LOG, recorded."""

    def __init__(self) -> None:
        self.regions: list[tuple[int, int, int, int, int]] = []
        self.bitmaps: dict[int, bytes] = {}
        self.asked: list[tuple[int, int]] = []

    def set_user_memory_region(self, slot: int, gpa: int, size: int, host_addr: int, flags: int = 0) -> None:
        self.regions.append((slot, gpa, size, host_addr, flags))

    def get_dirty_log(self, slot: int, npages: int) -> bytearray:
        self.asked.append((slot, npages))
        bitmap = self.bitmaps.pop(slot, b"")
        return bytearray(bitmap.ljust((npages + 63) // 64 * 8, b"\0"))  # read and cleared, as KVM does


def test_dirty_log_turns_logging_on_and_off_per_slot():
    mem = two_regions()
    vm = FakeVm()
    log = DirtyLog(vm, mem)  # type: ignore[arg-type]
    log.stop()  # not started: nothing to undo
    assert vm.regions == []
    log.start()
    flag = ioctls.KVM_MEM_LOG_DIRTY_PAGES
    hosts = [r.host_address() for r in mem.regions]
    assert vm.regions == [(0, 0, 16 * PAGE, hosts[0], flag), (1, 0x100000, 16 * PAGE, hosts[1], flag)]
    log.stop()
    log.stop()
    assert vm.regions[2:] == [(0, 0, 16 * PAGE, hosts[0], 0), (1, 0x100000, 16 * PAGE, hosts[1], 0)]


def test_dirty_log_fetch_gives_absolute_page_numbers():
    mem = two_regions()
    vm = FakeVm()
    log = DirtyLog(vm, mem)  # type: ignore[arg-type]
    log.start()
    vm.bitmaps = {0: words(0b1001), 1: words(1 << 15)}
    assert log.fetch() == [0, 3, 0x100 + 15]
    assert vm.asked == [(0, 16), (1, 16)]
    assert log.fetch() == []  # KVM cleared the bitmaps


def test_encoded_page_sets_round_trip_and_refuse_bad_input() -> None:
    import base64
    import zlib

    from pyvirt.migration.dirty import decode_pages, encode_pages

    pages = {0, 1, 2, 63, 64, 4095, 70000}
    assert decode_pages(encode_pages(pages), 70001) == sorted(pages)
    assert decode_pages(encode_pages([]), 10) == []
    with pytest.raises(ValueError, match="beyond guest memory"):
        decode_pages(encode_pages({100}), 100)
    with pytest.raises(ValueError):
        decode_pages("not base64!", 100)
    with pytest.raises(ValueError):
        decode_pages(base64.b64encode(b"not zlib").decode(), 100)
    # A bomb: a tiny text that inflates far beyond guest memory is cut off.
    bomb = base64.b64encode(zlib.compress(bytes(1 << 24))).decode()
    with pytest.raises(ValueError, match="longer than guest memory"):
        decode_pages(bomb, 1000)
