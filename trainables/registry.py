"""The one interface between the platform and what it trains.

A trainable registers a `TrainableSpec` under a name; the platform looks it up by that name and never imports model
internals. Built-in trainables are imported on first lookup, so `binsweep --help` stays fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Literal

from pydantic import BaseModel

# Name -> module whose import registers it.
_BUILTIN = {"bast": "trainables.bast", "binaural": "trainables.binaural"}
_REGISTRY: dict[str, TrainableSpec] = {}


class TrainableNotFoundError(KeyError):
    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


@dataclass(frozen=True)
class TrainableSpec:
    """What a trainable supplies to the platform."""

    name: str
    description: str
    config_type: type[BaseModel]  # validated config with defaults for every field
    build_model: Callable  # config -> torch.nn.Module
    primary_metric: str  # a metric name from design.md, e.g. val_ad_deg
    mode: Literal["min", "max"]
    recipe: Callable  # config -> trainables.loop.Recipe, built on every Train worker
    evaluate: Callable  # (model, config, split, out_dir, device) -> trainables.registry.EvalResult
    example_input: Callable  # config -> a batch of model inputs (for MLflow signatures and smoke checks)


@dataclass
class EvalResult:
    """A trained model scored on a held-out split: named metrics, files to keep (plots, tables) and a text summary."""

    metrics: dict[str, float]
    files: dict[str, object]
    summary: str
    per_sample_error: object = None  # [N] array, for paired tests between two models on the same split


def register_trainable(spec: TrainableSpec) -> TrainableSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"a trainable named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def known_trainables() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def get_trainable(name: str) -> TrainableSpec:
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in _REGISTRY:
        raise TrainableNotFoundError(f"unknown trainable {name!r}; known trainables: {', '.join(known_trainables())}")
    return _REGISTRY[name]
