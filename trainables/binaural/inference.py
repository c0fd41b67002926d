"""Whole-clip binauralization with a trained model (model.BinauralModel): sliding windows, file I/O.

- `predict_clip` binauralizes a whole mono mix with 2.5D demo.py's sliding windows (`metrics.binauralize_clip`:
  0.63 s windows, hop 0.05 s, each window RMS-normalised and scaled back, overlaps averaged). Each window sees the
  frame nearest its centre. The windows are batched through the model.
- `binauralize_file` is what `binsweep binauralize` runs: a mono WAV and a frame in, a 2-channel WAV out.

Input conventions (documented choices):
- The model's input mix is L + R, 2.5D's sum. A mono recording m is taken as (L + R) / 2, so the mix is 2·m and each
  output ear has about the level of m.
- Stereo input is refused unless `downmix=True`. Then the mix is L + R of the file, with a notice. A stereo file is
  most likely already binaural, and averaging it silently would hide that.
- Another sample rate is resampled to the model's rate (scipy resample_poly), with a notice. The output is written
  at the model's rate.
- A file shorter than one window is zero-padded to one window and the output cut back to its length.

A logged model is served (`serve`, the trainable's `Serving`, MLflow pyfunc) on what a request holds: mono waveforms
[B, S] at the model's rate, the scene's RGB frame [B, H, W, 3] uint8 (any size: resized as `binauralize` resizes an
image file) and, for depth_source=map, a depth map [B, H, W] in metres; it returns the two ears [B, 2, S] float32
(channel 0 = left), what `binauralize_file` writes before its clipping guard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from trainables.binaural import metrics
from trainables.binaural.config import BinauralModelConfig
from trainables.binaural.model import stft
from trainables.loop import unwrap


def model_config(model: torch.nn.Module) -> BinauralModelConfig:
    cfg = getattr(unwrap(model), "cfg", None)
    if not isinstance(cfg, BinauralModelConfig):
        raise ValueError(f"{type(unwrap(model)).__name__} is not a binauralization model (no BinauralModelConfig)")
    return cfg


@torch.no_grad()
def predict_windows(model: torch.nn.Module, windows: np.ndarray, images: np.ndarray | None,
                    depths: np.ndarray | None, device="cpu", batch_size: int = 64) -> np.ndarray:
    """windows [N, L] mono mixes (L + R, already normalised), images uint8 [N, 3, H, W], depths [N, 1, H, W] metres
    -> predicted ears [N, 2, L] float64."""
    from trainables.binaural.recipe import depth_input, ears_from_output, image_input, spec_args

    cfg = model_config(model)
    device = torch.device(device)
    out = []
    for k in range(0, len(windows), batch_size):
        mix = torch.as_tensor(windows[k:k + batch_size], dtype=torch.float32, device=device)  # [b, L]
        image = depth = None
        if cfg.needs_image:
            image = image_input(torch.as_tensor(images[k:k + batch_size], device=device), cfg.image_size)
        if cfg.needs_depth_map:
            depth = depth_input(torch.as_tensor(depths[k:k + batch_size], device=device), cfg.image_size)
        pred = model(stft(mix, **spec_args(cfg)), image, depth)  # any head's output dict (model.masks)
        out.append(ears_from_output(cfg, mix, pred).double().cpu().numpy())
    return np.concatenate(out)


def predict_clip(model: torch.nn.Module, mix: np.ndarray, frames: np.ndarray | None = None,
                 frame_times: np.ndarray | None = None, depth: np.ndarray | None = None, *, sample_rate: int,
                 hop_seconds: float = 0.05, rms_reference: np.ndarray | None = None, device="cpu",
                 batch_size: int = 64) -> np.ndarray:
    """The whole clip's predicted ears [2, S] from its mono mix L + R [S] by sliding windows.

    frames: uint8 [K, 3, H, W] with frame_times [K] (seconds from the clip start; default: spread evenly), each
    window using the frame nearest its centre; depth [1, H, W] metres for depth_source=map. rms_reference: the
    ground-truth ears [2, S] to set each window's gain as demo.py does (evaluation), default the mix itself.
    """
    cfg = model_config(model)
    if sample_rate != cfg.sample_rate:
        raise ValueError(f"the clip is at {sample_rate} Hz but the model works at {cfg.sample_rate} Hz")
    mix = np.asarray(mix, dtype=np.float64)
    S, L = mix.shape[-1], cfg.clip_samples
    if cfg.needs_image and frames is None:
        raise ValueError(f"the model (modalities={cfg.modalities}, depth_source={cfg.depth_source}) needs an image")
    if cfg.needs_depth_map and depth is None:
        raise ValueError("the model (depth_source=map) needs a depth map")
    if S < L:  # one zero-padded window
        pad = L - S
        ref = None if rms_reference is None else np.pad(np.asarray(rms_reference, np.float64),
                                                        [(0, 0)] * (np.ndim(rms_reference) - 1) + [(0, pad)])
        return predict_clip(model, np.pad(mix, (0, pad)), frames, frame_times, depth, sample_rate=sample_rate,
                            hop_seconds=hop_seconds, rms_reference=ref, device=device, batch_size=batch_size)[:, :S]
    if frames is not None and frame_times is None:
        frame_times = (np.arange(len(frames)) + 0.5) * S / sample_rate / len(frames)

    recorded: dict[int, np.ndarray] = {}

    def record(window: np.ndarray, start: int) -> np.ndarray:
        recorded[start] = window
        return np.zeros((2, L))

    kwargs = dict(sample_rate=sample_rate, window_seconds=L / sample_rate, hop_seconds=hop_seconds,
                  rms_reference=rms_reference)
    metrics.binauralize_clip(record, mix, **kwargs)  # pass 1: which windows, at which gain
    starts = sorted(recorded)
    images = depths = None
    if cfg.needs_image:
        times = np.asarray(frame_times, dtype=np.float64)
        images = np.stack([frames[int(np.argmin(np.abs(times - (s + L / 2) / sample_rate)))] for s in starts])
    if cfg.needs_depth_map:
        depths = np.repeat(np.asarray(depth, np.float32)[None], len(starts), axis=0)
    preds = predict_windows(model, np.stack([recorded[s] for s in starts]), images, depths, device, batch_size)
    by_start = dict(zip(starts, preds))
    return metrics.binauralize_clip(lambda w, s: by_start[s], mix, **kwargs)  # pass 2: the same windows, predicted


# ------------------------------------------------------------------------------------------------ files


@dataclass
class BinauralizeResult:
    out: Path
    seconds: float
    sample_rate: int
    notices: list[str] = field(default_factory=list)


def _resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    from scipy.signal import resample_poly

    g = math.gcd(int(rate), int(target))
    return resample_poly(x, target // g, int(rate) // g, axis=-1)


def read_image(path: str | Path, size: tuple[int, int]) -> tuple[np.ndarray, str | None]:
    """An image file -> (uint8 [3, H, W] RGB at `size`, a notice when it was resized)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            notice = None
            if (im.height, im.width) != tuple(size):
                notice = f"{path.name}: resized from {im.height}×{im.width} to the model's {size[0]}×{size[1]}"
            return fit_frame(im, size), notice
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: cannot be read as an image ({exc})") from None


