#!/usr/bin/env python3
"""Assemble a Linux x86 boot protocol image (bzImage) for a guest-kit payload.

    mkbzimage.py --setup SETUP.bin --payload PAYLOAD.bin --elf PAYLOAD.elf -o OUT

SETUP.bin is the real-mode part (boot sector plus setup sectors, from
bzimage_setup.S); this script writes its setup header (protocol 2.12) and
appends the protected-mode payload, which the loader puts at 0x100000.
PAYLOAD.elf is the linked payload: its program headers give the memory the
payload needs once running (init_size), its entry point must be the 64-bit
entry at load address + 0x200.
"""

from __future__ import annotations

import argparse
import struct
import sys

LOAD_ADDR = 0x100000
ENTRY64_OFFSET = 0x200
BOOT_PROTOCOL = 0x020C  # 2.12: first version with xloadflags
LOADED_HIGH = 0x01
XLF_KERNEL_64 = 0x01
CMDLINE_SIZE = 4095


def elf_extent(path: str) -> tuple[int, int]:
    """(entry, end of the highest PT_LOAD in memory) of an ELF64 file."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise SystemExit(f"{path}: not an ELF64 file")
    entry, phoff = struct.unpack_from("<QQ", data, 0x18)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    end = 0
    for i in range(phnum):
        p_type, _flags, _off, _vaddr, paddr, _filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == 1:  # PT_LOAD
            end = max(end, paddr + memsz)
    return entry, end


def build(setup: bytes, payload: bytes, entry: int, mem_end: int) -> bytes:
    if len(setup) % 512 or len(setup) < 1024:
        raise SystemExit("setup must be whole sectors, at least two")
    if entry != LOAD_ADDR + ENTRY64_OFFSET:
        raise SystemExit(f"payload entry {entry:#x} is not the 64-bit entry {LOAD_ADDR + ENTRY64_OFFSET:#x}")
    init_size = (mem_end - LOAD_ADDR + 0xFFF) & ~0xFFF
    hdr = bytearray(setup)

    def put(fmt: str, off: int, value: int | bytes) -> None:
        struct.pack_into("<" + fmt, hdr, off, value)

    put("B", 0x1F1, len(setup) // 512 - 1)  # setup_sects (boot sector not counted)
    put("H", 0x1F2, 0)  # root_flags
    put("I", 0x1F4, (len(payload) + 15) // 16)  # syssize, 16-byte units
    put("H", 0x1FA, 0xFFFF)  # vid_mode: "normal"
    put("H", 0x1FC, 0)  # root_dev
    put("H", 0x1FE, 0xAA55)  # boot_flag
    # 0x200: the jump instruction, from bzimage_setup.S
    put("4s", 0x202, b"HdrS")
    put("H", 0x206, BOOT_PROTOCOL)
    put("I", 0x208, 0)  # realmode_swtch
    put("H", 0x20C, 0x1000)  # start_sys_seg (obsolete)
    put("H", 0x20E, 0)  # kernel_version: none
    put("B", 0x210, 0)  # type_of_loader: the loader fills it in
    put("B", 0x211, LOADED_HIGH)  # loadflags: payload at 0x100000
    put("H", 0x212, 0)  # setup_move_size
    put("I", 0x214, LOAD_ADDR)  # code32_start: the 32-bit entry
    put("I", 0x218, 0)  # ramdisk_image
    put("I", 0x21C, 0)  # ramdisk_size
    put("I", 0x220, 0)  # bootsect_kludge
    put("H", 0x224, 0)  # heap_end_ptr
    put("I", 0x228, 0)  # cmd_line_ptr: the loader fills it in
    put("I", 0x22C, 0x7FFFFFFF)  # initrd_addr_max
    put("I", 0x230, LOAD_ADDR)  # kernel_alignment (not relocatable: load at 1 MiB)
    put("B", 0x234, 0)  # relocatable_kernel: no
    put("B", 0x235, 20)  # min_alignment: 2^20
    put("H", 0x236, XLF_KERNEL_64)  # xloadflags: has the 64-bit entry at +0x200
    put("I", 0x238, CMDLINE_SIZE)
    put("I", 0x23C, 0)  # hardware_subarch: default PC
    put("Q", 0x240, 0)  # hardware_subarch_data
    put("I", 0x248, 0)  # payload_offset: not a compressed kernel
    put("I", 0x24C, 0)  # payload_length
    put("Q", 0x250, 0)  # setup_data
    put("Q", 0x258, LOAD_ADDR)  # pref_address
    put("I", 0x260, init_size)  # init_size: image + .bss + stacks
    put("I", 0x264, 0)  # handover_offset: no EFI handover
    return bytes(hdr) + payload


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup", required=True)
    ap.add_argument("--payload", required=True)
    ap.add_argument("--elf", required=True)
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args(argv)
    with open(a.setup, "rb") as f:
        setup = f.read()
    with open(a.payload, "rb") as f:
        payload = f.read()
    entry, mem_end = elf_extent(a.elf)
    image = build(setup, payload, entry, mem_end)
    with open(a.output, "wb") as f:
        f.write(image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
