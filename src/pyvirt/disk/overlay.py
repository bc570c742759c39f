"""Overlays: a new qcow2 image on top of an image, which then stops changing.

An external disk snapshot (libvirt's name) freezes an image by putting an
empty qcow2 overlay on top of it, whose backing file is the image: reads of
what the overlay has not written come from the image, writes go to the
overlay. This module creates overlays and hands an image that a VM has
open for writing over to its new overlay:

- `create_overlay` reserves the name with O_EXCL first, so it never
  truncates an existing file (another snapshot's overlay, say), and
  records the backing file's absolute path and format in the header.
- The VM holds an exclusive OFD lock on its image, which an overlay's
  shared lock on its backing file would conflict with, even in the same
  process (OFD locks belong to open file descriptions). `set_lock`
  converts the VM's lock to shared in place, so the image is never
  unlocked while it changes hands, and back to exclusive if the switch is
  undone.
- `quiesce` writes everything back and leaves a qcow2 image as a clean
  close would (no lazy-refcount dirty bit), so closing the old backend
  later does not touch the frozen image.
"""

from __future__ import annotations

import errno
import fcntl
import os

from .errors import DiskError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Iterator

    from .backend import BlockBackend

MAX_NAME_TRIES = 1000


def format_of(backend: BlockBackend) -> str:
    """"qcow2" or "raw": the format of an open backend (not probed from its bytes)."""
    from .qcow2.image import Qcow2Image

    return "qcow2" if isinstance(backend, Qcow2Image) else "raw"


def stem(path: str) -> str:
    """The file name without its directory and last extension: vm.raw -> vm."""
    base = os.path.basename(path)
    root, _ = os.path.splitext(base)
    return root or base


def candidates(directory: str, name: str, numbered: bool = False) -> Iterator[str]:
    """DIR/NAME.qcow2, DIR/NAME-2.qcow2, DIR/NAME-3.qcow2, ...; or, `numbered`,
    DIR/NAME1.qcow2, DIR/NAME2.qcow2, ..."""
    for n in range(0 if numbered else 1, MAX_NAME_TRIES):
        number = str(n + 1) if numbered else "" if n == 1 else f"-{n}"
        yield os.path.join(directory, f"{name}{number}.qcow2")


def reserve(names: Iterator[str]) -> str:
    """Create the first of `names` that does not exist (O_EXCL: never an
    existing file, even one another process makes meanwhile); its path."""
    last = ""
    for path in names:
        last = path
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            continue
        except OSError as e:
            directory = os.path.dirname(path) or "."
            hint = f" (make {directory} writable)" if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else ""
            raise DiskError(f"cannot create the overlay {path}: {e.strerror}{hint}") from e
        os.close(fd)
        return path
    raise DiskError(f"cannot create an overlay: {last} and the {MAX_NAME_TRIES} names before it exist")


def create_overlay(path: str, backing: str, backing_format: str, size: int) -> None:
    """Make the reserved (empty) file `path` a qcow2 image of `size` bytes
    over `backing` (absolute path, with its format); removes `path` if that
    fails. Does not open the backing file (it may be locked by its user)."""
    from .qcow2 import create

    try:
        create(path, size, backing_file=os.path.abspath(backing), backing_format=backing_format)
    except BaseException:
        remove(path)
        raise


def remove(path: str) -> None:
    """Delete an overlay pyvirt made and nobody uses; a missing file is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        from .._log import get_logger

        get_logger(__name__).warning("cannot remove the unused overlay %s: %s", path, e.strerror)


def _lock_fd(backend: BlockBackend) -> int:
    """The file descriptor that holds `backend`'s image lock (-1: none)."""
    from .qcow2.image import Qcow2Image
    from .raw import RawBackend

    if isinstance(backend, Qcow2Image):
        raw = backend._raw
        return raw.fd if raw is not None else -1
    if isinstance(backend, RawBackend):
        return backend.fd
    return -1


def set_lock(backend: BlockBackend, exclusive: bool) -> None:
    """Convert the OFD lock `backend` holds on its image to exclusive or
    shared, atomically. DiskError if another process's lock is in the way
    (only possible when going back to exclusive)."""
    from .raw import _FLOCK, F_OFD_SETLK

    fd = _lock_fd(backend)
    if fd < 0:
        return
    kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    try:
        fcntl.fcntl(fd, F_OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, 0, 0, 0))
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            return  # a file system without locks: RawBackend already said so
        mode = "exclusive" if exclusive else "shared"
        raise DiskError(f"{backend.path}: cannot make the image's lock {mode}: {e.strerror} "
                        "(another process opened it meanwhile?)") from e


def quiesce(backend: BlockBackend) -> None:
    """Write back everything `backend` holds and make it durable, leaving the
    image as a clean close would: closing it later writes nothing."""
    if backend.readonly:
        return
    from .qcow2.image import Qcow2Image

    if isinstance(backend, Qcow2Image):
        with backend._lock:
            backend._c.close()  # write-back, then clear the dirty bit of lazy refcounts; still usable
    else:
        backend.flush()
