"""A small end-to-end BAST run on generated binaural data, on CPU in about a minute.

Sounds from the generated corpus are rendered at every azimuth with the spherical-head model, turned into
normalised binaural spectrograms by the same front end the trainers use, split by sound (validation sounds are
never heard in training), and a small BAST is trained with the configured loss. Each epoch reports the training
loss and the validation AD and MSE; the end writes the paper's analysis plots and an attention rollout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from trainables.audio import BinauralFrontEnd
from trainables.bast import metrics
from trainables.bast.config import BASTConfig
from trainables.bast.losses import BASTLoss
from trainables.bast.model import BAST, azimuth_to_target
from trainables.sounds import generated_corpus
from trainables.spherical_head import render


@dataclass(frozen=True)
class Split:
    spec: torch.Tensor  # [N, 2, F, T] normalised log spectrograms
    target: torch.Tensor  # [N, 2] (cos az, sin az)
    azimuth: np.ndarray  # [N] degrees


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    val_loss: float
    val_ad_deg: float
    val_mse: float
    seconds: float


def make_dataset(n_sounds: int, azimuths: list[int], val_fraction: float, seed: int) -> tuple[Split, Split]:
    """Render every sound at every azimuth; the last `val_fraction` of the sounds form the validation split."""
    clips, _ = generated_corpus(n_sounds, seed=seed)
    front_end = BinauralFrontEnd()
    n_val = max(1, round(n_sounds * val_fraction))
    splits = []
    for sounds in (clips[: n_sounds - n_val], clips[n_sounds - n_val :]):
        wav = np.stack([render(s, az) for s in sounds for az in azimuths])  # [N, 2, S]
        az = np.tile(np.asarray(azimuths, dtype=np.float64), len(sounds))
        with torch.no_grad():
            spec = front_end(torch.from_numpy(wav))
        splits.append(Split(spec, azimuth_to_target(torch.from_numpy(az)), az))
    return splits[0], splits[1]


def predict(model: BAST, spec: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(spec[i : i + batch_size]) for i in range(0, len(spec), batch_size)])


def train(
    cfg: BASTConfig,
    train_set: Split,
    val_set: Split,
    on_epoch: Callable[[EpochResult], None] = lambda r: None,
) -> tuple[BAST, list[EpochResult]]:
    """Plain single-process training loop; returns the trained model and the per-epoch history."""
    torch.manual_seed(cfg.train.seed)
    model = BAST(cfg.model)
    criterion = BASTLoss(cfg.loss)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    history = []
    for epoch in range(1, cfg.train.epochs + 1):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_set.spec), generator=gen)
        total, seen = 0.0, 0
        for i in range(0, len(order), cfg.train.batch_size):
            idx = order[i : i + cfg.train.batch_size]
            loss = criterion(model(train_set.spec[idx]), train_set.target[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}, step {i // cfg.train.batch_size}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        pred = predict(model, val_set.spec)
        val = metrics.summary(pred.numpy(), val_set.target.numpy(), prefix="val")
        result = EpochResult(epoch, total / seen, float(criterion(pred, val_set.target)), val["val_ad_deg"],
                             val["val_mse"], time.perf_counter() - start)
        history.append(result)
        on_epoch(result)
    return model, history


def write_analysis(model: BAST, val_set: Split, out_dir: Path) -> dict[str, Path]:
    """The paper's plots for the validation split plus the attention rollout of one sample at 90° (left)."""
    from trainables.bast import plots, rollout

    out_dir.mkdir(parents=True, exist_ok=True)
    pred = predict(model, val_set.spec).numpy()
    target = val_set.target.numpy()
    files = {
        "polar": plots.polar_azimuth_error(metrics.per_azimuth(pred, target, val_set.azimuth),
                                           out_dir / "ad_per_azimuth.png", title="validation AD per azimuth"),
        "hemifield": plots.hemifield_boxplot(pred, target, out_dir / "hemifield.png", azimuth_deg=val_set.azimuth),
        "scatter": plots.prediction_scatter(pred, target, out_dir / "predictions.png"),
    }
    sample = int(np.flatnonzero(val_set.azimuth == 90)[0]) if (val_set.azimuth == 90).any() else 0
    spec = val_set.spec[sample : sample + 1]
    maps = {k: v[0] for k, v in rollout.attention_maps(model, spec).items()}
    files["rollout"] = rollout.save_rollout_png(spec[0], maps, out_dir / "attention_rollout.png")
    return files
