"""The CLI commands installed trainables add (`TrainableSpec.commands`), and the services the platform lends them.

Loading a trainable imports its package (torch, usually), so cli_group calls `click_commands` only when a command
line needs more than the platform's own commands: `binsweep --help`, `binsweep data ...`, `binsweep binauralize`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import typer
from rich.text import Text

from sweep_platform.errors import console, err_console
from trainables.registry import Command, PlatformServices, get_trainable, known_trainables

# The groups a trainable's Command may name, with their help; group None is the top level.
GROUPS = {"data": "Build and import datasets (Parquet shards + manifest.json under data/)."}


def _load_model(source: str, trainable: str) -> tuple[Any, Any]:
    from sweep_platform.model_store import load_model

    return load_model(source, trainable, "cpu")


def _say(text: str) -> None:
    console.print(text, highlight=False, soft_wrap=True, markup=False)


def _warn(text: str) -> None:
    err_console.print(Text.assemble(("notice: ", "yellow"), text), soft_wrap=True)


SERVICES = PlatformServices(load_model=_load_model, say=_say, warn=_warn)


@dataclass
class Contributed:
    """One command and the trainables that contribute it (two localizers share the localization data commands)."""

    command: Command
    owners: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"binsweep {self.command.group + ' ' if self.command.group else ''}{self.command.name}"


def collect() -> tuple[list[Contributed], list[str]]:
    """Every installed trainable's commands, each once, and the problems that kept some out: a trainable that does
    not load, an unknown group, two trainables with different commands of one name (neither is mounted)."""
    found: dict[tuple[str | None, str], Contributed] = {}
    clashes: set[tuple[str | None, str]] = set()
    problems = []
    for name in known_trainables():
        try:
            spec = get_trainable(name)
            commands = spec.commands(SERVICES) if spec.commands else []
        except Exception as exc:  # noqa: BLE001 - one broken trainable must not take the whole CLI down
            problems.append(f"trainable {name} does not load ({type(exc).__name__}: {exc}); its commands are left "
                            "out (`binsweep trainables` shows them all)")
            continue
        for command in commands:
            if command.group is not None and command.group not in GROUPS:
                problems.append(f"trainable {name}: command {command.name!r} names an unknown group "
                                f"{command.group!r} (groups: {', '.join(GROUPS)}); it is left out")
                continue
            key = (command.group, command.name)
            have = found.setdefault(key, Contributed(command))
            if have.command.function is command.function:
                have.owners.append(name)
            else:
                problems.append(f"{have.where}: trainables {', '.join(have.owners)} and {name} define different "
                                "commands of that name; neither is mounted")
                clashes.add(key)
    return [c for key, c in found.items() if key not in clashes], problems


def click_commands(taken: set[str]) -> dict[str, Any]:
    """The trainables' commands as click commands by top-level name (a group such as `data` holds its own), leaving
    out names in `taken` (the platform's own commands). Problems are printed as warnings on stderr."""
    contributed, problems = collect()
    root = typer.Typer()
    groups = {g: typer.Typer(help=text, no_args_is_help=True) for g, text in GROUPS.items()}
    for c in contributed:
        if c.command.group is None and (c.command.name in taken or c.command.name in GROUPS):
            problems.append(f"{c.where} of trainable {', '.join(c.owners)} is left out: the platform has a command "
                            "of that name")
            continue
        target = root if c.command.group is None else groups[c.command.group]
        target.command(c.command.name, rich_help_panel=f"From {', '.join(c.owners)}")(c.command.function)
    for g, sub in groups.items():
        if sub.registered_commands:
            root.add_typer(sub, name=g)
    for problem in problems:
        err_console.print(Text.assemble(("warning: ", "yellow"), problem), soft_wrap=True)
    return dict(typer.main.get_group(root).commands)
