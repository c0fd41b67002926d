"""Azimuth from a stereo recording with any localization model that maps a [B, 2, F, T] spectrogram to (x, y).

`binsweep predict` calls `predict_file` through the trainable's `Predictor`: the file is read as stereo (channel
0 = left), resampled to 16 kHz, its centre 0.5 s taken (the models' input, 2 x 129 x 61), and the output (x, y)
turned into degrees in [0, 360), counter-clockwise, 0 = front, 90 = left (design.md).

A logged model is served (`SERVING`, MLflow pyfunc) the same way on what a request holds: a batch of stereo 16 kHz
waveforms [B, 2, S], S >= 8000, of which the centre 0.5 s is used, to azimuths [B] in degrees; so the served model
and `binsweep predict` give the same azimuth for the same 16 kHz recording.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from trainables.registry import InputFileError, Predictor, Serving, Tensor

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
    return centre(wave)


def centre(wave: np.ndarray) -> np.ndarray:
    """[..., S] with S >= 8000 -> its centre 0.5 s [..., 8000] float32 (contiguous)."""
    start = (wave.shape[-1] - CLIP_SAMPLES) // 2
    return np.ascontiguousarray(wave[..., start:start + CLIP_SAMPLES], dtype=np.float32)


@functools.lru_cache(maxsize=4)
def _front_end(device: str):
    """One spectrogram front end per device for every file predicted (its window is built once)."""
    from trainables.audio import BinauralFrontEnd

    return BinauralFrontEnd(sample_rate=SAMPLE_RATE).to(device)


def azimuths(model, clips: np.ndarray, device: str = "cpu") -> np.ndarray:
    """clips [B, 2, 8000] float32 at 16 kHz (channel 0 = left) -> azimuths [B] float64, degrees in [0, 360)."""
    import torch

    with torch.no_grad():
        pred = model(_front_end(str(device))(torch.from_numpy(np.ascontiguousarray(clips, np.float32)).to(device)))
    if not isinstance(pred, torch.Tensor) or tuple(pred.shape) != (len(clips), 2):
        got = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
        raise TypeError(f"not a localization model: it returned {got} instead of (x, y)")
    xy = pred.detach().double().cpu().numpy()
    azimuth = np.degrees(np.arctan2(xy[:, 1], xy[:, 0])) % 360.0
    return np.where(azimuth >= 360.0, 0.0, azimuth)


def predict_file(model, config, path: str | Path, device: str = "cpu") -> dict[str, float]:
    """{"azimuth_deg": degrees in [0, 360)} for one stereo file."""
    return {"azimuth_deg": float(azimuths(model, read_clip(path)[None], device)[0])}


PREDICTOR = Predictor(predict_file=predict_file, inputs="stereo audio (channel 0 = left ear), at least 0.5 s, any "
                      "sample rate; the centre 0.5 s is used")


# ------------------------------------------------------------------------------------------------ serving

SERVE_BATCH = 64


def serve(model, config, waves, device: str = "cpu") -> np.ndarray:
    """A served request: stereo waveforms [B, 2, S] at 16 kHz (channel 0 = left, S >= 8000) -> azimuths [B] in
    degrees, each from the centre 0.5 s of its waveform (as `binsweep predict` takes a file's)."""
    waves = np.asarray(waves, dtype=np.float32)
    if waves.ndim != 3 or waves.shape[1] != 2:
        raise ValueError(f"expected a batch of stereo waveforms [batch, 2, samples] (channel 0 = left ear), got an "
                         f"array of shape {waves.shape}")
    if waves.shape[2] < CLIP_SAMPLES:
        raise ValueError(f"{waves.shape[2]} samples is {waves.shape[2] / SAMPLE_RATE:.3f} s at {SAMPLE_RATE} Hz; at "
                         f"least {CLIP_SAMPLES} ({CLIP_SAMPLES / SAMPLE_RATE:g} s) are needed")
    clips = centre(waves)
    return np.concatenate([azimuths(model, clips[k:k + SERVE_BATCH], device)
                           for k in range(0, len(clips), SERVE_BATCH)]) if len(clips) else np.zeros(0)


def serve_inputs(config) -> Tensor:
    return Tensor("float32", (-1, 2, -1), f"stereo waveforms at {SAMPLE_RATE} Hz, channel 0 = left ear, at least "
                                          f"{CLIP_SAMPLES} samples (the centre {CLIP_SAMPLES / SAMPLE_RATE:g} s is used)")


def serve_example(config) -> np.ndarray:
    """One 0.5 s stereo noise burst, louder on the left; quantised to 1/128 so its JSON stays small."""
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(CLIP_SAMPLES) * 0.1
    wave = np.stack([noise, 0.5 * np.roll(noise, 8)])[None]  # [1, 2, 8000]
    return (np.round(wave * 128) / 128).astype(np.float32)


SERVING = Serving(inputs=serve_inputs, output=Tensor("float64", (-1,), "azimuth in degrees, counter-clockwise from "
                                                                        "the front, 90 = left, in [0, 360)"),
                  example=serve_example, predict=serve, requirements=("scipy",))
