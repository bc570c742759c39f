"""TAP devices for real (root only; skipped where /dev/net/tun is unusable):
creation, flags, the vnet header, offloads, cleanup, attaching to an
existing TAP, and a frame exchanged with the kernel inside a network
namespace the test creates (no traffic leaves it)."""

from __future__ import annotations

import os
import select
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyvirt.net.tap import IFF_NO_PI, IFF_PERSIST, IFF_TAP, IFF_UP, IFF_VNET_HDR, Tap, TapError, check_name, open_tap


def _tun_usable() -> bool:
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        return False
    try:
        Tap.open("pyvtprobe%d", up=False).close()
    except TapError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _tun_usable(), reason="needs root and a usable /dev/net/tun")

_counter = iter(range(1000))


def _name() -> str:
    return f"pyvt{os.getpid() % 100000}x{next(_counter)}"


def _exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def test_create_flags_and_cleanup() -> None:
    name = _name()
    with Tap.open(name) as t:
        assert t.name == name and t.created and _exists(name)
        assert t.tun_flags() & (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) == IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
        assert not t.tun_flags() & IFF_PERSIST
        assert t.vnet_hdr_size() == 12
        assert t.interface_flags() & IFF_UP
        assert t.mtu() == 1500 and len(t.host_mac()) == 6
        t.set_offload(csum=True, tso4=True, tso6=True, ecn=True)
        t.set_offload(csum=False, tso4=True, tso6=False)  # TSO without checksum offload is dropped, not an error
        t.set_up(False)
        assert not t.interface_flags() & IFF_UP
        with pytest.raises(BlockingIOError):  # non-blocking: no frame, no wait
            t.recv_into([memoryview(bytearray(2048))])
    assert not _exists(name) and t.fd == -1
    t.close()  # twice is fine


def test_template_name() -> None:
    with Tap.open("pyvt%d") as t:
        assert t.name.startswith("pyvt") and t.created and _exists(t.name)
    assert not _exists(t.name)


def test_made_persistent_meanwhile_still_removed() -> None:
    name = _name()
    t = Tap.open(name)
    try:
        import fcntl

        from pyvirt.net.tap import TUNSETPERSIST
        fcntl.ioctl(t.fd, TUNSETPERSIST, 1)
    finally:
        t.close()
    assert not _exists(name)


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs the ip command")
def test_existing_persistent_tap_is_left_alone() -> None:
    name = _name()
    _ip("tuntap", "add", "dev", name, "mode", "tap")  # without vnet_hdr: attaching turns it on
    try:
        with Tap.open(name) as t:
            assert not t.created
            with pytest.raises(TapError, match="another process"):
                Tap.open(name)
        assert _exists(name)
    finally:
        _ip("tuntap", "del", "dev", name, "mode", "tap")
    assert not _exists(name)


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs the ip command")
def test_existing_non_tap_is_refused() -> None:
    name = _name()
    _ip("tuntap", "add", "dev", name, "mode", "tun")  # a TUN: layer 3, no Ethernet frames
    try:
        with pytest.raises(TapError, match="not a single-queue TAP"):
            Tap.open(name)
    finally:
        _ip("tuntap", "del", "dev", name, "mode", "tun")
    assert not _exists(name)


@pytest.mark.parametrize("bad", ["", "a" * 16, "a/b", "a b", "..", "a%d%d"])
def test_bad_names(bad: str) -> None:
    with pytest.raises(TapError):
        check_name(bad)
    with pytest.raises(TapError):
        Tap.open(bad)


@pytest.fixture
def netns() -> Iterator[str]:
    if shutil.which("ip") is None:
        pytest.skip("needs the ip command")
    ns = f"pyvirt-test-{os.getpid()}-{next(_counter)}"
    _ip("netns", "add", ns)
    try:
        yield ns
    finally:
        _ip("netns", "del", ns)


def _arp(op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> bytes:
    return struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, sha, spa, tha, tpa)


