"""Compressed clusters: raw deflate (zlib without header, 4 KiB window, as
qemu writes them) in, exactly one cluster out. Pure code."""

from __future__ import annotations

import zlib

from .errors import Qcow2Error


def compress_cluster(data: bytes | bytearray | memoryview, cluster_size: int) -> bytes | None:
    """Deflate one cluster; None when that does not make it smaller (then it
    is stored as a normal cluster)."""
    c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -12, 9, zlib.Z_DEFAULT_STRATEGY)
    out = c.compress(data) + c.flush()
    return out if len(out) < cluster_size else None


def decompress_cluster(buf: bytes, cluster_size: int, where: str) -> bytes:
    """Inflate compressed cluster data; Qcow2Error unless it yields a whole cluster."""
    d = zlib.decompressobj(-15)  # a 32 KiB window also reads streams made with a smaller one
    try:
        out = d.decompress(buf, cluster_size)
    except zlib.error as e:
        raise Qcow2Error(f"{where}: compressed cluster data is corrupt ({e})") from None
    if len(out) != cluster_size:
        raise Qcow2Error(f"{where}: compressed cluster data yields {len(out)} bytes, not a cluster "
                         f"({cluster_size} bytes)")
    return out
