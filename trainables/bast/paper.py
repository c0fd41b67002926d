"""The BAST paper's published accuracy per configuration, for `binsweep leaderboard --compare-paper`.

Kuang, Shi, van der Heijden & Mehrkanoon, "BAST: Binaural Audio Spectrogram Transformer for Binaural Sound
Localization" (arXiv 2207.03927, 2022), results table over parameter sharing (SP / NSP) x interaural integration
(add / sub / concat) x training loss (MSE / AD / hybrid): mean angular distance (AD, degrees) and mean squared error
of the (x, y) output on the test set, all azimuths, both environments.

Source of the numbers: the 2022 README of the reference implementation, https://github.com/ShengKuangCN/BAST at
commit 6ead160 (`git show 6ead160:README.md`), as transcribed in shared/reference/bast.md §8; every cell is also the
paper's Table 1 (checked against the paper's text, shared/papers/bast_paper.txt). The headline cell (NSP, sub,
hybrid: 1.29°, MSE 1e-3) matches the paper's abstract. No MSE is given for the models trained with the AD loss; those
cells are None.

MSE scale. The published MSE is the reference code's evaluation: nn.MSELoss over both coordinates, i.e. per sample
sum((p - y)^2) / 2, half of eq. 2 (shared/reference/bast.md §5). binsweep logs both: `test_mse` (eq. 2) and
`test_mse_ref` (eq. 2 / 2). So the paper's column is `paper_mse_ref`, and `--compare-paper` shows it beside the
trial's `test_mse_ref` (the leaderboard pairs `paper_X` with `test_X`). A run evaluated before `test_mse_ref` existed
shows no value beside it; its `test_mse` is on eq. 2's scale, twice the paper's: halve it to compare by hand.

These are the paper's models (D=1024, 3/3/3 layers, 20 epochs) on the NI-CNN dataset (real-life sounds, not public);
a binsweep run on generated sounds and KEMAR responses is comparable in kind, not a reproduction number for number.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = ("Kuang et al. 2022 (arXiv 2207.03927), results per configuration as published in the 2022 README of "
          "github.com/ShengKuangCN/BAST (commit 6ead160) = the paper's Table 1; MSE on the reference code's scale "
          "(eq. 2 / 2)")


# The `--compare-paper` columns, named after the trial metric each one is compared with (test_ad_deg, test_mse_ref).
COLUMNS = ("paper_ad_deg", "paper_mse_ref")


@dataclass(frozen=True)
class PaperResult:
    ad_deg: float
    mse_ref: float | None  # on the reference's scale (eq. 2 / 2); not reported for the AD-loss models


def _row(ad: float, mse: float | None = None) -> PaperResult:
    return PaperResult(ad, mse)


# (sharing, integration, loss) with binsweep's names: model.sharing, model.integration, loss.name.
TABLE1: dict[tuple[str, str, str], PaperResult] = {
    ("NSP", "concat", "mse"): _row(2.78, 0.003),
    ("NSP", "add", "mse"): _row(2.48, 0.002),
    ("NSP", "sub", "mse"): _row(2.42, 0.002),
    ("NSP", "concat", "ad"): _row(2.39),
    ("NSP", "add", "ad"): _row(1.30),
    ("NSP", "sub", "ad"): _row(1.63),
    ("NSP", "concat", "hybrid"): _row(2.76, 0.004),
    ("NSP", "add", "hybrid"): _row(1.83, 0.002),
    ("NSP", "sub", "hybrid"): _row(1.29, 0.001),
    ("SP", "concat", "mse"): _row(2.02, 0.002),
    ("SP", "add", "mse"): _row(4.97, 0.018),
    ("SP", "sub", "mse"): _row(1.94, 0.002),
    ("SP", "concat", "ad"): _row(2.66),
    ("SP", "add", "ad"): _row(13.87),
    ("SP", "sub", "ad"): _row(1.43),
    ("SP", "concat", "hybrid"): _row(1.98, 0.003),
    ("SP", "add", "hybrid"): _row(5.72, 0.026),
    ("SP", "sub", "hybrid"): _row(2.03, 0.002),
}


def lookup(sharing: str | None, integration: str | None, loss: str | None) -> PaperResult | None:
    """The paper's result for one configuration (names as in BASTConfig; case-insensitive), or None."""
    if not (sharing and integration and loss):
        return None
    return TABLE1.get((str(sharing).upper(), str(integration).lower(), str(loss).lower()))


def paper_values(params) -> dict[str, float | None] | None:
    """`--compare-paper` columns for one trial from its MLflow params, or None when the paper has no such row."""
    row = lookup(params.get("model.sharing"), params.get("model.integration"), params.get("loss.name"))
    return None if row is None else dict(zip(COLUMNS, (row.ad_deg, row.mse_ref)))
