"""Shared pytest setup: make `src/` importable when pyvirt is not installed."""

import os
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

# Hypothesis with a fixed seed: the suite's run time stays bounded (a random
# seed once kept one fuzz test in Hypothesis's mutation loop for 10+ minutes)
# and a failure reproduces on the next run. HYPOTHESIS_PROFILE=random explores.
from hypothesis import settings  # noqa: E402

settings.register_profile("suite", derandomize=True)
settings.register_profile("random", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))
