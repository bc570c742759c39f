"""RARP announcements after a migration (net/announce.py): the frame's
bytes, and the schedule with a fake send and a fake sleep."""

from __future__ import annotations

import struct
import threading

import pytest

from pyvirt.net.announce import FRAME_LEN, SCHEDULE, announce, announce_in_background, rarp_frame

MAC = bytes.fromhex("52540012ab34")


def test_rarp_frame_layout():
    f = rarp_frame(MAC)
    assert len(f) == FRAME_LEN == 60
    assert f[0:6] == b"\xff" * 6  # broadcast: every switch on the way learns
    assert f[6:12] == MAC  # the source address is what the switches learn
    assert struct.unpack("!H", f[12:14])[0] == 0x8035  # ETH_P_RARP
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", f[14:22])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 3)  # Ethernet, IPv4, "request reverse"
    sha, spa, tha, tpa = f[22:28], f[28:32], f[32:38], f[38:42]
    assert sha == tha == MAC and spa == tpa == bytes(4)
    assert f[42:] == bytes(18)  # padded to the Ethernet minimum


def test_frames_differ_only_in_the_mac():
    other = bytes(b ^ 0xFF for b in MAC)  # every byte differs
    a, b = rarp_frame(MAC), rarp_frame(other)
    assert [i for i in range(FRAME_LEN) if a[i] != b[i]] == [i for i in range(FRAME_LEN) if i in
                                                             (*range(6, 12), *range(22, 28), *range(32, 38))]


@pytest.mark.parametrize("mac", [b"", bytes(5), bytes(7), MAC + MAC])
def test_a_mac_is_six_bytes(mac):
    with pytest.raises(ValueError, match=f"6 bytes, got {len(mac)}"):
        rarp_frame(mac)


class Recorder:
    """A fake clock whose sleep advances it; sends record (time, nic, frame)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.sent: list[tuple[float, str, bytes]] = []

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds

    def send(self, name: str, fail_at: set[int] = frozenset()):  # type: ignore[assignment]
        calls = [0]

        def send(frame: bytes) -> None:
            calls[0] += 1
            if calls[0] in fail_at:
                raise OSError(100, "Network is down")
            self.sent.append((round(self.now, 6), name, frame))

        return send


def test_announce_follows_the_schedule_for_every_nic():
    r = Recorder()
    mac2 = bytes.fromhex("525400000002")
    sent = announce([(r.send("a"), MAC), (r.send("b"), mac2)], schedule=(0.0, 0.05, 0.15), sleep=r.sleep)
    assert sent == 6
    assert r.sleeps == pytest.approx([0.05, 0.10])
    assert [(t, n) for t, n, _ in r.sent] == [(0.0, "a"), (0.0, "b"), (0.05, "a"), (0.05, "b"), (0.15, "a"),
                                              (0.15, "b")]
    assert {n: f for _, n, f in r.sent} == {"a": rarp_frame(MAC), "b": rarp_frame(mac2)}


def test_the_default_schedule_sends_five_spread_over_a_third_of_a_second():
    r = Recorder()
    assert announce([(r.send("a"), MAC)], sleep=r.sleep) == len(SCHEDULE) == 5
    assert [t for t, _, _ in r.sent] == pytest.approx(list(SCHEDULE))
    assert r.now == pytest.approx(SCHEDULE[-1])


def test_a_failed_send_is_skipped_and_not_counted():
    r = Recorder()
    # NIC a's link is down for its first two tries; b never works.
    sent = announce([(r.send("a", {1, 2}), MAC), (r.send("b", {1, 2, 3}), MAC)], schedule=(0.0, 0.1, 0.2),
                    sleep=r.sleep)
    assert sent == 1 and [(t, n) for t, n, _ in r.sent] == [(0.2, "a")]
    assert r.now == pytest.approx(0.2)  # the schedule went on after the failures


def test_no_nics_still_ends():
    r = Recorder()
    assert announce([], schedule=(0.0, 0.1), sleep=r.sleep) == 0


def test_a_bad_mac_is_refused_before_anything_is_sent():
    r = Recorder()
    with pytest.raises(ValueError):
        announce([(r.send("a"), MAC), (r.send("b"), bytes(3))], sleep=r.sleep)
    assert r.sent == [] and r.sleeps == []


def test_announce_in_background_runs_on_a_daemon_thread():
    got: list[bytes] = []
    lock = threading.Lock()

    def send(frame: bytes) -> None:
        with lock:
            got.append(frame)

    t = announce_in_background([(send, MAC)])
    assert t.daemon and t.name == "announce"
    t.join(5)
    assert not t.is_alive() and got == [rarp_frame(MAC)] * len(SCHEDULE)
