"""BAST training losses (paper §3.2) on predicted (x, y) against targets (cos az, sin az).

- MSE (eq. 2): mean over the batch of the squared Euclidean distance.
- AD (eq. 3): mean angle between prediction and target, divided by π, so it lies in [0, 1].
- Hybrid: α·AD + (1 − α)·MSE, "a convex combination" (§3.2); the paper gives no α. The reference code trains with
  nn.MSELoss (= eq. 2 / 2) + the angle in radians (= π·AD), 1:1, which is this loss at α = 2π/(1 + 2π) ≈ 0.8627
  times (π + ½): the paper grid uses that α (search_spaces/bast_paper_grid.yaml has the derivation).
- Evaluation reports eq. 2 as `*_mse` and the reference's scale, eq. 2 / 2, as `*_mse_ref` (the paper's MSE column).

The angle is atan2(|cross|, dot) rather than arccos of the normalised dot product: arccos has an infinite slope at
±1, which the reference clamps to ±0.999 and so loses every gradient below 2.56° of error. atan2 keeps a gradient of
about 1/‖p‖ at small errors. A zero prediction has no direction: its angle is defined as π/2 (chance) with zero
gradient instead of NaN, and the MSE term of the hybrid loss still pulls it outward.

Notation: B batch.
"""

from __future__ import annotations

import math

import torch

from trainables.bast.config import LossConfig

_EPS = 1e-12


def angle_between(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Unsigned angle in radians between 2-D vectors: [B, 2], [B, 2] -> [B] in [0, π]."""
    cross = pred[..., 0] * target[..., 1] - pred[..., 1] * target[..., 0]
    dot = (pred * target).sum(dim=-1)
    degenerate = cross.square() + dot.square() < _EPS
    # Substitute harmless values where the angle is undefined so that atan2's gradient (x / (x² + y²)) stays finite.
    safe_dot = torch.where(degenerate, torch.ones_like(dot), dot)
    safe_cross = torch.where(degenerate, torch.zeros_like(cross), cross)
    angle = torch.atan2(safe_cross.abs(), safe_dot)
    return torch.where(degenerate, torch.full_like(angle, math.pi / 2), angle)


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 2: (1/N) Σ ‖C_i − Ĉ_i‖². [B, 2], [B, 2] -> scalar."""
    return (pred - target).square().sum(dim=-1).mean()


def ad_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 3: (1/(πN)) Σ angle(C_i, Ĉ_i). [B, 2], [B, 2] -> scalar in [0, 1]."""
    return angle_between(pred, target).mean() / math.pi


def hybrid_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float) -> torch.Tensor:
    """α·AD + (1 − α)·MSE."""
    return alpha * ad_loss(pred, target) + (1.0 - alpha) * mse_loss(pred, target)


class BASTLoss(torch.nn.Module):
    """The loss named by a `LossConfig`, as a module so a train loop can hold it like any criterion."""

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.name = cfg.name
        self.alpha = cfg.alpha

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target: [B, 2] -> scalar."""
        if self.name == "mse":
            return mse_loss(pred, target)
        if self.name == "ad":
            return ad_loss(pred, target)
        return hybrid_loss(pred, target, self.alpha)
