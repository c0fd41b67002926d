"""How a pydantic ValidationError reads to a user: one line per error, `SOURCE: KEY.PATH: what is wrong (allowed:
...)`. The one formatter for config files, sweep files and the CLI's error boundary alike.

It imports nothing of the platform, so that both configfile (whose ConfigError is a BinsweepError) and errors (the
CLI's boundary) can use it without an import cycle.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Union

from pydantic import BaseModel, ValidationError


def describe(exc: ValidationError, source: str | None = None, prefix: str = "", root: Any = None) -> str:
    """Every error of a validation, one line each.

    source: the file (or other origin) the data came from; without one, lines start at the key path.
    prefix: the key path the validated data sits under in that file (e.g. "base"), without a trailing dot.
    root: the validated type; given, an unknown key's line lists the keys allowed beside it (through nested
    models, dict values, list items and optionals).
    """
    lines = []
    for e in exc.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        where = ".".join(x for x in (prefix, key_path(loc)) if x) or "(top level)"
        if e["type"] == "extra_forbidden":
            allowed = _keys_at(root, loc[:-1]) if root is not None else None
            msg = "unknown key (misspelt?)" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
        else:
            msg = error_message(e)
        lines.append(f"{source}: {where}: {msg}" if source else f"{where}: {msg}")
    return "\n".join(lines)


def error_message(error: dict) -> str:
    """One pydantic error's message, without pydantic's "Value error, " and with what is allowed when it knows."""
    msg = error["msg"].removeprefix("Value error, ")
    ctx = error.get("ctx") or {}
    if "expected" in ctx and str(ctx["expected"]) not in msg:
        msg += f" (allowed: {ctx['expected']})"
    return msg


def key_path(loc: tuple) -> str:
    """A pydantic error location as the user writes it: model.layers, objectives[0].metric."""
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else ("." if out else "") + str(p)
    return out


# ------------------------------------------------------------------------------------------ config types


def unwrap(tp):
    """Annotated[X, ...] -> X; Optional[X] -> X (the one non-None member)."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


def is_model(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def field_names(model: type[BaseModel]) -> list[str]:
    """The keys a model accepts, as written in a file (aliases where a field has one)."""
    return [f.alias or name for name, f in model.model_fields.items() if not f.exclude]


def _keys_at(root, loc: tuple) -> list[str] | None:
    """The keys allowed in the model at `loc` inside `root` (through dict values and list items), or None."""
    tp = root
    for part in loc:
        tp = unwrap(tp)
        if is_model(tp):
            fields = {f.alias or name: f for name, f in tp.model_fields.items()}
            if part not in fields:
                return None
            tp = fields[part].annotation
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        elif typing.get_origin(tp) in (list, tuple):
            tp = typing.get_args(tp)[0]
        else:
            return None
    tp = unwrap(tp)
    return field_names(tp) if is_model(tp) else None
