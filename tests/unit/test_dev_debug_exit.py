"""Tests of the isa-debug-exit port."""

from __future__ import annotations

import pytest

from pyvirt.devices.legacy.debug_exit import DebugExit


@pytest.mark.parametrize("size,value,expect", [(1, 0x31, 0x31), (2, 0x1234, 0x1234), (4, 0xDEADBEEF, 0xDEADBEEF),
                                               (1, 0x1FF, 0xFF)])
def test_write_reports_the_raw_value(size: int, value: int, expect: int) -> None:
    seen: list[int] = []
    DebugExit(seen.append).write(0, size, value)
    assert seen == [expect]


def test_reads_are_all_ones_and_odd_accesses_ignored() -> None:
    seen: list[int] = []
    dev = DebugExit(seen.append)
    assert dev.read(0, 1) == 0xFF
    assert dev.read(0, 4) == 0xFFFFFFFF
    dev.write(1, 1, 1)
    dev.write(0, 3, 1)
    assert seen == []
