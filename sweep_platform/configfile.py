"""YAML files in, typed configs out: validated once, here, with errors that name the file, the key and what is allowed.

Every later part receives the typed object and trusts it (DEVELOPERS.md: configs are validated once at the edge).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from sweep_platform import validation_errors
from sweep_platform.errors import BinsweepError

M = TypeVar("M", bound=BaseModel)


class ConfigError(BinsweepError, ValueError):
    """A config file a user must fix; the message names the file, the key path and what is allowed."""


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}{where}: not valid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values, got {type(data).__name__}")
    return data


def validate(config_type: type[M], data: dict[str, Any], source: str, prefix: str = "") -> M:
    """`data` as a `config_type`; prefix: the key path the data sits under in its file, e.g. "dataset_build"."""
    try:
        return config_type.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_errors.describe(exc, source, prefix, root=config_type)) from None


def load_config(config_type: type[M], path: str | Path) -> M:
    return validate(config_type, load_yaml(path), str(path))
