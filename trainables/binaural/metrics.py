"""Binauralization metrics exactly as `binauralization.md` §3 (2.5D `evaluate.py`, PseudoBinaural/CCStereo extras),
and the whole-clip sliding-window inference of 2.5D `demo.py` (§2) that produces the predictions they score.

Per clip, on the whole clip (both arrays [2, S], channel 0 = left), optionally after dividing each by its own max |x|:
- STFT: Σ_c mean over (F, T) of |X̂_c − X_c|² / 2 (the mean over the stacked [Re; Im] array). Squared, no root.
- ENV: Σ_c sqrt(mean_t (e_c − ê_c)²) with e = |scipy.signal.hilbert(x)| on the full-band waveform.
- Mag: Σ_c mean |X̂_c − X_c|², which is exactly 2 × STFT (PseudoBinaural `Magnitude_distance`).
- Phase: on the STFT of L − R, mean over bins of min(d, 2π − d) with d = |∠pred − ∠gt|, in radians (L1).
- SNR: 10 log10((mean(gt²) + 1e-4) / (mean((pred − gt)²) + 1e-4)) over both channels jointly, in dB.
- WAV (CCStereo): Σ_c mean((pred_c − gt_c)²).
Reported numbers are the mean over test clips (plus stdev and stderr, as evaluate.py prints).

The STFT is librosa's (n_fft 512, hop 160, win 400, periodic Hann zero-padded to n_fft, center=True), written in numpy
because librosa is not a dependency. `pad_mode="reflect"` is the default: that is what librosa < 0.9 did and what the
published numbers were computed with; librosa ≥ 0.9 pads with zeros ("constant").
Everything is float64 here; librosa computed in float32, which moves results only in the last digits.

Notation: S samples, F frequency bins, T frames, W windows, L window length in samples.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import scipy.signal

METRICS = ("stft", "env", "mag", "phase", "snr", "wav")


def normalize(x: np.ndarray) -> np.ndarray:
    """evaluate.py `normalize`: x / max(1e-20, max |x|) over all channels together."""
    x = np.asarray(x, dtype=np.float64)
    return x / max(1e-20, float(np.max(np.abs(x))))


def stft(x: np.ndarray, n_fft: int = 512, hop_length: int = 160, win_length: int = 400,
         pad_mode: str = "reflect") -> np.ndarray:
    """[..., S] -> complex [..., F, T], equal to librosa.stft(x, n_fft, hop_length, win_length, center=True, pad_mode)."""
    x = np.asarray(x, dtype=np.float64)
    window = scipy.signal.get_window("hann", win_length, fftbins=True)  # librosa's default: periodic Hann
    left = (n_fft - win_length) // 2
    window = np.pad(window, (left, n_fft - win_length - left))  # [n_fft], centred as librosa.util.pad_center
    pad = [(0, 0)] * (x.ndim - 1) + [(n_fft // 2, n_fft // 2)]
    x = np.pad(x, pad, mode=pad_mode)  # [..., S + n_fft]
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=-1)[..., ::hop_length, :]  # [..., T, n_fft]
    return np.swapaxes(np.fft.rfft(frames * window, axis=-1), -1, -2)  # [..., F, T]


def _pair(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    p, g = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    if p.shape != g.shape or p.ndim != 2 or p.shape[0] != 2:
        raise ValueError(f"expected two [2, S] binaural arrays of equal shape, got {p.shape} and {g.shape}")
    return p, g


def stft_distance(pred, gt, pad_mode: str = "reflect") -> float:
    """STFT_L2_distance: Σ_c mean over (2, F, T) of the squared [Re; Im] difference."""
    p, g = _pair(pred, gt)
    diff = stft(p, pad_mode=pad_mode) - stft(g, pad_mode=pad_mode)  # [2, F, T]
    return float(np.sum(np.mean(np.abs(diff) ** 2, axis=(-2, -1)) / 2))


def magnitude_distance(pred, gt, pad_mode: str = "reflect") -> float:
    """Magnitude_distance: Σ_c mean |X̂_c − X_c|² over complex bins (= 2 × STFT despite the name)."""
    p, g = _pair(pred, gt)
    diff = stft(p, pad_mode=pad_mode) - stft(g, pad_mode=pad_mode)  # [2, F, T]
    return float(np.sum(np.mean(np.abs(diff) ** 2, axis=(-2, -1))))


def envelope_distance(pred, gt) -> float:
    """Envelope_distance: Σ_c RMSE between Hilbert envelopes (analytic-signal magnitude, no low-pass)."""
    p, g = _pair(pred, gt)
    ep, eg = np.abs(scipy.signal.hilbert(p, axis=-1)), np.abs(scipy.signal.hilbert(g, axis=-1))  # [2, S]
    return float(np.sum(np.sqrt(np.mean((eg - ep) ** 2, axis=-1))))


def phase_distance(pred, gt, pad_mode: str = "reflect") -> float:
    """Angle_Diff_distance: mean wrapped |∠ − ∠| of the L − R spectrograms, radians in [0, π]."""
    p, g = _pair(pred, gt)
    d = np.abs(np.angle(stft(p[0] - p[1], pad_mode=pad_mode)) - np.angle(stft(g[0] - g[1], pad_mode=pad_mode)))
    return float(np.mean(np.minimum(d, 2 * np.pi - d)))


def snr(pred, gt) -> float:
    """SNR in dB over both channels jointly, with 1e-4 added to signal and noise power."""
    p, g = _pair(pred, gt)
    return float(10 * np.log10((np.mean(g**2) + 1e-4) / (np.mean((p - g) ** 2) + 1e-4)))


def wav_distance(pred, gt) -> float:
    """CCStereo WAV_distance: Σ_c mean squared waveform error."""
    p, g = _pair(pred, gt)
    return float(np.sum(np.mean((p - g) ** 2, axis=-1)))


def evaluate_clip(pred, gt, normalization: bool = False, pad_mode: str = "reflect") -> dict[str, float]:
    """Every metric for one whole clip: pred, gt [2, S] -> {stft, env, mag, phase, snr, wav}.

    `normalization` is evaluate.py's `--normalization`: each array divided by its own max |x| first. It defaults to
    False in 2.5D but the 2.5D README, SepStereo and PseudoBinaural run with it on; state which one a number uses.
    """
    p, g = _pair(pred, gt)
    if normalization:
        p, g = normalize(p), normalize(g)
    return {
        "stft": stft_distance(p, g, pad_mode),
        "env": envelope_distance(p, g),
        "mag": magnitude_distance(p, g, pad_mode),
        "phase": phase_distance(p, g, pad_mode),
        "snr": snr(p, g),
        "wav": wav_distance(p, g),
    }


def summarize(per_clip: list[dict[str, float]], prefix: str = "") -> dict[str, float]:
    """Mean over clips of each metric, plus `_std` (population, np.std) and `_stderr` (std / sqrt(n))."""
    if not per_clip:
        raise ValueError("no clips to summarize")
    head = f"{prefix}_" if prefix else ""
    out = {}
    for name in per_clip[0]:
        values = np.array([clip[name] for clip in per_clip], dtype=np.float64)
        out[f"{head}{name}"] = float(values.mean())
        out[f"{head}{name}_std"] = float(values.std())
        out[f"{head}{name}_stderr"] = float(values.std() / math.sqrt(len(values)))
    return out


def mono_baseline(gt) -> np.ndarray:
    """The "Mono-Mono" baseline (`--real_mono`): (L + R) / 2 on both channels. [2, S] -> [2, S]."""
    g = np.asarray(gt, dtype=np.float64)
    return np.repeat(g.mean(axis=0, keepdims=True), 2, axis=0)


def window_starts(n_samples: int, window: int, hop: int) -> np.ndarray:
    """demo.py's window starts: 0, hop, 2·hop, … while start + window < n_samples, then one window ending at the end.

    For a 10 s clip at 16 kHz with 0.63 s windows and 0.05 s hop: 188 + 1 = 189 windows.
    """
    if n_samples < window:
        raise ValueError(f"clip of {n_samples} samples is shorter than one window of {window}")
    starts = list(range(0, max(0, n_samples - window), hop))  # exactly those with start + window < n_samples
    return np.array(starts + [n_samples - window], dtype=np.int64)


def window_frame_index(start: int, window: int, sample_rate: int = 16000, fps: float = 10.0) -> int:
    """1-based video frame for the window's centre, demo.py's round((t_mid + 0.05) · fps), rounding halves up
    as Python 2's round did."""
    t_mid = (start + window / 2.0) / sample_rate
    return int(math.floor((t_mid + 0.05) * fps + 0.5))


