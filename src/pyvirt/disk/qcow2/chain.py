"""Backing chains: opening an image's backing file, and changing the name
in the header (`qemu-img rebase -u`).

A relative backing name is relative to the directory of the image that
names it. Backing files are opened read-only (shared OFD locks); the
format comes from the backing-format header extension, else from probing.
Every image in the chain is identified by (device, inode), so a loop
(a file that is its own backing, A -> B -> A) is an error before anything
is opened twice, as is a chain deeper than MAX_CHAIN_DEPTH.
"""

from __future__ import annotations

import os

from ..backend import BlockBackend
from ..detect import detect_format
from ..raw import RawBackend
from .errors import Qcow2Error
from .header import EXT_BACKING_FORMAT, MAX_BACKING_NAME

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .image import Qcow2Image

MAX_CHAIN_DEPTH = 64
BACKING_FORMATS = ("raw", "qcow2")


def backing_path(image_path: str, name: str) -> str:
    """Where the backing file `name`, named by the image at `image_path`, is.
    (qemu-img info calls this the full-backing-filename.)"""
    if os.path.isabs(name):
        return name
    return os.path.join(os.path.dirname(image_path), name)


def open_backing(img: Qcow2Image, seen: frozenset[tuple[int, int]], lock: bool) -> BlockBackend:
    assert img.backing_file is not None
    return open_chain(img.path, img.backing_file, img.backing_format, seen, lock)


def open_chain(image_path: str, name: str, fmt: str | None, seen: frozenset[tuple[int, int]],
               lock: bool) -> BlockBackend:
    """Open backing file `name` of the image at `image_path` (whose chain so far is `seen`)."""
    path = backing_path(image_path, name)
    if fmt is not None and fmt not in BACKING_FORMATS:
        raise Qcow2Error(f"{image_path}: backing file {name!r} has format {fmt!r}; pyvirt supports "
                         f"{' and '.join(BACKING_FORMATS)} backing files")
    try:
        st = os.stat(path)
    except OSError as e:
        raise Qcow2Error(f"{image_path}: cannot open its backing file {path!r}: {e.strerror}") from e
    key = (st.st_dev, st.st_ino)
    if key in seen:
        raise Qcow2Error(f"{image_path}: the backing chain loops: backing file {path!r} is already in the chain")
    if len(seen) >= MAX_CHAIN_DEPTH:
        raise Qcow2Error(f"{image_path}: the backing chain is deeper than {MAX_CHAIN_DEPTH} images")
    if fmt is None:
        fmt = detect_format(path)
    if fmt == "qcow2":
        from .image import Qcow2Image

        return Qcow2Image(path, True, lock=lock, _seen=seen)
    return RawBackend(path, True, lock=lock)


def set_backing(img: Qcow2Image, backing_file: str | None, backing_format: str | None) -> None:
    """Point the header at another backing file (or none); the data is not
    touched, so the caller vouches that the new backing has the same contents
    (rebase -u). When the new backing file exists its chain is opened first
    (a loop or a broken chain is refused before the header changes); a
    missing one is allowed, and reads as zeros until it appears and the
    image is reopened."""
    core = img._c
    if img.readonly:
        raise Qcow2Error(f"{img.path}: cannot change the backing file of a read-only image")
    if backing_file is not None and (not backing_file or len(os.fsencode(backing_file)) > MAX_BACKING_NAME
                                     or "\0" in backing_file):
        raise Qcow2Error(f"{img.path}: backing file name {backing_file!r} must be 1..{MAX_BACKING_NAME} bytes")
    if backing_format is not None and backing_format not in BACKING_FORMATS:
        raise Qcow2Error(f"{img.path}: unsupported backing format {backing_format!r}")
    if backing_file is None:
        backing_format = None
    new_backing = None
    if backing_file is not None and os.path.exists(backing_path(img.path, backing_file)):
        new_backing = open_chain(img.path, backing_file, backing_format, img._seen, img._use_locks)
    try:
        core.flush()
        fmt_data = backing_format.encode() if backing_format is not None else None
        exts = core.header.with_extension(EXT_BACKING_FORMAT, fmt_data).extensions
        core.update_header(backing_file=backing_file, extensions=exts)
    except BaseException:
        if new_backing is not None:
            new_backing.close()
        raise
    old_backing, img.backing = img.backing, new_backing
    if old_backing is not None:
        old_backing.close()
