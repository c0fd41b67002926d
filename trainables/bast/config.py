"""Typed, validated configuration of the BAST trainable: model, loss and training hyperparameters.

Defaults are the paper's (Kuang et al. 2022, §4.3): D=1024, 16 heads, MLP 1024, dropout 0.2, 3/3/3 layers,
Adam 1e-4, batch 48, 50 epochs. A config naming `model: {preset: bast_paper}` also trains as the paper does, in fp32
without gradient clipping (PRESET_TRAIN), unless its `train` section says otherwise. Validation happens once, here;
modules receive these objects and trust them.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainables.presets import expand_model_preset

Sharing = Literal["SP", "NSP"]
Integration = Literal["add", "sub", "concat"]
LossName = Literal["mse", "ad", "hybrid"]


class _Strict(BaseModel):
    # A misspelt key must fail loudly rather than silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class BASTModelConfig(_Strict):
    """Architecture of BAST (paper §3.1, Fig. 1)."""

    freq_bins: int = Field(129, gt=0, description="spectrogram height H (frequency bins)")
    frames: int = Field(61, gt=0, description="spectrogram width T (time frames)")
    patch_size: int = Field(16, gt=0, description="patch side P")
    patch_stride: int = Field(6, gt=0, description="stride S between patches (P - overlap)")
    patch_padding: Literal["zeros", "reflect"] = Field(
        "zeros", description="how the spectrogram is padded on top and right to the patch grid (paper: zeros)"
    )
    embed_dim: int = Field(1024, gt=0, description="token width D")
    heads: int = Field(16, gt=0)
    dim_head: int = Field(64, gt=0, description="width of one attention head; attention inner width = heads*dim_head")
    mlp_dim: int = Field(1024, gt=0)
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout in attention output and MLP")
    emb_dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout after the position embedding")
    layers_left: int = Field(3, ge=1)
    layers_right: int = Field(3, ge=1)
    layers_center: int = Field(3, ge=1)
    sharing: Sharing = Field("NSP", description="SP: TE-R is TE-L; NSP: separate weights")
    integration: Integration = Field("sub", description="interaural integration: add, sub (left - right) or concat")
    pos_embedding: Literal["sinusoidal", "learned"] = Field(
        "sinusoidal", description="fixed absolute (paper) or learned (reference code)"
    )
    cls_token: bool = Field(False, description="prepend a learned CLS token (reference code); off in the paper")
    pool: Literal["mean", "cls"] = Field("mean", description="mean over tokens, or the CLS token")

    @model_validator(mode="after")
    def _check(self) -> BASTModelConfig:
        if self.sharing == "SP" and self.layers_left != self.layers_right:
            raise ValueError(
                f"sharing=SP uses one encoder for both ears, so layers_left ({self.layers_left}) must equal "
                f"layers_right ({self.layers_right}); set them equal or use sharing=NSP"
            )
        if self.pool == "cls" and not self.cls_token:
            raise ValueError("pool=cls needs cls_token=true")
        if self.patch_size > self.freq_bins or self.patch_size > self.frames:
            raise ValueError(
                f"patch_size {self.patch_size} is larger than the spectrogram {self.freq_bins}x{self.frames}"
            )
        if self.pos_embedding == "sinusoidal" and self.embed_dim % 2:
            raise ValueError(f"sinusoidal position embedding needs an even embed_dim, got {self.embed_dim}")
        return self

    @property
    def grid(self) -> tuple[int, int]:
        """Patches along frequency and time: N_H = ceil((H - P) / S) + 1 (paper eq. 1)."""
        n_h = math.ceil((self.freq_bins - self.patch_size) / self.patch_stride) + 1
        n_t = math.ceil((self.frames - self.patch_size) / self.patch_stride) + 1
        return n_h, n_t

    @property
    def num_patches(self) -> int:
        n_h, n_t = self.grid
        return n_h * n_t

    @property
    def center_dim(self) -> int:
        """Width of TE-C: 2D after concatenation, D otherwise."""
        return 2 * self.embed_dim if self.integration == "concat" else self.embed_dim


class LossConfig(_Strict):
    """Training loss (paper §3.2): MSE (eq. 2), AD (eq. 3) or hybrid = alpha*AD + (1 - alpha)*MSE."""

    name: LossName = "hybrid"
    # The paper gives no alpha. Its reference code trains with eq2/2 + angle in radians, 1:1, which is
    # alpha = 2*pi / (1 + 2*pi) ~ 0.8627 here (derivation: search_spaces/bast_paper_grid.yaml).
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of AD in the hybrid loss (the loss mix); the "
                         "reference code's 1:1 mix is 2*pi/(1+2*pi) ~ 0.8627")


class TrainConfig(_Strict):
    """Optimisation settings (paper §4.3: Adam 1e-4, batch 48, 50 epochs, constant rate)."""

    epochs: int = Field(50, ge=1)
    batch_size: int = Field(48, ge=1, description="global batch: split evenly over the Train workers")
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    schedule: Literal["constant", "cosine"] = Field("constant", description="learning-rate schedule after warmup")
    warmup_epochs: float = Field(0.0, ge=0.0, description="linear warmup from 0, in epochs (fractions allowed)")
    grad_clip: float | None = Field(1.0, gt=0.0, description="clip the global gradient norm; null = no clipping")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto = bf16 autocast on CUDA, fp32 on CPU")
    compile: bool = Field(False, description="torch.compile the model")
    seed: int = 0


class DataConfig(_Strict):
    """Which localization dataset (built by `binsweep data localization`) and which of its environments to use."""

    root: str = Field("data/loc", description="dataset folder holding manifest.json; relative to BINSWEEP_HOME")
    train_environments: tuple[str, ...] | None = Field(
        None, description="train and validate on these environments only (all when null); the test split is "
        "always evaluated on every environment, which gives the paper's Table 3 cross-environment row")


class BASTConfig(_Strict):
    """Everything that defines one BAST training run."""

    model: BASTModelConfig = BASTModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data):
        """`model: {preset: bast_tiny, dropout: 0.1}` = the preset with those fields overridden; a preset's training
        settings (PRESET_TRAIN) fill the `train` fields the config leaves unset."""
        return expand_model_preset(_preset_train(data), PRESETS)


def _preset_train(data):
    """`data` with the `train` defaults of its model preset under the fields it sets itself (those always win)."""
    if not (isinstance(data, dict) and isinstance(data.get("model"), dict)):
        return data
    name = data["model"].get("preset")
    defaults = PRESET_TRAIN.get(name) if isinstance(name, str) else None
    if not defaults:
        return data
    train = data.get("train")
    if isinstance(train, BaseModel):
        train = train.model_dump(exclude_unset=True)  # a TrainConfig built in code: only what it was given wins
    if train is not None and not isinstance(train, dict):
        return data  # not a mapping: leave it to the field's own validation error
    return {**data, "train": {**defaults, **(train or {})}}


def _preset(**model) -> BASTModelConfig:
    return BASTModelConfig(**model)


# Named presets only pin numbers; everything else stays at the paper's defaults.
PRESETS: dict[str, BASTModelConfig] = {
    "bast_paper": _preset(),
    "bast_small": _preset(embed_dim=128, heads=4, dim_head=32, mlp_dim=256, layers_left=2, layers_right=2,
                          layers_center=2, dropout=0.1, emb_dropout=0.1),
    "bast_tiny": _preset(embed_dim=64, heads=2, dim_head=32, mlp_dim=128, layers_left=1, layers_right=1,
                         layers_center=1, dropout=0.0, emb_dropout=0.0),
}


# Training settings that belong to a preset, applied where a config naming the preset leaves them unset. The paper
# (and its reference code: no clipping, no AMP; shared/reference/bast.md §5) trains in fp32 without gradient
# clipping, so `bast_paper` does too; the other presets keep TrainConfig's defaults (clip at 1.0, bf16 on CUDA).
PRESET_TRAIN: dict[str, dict] = {
    "bast_paper": {"grad_clip": None, "precision": "fp32"},
}


def preset(name: str, **overrides) -> BASTModelConfig:
    """A named preset with field overrides, validated again as a whole."""
    if name not in PRESETS:
        raise KeyError(f"unknown BAST preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return BASTModelConfig(**{**PRESETS[name].model_dump(), **overrides})
