"""Linux bzImage: setup header parsing, boot_params contents, placement and entry."""

from __future__ import annotations

import struct

import pytest
from boot_images import MEM_SIZE, build_bzimage, new_mem

from pyvirt.arch.x86 import layout
from pyvirt.boot import BootError, load_kernel
from pyvirt.boot.bootparams import SetupHeader

ZP = layout.ZERO_PAGE


def u8(mem, off: int) -> int:  # type: ignore[no-untyped-def]
    return mem.read(ZP + off, 1)[0]


def u16(mem, off: int) -> int:  # type: ignore[no-untyped-def]
    return mem.read_u16(ZP + off)


def u32(mem, off: int) -> int:  # type: ignore[no-untyped-def]
    return mem.read_u32(ZP + off)


def test_parse_setup_header() -> None:
    hdr = SetupHeader.parse(build_bzimage(setup_sects=0, header_len=0x6A))
    assert hdr.setup_sects == 4 and hdr.setup_size == 5 * 512
    assert hdr.version == 0x020F
    assert hdr.relocatable_kernel and hdr.kernel_alignment == 0x200000
    assert hdr.xloadflags == 1 and hdr.cmdline_size == 2047
    assert hdr.pref_address == 0x1000000 and hdr.init_size == 0x800000
    assert hdr.header_end == 0x26C


def test_fields_past_header_end_read_as_zero() -> None:
    # A 2.06 header ends at 0x23c: pref_address etc. belong to setup code there.
    img = bytearray(build_bzimage(version=0x0206, header_len=0x3A))
    struct.pack_into("<I", img, 0x260, 0xDEAD)
    hdr = SetupHeader.parse(bytes(img))
    assert hdr.header_end == 0x23C and hdr.init_size == 0 and hdr.pref_address == 0


def test_64bit_entry_and_boot_params() -> None:
    mem = new_mem()
    img = build_bzimage()
    spec = load_kernel(mem, img, mem_size=MEM_SIZE, cmdline="console=ttyS0", rsdp_addr=0xE0000)
    assert spec.protocol == "linux" and spec.mode == "long64"
    assert spec.entry == 0x100000 + 0x200
    assert spec.regs == {"rsi": ZP}
    payload = img[5 * 512 :]
    assert (spec.kernel_start, spec.kernel_end) == (0x100000, 0x100000 + len(payload))
    assert mem.read(0x100000, len(payload)) == payload
    # header copy: 0x1f1 up to 0x202 + byte at 0x201, except the fields the loader writes
    assert mem.read(ZP + 0x1F1, 0x210 - 0x1F1) == img[0x1F1:0x210]
    assert mem.read(ZP + 0x22C, 0x26C - 0x22C) == img[0x22C:0x26C]
    assert mem.read(ZP + 0x26C, 16) == bytes(16)  # setup code after the header is not copied
    assert mem.read(ZP + 0x202, 4) == b"HdrS" and u16(mem, 0x1FE) == 0xAA55
    assert u8(mem, 0x210) == 0xFF  # type_of_loader
    assert u8(mem, 0x211) == 0x81  # LOADED_HIGH | CAN_USE_HEAP
    assert u16(mem, 0x224) == 0xFE00  # heap_end_ptr
    assert u32(mem, 0x228) == layout.CMDLINE
    assert mem.read_cstr(layout.CMDLINE) == b"console=ttyS0"
    assert u32(mem, 0x214) == 0x100000  # code32_start
    assert (u32(mem, 0x218), u32(mem, 0x21C)) == (0, 0)  # no ramdisk
    assert mem.read_u64(ZP + 0x070) == 0xE0000  # acpi_rsdp_addr
    assert u8(mem, 0x1EF) == 0  # sentinel
    e820 = layout.e820_map(MEM_SIZE)
    assert u8(mem, 0x1E8) == len(e820)
    for i, e in enumerate(e820):
        assert struct.unpack("<QQI", mem.read(ZP + 0x2D0 + 20 * i, 20)) == (e.addr, e.size, e.type)
    assert mem.read(ZP + 0x2D0 + 20 * len(e820), 20) == bytes(20)


def test_32bit_entry() -> None:
    spec = load_kernel(new_mem(), build_bzimage(xloadflags=0), mem_size=MEM_SIZE)
    assert spec.mode == "protected32" and spec.entry == 0x100000 and spec.regs == {"rsi": ZP}


def test_xloadflags_ignored_before_2_12() -> None:
    spec = load_kernel(new_mem(), build_bzimage(version=0x020A, xloadflags=1), mem_size=MEM_SIZE)
    assert spec.mode == "protected32"


def test_non_relocatable_kernel_goes_to_pref_address() -> None:
    mem = new_mem()
    img = build_bzimage(relocatable=0, pref_address=0x1000000)
    spec = load_kernel(mem, img, mem_size=MEM_SIZE)
    assert spec.kernel_start == 0x1000000 and spec.entry == 0x1000200
    assert mem.read_u32(ZP + 0x214) == 0x1000000
    assert mem.read(0x1000000, 64) == img[5 * 512 : 5 * 512 + 64]


