"""Named model presets in configs: `model: {preset: NAME, field: value}` is the preset with those fields overridden.

Shared by every trainable config that has a `model` section and a table of presets (bast, cnn_loc, binaural).
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import BaseModel


def expand_model_preset(data: Any, presets: Mapping[str, BaseModel]) -> Any:
    """A config's raw data with `model.preset` replaced by the preset's fields (a pydantic "before" validator)."""
    if isinstance(data, dict) and isinstance(data.get("model"), dict) and "preset" in data["model"]:
        model = dict(data["model"])
        name = model.pop("preset")
        if name not in presets:
            raise ValueError(f"model.preset {name!r} is unknown; allowed: {', '.join(sorted(presets))}")
        data = {**data, "model": {**presets[name].model_dump(), **model}}
    return data