def fit_frame(im, size: tuple[int, int]) -> np.ndarray:
    """An RGB PIL image -> uint8 [3, H, W] at the model's `size` (bilinear when it is another size)."""
    from PIL import Image

    if (im.height, im.width) != tuple(size):
        im = im.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()


def check_depth(d: np.ndarray, what: str) -> np.ndarray:
    """A depth map in metres, [H, W] or [1, H, W] -> float32 [1, H, W]; ValueError naming `what` otherwise."""
    if d.ndim == 3 and d.shape[0] == 1:
        d = d[0]
    if d.ndim != 2:
        raise ValueError(f"{what}: a depth map must be [H, W] or [1, H, W] metres, got shape {d.shape}")
    if not np.isfinite(d).all() or (d <= 0).any():
        raise ValueError(f"{what}: depth must be finite and positive (metres)")
    return d.astype(np.float32)[None]


def read_depth(path: str | Path) -> np.ndarray:
    """A .npy depth map in metres, [H, W] or [1, H, W] -> float32 [1, H, W]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"depth map {path} does not exist")
    try:
        d = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot be read as a .npy array ({exc})") from None
    return check_depth(d, str(path))


def binauralize_file(model: torch.nn.Module, wav: str | Path, out: str | Path, *, image: str | Path | None = None,
                     depth: str | Path | None = None, downmix: bool = False, hop_seconds: float = 0.05,
                     device="cpu", say: Callable[[str], None] = lambda s: None) -> BinauralizeResult:
    """Binauralize a mono WAV with `model` and write a 2-channel WAV (channel 0 = left) at the model's rate."""
    import soundfile as sf

    cfg = model_config(model)
    wav, out = Path(wav), Path(out)
    notices: list[str] = []

    def note(text: str) -> None:
        notices.append(text)
        say(text)

    if cfg.needs_image and image is None:
        raise ValueError(f"the model uses modalities={cfg.modalities} (depth_source={cfg.depth_source}) and needs the "
                         "scene's frame: pass --image FRAME.png")
    if cfg.needs_depth_map and depth is None:
        raise ValueError("the model reads a depth map (depth_source=map): pass --depth DEPTH.npy (metres, [H, W])")
    if not wav.is_file():
        raise FileNotFoundError(f"audio file {wav} does not exist")
    try:
        data, rate = sf.read(str(wav), dtype="float64", always_2d=True)  # [S, C]
    except Exception as exc:  # noqa: BLE001 - soundfile raises several types for unreadable files
        raise ValueError(f"{wav}: cannot be read as audio ({exc})") from None
    if data.shape[0] == 0:
        raise ValueError(f"{wav} holds no samples")
    channels = data.shape[1]
    if channels == 1:
        mix = 2.0 * data[:, 0]  # m = (L + R) / 2, so the model's mix L + R is 2 m
    elif channels == 2 and downmix:
        mix = data[:, 0] + data[:, 1]
        note(f"{wav.name}: stereo input downmixed to L + R (--downmix)")
    else:
        raise ValueError(f"{wav}: {channels} channels; binauralize takes a mono recording (1 channel). For a stereo "
                         "file pass --downmix to use L + R as the mono mix")
    if rate != cfg.sample_rate:
        mix = _resample(mix, rate, cfg.sample_rate)
        note(f"{wav.name}: resampled from {rate} Hz to the model's {cfg.sample_rate} Hz")
    frames = depth_map = None
    if cfg.needs_image:
        frame, notice = read_image(image, cfg.image_size)
        if notice:
            note(notice)
        frames = frame[None]
    elif image is not None:
        note(f"the model does not look at images (modalities={cfg.modalities}); {Path(image).name} is ignored")
    if cfg.needs_depth_map:
        depth_map = read_depth(depth)
    elif depth is not None:
        note(f"the model reads no depth map (depth_source={cfg.depth_source}); {Path(depth).name} is ignored")
    if len(mix) < cfg.clip_samples:
        note(f"{wav.name}: {len(mix) / cfg.sample_rate:.3f} s is shorter than one {cfg.clip_seconds} s window; "
             "zero-padded")
    model = unwrap(model).eval()
    ears = predict_clip(model, mix, frames, None, depth_map, sample_rate=cfg.sample_rate, hop_seconds=hop_seconds,
                        device=device)
    peak = np.abs(ears).max()
    if peak > 1.0:
        ears = ears / peak * 0.99
        note(f"output peaked at {peak:.2f}; scaled to 0.99 to avoid clipping")
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(out), ears.T.astype(np.float32), cfg.sample_rate, subtype="PCM_16")
    return BinauralizeResult(out, len(mix) / cfg.sample_rate, cfg.sample_rate, notices)


