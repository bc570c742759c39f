"""Tests of the fw_cfg legacy port interface."""

from __future__ import annotations

import struct

import pytest

from pyvirt.devices.legacy.fw_cfg import FwCfg

E820 = struct.pack("<QQI", 0, 0x9FC00, 1) + struct.pack("<QQI", 0x100000, 0x7F00000, 1)


def select(cfg: FwCfg, key: int) -> None:
    cfg.write(0, 2, key)


def read_item(cfg: FwCfg, key: int, n: int) -> bytes:
    select(cfg, key)
    return bytes(cfg.read(1, 1) for _ in range(n))


def directory(cfg: FwCfg) -> dict[str, tuple[int, int]]:
    select(cfg, 0x19)
    count = int.from_bytes(bytes(cfg.read(1, 1) for _ in range(4)), "big")
    files = {}
    for _ in range(count):
        raw = bytes(cfg.read(1, 1) for _ in range(64))
        size, key, reserved, name = struct.unpack(">IHH56s", raw)
        assert reserved == 0
        files[name.rstrip(b"\0").decode()] = (size, key)
    return files


@pytest.fixture
def cfg() -> FwCfg:
    return FwCfg.for_vm(ncpus=4, ram_size=512 << 20, cmdline=b"console=ttyS0 quiet", e820=E820)


def test_signature_and_id(cfg: FwCfg) -> None:
    assert read_item(cfg, 0x00, 4) == b"QEMU"
    assert read_item(cfg, 0x01, 4) == b"\x01\x00\x00\x00"  # traditional interface, no DMA


def test_machine_items(cfg: FwCfg) -> None:
    assert int.from_bytes(read_item(cfg, 0x03, 8), "little") == 512 << 20
    assert read_item(cfg, 0x05, 2) == b"\x04\x00"
    assert read_item(cfg, 0x0F, 2) == b"\x04\x00"


def test_command_line(cfg: FwCfg) -> None:
    size = int.from_bytes(read_item(cfg, 0x14, 4), "little")
    assert size == len(b"console=ttyS0 quiet") + 1
    assert read_item(cfg, 0x15, size) == b"console=ttyS0 quiet\0"


def test_empty_command_line_is_just_a_nul() -> None:
    cfg = FwCfg.for_vm(1, 64 << 20)
    assert read_item(cfg, 0x14, 4) == b"\x01\x00\x00\x00"
    assert read_item(cfg, 0x15, 1) == b"\0"
    assert directory(cfg) == {}


def test_file_directory_and_contents(cfg: FwCfg) -> None:
    key = cfg.add_file("etc/boot-fail-wait", b"\x05\x00\x00\x00")
    files = directory(cfg)
    assert files == {"etc/e820": (len(E820), 0x20), "etc/boot-fail-wait": (4, key)}
    assert key == 0x21
    assert read_item(cfg, 0x20, len(E820)) == E820


def test_reads_past_the_end_and_of_unknown_keys_are_zero(cfg: FwCfg) -> None:
    assert read_item(cfg, 0x00, 8) == b"QEMU\0\0\0\0"
    assert read_item(cfg, 0x1234, 4) == bytes(4)


def test_selecting_rewinds_and_wide_reads_are_successive_bytes(cfg: FwCfg) -> None:
    select(cfg, 0x00)
    assert cfg.read(1, 1) == ord("Q")
    select(cfg, 0x00)
    assert cfg.read(1, 4) == int.from_bytes(b"QEMU", "little")
    select(cfg, 0x00)
    assert cfg.read(1, 2) == int.from_bytes(b"QE", "little")
    assert cfg.read(1, 4) == int.from_bytes(b"MU\0\0", "little")


def test_byte_and_dword_selector_writes(cfg: FwCfg) -> None:
    cfg.write(0, 1, 0x05)
    assert cfg.read(1, 1) == 4
    cfg.write(0, 4, 0xABCD0000)  # low 16 bits: key 0
    assert cfg.read(1, 1) == ord("Q")


def test_selector_port_reads_all_ones_and_data_writes_are_ignored(cfg: FwCfg) -> None:
    select(cfg, 0x00)
    assert cfg.read(0, 1) == 0xFF
    cfg.write(1, 1, 0x99)
    assert cfg.read(1, 1) == ord("Q")


def test_add_file_rejects_bad_names(cfg: FwCfg) -> None:
    with pytest.raises(ValueError):
        cfg.add_file("etc/e820", b"")
    with pytest.raises(ValueError):
        cfg.add_file("x" * 56, b"")
    with pytest.raises(ValueError):
        cfg.add_file("", b"")
    with pytest.raises(ValueError):
        cfg.add_item(0x19, b"")
    with pytest.raises(ValueError):
        FwCfg.for_vm(0, 1 << 20)
    with pytest.raises(ValueError):
        FwCfg.for_vm(1, 1 << 20, cmdline=b"a\0b")
