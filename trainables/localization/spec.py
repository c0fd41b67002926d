"""The TrainableSpec of a binaural localizer: everything but its model is shared.

A localizer maps [B, 2, F, T] left/right spectrograms to (x, y); BAST and cnn_loc differ only in the model and its
config, so the recipe, the test evaluation (the BAST paper's analyses), the metrics, the dataset builder, the WAV
predictor and the dataset commands are declared once, here. Heavy modules (torch, the builder) load on first use.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from pydantic import BaseModel

from trainables.localization.dataset import BUILDER
from trainables.localization.predict import PREDICTOR, SERVING
from trainables.registry import PaperReference, TrainableSpec


class _Recipe:
    """config -> LocalizationRecipe building this localizer's model (picklable, unlike a closure)."""

    def __init__(self, build_model: Callable[[Any], Any]):
        self.build_model = build_model

    def __call__(self, config):
        from trainables.localization.recipe import LocalizationRecipe

        return LocalizationRecipe(config, self.build_model)


def _evaluate(model, config, split: str = "test", out_dir=None, device="cpu"):
    """The BAST paper's analysis of a split: AD, MSE (eq. 2) and `*_mse_ref` (eq. 2 / 2, the reference code's scale),
    front/back confusion rate, per azimuth, per environment (room) and room family, hemifields, Table 3 row, rollout
    when the model has attention maps. A dataset whose clips do not fit the model (sample rate, clip length) is
    refused with both named (`trainables.localization.dataset_fit`); `binsweep evaluate` runs this on any dataset."""
    from trainables.bast.evaluate import evaluate_spec

    return evaluate_spec(model, config, split, out_dir=out_dir, device=device)


def _example_input(config):
    import torch

    return torch.zeros(1, 2, config.model.freq_bins, config.model.frames)  # [1, 2, F, T]


def _commands(services):
    from trainables.localization.cli import commands

    return commands(services)


def _report_notes(trials, dataset, fingerprint=None):
    """BAST-SP's limits on mirror-symmetric data, when the sweep has such trials (trainables.localization.symmetry)."""
    from trainables.localization.symmetry import sp_notes

    return sp_notes(trials, dataset, fingerprint)


def localizer_spec(*, name: str, description: str, config_type: type[BaseModel], build_model: Callable[[Any], Any],
                   presets: Mapping[str, BaseModel], paper: PaperReference | None = None) -> TrainableSpec:
    """A localizer's spec from its own parts: name, config type (with BAST's loss, train and data sections and a
    model section with freq_bins and frames), model builder, presets and published reference values."""
    return TrainableSpec(
        name=name,
        description=description,
        config_type=config_type,
        build_model=build_model,
        recipe=_Recipe(build_model),
        primary_metric="val_ad_deg",
        mode="min",
        evaluate=_evaluate,
        example_input=_example_input,
        epoch_metrics=("val_ad_deg", "val_mse", "val_loss", "train_loss"),
        test_metrics=("test_ad_deg", "test_mse"),
        key_params=("model.sharing", "model.integration", "loss.name"),
        presets=presets,
        dataset_builder=BUILDER,
        predictor=PREDICTOR,
        serving=SERVING,
        paper=paper,
        report_notes=_report_notes,
        commands=_commands,
    )
