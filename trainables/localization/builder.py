"""Build a BAST localization dataset: every sound at every azimuth in every environment, as Parquet shards.

Sounds come from a folder of recordings or from the generated corpus; each is convolved with the binaural room
impulse responses (measured KEMAR HRIRs, anechoic or in the lecture hall) of 36 azimuths, cut to 8000 samples per ear
at 16 kHz (the NI-CNN/BAST format), and written with its azimuth, environment and split. Splits are by sound: test
sounds (whole recordings) never appear in train or val; train/val is stratified by azimuth × environment.

The build is planned up front (which row goes to which shard), so an interrupted build resumes by skipping the shards
already written, and the same config and seed give the same bytes. Beside the shards, `dry/` keeps the dry sounds and
the BRIR banks for on-the-fly rendering. `out` may be a URI (s3://bucket/prefix): the dataset is built in a staging
folder under the home's cache and published there, manifest last (`trainables.datastore`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
import pyarrow as pa
import scipy.signal
from pydantic import BaseModel, ConfigDict, Field, field_validator

from trainables import datastore
from trainables.localization import shards, splits

BUILD_STATE = "build.json"
Environment = Literal["anechoic", "reverberant"]


class LocalizationBuildConfig(BaseModel):
    """Everything that determines a dataset's bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sounds: Optional[Path] = Field(None, description="folder of recordings; None = the generated corpus")
    generated_sounds: int = Field(400, ge=2, description="how many generated sounds when no folder is given")
    hrtf: Optional[Path] = Field(None, description="SOFA file; None = MIT KEMAR")
    azimuths: tuple[int, ...] = tuple(range(0, 360, 10))
    environments: tuple[Environment, ...] = ("anechoic", "reverberant")
    rt60_s: float = Field(0.8, gt=0.05, le=3.0)
    source_distance_m: float = Field(1.0, gt=0.1)
    sample_rate: int = 16000
    n_samples: int = Field(8000, ge=256)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    val_fraction: float = Field(0.25, ge=0.0, lt=1.0)
    dtype: Literal["int16", "float32"] = "int16"
    shard_rows: int = Field(2048, ge=1)
    seed: int = 0

    @field_validator("azimuths")
    @classmethod
    def _azimuths(cls, v):
        if not v or any(not 0 <= a < 360 for a in v) or len(set(v)) != len(v):
            raise ValueError("azimuths must be distinct integers in [0, 360)")
        return tuple(sorted(v))

    @field_validator("environments")
    @classmethod
    def _environments(cls, v):
        if not v or len(set(v)) != len(v):
            raise ValueError("environments must be a non-empty list of distinct names (anechoic, reverberant)")
        return v

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def load_sounds(cfg: LocalizationBuildConfig) -> tuple[np.ndarray, list[str], list[str]]:
    """([N, n_samples] float32 dry clips, sound ids, source of each: a file or a generated family)."""
    from trainables import sounds

    if cfg.sounds is not None:
        return sounds.folder_corpus(cfg.sounds, cfg.n_samples, cfg.sample_rate)
    clips, kinds = sounds.generated_corpus(cfg.generated_sounds, cfg.n_samples, cfg.sample_rate, cfg.seed)
    ids = [f"gen-{i:05d}" for i in range(len(clips))]
    return clips, ids, [f"generated/{k}/{i:05d}" for i, k in enumerate(kinds)]


def brir_banks(cfg: LocalizationBuildConfig) -> dict[str, np.ndarray]:
    """Environment -> [A, 2, L] binaural impulse responses at cfg.azimuths (cached by the acoustics layer)."""
    from trainables.acoustics.hrtf import load_hrtf
    from trainables.acoustics.rooms import RoomConfig, brir_bank

    hrirs = load_hrtf(None if cfg.hrtf is None else str(cfg.hrtf), cfg.sample_rate)
    return {
        env: brir_bank(hrirs, RoomConfig(kind=env, rt60_s=cfg.rt60_s, source_distance_m=cfg.source_distance_m,
                                         sample_rate=cfg.sample_rate), list(cfg.azimuths))
        for env in cfg.environments
    }


def render(clip: np.ndarray, bank: np.ndarray, n_samples: int) -> np.ndarray:
    """[S] dry clip, [A, 2, L] BRIRs -> [A, 2, n_samples], each azimuth peak-normalised to 0.9 (both ears alike,
    so interaural level differences survive while int16 storage never clips)."""
    wet = scipy.signal.oaconvolve(clip[None, None, :], bank, axes=-1)[..., :n_samples]
    peak = np.abs(wet).max(axis=(1, 2), keepdims=True)
    return wet * (0.9 / np.maximum(peak, 1e-12))


