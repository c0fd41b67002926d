"""A structural binaural renderer for a rigid spherical head (Brown & Duda 1998), used where no HRIR set is at hand.

Per ear: the head-shadow filter (one pole, one zero: H = (1 + jαω/2ω₀) / (1 + jω/2ω₀), ω₀ = c/a, with α depending on
the angle of incidence), the Woodworth travel-time delay, and, because a sphere is front/back symmetric, a pinna-like
high-frequency attenuation for sources behind the listener so that the full 360° can be told apart.
It is a teaching model of ITD and ILD for the generated demo data, not a substitute for measured HRIRs.

Azimuth: degrees counter-clockwise from the front, 90 = left (design.md). Channel 0 = left ear.
"""

from __future__ import annotations

import numpy as np

HEAD_RADIUS_M = 0.0875
SPEED_OF_SOUND = 343.0
# Ears sit slightly behind the interaural axis (Brown & Duda 1998: ±100°), which breaks front/back symmetry.
EAR_ANGLE = np.deg2rad(100.0)


def _incidence(azimuth_rad: float, ear_rad: float) -> float:
    """Angle between the source direction and the ear's outward axis, in [0, π]."""
    return float(np.arccos(np.clip(np.cos(azimuth_rad - ear_rad), -1.0, 1.0)))


def _ear_response(freqs: np.ndarray, incidence: float, behind: float, a: float, c: float) -> np.ndarray:
    w = 2 * np.pi * freqs
    w0 = c / a
    theta_min, alpha_min = np.deg2rad(150.0), 0.1
    alpha = (1 + alpha_min / 2) + (1 - alpha_min / 2) * np.cos(incidence / theta_min * np.pi)
    shadow = (1 + 1j * alpha * w / (2 * w0)) / (1 + 1j * w / (2 * w0))
    # Woodworth: path difference to the ear relative to the head centre.
    if incidence < np.pi / 2:
        delay = -a / c * np.cos(incidence)
    else:
        delay = a / c * (incidence - np.pi / 2)
    pinna_db = -10.0 * behind / (1 + np.exp(-(freqs - 3500.0) / 400.0))
    return shadow * np.exp(-1j * w * delay) * 10 ** (pinna_db / 20)


def render(mono: np.ndarray, azimuth_deg: float, sample_rate: int = 16000, a: float = HEAD_RADIUS_M,
           c: float = SPEED_OF_SOUND) -> np.ndarray:
    """[S] mono -> [2, S] binaural (left, right), same length, rendered in the frequency domain."""
    n = len(mono)
    n_fft = int(2 ** np.ceil(np.log2(2 * n)))  # zero-padding keeps the sub-ms delays from wrapping around
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    spec = np.fft.rfft(mono, n_fft)
    az = np.deg2rad(azimuth_deg)
    behind = max(0.0, -np.cos(az))  # 0 in front, 1 straight behind
    out = np.empty((2, n), dtype=np.float32)
    for ch, ear in enumerate((EAR_ANGLE, -EAR_ANGLE)):
        h = _ear_response(freqs, _incidence(az, ear), behind, a, c)
        # A constant bulk delay of a/c keeps every ear's delay causal.
        y = np.fft.irfft(spec * h * np.exp(-1j * 2 * np.pi * freqs * a / c), n_fft)
        out[ch] = y[:n]
    return out
