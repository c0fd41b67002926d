"""BAST, the Binaural Audio Spectrogram Transformer (Kuang et al. 2022), as a binsweep trainable.

Everything but the model is the localizers' shared part (trainables.localization.spec). Registered through the entry
point `bast = "trainables.bast:SPEC"` (pyproject.toml, group binsweep.trainables).
"""

from trainables.bast.config import PRESETS, BASTConfig, BASTModelConfig, DataConfig, LossConfig, TrainConfig, preset
from trainables.localization.spec import localizer_spec
from trainables.registry import PaperReference


def _build(config: BASTConfig):
    from trainables.bast.model import BAST  # torch: imported when a model is built, not when the spec is listed

    return BAST(config.model)


def _paper_values(params):
    from trainables.bast.paper import paper_values

    return paper_values(params)


SPEC = localizer_spec(
    name="bast",
    description="binaural sound localization: left/right spectrograms -> azimuth (x, y)",
    config_type=BASTConfig,
    build_model=_build,
    presets=PRESETS,
    paper=PaperReference(
        source=("Kuang et al. 2022 (arXiv 2207.03927), results per configuration as published in the 2022 README of "
                "github.com/ShengKuangCN/BAST (commit 6ead160), matched by sharing, integration and loss; MSE on the "
                "reference code's scale (eq. 2 / 2, beside the trial's test_mse_ref); the paper's models are full "
                "size on its own dataset, so these are a reference point, not a target"),
        lookup=_paper_values, columns=("paper_ad_deg", "paper_mse_ref")),  # = trainables.bast.paper.COLUMNS
)

__all__ = ["BASTConfig", "BASTModelConfig", "DataConfig", "LossConfig", "TrainConfig", "preset", "SPEC"]
