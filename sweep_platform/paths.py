"""Where the embedded defaults keep their state (design.md): everything under $BINSWEEP_HOME/runs, home = cwd."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("BINSWEEP_HOME", ".")).resolve()


def runs_dir() -> Path:
    return home() / "runs"