def test_non_relocatable_with_unusable_pref_address_goes_to_1mib() -> None:
    spec = load_kernel(new_mem(), build_bzimage(relocatable=0, pref_address=0x12345), mem_size=MEM_SIZE)
    assert spec.kernel_start == 0x100000


def test_initrd_placement() -> None:
    mem = new_mem()
    initrd = bytes(range(256)) * 40 + b"tail"
    spec = load_kernel(mem, build_bzimage(), mem_size=MEM_SIZE, initrd=initrd)
    assert spec.initrd is not None
    gpa, size = spec.initrd
    assert size == len(initrd) and gpa % 4096 == 0
    assert gpa + size <= MEM_SIZE and MEM_SIZE - (gpa + size) < 4096
    assert mem.read(gpa, size) == initrd
    assert (u32(mem, 0x218), u32(mem, 0x21C)) == (gpa, size)


def test_initrd_respects_initrd_addr_max() -> None:
    mem = new_mem()
    spec = load_kernel(mem, build_bzimage(initrd_addr_max=0x1FFFFFF), mem_size=MEM_SIZE, initrd=b"x" * 5000)
    assert spec.initrd is not None
    gpa, size = spec.initrd
    assert gpa + size <= 0x2000000 and gpa == 0x2000000 - 0x2000


def test_initrd_avoids_kernel_init_size() -> None:
    # relocatable kernel runs at max(1 MiB, pref_address) aligned = 16 MiB and needs 40 MiB from there:
    # only 64 - 56 = 8 MiB remain for the initrd.
    img = build_bzimage(init_size=40 << 20)
    spec = load_kernel(new_mem(), img, mem_size=MEM_SIZE, initrd=bytes(7 << 20))
    assert spec.initrd is not None and spec.initrd[0] >= 56 << 20
    with pytest.raises(BootError, match=r"initrd of 9 MiB does not fit below 0x4000000.*give the VM more memory"):
        load_kernel(new_mem(), img, mem_size=MEM_SIZE, initrd=bytes(9 << 20))


def test_initrd_too_big() -> None:
    with pytest.raises(BootError, match="initrd of 100 MiB does not fit"):
        load_kernel(new_mem(), build_bzimage(), mem_size=MEM_SIZE, initrd=bytes(100 << 20))


def test_kernel_needs_more_memory_than_vm_has() -> None:
    with pytest.raises(BootError, match="give the VM more memory"):
        load_kernel(new_mem(), build_bzimage(init_size=60 << 20), mem_size=MEM_SIZE)


def test_cmdline_too_long() -> None:
    img = build_bzimage(cmdline_size=255)
    load_kernel(new_mem(), img, mem_size=MEM_SIZE, cmdline="x" * 255)
    with pytest.raises(BootError, match="256 bytes but this kernel accepts at most 255; shorten it"):
        load_kernel(new_mem(), img, mem_size=MEM_SIZE, cmdline="x" * 256)


@pytest.mark.parametrize("version, shown", [(0x0205, "2.05"), (0x0200, "2.00"), (0x0103, "1.03")])
def test_protocol_too_old(version: int, shown: str) -> None:
    with pytest.raises(BootError, match=rf"boot protocol {shown} is too old; pyvirt needs 2.06\+"):
        load_kernel(new_mem(), build_bzimage(version=version), mem_size=MEM_SIZE)


def test_zimage_refused() -> None:
    with pytest.raises(BootError, match="zImage"):
        load_kernel(new_mem(), build_bzimage(loadflags=0), mem_size=MEM_SIZE)


def test_truncated_bzimage() -> None:
    img = build_bzimage()
    with pytest.raises(BootError, match="truncated bzImage"):
        load_kernel(new_mem(), img[: 3 * 512], mem_size=MEM_SIZE)
    with pytest.raises(BootError, match="truncated bzImage"):
        load_kernel(new_mem(), img[:0x240], mem_size=MEM_SIZE)


def test_header_too_short_for_its_version() -> None:
    with pytest.raises(BootError, match="setup header ends at"):
        load_kernel(new_mem(), build_bzimage(header_len=0x10), mem_size=MEM_SIZE)


def test_old_kernel_without_init_size_gets_default_initrd_limit() -> None:
    img = build_bzimage(version=0x0206, header_len=0x3A, initrd_addr_max=0)
    hdr = SetupHeader.parse(img)
    assert hdr.initrd_addr_max == 0x37FFFFFF
    spec = load_kernel(new_mem(), img, mem_size=MEM_SIZE, initrd=b"r" * 100)
    assert spec.initrd is not None and spec.initrd[0] % 4096 == 0
