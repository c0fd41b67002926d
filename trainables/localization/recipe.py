"""Every localizer's part of the shared training loop: shard batches, spectrograms on the device, loss, validation sums.

A localizer (BAST, cnn_loc) maps [B, 2, F, T] left/right spectrograms to (x, y) [B, 2] against (cos az, sin az). Its
config has BAST's `loss`, `train` and `data` sections; only the model differs, so the recipe takes the function that
builds it from the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from trainables import datastore
from trainables.audio import BinauralFrontEnd
from trainables.bast.losses import BASTLoss, angle_between
from trainables.bast.model import azimuth_to_target
from trainables.localization.reader import ShardReader
from trainables.loop import per_worker_batch


def dataset_root(config: Any) -> Path | str:
    """data.root: a URI (s3://...) as given, a folder as given when absolute, else under BINSWEEP_HOME (the driver
    resolves it before workers start)."""
    return datastore.normalize(config.data.root)


class LocalizationRecipe:
    """The `trainables.loop.Recipe` of a localizer whose model `build(config)` returns."""

    def __init__(self, config: Any, build: Callable[[Any], torch.nn.Module]):
        self.config = config
        self.train = config.train
        self.root = dataset_root(config)
        self.front_end = BinauralFrontEnd()
        self.criterion = BASTLoss(config.loss)
        self._build = build
        self._readers: dict[tuple[str, int, int], ShardReader] = {}

    def build_model(self) -> torch.nn.Module:
        return self._build(self.config)

    def _reader(self, split: str, rank: int, world_size: int) -> ShardReader:
        key = (split, rank, world_size)
        if key not in self._readers:
            self._readers[key] = ShardReader(
                self.root, split, per_worker_batch(self.train.batch_size, world_size), rank=rank,
                world_size=world_size, shuffle=split == "train", seed=self.train.seed, drop_last=False,
                environments=self.config.data.train_environments)
        return self._readers[key]

    def steps_per_epoch(self, world_size: int) -> int:
        return len(self._reader("train", 0, world_size))

    def batches(self, split: str, epoch: int, rank: int, world_size: int):
        reader = self._reader(split, rank, world_size)
        reader.set_epoch(epoch)
        return iter(reader)

    def _inputs(self, batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        wave = batch["wave"].to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=False):  # the dB scale needs fp32 whatever the autocast
            spec = self.front_end.to(device)(wave.float())
        target = azimuth_to_target(batch["azimuth"].to(device)).float()
        return spec, target

    def loss(self, model, batch, device):
        spec, target = self._inputs(batch, device)
        pred = model(spec).float()
        return self.criterion(pred, target), len(target)

    def validation_sums(self, model, batch, device):
        spec, target = self._inputs(batch, device)
        pred = model(spec).float()
        n = len(target)
        ad_deg = torch.rad2deg(angle_between(pred, target))
        se = ((pred - target) ** 2).sum(dim=1)
        return {"val_loss": (self.criterion(pred, target).detach() * n, n),
                "val_ad_deg": (ad_deg.sum(), n),
                "val_mse": (se.sum(), n)}
