"""BAST, the Binaural Audio Spectrogram Transformer (Kuang et al. 2022), as a binsweep trainable.

Registered through the entry point `bast = "trainables.bast:SPEC"` (pyproject.toml, group binsweep.trainables).
"""

from trainables.bast.config import PRESETS, BASTConfig, BASTModelConfig, DataConfig, LossConfig, TrainConfig, preset
from trainables.localization.dataset import BUILDER as LOCALIZATION_BUILDER
from trainables.localization.predict import PREDICTOR as LOCALIZATION_PREDICTOR
from trainables.registry import PaperReference, TrainableSpec


def _build(config: BASTConfig):
    from trainables.bast.model import BAST  # torch: imported when a model is built, not when the spec is listed

    return BAST(config.model)


def _recipe(config: BASTConfig):
    from trainables.bast.recipe import BASTRecipe

    return BASTRecipe(config)


def _evaluate(model, config: BASTConfig, split: str = "test", out_dir=None, device="cpu"):
    """The test-split analysis of the paper (per azimuth, per environment, hemifield, Table 3 row, rollout)."""
    from trainables.bast.evaluate import evaluate_spec

    return evaluate_spec(model, config, split, out_dir=out_dir, device=device)


def _example_input(config: BASTConfig):
    import torch

    return torch.zeros(1, 2, config.model.freq_bins, config.model.frames)


def _commands(services):
    from trainables.localization.cli import commands

    return commands(services)


def _paper_values(params):
    from trainables.bast.paper import paper_values

    return paper_values(params)


SPEC = TrainableSpec(
    name="bast",
    description="binaural sound localization: left/right spectrograms -> azimuth (x, y)",
    config_type=BASTConfig,
    build_model=_build,
    recipe=_recipe,
    primary_metric="val_ad_deg",
    mode="min",
    evaluate=_evaluate,
    example_input=_example_input,
    epoch_metrics=("val_ad_deg", "val_mse", "val_loss", "train_loss"),
    test_metrics=("test_ad_deg", "test_mse"),
    key_params=("model.sharing", "model.integration", "loss.name"),
    presets=PRESETS,
    dataset_builder=LOCALIZATION_BUILDER,
    predictor=LOCALIZATION_PREDICTOR,
    paper=PaperReference(
        source=("Kuang et al. 2022 (arXiv 2207.03927), results per configuration as published in the 2022 README of "
                "github.com/ShengKuangCN/BAST (commit 6ead160), matched by sharing, integration and loss; the paper's "
                "models are full size on its own dataset, so these are a reference point, not a target"),
        lookup=_paper_values, columns=("paper_ad_deg", "paper_mse")),
    commands=_commands,
)

__all__ = ["BASTConfig", "BASTModelConfig", "DataConfig", "LossConfig", "TrainConfig", "preset", "SPEC"]
