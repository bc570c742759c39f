"""Property test: random sequences of writes, zero-writes, discards,
compressed writes, snapshot create/apply/delete, flushes and reopens give
the same bytes as a bytearray model, and leave an image qemu-img check
finds clean."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_qcow2_util import assert_clean, assert_same_as_raw, needs_qemu, read_all

from pyvirt.disk.qcow2 import Qcow2Image, create

CS = 4096
SIZE = 40 * CS + 1024  # a partial last cluster

offsets = st.integers(0, SIZE - 1)
lengths = st.integers(1, 5 * CS)
ops = st.one_of(
    st.tuples(st.just("write"), offsets, lengths, st.integers(0, 255)),
    st.tuples(st.just("zero"), offsets, lengths, st.booleans()),
    st.tuples(st.just("discard"), offsets, lengths, st.just(0)),
    st.tuples(st.just("compressed"), st.integers(0, SIZE // CS), st.integers(0, 255), st.booleans()),
    st.tuples(st.just("snapshot"), st.integers(0, 3), st.just(0), st.just(0)),
    st.tuples(st.just("apply"), st.integers(0, 3), st.just(0), st.just(0)),
    st.tuples(st.just("delete"), st.integers(0, 3), st.just(0), st.just(0)),
    st.tuples(st.just("flush"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("reopen"), st.just(0), st.just(0), st.just(0)),
)


def run_ops(path: Path, version: int, backing: bytes | None, seq: list[tuple[str, int, int, object]]) -> bytearray:
    model = bytearray(backing[:SIZE].ljust(SIZE, b"\0") if backing is not None else bytes(SIZE))
    saved: dict[str, bytes] = {}
    img = Qcow2Image(str(path))
    try:
        for op, a, b, c in seq:
            if op == "write":
                n = min(b, SIZE - a)
                data = bytes([c]) * n if isinstance(c, int) else b""
                img.write_from(a, [memoryview(data)])
                model[a:a + n] = data
            elif op == "zero":
                n = min(b, SIZE - a)
                img.write_zeroes(a, n, bool(c))
                model[a:a + n] = bytes(n)
            elif op == "discard":
                n = min(b, SIZE - a)
                img.discard(a, n)
                lo, hi = -(-a // CS) * CS, (a + n) // CS * CS if a + n != SIZE else SIZE
                if lo < hi:
                    fill = backing[lo:hi].ljust(hi - lo, b"\0") if backing is not None and version == 2 else None
                    model[lo:hi] = fill if fill is not None else bytes(hi - lo)
            elif op == "compressed":
                start = a * CS
                n = min(CS, SIZE - start)
                tail = bytes((i * 31) & 0xFF for i in range(n - n // 2)) if c else b""
                data = (bytes([b]) * (n // 2) + tail).ljust(n, b"\0")
                img.write_compressed_cluster(a, data)
                model[start:start + n] = data
            elif op == "snapshot":
                name = f"s{a}"
                if name not in saved:
                    img.create_snapshot(name)
                    saved[name] = bytes(model)
            elif op == "apply":
                if f"s{a}" in saved:
                    img.apply_snapshot(f"s{a}")
                    model[:] = saved[f"s{a}"]
            elif op == "delete":
                if f"s{a}" in saved:
                    img.delete_snapshot(f"s{a}")
                    del saved[f"s{a}"]
            elif op == "flush":
                img.flush()
            elif op == "reopen":
                img.close()
                img = Qcow2Image(str(path))
        assert read_all(img) == model
        assert img.check().exit_code == 0
    finally:
        img.close()
    return model


@needs_qemu
@pytest.mark.parametrize(("version", "with_backing"), [(3, False), (2, False), (3, True), (2, True)])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seq=st.lists(ops, max_size=30))
def test_random_operations_match_model(tmp_path: Path, version: int, with_backing: bool,
                                       seq: list[tuple[str, int, int, object]]) -> None:
    backing = None
    if with_backing:
        backing = bytes((i * 7 + i // 4096) & 0xFF for i in range(SIZE - 3 * CS))
        (tmp_path / "base.raw").write_bytes(backing)
    path = tmp_path / "m.qcow2"
    create(str(path), SIZE, cluster_size=CS, version=version, backing_file="base.raw" if with_backing else None,
           backing_format="raw" if with_backing else None)
    model = run_ops(path, version, backing, seq)
    assert_clean(path)
    assert_same_as_raw(path, model, tmp_path)
