"""The BAST paper's NI-CNN* results per configuration, for `binsweep leaderboard --compare-paper` on cnn_loc trials.

Kuang, Shi, van der Heijden & Mehrkanoon, "BAST: Binaural Audio Spectrogram Transformer for Binaural Sound
Localization" (arXiv 2207.03927, 2022), Table 1, row NI-CNN*: the CNN of van der Heijden & Mehrkanoon (Neurocomputing
470, 2022) trained on spectrograms instead of cochleograms, over interaural integration (concat / add / sub) x
training loss (MSE / AD / hybrid): mean angular distance (AD, degrees) and mean squared error of the (x, y) output on
the test set. The table gives no MSE for the models trained with the AD loss, and no SP / NSP variants: every
sharing matches the same row.

MSE scale: as for BAST (trainables/bast/paper.py), the table's MSE is taken to be the BAST authors' evaluation, half of
eq. 2 (the paper evaluates every model of the table the same way; the NI-CNN* code is not public, so this is an
assumption). The column is `paper_mse_ref`, compared with the trial's `test_mse_ref` (eq. 2 / 2).

cnn_loc is a baseline in NI-CNN*'s spirit (the paper does not describe NI-CNN*'s layers), trained here on generated
sounds: a reference point, not a reproduction number for number.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = ("Kuang et al. 2022 (arXiv 2207.03927), Table 1, row NI-CNN* (van der Heijden & Mehrkanoon 2022 on "
          "spectrograms), matched by integration and loss; its layers are not published there, so cnn_loc is a "
          "baseline in its spirit and these are a reference point, not a target; MSE taken to be on the BAST "
          "reference code's scale (eq. 2 / 2, beside the trial's test_mse_ref)")


# The `--compare-paper` columns, named after the trial metric each one is compared with (test_ad_deg, test_mse_ref).
COLUMNS = ("paper_ad_deg", "paper_mse_ref")


@dataclass(frozen=True)
class PaperResult:
    ad_deg: float
    mse_ref: float | None  # on the reference's scale (eq. 2 / 2); not reported for the AD-loss models


# (integration, loss) with binsweep's names: model.integration, loss.name.
TABLE1_NICNN_SPECTROGRAM: dict[tuple[str, str], PaperResult] = {
    ("concat", "mse"): PaperResult(8.92, 0.077),
    ("add", "mse"): PaperResult(3.51, 0.032),
    ("sub", "mse"): PaperResult(3.67, 0.038),
    ("concat", "ad"): PaperResult(7.85, None),
    ("add", "ad"): PaperResult(1.97, None),
    ("sub", "ad"): PaperResult(1.85, None),
    ("concat", "hybrid"): PaperResult(8.35, 0.074),
    ("add", "hybrid"): PaperResult(3.53, 0.033),
    ("sub", "hybrid"): PaperResult(3.19, 0.031),
}


def lookup(integration: str | None, loss: str | None) -> PaperResult | None:
    """The paper's NI-CNN* result for one configuration (names as in CNNLocConfig; case-insensitive), or None."""
    if not (integration and loss):
        return None
    return TABLE1_NICNN_SPECTROGRAM.get((str(integration).lower(), str(loss).lower()))


def paper_values(params) -> dict[str, float | None] | None:
    """`--compare-paper` columns for one trial from its MLflow params, or None when the paper has no such row."""
    row = lookup(params.get("model.integration"), params.get("loss.name"))
    return None if row is None else dict(zip(COLUMNS, (row.ad_deg, row.mse_ref)))