# ------------------------------------------------------------------------------------------------ serving


def serve_inputs(config):
    """The request's named arrays for this model's modalities."""
    from trainables.registry import Tensor

    cfg = config.model
    inputs = {"mono": Tensor("float32", (-1, -1), f"mono waveforms at {cfg.sample_rate} Hz, any length (the same "
                                                  "for every item of a request)")}
    if cfg.needs_image:
        inputs["frame"] = Tensor("uint8", (-1, -1, -1, 3), f"the scene's RGB frame, height × width × 3, any size "
                                                           f"(resized to {cfg.image_size[0]}×{cfg.image_size[1]})")
    if cfg.needs_depth_map:
        inputs["depth"] = Tensor("float32", (-1, -1, -1), "the scene's depth map in metres, height × width")
    return inputs


def serve_example(config) -> dict[str, np.ndarray]:
    """One window of noise (quantised to 1/128 so its JSON stays small) and a small grey frame (and depth)."""
    cfg = config.model
    rng = np.random.default_rng(0)
    example = {"mono": (np.round(rng.standard_normal((1, cfg.clip_samples)) * 0.1 * 128) / 128).astype(np.float32)}
    if cfg.needs_image:
        example["frame"] = np.full((1, 18, 32, 3), 128, dtype=np.uint8)
    if cfg.needs_depth_map:
        example["depth"] = np.full((1, 18, 32), 2.0, dtype=np.float32)
    return example