def binauralize_clip(predict: Callable[[np.ndarray, int], np.ndarray], mix, sample_rate: int = 16000,
                     window_seconds: float = 0.63, hop_seconds: float = 0.05, rms_reference=None,
                     rms_normalize: bool = True, desired_rms: float = 0.1, eps: float = 1e-4) -> np.ndarray:
    """Whole-clip prediction by demo.py's sliding windows, overlaps averaged: mix [S] -> predicted binaural [2, S].

    Args:
        predict: (mix window [L], window start in samples) -> predicted (left, right) [2, L] for that window, in the
            window's normalised scale; e.g. `model.binauralize` on one window plus the frame `window_frame_index`.
        mix: the mono mix L + R of the whole clip, [S].
        rms_reference: [S] or [C, S] whose window RMS sets each window's gain; demo.py uses the ground-truth stereo
            window (`audio_normalize`), which scores exactly like 2.5D. Default: the mix itself, for true mono input.
        rms_normalize: scale each window to `desired_rms` before predicting and back afterwards (demo.py does).
    """
    mix = np.asarray(mix, dtype=np.float64)
    if mix.ndim != 1:
        raise ValueError(f"mix must be a 1-D mono waveform, got shape {mix.shape}")
    ref = mix if rms_reference is None else np.asarray(rms_reference, dtype=np.float64)
    if ref.shape[-1] != mix.shape[-1]:
        raise ValueError(f"rms_reference has {ref.shape[-1]} samples, mix has {mix.shape[-1]}")
    window, hop = round(window_seconds * sample_rate), round(hop_seconds * sample_rate)
    total = np.zeros((2, mix.shape[-1]))
    count = np.zeros(mix.shape[-1])
    for start in window_starts(mix.shape[-1], window, hop):
        sl = slice(start, start + window)
        # demo.py: rms = max(eps, sqrt(mean(x²))), the window is multiplied by desired_rms / rms and the prediction
        # by rms / desired_rms.
        gain = max(eps, float(np.sqrt(np.mean(ref[..., sl] ** 2)))) / desired_rms if rms_normalize else 1.0
        stereo = np.asarray(predict(mix[sl] / gain, int(start)), dtype=np.float64)  # [2, L]
        if stereo.shape != (2, window):
            raise ValueError(f"predict must return [2, {window}], got {stereo.shape}")
        total[:, sl] += stereo * gain
        count[sl] += 1
    return total / count  # every sample is covered: the last window ends at the clip's end
