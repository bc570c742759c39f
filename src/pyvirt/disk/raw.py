"""Raw disk images: a regular file or a host block device, byte for byte.

Guest data moves with `os.preadv`/`os.pwritev` straight between the file and
guest-memory views. `flush` is fdatasync. Discard punches holes
(fallocate PUNCH_HOLE|KEEP_SIZE, which on a block device also discards);
write-zeroes punches when allowed to unmap, else uses FALLOC_FL_ZERO_RANGE,
else writes zeros from a small shared buffer, so no request allocates
memory in proportion to its length.

Locking: the whole image is locked with an open-file-description (OFD)
lock, exclusive for a writer and shared for readers, so a second VM (or a
QEMU, which also uses OFD locks) cannot write a disk that is in use, and
nobody writes a disk that running VMs read. A writable block device is also
opened with O_EXCL, which Linux refuses while the device is mounted.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct

from .backend import SERIAL_LEN, BlockBackend, advance
from .errors import DiskError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

# fallocate(2) modes, from <linux/falloc.h>
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

# block-device ioctls, from <linux/fs.h>
BLKSSZGET = 0x1268  # logical sector size, int
BLKGETSIZE64 = 0x80081272  # size in bytes, u64

# fcntl OFD locks (Linux 3.15); Python has names for them since 3.9
F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
# struct flock { short l_type; short l_whence; off_t l_start; off_t l_len; pid_t l_pid; }
# with native alignment, padded to sizeof(struct flock) = 32 on 64-bit Linux.
_FLOCK = struct.Struct("@hhqqi4x")

IOV_MAX = 1024  # the kernel's UIO_MAXIOV: a longer vector fails with EINVAL
ZERO_CHUNK = 64 << 10
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS, errno.ENOTTY, errno.ENODEV, errno.EINVAL)

_fallocate: Callable[[int, int, int, int], int] | None = None
_zeros: memoryview | None = None


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with a mode, which `os.posix_fallocate` cannot pass."""
    global _fallocate
    if _fallocate is None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.fallocate
        func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        func.restype = ctypes.c_int

        def call(fd: int, mode: int, offset: int, length: int) -> int:
            while func(fd, mode, offset, length) != 0:
                err = ctypes.get_errno()
                if err != errno.EINTR:
                    return err
            return 0

        _fallocate = call
    err = _fallocate(fd, mode, offset, length)
    if err:
        raise OSError(err, os.strerror(err))


def _zero_views(length: int) -> list[memoryview]:
    """Views of one shared zero buffer adding up to `length` bytes."""
    global _zeros
    if _zeros is None:
        _zeros = memoryview(bytes(ZERO_CHUNK))
    full, rest = divmod(length, ZERO_CHUNK)
    views = [_zeros] * full
    if rest:
        views.append(_zeros[:rest])
    return views


def validate_serial(path: str, serial: str) -> str:
    try:
        raw = serial.encode("ascii")
    except UnicodeEncodeError:
        raise DiskError(f"{path}: disk serial {serial!r} must be ASCII") from None
    if len(raw) > SERIAL_LEN or not all(0x20 <= b < 0x7F for b in raw):
        raise DiskError(f"{path}: disk serial {serial!r} must be at most {SERIAL_LEN} printable characters")
    return serial


