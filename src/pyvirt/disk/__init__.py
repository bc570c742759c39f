"""Disk images and the block backends virtio-blk reads and writes through.

`open_disk(path)` detects the image format and returns a `BlockBackend`
(`backend.py`); `RawBackend` (`raw.py`) serves raw files and block devices.
`ratelimit.py` holds the token buckets that throttle a disk's I/O.
"""

from .backend import SECTOR_SIZE, BlockBackend
from .detect import detect_format, open_disk
from .errors import DiskError

__all__ = ["SECTOR_SIZE", "BlockBackend", "DiskError", "detect_format", "open_disk"]
