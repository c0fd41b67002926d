"""Sweep files: one YAML file in, one validated `SweepSpec` out, every problem reported before anything runs.

A sweep file names the trainable, the dataset, the fixed base config, the parameters to search (dotted key paths
into the trainable's config), the sampler, the scheduler and the resources per trial (format: search_spaces/README.md).
Validation has three layers, each line of an error naming the file, the key path and what is allowed: the YAML
syntax (configfile), the schema (sweep_spec), and the checks that need the trainable (sweep_checks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sweep_platform import configfile, sweep_checks, validation_errors
from sweep_platform.configfile import ConfigError
from sweep_platform.sweep_spec import SweepSpec
from trainables.registry import TrainableNotFoundError, get_trainable, known_trainables


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file; every problem is reported at once in one ConfigError."""
    path = Path(path)
    data = configfile.load_yaml(path)
    data.setdefault("name", path.stem)
    return parse_sweep(data, str(path))


def parse_sweep(data: dict[str, Any], source: str) -> SweepSpec:
    """Validate a sweep given as a dict (what `load_sweep` read); `source` names it in error messages."""
    if "source" in data:  # a field of SweepSpec, but set from the file's path, never in the file
        raise ConfigError(f"{source}: source: unknown key (misspelt?) "
                          f"(allowed: {', '.join(validation_errors.field_names(SweepSpec))})")
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_errors.describe(exc, source, root=SweepSpec)) from None
    try:
        trainable = get_trainable(spec.trainable)
    except TrainableNotFoundError:
        raise ConfigError(f"{source}: trainable: unknown trainable {spec.trainable!r} "
                          f"(allowed: {', '.join(known_trainables())})") from None
    return sweep_checks.check(spec, trainable, source).model_copy(update={"source": source})
