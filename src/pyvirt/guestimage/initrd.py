"""The layout of a busybox initramfs, and the default /init.

Everything here is pure: it takes bytes (busybox, the init script, module
files) and writes a cpio archive, so tests build a whole initramfs without
apt or a kernel package. debian.py gathers the inputs.

The tree the kernel unpacks into its rootfs:

    /init                   the script below (or --init FILE), run as PID 1
    /bin/busybox            static busybox; /bin/<applet> -> busybox for each applet
    /sbin, /usr/bin, /usr/sbin   -> bin, so scripts written for either layout work
    /dev/console (c 5 1), /dev/null (c 1 3)
                            the kernel opens /dev/console for PID 1 *before* /init
                            runs, i.e. before devtmpfs is mounted; without this node
                            init starts with no stdin/stdout and prints nothing
    /proc /sys /tmp /root /etc   empty directories (mount points, a home for sh)
    /lib/modules/<release>/  modules, modules.dep, modules.alias (with --modules)
    /etc/pyvirt/modules     module paths in load order, for /init's insmod loop
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from .cpio import CpioWriter, Writable
from .errors import GuestImageError

MARKER = "PYVIRT-GUEST-UP"
MODULE_LIST = "etc/pyvirt/modules"

# Applets linked when `busybox --list` cannot run on the build host (e.g. a
# non-x86 host building an x86 guest). All are in Debian's busybox-static.
FALLBACK_APPLETS: tuple[str, ...] = (
    "sh", "ash", "mount", "umount", "cat", "echo", "ls", "uname", "poweroff", "reboot", "halt",
    "sleep", "dmesg", "mkdir", "mknod", "insmod", "rmmod", "lsmod", "modprobe", "modinfo",
    "ip", "ifconfig", "route", "udhcpc", "ping", "nproc", "free", "head", "tail", "grep",
    "sed", "awk", "cp", "mv", "rm", "ln", "chmod", "touch", "find", "xargs", "wc", "sort",
    "cut", "tr", "tee", "vi", "ps", "kill", "top", "df", "du", "dd", "hexdump", "stat",
    "sync", "date", "env", "printf", "test", "[", "true", "false", "cttyhack", "setsid",
    "switch_root", "mdev", "sysctl", "hostname", "uptime", "which", "readlink", "seq",
)
# Not linked: "busybox" is the binary itself; "init" and "linuxrc" would let
# the kernel fall back to busybox's own init if /init failed, hiding the error.
SKIP_APPLETS = frozenset({"busybox", "init", "linuxrc"})
_APPLET_RE = re.compile(r"^[A-Za-z0-9_.+\[\]-]+$")

# The marker line comes first so a test harness can wait for it; the three
# facts after it are what a VMM test checks (the kernel it booted, the RAM it
# gave, the vCPUs it started). Options come from /proc/cmdline because the
# kernel hands "x.y=z" parameters to modules, not to init's environment.
DEFAULT_INIT = f"""\
#!/bin/sh
# pyvirt guest init (PID 1), written by `python -m pyvirt.guestimage linux`.
# Kernel command-line options it reads:
#   pyvirt.shell=1    run an interactive shell on the console instead of powering off
#   pyvirt.reboot=1   end with `reboot -f` instead of `poweroff -f` (for guests booted
#                     with acpi=off, where poweroff only halts the CPU)
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev || echo "init: devtmpfs unavailable; /dev has console and null only"
echo {MARKER}
uname -r
grep MemTotal /proc/meminfo
nproc
if [ -s /{MODULE_LIST} ]; then
    while read -r mod; do
        insmod "/lib/modules/$(uname -r)/$mod" && echo "init: loaded $mod" || echo "init: insmod $mod failed"
    done < /{MODULE_LIST}
fi
cmdline=" $(cat /proc/cmdline) "
case "$cmdline" in
*" pyvirt.shell=1 "*)
    echo "init: shell on the console; 'exit' ends the VM"
    setsid cttyhack sh || sh
    ;;
esac
case "$cmdline" in
*" pyvirt.reboot=1 "*) reboot -f ;;
esac
poweroff -f
"""


def parse_applet_list(text: str) -> list[str]:
    """Applet names from `busybox --list` output, minus the ones not to link."""
    names = []
    for line in text.split():
        if not _APPLET_RE.match(line):
            raise GuestImageError(f"busybox --list printed {line!r}, which is not an applet name")
        if line not in SKIP_APPLETS:
            names.append(line)
    return sorted(set(names))


def check_init(init: bytes, source: str = "init") -> None:
    """Refuse an /init the kernel could not execute (it would panic or fall back)."""
    if not (init.startswith(b"#!") or init.startswith(b"\x7fELF")):
        raise GuestImageError(f"{source} starts with {init[:16]!r}: /init must be a script with a '#!' line "
                              "(e.g. #!/bin/sh) or an ELF executable, else the kernel cannot run it")


@dataclass
class InitramfsContents:
    """Inputs of one busybox initramfs."""

    busybox: bytes
    applets: Sequence[str] = FALLBACK_APPLETS
    init: bytes = DEFAULT_INIT.encode()
    kernel_release: str = ""
    # Files under lib/modules/<kernel_release>/: modules and modules.* indexes.
    module_files: Mapping[str, bytes] = field(default_factory=dict)
    # Module paths (keys of module_files) in the order /init loads them.
    load_order: Sequence[str] = ()


def write_initramfs(contents: InitramfsContents, fileobj: Writable) -> list[str]:
    """Write the initramfs as a newc archive to `fileobj`; returns its paths."""
    check_init(contents.init)
    if contents.module_files and not contents.kernel_release:
        raise GuestImageError("kernel modules need the kernel release (the lib/modules/<release> directory name)")
    missing = [p for p in contents.load_order if p not in contents.module_files]
    if missing:
        raise GuestImageError(f"modules to load are not in the initramfs: {', '.join(missing)}")
    w = CpioWriter(fileobj)
    for d in ("bin", "dev", "etc", "proc", "sys", "usr", "lib"):
        w.add_dir(d)
    w.add_dir("tmp", 0o1777)
    w.add_dir("root", 0o700)
    w.add_symlink("sbin", "bin")
    w.add_symlink("usr/bin", "../bin")
    w.add_symlink("usr/sbin", "../bin")
    w.add_device("dev/console", "c", 5, 1, 0o600)
    w.add_device("dev/null", "c", 1, 3, 0o666)
    w.add_file("bin/busybox", contents.busybox, 0o755)
    for applet in sorted(set(contents.applets) - SKIP_APPLETS):
        if not _APPLET_RE.match(applet):
            raise GuestImageError(f"applet name {applet!r} is not a plain file name")
        w.add_symlink(f"bin/{applet}", "busybox")
    w.add_file("init", contents.init, 0o755)
    if contents.module_files:
        base = f"lib/modules/{contents.kernel_release}"
        w.add_dir(base)
        for rel in sorted(contents.module_files):
            w.add_file(f"{base}/{rel}", contents.module_files[rel], 0o644)
        w.add_file(MODULE_LIST, "".join(p + "\n" for p in contents.load_order).encode(), 0o644)
    w.close()
    return w.paths
