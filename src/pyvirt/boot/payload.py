"""The compressed kernel inside a bzImage, and how to decompress it on the host.

A bzImage (boot protocol 2.08+) says where its compressed vmlinux is:
payload_offset (0x248, from the start of the protected-mode part) and
payload_length (0x24c). The first bytes name the compressor. Decompressing in
the VMM (C code in zlib/lzma/lz4/zstd) lets pyvirt start the kernel's own
64-bit entry directly, skipping the guest-side decompressor: on hosts that
emulate guest kernel code (kvm_pvm), that decompressor alone takes minutes.
"""

from __future__ import annotations

import struct

from .common import BootError

PAYLOAD_OFFSET = 0x248
PAYLOAD_LENGTH = 0x24C
MAX_KERNEL = 512 << 20  # no vmlinux is this big; refuse decompression bombs

MAGICS: list[tuple[bytes, str]] = [
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x5d\x00\x00", "lzma"),
    (b"BZh", "bzip2"),
    (b"\x02\x21\x4c\x18", "lz4"),  # legacy frame, as the kernel's lz4 decompressor wants
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x89LZO", "lzo"),
    (b"\x7fELF", "none"),
]


def compression_of(payload: bytes) -> str:
    for magic, name in MAGICS:
        if payload.startswith(magic):
            return name
    return "unknown"


def extract_payload(bzimage: bytes) -> tuple[bytes, str]:
    """The compressed payload and its compressor's name."""
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        raise BootError("not a bzImage: no 'HdrS' setup header at 0x202")
    version = struct.unpack_from("<H", bzimage, 0x206)[0]
    if version < 0x208:
        raise BootError(f"boot protocol {version >> 8}.{version & 0xff:02d} has no payload fields (needs 2.08+)")
    setup_sects = bzimage[0x1F1] or 4
    base = (setup_sects + 1) * 512
    off, length = struct.unpack_from("<II", bzimage, PAYLOAD_OFFSET)
    start = base + off
    if length == 0 or start + length > len(bzimage):
        raise BootError(f"bzImage payload {start:#x}+{length:#x} lies outside the {len(bzimage)}-byte file")
    payload = bzimage[start : start + length]
    return payload, compression_of(payload)


def decompress(payload: bytes, kind: str) -> bytes:
    """The uncompressed vmlinux; BootError naming what is missing or wrong."""
    try:
        if kind == "none":
            return payload
        if kind == "gzip":
            import zlib

            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out = d.decompress(payload, MAX_KERNEL)
        elif kind in ("xz", "lzma"):
            import lzma

            dx = lzma.LZMADecompressor(lzma.FORMAT_XZ if kind == "xz" else lzma.FORMAT_ALONE)
            out = dx.decompress(payload, MAX_KERNEL)
        elif kind == "bzip2":
            import bz2

            out = bz2.BZ2Decompressor().decompress(payload, MAX_KERNEL)
        elif kind == "lz4":
            out = _lz4_legacy(payload)
        elif kind == "zstd":
            out = _zstd(payload)
        else:
            raise BootError(f"the kernel payload is compressed with {kind}, which pyvirt cannot decompress")
    except BootError:
        raise
    except Exception as e:  # corrupt data: each library raises its own type
        raise BootError(f"the {kind} kernel payload is corrupt: {e}") from e
    if len(out) >= MAX_KERNEL:
        raise BootError(f"the kernel payload decompresses to more than {MAX_KERNEL >> 20} MiB; refusing it")
    return out


def _lz4_legacy(payload: bytes) -> bytes:
    """LZ4 legacy frame: magic, then blocks of {u32 compressed size, LZ4 block},
    each decompressing to at most 8 MiB."""
    try:
        import lz4.block  # type: ignore[import-not-found]
    except ImportError as e:
        raise BootError("this kernel is LZ4-compressed: install the 'lz4' Python package") from e
    out = bytearray()
    pos = 4
    while pos + 4 <= len(payload):
        (size,) = struct.unpack_from("<I", payload, pos)
        if size == 0x184C2102:  # a concatenated frame starts again
            pos += 4
            continue
        pos += 4
        if size == 0 or pos + size > len(payload):
            break  # trailing bytes: the kernel appends its uncompressed size
        out += lz4.block.decompress(payload[pos : pos + size], uncompressed_size=8 << 20)
        pos += size
        if len(out) >= MAX_KERNEL:
            break
    return bytes(out)


def _zstd(payload: bytes) -> bytes:
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError as e:
        raise BootError("this kernel is zstd-compressed: install the 'zstandard' Python package") from e
    return zstandard.ZstdDecompressor().decompressobj().decompress(payload)


def vmlinux_of(bzimage: bytes) -> bytes:
    """The ELF vmlinux inside a bzImage."""
    payload, kind = extract_payload(bzimage)
    out = decompress(payload, kind)
    if not out.startswith(b"\x7fELF"):
        raise BootError(f"the {kind} payload does not decompress to an ELF kernel")
    return out