class RawBackend(BlockBackend):
    """A raw image: a regular file or a block device Linux can open.

    `serial` is the id the guest sees (default: derived from the file's
    device and inode numbers, so it is stable across runs). `lock=False`
    skips the OFD lock, for callers that lock another way.
    """

    def __init__(self, path: str, readonly: bool = False, *, serial: str | None = None, lock: bool = True) -> None:
        self.path = path
        self.readonly = readonly
        self.fd = -1
        if serial is not None:
            validate_serial(path, serial)
        try:
            st = os.stat(path)
        except OSError as e:
            raise DiskError(f"{path}: cannot open disk image: {e.strerror}") from e
        self.is_block_device = stat.S_ISBLK(st.st_mode)
        if not (self.is_block_device or stat.S_ISREG(st.st_mode)):
            raise DiskError(f"{path}: not a regular file or block device")
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
        if self.is_block_device and not readonly:
            flags |= os.O_EXCL  # Linux: EBUSY while the device is mounted or held exclusively
        try:
            self.fd = os.open(path, flags)
        except OSError as e:
            raise DiskError(self._open_error(e)) from e
        try:
            if lock:
                self._lock()
            self.size, self.block_size = self._geometry()
        except BaseException:
            self.close()
            raise
        ident = st.st_rdev if self.is_block_device else st.st_dev
        self.id = serial if serial is not None else f"{ident:x}-{st.st_ino:x}"[:SERIAL_LEN]
        self.discard_supported = not readonly
        self._can_punch = self._can_zero_range = not readonly

    def _open_error(self, e: OSError) -> str:
        why = f"cannot open disk image: {e.strerror}"
        if e.errno == errno.EBUSY:
            why = "the block device is in use (mounted, or opened exclusively by another program)"
        elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and not self.readonly:
            why += " (attach it read-only to use it without writing)"
        return f"{self.path}: {why}"

    def _lock(self) -> None:
        kind = fcntl.F_RDLCK if self.readonly else fcntl.F_WRLCK
        try:
            fcntl.fcntl(self.fd, F_OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, 0, 0, 0))
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                holder = "another process holds a lock on it"
                pid = self._lock_holder(kind)
                if pid > 0:
                    holder = f"process {pid} holds a lock on it"
                use = "write" if not self.readonly else "read"
                raise DiskError(f"{self.path}: cannot {use} the disk image: {holder} "
                                "(is another VM using this disk?)") from e
            if e.errno in (errno.ENOLCK, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                from .._log import get_logger

                get_logger(__name__).warning("%s: the file system does not support locks; using the disk unlocked",
                                             self.path)
                return
            raise DiskError(f"{self.path}: cannot lock the disk image: {e.strerror}") from e

    def _lock_holder(self, kind: int) -> int:
        """The pid of a classic POSIX lock's holder; 0 or -1 when unknown (OFD locks have no pid)."""
        try:
            out = fcntl.fcntl(self.fd, F_OFD_GETLK, _FLOCK.pack(kind, os.SEEK_SET, 0, 0, 0))
        except OSError:
            return 0
        return int(_FLOCK.unpack(out)[4])

    def _geometry(self) -> tuple[int, int]:
        if not self.is_block_device:
            return os.lseek(self.fd, 0, os.SEEK_END), 512
        try:
            size = struct.unpack("Q", fcntl.ioctl(self.fd, BLKGETSIZE64, bytes(8)))[0]
        except OSError:
            size = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            block = struct.unpack("i", fcntl.ioctl(self.fd, BLKSSZGET, bytes(4)))[0]
        except OSError:
            block = 512
        if block < 512 or block & (block - 1):
            block = 512
        return size, block

    # --- I/O ------------------------------------------------------------------
    def read_into(self, offset: int, views: Sequence[memoryview]) -> int:
        todo = [v for v in views if len(v)]
        total = sum(len(v) for v in todo)
        self.check_range(offset, total)
        done = 0
        try:
            while todo:
                n = os.preadv(self.fd, todo[:IOV_MAX], offset + done)
                if n <= 0:
                    # The file shrank under us (someone truncated it).
                    raise DiskError(f"{self.path}: end of file at {offset + done:#x}, inside the disk "
                                    f"({self.size:#x} bytes): was the image truncated?")
                done += n
                todo = advance(todo, n)
        except OSError as e:
            raise DiskError(f"{self.path}: read at {offset + done:#x} failed: {e.strerror}") from e
        return done

    def write_from(self, offset: int, views: Sequence[memoryview]) -> int:
        todo = [v for v in views if len(v)]
        total = sum(len(v) for v in todo)
        self.check_range(offset, total, write=True)
        return self._pwrite_all(offset, todo)

    def _pwrite_all(self, offset: int, todo: list[memoryview]) -> int:
        done = 0
        try:
            while todo:
                n = os.pwritev(self.fd, todo[:IOV_MAX], offset + done)
                if n <= 0:
                    raise DiskError(f"{self.path}: write at {offset + done:#x} made no progress")
                done += n
                todo = advance(todo, n)
        except OSError as e:
            raise DiskError(f"{self.path}: write at {offset + done:#x} failed: {e.strerror}") from e
        return done

    def flush(self) -> None:
        if self.readonly:
            return
        try:
            os.fdatasync(self.fd)
        except OSError as e:
            raise DiskError(f"{self.path}: flush failed: {e.strerror}") from e

    def discard(self, offset: int, length: int) -> None:
        self.check_range(offset, length, write=True)
        if length and self._can_punch:
            self._punch(offset, length)

    def _punch(self, offset: int, length: int) -> bool:
        """Deallocate the range; False (and never again) where unsupported."""
        try:
            fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
            return True
        except OSError as e:
            if e.errno in _UNSUPPORTED:
                self._can_punch = False
                self.discard_supported = False
                return False
            raise DiskError(f"{self.path}: discard at {offset:#x}+{length:#x} failed: {e.strerror}") from e

    def write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        self.check_range(offset, length, write=True)
        if not length:
            return
        if may_unmap and self._can_punch and self._punch(offset, length):
            return
        if self._can_zero_range:
            try:
                fallocate(self.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length)
                return
            except OSError as e:
                if e.errno not in _UNSUPPORTED:
                    raise DiskError(f"{self.path}: zeroing {offset:#x}+{length:#x} failed: {e.strerror}") from e
                self._can_zero_range = False  # e.g. tmpfs: fall back to writing
        # Write at most IOV_MAX * 64 KiB per pwritev, from one shared buffer.
        step = IOV_MAX * ZERO_CHUNK
        for start in range(offset, offset + length, step):
            self._pwrite_all(start, _zero_views(min(step, offset + length - start)))

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)  # drops the OFD lock with the last reference to the description
