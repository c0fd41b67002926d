"""Audio front ends shared by the trainables.

`Spectrogram` reproduces `scipy.signal.spectrogram(x, fs, nperseg=256, noverlap=128)` with every other argument
at scipy's default (periodic Tukey(0.25) window, nfft = nperseg, constant detrend per segment, one-sided,
`scaling='density'`, `mode='psd'`) in torch, so it runs batched on the training device.
`LogStandardize` turns that PSD into the BAST network input: decibels, then each sample standardised to zero mean
and unit variance over both ears together (the reference's `norm_image`).

Notation: B batch, C channels (ears), S samples, F frequency bins, T frames.
"""

from __future__ import annotations

import numpy as np
import scipy.signal
import torch
from torch import nn

NPERSEG, NOVERLAP = 256, 128  # BAST's spectrogram (the reference code's scipy.signal.spectrogram arguments)


def n_frames(n_samples: int, nperseg: int = NPERSEG, noverlap: int = NOVERLAP) -> int:
    """Time frames T of a clip of n_samples (0 when it is shorter than one segment)."""
    return (n_samples - nperseg) // (nperseg - noverlap) + 1 if n_samples >= nperseg else 0


class Spectrogram(nn.Module):
    """Power spectral density per frame, equal to scipy.signal.spectrogram's `Sxx`."""

    def __init__(self, sample_rate: int = 16000, nperseg: int = NPERSEG, noverlap: int = NOVERLAP):
        super().__init__()
        if not 0 <= noverlap < nperseg:
            raise ValueError(f"noverlap must be in [0, nperseg): got noverlap={noverlap}, nperseg={nperseg}")
        self.sample_rate = sample_rate
        self.nperseg = nperseg
        self.hop = nperseg - noverlap
        # scipy builds the window with get_window(..., fftbins=True), i.e. the periodic variant.
        window = scipy.signal.get_window(("tukey", 0.25), nperseg)
        self.register_buffer("window", torch.from_numpy(window), persistent=False)
        # PSD density scaling: 1 / (fs * sum(w^2)); one-sided bins other than DC and Nyquist count twice.
        self.scale = 1.0 / (sample_rate * float(np.sum(window**2)))
        weights = np.full(nperseg // 2 + 1, 2.0)
        weights[0] = 1.0
        if nperseg % 2 == 0:
            weights[-1] = 1.0
        self.register_buffer("bin_weights", torch.from_numpy(weights), persistent=False)

    def n_frames(self, n_samples: int) -> int:
        return n_frames(n_samples, self.nperseg, self.nperseg - self.hop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., S] -> PSD [..., F, T] with F = nperseg // 2 + 1, T = (S - nperseg) // hop + 1."""
        if x.shape[-1] < self.nperseg:
            raise ValueError(f"signal of {x.shape[-1]} samples is shorter than one segment ({self.nperseg})")
        frames = x.unfold(-1, self.nperseg, self.hop)  # [..., T, nperseg]
        frames = frames - frames.mean(dim=-1, keepdim=True)  # detrend='constant'
        window = self.window.to(frames.dtype)
        spec = torch.fft.rfft(frames * window, dim=-1)  # [..., T, F]
        psd = spec.real.square() + spec.imag.square()
        psd = psd * (self.bin_weights.to(psd.dtype) * self.scale)
        return psd.transpose(-1, -2)  # [..., F, T]


class LogStandardize(nn.Module):
    """PSD -> decibels -> per-sample standardisation over every (ear, bin, frame) value.

    The reference uses 20·log10 on the PSD; 10·log10 differs by a constant factor that the standardisation removes,
    so the network input is the same. Zeros (silence) are floored at `amin` instead of becoming -inf.
    """

    def __init__(self, amin: float = 1e-20, eps: float = 1e-8):
        super().__init__()
        self.amin = amin
        self.eps = eps

    def forward(self, psd: torch.Tensor) -> torch.Tensor:
        """psd: [B, C, F, T] -> [B, C, F, T], zero mean and unit variance per sample."""
        db = 10.0 * torch.log10(psd.clamp_min(self.amin))
        dims = tuple(range(1, db.ndim))
        mean = db.mean(dim=dims, keepdim=True)
        std = db.std(dim=dims, keepdim=True, unbiased=False)
        return (db - mean) / (std + self.eps)


class BinauralFrontEnd(nn.Module):
    """Binaural waveforms [B, 2, S] -> normalised log spectrograms [B, 2, F, T] (BAST input, 2×129×61 for 8000 samples)."""

    def __init__(self, sample_rate: int = 16000, nperseg: int = NPERSEG, noverlap: int = NOVERLAP):
        super().__init__()
        self.spectrogram = Spectrogram(sample_rate, nperseg, noverlap)
        self.normalize = LogStandardize()

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """wav: [B, 2, S] (any scale: int16-range or [-1, 1]) -> [B, 2, F, T]."""
        return self.normalize(self.spectrogram(wav.float()))
