"""qcow2 images (versions 2 and 3), in pure Python, as block backends.

Modules: `header.py`, `tables.py`, `snapshot.py` and `compress.py` parse
and lay out bytes (pure code, fuzzed by the tests); `hostfile.py` does the
file I/O; `refcount.py` counts and allocates clusters; `core.py` holds an
open image's metadata and the crash-safe order of its writes; `image.py`
is `Qcow2Image`, the `BlockBackend` (guest reads and writes); `modify.py`
discard, zeroing and compressed clusters; `chain.py` backing files;
`snapshot_ops.py`, `check.py`, `resize.py`, `status.py` and `create.py`
the operations `pyvirt image` offers.

API beyond the brief: `Qcow2Image.map_entries()` (qemu-img map's JSON
entries, with "present"), `CheckResult.exit_code` and `.qemu_json()`,
`create(size=None)` (the backing file's size), and the private
`Qcow2Image(_seen=...)` the chain uses to detect loops.
"""

from __future__ import annotations

from ..backend import BlockBackend
from ..detect import FORMATS, detect_format
from ..errors import DiskError
from .check import CheckResult
from .create import create
from .errors import Qcow2Error
from .header import Qcow2Header
from .image import Qcow2Image
from .snapshot import SnapshotInfo
from .tables import Extent

__all__ = ["CheckResult", "Extent", "Qcow2Error", "Qcow2Header", "Qcow2Image", "SnapshotInfo", "create",
           "open_image"]


def open_image(path: str, readonly: bool = False, format: str | None = None, *, serial: str | None = None,
               lock: bool = True) -> BlockBackend:
    """Open a raw or qcow2 image (format detected from its first bytes
    unless given). Raises DiskError (Qcow2Error for qcow2 problems)."""
    if format is not None and format not in FORMATS:
        raise DiskError(f"{path}: unknown disk format {format!r} (known: {', '.join(FORMATS)})")
    fmt = format or detect_format(path)
    if fmt == "qcow2":
        return Qcow2Image(path, readonly, serial=serial, lock=lock)
    from ..raw import RawBackend

    return RawBackend(path, readonly, serial=serial, lock=lock)
