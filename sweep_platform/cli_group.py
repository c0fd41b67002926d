"""The root `binsweep` command group: the CLI's one error boundary, and installed trainables' commands mounted on
first need.

The boundary sits in the group's `invoke`, under click's own handling, so it holds for `binsweep` (main), for
`python -m sweep_platform` and for typer's CliRunner alike, while click still reports usage errors (exit 2) itself.
"""

from __future__ import annotations

import os
from typing import Any

import typer
from rich.text import Text
from typer.core import TyperGroup

from sweep_platform import errors

DEBUG_VARIABLE = "BINSWEEP_DEBUG"


class BinsweepGroup(TyperGroup):
    """Domain errors become a message, the next step and their exit code; anything else is a bug and keeps its
    traceback (exit 1). BINSWEEP_DEBUG=1 shows the traceback of domain errors too.

    The platform's commands are registered as usual; the trainables' ones are added when a command line names a
    command the platform does not have, or lists them all (help), so that `binsweep leaderboard` never loads a
    trainable (and torch)."""

    _trainables_mounted = False

    def invoke(self, ctx: typer.Context) -> Any:
        errors.fit_consoles()
        try:
            return super().invoke(ctx)
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the one place errors become messages
            failure = errors.explain(exc)
            if failure is None or os.environ.get(DEBUG_VARIABLE) == "1":
                raise
            _show(failure)
            raise typer.Exit(failure.exit_code) from None

    def list_commands(self, ctx: typer.Context) -> list[str]:
        self._mount_trainables()
        return super().list_commands(ctx)

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:
        if cmd_name not in self.commands:
            self._mount_trainables()
        return super().get_command(ctx, cmd_name)

    def _mount_trainables(self) -> None:
        if self._trainables_mounted:
            return
        self._trainables_mounted = True
        from sweep_platform.trainable_commands import click_commands

        for name, command in click_commands(taken=set(self.commands)).items():
            self.add_command(command, name)


def _show(failure: errors.Failure) -> None:
    out = errors.err_console
    if failure.exit_code == errors.INTERRUPTED:
        out.print(Text(failure.message, style="yellow"))
        return
    out.print(Text.assemble(("error: ", "bold red"), failure.message), soft_wrap=True)
    if failure.hint:
        out.print(Text.assemble(("next: ", "bold"), failure.hint), soft_wrap=True)
    out.print(f"(set {DEBUG_VARIABLE}=1 for the traceback)", style="dim", highlight=False)
