"""How a split's Parquet shards are shared out among Ray Train workers (both dataset readers build on this).

Each of `world_size` workers reads only its own contiguous share of the epoch's shard order, and every worker gets
the same number of rows (`total // world_size`; the remainder is left out that epoch), so DDP ranks always run the
same number of steps. The order is shuffled per epoch from (seed, epoch) alone, so every rank agrees on it and an
epoch replayed after a restore reads what it read the first time.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


class ShardedSplit(torch.utils.data.IterableDataset):
    """Base of the readers: `files` is [(shard path inside the reader's filesystem, rows this reader keeps from it)],
    in manifest order."""

    def __init__(self, files: list[tuple[str, int]], *, batch_size: int, rank: int, world_size: int,
                 shuffle: bool, seed: int, drop_last: bool, where: str):
        super().__init__()
        self.files = [(path, n) for path, n in files if n]
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0
        self.total_rows = sum(n for _, n in self.files)
        self.rows_per_worker = self.total_rows // world_size
        if self.files and self.rows_per_worker == 0:
            raise ValueError(f"{where}: {self.total_rows} rows cannot feed {world_size} workers")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches per epoch for this worker (the same for every worker)."""
        n, b = self.rows_per_worker, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def _my_rows(self) -> Iterator[tuple[str, slice]]:
        """(shard file, slice of its kept rows) covering this worker's share of the epoch."""
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(len(self.files)) if self.shuffle
                 else np.arange(len(self.files)))
        lo = self.rank * self.rows_per_worker
        hi = lo + self.rows_per_worker
        start = 0
        for k in order:
            path, n = self.files[k]
            a, b = max(lo, start), min(hi, start + n)
            if a < b:
                yield path, slice(a - start, b - start)
            start += n
