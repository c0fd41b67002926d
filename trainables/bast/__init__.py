"""BAST, the Binaural Audio Spectrogram Transformer (Kuang et al. 2022), as a binsweep trainable."""

from trainables.bast.config import BASTConfig, BASTModelConfig, DataConfig, LossConfig, TrainConfig, preset
from trainables.bast.model import BAST, count_parameters
from trainables.registry import TrainableSpec, register_trainable


def _build(config: BASTConfig) -> BAST:
    return BAST(config.model)


def _recipe(config: BASTConfig):
    from trainables.bast.recipe import BASTRecipe

    return BASTRecipe(config)


def _evaluate(model, config: BASTConfig, split: str = "test", out_dir=None, device="cpu"):
    """The test-split analysis of the paper (per azimuth, per environment, hemifield, Table 3 row, rollout)."""
    from trainables.bast.evaluate import evaluate
    from trainables.bast.recipe import dataset_root
    from trainables.registry import EvalResult

    ev = evaluate(model, dataset_root(config), split, out_dir=out_dir, device=device,
                  train_environments=config.data.train_environments, prefix=split)
    return EvalResult(metrics=ev.metrics, files=ev.files, summary=ev.table(), per_sample_error=ev.predictions.error_deg)


def _example_input(config: BASTConfig):
    import torch

    return torch.zeros(1, 2, config.model.freq_bins, config.model.frames)


SPEC = register_trainable(
    TrainableSpec(
        name="bast",
        description="binaural sound localization: left/right spectrograms -> azimuth (x, y)",
        config_type=BASTConfig,
        build_model=_build,
        primary_metric="val_ad_deg",
        mode="min",
        recipe=_recipe,
        evaluate=_evaluate,
        example_input=_example_input,
    )
)

__all__ = ["BAST", "BASTConfig", "BASTModelConfig", "DataConfig", "LossConfig", "TrainConfig", "count_parameters", "preset", "SPEC"]
