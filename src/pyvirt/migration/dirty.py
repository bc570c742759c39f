"""Which guest pages changed since the last look: KVM's dirty log plus the VMM's own writes.

KVM records the pages the guest writes in a bitmap per memory slot once the
slot has KVM_MEM_LOG_DIRTY_PAGES; KVM_GET_DIRTY_LOG returns the bitmap and
clears it. That misses what the VMM writes into guest memory from the host
side (virtio devices filling buffers and used rings): `GuestMemory` records
those while `track_writes` is on. A write is recorded when its view is
handed out, which may be before the bytes land (a block read finishes on a
worker thread later), so a page recorded in an early round may change after
it was sent: `VmmWrites` keeps every page recorded during the migration and
the final round (devices quiesced) sends all of them again.
"""

from __future__ import annotations

from ..kvm import ioctls

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ..kvm import Vm
    from ..memory import GuestMemory

PAGE = 4096


def bitmap_pages(bitmap: bytes | bytearray, first_page: int) -> list[int]:
    """Page numbers of the set bits of a KVM dirty bitmap (bit i of 64-bit
    little-endian word w is page first_page + 64*w + i)."""
    pages: list[int] = []
    words = memoryview(bitmap).cast("Q") if len(bitmap) % 8 == 0 else None
    if words is None:
        raise ValueError(f"a dirty bitmap of {len(bitmap)} bytes is not whole 64-bit words")
    for w, word in enumerate(words):
        if not word:
            continue
        base = first_page + 64 * w
        while word:
            low = word & -word
            pages.append(base + low.bit_length() - 1)
            word ^= low
    return pages


def encode_pages(pages: Iterable[int]) -> str:
    """A set of page numbers as compact text: a bitmap (bit p = page p),
    zlib-compressed and base64-encoded (a post-copy list of 16384 scattered
    pages is 2 KiB this way, not 400 KiB of JSON pairs)."""
    import base64
    import zlib

    pages = sorted(set(pages))
    bitmap = bytearray((pages[-1] // 8 + 8) & ~7 if pages else 0)
    for p in pages:
        bitmap[p >> 3] |= 1 << (p & 7)
    return base64.b64encode(zlib.compress(bytes(bitmap), 1)).decode("ascii")


def decode_pages(text: str, limit: int) -> list[int]:
    """The page numbers of `encode_pages` text; ValueError if it is malformed
    or names a page at or above `limit`."""
    import base64
    import binascii
    import zlib

    try:
        d = zlib.decompressobj()
        bitmap = d.decompress(base64.b64decode(text, validate=True), limit // 8 + 8)
    except (binascii.Error, zlib.error) as e:
        raise ValueError(f"not an encoded page set: {e}") from e
    if d.unconsumed_tail or not d.eof or len(bitmap) % 8:
        raise ValueError("the encoded page set is longer than guest memory, or truncated")
    pages = bitmap_pages(bitmap, 0)
    if pages and pages[-1] >= limit:
        raise ValueError(f"the encoded page set names page {pages[-1]:#x}, beyond guest memory")
    return pages


def page_runs(pages: Iterable[int], max_pages: int = 1 << 30) -> list[tuple[int, int]]:
    """Sorted (gpa, length) runs of consecutive pages, each at most `max_pages` long."""
    runs: list[tuple[int, int]] = []
    start = prev = -2
    for p in sorted(set(pages)):
        if p == prev + 1 and p - start < max_pages:
            prev = p
            continue
        if start >= 0:
            runs.append((start * PAGE, (prev - start + 1) * PAGE))
        start = prev = p
    if start >= 0:
        runs.append((start * PAGE, (prev - start + 1) * PAGE))
    return runs


class DirtyLog:
    """KVM's dirty-page logging over a VM's RAM slots (slot i = region i):
    the per-vCPU dirty rings where the machine has them, else the bitmap."""

    def __init__(self, vm: Vm, mem: GuestMemory, rings: Callable[[], list[int]] | None = None) -> None:
        self.vm = vm
        self.mem = mem
        self.on = False
        # With KVM's dirty rings (Machine.harvest_dirty_rings) there is no bitmap.
        self.rings = rings

    def _set(self, flags: int) -> None:
        for slot, r in enumerate(self.mem.regions):
            self.vm.set_user_memory_region(slot, r.gpa, r.size, r.host_address(), flags)

    def start(self) -> None:
        """Log from now on (the first `fetch` returns the pages written since)."""
        self._set(ioctls.KVM_MEM_LOG_DIRTY_PAGES)
        self.on = True
        if self.rings is not None:
            self.rings()  # drop what a previous migration left in the rings

    def stop(self) -> None:
        if self.on:
            self.on = False
            self._set(0)

    def fetch(self) -> list[int]:
        """Page numbers the guest wrote since `start` or the last fetch."""
        if self.rings is not None:
            return self.rings()
        pages: list[int] = []
        for slot, r in enumerate(self.mem.regions):
            npages = r.size // PAGE
            pages += bitmap_pages(self.vm.get_dirty_log(slot, npages), r.gpa // PAGE)
        return pages


class VmmWrites:
    """The pages the VMM wrote into guest memory during a migration."""

    def __init__(self, mem: GuestMemory) -> None:
        self.mem = mem
        # Every set taken: a device thread may still add to a set just after
        # it was taken (it read GuestMemory.written before the swap), so
        # `everything` unions them again, with the devices quiesced.
        self._taken: list[set[int]] = []
        self.all: set[int] = set()

    def start(self) -> None:
        self.mem.track_writes(True)

    def stop(self) -> None:
        self.mem.track_writes(False)

    def fetch(self) -> set[int]:
        """Pages recorded since the last fetch (they are also kept for `everything`)."""
        new = self.mem.take_written()
        self._taken.append(new)
        self.all |= new
        return new

    def everything(self) -> set[int]:
        """Every page recorded since `start` (for the final round)."""
        self.fetch()
        for taken in self._taken:
            self.all |= taken
        return self.all
