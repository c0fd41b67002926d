"""The binauralizer's part of the shared training loop (`trainables.loop.Recipe`).

- Batches come from the dataset's Parquet shards (`data.BinauralReader`). Each row gives one window of
  model.clip_samples: a random window in training and the centre window in validation. A clip of exactly that length is
  used whole. The frame is the one nearest the window's centre.
- On the device, as in 2.5D `audioVisual_dataset.py` (binauralization.md §2):
  - the stereo window is scaled to RMS 0.1 over both ears (`normalize(desired_rms=0.1, eps=1e-4)`);
  - mix = L + R and diff = L − R;
  - both go through the STFT (n_fft 512, hop 160, win 400), stacked as (real, imag): [B, 2, 257, 64].
- Frames are uint8 [B, 3, H, W]. They are resized to model.image_size when the dataset's size differs, then
  ImageNet-normalised. Depth maps, for depth_source=map, are given as inverse depth 1/m, DPT's output convention.
- Loss: `losses.BinauralLoss` (diff, 2ch or both) on the model's output dict; the model's head is the one the loss
  trains (config.py: model.masks follows loss.kind).
- Validation sums, each a sum over the windows:
  - val_loss;
  - val_stft_dist and val_env_dist: the metrics of `metrics.py` on each window's predicted (L̂, R̂) (`ears_from_output`,
    heads.py: e.g. ((A + Õ)/2, (A − Õ)/2) for the diff head) against the true ears, with evaluate.py's
    `--normalization` (each array divided by its own max |x|).
    They are computed in torch on the device: the same definitions as `metrics.stft_distance` /
    `metrics.envelope_distance`, in float32.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from trainables import datastore
from trainables.binaural.config import BinauralConfig, BinauralModelConfig
from trainables.binaural.data import BinauralReader, load_manifest
from trainables.binaural.heads import ear_specs
from trainables.binaural.losses import BinauralLoss
from trainables.binaural.model import istft, stft
from trainables.loop import per_worker_batch

DESIRED_RMS = 0.1  # 2.5D normalize()
RMS_EPS = 1e-4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_DEPTH_M = 0.1  # inverse depth is clipped at 10 1/m


def dataset_root(config: BinauralConfig) -> Path | str:
    """data.root: a URI (s3://...) as given, a folder as given when absolute, else under BINSWEEP_HOME (the driver
    resolves it before workers start)."""
    return datastore.normalize(config.data.root)


def rms_normalize(wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, C, S] -> (wave scaled to RMS 0.1 over channels and samples, the gain [B] that was applied)."""
    rms = wave.pow(2).mean(dim=(1, 2)).sqrt().clamp_min(RMS_EPS)  # [B]
    gain = DESIRED_RMS / rms
    return wave * gain[:, None, None], gain


