"""Binauralization training losses on (real, imag) spectrograms (paper §2.4, Table 2; 2.5D `train.py`).

- diff: MSE between the predicted and the true difference spectrogram Õ and O (2.5D, the paper's "Ours (Diff.)").
- 2ch: MSE(Ỹl, Yl) + MSE(Ỹr, Yr), the paper's eq. in §2.4 with Ỹl = (A + Õ)/2, Ỹr = (A − Õ)/2 and the true ears
  Yl = (A + O)/2, Yr = (A − O)/2 (exact when the mix is A = L + R, as in training).
- both: diff + 2ch.

Because this network predicts one difference mask, Ỹl − Yl = (Õ − O)/2 = −(Ỹr − Yr), so 2ch = diff / 2 and both =
1.5 × diff: the three kinds differ only by a constant factor (APNet's 2ch differs because it predicts the two ears
with separate masks). Under Adam that factor barely matters; the option is kept for parity with Table 2.

Notation: B batch, F frequency bins (257), T frames; predictions have F - 1 bins (Nyquist dropped as in 2.5D).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainables.binaural.config import LossConfig


def _crop(spec: torch.Tensor, bins: int) -> torch.Tensor:
    """Drop the Nyquist bin of a full [B, 2, F, T] target to match [B, 2, F - 1, T] predictions."""
    if spec.shape[-2] == bins:
        return spec
    if spec.shape[-2] == bins + 1:
        return spec[..., :bins, :]
    raise ValueError(f"spectrogram has {spec.shape[-2]} bins; predictions have {bins}")


def diff_loss(pred_diff: torch.Tensor, target_diff: torch.Tensor) -> torch.Tensor:
    """pred_diff [B, 2, F-1, T], target_diff [B, 2, F or F-1, T] -> scalar MSE."""
    return F.mse_loss(pred_diff, _crop(target_diff, pred_diff.shape[-2]))


def two_channel_loss(pred_diff: torch.Tensor, mix_spec: torch.Tensor, target_diff: torch.Tensor) -> torch.Tensor:
    """MSE(Ỹl, Yl) + MSE(Ỹr, Yr) from the mix A and the differences. Shapes as `diff_loss`; mix_spec like target."""
    bins = pred_diff.shape[-2]
    mix, target = _crop(mix_spec, bins), _crop(target_diff, bins)
    left = F.mse_loss((mix + pred_diff) / 2, (mix + target) / 2)
    right = F.mse_loss((mix - pred_diff) / 2, (mix - target) / 2)
    return left + right


class BinauralLoss(torch.nn.Module):
    """The loss named by a `LossConfig`, as a module so a train loop can hold it like any criterion."""

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.kind = cfg.kind

    def forward(self, pred_diff: torch.Tensor, mix_spec: torch.Tensor, target_diff: torch.Tensor) -> torch.Tensor:
        """pred_diff [B, 2, F-1, T] (the model's "diff_spec"), mix_spec and target_diff [B, 2, F, T] -> scalar."""
        if self.kind == "diff":
            return diff_loss(pred_diff, target_diff)
        if self.kind == "2ch":
            return two_channel_loss(pred_diff, mix_spec, target_diff)
        return diff_loss(pred_diff, target_diff) + two_channel_loss(pred_diff, mix_spec, target_diff)
