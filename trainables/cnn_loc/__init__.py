"""cnn_loc, a convolutional binaural localization baseline in the spirit of the BAST paper's NI-CNN*, as a trainable.

It shares everything with BAST but the model: the front end, dataset, recipe, losses, evaluation, predictor and
commands (trainables.localization.spec). Registered through the entry point `cnn_loc = "trainables.cnn_loc:SPEC"`
(pyproject.toml, group binsweep.trainables).
"""

from trainables.cnn_loc.config import PRESETS, CNNLocConfig, CNNLocModelConfig, preset
from trainables.cnn_loc.paper import COLUMNS as PAPER_COLUMNS
from trainables.cnn_loc.paper import SOURCE as PAPER_SOURCE
from trainables.cnn_loc.paper import paper_values
from trainables.localization.spec import localizer_spec
from trainables.registry import PaperReference


def _build(config: CNNLocConfig):
    from trainables.cnn_loc.model import CNNLoc  # torch: imported when a model is built, not when the spec is listed

    return CNNLoc(config.model)


SPEC = localizer_spec(
    name="cnn_loc",
    description="binaural sound localization with a CNN baseline: left/right spectrograms -> azimuth (x, y)",
    config_type=CNNLocConfig,
    build_model=_build,
    presets=PRESETS,
    paper=PaperReference(source=PAPER_SOURCE, lookup=paper_values, columns=PAPER_COLUMNS),
)

__all__ = ["CNNLocConfig", "CNNLocModelConfig", "preset", "SPEC"]
