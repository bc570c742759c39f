"""Whether a qcow2 image still holds exactly an internal snapshot's contents.

After a snapshot is taken (or applied), the active L1 table and the
snapshot's point to the same L2 tables, whose refcount is then above one.
Any change to the guest-visible contents (a write, a discard, zeroing)
either fills an L1 entry that was empty or copies a shared L2 table before
changing it, so it moves an L1 entry. So the active state is the
snapshot's exactly when the two L1 tables name the same L2 tables (flags
aside) and the size is the same. A VM restored from a pyvirt snapshot that
recorded an internal snapshot uses this to tell "untouched since" (safe to
run on) from "changed since" (needs a revert).
"""

from __future__ import annotations

from .snapshot_ops import find_snapshot
from .tables import OFFSET_MASK

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .image import Qcow2Image


def at_snapshot(img: Qcow2Image, name_or_id: str) -> bool:
    """True if the active state of `img` is the snapshot's, unchanged.
    Qcow2Error if there is no such snapshot or its L1 table is unreadable."""
    core = img._c
    sn = find_snapshot(img, name_or_id)
    if sn.disk_size is not None and sn.disk_size != img.size:
        return False
    snap_l1 = core.read_l1(sn.l1_table_offset, sn.l1_size, f"the L1 table of snapshot {sn.id}")
    active = [e & OFFSET_MASK for e in core.l1]
    saved = [e & OFFSET_MASK for e in snap_l1]
    n = max(len(active), len(saved))  # a table may have grown: the extra entries must be empty
    return active + [0] * (n - len(active)) == saved + [0] * (n - len(saved))
