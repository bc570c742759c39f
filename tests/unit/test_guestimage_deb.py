"""The .deb reader: ar parsing, control fields, data extraction and its safety checks."""

from __future__ import annotations

import builtins
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pyvirt.guestimage import deb as debmod
from pyvirt.guestimage.deb import (DebPackage, member_path, parse_ar, parse_control, parse_depends,
                                   version_key)
from pyvirt.guestimage.errors import DebError, UnsafePathError
from pyvirt.guestimage.testing import Compression, TarMember, ar_archive, make_deb, tar_bytes

FILES = {"bin/busybox": b"\x7fELF fake busybox", "usr/share/doc/x/copyright": b"GPL\n", "odd": b"123"}


def test_ar_layout() -> None:
    data = ar_archive([("debian-binary", b"2.0\n"), ("odd", b"abc"), ("last", b"xy")])
    members = parse_ar(data)
    assert [(m.name, m.data) for m in members] == [("debian-binary", b"2.0\n"), ("odd", b"abc"), ("last", b"xy")]
    assert members[1].offset == 8 + 60 + 4 and members[2].offset == members[1].offset + 60 + 3 + 1  # even padding
    assert members[0].mode == 0o100644


def test_ar_errors() -> None:
    good = ar_archive([("debian-binary", b"2.0\n"), ("data.tar", b"x" * 100)])
    with pytest.raises(DebError, match="not an ar archive"):
        parse_ar(b"PK\x03\x04" + good[4:])
    with pytest.raises(DebError, match="cut short"):
        parse_ar(good[:-20])
    with pytest.raises(DebError, match="truncated"):
        parse_ar(good[:8 + 30])
    bad = bytearray(good)
    bad[8 + 58] = ord("X")
    with pytest.raises(DebError, match="end marker"):
        parse_ar(bytes(bad))
    bad = bytearray(good)
    bad[8 + 48:8 + 58] = b"abc       "
    with pytest.raises(DebError, match="non-numeric"):
        parse_ar(bytes(bad))


@pytest.mark.parametrize("compression", ["xz", "gz", "bz2", ""])
def test_read_package(compression: Compression) -> None:
    pkg = DebPackage(make_deb("busybox-static", "1:1.35.0-4", FILES, depends="libc6 (>= 2.34), a | b",
                              compression=compression))
    assert pkg.name == "busybox-static" and pkg.version == "1:1.35.0-4"
    assert pkg.depends == [["libc6"], ["a", "b"]]
    assert pkg.control["Description"] == "test package\na second line"
    assert pkg.read_data(lambda p: p.startswith("bin/")) == {"bin/busybox": FILES["bin/busybox"]}
    names = [p for p, _ in pkg.data_members()]
    assert names[0] == "" and set(FILES) <= set(names)


def test_not_a_deb() -> None:
    with pytest.raises(DebError, match="not 'debian-binary'"):
        DebPackage(ar_archive([("control.tar.xz", b"")]))
    with pytest.raises(DebError, match="format '3.0'"):
        DebPackage(ar_archive([("debian-binary", b"3.0\n"), ("control.tar", b""), ("data.tar", b"")]))
    with pytest.raises(DebError, match="no data.tar"):
        DebPackage(ar_archive([("debian-binary", b"2.0\n"), ("control.tar", b"")]))
    with pytest.raises(DebError, match="not a readable tar"):
        DebPackage(ar_archive([("debian-binary", b"2.0\n"), ("control.tar.xz", b"junk"),
                               ("data.tar.xz", b"junk")])).control
    with pytest.raises(DebError, match="compression '.lz'"):
        DebPackage(ar_archive([("debian-binary", b"2.0\n"), ("control.tar.lz", b""),
                               ("data.tar", b"")])).control
    with pytest.raises(DebError, match="cannot read"):
        DebPackage.from_file("/nonexistent/x.deb")


def test_control_and_depends_parsing() -> None:
    fields = parse_control("Package: k\nDepends: kmod, linux-base (>= 4.3~),\n initramfs-tools | linux-initramfs-tool"
                           "\n\nPackage: second-paragraph\n")
    assert fields["Package"] == "k"
    assert parse_depends(fields["Depends"]) == [["kmod"], ["linux-base"], ["initramfs-tools", "linux-initramfs-tool"]]
    assert parse_depends("python3:any, foo [amd64] <!nocheck>") == [["python3"], ["foo"]]
    with pytest.raises(DebError, match="continuation"):
        parse_control(" leading continuation")
    with pytest.raises(DebError, match="Field: value"):
        parse_control("no colon here")


