"""Transformer building blocks shared by the trainables (ViT encoder, Dosovitskiy et al. 2021).

Notation: B batch, N tokens, D model width, H heads, Dh width of one head.
"""

from __future__ import annotations

import os
from typing import Final

import torch
import torch.nn.functional as F
from torch import nn


def use_fused_attn() -> bool:
    """Whether attention should use `F.scaled_dot_product_attention` (default) or the explicit path.

    `BINSWEEP_FUSED_ATTN=0` forces the explicit softmax(QKᵀ)V path everywhere, e.g. to debug numerics.
    Read once per module at construction, never in forward.
    """
    return os.environ.get("BINSWEEP_FUSED_ATTN", "1").strip().lower() not in {"0", "false", "no", "off"}


class Attention(nn.Module):
    """Multi-head self-attention; qkv without bias, output projection with dropout (BAST reference)."""

    fused: Final[bool]

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float = 0.0, fused: bool | None = None):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head**-0.5
        self.fused = use_fused_attn() if fused is None else fused
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, return_attn: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: [B, N, D] -> ([B, N, D], attention probabilities [B, H, N, N] when return_attn else None).

        The explicit path runs whenever probabilities are asked for, since SDPA never materialises them.
        """
        B, N, _ = x.shape
        q, k, v = (
            self.qkv(x).view(B, N, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        )  # each [B, H, N, Dh]
        attn = None
        if self.fused and not return_attn:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # [B, H, N, N]
            attn = attn.softmax(dim=-1)
            out = attn @ v
        out = out.transpose(1, 2).reshape(B, N, self.heads * self.dim_head)  # [B, N, H*Dh]
        return self.proj_drop(self.proj(out)), attn


class MLP(nn.Module):
    """Linear → GELU → Dropout → Linear → Dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, N, D] -> [B, N, D]."""
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Transformer block with pre-normalization: x += Attn(LN(x)); x += MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float, fused: bool | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim_head, dropout, fused)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor, return_attn: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: [B, N, D] -> ([B, N, D], [B, H, N, N] or None)."""
        a, attn = self.attn(self.norm1(x), return_attn)
        x = x + a
        x = x + self.mlp(self.norm2(x))
        return x, attn


class Encoder(nn.Module):
    """A stack of pre-norm blocks with no final norm (the BAST encoders TE-L, TE-R, TE-C)."""

    def __init__(
        self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, dropout: float, fused: bool | None = None
    ):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, dim_head, mlp_dim, dropout, fused) for _ in range(depth))

    def forward(self, x: torch.Tensor, return_attn: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: [B, N, D] -> ([B, N, D], one [B, H, N, N] per block when return_attn, else [])."""
        maps: list[torch.Tensor] = []
        for block in self.blocks:
            x, attn = block(x, return_attn)
            if attn is not None:
                maps.append(attn)
        return x, maps
