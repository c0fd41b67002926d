"""Is a localization dataset mirror-symmetric, and what that means for localizers with shared ear encoders (SP).

Mirror-symmetric: for the same sound in the same environment, the left ear at azimuth az is the right ear at
360 − az (and the other way round). binsweep's default KEMAR responses are measured on one side and mirrored, so
its anechoic data is symmetric bit for bit; the verdict is per environment (a room need not be).

What follows for SP models, one encoder f for both ears (BAST: TE-L = TE-R; tests/test_symmetry.py pins both facts):
- SP + addition computes f(L) + f(R), the same for (L, R) and (R, L). On symmetric data the inputs at az and 360 − az
  are exactly such a swap, so the model gives one prediction for both: it cannot tell left from right. One
  prediction p for {az, −az} costs at least the angle between them, so the best mean error over a uniform azimuth
  grid is the mean of min(a, 180 − a) over folded azimuths a: 45° (`add_floor_deg`), whatever the training.
- SP + subtraction computes f(L) − f(R), which is zero token by token whenever L = R: on symmetric data at 0° and
  180°. TE-C then sees the same all-zero input for both, so the model gives one prediction for 0° and 180° (for every
  sound), and d(p, 0°) + d(p, 180°) = 180° for any p: those two azimuths cost 90° on average (`sub_floor_deg` is the
  share of that in the mean over the grid).
- NSP (two encoders), and SP + concatenation (the halves swap but TE-C is not symmetric in them), have no such limit.

`mirror_symmetry` reads a few mirrored pairs of rows (not the whole dataset) and caches its verdict per dataset
fingerprint under $BINSWEEP_HOME/data/cache/mirror_symmetry, so `binsweep report` stays fast.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from trainables import datastore
from trainables.home import home

# Half an int16 step: int16 shards must match exactly, float32 ones up to rounding in the convolution.
TOLERANCE = 0.5 / 32767.0
PAIRS_PER_ENVIRONMENT = 6
_MEMO: dict[str, MirrorCheck] = {}


@dataclass(frozen=True)
class MirrorCheck:
    """The verdict on one dataset: per environment, whether every compared pair matched."""

    fingerprint: str
    environments: dict[str, bool]  # environment -> mirror-symmetric in every pair compared
    pairs: dict[str, int]  # environment -> pairs compared (an environment without a mirrored pair is left out)
    max_difference: dict[str, float]  # environment -> largest |left(az) - right(360 - az)| over its pairs

    @property
    def symmetric_environments(self) -> list[str]:
        return sorted(e for e, ok in self.environments.items() if ok)


def _mirror(az: int) -> int:
    return (360 - int(az)) % 360


def add_floor_deg(azimuths: Iterable[int]) -> float:
    """SP-add's least mean angular error on mirror-symmetric data over these azimuths: each az shares its prediction
    with 360 − az, and the best shared prediction costs half the angle between them, min(a, 180 − a) for the folded
    azimuth a (an az without its mirror in the grid is not bound)."""
    grid = set(int(a) % 360 for a in azimuths)
    errors = [min(a, 180 - a) if _mirror(a) in grid else 0 for a in (min(a, 360 - a) for a in grid)]
    return float(np.mean(errors))


def sub_floor_deg(azimuths: Iterable[int]) -> float:
    """SP-sub's least mean angular error on mirror-symmetric data: 0° and 180°, when both are in the grid, share one
    prediction and cost 90° each on average; the rest are not bound."""
    grid = set(int(a) % 360 for a in azimuths)
    return 90.0 * 2 / len(grid) if {0, 180} <= grid else 0.0


def _pick_pairs(meta, per_environment: int) -> dict[str, list[tuple[int, int]]]:
    """environment -> up to `per_environment` (row of az, row of 360 − az) pairs from one sound (the one with the
    most mirrored azimuths): distinct azimuths, plus one of the self-mirrored 0° and 180° (L = R there, which is what
    SP-sub's limit rests on) when the sound has it."""
    sound, az, env = (meta.column(c).to_pylist() for c in ("sound_id", "azimuth_deg", "environment"))
    rows: dict[tuple[str, str], dict[int, int]] = {}
    for i, (s, a, e) in enumerate(zip(sound, az, env)):
        rows.setdefault((e, s), {}).setdefault(int(a) % 360, i)
    best: dict[str, tuple[int, list[tuple[int, int]]]] = {}
    for (e, _), by_az in sorted(rows.items()):
        distinct = [(by_az[a], by_az[_mirror(a)]) for a in sorted(by_az) if a < _mirror(a) and _mirror(a) in by_az]
        selfs = [(by_az[a], by_az[a]) for a in (0, 180) if a in by_az]
        pairs = distinct[:per_environment - 1] + selfs[:1] if selfs else distinct[:per_environment]
        if len(distinct) + len(selfs) > best.get(e, (0, []))[0]:
            best[e] = (len(distinct) + len(selfs), pairs)
    return {e: p for e, (_, p) in best.items()}


def check(root: str | Path, per_environment: int = PAIRS_PER_ENVIRONMENT) -> MirrorCheck:
    """Compare left(az) with right(360 − az) and right(az) with left(360 − az) on a few rows of the dataset at
    `root` (a folder or a URI). Rows come from the test split (every azimuth of its sounds), else train, else val."""
    from trainables.localization import shards

    manifest = shards.load_manifest(root)
    fs, base = datastore.filesystem(manifest.root)
    verdict: dict[str, bool] = {}
    counts: dict[str, int] = {}
    worst: dict[str, float] = {}
    everywhere = {e for c in manifest.data.get("counts", {}).values() if isinstance(c, dict)
                  for e in c.get("by_environment", {})}
    for split in ("test", "train", "val"):
        for entry in manifest.entries(split):
            if everywhere and everywhere <= set(verdict):
                break  # every environment has its verdict: read no further shard
            path = f"{base}/{entry['file']}"
            meta = datastore.read_table(path, columns=["sound_id", "azimuth_deg", "environment"], fs=fs)
            picked = {e: p for e, p in _pick_pairs(meta, per_environment).items() if e not in verdict}
            if not picked:
                continue
            needed = sorted({i for p in picked.values() for pair in p for i in pair})
            waves = dict(zip(needed, shards.read_waves(
                datastore.read_table(path, columns=["left", "right"], fs=fs).take(needed))))  # row -> [2, S]
            for e, pairs in picked.items():
                diff = max(float(np.abs(waves[i] - waves[j][::-1]).max()) for i, j in pairs)
                verdict[e], counts[e], worst[e] = diff <= TOLERANCE, len(pairs), diff
    return MirrorCheck(manifest.fingerprint, verdict, counts, worst)


def _cache_file(fingerprint: str) -> Path:
    return home() / "data" / "cache" / "mirror_symmetry" / f"{fingerprint}.json"


def mirror_symmetry(root: str | Path, fingerprint: str | None = None) -> MirrorCheck:
    """`check`, cached per dataset fingerprint (a dataset's bytes do not change under one fingerprint): in memory,
    then on disk. `fingerprint` given (e.g. from a run's tags), a cached verdict needs no read of the dataset."""
    from trainables.localization import shards

    fp = fingerprint or shards.load_manifest(root).fingerprint
    if fp in _MEMO:
        return _MEMO[fp]
    cache = _cache_file(fp)
    try:
        result = MirrorCheck(**json.loads(cache.read_text()))
    except (OSError, ValueError, TypeError):
        result = check(root)
        if result.fingerprint == fp:  # never file a verdict under another dataset's name
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(asdict(result)))
            os.replace(tmp, cache)
    _MEMO[fp] = result
    return result