def test_extract(tmp_path: Path) -> None:
    members = [TarMember("./lib/", "dir", mode=0o755), TarMember("./lib/sh", "symlink", link="../bin/busybox"),
               TarMember("./lib/bb", "hardlink", link="./bin/busybox"),
               TarMember("./bin/suid", data=b"x", mode=0o4755)]
    pkg = DebPackage(make_deb(files=FILES, members=members))
    written = pkg.extract(tmp_path / "out")
    root = tmp_path / "out"
    assert (root / "bin/busybox").read_bytes() == FILES["bin/busybox"]
    assert os.readlink(root / "lib/sh") == "../bin/busybox"
    assert (root / "lib/bb").stat().st_ino == (root / "bin/busybox").stat().st_ino
    assert (root / "bin/suid").stat().st_mode & 0o7777 == 0o755  # no setuid from a package
    assert (root / "bin/busybox").stat().st_mode & 0o777 == 0o755
    assert root / "usr/share/doc/x/copyright" in written

    sel = tmp_path / "sel"
    pkg.extract(sel, lambda p: p.startswith("usr/"))
    assert (sel / "usr/share/doc/x/copyright").exists() and not (sel / "bin").exists()


@pytest.mark.parametrize("member, message", [
    (TarMember("/etc/passwd", data=b"root::0:0"), "absolute path"),
    (TarMember("../evil", data=b"x"), r"'\.\.'"),
    (TarMember("./a/../../evil", data=b"x"), r"'\.\.'"),
    (TarMember("./link", "symlink", link="/etc"), "absolute"),
    (TarMember("./a/link", "symlink", link="../../outside"), "outside"),
    (TarMember("./hl", "hardlink", link="../outside"), r"'\.\.'"),
])
def test_extract_refuses_escapes(tmp_path: Path, member: TarMember, message: str) -> None:
    pkg = DebPackage(make_deb(files={"ok": b"1"}, members=[member]))
    with pytest.raises(UnsafePathError, match=message):
        pkg.extract(tmp_path / "out")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "outside").exists()


def test_extract_does_not_write_through_existing_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "out"
    root.mkdir()
    (root / "planted").symlink_to(outside)
    pkg = DebPackage(make_deb(files={"planted/file": b"x"}))
    with pytest.raises(UnsafePathError, match="through a link"):
        pkg.extract(root)
    assert list(outside.iterdir()) == []
    # A file member replaces a symlink of the same name instead of following it.
    (root / "victim").symlink_to(outside / "target")
    DebPackage(make_deb(files={"victim": b"new"})).extract(root)
    assert not (outside / "target").exists() and (root / "victim").read_bytes() == b"new"


def test_member_path() -> None:
    assert member_path("./boot/vmlinuz-6.1") == "boot/vmlinuz-6.1"
    assert member_path("./") == "" and member_path("a//b/./c") == "a/b/c"


def _zstd_deb() -> bytes:
    zstd = shutil.which("zstd")
    if zstd is None:
        pytest.skip("the zstd command is not installed")
    raw = tar_bytes([TarMember("./hello", data=b"zstd works")], "")
    packed = subprocess.run([zstd, "-q", "-c"], input=raw, capture_output=True, check=True).stdout
    control = tar_bytes([TarMember("./control", data=b"Package: z\nVersion: 1\n")], "")
    return ar_archive([("debian-binary", b"2.0\n"), ("control.tar", control), ("data.tar.zst", packed)])


def _without_zstandard(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "zstandard":
            raise ImportError("hidden by the test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_zstd_data(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _zstd_deb()
    assert DebPackage(data).read_data(lambda p: True) == {"hello": b"zstd works"}
    _without_zstandard(monkeypatch)  # now the zstd command must do it
    assert DebPackage(data).read_data(lambda p: True) == {"hello": b"zstd works"}


def test_zstd_without_any_decompressor(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _zstd_deb()
    _without_zstandard(monkeypatch)
    monkeypatch.setattr(debmod.shutil, "which", lambda name: None)
    with pytest.raises(DebError, match="pip install zstandard, or apt-get install zstd"):
        DebPackage(data).read_data(lambda p: True)


def test_version_order_matches_dpkg() -> None:
    ordered = ["1.0~rc1", "1.0", "1.0-1~bpo", "1.0-1", "1.0a", "1.0+b1", "1.0.1", "6.1.99-1", "6.1.192-2",
               "1:0.1", "1:1.35.0-4+deb12u1", "1:1.35.0-4+deb12u1+b1"]
    assert sorted(reversed(ordered), key=version_key) == ordered
    with pytest.raises(DebError, match="epoch"):
        version_key("x:1.0")
