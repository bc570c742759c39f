"""The busybox initramfs layout and the default /init script."""

from __future__ import annotations

import io
import re
import shutil
import subprocess

import pytest

from pyvirt.guestimage.cpio import CpioEntry, read_cpio
from pyvirt.guestimage.errors import GuestImageError
from pyvirt.guestimage.initrd import (DEFAULT_INIT, MARKER, MODULE_LIST, InitramfsContents, check_init,
                                      parse_applet_list, write_initramfs)


def build(**kw: object) -> dict[str, CpioEntry]:
    buf = io.BytesIO()
    write_initramfs(InitramfsContents(busybox=b"\x7fELF busybox", **kw), buf)  # type: ignore[arg-type]
    return {e.name: e for e in read_cpio(buf.getvalue())}


def test_default_init_script() -> None:
    lines = DEFAULT_INIT.splitlines()
    assert lines[0] == "#!/bin/sh"
    body = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    text = "\n".join(body)

    def at(pattern: str) -> int:
        return next(i for i, ln in enumerate(body) if re.search(pattern, ln))

    # Mounts first, then the marker and the three facts, then shell or power-off.
    assert at(r"mount -t proc proc /proc") < at(MARKER)
    assert at(r"mount -t sysfs sysfs /sys") < at(MARKER)
    assert at(r"mount -t devtmpfs devtmpfs /dev") < at(MARKER)
    assert body[at(MARKER)] == f"echo {MARKER}"
    assert body[at(MARKER) + 1:at(MARKER) + 4] == ["uname -r", "grep MemTotal /proc/meminfo", "nproc"]
    assert '" pyvirt.shell=1 "' in text and "/proc/cmdline" in text
    assert at(r"cttyhack sh") < at(r"^poweroff -f$")
    assert body[-1] == "poweroff -f"


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX sh on this host")
def test_default_init_is_valid_sh() -> None:
    proc = subprocess.run(["sh", "-n"], input=DEFAULT_INIT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_layout() -> None:
    entries = build(applets=["sh", "ls", "init", "busybox", "poweroff"])
    init = entries["init"]
    assert init.kind == "file" and init.perm == 0o755 and init.data == DEFAULT_INIT.encode()
    console, null = entries["dev/console"], entries["dev/null"]
    assert (console.kind, console.rdevmajor, console.rdevminor) == ("chr", 5, 1)
    assert (null.kind, null.rdevmajor, null.rdevminor, null.perm) == ("chr", 1, 3, 0o666)
    assert entries["bin/busybox"].perm == 0o755
    for d in ("proc", "sys", "dev", "tmp", "root", "etc"):
        assert entries[d].kind == "dir"
    assert entries["tmp"].perm == 0o1777
    links = {n: e.target for n, e in entries.items() if e.kind == "symlink"}
    assert links["bin/sh"] == "busybox" and links["bin/poweroff"] == "busybox" and links["sbin"] == "bin"
    assert "bin/init" not in entries and "bin/busybox" not in links  # busybox init must not shadow /init
    assert MODULE_LIST not in entries


def test_modules_and_load_list() -> None:
    files = {"kernel/a.ko": b"A", "kernel/b.ko.xz": b"B", "modules.dep": b"kernel/b.ko.xz: kernel/a.ko\n"}
    entries = build(kernel_release="6.1.0-9-cloud-amd64", module_files=files,
                    load_order=["kernel/a.ko", "kernel/b.ko.xz"])
    base = "lib/modules/6.1.0-9-cloud-amd64/"
    assert entries[base + "kernel/b.ko.xz"].data == b"B"
    assert entries[base + "modules.dep"].data == files["modules.dep"]
    assert entries[MODULE_LIST].data == b"kernel/a.ko\nkernel/b.ko.xz\n"
    with pytest.raises(GuestImageError, match="not in the initramfs: kernel/c.ko"):
        build(kernel_release="x", module_files=files, load_order=["kernel/c.ko"])
    with pytest.raises(GuestImageError, match="kernel release"):
        build(module_files=files)


def test_custom_init_must_be_executable() -> None:
    assert build(init=b"#!/bin/busybox sh\necho hi\n")["init"].data.startswith(b"#!/bin/busybox")
    check_init(b"\x7fELF\x02\x01")
    with pytest.raises(GuestImageError, match="'#!' line"):
        build(init=b"echo no shebang\n")


def test_applet_list() -> None:
    assert parse_applet_list("[\n[[\nbusybox\ninit\nsh\nls\nsh\n") == ["[", "[[", "ls", "sh"]
    with pytest.raises(GuestImageError, match="not an applet name"):
        parse_applet_list("sh\n../../etc/passwd\n")
    with pytest.raises(GuestImageError, match="plain file name"):
        build(applets=["ok", "a/b"])
