"""The snapshot file format (vmm/snapshot.py): round trips, and every kind of
damaged or hostile file refused with a clear error before anything is used.
No /dev/kvm needed: memory is bytearray-backed."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirt.memory import GuestMemory
from pyvirt.vmm import snapshot as sn
from pyvirt.vmm.snapshot import (CONFIG, DEVICES, MEMORY, MEMORY_MAP, PAGE, VCPU, VM, Snapshot, SnapshotError,
                                 SnapshotWriter, limit_runs, nonzero_runs)

REGIONS = [(0, 64 * PAGE), (1 << 20, 32 * PAGE)]


def _memory() -> GuestMemory:
    mem = GuestMemory.from_bytearray(64 * PAGE)
    mem.regions.append(GuestMemory.from_bytearray(32 * PAGE, gpa=1 << 20).regions[0])
    mem._starts.append(1 << 20)
    for page in (0, 1, 2, 7, 40, 63):
        mem.write(page * PAGE + 5, bytes([page + 1]) * 100)
    mem.write((1 << 20) + 3 * PAGE, b"high")
    return mem


def _views(mem: GuestMemory) -> list[tuple[int, memoryview]]:
    return [(r.gpa, r.view) for r in mem.regions]


def write(path: Path, mem: GuestMemory | None = None, codec: str = "none", extra: list | None = None) -> Path:
    w = SnapshotWriter(str(path))
    w.add_json(CONFIG, {"machine": {"memory": 1}, "memory_regions": [list(r) for r in REGIONS]})
    w.add_json(VM, {"clock": 5})
    for i in range(2):
        w.add_json(VCPU, {"index": i}, index=i)
    w.add_json(DEVICES, {"legacy": {}})
    for name, data, flags in extra or ():
        w.add(name, data, flags=flags)
    w.add_memory(_views(mem or _memory()), codec)
    w.commit(sync=False)
    return path


@pytest.fixture
def snap_file(tmp_path: Path) -> Path:
    return write(tmp_path / "vm.snap")


def _restore_into(snap: Snapshot) -> GuestMemory:
    out = _memory()
    for r in out.regions:
        r.view[:] = bytes(r.size)
    for run in snap.memory_runs(REGIONS):
        snap.read_run(run, into=out.view(run.gpa, run.length))
    return out


# --- round trips ------------------------------------------------------------------

@pytest.mark.parametrize("codec", ["none", "zstd", "lz4"])
def test_round_trip(tmp_path: Path, codec: str) -> None:
    mem = _memory()
    path = write(tmp_path / "vm.snap", mem, codec)
    with Snapshot.open(str(path)) as snap:
        assert snap.version == sn.FORMAT_VERSION
        assert snap.header()["machine"] == {"memory": 1}
        assert snap.json(snap.one(VM)) == {"clock": 5}
        assert [snap.json(s) for s in snap.find(VCPU)] == [{"index": 0}, {"index": 1}]
        assert [s.index for s in snap.find(VCPU)] == [0, 1]
        runs = snap.memory_runs(REGIONS)
        assert all((r.codec == sn.CODEC_NONE) == (codec == "none") for r in runs)
        restored = _restore_into(snap)
        snap.verify_memory(REGIONS)
    for a, b in zip(mem.regions, restored.regions):
        assert bytes(a.view) == bytes(b.view)


def test_zero_pages_are_left_out_and_runs_are_page_aligned(snap_file: Path) -> None:
    with Snapshot.open(str(snap_file)) as snap:
        runs = snap.memory_runs(REGIONS)
        assert [(r.gpa, r.length) for r in runs] == [(0, 3 * PAGE), (7 * PAGE, PAGE), (40 * PAGE, PAGE),
                                                      (63 * PAGE, PAGE), ((1 << 20) + 3 * PAGE, PAGE)]
        assert all(r.offset % PAGE == 0 for r in runs)
        memory = snap.one(MEMORY)
        assert memory.offset % PAGE == 0 and memory.length == 7 * PAGE


def test_writer_replaces_the_file_only_at_commit(tmp_path: Path) -> None:
    path = tmp_path / "vm.snap"
    path.write_bytes(b"old")
    w = SnapshotWriter(str(path))
    w.add_json(CONFIG, {})
    assert path.read_bytes() == b"old"
    w.abort()
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["vm.snap"]
    write(path)
    assert Snapshot.open(str(path)).header()["machine"] == {"memory": 1}
    assert os.listdir(tmp_path) == ["vm.snap"]


def test_nonzero_runs() -> None:
    buf = bytearray(8 * PAGE + (2 << 20))
    for page in (0, 1, 3, 5, 6, 7):
        buf[page * PAGE + PAGE - 1] = 1
    buf[-1] = 9
    assert nonzero_runs(memoryview(buf)) == [(0, 2 * PAGE), (3 * PAGE, PAGE), (5 * PAGE, 3 * PAGE),
                                             (len(buf) - PAGE, PAGE)]
    assert nonzero_runs(memoryview(bytearray(3 * PAGE))) == []


def test_limit_runs_joins_the_smallest_gaps_within_a_region() -> None:
    runs = [(0, 0, 1), (0, 10, 1), (0, 12, 1), (0, 100, 1), (1, 0, 1), (1, 2, 1)]
    assert limit_runs(runs, budget=6) == runs
    assert limit_runs(runs, budget=4) == [(0, 0, 1), (0, 10, 3), (0, 100, 1), (1, 0, 3)]
    assert limit_runs(runs, budget=2) == [(0, 0, 101), (1, 0, 3)]
    assert limit_runs(runs, budget=1) == [(0, 0, 101), (1, 0, 3)]  # never across regions


# --- damaged files ------------------------------------------------------------------

def _error(path: Path) -> str:
    with pytest.raises(SnapshotError) as e:
        Snapshot.open(str(path)).close()
    assert str(path) in str(e.value)
    return str(e.value)


def test_truncated_at_every_section_boundary(snap_file: Path, tmp_path: Path) -> None:
    data = snap_file.read_bytes()
    with Snapshot.open(str(snap_file)) as snap:
        cuts = {0, 8, sn.PREAMBLE_SIZE - 1, sn.PREAMBLE_SIZE, len(data) - 1}
        for s in snap.sections:
            cuts |= {s.offset, s.offset + 1, s.offset + s.length - 1, s.offset + s.length}
    cuts.discard(len(data))
    for cut in sorted(cuts):
        bad = tmp_path / f"cut{cut}"
        bad.write_bytes(data[:cut])
        message = _error(bad)
        assert "truncated" in message or "not a pyvirt snapshot" in message, (cut, message)


def test_incomplete_file_of_a_writer_that_died(tmp_path: Path) -> None:
    w = SnapshotWriter(str(tmp_path / "vm.snap"))
    w.add_json(CONFIG, {})
    os.close(w.fd)
    assert "did not finish" in _error(Path(w.tmp)) or "not a pyvirt" in _error(Path(w.tmp))


@pytest.mark.parametrize("name", [CONFIG, VM, VCPU, DEVICES, MEMORY_MAP])
def test_crc_failure_in_each_section(snap_file: Path, name: str) -> None:
    with Snapshot.open(str(snap_file)) as snap:
        s = snap.find(name)[-1]
    data = bytearray(snap_file.read_bytes())
    data[s.offset + s.length // 2] ^= 0x20
    snap_file.write_bytes(bytes(data))
    assert f"section {name!r}" in _error(snap_file) and "CRC" in _error(snap_file)


def test_crc_failure_in_preamble_and_table(snap_file: Path, tmp_path: Path) -> None:
    data = snap_file.read_bytes()
    table_offset = sn.PREAMBLE.unpack_from(data)[3]
    for where, what in ((20, "preamble"), (table_offset + 30, "section table")):
        bad = bytearray(data)
        bad[where] ^= 1
        (tmp_path / "bad").write_bytes(bytes(bad))
        assert f"{what} fails its CRC" in _error(tmp_path / "bad")


def test_crc_failure_in_memory_is_found_by_verify_and_by_reading(snap_file: Path) -> None:
    with Snapshot.open(str(snap_file)) as snap:
        run = snap.memory_runs(REGIONS)[1]
    data = bytearray(snap_file.read_bytes())
    data[run.offset + 100] ^= 0xFF
    snap_file.write_bytes(bytes(data))
    with Snapshot.open(str(snap_file)) as snap:  # memory is not read at open (restore maps it)
        with pytest.raises(SnapshotError, match="0x7000 fails its CRC"):
            snap.verify_memory(REGIONS)
        with pytest.raises(SnapshotError, match="CRC"):
            snap.read_run(snap.memory_runs(REGIONS)[1])
        with pytest.raises(SnapshotError, match="CRC"):
            snap.read_run(snap.memory_runs(REGIONS)[1], into=memoryview(bytearray(PAGE)))


def _with_preamble(data: bytes, **changes: int) -> bytes:
    names = ("magic", "version", "flags", "table_offset", "count", "table_crc", "file_size")
    values = dict(zip(names, sn.PREAMBLE.unpack_from(data)))
    values.update(changes)
    pre = sn.PREAMBLE.pack(*(values[n] for n in names))
    return pre + sn.PREAMBLE_CRC.pack(zlib.crc32(pre)) + data[sn.PREAMBLE.size + 4:]


def test_wrong_magic_and_versions(snap_file: Path, tmp_path: Path) -> None:
    data = snap_file.read_bytes()
    bad = tmp_path / "bad"
    bad.write_bytes(b"NOTASNAP" + data[8:])
    assert "wrong magic" in _error(bad)
    bad.write_bytes(b"\x7fELF" + bytes(100))
    assert "ELF kernel" in _error(bad)
    bad.write_bytes(b"")
    assert "not a pyvirt snapshot" in _error(bad)
    bad.write_bytes(_with_preamble(data, version=sn.FORMAT_VERSION + 1))
    message = _error(bad)
    assert f"format {sn.FORMAT_VERSION + 1} by a newer pyvirt" in message and "newer pyvirt" in message
    bad.write_bytes(_with_preamble(data, version=0))
    assert "no longer supported" in _error(bad)
    bad.write_bytes(_with_preamble(data, flags=4))
    assert "unknown preamble flags" in _error(bad)


def test_hostile_preamble_lengths(snap_file: Path, tmp_path: Path) -> None:
    data = snap_file.read_bytes()
    table_offset = sn.PREAMBLE.unpack_from(data)[3]
    bad = tmp_path / "bad"
    for changes, message in (({"count": 1 << 31}, "sections is more"), ({"count": 3}, "does not end the file"),
                             ({"table_offset": 1 << 62}, "does not end the file"),
                             ({"table_offset": 2}, "does not end the file"),
                             ({"file_size": len(data) + 1}, "truncated"),
                             ({"file_size": len(data) - 1}, "unexpected bytes"),
                             ({"table_offset": table_offset - 48}, "does not end the file")):
        bad.write_bytes(_with_preamble(data, **changes))
        assert message in _error(bad), changes


def _with_table(data: bytes, edit) -> bytes:
    table_offset, count = sn.PREAMBLE.unpack_from(data)[3:5]
    entries = [list(sn.ENTRY.unpack_from(data, table_offset + i * sn.ENTRY.size)) for i in range(count)]
    edit(entries)
    table = b"".join(sn.ENTRY.pack(*e) for e in entries)
    body = data[:table_offset] + table
    return _with_preamble(body, count=len(entries), table_crc=zlib.crc32(table), file_size=len(body))


@pytest.mark.parametrize("edit, message", [
    (lambda e: e[1].__setitem__(3, 1 << 63), "outside the file"),  # offset
    (lambda e: e[1].__setitem__(4, 1 << 63), "outside the file"),  # length
    (lambda e: e[1].__setitem__(3, 10), "outside the file"),  # inside the preamble
    (lambda e: e[2].__setitem__(3, e[1][3]), "overlap"),
    (lambda e: e[0].__setitem__(0, b"mystery"), "not one this pyvirt knows"),
    (lambda e: e[0].__setitem__(0, b"\xff\xfe"), "not ASCII"),
    (lambda e: e[0].__setitem__(0, b""), "no valid name"),
    (lambda e: e[0].__setitem__(1, 1 << 9), "unknown flags"),
])
def test_hostile_section_table(snap_file: Path, edit, message: str) -> None:
    snap_file.write_bytes(_with_table(snap_file.read_bytes(), edit))
    assert message in _error(snap_file)


def test_optional_unknown_sections_are_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "vm.snap", extra=[("future", b"x", sn.OPTIONAL)])
    with Snapshot.open(str(path)) as snap:
        assert not snap.find("future")
    path = write(tmp_path / "vm.snap", extra=[("future", b"x", 0)])
    assert "'future' is not one this pyvirt knows" in _error(path)


def test_bad_json_and_missing_sections(tmp_path: Path) -> None:
    for bad_json, message in ((b"{", "not valid JSON"), (b'{"a": NaN}', "not valid JSON"),
                              (b"\xff", "not valid JSON"), (b"[" * 100000, "not valid JSON")):
        w = SnapshotWriter(str(tmp_path / "vm.snap"))
        w.add(CONFIG, bad_json)
        w.add_memory([], "none")
        w.commit(sync=False)
        with Snapshot.open(str(tmp_path / "vm.snap")) as snap:
            with pytest.raises(SnapshotError, match=message):
                snap.header()
            with pytest.raises(SnapshotError, match="0 'vm' sections"):
                snap.one(VM)


# --- the memory map ------------------------------------------------------------------

def _with_map(data: bytes, edit) -> bytes:
    with _open_bytes(data) as snap:
        m = snap.one(MEMORY_MAP)
    raw = data[m.offset:m.offset + m.length]
    page, count = sn.MAP_HEADER.unpack_from(raw)
    runs = [list(sn.RUN.unpack_from(raw, sn.MAP_HEADER.size + i * sn.RUN.size)) for i in range(count)]
    header = [page, count]
    edit(header, runs)
    new = sn.MAP_HEADER.pack(*header) + b"".join(sn.RUN.pack(*r) for r in runs)
    return _replace_section(data, MEMORY_MAP, new)


class _open_bytes:
    """A Snapshot of `data` (through a temporary file)."""

    def __init__(self, data: bytes) -> None:
        import tempfile

        self.f = tempfile.NamedTemporaryFile()
        self.f.write(data)
        self.f.flush()

    def __enter__(self) -> Snapshot:
        self.snap = Snapshot.open(self.f.name)
        return self.snap

    def __exit__(self, *exc: object) -> None:
        self.snap.close()
        self.f.close()


def _replace_section(data: bytes, name: str, new: bytes) -> bytes:
    table_offset, count = sn.PREAMBLE.unpack_from(data)[3:5]
    entries = [list(sn.ENTRY.unpack_from(data, table_offset + i * sn.ENTRY.size)) for i in range(count)]
    body = bytearray(data[:table_offset])
    for e in entries:
        if e[0].rstrip(b"\0").decode() == name:
            e[3], e[4], e[5] = len(body), len(new), zlib.crc32(new)
            body += new
    table = b"".join(sn.ENTRY.pack(*e) for e in entries)
    body += table
    return _with_preamble(bytes(body), table_offset=len(body) - len(table), table_crc=zlib.crc32(table),
                          file_size=len(body))


@pytest.mark.parametrize("edit, message", [
    (lambda h, r: h.__setitem__(0, 8192), "8192-byte pages"),
    (lambda h, r: h.__setitem__(1, 1 << 30), "does not fit its"),
    (lambda h, r: h.__setitem__(1, len(r) + 1), "does not fit its"),
    (lambda h, r: r[1].__setitem__(0, PAGE), "runs overlap or are out of order"),
    (lambda h, r: r[-1].__setitem__(0, 1 << 40), "outside the guest's RAM"),
    (lambda h, r: r[-1].__setitem__(1, 1 << 30), "outside the guest's RAM"),
    (lambda h, r: r[1].__setitem__(0, 5), "not whole pages"),
    (lambda h, r: r[1].__setitem__(1, 0), "not whole pages"),
    (lambda h, r: r[1].__setitem__(2, 1 << 62), "outside the memory section"),
    (lambda h, r: r[1].__setitem__(3, 1 << 62), "outside the memory section"),
    (lambda h, r: r[1].__setitem__(2, 0), "outside the memory section"),
    (lambda h, r: r[2].__setitem__(2, r[1][2]), "overlaps another run"),
    (lambda h, r: r[1].__setitem__(5, 9), "unknown compression"),
    (lambda h, r: r[1].__setitem__(3, r[1][3] - 1), "must be"),
    (lambda h, r: (r[1].__setitem__(5, sn.CODEC_ZSTD), r[1].__setitem__(1, 1 << 30)), "outside the guest's RAM"),
])
def test_hostile_memory_map(snap_file: Path, edit, message: str) -> None:
    snap_file.write_bytes(_with_map(snap_file.read_bytes(), edit))
    with Snapshot.open(str(snap_file)) as snap:
        with pytest.raises(SnapshotError, match=message):
            snap.memory_runs(REGIONS)


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_compressed_run_that_expands_too_far_is_refused(tmp_path: Path, codec: str) -> None:
    path = write(tmp_path / "vm.snap", codec=codec)

    def shrink(h: list, runs: list) -> None:  # claim 1 page where the data holds 3
        runs[0][1] = PAGE

    path.write_bytes(_with_map(path.read_bytes(), shrink))
    with Snapshot.open(str(path)) as snap:
        with pytest.raises(SnapshotError, match="decompress"):
            snap.read_run(snap.memory_runs(REGIONS)[0])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_damaged_files_never_raise_anything_else(tmp_path: Path, data: st.DataObject) -> None:
    """Any byte changed, any length: open() and reading everything either work
    or raise SnapshotError."""
    path = tmp_path / "base.snap"
    if not path.exists():
        write(path)
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    bad = tmp_path / "fuzz.snap"
    bad.write_bytes(bytes(raw))
    try:
        with Snapshot.open(str(bad)) as snap:
            for s in snap.sections:
                if s.name not in (MEMORY, MEMORY_MAP):
                    snap.json(s)
            for run in snap.memory_runs(REGIONS):
                snap.read_run(run)
    except SnapshotError:
        pass


def test_json_sections_are_bounded(snap_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sn, "MAX_JSON", 8)  # the config section is longer
    assert "more than a snapshot writes" in _error(snap_file)


def test_header_is_plain_json(snap_file: Path) -> None:
    with Snapshot.open(str(snap_file)) as snap:
        s = snap.one(CONFIG)
    raw = snap_file.read_bytes()[s.offset:s.offset + s.length]
    assert json.loads(raw)["memory_regions"] == [list(r) for r in REGIONS]
    assert struct.unpack_from("<8s", snap_file.read_bytes())[0] == sn.MAGIC


# --- the header -----------------------------------------------------------------------

def _header_file(tmp_path: Path, header: dict) -> Path:
    w = SnapshotWriter(str(tmp_path / "h.snap"))
    w.add_json(CONFIG, header)
    w.add_memory([], "none")
    w.commit(sync=False)
    return tmp_path / "h.snap"


def _machine_header(tmp_path: Path) -> dict:
    from pyvirt.vmm.config import VmConfig
    from pyvirt.vmm.device_config import DiskConfig, NetConfig, VsockConfig
    from pyvirt.vmm.snapshot_header import machine_header

    disk = tmp_path / "d,isk.img"  # a comma: the header must not go through option strings
    disk.write_bytes(bytes(1 << 20))
    cfg = VmConfig(kernel="k.elf", cmdline="console=ttyS0", memory=256 << 20, cpus=3, rng=True, balloon=True,
                   console="virtio", transport="mmio", pvm="auto",
                   disks=[DiskConfig(str(disk), readonly=True, serial="s1", iops=5)], nets=[NetConfig("tap0")],
                   vsock=VsockConfig(7, "v.sock"))
    return machine_header(cfg, kind="snapshot", pvm=True, backend="kvm_pvm", tsc_khz=2_000_000,
                          regions=[(0, 256 << 20)], macs=["52:54:00:00:00:01"], compression="none", created=1.0)


def test_header_round_trip(tmp_path: Path) -> None:
    from pyvirt.vmm.snapshot_header import config_from_header

    header = _machine_header(tmp_path)
    with Snapshot.open(str(_header_file(tmp_path, header))) as snap:
        cfg, regions, info = config_from_header(snap)
    assert (cfg.memory, cfg.cpus, cfg.cmdline, cfg.pvm, cfg.rng, cfg.balloon, cfg.console, cfg.transport) == (
        256 << 20, 3, "console=ttyS0", "on", True, True, "virtio", "mmio")
    assert cfg.kernel == str(tmp_path / "k.elf") or cfg.kernel.endswith("k.elf")
    d = cfg.disks[0]
    assert (d.path, d.readonly, d.serial, d.iops) == (str(tmp_path / "d,isk.img"), True, "s1", 5)
    assert cfg.nets[0].mac == "52:54:00:00:00:01" and cfg.vsock is not None and cfg.vsock.cid == 7
    assert os.path.isabs(cfg.vsock.socket)
    assert regions == [(0, 256 << 20)] and info["kind"] == "snapshot"
    assert info["disks"][0][1] == 1 << 20  # type: ignore[index]


@pytest.mark.parametrize("edit, message", [
    (lambda h: h["machine"].__setitem__("cpus", "2"), "config.machine.cpus has the wrong type"),
    (lambda h: h["machine"].__setitem__("cpus", 0), "cpus = 0 is out of range"),
    (lambda h: h["machine"].__setitem__("rng", 1), "rng has the wrong type"),
    (lambda h: h["machine"].pop("memory"), "has no 'memory'"),
    (lambda h: h["machine"].__setitem__("pvm", "auto"), "is not on or off"),
    (lambda h: h["machine"].__setitem__("transport", "isa"), "not valid here"),
    (lambda h: h["machine"].__setitem__("disks", [{"path": 1}]), "disks[0].path has the wrong type"),
    (lambda h: h["machine"].__setitem__("nets", ["tap0"]), "nets[0] is not a JSON object"),
    (lambda h: h.__setitem__("memory_regions", [[0]]), "[gpa, size] pairs"),
    (lambda h: h.__setitem__("machine", []), "config.machine has the wrong type"),
])
def test_bad_headers_are_refused(tmp_path: Path, edit, message: str) -> None:
    from pyvirt.vmm.snapshot_header import config_from_header

    header = _machine_header(tmp_path)
    edit(header)
    with Snapshot.open(str(_header_file(tmp_path, header))) as snap:
        with pytest.raises(SnapshotError) as e:
            config_from_header(snap)
    assert message in str(e.value)
