"""Handing disks over in a migration (migration/disks.py) with real images
in a temporary directory: the destination's PendingDisk (geometry without
the lock, no I/O), opening it for real at switchover, and the source's
release and reacquire around virtio-blk devices. OFD locks conflict between
two opens in one process, so one test process plays both hosts."""

from __future__ import annotations

import os

import pytest

from pyvirt.devices.virtio.blk import VirtioBlk
from pyvirt.disk import DiskError
from pyvirt.disk.qcow2 import Qcow2Image, create
from pyvirt.disk.raw import RawBackend
from pyvirt.migration.disks import PendingDisk, Released, activate, blk_devices, image_format, release

SIZE = 1 << 20


@pytest.fixture
def raw(tmp_path) -> str:
    path = tmp_path / "disk.raw"
    path.write_bytes(b"\x5a" * SIZE)
    return str(path)


@pytest.fixture
def qcow2(tmp_path) -> str:
    path = str(tmp_path / "disk.qcow2")
    create(path, 4 * SIZE)
    return path


def opens(path: str, fmt: str, readonly: bool = False) -> bool:
    """Whether another user could open (and lock) the image now."""
    try:
        b = Qcow2Image(path, readonly) if fmt == "qcow2" else RawBackend(path, readonly)
    except DiskError:
        return False
    b.close()
    return True


# --- PendingDisk ------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_pending_disk_reads_the_geometry_while_the_source_holds_the_lock(raw, qcow2, fmt):
    path, size = (raw, SIZE) if fmt == "raw" else (qcow2, 4 * SIZE)
    holder = Qcow2Image(path) if fmt == "qcow2" else RawBackend(path)  # the source VM, writing
    try:
        assert not opens(path, fmt, readonly=True)  # a plain open is refused...
        pending = PendingDisk(path, False, fmt, None)  # ...the probe takes no lock
        assert (pending.size, pending.block_size, pending.readonly, pending.format) == (size, 512, False, fmt)
        assert pending.id == holder.id  # the same file: the same default serial
        assert pending.discard_supported
        with pytest.raises(DiskError, match="cannot write the disk image: another process holds a lock"):
            pending.open()  # the source has not let go yet
    finally:
        holder.close()


def test_pending_disk_keeps_an_explicit_serial_and_detects_the_format(raw):
    pending = PendingDisk(raw, True, "", "vol-7")
    assert pending.id == "vol-7" and pending.format == "" and not pending.discard_supported
    real = pending.open()
    try:
        assert isinstance(real, RawBackend) and real.id == "vol-7" and real.readonly
    finally:
        real.close()


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_pending_disk_does_no_io(raw, qcow2, fmt):
    path = raw if fmt == "raw" else qcow2
    pending = PendingDisk(path, False, fmt, None)
    buf = memoryview(bytearray(512))
    for call in (lambda: pending.read_into(0, [buf]), lambda: pending.write_from(0, [buf]),
                 lambda: pending.discard(0, 512), lambda: pending.write_zeroes(0, 512, True)):
        with pytest.raises(DiskError, match=f"{path}: the disk is not open yet"):
            call()
    pending.flush()
    pending.close()
    assert opens(path, fmt)  # it never held the image


def test_a_virtio_blk_device_builds_over_a_pending_disk(qcow2):
    dev = VirtioBlk(PendingDisk(qcow2, False, "qcow2", "s1"))
    assert dev.capacity == 4 * SIZE // 512 and dev.backend.id == "s1"


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_open_returns_the_real_image_with_the_lock(raw, qcow2, fmt):
    path = raw if fmt == "raw" else qcow2
    pending = PendingDisk(path, False, fmt, None)
    real = pending.open()
    try:
        assert isinstance(real, Qcow2Image if fmt == "qcow2" else RawBackend)
        assert (real.size, real.id, real.readonly) == (pending.size, pending.id, False)
        view = memoryview(bytearray(512))
        real.read_into(0, [view])
        assert bytes(view) == (b"\x5a" * 512 if fmt == "raw" else bytes(512))
        assert not opens(path, fmt, readonly=True)
    finally:
        real.close()


def test_open_refuses_an_image_whose_size_changed(raw):
    pending = PendingDisk(raw, False, "raw", None)
    os.truncate(raw, 2 * SIZE)
    with pytest.raises(DiskError, match=f"{raw}: its size changed from {SIZE} to {2 * SIZE} during the migration"):
        pending.open()
    assert opens(raw, "raw")  # the image it opened to find that out is closed again


def test_a_missing_image_fails_at_the_probe(tmp_path):
    with pytest.raises(DiskError, match="cannot open disk image"):
        PendingDisk(str(tmp_path / "gone.raw"), False, "raw", None)


# --- source: release and reacquire ----------------------------------------------------------

class FakeVirtio:
    def __init__(self, devices: list) -> None:
        self.devices = devices


class FakeMachine:
    """What disks.py uses of a Machine: its virtio devices."""

    def __init__(self, devices: list | None) -> None:
        self.virtio = FakeVirtio(devices) if devices is not None else None


