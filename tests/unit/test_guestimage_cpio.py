"""The newc cpio writer and reader: spec bytes, round trips, corrupt input."""

from __future__ import annotations

import gzip
import io
import stat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirt.guestimage.cpio import HEADER_SIZE, CpioWriter, format_listing, gzip_writer, read_cpio
from pyvirt.guestimage.errors import CpioError


def archive(build, compress: bool = False) -> bytes:
    buf = io.BytesIO()
    if compress:
        with gzip_writer(buf) as gz:
            w = CpioWriter(gz)
            build(w)
            w.close()
    else:
        w = CpioWriter(buf)
        build(w)
        w.close()
    return buf.getvalue()


def sample(w: CpioWriter) -> None:
    w.add_dir("bin")
    w.add_file("bin/busybox", b"\x7fELF" + bytes(range(256)) * 3, 0o755)
    w.add_symlink("bin/sh", "busybox")
    w.add_device("/dev/console", "c", 5, 1, 0o600)
    w.add_device("dev/sda", "b", 8, 0, 0o660)
    w.add_dir("tmp", 0o1777)
    w.add_file("init", b"#!/bin/sh\n", 0o755)


def test_file_header_bytes_match_the_newc_spec() -> None:
    data = archive(lambda w: w.add_file("hello", b"hi!", 0o644))
    expected_header = (b"070701"
                       b"00000001"  # c_ino
                       b"000081A4"  # c_mode: S_IFREG | 0644
                       b"00000000"  # c_uid
                       b"00000000"  # c_gid
                       b"00000001"  # c_nlink
                       b"00000000"  # c_mtime: 0 for reproducible output
                       b"00000003"  # c_filesize
                       b"00000000" b"00000000"  # c_devmajor, c_devminor
                       b"00000000" b"00000000"  # c_rdevmajor, c_rdevminor
                       b"00000006"  # c_namesize: "hello" + NUL
                       b"00000000")  # c_check
    assert len(expected_header) == HEADER_SIZE
    assert data[:HEADER_SIZE] == expected_header
    # 110 + 6 = 116 is a multiple of 4: no name padding; 3 data bytes + 1 pad.
    assert data[HEADER_SIZE:HEADER_SIZE + 6] == b"hello\0"
    assert data[116:120] == b"hi!\0"
    assert data[120:126] == b"070701"


def test_device_and_symlink_fields() -> None:
    data = archive(lambda w: (w.add_device("console", "c", 5, 1, 0o600), w.add_symlink("sh", "busybox")))
    dev = data[:HEADER_SIZE]
    assert dev[14:22] == b"%08X" % (stat.S_IFCHR | 0o600)
    assert dev[78:86] == b"00000005" and dev[86:94] == b"00000001"  # c_rdevmajor, c_rdevminor
    assert dev[54:62] == b"00000000"  # no data
    entries = read_cpio(data)
    assert entries[1].kind == "symlink" and entries[1].data == b"busybox" and entries[1].perm == 0o777


def test_round_trip() -> None:
    entries = read_cpio(archive(sample))
    by_name = {e.name: e for e in entries}
    assert [e.name for e in entries] == ["bin", "bin/busybox", "bin/sh", "dev", "dev/console", "dev/sda", "tmp",
                                         "init"]
    assert by_name["bin/busybox"].kind == "file" and by_name["bin/busybox"].perm == 0o755
    assert by_name["bin/busybox"].data == b"\x7fELF" + bytes(range(256)) * 3
    assert by_name["bin/sh"].target == "busybox"
    assert (by_name["dev/console"].kind, by_name["dev/console"].rdevmajor, by_name["dev/console"].rdevminor) == \
        ("chr", 5, 1)
    assert (by_name["dev/sda"].kind, by_name["dev/sda"].rdevmajor) == ("blk", 8)
    assert by_name["tmp"].perm == 0o1777 and by_name["tmp"].nlink == 2
    assert by_name["dev"].kind == "dir" and by_name["dev"].perm == 0o755  # added as a parent
    assert all(e.mtime == 0 and e.uid == 0 and e.gid == 0 for e in entries)
    inodes = [e.ino for e in entries]
    assert len(set(inodes)) == len(inodes) and 0 not in inodes
    assert "bin/sh -> busybox" in format_listing(entries)


def test_gzip_round_trip_and_reproducible() -> None:
    plain = archive(sample)
    gz1, gz2 = archive(sample, compress=True), archive(sample, compress=True)
    assert gz1 == gz2 and gz1[:2] == b"\x1f\x8b"
    assert gzip.decompress(gz1) == plain
    assert read_cpio(gz1) == read_cpio(plain)
    assert archive(sample) == plain


