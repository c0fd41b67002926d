"""binsweep's domain errors, what the CLI tells a user about any error, and the consoles it says it on.

A domain error is something the user can fix or must know: `explain` turns it into a message, the next step and an
exit code. Anything else is a bug, and its traceback is the message (cli_group holds the one boundary that decides).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from rich.console import Console

USAGE_ERROR = 2  # bad input: config, YAML, flags, names
RUN_ERROR = 1  # the work itself failed
INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT

LOG_WIDTH = 160  # columns for tables written off a terminal


class BinsweepError(Exception):
    """A domain error: something the user can fix or must know, never a bug. The CLI's one error boundary prints
    its message (and `hint`, the next step) without a traceback and exits with `exit_code`. Subclasses also derive
    from the builtin that fits (ValueError, FileNotFoundError, ...), so callers may catch either."""

    exit_code = USAGE_ERROR
    hint: str | None = None

    def __init__(self, *args: object, hint: str | None = None):
        super().__init__(*args)
        if hint is not None:
            self.hint = hint


class SweepNotFoundError(BinsweepError, ValueError):
    """No sweep of that name in the tracking store or under the Ray storage path."""

    hint = "list the sweeps with `binsweep leaderboard` or check MLFLOW_TRACKING_URI / BINSWEEP_RAY_STORAGE"


class SweepExistsError(BinsweepError, ValueError):
    """A sweep of that name has already started."""


@dataclass(frozen=True)
class Failure:
    """What the user is told about a domain error."""

    message: str
    exit_code: int
    hint: str | None = None


def explain(exc: BaseException) -> Failure | None:
    """The message, exit code and next step for a domain error; None for a bug (its traceback is the message)."""
    from pydantic import ValidationError

    from sweep_platform import validation_errors
    from trainables.registry import InputFileError, TrainableNotFoundError

    if isinstance(exc, BinsweepError):
        return Failure(str(exc), exc.exit_code, exc.hint)
    if isinstance(exc, KeyboardInterrupt):
        return Failure("interrupted", INTERRUPTED)
    if isinstance(exc, TrainableNotFoundError):
        return Failure(str(exc), USAGE_ERROR, "`binsweep trainables` lists the installed ones")
    if isinstance(exc, ValidationError):
        return Failure(validation_errors.describe(exc, exc.title), USAGE_ERROR)
    if isinstance(exc, FloatingPointError):
        return Failure(f"training diverged: {exc}", RUN_ERROR, "try a lower learning rate")
    if isinstance(exc, (InputFileError, FileNotFoundError)) or (isinstance(exc, ValueError)
                                                               and _raised_by_trainable(exc)):
        return Failure(str(exc), USAGE_ERROR)
    return None


def _raised_by_trainable(exc: BaseException) -> bool:
    """Whether a trainable's own code raised `exc`. A trainable cannot raise BinsweepError (it never imports the
    platform): a ValueError it raises itself is how it reports a user's mistake (an --out folder holding another
    build, an unknown environment). One raised deeper, inside numpy or torch, is a bug."""
    from importlib.metadata import entry_points

    from trainables.registry import ENTRY_POINT_GROUP

    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    package = tb.tb_frame.f_globals.get("__name__", "").partition(".")[0]
    return package in {ep.module.partition(".")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)}


# ------------------------------------------------------------------------------------------------------ consoles


def _width(stderr: bool) -> int | None:
    """COLUMNS when set; rich's own tracking of a terminal (None); else LOG_WIDTH, so that tables stay readable
    off a terminal (CI logs, `ray job logs`, pipes), where rich would wrap them at 80 columns."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit():
        return int(columns)
    return None if (sys.stderr if stderr else sys.stdout).isatty() else LOG_WIDTH


def make_console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, width=_width(stderr))


console = make_console()  # results: tables, lines a script may read
err_console = make_console(stderr=True)  # errors, notices


def fit_consoles() -> None:
    """Size both consoles for the command about to run: COLUMNS or the stream may differ from when this module was
    imported (one process runs many commands under typer's CliRunner)."""
    console.width = _width(stderr=False)
    err_console.width = _width(stderr=True)
