"""Where the embedded defaults keep their state (design.md): everything under $BINSWEEP_HOME/runs, home = cwd."""

from __future__ import annotations

from pathlib import Path

from trainables.home import home, resolve

__all__ = ["home", "resolve", "runs_dir"]


def runs_dir() -> Path:
    return home() / "runs"
