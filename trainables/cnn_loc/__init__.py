"""cnn_loc, a convolutional binaural localization baseline in the spirit of the BAST paper's NI-CNN*, as a trainable.

It shares everything with BAST but the model: the front end, dataset, recipe (trainables.localization.recipe),
losses, evaluation, predictor and commands. Registered through the entry point `cnn_loc = "trainables.cnn_loc:SPEC"`
(pyproject.toml, group binsweep.trainables).
"""

from trainables.cnn_loc.config import PRESETS, CNNLocConfig, CNNLocModelConfig, preset
from trainables.cnn_loc.paper import SOURCE as PAPER_SOURCE
from trainables.cnn_loc.paper import paper_values
from trainables.localization.dataset import BUILDER as LOCALIZATION_BUILDER
from trainables.localization.predict import PREDICTOR as LOCALIZATION_PREDICTOR
from trainables.registry import PaperReference, TrainableSpec


def _build(config: CNNLocConfig):
    from trainables.cnn_loc.model import CNNLoc  # torch: imported when a model is built, not when the spec is listed

    return CNNLoc(config.model)


def _recipe(config: CNNLocConfig):
    from trainables.localization.recipe import LocalizationRecipe

    return LocalizationRecipe(config, _build)


def _evaluate(model, config: CNNLocConfig, split: str = "test", out_dir=None, device="cpu"):
    """BAST's test-split analysis (per azimuth, per environment, hemifield, Table 3 row); no rollout: no attention."""
    from trainables.bast.evaluate import evaluate_spec

    return evaluate_spec(model, config, split, out_dir=out_dir, device=device)


def _example_input(config: CNNLocConfig):
    import torch

    return torch.zeros(1, 2, config.model.freq_bins, config.model.frames)


def _commands(services):
    from trainables.localization.cli import commands

    return commands(services)


SPEC = TrainableSpec(
    name="cnn_loc",
    description="binaural sound localization with a CNN baseline: left/right spectrograms -> azimuth (x, y)",
    config_type=CNNLocConfig,
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
    paper=PaperReference(source=PAPER_SOURCE, lookup=paper_values, columns=("paper_ad_deg", "paper_mse")),
    commands=_commands,
)

__all__ = ["CNNLocConfig", "CNNLocModelConfig", "preset", "SPEC"]
