"""Format detection, `prefer`, and a fuzz test: nothing but BootError may escape load_kernel."""

from __future__ import annotations

import pytest
from boot_images import (
    MEM_SIZE,
    build_bzimage,
    build_multiboot_aout,
    build_multiboot_elf,
    build_pvh,
    build_vmlinux,
    new_mem,
    pvh_note,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirt.boot import BootError, BootSpec, load_kernel, supported_protocols

NOT_A_KERNEL = (
    "not a kernel pyvirt can boot: expected a PVH ELF (Xen note 18), a Linux bzImage (boot protocol 2.06+), "
    "an x86-64 ELF vmlinux or a multiboot v1 image"
)


@pytest.mark.parametrize(
    "image, protocols",
    [
        (build_pvh(), ("pvh", "elf64")),
        (build_pvh(elf_class=32), ("pvh",)),
        (build_bzimage(), ("linux",)),
        (build_vmlinux(), ("elf64",)),
        (build_multiboot_elf(), ("multiboot",)),
        (build_multiboot_elf(elf_class=64), ("multiboot", "elf64")),
        (build_multiboot_elf(extra_notes=[pvh_note(0x100000)]), ("pvh", "multiboot")),
        (build_multiboot_aout(), ("multiboot",)),
        (b"", ()),
        (b"#!/bin/sh\necho hi\n", ()),
    ],
)
def test_supported_protocols(image: bytes, protocols: tuple[str, ...]) -> None:
    assert supported_protocols(image) == protocols


@pytest.mark.parametrize("data", [b"", b"\0" * 100, b"MZ" + bytes(5000), b"hello world" * 1000])
def test_not_a_kernel(data: bytes) -> None:
    with pytest.raises(BootError) as e:
        load_kernel(new_mem(), data, mem_size=MEM_SIZE)
    assert str(e.value) == NOT_A_KERNEL


def test_truncated_elf_reports_the_elf_problem() -> None:
    with pytest.raises(BootError, match="truncated ELF"):
        load_kernel(new_mem(), build_vmlinux()[:200], mem_size=MEM_SIZE)


def test_prefer() -> None:
    spec = load_kernel(new_mem(), build_pvh(), mem_size=MEM_SIZE, prefer="elf64")
    assert spec.protocol == "elf64" and spec.mode == "long64"
    with pytest.raises(BootError, match=r"pvh protocol: it has no PVH entry note.*booted as: linux"):
        load_kernel(new_mem(), build_bzimage(), mem_size=MEM_SIZE, prefer="pvh")
    with pytest.raises(BootError, match="unknown boot protocol 'efi'"):
        load_kernel(new_mem(), build_bzimage(), mem_size=MEM_SIZE, prefer="efi")


def test_bootspec_is_frozen_and_hashable() -> None:
    spec = load_kernel(new_mem(), build_pvh(), mem_size=MEM_SIZE)
    with pytest.raises(AttributeError):
        spec.entry = 0  # type: ignore[misc]
    hash(spec)


def test_guest_too_small() -> None:
    with pytest.raises(BootError, match="too small"):
        load_kernel(new_mem(1 << 20), build_pvh(), mem_size=1 << 20)


def test_mem_size_larger_than_guest_memory() -> None:
    # A VMM bug (mem_size says 64 MiB, only 8 MiB mapped) is still a BootError, not GuestMemoryError.
    with pytest.raises(BootError):
        load_kernel(new_mem(8 << 20), build_vmlinux(), mem_size=MEM_SIZE)


def test_bytearray_and_memoryview_input() -> None:
    img = build_pvh()
    assert load_kernel(new_mem(), bytearray(img), mem_size=MEM_SIZE).protocol == "pvh"
    assert load_kernel(new_mem(), memoryview(img), mem_size=MEM_SIZE).protocol == "pvh"


# --- fuzzing ---------------------------------------------------------------------------------

SEEDS = [
    build_pvh(),
    build_pvh(elf_class=32, notes_in="section"),
    build_vmlinux(),
    build_bzimage(payload=bytes(512)),
    build_multiboot_elf(),
    build_multiboot_aout(size=0x400, bss_end=0x101000),
]
_FUZZ_MEM = new_mem()


def _check(data: bytes, initrd: bytes | None = None, cmdline: str = "") -> None:
    try:
        spec = load_kernel(_FUZZ_MEM, data, mem_size=MEM_SIZE, cmdline=cmdline, initrd=initrd)
    except BootError:
        return
    assert isinstance(spec, BootSpec)
    assert 0 <= spec.entry < 1 << 32
    assert spec.kernel_start <= spec.kernel_end <= MEM_SIZE


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes(data: bytes) -> None:
    _check(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(range(len(SEEDS))),
    edits=st.lists(st.tuples(st.integers(0, 0x1000), st.integers(0, 255)), max_size=12),
    cut=st.one_of(st.none(), st.integers(0, 0x3000)),
    initrd=st.one_of(st.none(), st.binary(min_size=0, max_size=64)),
)
def test_fuzz_mutated_images(seed: int, edits: list[tuple[int, int]], cut: int | None, initrd: bytes | None) -> None:
    data = bytearray(SEEDS[seed])
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    if cut is not None:
        del data[cut:]
    _check(bytes(data), initrd, "console=ttyS0")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from([0, 2, 4]),
    field_at=st.sampled_from([24, 32, 40, 54, 56, 58, 60, 62, 64, 72, 80, 88, 96, 104, 112]),
    value=st.one_of(st.integers(0, 0xFF), st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1),
                    st.integers(0, 2**64 - 1), st.sampled_from([2**63, 2**64 - 1, 2**32, 0x7FFFFFFF])),
)
def test_fuzz_elf_header_fields(seed: int, field_at: int, value: int) -> None:
    """Overwrite one header or program header field with an extreme value."""
    data = bytearray(SEEDS[seed])
    width = 8 if value >= 2**32 or field_at in (24, 32, 40) else (4 if value > 0xFFFF else 2)
    if field_at + width <= len(data):
        data[field_at : field_at + width] = value.to_bytes(8, "little")[:width]
    _check(bytes(data))
