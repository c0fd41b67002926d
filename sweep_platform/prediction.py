"""`binsweep predict MODEL FILE...`: run a trained model on input files through its trainable's Predictor.

The model's trainable (from its run's `binsweep.trainable` tag, or a checkpoint's config.json) says what a file must
be and what comes out: each file gives one row of named values (BAST: azimuth_deg). A file the predictor cannot use
(`InputFileError`) gets an error row instead, so the other files are still predicted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweep_platform import model_store
from sweep_platform.errors import BinsweepError
from trainables.registry import InputFileError, TrainableSpec


class NoPredictorError(BinsweepError, ValueError):
    """The model's trainable does not predict from files."""


@dataclass
class FilePrediction:
    """One input file: the predictor's named values, or why the file could not be used."""

    path: str
    values: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def row(self) -> dict[str, Any]:
        """path, then the values or the error: one flat object per file (JSON output)."""
        return {"path": self.path, **({"error": self.error} if self.error is not None else self.values)}


def predict_files(model_uri: str, files: list[str | Path], device: str = "cpu") -> list[FilePrediction]:
    """One FilePrediction per file, in order, with the model at `model_uri` (a models:/ or runs:/ URI or a
    checkpoint folder)."""
    found = model_store.origin(model_uri)  # looked up once: the trainable before loading, then its params
    spec = found.spec
    if spec.predictor is None:
        raise NoPredictorError(f"trainable {spec.name!r} (the model {model_uri}) has no predictor, so "
                               f"`binsweep predict` cannot run it", hint=_instead(spec))
    model, config = model_store.load_model(model_uri, device=device, known=found)
    out = []
    for f in files:
        try:
            values = spec.predictor.predict_file(model, config, Path(f), device)
        except InputFileError as exc:
            out.append(FilePrediction(str(f), error=str(exc)))
            continue
        out.append(FilePrediction(str(f), dict(values)))
    return out


def _instead(spec: TrainableSpec) -> str:
    """What to run instead: the trainable's own top-level commands, when it adds any."""
    from sweep_platform.trainable_commands import SERVICES

    try:
        commands = [c.name for c in spec.commands(SERVICES) if c.group is None] if spec.commands else []
    except Exception:  # noqa: BLE001 - a broken commands hook must not hide the real error
        commands = []
    if commands:
        return (f"use the commands {spec.name} adds: " + ", ".join(f"`binsweep {c}`" for c in commands)
                + " (`binsweep --help` shows them)")
    return (f"{spec.name} adds no commands either; load its models in Python with "
            "sweep_platform.model_store.load_model(MODEL_URI)")
