"""Streams a split of a localization dataset to training workers as batches of binaural waveforms.

Each of `world_size` workers reads only its own contiguous share of the (epoch-shuffled) shard order, and every
worker gets the same number of rows, so DDP ranks always run the same number of steps (`trainables.sharding`). Rows
are shuffled within each shard and shards are shuffled per epoch; the same (seed, epoch) gives the same batches. Spectrograms are not
computed here: the train loop runs `trainables.audio.BinauralFrontEnd` on the training device. Shards are read
through the dataset's filesystem (`trainables.datastore`), from a local folder or streamed from a URI (s3://...).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
import torch

from trainables import datastore
from trainables.localization import shards
from trainables.sharding import ShardedSplit


def match_environments(patterns, available: list[str], where: str) -> set[str]:
    """The environments named by `patterns`: names or shell-style patterns (fnmatch, e.g. room-*). A pattern that
    matches no environment of the dataset is an error naming it and what the dataset has."""
    if isinstance(patterns, str):  # one name, not a list of its letters
        patterns = [patterns]
    keep, unmatched = set(), []
    for pattern in patterns:
        hits = fnmatch.filter(available, pattern)
        keep.update(hits)
        if not hits:
            unmatched.append(pattern)
    if unmatched:
        raise ValueError(f"{where}: data.train_environments {', '.join(map(repr, unmatched))} matches no environment "
                         f"in the dataset; it has {_summary(available)} (names or patterns such as 'room-*')")
    return keep


def _summary(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 12 else ", ".join(names[:10]) + f", ... ({len(names)} in all)"


class ShardReader(ShardedSplit):
    """Yields {"wave": [B, 2, S] float32, "azimuth": [B] int64, "environment": [B] int64} batches.

    `environments` lists the names behind the environment codes: every environment of the dataset, sorted, so a
    code means the same environment in every split. `environments=` restricts the rows to those environments: names
    or shell-style patterns (room-* = every training room of a randomised-room build).
    """

    def __init__(self, root: str | Path, split: str, batch_size: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 environments: list[str] | tuple[str, ...] | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.manifest = shards.load_manifest(root)
        self.split = split
        counts = self.manifest.data["counts"]
        self.environments = sorted({e for c in counts.values() if isinstance(c, dict)
                                    for e in c.get("by_environment", {})})
        self.keep = None if environments is None else match_environments(
            environments, self.environments, str(self.manifest.root))
        self.fs, self._base = datastore.filesystem(self.manifest.root)  # opened once; shards are paths inside it
        files = [(f"{self._base}/{e['file']}", self._rows_kept(e)) for e in self.manifest.entries(split)]
        super().__init__(files, batch_size=batch_size, rank=rank, world_size=world_size, shuffle=shuffle, seed=seed,
                         drop_last=drop_last, where=f"{self.manifest.root} ({split})")
        if not self.files:
            raise ValueError(f"{self.manifest.root}: the dataset has no {split!r} rows"
                             + (f" in {', '.join(sorted(self.keep))}" if self.keep else ""))

    def _rows_kept(self, entry: dict) -> int:
        if self.keep is None:
            return entry["rows"]
        if "by_environment" not in entry:  # manifests written before per-shard counts existed
            envs = pq.read_table(f"{self._base}/{entry['file']}", columns=["environment"],
                                 filesystem=self.fs).column("environment")
            return sum(e in self.keep for e in envs.to_pylist())
        return sum(n for e, n in entry["by_environment"].items() if e in self.keep)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        env_code = {e: i for i, e in enumerate(self.environments)}
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, 1])
        waves, az, env = [], [], []
        buffered = 0
        for path, part in self._my_rows():
            table = pq.read_table(path, filesystem=self.fs)
            kept = (np.arange(table.num_rows) if self.keep is None else
                    np.flatnonzero([e in self.keep for e in table.column("environment").to_pylist()]))
            table = table.take(kept[part])
            if self.shuffle:
                table = table.take(rng.permutation(table.num_rows))
            waves.append(shards.read_waves(table))
            az.append(np.asarray(table.column("azimuth_deg").to_numpy(), dtype=np.int64))
            env.append(np.array([env_code[e] for e in table.column("environment").to_pylist()], dtype=np.int64))
            buffered += table.num_rows
            while buffered >= self.batch_size:
                batch, waves, az, env = _take(waves, az, env, self.batch_size)
                buffered -= self.batch_size
                yield batch
        if buffered and not self.drop_last:
            yield _take(waves, az, env, buffered)[0]


def _take(waves, az, env, n):
    w, a, e = np.concatenate(waves), np.concatenate(az), np.concatenate(env)
    batch = {"wave": torch.from_numpy(w[:n]), "azimuth": torch.from_numpy(a[:n]), "environment": torch.from_numpy(e[:n])}
    return batch, [w[n:]], [a[n:]], [e[n:]]
