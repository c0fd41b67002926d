"""Where binsweep keeps its state on this machine: $BINSWEEP_HOME, default the current directory.

Trainables resolve relative dataset folders and caches (HRTFs, room responses) against it; the platform keeps its
runs under it (sweep_platform.paths). It lives here, below both, so that trainables never import the platform.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("BINSWEEP_HOME", ".")).resolve()


def resolve(path: str | Path) -> Path:
    """A path as given when absolute, else under the home folder."""
    p = Path(path)
    return p if p.is_absolute() else home() / p
