"""Azimuth from a stereo recording with any localization model that maps a [B, 2, F, T] spectrogram to (x, y).

`binsweep predict` calls `predict_file` through the trainable's `Predictor`: the file is read as stereo (channel
0 = left), resampled to 16 kHz, its centre 0.5 s taken (the models' input, 2 x 129 x 61), and the output (x, y)
turned into degrees in [0, 360), counter-clockwise, 0 = front, 90 = left (design.md).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from trainables.registry import InputFileError, Predictor

SAMPLE_RATE = 16000
CLIP_SAMPLES = 8000  # 0.5 s at 16 kHz


class ClipError(InputFileError):
    """A file that cannot be turned into a 0.5 s stereo clip; the message names the file."""


def read_clip(path: str | Path) -> np.ndarray:
    """A stereo audio file -> [2, 8000] float32 at 16 kHz (the centre 0.5 s), channel 0 = left."""
    import soundfile as sf
    from scipy.signal import resample_poly

    path = Path(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # [S, C]
    except Exception as exc:  # noqa: BLE001 - missing file, not audio, unsupported format
        raise ClipError(f"{path}: cannot read it as audio ({exc})") from None
    channels = data.shape[1]
    if channels != 2:
        raise ClipError(f"{path}: {'mono' if channels == 1 else f'{channels} channels'}; a binaural recording must be "
                        f"stereo (2 channels, channel 0 = left ear)")
    duration = data.shape[0] / rate
    need = CLIP_SAMPLES / SAMPLE_RATE
    if duration < need:
        raise ClipError(f"{path}: {duration:.3f} s long; at least {need:g} s is needed")
    wave = data.T  # [2, S]
    if rate != SAMPLE_RATE:
        g = math.gcd(SAMPLE_RATE, int(rate))
        wave = resample_poly(wave, SAMPLE_RATE // g, int(rate) // g, axis=1).astype(np.float32)
    if wave.shape[1] < CLIP_SAMPLES:  # a rounding sample or two short after resampling
        wave = np.pad(wave, ((0, 0), (0, CLIP_SAMPLES - wave.shape[1])))
    start = (wave.shape[1] - CLIP_SAMPLES) // 2
    return np.ascontiguousarray(wave[:, start:start + CLIP_SAMPLES], dtype=np.float32)


@functools.lru_cache(maxsize=4)
def _front_end(device: str):
    """One spectrogram front end per device for every file predicted (its window is built once)."""
    from trainables.audio import BinauralFrontEnd

    return BinauralFrontEnd(sample_rate=SAMPLE_RATE).to(device)


def predict_file(model, config, path: str | Path, device: str = "cpu") -> dict[str, float]:
    """{"azimuth_deg": degrees in [0, 360)} for one stereo file."""
    import torch

    clip = read_clip(path)
    with torch.no_grad():
        pred = model(_front_end(str(device))(torch.from_numpy(clip)[None].to(device)))
    if not isinstance(pred, torch.Tensor) or tuple(pred.shape) != (1, 2):
        got = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
        raise TypeError(f"not a localization model: it returned {got} instead of (x, y)")
    x, y = (float(v) for v in pred[0].float())
    azimuth = math.degrees(math.atan2(y, x)) % 360.0
    return {"azimuth_deg": 0.0 if azimuth >= 360.0 else azimuth}


PREDICTOR = Predictor(predict_file=predict_file, inputs="stereo audio (channel 0 = left ear), at least 0.5 s, any "
                      "sample rate; the centre 0.5 s is used")
