"""Errors of the disk layer: opening, locking and doing I/O on disk images."""


class DiskError(Exception):
    """A disk image could not be opened, locked, read or written.

    The message names the image's path and what to do about it, because it
    usually reaches the user unchanged (e.g. "another process holds it").
    """