@pytest.mark.parametrize("name_len", range(1, 9))
@pytest.mark.parametrize("data_len", [0, 1, 2, 3, 4, 5])
def test_padding_keeps_every_header_aligned(name_len: int, data_len: int) -> None:
    name = "n" * name_len
    data = archive(lambda w: (w.add_file(name, b"x" * data_len), w.add_file("next", b"y")))
    entries = read_cpio(data)
    assert [e.name for e in entries] == [name, "next"]
    assert all(e.offset % 4 == 0 for e in entries)
    name_end = HEADER_SIZE + name_len + 1
    data_start = (name_end + 3) & ~3
    assert data[name_end:data_start] == bytes(data_start - name_end)  # name padding is zeros
    data_end = data_start + data_len
    assert data[data_end:entries[1].offset] == bytes(entries[1].offset - data_end)
    assert len(data) % 4 == 0


def test_trailer() -> None:
    data = archive(lambda w: w.add_file("a", b"1"))
    trailer_at = data.rindex(b"070701")
    hdr = data[trailer_at:trailer_at + HEADER_SIZE]
    assert hdr[6:14] == b"00000000"  # ino 0
    assert hdr[38:46] == b"00000001"  # nlink 1, as GNU cpio writes it
    assert hdr[94:102] == b"0000000B"  # "TRAILER!!!" + NUL
    assert data[trailer_at + HEADER_SIZE:] == b"TRAILER!!!\0" + bytes(3)  # 110 + 11 padded to 124
    assert read_cpio(data)[-1].name == "a"  # the trailer is not an entry


def test_writer_rules() -> None:
    w = CpioWriter(io.BytesIO())
    w.add_file("/etc/x", b"")
    assert w.paths == ["etc", "etc/x"]
    w.add_dir("etc")  # same mode: no-op
    with pytest.raises(CpioError, match="already in the archive"):
        w.add_file("etc/x", b"again")
    with pytest.raises(CpioError, match="already in the archive"):
        w.add_dir("etc", 0o700)
    with pytest.raises(CpioError, match="'..'"):
        w.add_file("a/../b", b"")
    with pytest.raises(CpioError, match="root"):
        w.add_dir("/")
    with pytest.raises(CpioError, match="not a directory"):
        w.add_file("etc/x/y", b"")
    with pytest.raises(CpioError, match="kind"):
        w.add_device("dev/x", "x", 1, 1)  # type: ignore[arg-type]
    with pytest.raises(CpioError, match="reserved"):
        w.add_file("TRAILER!!!", b"")
    w.close()
    with pytest.raises(CpioError, match="closed"):
        w.add_file("late", b"")


def test_no_trailer_when_the_build_fails() -> None:
    buf = io.BytesIO()
    with pytest.raises(RuntimeError):
        with CpioWriter(buf) as w:
            w.add_file("a", b"1")
            raise RuntimeError("boom")
    with pytest.raises(CpioError, match="truncated"):
        read_cpio(buf.getvalue())


def test_truncated_archives_raise_clear_errors() -> None:
    data = archive(sample)
    for cut in range(0, len(data) - 1, 7):
        with pytest.raises(CpioError, match="truncated|past the end"):
            read_cpio(data[:cut])


def test_corrupt_archives() -> None:
    data = bytearray(archive(sample))
    with pytest.raises(CpioError, match="bad cpio magic"):
        read_cpio(b"070707" + bytes(data[6:]))
    bad_field = bytearray(data)
    bad_field[14:22] = b"0000ZZ00"
    with pytest.raises(CpioError, match="c_mode.*not 8 hex digits"):
        read_cpio(bytes(bad_field))
    huge = bytearray(data)
    huge[54:62] = b"7FFFFFFF"  # c_filesize
    with pytest.raises(CpioError, match="run past the end"):
        read_cpio(bytes(huge))
    no_nul = bytearray(data)
    no_nul[HEADER_SIZE + 3] = ord("x")  # overwrite the NUL after "bin"
    with pytest.raises(CpioError, match="NUL-terminated"):
        read_cpio(bytes(no_nul))
    with pytest.raises(CpioError, match="gzip"):
        read_cpio(gzip.compress(bytes(data))[:-10])


def test_crc_variant_checksum() -> None:
    body = b"abc"
    def entry(check: int) -> bytes:
        fields = (1, stat.S_IFREG | 0o644, 0, 0, 1, 0, len(body), 0, 0, 0, 0, 2, check)
        return b"070702" + b"".join(b"%08X" % v for v in fields) + b"f\0" + body + b"\0"
    trailer = archive(lambda w: None)
    assert read_cpio(entry(sum(body)) + trailer)[0].data == body
    with pytest.raises(CpioError, match="checksum"):
        read_cpio(entry(1) + trailer)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_archives_only_raise_cpio_error(data: st.DataObject) -> None:
    raw = bytearray(archive(sample))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        read_cpio(bytes(raw[:cut]))
    except CpioError:
        pass
