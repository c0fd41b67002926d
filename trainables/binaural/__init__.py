"""Depth-infused binaural audio generation (Parida et al. 2021) as the binsweep trainable "binaural".

config (BinauralConfig, presets), model (BinauralNet), losses, metrics (the 2.5D / PseudoBinaural evaluation),
scenes + data (generated scenes, Parquet shards, the reader), fairplay (FAIR-Play import: whole recordings, one
view per split) + frame_augment (2.5D's frame crop and jitter), paper (the paper's Tables 1 and 2), recipe (the
shared loop's Recipe), evaluate (test-split metrics and plots), inference (whole-clip binauralization,
`binsweep binauralize`).
"""

from trainables.binaural import paper as _paper
from trainables.binaural.config import (PRESETS, BinauralConfig, BinauralModelConfig, DataConfig, LossConfig,
                                        TrainConfig, preset)
from trainables.registry import DatasetBuilder, PaperReference, Serving, Tensor, TrainableSpec


def _build(config: BinauralConfig):
    from trainables.binaural.model import BinauralModel

    return BinauralModel(config.model)  # relative weights paths: under BINSWEEP_HOME (weights.read_checkpoint)


def _recipe(config: BinauralConfig):
    from trainables.binaural.recipe import BinauralRecipe

    return BinauralRecipe(config)


def _evaluate(model, config: BinauralConfig, split: str = "test", out_dir=None, device="cpu"):
    """Whole test clips by sliding windows: STFT/ENV/Mag/Phase/SNR next to the mono baseline, plots and WAVs."""
    from trainables.binaural.evaluate import evaluate
    from trainables.binaural.recipe import dataset_root
    from trainables.registry import EvalResult

    ev = evaluate(model, dataset_root(config), split, out_dir=out_dir, device=device)
    return EvalResult(metrics=ev.metrics, files=ev.files, summary=ev.table(), per_sample_error=ev.stft_per_clip)


def _example_input(config: BinauralConfig) -> dict:
    """One window's inputs as the keyword arguments of the model's forward (the model also takes this dict whole)."""
    import torch

    cfg = config.model
    x = {"mix_spec": torch.zeros(1, 2, cfg.freq_bins, cfg.frames)}
    if cfg.needs_image:
        x["image"] = torch.zeros(1, 3, *cfg.image_size)
    if cfg.needs_depth_map:
        x["depth"] = torch.ones(1, 1, *cfg.image_size)
    return x


def _serve_inputs(config: BinauralConfig):
    from trainables.binaural.inference import serve_inputs

    return serve_inputs(config)


def _serve_example(config: BinauralConfig):
    from trainables.binaural.inference import serve_example

    return serve_example(config)


def _serve(model, config: BinauralConfig, inputs, device="cpu"):
    from trainables.binaural.inference import serve

    return serve(model, config, inputs, device)


def _trained_config(config: BinauralConfig) -> BinauralConfig:
    from trainables.binaural.inference import trained_config

    return trained_config(config)


# A logged model takes what a user has: mono waveforms, the scene's RGB frame (and depth for depth_source=map), and
# returns the two ears (inference.serve); pyarrow comes in through the recipe's module, PIL resizes frames.
SERVING = Serving(inputs=_serve_inputs, example=_serve_example, predict=_serve, trained_config=_trained_config,
                  output=Tensor("float32", (-1, 2, -1), "the two ears (channel 0 = left) at the model's rate, as long "
                                                        "as the mono input"),
                  requirements=("scipy", "timm", "torchvision", "pillow", "pyarrow"))


def _initialisation(config: BinauralConfig) -> dict[str, str]:
    """How the image and depth ViTs start (weights file or random init) and what the depth branch reads."""
    from trainables.binaural.weights import describe_init

    return describe_init(config.model)


# `--compare-paper`: the paper's Table 1 (split 1) and Table 2 numbers of the trial's variant (paper.py says which
# row matches which configuration); the page's note also lists Table 2's other methods. paper.py imports nothing.
PAPER = PaperReference(source=f"{_paper.SOURCE}. Table 2's other methods, STFT / ENV: {_paper.baselines_note()}",
                       lookup=_paper.paper_values, columns=_paper.COLUMNS)


def _commands(services):
    from trainables.binaural.cli import commands

    return commands(services)


SPEC = TrainableSpec(
    name="binaural",
    description="mono-to-binaural generation: mono mix + frame (+ depth) -> left/right via complex masks on the "
                "mix (a difference mask, two ear masks, or both: model.masks)",
    config_type=BinauralConfig,
    build_model=_build,
    recipe=_recipe,
    primary_metric="val_stft_dist",
    mode="min",
    evaluate=_evaluate,
    example_input=_example_input,
    epoch_metrics=("val_stft_dist", "val_env_dist", "val_loss", "train_loss"),
    test_metrics=("test_stft_dist", "test_env_dist"),
    presets=PRESETS,
    serving=SERVING,
    dataset_builder=DatasetBuilder(config="trainables.binaural.data:BinauralBuildConfig",
                                   builder="trainables.binaural.data:build", command="binsweep data binaural"),
    commands=_commands,
    paper=PAPER,
    initialisation=_initialisation,
)

__all__ = ["BinauralConfig", "BinauralModelConfig", "DataConfig", "LossConfig", "TrainConfig", "preset", "SPEC"]
