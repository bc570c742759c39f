"""Errors of the guest-image helper.

One base class, `GuestImageError`, so the command line can catch everything
this package raises and print the message alone; the subclasses say which
input was bad. Parsers raise `ValueError` subclasses, because a corrupt
archive is a bad value, not an I/O failure.
"""


class GuestImageError(Exception):
    """Building a guest image failed; the message says why and what to do."""


class CpioError(GuestImageError, ValueError):
    """A cpio archive is corrupt or truncated, or a writer call was invalid."""


class DebError(GuestImageError, ValueError):
    """A .deb (or the ar/tar archive inside it) is corrupt or unsupported."""


class UnsafePathError(DebError):
    """An archive member would land outside the extraction directory."""


class ModuleError(GuestImageError, ValueError):
    """A kernel module is missing or its .modinfo cannot be read."""


class AptError(GuestImageError):
    """apt-get or apt-cache failed (no such package, no network, no apt)."""
