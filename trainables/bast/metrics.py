"""Localization metrics and the paper's analyses (§4.2, §5.2–5.4): pure functions, arrays in, numbers out.

- AD: angle between predicted and true direction in degrees (exact: no clamp, float64), averaged.
- MSE: squared Euclidean distance between predicted and true (x, y), averaged (eq. 2); `mse_ref` is half of it, the
  scale the reference code reports (nn.MSELoss over both coordinates = per-sample sum((p - y)^2) / 2).
- Front/back confusion rate: how often a prediction lands on the wrong side of the interaural axis (`front_back`).
- Per azimuth and per environment breakdowns.
- Left versus right hemifield: per-azimuth means at mirrored azimuths (az and 360 − az, the midline excluded)
  compared with paired t-tests, corrected for multiple comparisons by Benjamini–Hochberg FDR (Fig. 3–4).

Azimuths are degrees counter-clockwise from the front (90 = left), as in `design.md`.
Notation: N samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.stats

METRICS = ("ad_deg", "mse")


def _as_xy(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"expected an [N, 2] array of (x, y) coordinates, got shape {a.shape}")
    return a


def _pred_target(pred, target) -> tuple[np.ndarray, np.ndarray]:
    """Both as [N, 2] float64 arrays of the same length.

    Without the length check a single prediction would silently broadcast against every target.
    """
    p, t = _as_xy(pred), _as_xy(target)
    if len(p) != len(t):
        raise ValueError(f"pred has {len(p)} rows but target has {len(t)}: expected one prediction per target")
    return p, t


def angular_error_deg(pred, target) -> np.ndarray:
    """[N, 2], [N, 2] -> [N] angle between prediction and target in degrees, in [0, 180].

    A zero prediction has no direction and scores 90° (chance), matching the loss.
    """
    p, t = _pred_target(pred, target)
    cross = p[:, 0] * t[:, 1] - p[:, 1] * t[:, 0]
    dot = np.sum(p * t, axis=1)
    angle = np.degrees(np.arctan2(np.abs(cross), dot))
    return np.where((cross == 0) & (dot == 0), 90.0, angle)


def squared_error(pred, target) -> np.ndarray:
    """[N, 2], [N, 2] -> [N] squared Euclidean distance."""
    p, t = _pred_target(pred, target)
    return np.sum((p - t) ** 2, axis=1)


def mse_ref(pred, target) -> float:
    """The reference code's MSE (eval_BAST.py, nn.MSELoss): the mean over samples and both coordinates, i.e. eq. 2
    divided by 2."""
    return float(np.mean(squared_error(pred, target))) / 2.0


def front_back(pred, target) -> tuple[np.ndarray, np.ndarray]:
    """[N, 2], [N, 2] -> (confused [N] bool, eligible [N] bool): front/back confusions.

    The interaural axis is the y axis (90° = left, 270° = right), so a direction is in front when x > 0 and behind
    when x < 0. A sample is *eligible* when its target is off the axis (|x| > 1e-9: not 90° or 270°, whose front/back
    mirror is themselves). An eligible sample is *confused* when its prediction lies strictly on the other side of the
    axis (pred_x * target_x < 0). Equivalently: the prediction is closer in angle to the target's mirror image across
    the axis, (-x, y) = azimuth 180 - az, than to the target itself, since p . (-x, y) > p . (x, y) iff p_x x < 0.
    A prediction exactly on the axis (p_x = 0, also the zero vector) is not a confusion: it picks no side.
    """
    p, t = _pred_target(pred, target)
    eligible = np.abs(t[:, 0]) > 1e-9
    return eligible & (p[:, 0] * t[:, 0] < 0), eligible


def front_back_rate(pred, target) -> float | None:
    """Confused / eligible samples (see `front_back`) in [0, 1]; None when no target is off the interaural axis."""
    confused, eligible = front_back(pred, target)
    return float(confused.sum() / eligible.sum()) if eligible.any() else None


def summary(pred, target, prefix: str = "") -> dict[str, float]:
    """Mean AD (degrees) and MSE, keyed `{prefix}_ad_deg` and `{prefix}_mse` (e.g. val_ad_deg, test_mse)."""
    head = f"{prefix}_" if prefix else ""
    return {
        f"{head}ad_deg": float(np.mean(angular_error_deg(pred, target))),
        f"{head}mse": float(np.mean(squared_error(pred, target))),
    }


def target_azimuth_deg(target) -> np.ndarray:
    """True azimuth in whole degrees [0, 360) recovered from (cos az, sin az) targets."""
    t = _as_xy(target)
    return np.mod(np.rint(np.degrees(np.arctan2(t[:, 1], t[:, 0]))), 360.0).astype(int)


@dataclass(frozen=True)
class GroupStats:
    """Mean metrics over one group of samples."""

    group: str | int
    n: int
    ad_deg: float
    mse: float
    front_back_rate: float | None = None  # None: no sample off the interaural axis (see `front_back`)

    @property
    def mse_ref(self) -> float:
        """The MSE on the reference code's scale (eq. 2 / 2, see `mse_ref`)."""
        return self.mse / 2.0


