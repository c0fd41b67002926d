"""A convolutional localization baseline in the spirit of NI-CNN* (BAST paper, Table 1): BAST's hierarchy with
convolutions in place of Transformer encoders.

Left and right spectrograms each pass an ear stream of conv blocks (CNN-L, CNN-R: one module in SP, two in NSP), are
integrated cell by cell (addition, subtraction or concatenation of channels, BAST's `BinauralIntegration`), pass a
center stack of conv blocks (CNN-C), are averaged over time and mapped by a small MLP to unconstrained (x, y)
coordinates; the target is (cos az, sin az), as for BAST.

Time is averaged at the end; frequency is only max-pooled, never averaged away: where along the spectrum a level
difference sits is a localization cue, so the head sees every remaining frequency row.

Notation: B batch, C channels, F frequency bins (129), T frames (61); F_e, T_e after an ear stream's pooling and F', T'
after the center stack's.
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.bast.model import BinauralIntegration
from trainables.cnn_loc.config import POOL, CNNLocModelConfig


class ConvBlock(nn.Module):
    """Conv (same padding) -> BatchNorm -> ReLU -> 2x2 max-pool: [B, C_in, F, T] -> [B, C_out, F // 2, T // 2]."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False)  # BN supplies the bias
        self.norm = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(POOL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.norm(self.conv(x))))


class ConvStack(nn.Module):
    """k conv blocks in sequence, one per entry of `channels`: [B, c_in, H, W] -> [B, channels[-1], H >> k, W >> k]."""

    def __init__(self, c_in: int, channels: tuple[int, ...], kernel_size: int):
        super().__init__()
        widths = (c_in, *channels)
        self.blocks = nn.Sequential(*(ConvBlock(a, b, kernel_size) for a, b in zip(widths, widths[1:])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ChannelIntegration(nn.Module):
    """BAST's interaural integration applied per spectrogram cell, with the channels as the feature axis."""

    def __init__(self, method: str):
        super().__init__()
        self.integrate = BinauralIntegration(method)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """left, right: [B, C, F_e, T_e] -> [B, C, F_e, T_e] (add, sub) or [B, 2C, F_e, T_e] (concat)."""
        # BinauralIntegration concatenates on the last axis; move the channels there and back.
        return self.integrate(left.movedim(1, -1), right.movedim(1, -1)).movedim(-1, 1)


class LocalizationHead(nn.Module):
    """Mean over time, then an MLP over (channels x frequency rows) to (x, y): [B, C, F', T'] -> [B, 2]."""

    def __init__(self, channels: int, freq_rows: int, hidden: int, dropout: float):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels * freq_rows, hidden), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x.mean(dim=-1))  # [B, C, F'] -> [B, 2]


class CNNLoc(nn.Module):
    """The full model; `stream_right is stream_left` in SP."""

    def __init__(self, cfg: CNNLocModelConfig):
        super().__init__()
        self.cfg = cfg
        self.stream_left = ConvStack(1, cfg.ear_channels, cfg.kernel_size)
        if cfg.sharing == "SP":
            self.stream_right = self.stream_left
        else:
            self.stream_right = ConvStack(1, cfg.ear_channels, cfg.kernel_size)
        self.integrate = ChannelIntegration(cfg.integration)
        self.stream_center = ConvStack(cfg.integrated_channels, cfg.center_channels, cfg.kernel_size)
        self.head = LocalizationHead(cfg.center_channels[-1], cfg.grid[0], cfg.head_dim, cfg.dropout)

    def integrated(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 2, F, T] (channel 0 = left ear) -> the integrated ear features [B, C or 2C, F_e, T_e]."""
        if x.ndim != 4 or x.shape[1] != 2:
            raise ValueError(f"CNNLoc expects [B, 2, F, T] binaural spectrograms, got shape {tuple(x.shape)}")
        left = self.stream_left(x[:, :1])  # [B, C, F_e, T_e]
        right = self.stream_right(x[:, 1:])  # [B, C, F_e, T_e]
        return self.integrate(left, right)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 2, F, T] -> predicted (x, y) [B, 2]."""
        return self.head(self.stream_center(self.integrated(x)))  # [B, C, F', T'] -> [B, 2]
