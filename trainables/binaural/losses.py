"""Binauralization training losses on (real, imag) spectrograms (paper §2.4, Table 2; 2.5D `train.py`; APNet).

- diff: MSE(Õ, O) between the difference spectrogram of the difference mask, Õ = M ⊙ A, and the true O = STFT(L − R)
  (2.5D, the paper's "Ours (Diff.)").
- 2ch: MSE(Ỹl, Yl) + MSE(Ỹr, Yr), the paper's eq. in §2.4, on the ears of the two ear masks, Ỹl = M_l ⊙ A and
  Ỹr = M_r ⊙ A, against the true Yl = (A + O)/2, Yr = (A − O)/2 (exact: the STFT is linear and the mix A is L + R).
- both: diff + 2ch, each on its own head (model.masks = both predicts the three masks).

Why 2ch needs its own masks: with one difference mask the ears are (A ± Õ)/2, so Ỹl − Yl = (Õ − O)/2 = −(Ỹr − Yr)
and 2ch would be exactly diff / 2 (a learning-rate change, nothing more). With two masks the ears' errors are free:
2ch also penalises their common part, ((Ỹl − Yl) + (Ỹr − Yr))/2, which a difference loss cannot see.

Notation: B batch, F frequency bins (257), T frames; predictions have F - 1 bins (Nyquist dropped as in 2.5D).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainables.binaural.config import HEAD_FOR_LOSS, LossConfig


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


def two_channel_loss(pred_left: torch.Tensor, pred_right: torch.Tensor, mix_spec: torch.Tensor,
                     target_diff: torch.Tensor) -> torch.Tensor:
    """MSE(Ỹl, Yl) + MSE(Ỹr, Yr). pred_left, pred_right [B, 2, F-1, T]; mix_spec A and target_diff O
    [B, 2, F or F-1, T] give the true ears (A ± O)/2."""
    bins = pred_left.shape[-2]
    mix, target = _crop(mix_spec, bins), _crop(target_diff, bins)
    return F.mse_loss(pred_left, (mix + target) / 2) + F.mse_loss(pred_right, (mix - target) / 2)


class BinauralLoss(torch.nn.Module):
    """The loss named by a `LossConfig`, as a module so a train loop can hold it like any criterion."""

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.kind = cfg.kind

    def forward(self, out: dict | torch.Tensor, mix_spec: torch.Tensor, target_diff: torch.Tensor) -> torch.Tensor:
        """out: the model's output dict ("diff_spec" and/or "left_spec", "right_spec", each [B, 2, F-1, T]), or a bare
        "diff_spec" tensor (how callers written for the difference head alone pass it, e.g. bench/binaural_step.py);
        mix_spec and target_diff [B, 2, F, T] -> scalar."""
        if isinstance(out, torch.Tensor):
            out = {"diff_spec": out}
        need = {"diff": ("diff_spec",), "2ch": ("left_spec", "right_spec")}
        need["both"] = need["diff"] + need["2ch"]
        missing = [k for k in need[self.kind] if k not in out]
        if missing:
            raise ValueError(f"loss.kind={self.kind!r} needs the model outputs {missing}, which a model built with "
                             f"another head lacks; build it with model.masks={HEAD_FOR_LOSS[self.kind]!r}")
        loss = 0.0
        if self.kind in ("diff", "both"):
            loss = loss + diff_loss(out["diff_spec"], target_diff)
        if self.kind in ("2ch", "both"):
            loss = loss + two_channel_loss(out["left_spec"], out["right_spec"], mix_spec, target_diff)
        return loss
