"""Guest images: build bootable Linux guests for pyvirt from Debian packages.

`python -m pyvirt.guestimage linux --out DIR` writes DIR/vmlinuz (Debian's
own kernel) and DIR/initrd.cpio.gz (static busybox, an /init, optional
modules); docs/linux-guests.md explains how to boot them.

Layers, each usable alone: `cpio` (newc writer and reader), `deb` (.deb and
ar reader with safe extraction), `kmod` (module dependencies), `initrd`
(initramfs layout and the default /init), `debian` (apt-get downloads and
the build). This package runs on the host only; the VMM never imports it.
"""

from .cpio import CpioEntry, CpioWriter, read_cpio
from .deb import DebPackage
from .errors import AptError, CpioError, DebError, GuestImageError, ModuleError, UnsafePathError

__all__ = ["AptError", "CpioEntry", "CpioError", "CpioWriter", "DebError", "DebPackage", "GuestImageError",
           "ModuleError", "UnsafePathError", "read_cpio"]