def plan(cfg: LocalizationBuildConfig, ids: list[str], sources: list[str]) -> list[tuple[int, str, int, str]]:
    """Every row of the dataset as (sound index, environment, azimuth, split), in shard order."""
    held_out = splits.test_sounds(sources, cfg.test_fraction, cfg.seed)
    trainval = [(i, env, az) for i in range(len(ids)) if sources[i] not in held_out
                for env in cfg.environments for az in cfg.azimuths]
    tv = splits.train_val([(az, env) for _, env, az in trainval], cfg.val_fraction, cfg.seed)
    rows = [(i, env, az, s) for (i, env, az), s in zip(trainval, tv)]
    rows += [(i, env, az, "test") for i in range(len(ids)) if sources[i] in held_out
             for env in cfg.environments for az in cfg.azimuths]
    order = {s: k for k, s in enumerate(shards.SPLITS)}
    return sorted(rows, key=lambda r: (order[r[3]], r[0], r[1], r[2]))


def shard_plan(rows, shard_rows: int) -> list[tuple[str, list]]:
    """Rows grouped per split into shards of at most shard_rows: [(relative file, rows)]."""
    out = []
    for split in shards.SPLITS:
        mine = [r for r in rows if r[3] == split]
        for k in range(0, len(mine), shard_rows):
            out.append((f"shards/{split}-{k // shard_rows:05d}.parquet", mine[k : k + shard_rows]))
    return out


def _check_state(out: Path, cfg: LocalizationBuildConfig) -> None:
    state = out / BUILD_STATE
    if state.exists():
        found = json.loads(state.read_text()).get("config_digest")
        if found != cfg.digest():
            raise ValueError(f"{out} holds a different build (config {found}, now {cfg.digest()}): "
                             f"choose another --out or delete {out}")
    elif out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not a binsweep build folder: choose an empty or new --out")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (BUILD_STATE + ".tmp")
    tmp.write_text(json.dumps({"config_digest": cfg.digest(), "config": json.loads(cfg.model_dump_json())},
                              indent=2))
    os.replace(tmp, state)


def _write_dry(out: Path, cfg, clips, ids, sources, rows, banks) -> None:
    split_of = {}
    for i, _, _, s in rows:
        split_of.setdefault(i, "test" if s == "test" else "trainval")
    table = pa.table({
        "sound_id": ids, "source": sources, "split": [split_of.get(i, "trainval") for i in range(len(ids))],
        "clip": pa.FixedSizeListArray.from_arrays(pa.array(clips.ravel()), cfg.n_samples),
    })
    shards.write_shard(table, out / "dry" / "sounds.parquet")
    tmp = out / "dry" / "brirs.tmp.npz"
    np.savez(tmp, azimuths=np.asarray(cfg.azimuths), environments=np.asarray(list(banks)),
             **{f"brir_{env}": bank.astype(np.float32) for env, bank in banks.items()})
    os.replace(tmp, out / "dry" / "brirs.npz")


def build(cfg: LocalizationBuildConfig, out: str | Path,
          progress: Callable[[int, int], None] = lambda done, total: None) -> shards.Manifest:
    """Build (or resume building) the dataset in `out`, a folder or a URI; returns its manifest."""
    if datastore.is_uri(out):
        return datastore.build_and_publish(out, lambda folder: build(cfg, folder, progress), digest=cfg.digest(),
                                           load=shards.load_manifest)
    out = Path(out)
    _check_state(out, cfg)
    clips, ids, sources = load_sounds(cfg)
    banks = brir_banks(cfg)
    rows = plan(cfg, ids, sources)
    work = shard_plan(rows, cfg.shard_rows)
    if not (out / "dry" / "brirs.npz").exists():
        _write_dry(out, cfg, clips, ids, sources, rows, banks)
    az_index = {az: k for k, az in enumerate(cfg.azimuths)}
    done = 0
    for rel, shard_rows in work:
        if not (out / rel).exists():
            batch = shards.Rows()
            cache: dict[tuple[int, str], np.ndarray] = {}
            for i, env, az, split in shard_rows:
                if (i, env) not in cache:
                    cache = {(i, env): shards.to_storage(render(clips[i], banks[env], cfg.n_samples), cfg.dtype)}
                batch.add(ids[i], sources[i], az, env, split, cache[(i, env)][az_index[az]])
            shards.write_shard(batch.table(cfg.sample_rate, cfg.n_samples, cfg.dtype), out / rel)
        done += len(shard_rows)
        progress(done, len(rows))
    info = {"sample_rate": cfg.sample_rate, "n_samples": cfg.n_samples, "dtype": cfg.dtype, "source": "binsweep",
            "build": json.loads(cfg.model_dump_json()),
            "azimuths": list(cfg.azimuths), "environments": list(cfg.environments)}
    return shards.write_manifest(out, [{"file": rel, "split": rel.split("/")[1].split("-")[0]} for rel, _ in work],
                                 info)


def read_split(root: str | Path, split: str) -> pa.Table:
    """A whole split as one table (small datasets, tests and evaluation)."""
    manifest = shards.load_manifest(root)
    files = manifest.shards(split)
    if not files:
        raise ValueError(f"{root}: the dataset has no {split!r} rows")
    return pa.concat_tables(datastore.read_table(f) for f in files)
