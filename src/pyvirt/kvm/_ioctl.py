"""The single place that calls ioctl on KVM file descriptors."""

from __future__ import annotations

import ctypes
import errno as _errno
import fcntl

from .errors import KvmError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
_libc.ioctl.restype = ctypes.c_int


def ioctl(fd: int, request: int, arg: Any = 0, name: str = "", hint: str = "") -> int:
    """Issue one ioctl; map failures to KvmError naming the request.

    `arg` is an int or a ctypes object (passed by buffer, written back).
    """
    if isinstance(arg, int) and not 0 <= arg < 2**31:
        # fcntl.ioctl takes a C int; addresses like KVM_SET_TSS_ADDR's need
        # the full unsigned long, so go through libc directly.
        ret = _libc.ioctl(fd, request, arg)
        if ret < 0:
            raise KvmError(name or hex(request), ctypes.get_errno(), hint)
        return ret
    try:
        if isinstance(arg, int):
            return fcntl.ioctl(fd, request, arg)
        return fcntl.ioctl(fd, request, arg, True)
    except OSError as e:
        raise KvmError(name or hex(request), e.errno or _errno.EIO, hint) from e
