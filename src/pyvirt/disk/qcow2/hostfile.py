"""The image file under a qcow2 image: positioned reads and writes that
never go outside the file by accident.

Metadata reads (`read`) must lie wholly inside the file, or they raise
Qcow2Error naming the structure: a hostile image cannot make us read past
its end or allocate memory for a table it does not contain. Data reads
(`readv`) zero-fill anything past the end of the file, which is what a
cluster allocated but never fully written reads as. `size` follows the
writes, so it is always the file's length.
"""

from __future__ import annotations

import os

from ..backend import advance
from ..errors import DiskError
from .errors import Qcow2Error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

IOV_MAX = 1024
ZEROS = memoryview(bytes(1 << 21))  # one cluster of the largest size


def fill_zero(views: Sequence[memoryview]) -> None:
    for v in views:
        pos, n = 0, len(v)
        while pos < n:
            k = min(n - pos, len(ZEROS))
            v[pos:pos + k] = ZEROS[:k]
            pos += k


class HostFile:
    """Positioned I/O on the image file `fd` (owned by the caller)."""

    def __init__(self, path: str, fd: int, size: int, readonly: bool) -> None:
        self.path = path
        self.fd = fd
        self.size = size
        self.readonly = readonly

    def read(self, offset: int, length: int, what: str) -> bytes:
        """Exactly `length` bytes of metadata `what` at `offset`."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise Qcow2Error(f"{self.path}: {what} at {offset:#x} (+{length:#x}) lies outside the file "
                             f"({self.size:#x} bytes)")
        out = bytearray(length)
        view = memoryview(out)
        done = 0
        try:
            while done < length:
                n = os.preadv(self.fd, [view[done:]], offset + done)
                if n <= 0:
                    raise Qcow2Error(f"{self.path}: {what} at {offset:#x}: unexpected end of file "
                                     "(was the image truncated?)")
                done += n
        except OSError as e:
            raise DiskError(f"{self.path}: reading {what} at {offset:#x} failed: {e.strerror}") from e
        return bytes(out)

    def readv(self, offset: int, views: list[memoryview]) -> None:
        """Fill `views` from `offset`; bytes past the end of the file read as zeros."""
        todo = views
        pos = offset
        try:
            while todo:
                n = os.preadv(self.fd, todo[:IOV_MAX], pos)
                if n <= 0:
                    fill_zero(todo)
                    return
                pos += n
                todo = advance(todo, n)
        except OSError as e:
            raise DiskError(f"{self.path}: read at {pos:#x} failed: {e.strerror}") from e

    def writev(self, offset: int, views: list[memoryview]) -> None:
        todo = [v for v in views if len(v)]
        pos = offset
        try:
            while todo:
                n = os.pwritev(self.fd, todo[:IOV_MAX], pos)
                if n <= 0:
                    raise DiskError(f"{self.path}: write at {pos:#x} made no progress")
                pos += n
                todo = advance(todo, n)
        except OSError as e:
            raise DiskError(f"{self.path}: write at {pos:#x} failed: {e.strerror}") from e
        if pos > self.size:
            self.size = pos

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.writev(offset, [memoryview(data)])

    def sync(self) -> None:
        try:
            os.fdatasync(self.fd)
        except OSError as e:
            raise DiskError(f"{self.path}: flush failed: {e.strerror}") from e

    def truncate(self, size: int) -> None:
        try:
            os.ftruncate(self.fd, size)
        except OSError as e:
            raise DiskError(f"{self.path}: resizing the file to {size:#x} failed: {e.strerror}") from e
        self.size = size


class Cursor:
    """Hands out consecutive slices of a list of views."""

    __slots__ = ("views", "i", "off")

    def __init__(self, views: Sequence[memoryview]) -> None:
        self.views = views
        self.i = 0
        self.off = 0

    def take(self, n: int) -> list[memoryview]:
        out = []
        views, i, off = self.views, self.i, self.off
        while n > 0:
            v = views[i]
            avail = len(v) - off
            if n < avail:
                out.append(v[off:off + n])
                off += n
                break
            out.append(v[off:] if off else v)
            n -= avail
            i += 1
            off = 0
        self.i, self.off = i, off
        return out


class ZeroCursor(Cursor):
    """Hands out zeros, as many as asked for."""

    def __init__(self) -> None:
        super().__init__([])

    def take(self, n: int) -> list[memoryview]:
        return [ZEROS[:min(n - k, len(ZEROS))] for k in range(0, n, len(ZEROS))]


def fill_from(views: list[memoryview], data: memoryview) -> None:
    pos = 0
    for v in views:
        v[:] = data[pos:pos + len(v)]
        pos += len(v)