def per_group(pred, target, groups) -> list[GroupStats]:
    """Mean AD, MSE and front/back confusion rate for each distinct value of `groups` ([N]), in sorted order."""
    groups = np.asarray(groups)
    if len(groups) != len(_as_xy(pred)):
        raise ValueError(f"groups has {len(groups)} entries for {len(pred)} predictions")
    ad, se = angular_error_deg(pred, target), squared_error(pred, target)
    confused, eligible = front_back(pred, target)
    out = []
    for g in np.unique(groups):
        mask = groups == g
        key = g.item() if hasattr(g, "item") else g
        n_eligible = int(eligible[mask].sum())
        fb = float(confused[mask].sum() / n_eligible) if n_eligible else None
        out.append(GroupStats(key, int(mask.sum()), float(ad[mask].mean()), float(se[mask].mean()), fb))
    return out


def per_azimuth(pred, target, azimuth_deg=None) -> list[GroupStats]:
    """Mean AD and MSE at each true azimuth (taken from the targets when not given)."""
    az = target_azimuth_deg(target) if azimuth_deg is None else np.mod(np.rint(azimuth_deg), 360).astype(int)
    return per_group(pred, target, az)


def per_environment(pred, target, environment) -> list[GroupStats]:
    """Mean AD and MSE for each environment (e.g. anechoic, reverberant)."""
    return per_group(pred, target, np.asarray(environment).astype(str))


@dataclass(frozen=True)
class HemifieldTest:
    """Paired t-test of one metric between the left (0 < az < 180) and right (180 < az < 360) hemifields."""

    metric: str
    environment: str
    n_pairs: int
    left_mean: float
    right_mean: float
    t: float
    p: float
    p_fdr: float
    significant: bool

    def to_dict(self) -> dict:
        return asdict(self)


def mirrored_pairs(stats: list[GroupStats], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-azimuth values at left azimuths a and their mirrors 360 − a: (azimuths, left values, right values)."""
    by_az = {int(s.group): getattr(s, metric) for s in stats}
    left_az = np.array(sorted(a for a in by_az if 0 < a < 180 and (360 - a) in by_az), dtype=int)
    return left_az, np.array([by_az[a] for a in left_az]), np.array([by_az[360 - a] for a in left_az])


def hemifield_tests(pred, target, azimuth_deg=None, environment=None, alpha: float = 0.05) -> list[HemifieldTest]:
    """Left versus right hemifield, per metric and per environment ("all" plus each one when there are several).

    Each test pairs the per-azimuth mean at a with the one at 360 − a (scipy.stats.ttest_rel). The p-values of all the
    tests returned are corrected together with Benjamini–Hochberg (scipy.stats.false_discovery_control).

    An environment with fewer than 2 mirrored azimuth pairs has no test and is left out; a ValueError only when the
    samples as a whole ("all") have fewer than 2 pairs, i.e. when there is nothing to test at all.
    """
    p_xy, t_xy = _pred_target(pred, target)
    az = target_azimuth_deg(t_xy) if azimuth_deg is None else np.asarray(azimuth_deg)
    envs = np.full(len(p_xy), "all") if environment is None else np.asarray(environment).astype(str)
    if az.shape != (len(p_xy),) or envs.shape != (len(p_xy),):
        raise ValueError(f"azimuth_deg and environment need one entry per prediction ({len(p_xy)}), "
                         f"got shapes {az.shape} and {envs.shape}")
    subsets = [("all", np.ones(len(p_xy), bool))]
    if environment is not None and len(np.unique(envs)) > 1:
        subsets += [(e, envs == e) for e in np.unique(envs)]
    raw = []
    for env, mask in subsets:
        stats = per_azimuth(p_xy[mask], t_xy[mask], az[mask])
        # Pairs depend on the azimuths present, not on the metric.
        n_pairs = len(mirrored_pairs(stats, METRICS[0])[0])
        if n_pairs < 2:
            if env == "all":
                raise ValueError(f"hemifield test needs at least 2 mirrored azimuth pairs (a and 360 - a), "
                                 f"found {n_pairs}")
            continue  # this environment lacks pairs; the others are still tested
        for metric in METRICS:
            _, left, right = mirrored_pairs(stats, metric)
            res = scipy.stats.ttest_rel(left, right)
            # Identical hemifields give t = nan (0/0): no evidence of a difference.
            t_stat = float(np.nan_to_num(res.statistic, nan=0.0))
            p = float(np.nan_to_num(res.pvalue, nan=1.0))
            raw.append((metric, env, len(left), float(left.mean()), float(right.mean()), t_stat, p))
    p_fdr = fdr_correct([r[-1] for r in raw])
    return [HemifieldTest(*r, float(q), bool(q < alpha)) for r, q in zip(raw, p_fdr)]


def fdr_correct(pvalues) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values."""
    p = np.asarray(pvalues, dtype=np.float64)
    return scipy.stats.false_discovery_control(p, method="bh") if len(p) else p
