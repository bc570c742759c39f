"""Format detection and the `open_disk` factory.

The format is detected from the image's first bytes, never from its name.
Probing has a known hazard: a guest can write any bytes into a raw image,
including another format's magic, and on the next start the image would be
opened as that format (whose header may name host files as backing images).
So callers that know the format, the VM config above all, pass it, and
probing is a convenience for images the user just made.
"""

from __future__ import annotations

import os

from .errors import DiskError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from .backend import BlockBackend

QCOW2_MAGIC = b"QFI\xfb"
FORMATS = ("raw", "qcow2")


def detect_format(path: str) -> str:
    """"qcow2" or "raw", from the image's first bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise DiskError(f"{path}: cannot open disk image: {e.strerror}") from e
    try:
        head = os.pread(fd, 4, 0)
    except OSError as e:
        raise DiskError(f"{path}: cannot read disk image: {e.strerror}") from e
    finally:
        os.close(fd)
    return "qcow2" if head == QCOW2_MAGIC else "raw"


def open_disk(path: str, readonly: bool = False, format: str | None = None, *,
              serial: str | None = None, lock: bool = True) -> BlockBackend:
    """Open a disk image as a `BlockBackend`, detecting its format unless
    `format` ("raw" or "qcow2") is given; `lock=False` takes no OFD lock
    (to read the geometry of an image another process has open). Raises
    DiskError."""
    if format is not None and format not in FORMATS:
        raise DiskError(f"{path}: unknown disk format {format!r} (known: {', '.join(FORMATS)})")
    fmt = format or detect_format(path)
    if fmt == "qcow2":
        from .qcow2 import Qcow2Image

        return Qcow2Image(path, readonly, serial=serial, lock=lock)
    from .raw import RawBackend

    return RawBackend(path, readonly, serial=serial, lock=lock)
