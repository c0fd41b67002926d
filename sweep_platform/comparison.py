"""The promotion gate's statistics: are one model's per-sample test errors significantly better than another's?

A pure decision on two paired arrays of per-sample errors (the same test samples, in the same order): a one-sided
Wilcoxon signed-rank test (scipy) in the direction of the trainable's mode, passed only when p < alpha. Identical
errors never pass (and never reach scipy), and a split too small for the test to reach alpha at all is named as such.
`sweep_platform.promotion` runs it on real models; tests check it against hand-computed exact p-values.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_ALPHA = 0.05
TEST_NAME = "wilcoxon signed-rank"


def _alternative(mode: str) -> str:
    """scipy's alternative for "the challenger is better": its errors smaller (min) or larger (max)."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    return "less" if mode == "min" else "greater"


def paired_test(challenger: np.ndarray, holder: np.ndarray, mode: str = "min") -> dict[str, Any]:
    """Wilcoxon signed-rank on paired per-sample errors (challenger - holder; zero differences dropped, scipy's
    default): `p_one_sided` for "the challenger is better" in `mode`'s direction, and `p_two_sided`. All differences
    zero (the same model twice): statistic nan and both p-values 1, without calling scipy."""
    from scipy import stats

    a, b = np.asarray(challenger, dtype=np.float64), np.asarray(holder, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired errors need two 1-D arrays of one length, got {a.shape} and {b.shape}")
    diff = a - b
    alternative = _alternative(mode)
    out = {"test": TEST_NAME, "alternative": alternative, "n": int(len(diff)),
           "n_differing": int(np.count_nonzero(diff)),
           "mean_challenger": float(a.mean()) if len(a) else float("nan"),
           "mean_holder": float(b.mean()) if len(b) else float("nan"),
           "mean_difference": float(diff.mean()) if len(diff) else float("nan"),
           "statistic": float("nan"), "p_one_sided": 1.0, "p_two_sided": 1.0}
    if out["n_differing"]:
        with warnings.catch_warnings():  # scipy warns about normal approximations on very few differences
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)
            one = stats.wilcoxon(a, b, alternative=alternative)
            two = stats.wilcoxon(a, b, alternative="two-sided")
        p1, p2 = float(one.pvalue), float(two.pvalue)
        out.update(statistic=float(one.statistic), p_one_sided=p1 if np.isfinite(p1) else 1.0,
                   p_two_sided=p2 if np.isfinite(p2) else 1.0)
    return out


def min_pairs(alpha: float) -> int:
    """The fewest paired samples with which a one-sided signed-rank test can reach p < alpha at all: its smallest
    exact p-value is 2**-n (every difference in the challenger's favour), so n must satisfy 2**-n < alpha."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    n = 1
    while 2.0 ** -n >= alpha:
        n += 1
    return n


@dataclass(frozen=True)
class GateResult:
    """The gate's decision on two models' paired per-sample errors.

    outcome: "significant" (passed), "not significant", "identical" (every difference zero) or "too few samples".
    """

    passed: bool
    outcome: str
    alpha: float
    mode: str
    comparison: dict[str, Any]

    @property
    def p(self) -> float:
        return float(self.comparison["p_one_sided"])

    @property
    def n(self) -> int:
        return int(self.comparison["n"])

    def figures(self, holder: str = "holder") -> str:
        """Both means, the p-value against alpha and the sample count, in one clause."""
        c = self.comparison
        sign = "<" if self.passed else ">="
        return (f"mean per-sample test error {c['mean_challenger']:.4g} (challenger) vs {c['mean_holder']:.4g} "
                f"({holder}), one-sided Wilcoxon signed-rank p = {self.p:.3g} ({sign} alpha {self.alpha:g}), "
                f"n = {self.n} paired test samples")

    def why_not(self, holder: str = "holder") -> str:
        """Why the challenger did not pass, with the figures (for a refusal)."""
        if self.outcome == "too few samples":
            return (f"only {self.n} paired test samples: a one-sided Wilcoxon signed-rank test cannot reach p < "
                    f"{self.alpha:g} with fewer than {min_pairs(self.alpha)} ({self.figures(holder)})")
        if self.outcome == "identical":
            return (f"the challenger's per-sample test errors are identical to those of {holder}, so it is not "
                    f"better ({self.figures(holder)})")
        direction = "lower" if self.mode == "min" else "higher"
        return (f"the challenger's per-sample test errors are not significantly {direction} than those of {holder} "
                f"({self.figures(holder)})")


def gate(challenger: np.ndarray, holder: np.ndarray, alpha: float = DEFAULT_ALPHA, mode: str = "min") -> GateResult:
    """Whether the challenger beats the holder on the same test samples: the one-sided paired test in `mode`'s
    direction is significant, p < alpha. Identical errors and too few samples never pass."""
    comparison = paired_test(challenger, holder, mode)
    if comparison["n"] < min_pairs(alpha):
        outcome = "too few samples"
    elif comparison["n_differing"] == 0:
        outcome = "identical"
    elif comparison["p_one_sided"] < alpha:
        outcome = "significant"
    else:
        outcome = "not significant"
    return GateResult(outcome == "significant", outcome, alpha, mode, comparison)


def comparison_line(comparison: dict[str, Any]) -> str:
    """The paired test as one line for the console."""
    c = comparison
    return (f"paired {c['test']} over {c['n']} test samples ({c['n_differing']} differ): challenger mean "
            f"{c['mean_challenger']:.4g} vs holder {c['mean_holder']:.4g} (difference {c['mean_difference']:+.4g}); "
            f"statistic {c['statistic']:.4g}, p one-sided ({c['alternative']}) {c['p_one_sided']:.3g}, p two-sided "
            f"{c['p_two_sided']:.3g}")
