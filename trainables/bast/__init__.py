"""BAST, the Binaural Audio Spectrogram Transformer (Kuang et al. 2022), as a binsweep trainable."""

from trainables.bast.config import BASTConfig, BASTModelConfig, DataConfig, LossConfig, TrainConfig, preset
from trainables.bast.model import BAST, count_parameters
from trainables.registry import TrainableSpec, register_trainable


def _build(config: BASTConfig) -> BAST:
    return BAST(config.model)


SPEC = register_trainable(
    TrainableSpec(
        name="bast",
        description="binaural sound localization: left/right spectrograms -> azimuth (x, y)",
        config_type=BASTConfig,
        build_model=_build,
        primary_metric="val_ad_deg",
        mode="min",
    )
)

__all__ = ["BAST", "BASTConfig", "BASTModelConfig", "DataConfig", "LossConfig", "TrainConfig", "count_parameters", "preset", "SPEC"]
