"""Attention rollout for BAST (Kuang et al. 2022, §5.5 and Fig. 6), after Abnar & Zuidema (2020).

Rollout follows attention along the forward path: each layer's attention Â = rownorm(fuse_heads(A) + I) includes the
residual connection as an identity matrix, and the layers are multiplied together, R = Â_K ··· Â_1. BAST has two
branches that meet at the interaural integration layer, so, as in the paper, TE-L and TE-R are rolled out separately
and the TE-C rollout starts from the sum of the two, whatever the integration method (addition, subtraction or
concatenation). In BAST-SP both branches run through the same module on different inputs, so their maps differ anyway.

Token weights (the mean over query rows of R) are spread back onto the spectrogram patch by patch, averaged where
patches overlap and scaled to [0, 1] (Fig. 6).

Notation: B batch, H heads, N tokens (N_H·N_T patches, plus one with a CLS token), F frequency bins, T frames,
P patch side, S patch stride.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from trainables.bast.config import BASTModelConfig
from trainables.bast.model import BAST

HeadFusion = Literal["mean", "max", "min"]
BRANCHES = ("left", "right", "center")


def fuse_heads(attn: torch.Tensor, mode: HeadFusion = "mean") -> torch.Tensor:
    """One attention map per layer from its heads: [B, H, N, N] -> [B, N, N].

    Max and min fusion give rows that no longer sum to 1; `rollout` renormalises them.
    """
    if attn.ndim != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"expected attention maps of shape [B, H, N, N], got {tuple(attn.shape)}")
    if mode == "mean":
        return attn.mean(dim=1)
    if mode == "max":
        return attn.amax(dim=1)
    if mode == "min":
        return attn.amin(dim=1)
    raise ValueError(f"head fusion must be 'mean', 'max' or 'min', got {mode!r}")


def _row_normalise(a: torch.Tensor) -> torch.Tensor:
    """[B, N, N] -> [B, N, N] whose rows sum to 1.

    keepdim divides each row by its own sum; the reference's `a / a.sum(-1)` divides column j by the sum of row j.
    """
    return a / a.sum(dim=-1, keepdim=True)


def residual_attention(attn: torch.Tensor, head_fusion: HeadFusion = "mean") -> torch.Tensor:
    """Â = rownorm(fuse_heads(A) + I): [B, H, N, N] -> [B, N, N].

    The identity stands for the residual connection around the attention; with rows of A summing to 1 this is the
    paper's (A + I) / 2.
    """
    fused = fuse_heads(attn, head_fusion)
    eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
    return _row_normalise(fused + eye)


def rollout(
    maps: list[torch.Tensor], head_fusion: HeadFusion = "mean", start: torch.Tensor | None = None
) -> torch.Tensor:
    """R = Â_K ··· Â_1 · start over one encoder's maps (first block first): K × [B, H, N, N] -> [B, N, N].

    `start` [B, N, N] is the rollout of whatever fed the encoder; None means the identity (the encoder sees the
    embedded tokens directly).
    """
    if not maps and start is None:
        raise ValueError("rollout needs at least one attention map or a start matrix")
    result = start
    for attn in maps:
        layer = residual_attention(attn, head_fusion)
        # Each later layer mixes the tokens the earlier layers produced, so it multiplies from the left.
        result = layer if result is None else layer @ result
    return result


def bast_rollout(
    attention: dict[str, list[torch.Tensor]], head_fusion: HeadFusion = "mean"
) -> dict[str, torch.Tensor]:
    """Rollout of TE-L, TE-R and TE-C: {"left", "right", "center": K × [B, H, N, N]} -> {same keys: [B, N, N]}.

    Token i of the integrated sequence combines token i of both ears (add, sub or concat alike), so the centre
    encoder starts from the summed ear rollouts, renormalised so that every rollout stays row-stochastic.
    """
    missing = [k for k in BRANCHES if k not in attention]
    if missing:
        raise ValueError(f"attention maps lack {', '.join(missing)}; expected keys {', '.join(BRANCHES)}")
    left = rollout(attention["left"], head_fusion)
    right = rollout(attention["right"], head_fusion)
    center = rollout(attention["center"], head_fusion, start=_row_normalise(left + right))
    return {"left": left, "right": right, "center": center}


def token_weights(R: torch.Tensor, cls_token: bool) -> torch.Tensor:
    """How much attention each patch receives, averaged over all queries: [B, N, N] -> [B, num_patches].

    The CLS token (index 0) has no place on the spectrogram, so its column is dropped.
    """
    if R.ndim != 3 or R.shape[-1] != R.shape[-2]:
        raise ValueError(f"expected a rollout of shape [B, N, N], got {tuple(R.shape)}")
    weights = R.mean(dim=1)  # [B, N]: column j is the attention paid to token j
    return weights[:, 1:] if cls_token else weights


def _padded_size(cfg: BASTModelConfig) -> tuple[int, int]:
    """Height and width of the spectrogram padded to the patch grid: (N_H - 1)·S + P, (N_T - 1)·S + P."""
    n_h, n_t = cfg.grid
    return (n_h - 1) * cfg.patch_stride + cfg.patch_size, (n_t - 1) * cfg.patch_stride + cfg.patch_size


def _fold_patches(values: torch.Tensor, cfg: BASTModelConfig) -> torch.Tensor:
    """Each patch's value over its P×P pixels, summed: [B, N_H·N_T] -> [B, F + pad_top, T + pad_right] (padded grid).

    fold places the blocks in row-major order, the token order of `PatchEmbedding`.
    """
    P = cfg.patch_size
    cols = values.unsqueeze(1).expand(-1, P * P, -1)  # [B, P², N]: one constant block per patch
    out = F.fold(cols, output_size=_padded_size(cfg), kernel_size=P, stride=cfg.patch_stride)
    return out.squeeze(1)


def to_spectrogram(weights: torch.Tensor, cfg: BASTModelConfig) -> torch.Tensor:
    """Patch weights as a heat-map on the spectrogram, scaled to [0, 1] per sample: [B, num_patches] -> [B, F, T].

    Overlapping patches share pixels, so each pixel gets the mean weight of the patches covering it.
    """
    if weights.ndim != 2 or weights.shape[1] != cfg.num_patches:
        raise ValueError(
            f"expected patch weights of shape [B, {cfg.num_patches}] for the {cfg.grid[0]}x{cfg.grid[1]} patch grid, "
            f"got {tuple(weights.shape)}"
        )
    # [B, F + pad_top, T + pad_right]: summed weights over the number of patches covering each pixel. A stride
    # larger than the patch leaves pixels no patch sees; they get 0 rather than 0/0.
    heat = _fold_patches(weights, cfg) / _fold_patches(torch.ones_like(weights), cfg).clamp_min(1.0)
    pad_top = heat.shape[1] - cfg.freq_bins
    # PatchEmbedding pads before frequency row 0 and after the last frame; cut exactly those away.
    heat = heat[:, pad_top:, : cfg.frames]  # [B, F, T]
    peak = heat.amax(dim=(1, 2), keepdim=True)
    return heat / peak.clamp_min(torch.finfo(heat.dtype).tiny)  # an all-zero map stays zero instead of NaN


def attention_maps(model: BAST, spec: torch.Tensor, head_fusion: HeadFusion = "mean") -> dict[str, torch.Tensor]:
    """Rollout heat-maps of TE-L, TE-R and TE-C on the spectrogram grid: [B, 2, F, T] -> {"left", "right", "center":
    [B, F, T] in [0, 1]}.

    The model runs in eval mode (dropout would make the maps random) and is put back in its previous mode afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, attention = model(spec, return_attention=True)
    finally:
        model.train(was_training)
    rolled = bast_rollout(attention, head_fusion)
    return {k: to_spectrogram(token_weights(R, model.cfg.cls_token), model.cfg) for k, R in rolled.items()}


