"""Copying disks during a migration: the write tracker and both ends, without KVM."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from pyvirt.disk.raw import RawBackend
from pyvirt.migration import stream
from pyvirt.migration.disk_copy import CHUNK, DiskCopySource, DiskCopyTarget, WriteTracker, create_target
from pyvirt.migration.stream import Channel, MigrationError


class FakeBlk:
    def __init__(self, backend):
        self.backend = backend


def _raw(path: Path, data: bytes) -> RawBackend:
    path.write_bytes(data)
    return RawBackend(str(path))


def test_tracker_records_completed_writes_by_chunk(tmp_path: Path) -> None:
    t = WriteTracker(_raw(tmp_path / "d", bytes(4 * CHUNK)))
    t.write_from(CHUNK - 512, [memoryview(b"x" * 1024)])  # straddles chunks 0 and 1
    t.discard(3 * CHUNK, 4096)
    t.write_zeroes(2 * CHUNK + 512, 512, False)
    assert t.take() == [0, 1, 2, 3]
    assert t.take() == []
    t.close()


def _pair() -> tuple[Channel, Channel]:
    a, b = socket.socketpair()
    return Channel(a, "source"), Channel(b, "destination")


def _receive_all(dst: Channel, target: DiskCopyTarget, out: list[int]) -> None:
    while True:
        kind, crc, length = dst.recv_frame("test")
        if kind == stream.DONE:
            dst.recv_json(kind, crc, length, "test")
            return
        assert kind == stream.DISK
        out.append(target.receive(dst, length))


def test_bulk_then_dirty_rounds_reproduce_the_disk(tmp_path: Path) -> None:
    """Writes during and after the bulk pass are sent again; the copy ends equal."""
    data = bytearray(os.urandom(2 * CHUNK) + bytes(3 * CHUNK) + os.urandom(CHUNK))
    src = _raw(tmp_path / "src", bytes(data))
    dev = FakeBlk(src)
    copy = DiskCopySource([dev])  # type: ignore[list-item]
    assert isinstance(dev.backend, WriteTracker)
    create_target(str(tmp_path / "dst"), len(data), "raw")
    target = DiskCopyTarget()
    target.open(0, str(tmp_path / "dst"), False, "raw", None)
    s, d = _pair()
    got: list[int] = []
    rx = threading.Thread(target=_receive_all, args=(d, target, got))
    rx.start()
    # A "guest" write lands mid-way through the bulk pass.
    calls = [0]

    def check() -> None:
        calls[0] += 1

    copy.bulk(s, check)
    dev.backend.write_from(4 * CHUNK, [memoryview(b"late" * 1024)])
    assert copy.dirty_bytes() == CHUNK
    copy.send_dirty(s)
    dev.backend.write_from(0, [memoryview(b"final" * 100)])
    copy.send_dirty(s)
    s.send_json(stream.DONE, {})
    rx.join(10)
    target.flush()
    copy.finish()
    assert dev.backend is src
    assert (tmp_path / "dst").read_bytes() == (tmp_path / "src").read_bytes()
    assert sum(got) == 3 * CHUNK + CHUNK + CHUNK  # 3 non-zero chunks in bulk, then 2 dirty chunks
    target.remove_created()  # nothing created by this target: only closes


def test_target_refuses_bad_messages(tmp_path: Path) -> None:
    create_target(str(tmp_path / "dst"), CHUNK, "raw")
    target = DiskCopyTarget()
    target.open(0, str(tmp_path / "dst"), False, "raw", None)
    for index, offset, size in ((1, 0, 512), (0, CHUNK - 512, 1024), (0, 100, 512)):
        s, d = _pair()
        s.send_disk(index, offset, bytes(size))
        kind, _, length = d.recv_frame("test")
        with pytest.raises(MigrationError):
            target.receive(d, length)


def test_create_target_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"precious")
    with pytest.raises(MigrationError, match="exists"):
        create_target(str(tmp_path / "x"), CHUNK, "raw")
    assert (tmp_path / "x").read_bytes() == b"precious"
    create_target(str(tmp_path / "q.qcow2"), 8 * CHUNK, "qcow2")
    from pyvirt.disk import open_disk

    with open_disk(str(tmp_path / "q.qcow2")) as b:
        assert b.size == 8 * CHUNK
