"""Loggers that import `logging` only when a record can be emitted.

`import logging` (with traceback, string, weakref...) costs `pyvirt run`
milliseconds at every start on a slow host, yet a VM started without -v logs
nothing unless something goes wrong. So modules on the VMM's start path use

    log = get_logger(__name__)

and call `debug`, `info`, `warning`, `error`, `exception` and
`isEnabledFor` as on a `logging.Logger` (with `DEBUG`, `INFO`, `WARNING`
from here). While no code has imported `logging`, nothing has
configured it either, so the root logger's level is WARNING: debug and info
records would be dropped, and are dropped here without importing it. A
warning or worse imports `logging` and goes to the real logger, as does
every record once anything else (a test, the CLI with -v) has imported
`logging`. Records carry the caller's file and line, as they would without
this stand-in.

`configure(level, fmt)` is the CLI's `logging.basicConfig`: applied at once
if `logging` is already loaded or `level` is below WARNING, else when the
first record needs `logging`. A module that imports `logging` itself after
`configure` deferred would log unformatted: on the start path, use
`get_logger`.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import logging
    from typing import TextIO

DEBUG, INFO, WARNING = 10, 20, 30  # as in logging
_pending: tuple[int, str, TextIO] | None = None


def configure(level: int, fmt: str, stream: TextIO | None = None) -> None:
    """`logging.basicConfig(level=level, format=fmt, stream=stream or sys.stderr)`, when needed."""
    global _pending
    _pending = (level, fmt, stream or sys.stderr)
    if level < WARNING or "logging" in sys.modules:
        _load()


def _load() -> None:
    """Import `logging` and apply the configuration `configure` deferred."""
    global _pending
    import logging

    if _pending is not None:
        level, fmt, stream = _pending
        _pending = None
        logging.basicConfig(level=level, format=fmt, stream=stream)


def get_logger(name: str) -> LazyLogger:
    return LazyLogger(name)


class LazyLogger:
    """Stands in for `logging.getLogger(name)` until a record needs it."""

    __slots__ = ("name", "_logger")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: logging.Logger | None = None

    def _real(self) -> logging.Logger:
        if self._logger is None:
            _load()
            import logging

            self._logger = logging.getLogger(self.name)
        return self._logger

    def _emit(self, method: str, msg: object, args: tuple[object, ...], kwargs: dict) -> None:
        # Point the record at our caller, not at this module.
        kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 2
        getattr(self._real(), method)(msg, *args, **kwargs)

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 (logging's name)
        if "logging" not in sys.modules:
            return level >= WARNING  # the root logger's default level
        return self._real().isEnabledFor(level)

    def debug(self, msg: object, *args: object, **kwargs: object) -> None:
        if "logging" in sys.modules:
            self._emit("debug", msg, args, kwargs)

    def info(self, msg: object, *args: object, **kwargs: object) -> None:
        if "logging" in sys.modules:
            self._emit("info", msg, args, kwargs)

    def warning(self, msg: object, *args: object, **kwargs: object) -> None:
        self._emit("warning", msg, args, kwargs)

    def error(self, msg: object, *args: object, **kwargs: object) -> None:
        self._emit("error", msg, args, kwargs)

    def exception(self, msg: object, *args: object, exc_info: object = True, **kwargs: object) -> None:
        kwargs["exc_info"] = exc_info
        self._emit("error", msg, args, kwargs)
