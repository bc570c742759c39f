"""Changing the virtual size (`qemu-img resize`).

Growing may move the L1 table to a bigger one (written and synced before
the header points to it). Newly visible bytes read as zeros: the unused
tail of the old last cluster and any part of a longer backing file are
zeroed, as qemu does, so stale data never reappears. Shrinking is allowed
only when no cluster past the new end holds data (zero flags there are
dropped) and the image has no internal snapshots.
"""

from __future__ import annotations

from .errors import Qcow2Error
from .modify import set_entries
from .header import MAX_VIRTUAL_SIZE, l1_entries_needed
from .tables import OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_ZERO

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .image import Qcow2Image


def resize(img: Qcow2Image, new_size: int) -> None:
    core = img._c
    if img.readonly:
        raise Qcow2Error(f"{img.path}: cannot resize an image opened read-only")
    if new_size < 0 or new_size % 512 or new_size > MAX_VIRTUAL_SIZE:
        raise Qcow2Error(f"{img.path}: the new size {new_size} must be a non-negative multiple of 512")
    old = img.size
    if new_size == old:
        return
    cs = core.cs
    if new_size > old:
        core.grow_l1(l1_entries_needed(new_size, core.cb))
        core.flush()
        core.update_header(size=new_size)
        img.size = new_size
        zero_to = old
        if old % cs and any(e.kind in ("data", "compressed") for e in img.allocation(old - 1, 1)):
            zero_to = min(new_size, old + cs - old % cs)
        if img.backing is not None:
            zero_to = max(zero_to, min(new_size, img.backing.size))
        if zero_to > old:
            img.write_zeroes(old, zero_to - old, True)
        core.flush()
        return
    if core.snapshots:
        raise Qcow2Error(f"{img.path}: cannot shrink an image that has internal snapshots")
    first = -(-new_size // cs) * cs
    for ext in img.allocation(first, old - first):
        if ext.kind in ("data", "compressed") or (ext.kind == "zero" and _has_host(img, ext.start, ext.length)):
            raise Qcow2Error(f"{img.path}: cannot shrink to {new_size}: data is allocated at {ext.start:#x} "
                             f"(+{ext.length:#x}) past the new end; discard it first")
    if first < old:
        set_entries(img, first, old, lambda e: 0 if e == OFLAG_ZERO else None)
    core.flush()
    core.update_header(size=new_size)
    img.size = new_size


def _has_host(img: Qcow2Image, start: int, length: int) -> bool:
    """Whether a zero extent keeps preallocated host clusters."""
    core = img._c
    for g in range(start >> core.cb, -(-(start + length) >> core.cb)):
        t = core.l2_read(g >> core.l2_bits)
        if t is not None:
            e = t.entries[g & core.l2_mask]
            if e & OFFSET_MASK and not e & OFLAG_COMPRESSED:
                return True
    return False