@pytest.fixture
def machine(tmp_path, raw, qcow2):
    ro = tmp_path / "ro.raw"
    ro.write_bytes(bytes(SIZE))
    devs = [VirtioBlk(RawBackend(raw, serial="raw-0")), VirtioBlk(Qcow2Image(qcow2)),
            VirtioBlk(RawBackend(str(ro), True))]
    m = FakeMachine([*devs, object()])  # other devices are left alone
    yield m
    for d in devs:
        d.backend.close()


def test_blk_devices_and_formats(machine):
    devs = blk_devices(machine)  # type: ignore[arg-type]
    assert len(devs) == 3 and [image_format(d.backend) for d in devs] == ["raw", "qcow2", "raw"]
    assert blk_devices(FakeMachine(None)) == []  # type: ignore[arg-type]


def test_release_flushes_writable_disks_and_closes_all(machine, monkeypatch):
    devs = blk_devices(machine)  # type: ignore[arg-type]
    flushed: list[str] = []
    for d in devs:
        real = d.backend.flush
        monkeypatch.setattr(d.backend, "flush", lambda real=real, p=d.backend.path: (flushed.append(p), real())[1])
    before = [(d.backend.path, d.backend.readonly, d.backend.id) for d in devs]
    released = release(machine)  # type: ignore[arg-type]
    assert flushed == [devs[0].backend.path, devs[1].backend.path]  # the read-only disk has nothing to flush
    assert [(p, ro, fmt, ident) for _, p, ro, fmt, ident in released.items] == [
        (before[0][0], False, "raw", "raw-0"), (before[1][0], False, "qcow2", before[1][2]),
        (before[2][0], True, "raw", before[2][2])]
    for path, _, _ in before:
        assert opens(path, "qcow2" if path.endswith(".qcow2") else "raw")  # the destination may take them


def test_reacquire_reopens_each_image_as_it_was(machine):
    devs = blk_devices(machine)  # type: ignore[arg-type]
    before = [(type(d.backend), d.backend.path, d.backend.readonly, d.backend.id) for d in devs]
    old = [d.backend for d in devs]
    released = release(machine)  # type: ignore[arg-type]
    assert released.reacquire() == []
    assert [(type(d.backend), d.backend.path, d.backend.readonly, d.backend.id) for d in devs] == before
    assert all(d.backend is not o for d, o in zip(devs, old))
    assert not opens(before[0][1], "raw", readonly=True)  # locked again
    view = memoryview(bytearray(512))
    devs[0].backend.read_into(0, [view])
    assert bytes(view) == b"\x5a" * 512


def test_reacquire_reports_an_image_taken_meanwhile(machine):
    devs = blk_devices(machine)  # type: ignore[arg-type]
    released = release(machine)  # type: ignore[arg-type]
    thief = RawBackend(devs[0].backend.path)  # e.g. a destination that has not let go yet
    try:
        errors = released.reacquire()
    finally:
        thief.close()
    assert len(errors) == 1 and "another process holds a lock" in errors[0]
    assert isinstance(devs[1].backend, Qcow2Image) and not opens(devs[1].backend.path, "qcow2")  # the others are back


def test_a_failed_flush_releases_nothing(machine, monkeypatch):
    devs = blk_devices(machine)  # type: ignore[arg-type]

    def broken() -> None:
        raise DiskError("qcow2: flush: No space left on device")

    monkeypatch.setattr(devs[1].backend, "flush", broken)
    with pytest.raises(DiskError, match="No space left"):
        release(machine)  # type: ignore[arg-type]
    assert not opens(devs[0].backend.path, "raw", readonly=True)  # still open and locked
    view = memoryview(bytearray(512))
    devs[0].backend.read_into(0, [view])


def test_released_of_no_devices():
    assert Released([]).reacquire() == []


# --- destination: activate -------------------------------------------------------------------

def test_activate_opens_every_pending_disk(raw, qcow2):
    devs = [VirtioBlk(PendingDisk(raw, False, "raw", None)), VirtioBlk(PendingDisk(qcow2, True, "qcow2", "q"))]
    m = FakeMachine(devs)
    activate(m)  # type: ignore[arg-type]
    try:
        assert [type(d.backend) for d in devs] == [RawBackend, Qcow2Image]
        assert devs[1].backend.readonly and devs[1].backend.id == "q"
    finally:
        for d in devs:
            d.backend.close()


def test_activate_is_all_or_nothing(raw, qcow2):
    devs = [VirtioBlk(PendingDisk(raw, False, "raw", None)), VirtioBlk(PendingDisk(qcow2, False, "qcow2", None))]
    holder = Qcow2Image(qcow2)  # the source still holds the second image
    try:
        with pytest.raises(DiskError, match="another process holds a lock"):
            activate(FakeMachine(devs))  # type: ignore[arg-type]
    finally:
        holder.close()
    assert all(isinstance(d.backend, PendingDisk) for d in devs)
    assert opens(raw, "raw")  # the first image, opened on the way, was closed again