def sp_notes(trials: Iterable[Mapping[str, Any]], dataset: str | Path | None,
             fingerprint: str | None = None) -> list[str]:
    """Plain sentences for a sweep's report when it has SP trials with addition or subtraction and its dataset is
    mirror-symmetric (trials: each trial's params with model.sharing and model.integration)."""
    trials = list(trials)
    kinds = {str(t.get("model.integration")).lower() for t in trials if str(t.get("model.sharing")).upper() == "SP"}
    kinds &= {"add", "sub"}
    dataset = dataset or next((t["data.root"] for t in trials if t.get("data.root")), None)
    if not kinds or dataset is None:
        return []
    root = datastore.normalize(dataset)
    try:
        result = mirror_symmetry(root, fingerprint)
        azimuths = [int(a) for a in shards_azimuths(root)]
    except (OSError, ValueError, KeyError):
        return []  # the dataset is not readable from here: no verdict, and no note on a guess
    envs = result.symmetric_environments
    if not envs:
        return []
    where = (f"The dataset is mirror-symmetric in {', '.join(envs)} (left ear at azimuth az = right ear at 360 − az, "
             f"checked on {sum(result.pairs[e] for e in envs)} pairs of rows). ")
    notes = []
    if "add" in kinds:
        notes.append(where + "SP trials with addition (one encoder f for both ears) compute f(L) + f(R), the same "
                     "for (L, R) and (R, L), so on this data they give one prediction for az and 360 − az: they "
                     "cannot tell left from right. Their mean angular error there cannot go below "
                     f"{add_floor_deg(azimuths):.1f}° on this azimuth grid (45° on a uniform one), however they are "
                     "trained: a property of the data and the architecture, not a bug. NSP or subtraction do not "
                     "have this limit.")
    if "sub" in kinds:
        notes.append(where + "SP trials with subtraction compute f(L) − f(R), which is zero whenever L = R, as at "
                     "0° and 180° on this data: they give one prediction for both, so those two azimuths cost 90° "
                     f"on average (at least {sub_floor_deg(azimuths):.1f}° of the mean error over this azimuth "
                     "grid).")
    return notes


def shards_azimuths(root: str | Path) -> list[int]:
    """The azimuths the dataset has rows at (from its manifest's counts)."""
    from trainables.localization import shards

    counts = shards.load_manifest(root).data["counts"]
    return sorted({int(a) for c in counts.values() if isinstance(c, dict) for a in c.get("by_azimuth", {})})
