"""Typed, validated configuration of the CNN localization baseline: model, plus BAST's loss, training and data sections.

The loss, training and data sections are BAST's own classes (the recipe, losses and evaluation are shared), so a
cnn_loc run and a BAST run on the same dataset differ only in `model`. Validation happens once, here.

The BAST paper compares BAST with NI-CNN* (van der Heijden & Mehrkanoon 2022, on spectrograms) but does not describe
its layers, so the default sizes below are this baseline's own, not a published architecture.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from trainables.bast.config import DataConfig, Integration, LossConfig, Sharing, TrainConfig
from trainables.presets import expand_model_preset

POOL = 2  # every convolutional block halves frequency and time (2x2 max-pool)


def pooled(size: int, blocks: int) -> int:
    """Length of an axis after `blocks` 2x2 max-pools (floor division, as nn.MaxPool2d)."""
    for _ in range(blocks):
        size //= POOL
    return size


class _Strict(BaseModel):
    # A misspelt key must fail loudly rather than silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class CNNLocModelConfig(_Strict):
    """Architecture: two ear streams of conv blocks, interaural integration, a center conv stack, an (x, y) head."""

    freq_bins: int = Field(129, gt=0, description="spectrogram height F (frequency bins)")
    frames: int = Field(61, gt=0, description="spectrogram width T (time frames)")
    ear_channels: tuple[PositiveInt, ...] = Field(
        (32, 64), min_length=1, description="output channels of each conv block of one ear stream (left = right)")
    center_channels: tuple[PositiveInt, ...] = Field(
        (128, 128), min_length=1, description="output channels of each conv block after the integration")
    kernel_size: int = Field(3, gt=0, description="square kernel side; odd, so 'same' padding keeps the grid")
    head_dim: int = Field(256, gt=0, description="hidden width of the (x, y) head")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout before each linear layer of the head")
    sharing: Sharing = Field("NSP", description="SP: the right stream is the left one; NSP: separate weights")
    integration: Integration = Field("sub", description="interaural integration: add, sub (left - right) or concat")

    @model_validator(mode="after")
    def _check(self) -> CNNLocModelConfig:
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same padding), got {self.kernel_size}")
        if min(self.grid) < 1:
            raise ValueError(
                f"{self.blocks} conv blocks (ear_channels + center_channels) each halve the spectrogram, so "
                f"{self.freq_bins}x{self.frames} becomes {self.grid[0]}x{self.grid[1]}; use fewer blocks")
        return self

    @property
    def blocks(self) -> int:
        """Conv blocks on the path from one ear to the head."""
        return len(self.ear_channels) + len(self.center_channels)

    @property
    def integrated_channels(self) -> int:
        """Channels entering the center stack: twice an ear stream's after concatenation."""
        return self.ear_channels[-1] * (2 if self.integration == "concat" else 1)

    @property
    def grid(self) -> tuple[int, int]:
        """Frequency rows and time frames left after every block: (F', T')."""
        return pooled(self.freq_bins, self.blocks), pooled(self.frames, self.blocks)


class CNNLocConfig(_Strict):
    """Everything that defines one cnn_loc training run."""

    model: CNNLocModelConfig = CNNLocModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data):
        """`model: {preset: cnn_loc_tiny, dropout: 0.1}` = the preset with those fields overridden."""
        return expand_model_preset(data, PRESETS)


# Named presets only pin sizes; sharing and integration stay free for a sweep to choose.
PRESETS: dict[str, CNNLocModelConfig] = {
    "cnn_loc_base": CNNLocModelConfig(),
    "cnn_loc_small": CNNLocModelConfig(ear_channels=(16, 32), center_channels=(64, 64), head_dim=128, dropout=0.1),
    "cnn_loc_tiny": CNNLocModelConfig(ear_channels=(8, 16), center_channels=(32,), head_dim=32, dropout=0.0),
}


def preset(name: str, **overrides) -> CNNLocModelConfig:
    """A named preset with field overrides, validated again as a whole."""
    if name not in PRESETS:
        raise KeyError(f"unknown cnn_loc preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return CNNLocModelConfig(**{**PRESETS[name].model_dump(), **overrides})
