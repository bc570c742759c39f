"""Telling the network a guest's MAC address moved: RARP announcements.

After a live migration the guest's NIC sits behind another switch port (or
bridge, or host). Until the guest itself sends a frame, switches keep
forwarding its traffic to the old port. The destination therefore sends a
few broadcast RARP requests with the guest's MAC as the sender (as
hypervisors conventionally do): every learning switch on the way updates
its table, so established connections carry on.
"""

from __future__ import annotations

import struct
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

ETH_P_RARP = 0x8035
RARP_REQUEST_REVERSE = 3
BROADCAST = b"\xff" * 6
FRAME_LEN = 60  # the Ethernet minimum without the FCS
# Delays between the announcements: several, spaced out, in case the first
# are lost while the links come up.
SCHEDULE = (0.0, 0.05, 0.15, 0.25, 0.35)


def rarp_frame(mac: bytes) -> bytes:
    """A broadcast RARP "request reverse" frame from `mac` (RFC 903)."""
    if len(mac) != 6:
        raise ValueError(f"a MAC address is 6 bytes, got {len(mac)}")
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, RARP_REQUEST_REVERSE, mac, bytes(4), mac, bytes(4))
    frame = BROADCAST + mac + struct.pack("!H", ETH_P_RARP) + arp
    return frame.ljust(FRAME_LEN, b"\0")


def announce(nics: Sequence[tuple[Callable[[bytes], None], bytes]], schedule: Sequence[float] = SCHEDULE,
             sleep: Callable[[float], None] = time.sleep) -> int:
    """Send each NIC's RARP frame through its `send` (nics: (send, mac)) on
    the schedule; returns the frames sent. A failed send (a link still down)
    is skipped: a later one may get through."""
    sent = 0
    frames = [(send, rarp_frame(mac)) for send, mac in nics]
    last = 0.0
    for at in schedule:
        if at > last:
            sleep(at - last)
            last = at
        for send, frame in frames:
            try:
                send(frame)
                sent += 1
            except OSError:
                pass
    return sent


def announce_in_background(nics: Sequence[tuple[Callable[[bytes], None], bytes]]) -> threading.Thread:
    t = threading.Thread(target=announce, args=(list(nics),), name="announce", daemon=True)
    t.start()
    return t
