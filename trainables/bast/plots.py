"""The paper's analysis plots as PNG files (Kuang et al. 2022, §5.2–5.3, Figs. 2–4).

- Fig. 2: mean AD per azimuth on a polar axis, front at the top and the listener's left on the left.
- Figs. 3–4: AD and MSE in the left versus the right hemifield, one box per hemifield over the per-azimuth means at
  mirrored azimuths, with an asterisk where the paired t-test (Benjamini–Hochberg corrected) is significant.
- The raw prediction scatter of the reference evaluation script.

Every function takes arrays and an output path, creates the parent folders, closes its figure even on error and
returns the path. Azimuths are degrees counter-clockwise from the front (90 = left). Notation: N samples.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Ray workers and CI have no display; must come before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from trainables.bast import metrics  # noqa: E402
from trainables.bast.metrics import GroupStats  # noqa: E402

DPI = 120


@contextmanager
def png_figure(path, **subplots) -> Iterator[tuple]:
    """`plt.subplots(**subplots)` as (fig, axes); on a clean exit the figure is written to `path` as a PNG.

    The figure is always closed: sweeps draw hundreds of plots in one long-lived process.
    """
    fig, axes = plt.subplots(**subplots)
    try:
        yield fig, axes
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)


def _pred_target(pred, target) -> tuple[np.ndarray, np.ndarray]:
    """Both as [N, 2] float arrays of the same length."""
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    for name, a in (("pred", pred), ("target", target)):
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"{name} must be an [N, 2] array of (x, y) coordinates, got shape {a.shape}")
    if len(pred) != len(target):
        raise ValueError(f"pred has {len(pred)} rows but target has {len(target)}")
    return pred, target


def _per_sample(values, n: int, name: str) -> np.ndarray | None:
    """An optional [N] array that must have one entry per sample."""
    if values is None:
        return None
    values = np.asarray(values)
    if values.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one entry per prediction, got {values.shape}")
    return values


def polar_azimuth_error(stats: list[GroupStats], path, title: str = "", rmax: float | None = None) -> Path:
    """Fig. 2: mean AD against azimuth, from `metrics.per_azimuth` (one GroupStats per azimuth) -> the PNG's path."""
    if not stats:
        raise ValueError("polar_azimuth_error needs per-azimuth statistics, got none")
    if not all(isinstance(s.group, (int, np.integer)) for s in stats):
        raise ValueError("polar_azimuth_error needs stats grouped by azimuth in degrees (metrics.per_azimuth)")
    ordered = sorted(stats, key=lambda s: s.group)
    theta = np.radians([s.group for s in ordered])
    radius = np.array([s.ad_deg for s in ordered])
    # Repeat the first point so the line closes across 360° -> 0°.
    theta, radius = np.append(theta, theta[0]), np.append(radius, radius[0])

    path = Path(path)
    with png_figure(path, figsize=(5.5, 5.5), subplot_kw={"projection": "polar"}) as (fig, ax):
        ax.set_theta_zero_location("N")  # front at the top
        ax.set_theta_direction(1)  # counter-clockwise, so 90° (the listener's left) is drawn on the left
        ax.plot(theta, radius, marker="o", markersize=3)
        ax.set_rmin(0.0)
        if rmax is not None:
            ax.set_rmax(rmax)
        ax.set_xlabel("azimuth (°, 90 = left)")
        ax.set_ylabel("mean AD (°)", labelpad=30)
        if title:
            ax.set_title(title)
    return path


def hemifield_boxplot(pred, target, path, azimuth_deg=None, environment=None) -> Path:
    """Figs. 3–4: AD and MSE per hemifield over the per-azimuth means: pred, target [N, 2] -> the PNG's path.

    Boxes pair each left azimuth a with its mirror 360 − a (the midline has no pair). The asterisk uses the "all"
    environment test, whose p-value is FDR-corrected together with the per-environment ones when they are given.
    """
    pred, target = _pred_target(pred, target)
    azimuth_deg = _per_sample(azimuth_deg, len(pred), "azimuth_deg")
    environment = _per_sample(environment, len(pred), "environment")
    stats = metrics.per_azimuth(pred, target, azimuth_deg)
    tests = {t.metric: t for t in metrics.hemifield_tests(pred, target, azimuth_deg, environment)
             if t.environment == "all"}

    path = Path(path)
    with png_figure(path, ncols=2, figsize=(9, 4.5)) as (fig, axes):
        for ax, metric, label in zip(axes, metrics.METRICS, ("AD (°)", "MSE")):
            _, left, right = metrics.mirrored_pairs(stats, metric)
            ax.boxplot([left, right])
            ax.set_xticks([1, 2], ["left hemifield", "right hemifield"])
            ax.set_ylabel(f"per-azimuth mean {label}")
            _mark_significance(ax, tests[metric], top=max(left.max(), right.max()))
        fig.suptitle(f"left versus right hemifield ({tests['ad_deg'].n_pairs} mirrored azimuth pairs)")
    return path


def _mark_significance(ax, test: metrics.HemifieldTest, top: float) -> None:
    """A bracket with an asterisk and the corrected p-value above the boxes when the difference is significant."""
    if not test.significant:
        ax.set_title(f"n.s. (p_FDR = {test.p_fdr:.3g})", fontsize="small")
        return
    span = abs(top) * 0.05 or 0.05  # a zero spread (identical values) still needs a visible bracket
    y = top + span
    ax.plot([1, 1, 2, 2], [y, y + span, y + span, y], color="black", linewidth=1)
    ax.text(1.5, y + span, f"* p_FDR = {test.p_fdr:.3g}", ha="center", va="bottom")
    ax.set_ylim(top=y + 4 * span)


def prediction_scatter(pred, target, path) -> Path:
    """Raw predictions coloured by true azimuth, over the unit circle and the true targets: [N, 2], [N, 2] -> path."""
    pred, target = _pred_target(pred, target)
    azimuth = metrics.target_azimuth_deg(target)
    circle = np.linspace(0.0, 2.0 * np.pi, 361)

    path = Path(path)
    with png_figure(path, figsize=(6, 5.5)) as (fig, ax):
        ax.plot(np.cos(circle), np.sin(circle), color="lightgrey", linewidth=1, zorder=0)
        ax.scatter(target[:, 0], target[:, 1], marker="x", color="black", s=20, label="target", zorder=1)
        # Azimuth wraps at 360°, so a cyclic colour map keeps 359° and 0° alike.
        points = ax.scatter(pred[:, 0], pred[:, 1], c=azimuth, cmap="hsv", vmin=0, vmax=360, s=8, alpha=0.8,
                            label="prediction", zorder=2)
        fig.colorbar(points, ax=ax, label="true azimuth (°)")
        ax.set_aspect("equal")
        ax.set_xlabel("x = cos(azimuth) (front)")
        ax.set_ylabel("y = sin(azimuth) (left)")
        ax.legend(loc="upper right", fontsize="small")
    return path
