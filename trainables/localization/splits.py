"""Dataset splits, seeded and reproducible.

Test sounds never appear in train or val (split by sound). Val holds out whole sounds too (`val_sounds`, the
default of new datasets: a model is validated on sounds it never heard, as the reference keeps them apart), or, as
datasets built before did, is stratified by azimuth × environment (`train_val`): in every (azimuth, environment) cell
a `val_fraction` of the clips goes to val (75/25 in the paper, §4.3), drawn independently per cell.
"""

from __future__ import annotations

import hashlib

import numpy as np


def _stable_int(text: str) -> int:
    # Python's hash() is salted per process; a seed must not be.
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def test_sounds(sound_ids: list[str], test_fraction: float, seed: int) -> set[str]:
    """The sound ids held out for testing: round(test_fraction * n), at least 1 when the fraction is positive."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    ids = sorted(set(sound_ids))
    n_test = int(round(test_fraction * len(ids)))
    if test_fraction > 0:
        n_test = min(max(n_test, 1), len(ids) - 1)
    order = np.random.default_rng([seed, 0]).permutation(len(ids))
    return {ids[i] for i in order[:n_test]}


def train_val(cells: list[tuple[int, str]], val_fraction: float, seed: int) -> list[str]:
    """cells[i] = (azimuth, environment) of training clip i -> "train" or "val" for each clip."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out = ["train"] * len(cells)
    by_cell: dict[tuple[int, str], list[int]] = {}
    for i, cell in enumerate(cells):
        by_cell.setdefault(cell, []).append(i)
    for (az, env), idx in by_cell.items():
        rng = np.random.default_rng([seed, 1, int(az), _stable_int(env)])
        n_val = int(round(val_fraction * len(idx)))
        for j in rng.permutation(len(idx))[:n_val]:
            out[idx[j]] = "val"
    return out


def val_sounds(sound_ids: list[str], val_fraction: float, seed: int) -> set[str]:
    """The sound ids (of those not held out for testing) that go to val whole: round(val_fraction * n), at least 1
    when the fraction is positive and at least 2 sounds remain, so train keeps one. Drawn independently of the test
    sounds (another stream of the same seed)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ids = sorted(set(sound_ids))
    n_val = int(round(val_fraction * len(ids)))
    if val_fraction > 0 and len(ids) >= 2:
        n_val = min(max(n_val, 1), len(ids) - 1)
    order = np.random.default_rng([seed, 2]).permutation(len(ids))
    return {ids[i] for i in order[:n_val]}