def _as_array(x, name: str, ndim: int) -> np.ndarray:
    """A tensor or array-like as a numpy array with exactly `ndim` dimensions."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return a


def save_rollout_png(spec, maps: dict, path) -> Path:
    """Fig. 6 for one sample: spec [2, F, T] and maps {"left", "right", "center": [F, T]} -> the written PNG's path.

    Rows are the left and right ear; columns the spectrogram, the TE-L/TE-R rollout over it and the TE-C rollout
    over it. Low frequencies are at the bottom.
    """
    from trainables.bast.plots import png_figure  # matplotlib only when drawing, not for the rollout itself

    spec = _as_array(spec, "spec", 3)
    if spec.shape[0] != 2:
        raise ValueError(f"spec must be [2, F, T] (left, right), got shape {spec.shape}")
    heat = {k: _as_array(maps[k], f"maps[{k!r}]", 2) for k in BRANCHES if k in maps}
    if len(heat) != len(BRANCHES):
        raise ValueError(f"maps must have keys {', '.join(BRANCHES)}, got {', '.join(map(str, maps))}")
    for k, m in heat.items():
        if m.shape != spec.shape[1:]:
            raise ValueError(f"maps[{k!r}] has shape {m.shape}, the spectrogram is {spec.shape[1:]}")

    path = Path(path)
    with png_figure(path, nrows=2, ncols=3, figsize=(13, 7), sharex=True, sharey=True) as (fig, axes):
        for row, (ear, encoder) in enumerate([("left", "TE-L"), ("right", "TE-R")]):
            _draw_spectrogram(fig, axes[row, 0], spec[row], f"{ear} ear: spectrogram")
            _draw_overlay(fig, axes[row, 1], spec[row], heat[ear], f"{ear} ear: {encoder} rollout")
            _draw_overlay(fig, axes[row, 2], spec[row], heat["center"], f"{ear} ear: TE-C rollout")
        for ax in axes[-1]:
            ax.set_xlabel("time frame")
        for ax in axes[:, 0]:
            ax.set_ylabel("frequency bin")
    return path


def _draw_spectrogram(fig, ax, spec: np.ndarray, title: str) -> None:
    """spec [F, T] with its colorbar."""
    image = ax.imshow(spec, origin="lower", aspect="auto", cmap="magma")
    fig.colorbar(image, ax=ax, label="spectrogram value")
    ax.set_title(title)


def _draw_overlay(fig, ax, spec: np.ndarray, heat: np.ndarray, title: str) -> None:
    """Rollout heat [F, T] half-transparent over a grey spec [F, T], so both stay readable."""
    ax.imshow(spec, origin="lower", aspect="auto", cmap="gray")
    image = ax.imshow(heat, origin="lower", aspect="auto", cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="rollout weight")
    ax.set_title(title)