def serve(model: torch.nn.Module, config, inputs, device="cpu") -> np.ndarray:
    """A served request -> the ears [B, 2, S] float32, each item binauralized as `binauralize_file` does its file
    (mix = 2 · mono, sliding windows, the frame resized to the model's size) without the clipping guard."""
    from PIL import Image

    cfg = config.model
    if not isinstance(inputs, dict):
        inputs = {"mono": inputs}
    if "mono" not in inputs:
        raise ValueError(f"the request has {sorted(inputs)} but no 'mono' (mono waveforms [batch, samples])")
    mono = np.asarray(inputs["mono"], dtype=np.float64)
    if mono.ndim != 2 or mono.shape[1] == 0:
        raise ValueError(f"'mono' must be mono waveforms [batch, samples], got an array of shape {mono.shape}")
    frames = depths = [None] * len(mono)
    if cfg.needs_image:
        frame = inputs.get("frame")
        if frame is None:
            raise ValueError(f"the model uses modalities={cfg.modalities} (depth_source={cfg.depth_source}) and needs "
                             "'frame': the scene's RGB frame [batch, height, width, 3] uint8")
        frame = np.asarray(frame)
        if frame.ndim != 4 or frame.shape[-1] != 3 or len(frame) != len(mono):
            raise ValueError(f"'frame' must be RGB frames [batch, height, width, 3], one per waveform "
                             f"({len(mono)}), got an array of shape {frame.shape}")
        frames = [fit_frame(Image.fromarray(np.asarray(f, dtype=np.uint8), "RGB"), cfg.image_size)[None]
                  for f in frame]
    if cfg.needs_depth_map:
        depth = inputs.get("depth")
        if depth is None or len(depth) != len(mono):
            raise ValueError("the model reads a depth map (depth_source=map): 'depth' [batch, height, width] metres, "
                             "one per waveform")
        depths = [check_depth(np.asarray(d, dtype=np.float32), "'depth'") for d in depth]
    model = unwrap(model).eval()
    ears = [predict_clip(model, 2.0 * m, f, None, d, sample_rate=cfg.sample_rate, device=device)
            for m, f, d in zip(mono, frames, depths)]
    return np.stack(ears).astype(np.float32) if ears else np.zeros((0, 2, mono.shape[1]), np.float32)


def trained_config(config):
    """The config without paths to pretrained backbone weights: a trained model's state dict supersedes them, and
    the machine that serves it need not have those files."""
    return config.model_copy(update={"model": config.model.model_copy(update={"image_weights": None,
                                                                              "depth_weights": None})})
