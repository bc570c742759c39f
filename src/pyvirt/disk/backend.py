"""The block backend interface every disk image format implements.

A disk device (virtio-blk) sees a disk as a byte-addressed array of `size`
bytes and moves data between it and guest memory views, never through a
copy: `read_into` fills the views, `write_from` drains them. Raw files and
block devices (`raw.py`) map this onto preadv/pwritev; image formats such
as qcow2 translate offsets first and plug in through the same class.

Offsets and lengths are in bytes. Devices address the disk in 512-byte
sectors (`SECTOR_SIZE`), whatever the host's logical block size
(`block_size`, what the guest is told to use as its block size).

Every method checks its range against `size`, so a device's own bounds check
is not the only thing that keeps a guest inside its disk.
"""

from __future__ import annotations

import abc

from .errors import DiskError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

SECTOR_SIZE = 512
SERIAL_LEN = 20  # virtio-blk GET_ID returns at most 20 bytes


def advance(views: list[memoryview], n: int) -> list[memoryview]:
    """What is left of `views` after the first `n` bytes were transferred (a
    short preadv/pwritev resumes from there)."""
    i = 0
    while i < len(views) and n >= len(views[i]):
        n -= len(views[i])
        i += 1
    rest = views[i:]
    if rest and n:
        rest[0] = rest[0][n:]
    return rest


class BlockBackend(abc.ABC):
    """A disk image open for I/O.

    Attributes every backend sets in its constructor:
      path        what the user named, for messages
      size        bytes the guest can address
      readonly    writes, discards and zeroing raise DiskError
      id          the serial the guest sees (ASCII, at most 20 bytes)
      block_size  logical block size of the storage (512 for files)
      discard_supported  discard may really deallocate (advertise it)
    """

    sector_size: int = SECTOR_SIZE
    path: str
    size: int
    readonly: bool
    id: str
    block_size: int = SECTOR_SIZE
    discard_supported: bool = False

    @abc.abstractmethod
    def read_into(self, offset: int, views: Sequence[memoryview]) -> int:
        """Fill `views`, in order, with the disk's bytes from `offset`.
        Returns the bytes read (the views' total length); raises DiskError."""

    @abc.abstractmethod
    def write_from(self, offset: int, views: Sequence[memoryview]) -> int:
        """Write `views`, in order, to the disk from `offset`.
        Returns the bytes written (the views' total length); raises DiskError."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Make every completed write durable (the guest's cache flush)."""

    @abc.abstractmethod
    def discard(self, offset: int, length: int) -> None:
        """A hint that [offset, offset+length) is unused: the backend may
        deallocate it, after which it may read as anything (zeros for raw)."""

    @abc.abstractmethod
    def write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        """Make [offset, offset+length) read as zeros; with `may_unmap` the
        backend may deallocate the range instead of writing it."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the image (and its lock). Safe to call twice."""

    # --- helpers for implementations ----------------------------------------
    def check_range(self, offset: int, length: int, write: bool = False) -> None:
        """Raise DiskError unless [offset, offset+length) lies inside the disk
        (and, for `write`, the disk is writable)."""
        if write and self.readonly:
            raise DiskError(f"{self.path}: the disk is read-only")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise DiskError(f"{self.path}: access {offset:#x}+{length:#x} is outside the disk ({self.size:#x} bytes)")

    def __enter__(self) -> BlockBackend:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "ro" if getattr(self, "readonly", False) else "rw"
        return f"<{type(self).__name__} {getattr(self, 'path', '?')!r} {getattr(self, 'size', '?')} bytes {mode}>"
