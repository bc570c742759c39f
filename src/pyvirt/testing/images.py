"""Tiny kernel images built in memory, for tests that need a guest but not the guest kit.

`pvh_elf(code)` wraps raw 32-bit code in the smallest ELF a PVH loader
accepts: one PT_LOAD segment at 1 MiB and a PT_NOTE with the Xen
PHYS32_ENTRY note (type 18).
"""

from __future__ import annotations

import struct

XEN_ELFNOTE_PHYS32_ENTRY = 18


def pvh_elf(code: bytes, load_addr: int = 0x100000) -> bytes:
    ehdr_size, phdr_size = 64, 56
    note = struct.pack("<III", 4, 4, XEN_ELFNOTE_PHYS32_ENTRY) + b"Xen\0" + struct.pack("<I", load_addr)
    note_off = ehdr_size + 2 * phdr_size
    code_off = (note_off + len(note) + 15) & ~15
    ehdr = struct.pack(
        "<4sBBBBB7sHHIQQQIHHHHHH",
        b"\x7fELF", 2, 1, 1, 0, 0, bytes(7),
        2, 0x3E, 1, load_addr, ehdr_size, 0, 0, ehdr_size, phdr_size, 2, 64, 0, 0,
    )
    load = struct.pack("<IIQQQQQQ", 1, 5, code_off, load_addr, load_addr, len(code), len(code), 0x1000)
    pnote = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    image = bytearray(ehdr + load + pnote + note)
    image += bytes(code_off - len(image))
    return bytes(image + code)


# 32-bit code snippets (entered in flat protected mode, paging off).
OUT_DEBUG_EXIT = bytes.fromhex("b0 00 e6 f4")  # mov al, 0 ; out 0xf4, al
HANG = bytes.fromhex("fa f4 eb fd")  # cli ; hlt ; jmp back to hlt
DIVIDE_ERROR = bytes.fromhex("31 c0 f7 f0")  # xor eax, eax ; div eax  -> #DE with no IDT
UD2 = bytes.fromhex("0f 0b")


def exit_with(value: int) -> bytes:
    """mov al, value ; out 0xf4, al ; then hang."""
    return bytes([0xB0, value & 0xFF, 0xE6, 0xF4]) + HANG


def print_text(text: bytes) -> bytes:
    """Write `text` to COM1 byte by byte."""
    code = bytearray(bytes.fromhex("66 ba f8 03"))  # mov dx, 0x3f8
    for b in text:
        code += bytes([0xB0, b, 0xEE])  # mov al, b ; out dx, al
    return bytes(code)


def print_then_exit(text: bytes, value: int) -> bytes:
    """Write `text` to COM1, then exit through debug-exit."""
    return print_text(text) + exit_with(value)


def print_then_hang(text: bytes) -> bytes:
    """Write `text` to COM1, then halt with interrupts off until stopped from outside."""
    return print_text(text) + HANG

# Poll COM1's LSR for data, echo each byte back, exit(0) after echoing 'q'.
ECHO_UNTIL_Q = bytes.fromhex("66bafd03eca80174fb66baf803ecee3c7175edb000e6f4f4ebfd")