def image_input(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [B, 3, h, w] (or float in [0, 1]) -> ImageNet-normalised float [B, 3, H, W] at the model's size."""
    x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def depth_input(depth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Depth in metres [B, 1, h, w] -> inverse depth (1/m) [B, 1, H, W] at the model's size (nearest resampling)."""
    x = depth.float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="nearest")
    return 1.0 / x.clamp_min(MIN_DEPTH_M)


def spec_args(cfg: BinauralModelConfig) -> dict:
    return dict(n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length)


def model_inputs(cfg: BinauralModelConfig, batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """A reader batch -> the tensors of one step: wave (normalised ears [B, 2, S]), mix [B, S], mix_spec and diff_spec
    [B, 2, F, T], image / depth when the model needs them (else None)."""
    with torch.autocast(device.type, enabled=False):  # STFTs and normalisation in fp32 whatever the autocast
        wave, _ = rms_normalize(batch["wave"].to(device, non_blocking=True).float())
        mix, diff = wave[:, 0] + wave[:, 1], wave[:, 0] - wave[:, 1]
        out = {"wave": wave, "mix": mix, "mix_spec": stft(mix, **spec_args(cfg)),
               "diff_spec": stft(diff, **spec_args(cfg)), "image": None, "depth": None}
        if cfg.needs_image:
            out["image"] = image_input(batch["image"].to(device, non_blocking=True), cfg.image_size)
        if cfg.needs_depth_map:
            out["depth"] = depth_input(batch["depth"].to(device, non_blocking=True), cfg.image_size)
    return out


def ears_from_output(cfg: BinauralModelConfig, mix: torch.Tensor, out: dict) -> torch.Tensor:
    """mix [B, S] and a model output dict (any head) -> (L̂, R̂) [B, 2, S]: every consumer's path (heads.py)."""
    mix = mix.float()
    specs = ear_specs({k: v.float() for k, v in out.items() if k != "attention"}, stft(mix, **spec_args(cfg)))
    return istft(specs, mix.shape[-1], **spec_args(cfg))  # [B, 2, 2, F, T] -> [B, 2, S]


def _max_normalize(x: torch.Tensor) -> torch.Tensor:
    """evaluate.py normalize per sample: x / max(1e-20, max |x|) over both channels. [B, 2, S]."""
    return x / x.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-20)


def stft_distance(pred: torch.Tensor, gt: torch.Tensor, cfg: BinauralModelConfig,
                  normalization: bool = True) -> torch.Tensor:
    """Per-sample STFT distance (metrics.stft_distance): pred, gt [B, 2, S] -> [B]."""
    if normalization:
        pred, gt = _max_normalize(pred), _max_normalize(gt)
    d = stft(pred, **spec_args(cfg)) - stft(gt, **spec_args(cfg))  # [B, 2(ears), 2(re, im), F, T]
    return d.pow(2).mean(dim=(2, 3, 4)).sum(dim=1)


def hilbert_envelope(x: torch.Tensor) -> torch.Tensor:
    """|analytic signal| along the last axis, as scipy.signal.hilbert: FFT, keep DC (and Nyquist), double the
    positive frequencies, zero the negative ones, inverse FFT."""
    n = x.shape[-1]
    h = torch.zeros(n, dtype=x.dtype, device=x.device)
    h[0] = 1
    if n % 2 == 0:
        h[n // 2] = 1
        h[1:n // 2] = 2
    else:
        h[1:(n + 1) // 2] = 2
    return torch.fft.ifft(torch.fft.fft(x) * h).abs()


def envelope_distance(pred: torch.Tensor, gt: torch.Tensor, normalization: bool = True) -> torch.Tensor:
    """Per-sample ENV distance (metrics.envelope_distance): pred, gt [B, 2, S] -> [B]."""
    if normalization:
        pred, gt = _max_normalize(pred), _max_normalize(gt)
    e = hilbert_envelope(gt) - hilbert_envelope(pred)  # [B, 2, S]
    return e.pow(2).mean(dim=-1).sqrt().sum(dim=1)


class BinauralRecipe:
    def __init__(self, config: BinauralConfig):
        self.config = config
        self.cfg = config.model
        self.train = config.train
        self.root = dataset_root(config)
        self.criterion = BinauralLoss(config.loss)
        self._readers: dict[tuple[str, int, int], BinauralReader] = {}
        manifest = load_manifest(self.root)
        if manifest.sample_rate != self.cfg.sample_rate:
            raise ValueError(f"{self.root} is at {manifest.sample_rate} Hz but model.sample_rate is "
                             f"{self.cfg.sample_rate}; rebuild the dataset at the model's rate")

    def build_model(self) -> torch.nn.Module:
        from trainables.binaural.model import BinauralModel

        return BinauralModel(self.cfg)

    def _reader(self, split: str, rank: int, world_size: int) -> BinauralReader:
        key = (split, rank, world_size)
        if key not in self._readers:
            self._readers[key] = BinauralReader(
                self.root, split, per_worker_batch(self.train.batch_size, world_size), window=self.cfg.clip_samples,
                rank=rank, world_size=world_size, shuffle=split == "train", random_crop=split == "train", seed=self.train.seed,
                image=self.cfg.needs_image, depth=self.cfg.needs_depth_map)
        return self._readers[key]

    def steps_per_epoch(self, world_size: int) -> int:
        return len(self._reader("train", 0, world_size))

    def batches(self, split: str, epoch: int, rank: int, world_size: int):
        reader = self._reader(split, rank, world_size)
        reader.set_epoch(epoch)
        return iter(reader)

    def _forward(self, model, batch, device) -> tuple[dict, dict[str, torch.Tensor]]:
        x = model_inputs(self.cfg, batch, device)
        out = model(x["mix_spec"], x["image"], x["depth"])  # the head's spectrograms and masks, [B, ..., F-1, T]
        return x, {k: v.float() for k, v in out.items()}

    def loss(self, model, batch, device):
        x, out = self._forward(model, batch, device)
        return self.criterion(out, x["mix_spec"], x["diff_spec"]), len(x["mix"])

    def validation_sums(self, model, batch, device):
        x, out = self._forward(model, batch, device)
        n = len(x["mix"])
        with torch.autocast(device.type, enabled=False):
            ears = ears_from_output(self.cfg, x["mix"], out)  # [B, 2, S]
            stft_d = stft_distance(ears, x["wave"], self.cfg)
            env_d = envelope_distance(ears, x["wave"])
        return {"val_loss": (self.criterion(out, x["mix_spec"], x["diff_spec"]).detach() * n, n),
                "val_stft_dist": (stft_d.sum(), n),
                "val_env_dist": (env_d.sum(), n)}
