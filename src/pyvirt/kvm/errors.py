"""The one exception type raised by the KVM binding layer."""

from __future__ import annotations


class KvmError(OSError):
    """An ioctl on /dev/kvm, a VM or a vCPU failed.

    Carries the ioctl's name and errno so a user (and a log) can tell which
    request the kernel refused, not just that something did.
    """

    def __init__(self, request: str, errno: int, hint: str = "") -> None:
        import os

        msg = f"{request} failed: {os.strerror(errno)} (errno {errno})"
        if hint:
            msg += f"; {hint}"
        super().__init__(errno, msg)
        self.request = request
        self.hint = hint

    def __str__(self) -> str:  # OSError's default adds "[Errno N]" twice
        return self.args[1]
