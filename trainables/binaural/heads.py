"""The one way any output of BinauralNet becomes the two ears (`model.masks`, model.py's forward).

- diff (2.5D, "Ours (Diff.)"): Ỹl = (A + Õ) / 2, Ỹr = (A − Õ) / 2 with Õ = M ⊙ A. L̂ + R̂ is the mix by construction.
- ears (APNet's "2 Ch."): Ỹl = M_l ⊙ A, Ỹr = M_r ⊙ A, as Sep-Stereo's demo with `--use_fusion_pred` forms them.
- both: the mean of the two estimates of each ear, ((A + Õ)/2 + M_l ⊙ A) / 2 and ((A − Õ)/2 + M_r ⊙ A) / 2. Both
  heads are trained towards the same ears (loss both = diff + 2ch), so neither is privileged; and by convexity
  ‖(a + b)/2 − y‖² ≤ (‖a − y‖² + ‖b − y‖²) / 2, so the mean is never further from the true ears than the two heads
  are on average, and it is closer whenever their errors differ.

The nets drop the Nyquist bin (2.5D). Given the full mix [B, 2, F, T], each ear gets back half of the mix's Nyquist
bin, the mono share, which is what the diff head's zero difference there gives; so for the diff head the iSTFT of
the ears is (mix ± iSTFT(Õ)) / 2 exactly as 2.5D's demo forms them.

Notation: B batch, F frequency bins (257), T frames; spectrograms stack (real, imag) as 2 channels.
"""

from __future__ import annotations

import torch


def ear_specs(out: dict, mix_spec: torch.Tensor) -> torch.Tensor:
    """A model output dict and the mix A [B, 2, F or F-1, T] -> the ears' spectrograms [B, 2 (L, R), 2, F or F-1, T].

    Which head made `out` is read from its keys ("diff_spec" and/or "left_spec"/"right_spec").
    """
    has_diff, has_ears = "diff_spec" in out, "left_spec" in out and "right_spec" in out
    if not (has_diff or has_ears):
        raise ValueError(f"a binauralizer output needs 'diff_spec' or 'left_spec'/'right_spec'; got {sorted(out)}")
    bins = (out["diff_spec"] if has_diff else out["left_spec"]).shape[-2]
    if mix_spec.shape[-2] not in (bins, bins + 1):
        raise ValueError(f"the mix has {mix_spec.shape[-2]} bins; the predictions have {bins}")
    mix = mix_spec[..., :bins, :]  # A without the Nyquist bin
    estimates = []
    if has_diff:
        diff = out["diff_spec"]
        estimates.append(torch.stack([(mix + diff) / 2, (mix - diff) / 2], dim=1))
    if has_ears:
        estimates.append(torch.stack([out["left_spec"], out["right_spec"]], dim=1))
    ears = sum(estimates) / len(estimates)  # [B, 2, 2, bins, T]
    if mix_spec.shape[-2] == bins + 1:
        nyquist = (mix_spec[:, None, :, bins:, :] / 2).expand(-1, 2, -1, -1, -1)  # the mono share, both ears
        ears = torch.cat([ears, nyquist], dim=-2)
    return ears
