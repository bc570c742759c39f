"""pyvirt._log: loggers that import `logging` only when a record can be emitted."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from pyvirt import _log

SCRIPT = """
import sys
from pyvirt import _log
log = _log.get_logger("pyvirt.test")
log.debug("dropped"); log.info("dropped")
assert not log.isEnabledFor(_log.INFO) and log.isEnabledFor(_log.WARNING)
_log.configure(_log.WARNING, "pyvirt: %(message)s [%(funcName)s]")
assert "logging" not in sys.modules, "nothing needed logging yet"
def f():
    log.warning("careful %d", 1)
f()
assert "logging" in sys.modules
log.info("dropped: the level is WARNING")
log.error("bad")
"""


def test_nothing_loads_logging_until_a_warning() -> None:
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["pyvirt: careful 1 [f]", "pyvirt: bad [<module>]"]


def test_verbose_configuration_applies_at_once() -> None:
    script = ("import sys; from pyvirt import _log; _log.configure(_log.DEBUG, 'pyvirt: %(message)s'); "
              "assert 'logging' in sys.modules; _log.get_logger('x').debug('hello %s', 'there')")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert (r.returncode, r.stderr) == (0, "pyvirt: hello there\n")


def test_records_reach_logging_with_the_callers_location(caplog: pytest.LogCaptureFixture) -> None:
    log = _log.get_logger("pyvirt.test")
    caplog.set_level(logging.DEBUG, "pyvirt.test")
    log.debug("d %s", 1)
    try:
        raise ValueError("x")
    except ValueError:
        log.exception("e")
    assert [(r.levelname, r.getMessage(), r.funcName) for r in caplog.records] == [
        ("DEBUG", "d 1", "test_records_reach_logging_with_the_callers_location"),
        ("ERROR", "e", "test_records_reach_logging_with_the_callers_location"),
    ]
    assert caplog.records[1].exc_info is not None
    assert log.isEnabledFor(logging.DEBUG)
