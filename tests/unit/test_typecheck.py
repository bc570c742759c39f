"""The package type-checks (mypy, settings in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_is_clean():
    try:
        import mypy  # noqa: F401
    except ImportError:
        if not shutil.which("mypy"):
            pytest.skip("mypy is not installed (make test installs it)")
    r = subprocess.run([sys.executable, "-m", "mypy", "src/pyvirt"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-2000:]
