"""Loaders against real images: the guest kit's build output and the host's kernel.

Skipped when the files are absent (run `make -C guests` to build the kit).
"""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
from boot_images import MEM_SIZE, new_mem

from pyvirt.arch.x86 import layout
from pyvirt.boot import load_kernel
from pyvirt.boot.elf import parse_elf

GUEST_BUILD = Path(__file__).resolve().parents[2] / "guests" / "build"

KIT = [
    ("hello.elf", "pvh", "protected32"),
    ("hello-multiboot.elf", "multiboot", "protected32"),
    ("hello-bzimage.bin", "linux", "long64"),
    ("hello-bzimage.elf", "elf64", "long64"),
]


@pytest.mark.parametrize("name, protocol, mode", KIT)
def test_guest_kit_image(name: str, protocol: str, mode: str) -> None:
    path = GUEST_BUILD / name
    if not path.is_file():
        pytest.skip(f"{path} not built (make -C guests)")
    data = path.read_bytes()
    mem = new_mem()
    spec = load_kernel(mem, data, mem_size=MEM_SIZE, cmdline="test=1", initrd=b"initrd!" * 100,
                       kernel_name=str(path))
    assert spec.protocol == protocol and spec.mode == mode
    assert spec.kernel_start <= spec.entry < spec.kernel_end
    assert spec.initrd is not None and mem.read(spec.initrd[0], 7) == b"initrd!"
    if data[:4] == b"\x7fELF":
        for p in parse_elf(data).loads:
            assert mem.read(p.paddr, p.filesz) == data[p.offset : p.offset + p.filesz]
    if protocol == "multiboot":
        assert mem.read_cstr(mem.read_u32(layout.MULTIBOOT_INFO + 16)) == f"{name} test=1".encode()
    else:
        assert mem.read_cstr(layout.CMDLINE) == b"test=1"


HOST_KERNELS = sorted(glob.glob("/boot/vmlinuz-*"))


@pytest.mark.skipif(not HOST_KERNELS, reason="no /boot/vmlinuz-* on this host")
@pytest.mark.parametrize("path", HOST_KERNELS or ["none"])
def test_host_bzimage(path: str) -> None:
    try:
        data = Path(path).read_bytes()
    except PermissionError:
        pytest.skip(f"{path} is not readable")
    mem = new_mem(256 * layout.MiB)
    spec = load_kernel(mem, data, mem_size=256 * layout.MiB, cmdline="console=ttyS0", initrd=bytes(1 << 20))
    assert spec.protocol == "linux" and spec.mode == "long64"
    assert spec.entry == spec.kernel_start + 0x200
    assert mem.read(layout.ZERO_PAGE + 0x202, 4) == b"HdrS"
