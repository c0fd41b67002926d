"""BAST: Binaural Audio Spectrogram Transformer (Kuang et al. 2022, §3.1 and Fig. 1).

Left and right spectrograms are cut into overlapping patches and embedded (shared stem), encoded by TE-L and TE-R
(one module in BAST-SP, two in BAST-NSP), integrated token-wise (addition, subtraction or concatenation), encoded by
TE-C, mean-pooled and mapped by LayerNorm + Linear to unconstrained (x, y) coordinates; the target is (cos az, sin az).

Subtraction is left − right, as in the reference code (`x_l − x_r`); the paper's text says the left map is subtracted
from the right (right − left). The two are the same model family: the sign flip of TE-C's input is absorbed by its
weights (negate every LayerNorm gain of TE-C and the head and every residual output projection of TE-C, and the
network computes on z what it computed on −z; Adam is sign-equivariant per weight), so only the initialisation
differs. With shared encoders (SP), addition is exactly invariant to swapping the ears and subtraction is zero where
the ears agree: on mirror-symmetric data that bounds SP-add and SP-sub (trainables/localization/symmetry.py).

Notation: B batch, F frequency bins (129), T frames (61), N tokens (180), D width, H heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainables.bast.config import BASTModelConfig
from trainables.layers import Encoder


class PatchEmbedding(nn.Module):
    """Pads one ear's spectrogram on top and right to the patch grid, then projects every P×P patch (stride S) to D.

    A convolution with kernel P and stride S is exactly unfold + shared Linear(P² → D), done in one kernel.
    Tokens come out in row-major (frequency-row, time-column) order.
    """

    def __init__(self, cfg: BASTModelConfig):
        super().__init__()
        n_h, n_t = cfg.grid
        P, S = cfg.patch_size, cfg.patch_stride
        self.pad = (0, (n_t - 1) * S + P - cfg.frames, (n_h - 1) * S + P - cfg.freq_bins, 0)  # (left, right, top, bottom)
        self.mode = "constant" if cfg.patch_padding == "zeros" else "reflect"
        self.proj = nn.Conv2d(1, cfg.embed_dim, kernel_size=P, stride=S)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, F, T] -> [B, N, D]."""
        x = F.pad(x.unsqueeze(1), self.pad, mode=self.mode)  # [B, 1, F + pad_top, T + pad_right]
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, D, N_H, N_T] -> [B, N, D]


def sinusoidal_table(n: int, dim: int) -> torch.Tensor:
    """Fixed absolute position embedding (Vaswani et al. 2017): [n, dim] with sin on even, cos on odd channels."""
    # Computed on the CPU, then put on the default device: on the meta device (a sweep counts parameters there)
    # torch.arange runs through Python decompositions that import torch._dynamo, 1.3 s on first use.
    cpu = torch.device("cpu")
    pos = torch.arange(n, dtype=torch.float64, device=cpu).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64, device=cpu) * (-math.log(10000.0) / dim))
    table = torch.zeros(n, dim, dtype=torch.float64, device=cpu)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table.float().to(torch.get_default_device())


class TokenEmbedding(nn.Module):
    """Optional CLS token, position embedding and dropout, shared by both ears (as in the reference code)."""

    def __init__(self, cfg: BASTModelConfig):
        super().__init__()
        n = cfg.num_patches + int(cfg.cls_token)
        D = cfg.embed_dim
        self.cls = nn.Parameter(torch.zeros(1, 1, D)) if cfg.cls_token else None
        if cfg.pos_embedding == "learned":
            self.pos = nn.Parameter(torch.empty(1, n, D))
            nn.init.trunc_normal_(self.pos, std=0.02)
        else:
            self.register_buffer("pos", sinusoidal_table(n, D).unsqueeze(0), persistent=False)
        if self.cls is not None:
            nn.init.trunc_normal_(self.cls, std=0.02)
        self.drop = nn.Dropout(cfg.emb_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, N, D] -> [B, N (+1 with CLS), D]."""
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)  # [B, 1 + N, D]
        return self.drop(x + self.pos)


class BinauralIntegration(nn.Module):
    """Interaural integration of the TE-L and TE-R outputs (paper Fig. 1c), token by token."""

    def __init__(self, method: str):
        super().__init__()
        if method not in ("add", "sub", "concat"):
            raise ValueError(f"integration must be add, sub or concat, got {method!r}")
        self.method = method

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """left, right: [B, N, D] -> [B, N, D] (add, sub) or [B, N, 2D] (concat)."""
        if self.method == "add":
            return left + right
        if self.method == "sub":
            return left - right  # left − right as in the reference code; the paper's right − left is its mirror
        return torch.cat([left, right], dim=-1)


class BAST(nn.Module):
    """The full model; `encoder_right is encoder_left` in BAST-SP."""

    def __init__(self, cfg: BASTModelConfig, fused_attn: bool | None = None):
        super().__init__()
        self.cfg = cfg
        block = dict(heads=cfg.heads, dim_head=cfg.dim_head, mlp_dim=cfg.mlp_dim, dropout=cfg.dropout, fused=fused_attn)
        self.patch_embed = PatchEmbedding(cfg)
        self.token_embed = TokenEmbedding(cfg)
        self.encoder_left = Encoder(cfg.embed_dim, cfg.layers_left, **block)
        if cfg.sharing == "SP":
            self.encoder_right = self.encoder_left
        else:
            self.encoder_right = Encoder(cfg.embed_dim, cfg.layers_right, **block)
        self.integrate = BinauralIntegration(cfg.integration)
        self.encoder_center = Encoder(cfg.center_dim, cfg.layers_center, **block)
        self.head = nn.Sequential(nn.LayerNorm(cfg.center_dim), nn.Linear(cfg.center_dim, 2))

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """x: [B, 2, F, T] (channel 0 = left ear) -> predicted (x, y) [B, 2].

        With return_attention, also {"left", "right", "center": one [B, H, N, N] softmax map per block}.
        """
        if x.ndim != 4 or x.shape[1] != 2:
            raise ValueError(f"BAST expects [B, 2, F, T] binaural spectrograms, got shape {tuple(x.shape)}")
        left = self.token_embed(self.patch_embed(x[:, 0]))  # [B, N, D]
        right = self.token_embed(self.patch_embed(x[:, 1]))  # [B, N, D]
        left, maps_left = self.encoder_left(left, return_attention)
        right, maps_right = self.encoder_right(right, return_attention)
        center, maps_center = self.encoder_center(self.integrate(left, right), return_attention)  # [B, N, D or 2D]
        pooled = center[:, 0] if self.cfg.pool == "cls" else center.mean(dim=1)  # [B, D or 2D]
        out = self.head(pooled)  # [B, 2]
        if return_attention:
            return out, {"left": maps_left, "right": maps_right, "center": maps_center}
        return out


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, each shared tensor counted once (so BAST-SP counts TE-L/TE-R once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def azimuth_to_target(azimuth_deg: torch.Tensor) -> torch.Tensor:
    """Azimuth in degrees (counter-clockwise, 0 = front, 90 = left) -> target (cos az, sin az): [...] -> [..., 2]."""
    rad = torch.deg2rad(azimuth_deg.to(torch.float32))
    return torch.stack([torch.cos(rad), torch.sin(rad)], dim=-1)


def prediction_to_azimuth(pred: torch.Tensor) -> torch.Tensor:
    """Predicted (x, y) [..., 2] -> azimuth in degrees in [0, 360)."""
    return torch.rad2deg(torch.atan2(pred[..., 1], pred[..., 0])) % 360.0