def test_frames_both_ways_in_a_namespace(netns: str) -> None:
    """Our ARP request goes in through the fd with a virtio-net header; the
    namespace's kernel answers, and the reply comes out with one."""
    name = _name()
    with Tap.open(name) as t:
        _ip("link", "set", name, "netns", netns)  # from here on, its traffic stays in the namespace
        _ip("-n", netns, "addr", "add", "10.213.0.1/24", "dev", name)
        _ip("-n", netns, "link", "set", name, "up")
        ours = bytes.fromhex("020000000002")
        frame = b"\xff" * 6 + ours + b"\x08\x06" + _arp(1, ours, bytes([10, 213, 0, 2]), bytes(6),
                                                        bytes([10, 213, 0, 1]))
        vnet = bytes(12)
        assert t.send([memoryview(vnet), memoryview(frame)]) == 12 + len(frame)
        buf = bytearray(65536)
        reply = b""
        for _ in range(50):  # skip what else the namespace says (IPv6 router solicitations...)
            if not select.select([t.fd], [], [], 2)[0]:
                break
            n = t.recv_into([memoryview(buf)])
            got = bytes(buf[:n])
            if got[12 + 12:12 + 14] == b"\x08\x06":
                reply = got
                break
        assert reply, "no ARP reply from the namespace"
        hdr, eth = reply[:12], reply[12:]
        assert hdr[1] == 0  # gso_type NONE
        assert eth[:6] == ours
        op, spa = struct.unpack_from("!H", eth, 14 + 6)[0], eth[14 + 14:14 + 18]
        assert op == 2 and spa == bytes([10, 213, 0, 1])
    assert not _exists(name)
    r = subprocess.run(["ip", "-n", netns, "link", "show", name], capture_output=True)
    assert r.returncode != 0  # gone from the namespace too


def test_virtio_net_over_tap_in_a_namespace(netns: str) -> None:
    """The device end to end: an ARP request from the guest's transmit queue
    reaches the namespace's kernel, the reply lands in a receive buffer with
    num_buffers set."""
    from pyvirt.devices.virtio.net import F_GUEST_CSUM, F_GUEST_TSO4, F_MRG_RXBUF, TapBackend, VirtioNet
    from pyvirt.memory.guest import GuestMemory
    from pyvirt.testing.virtio import FakeDriverQueue

    class Irq:
        def used(self, queue: int) -> None: ...

        def config_changed(self) -> None: ...

    name = _name()
    mem = GuestMemory.from_bytearray(4 << 20)
    rx = FakeDriverQueue(mem, 64, desc=0, buffers=(0x100000, 0x200000))
    tx = FakeDriverQueue(mem, 64, desc=0x10000, buffers=(0x200000, 0x400000))
    mac = bytes.fromhex("020000000002")
    dev = VirtioNet(TapBackend(open_tap(name)), mac=mac)  # as the VM builder does
    try:
        dev.driver_features = F_MRG_RXBUF | F_GUEST_CSUM | F_GUEST_TSO4 | (1 << 32)
        dev.activate(mem, [rx.virtqueue(index=0), tx.virtqueue(index=1)], Irq())
        _ip("link", "set", name, "netns", netns)
        _ip("-n", netns, "addr", "add", "10.213.0.1/24", "dev", name)
        _ip("-n", netns, "link", "set", name, "up")
        heads = [rx.add_chain([], [4096]) for _ in range(20)]
        dev.queue_notify(0)
        arp = b"\xff" * 6 + mac + b"\x08\x06" + _arp(1, mac, bytes([10, 213, 0, 2]), bytes(6), bytes([10, 213, 0, 1]))
        tx.add_chain([bytes(12), arp])
        dev.queue_notify(1)
        assert len(tx.used()) == 1 and dev.statistics()["tx_frames"] == 1
        reply = b""
        for _ in range(50):
            fds = dict(dev.host_fds())
            if not select.select(list(fds), [], [], 2)[0]:
                break
            for token in fds.values():
                dev.host_ready(token)
            for head, n in rx.used():
                got = rx.read_written(head)
                assert struct.unpack_from("<H", got, 10)[0] == 1  # num_buffers
                if got[24:26] == b"\x08\x06":
                    reply = got
            if reply:
                break
        assert reply and reply[12:18] == mac and struct.unpack_from("!H", reply, 12 + 20)[0] == 2
        assert heads
    finally:
        dev.close()
    assert not _exists(name)
