"""Building a Linux guest from (fake) Debian packages, with apt-get faked.

The last test does it for real (apt-get download, Debian's kernel) and is
marked slow.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from pyvirt.guestimage.__main__ import main
from pyvirt.guestimage.cpio import read_cpio
from pyvirt.guestimage.debian import (AptCache, build_linux_guest, deb_file_version, default_cache_dir,
                                      resolve_kernel_package)
from pyvirt.guestimage.deb import DebPackage
from pyvirt.guestimage.errors import AptError, GuestImageError
from pyvirt.guestimage.initrd import MARKER, MODULE_LIST
from pyvirt.guestimage.testing import make_deb, make_module

RELEASE = "6.1.0-99-cloud-amd64"
# A "busybox" that the build host can run: `busybox --list` is all it is asked.
FAKE_BUSYBOX = b"#!/bin/sh\nprintf 'sh\\nls\\nmount\\ninit\\nbusybox\\npoweroff\\n'\n"


def kernel_files() -> dict[str, bytes]:
    mods = f"lib/modules/{RELEASE}/"
    return {
        f"boot/vmlinuz-{RELEASE}": b"MZ fake bzImage",
        f"boot/config-{RELEASE}": b"CONFIG_X=y\n",
        mods + "kernel/drivers/virtio/virtio_ring.ko": make_module("virtio_ring"),
        mods + "kernel/drivers/virtio/virtio.ko": make_module("virtio", ["virtio_ring"]),
        mods + "kernel/drivers/block/virtio_blk.ko": make_module("virtio_blk", ["virtio", "virtio_ring"],
                                                                 ["virtio:d00000002v*"]),
        mods + "modules.builtin": b"kernel/fs/ext4/ext4.ko\n",
        mods + "modules.order": b"kernel/drivers/block/virtio_blk.ko\n",
    }


PACKAGES = {
    "linux-image-cloud-amd64": ("6.1.99-1", lambda: make_deb("linux-image-cloud-amd64", "6.1.99-1",
                                                             depends=f"linux-image-{RELEASE} (= 6.1.99-1)")),
    f"linux-image-{RELEASE}": ("6.1.99-1", lambda: make_deb(f"linux-image-{RELEASE}", "6.1.99-1", kernel_files(),
                                                            depends="kmod, linux-base (>= 4.3~)")),
    "busybox-static": ("1:1.35.0-4", lambda: make_deb("busybox-static", "1:1.35.0-4",
                                                      {"bin/busybox": FAKE_BUSYBOX})),
}


class FakeApt:
    """Stands in for apt-get: knows PACKAGES, but only after `apt-get update` if `stale`."""

    def __init__(self, stale: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.stale = stale

    def __call__(self, argv: Sequence[str], cwd: Path) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        if argv[:2] == ["apt-get", "update"]:
            self.stale = False
            return 0, "Reading package lists...", ""
        assert argv[:2] == ["apt-get", "download"]
        name = argv[2]
        if self.stale or name not in PACKAGES:
            return 100, "", f"E: Unable to locate package {name}\n"
        version, make = PACKAGES[name]
        (cwd / f"{name}_{version.replace(':', '%3a')}_amd64.deb").write_bytes(make())
        return 0, "", "W: Download is performed unsandboxed as root\n"


def cache(tmp_path: Path, apt: FakeApt) -> AptCache:
    return AptCache(tmp_path / "cache", runner=apt, log=lambda msg: None)


def test_cache_downloads_once(tmp_path: Path) -> None:
    apt = FakeApt()
    c = cache(tmp_path, apt)
    first = c.get("busybox-static")
    assert first.name == "busybox-static_1%3a1.35.0-4_amd64.deb" and deb_file_version(first) == "1:1.35.0-4"
    assert c.get("busybox-static") == first
    assert apt.calls == [["apt-get", "download", "busybox-static"]]
    assert [p.name for p in c.directory.iterdir()] == [first.name]  # no temporary directories left
    refresh = AptCache(c.directory, runner=apt, log=lambda msg: None, refresh=True)
    refresh.get("busybox-static")
    refresh.get("busybox-static")
    assert len(apt.calls) == 2  # refreshed once per run, not per call


def test_cache_prefers_the_highest_version(tmp_path: Path) -> None:
    c = cache(tmp_path, FakeApt())
    c.directory.mkdir()
    for v in ("1.9", "1.10", "1.10~rc1"):
        (c.directory / f"pkg_{v}_amd64.deb").write_bytes(b"")
    (c.directory / "pkg-dbg_9_amd64.deb").write_bytes(b"")
    assert c.cached("pkg") == c.directory / "pkg_1.10_amd64.deb"


def test_update_only_when_apt_does_not_know_the_package(tmp_path: Path) -> None:
    apt = FakeApt(stale=True)
    cache(tmp_path, apt).get("busybox-static")
    assert apt.calls == [["apt-get", "download", "busybox-static"], ["apt-get", "update"],
                         ["apt-get", "download", "busybox-static"]]
    apt = FakeApt()
    with pytest.raises(AptError, match="(?s)no-such-package failed even after apt-get update.*Unable to locate"):
        cache(tmp_path, apt).get("no-such-package")
    assert apt.calls.count(["apt-get", "update"]) == 1


def test_metapackage_is_resolved(tmp_path: Path) -> None:
    path = resolve_kernel_package(cache(tmp_path, FakeApt()), "linux-image-cloud-amd64", log=lambda m: None)
    assert DebPackage.from_file(path).name == f"linux-image-{RELEASE}"


def test_build_guest(tmp_path: Path) -> None:
    guest = build_linux_guest(tmp_path / "out", cache=cache(tmp_path, FakeApt()), modules=["virtio_blk", "ext4"],
                              log=lambda m: None)
    assert guest.kernel.read_bytes() == b"MZ fake bzImage" and guest.kernel_release == RELEASE
    assert guest.initrd.name == "initrd.cpio.gz"
    entries = {e.name: e for e in read_cpio(guest.initrd.read_bytes())}
    assert entries["bin/busybox"].data == FAKE_BUSYBOX
    assert {n for n, e in entries.items() if e.kind == "symlink" and n.startswith("bin/")} == \
        {"bin/sh", "bin/ls", "bin/mount", "bin/poweroff"}  # from `busybox --list`, minus init/busybox
    assert MARKER.encode() in entries["init"].data
    base = f"lib/modules/{RELEASE}/"
    assert entries[base + "modules.dep"].data.decode().splitlines()[-1] == \
        "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko"
    assert entries[base + "modules.alias"].data == b"alias virtio:d00000002v* virtio_blk\n"
    assert base + "modules.builtin" in entries and base + "modules.order" in entries
    assert entries[MODULE_LIST].data.decode().split() == guest.modules == [
        "kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko", "kernel/drivers/block/virtio_blk.ko"]
    cmd = guest.run_command("console=ttyS0 pyvirt.shell=1")
    assert cmd.startswith("pyvirt run --kernel ") and "--cmdline 'console=ttyS0 pyvirt.shell=1'" in cmd
    # Same packages, same bytes.
    again = build_linux_guest(tmp_path / "again", cache=cache(tmp_path, FakeApt()), modules=["virtio_blk", "ext4"],
                              log=lambda m: None)
    assert again.initrd.read_bytes() == guest.initrd.read_bytes()


def test_build_errors(tmp_path: Path) -> None:
    with pytest.raises(GuestImageError, match="holds 0 boot/vmlinuz-"):
        build_linux_guest(tmp_path / "out", "busybox-static", cache=cache(tmp_path, FakeApt()), log=lambda m: None)
    with pytest.raises(GuestImageError, match="did you mean virtio_blk"):
        build_linux_guest(tmp_path / "out", cache=cache(tmp_path, FakeApt()), modules=["virtio-blok"],
                          log=lambda m: None)


def test_busybox_that_cannot_run_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PACKAGES, "busybox-static",
                        ("1", lambda: make_deb("busybox-static", "1", {"bin/busybox": b"\x7fELF not for this host"})))
    guest = build_linux_guest(tmp_path / "out", cache=cache(tmp_path, FakeApt()), log=lambda m: None)
    names = {e.name for e in read_cpio(guest.initrd.read_bytes())}
    assert {"bin/sh", "bin/insmod", "bin/poweroff", "bin/nproc", "bin/cttyhack"} <= names


def test_cli_with_a_prefilled_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache(tmp_path, FakeApt()).get(f"linux-image-{RELEASE}")
    cache(tmp_path, FakeApt()).get("busybox-static")
    init = tmp_path / "my-init"
    init.write_text("#!/bin/sh\necho custom\n")
    out = tmp_path / "guest"
    rc = main(["linux", "--out", str(out), "--cache", str(tmp_path / "cache"), "--kernel-package",
               f"linux-image-{RELEASE}", "--init", str(init), "--no-gzip"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert f"Linux {RELEASE}" in printed and "pyvirt run --kernel" in printed
    entries = {e.name: e for e in read_cpio((out / "initrd.cpio").read_bytes())}
    assert entries["init"].data == b"#!/bin/sh\necho custom\n" and stat.S_IMODE(entries["init"].mode) == 0o755
    assert main(["ls", str(out / "initrd.cpio")]) == 0
    assert "dev/console" in capsys.readouterr().out
    assert main(["ls", str(tmp_path / "missing")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYVIRT_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("PYVIRT_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "pyvirt" / "debs"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get (a Debian or Ubuntu host)")
@pytest.mark.skipif(os.geteuid() != 0, reason="apt-get update, if needed, must run as root")
def test_real_debian_guest(tmp_path: Path) -> None:
    """Downloads Debian's cloud kernel and busybox-static (cached in $PYVIRT_CACHE or ~/.cache/pyvirt/debs)."""
    guest = build_linux_guest(tmp_path / "guest", modules=["virtio_blk"])
    kernel = guest.kernel.read_bytes()
    assert kernel[0x202:0x206] == b"HdrS"  # a bzImage (Linux boot protocol header)
    assert guest.kernel_release.endswith("-cloud-amd64")
    entries = {e.name: e for e in read_cpio(guest.initrd.read_bytes())}
    assert entries["bin/busybox"].data[:4] == b"\x7fELF" and len(entries["bin/busybox"].data) > 500_000
    assert entries["bin/sh"].target == "busybox" and entries["dev/console"].rdevmajor == 5
    assert f"lib/modules/{guest.kernel_release}/kernel/drivers/block/virtio_blk.ko" in entries
    assert guest.modules[-1].endswith("virtio_blk.ko")
