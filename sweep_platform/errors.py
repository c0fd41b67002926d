"""Turns known failures into one clear line and an exit code; tracebacks only with BINSWEEP_DEBUG=1."""

from __future__ import annotations

import os
import sys

from rich.console import Console

err_console = Console(stderr=True)

LOG_WIDTH = 160  # columns for tables written off a terminal


def make_console(stderr: bool = False) -> Console:
    """A rich console that keeps tables readable where output is not a terminal (CI logs, `ray job logs`, pipes):
    rich would wrap them at 80 columns there. COLUMNS, when set, still decides."""
    stream = sys.stderr if stderr else sys.stdout
    if "COLUMNS" in os.environ or stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=LOG_WIDTH)

USAGE_ERROR = 2  # bad input: config, YAML, flags
RUN_ERROR = 1  # the work itself failed


def _describe_validation_error(exc) -> str:
    lines = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {where}: {e['msg']}")
    return f"invalid {exc.title} configuration:\n" + "\n".join(lines)


def format_known(exc: BaseException) -> tuple[str, int] | None:
    """A message and exit code for errors a user can fix, or None for genuine bugs."""
    from pydantic import ValidationError

    from trainables.registry import TrainableNotFoundError

    if isinstance(exc, ValidationError):
        return _describe_validation_error(exc), USAGE_ERROR
    if isinstance(exc, (TrainableNotFoundError, KeyError)) and exc.args:
        return str(exc.args[0]), USAGE_ERROR
    if isinstance(exc, FloatingPointError):
        return f"training diverged: {exc}", RUN_ERROR
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return str(exc), USAGE_ERROR
    return None


def run_guarded(fn) -> None:
    try:
        fn()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place errors become messages
        known = format_known(exc)
        if known is None or os.environ.get("BINSWEEP_DEBUG") == "1":
            raise
        message, code = known
        err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
        err_console.print("[dim](set BINSWEEP_DEBUG=1 for the traceback)[/dim]")
        sys.exit(code)
