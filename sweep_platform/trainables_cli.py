"""`binsweep trainables`: what is installed, where it comes from, what it optimises and what its config holds.

A trainable that does not load is listed with its error, never taken for absent: the listing is where a user looks
when `binsweep train NAME` fails.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from sweep_platform import cli_options as opt
from sweep_platform.errors import console


def trainables(
    fields: Annotated[bool, typer.Option("--fields", help="Also list each trainable's config keys (as a sweep "
                                         "file's base and space write them) with their defaults.")] = False,
    format: opt.FormatOpt = opt.Format.table,
) -> None:
    """List the installed trainables: name, package, primary metric and mode, test metrics, presets.

    Trainables come from the entry-point group binsweep.trainables (README: bring your own model). The JSON has
    every config key with its default too.

    Example: binsweep trainables --fields
    """
    from trainables.registry import known_trainables

    found = [describe(name) for name in known_trainables()]
    if format is opt.Format.json:
        typer.echo(json.dumps(found, indent=2))
        return
    _print_table(found)
    if fields:
        for t in found:
            if "fields" in t:
                _print_fields(t)


def describe(name: str) -> dict[str, Any]:
    """One trainable as plain data; a trainable that does not load has its `error` instead of the rest."""
    from trainables.registry import get_trainable, trainable_source

    try:
        spec = get_trainable(name)
    except Exception as exc:  # noqa: BLE001 - a broken trainable is listed, not fatal to the listing
        return {"name": name, "source": trainable_source(name), "error": f"{type(exc).__name__}: {exc}"}
    return {
        "name": name,
        "source": trainable_source(name),
        "description": spec.description,
        "primary_metric": spec.primary_metric,
        "mode": spec.mode,
        "test_metrics": list(spec.test_metrics or (spec.default_test_metric,)),
        "presets": sorted(spec.presets),
        "fields": config_defaults(spec.config_type),
    }


def config_defaults(config_type) -> dict[str, Any]:
    """Every key of a config type with its default, flattened to the dotted keys a sweep file uses (model.depth)."""
    from sweep_platform.sweep_spec import flatten

    return flatten(config_type().model_dump(mode="json", by_alias=True))


def _print_table(found: list[dict[str, Any]]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title="installed trainables")
    for column in ("trainable", "from", "primary metric", "test metrics", "presets", "description"):
        table.add_column(column, overflow="fold")
    for t in found:
        if "error" in t:
            table.add_row(t["name"], t["source"], "", "", "", Text(f"does not load: {t['error']}", style="red"))
            continue
        table.add_row(t["name"], t["source"], f"{t['primary_metric']} ({t['mode']})", ", ".join(t["test_metrics"]),
                      ", ".join(t["presets"]), Text(t["description"]))
    console.print(table)
    if not found:
        console.print("no trainables installed (is binsweep installed? `pip install -e .`)", highlight=False)


def _print_fields(t: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table("key", "default", title=f"{t['name']} config ({t['source']})")
    for key, value in t["fields"].items():
        table.add_row(key, Text(value if isinstance(value, str) else json.dumps(value)))
    console.print(table)
