"""Exit statuses of `pyvirt run` (documented in the README and docs/internals.md)."""

POWEROFF = 0
ERROR = 1
USAGE = 2
RESET = 32
TRIPLE_FAULT = 34
UNHANDLED_EXIT = 36


def debug_exit(value: int) -> int:
    """QEMU isa-debug-exit semantics: value V ends the VM with (V << 1) | 1.

    The shell sees the low 8 bits, exactly as with QEMU.
    """
    return ((value << 1) | 1) & 0xFF
