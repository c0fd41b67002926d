"""Build a BAST localization dataset: every sound at every azimuth in every environment, as Parquet shards.

Sounds come from a folder of recordings, the generated corpus, or both; each is convolved with the binaural room
impulse responses (measured KEMAR HRIRs, anechoic or in the lecture hall) of 36 azimuths, cut to 8000 samples per ear
at 16 kHz (the NI-CNN/BAST format), and written with its azimuth, environment and split. Splits are by sound: test
sounds (whole recordings) never appear in train or val. Validation holds out whole sounds too (`val_split="sound"`,
the default for new datasets); `val_split="clip"`, what datasets built before it had, draws val clips per
azimuth × environment cell instead.

With `rooms=N`, every (sound, azimuth) is also rendered in `rooms_per_sound` of N randomised shoebox rooms
(`room-000`, ...; `trainables.acoustics.random_rooms`), and the test sounds in every room of a held-out family of
larger rooms (`heldout-000`, ...), the split `heldout`. Diffuse binaural noise at a random SNR and a level jitter
(`localization.room_rows`) then apply to every row.

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
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trainables import datastore
from trainables.localization import shards, splits
from trainables.sounds import KINDS, check_kinds

BUILD_STATE = "build.json"
Environment = Literal["anechoic", "reverberant"]
# Fields added after datasets existed, with the value that reproduces those datasets: left out of the recorded config
# when they hold it, so an old config keeps its digest, its manifest and its bytes.
_LEGACY = {"val_split": "clip", "mix_generated": False, "rooms": 0, "heldout_rooms": 0, "rooms_per_sound": 1,
           "snr_db": None, "level_jitter_db": 0.0, "generated_kinds": KINDS}


class LocalizationBuildConfig(BaseModel):
    """Everything that determines a dataset's bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sounds: Optional[Path] = Field(None, description="folder of recordings; None = the generated corpus")
    generated_sounds: int = Field(400, ge=2, description="how many generated sounds when no folder is given")
    generated_kinds: tuple[str, ...] = Field(KINDS, description="families of the generated corpus, e.g. the "
                                             "broadband ones (noise, chirp, am_mix); default all six")
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
    val_split: Literal["sound", "clip"] = Field("sound", description="hold out whole sounds for val, or clips per "
                                                "azimuth x environment cell (datasets built before this field)")
    mix_generated: bool = Field(False, description="with `sounds`, add `generated_sounds` generated ones")
    rooms: int = Field(0, ge=0, le=999, description="randomised training rooms room-000 ...")
    heldout_rooms: int = Field(0, ge=0, le=999, description="rooms of the held-out family, split heldout")
    rooms_per_sound: int = Field(1, ge=1, description="training rooms each (sound, azimuth) is rendered in")
    snr_db: Optional[tuple[float, float]] = Field(None, description="diffuse noise at an SNR drawn from this range")
    level_jitter_db: float = Field(0.0, ge=0.0, le=40.0, description="each clip attenuated by 0..this many dB")

    @field_validator("azimuths")
    @classmethod
    def _azimuths(cls, v):
        if not v or any(not 0 <= a < 360 for a in v) or len(set(v)) != len(v):
            raise ValueError("azimuths must be distinct integers in [0, 360)")
        return tuple(sorted(v))

    @field_validator("generated_kinds")
    @classmethod
    def _kinds(cls, v):
        return check_kinds(v)

    @field_validator("environments")
    @classmethod
    def _environments(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("environments must be a list of distinct names (anechoic, reverberant)")
        return v

    @model_validator(mode="after")
    def _rooms(self) -> LocalizationBuildConfig:
        if not self.environments and not self.rooms:
            raise ValueError("environments must name anechoic and/or reverberant unless rooms > 0")
        if self.rooms and self.rooms_per_sound > self.rooms:
            raise ValueError(f"rooms_per_sound={self.rooms_per_sound} exceeds rooms={self.rooms}")
        if self.heldout_rooms and not self.rooms:
            raise ValueError("heldout_rooms needs rooms > 0 (the held-out family tests room generalisation)")
        if self.snr_db is not None and not self.snr_db[0] <= self.snr_db[1]:
            raise ValueError(f"snr_db={self.snr_db}: give (low, high) with low <= high")
        if self.mix_generated and self.sounds is None:
            raise ValueError("mix_generated adds the generated corpus to `sounds`: give a sounds folder")
        return self

    def record(self) -> str:
        """The config as JSON, without the newer fields that hold their legacy value (see _LEGACY)."""
        return self.model_dump_json(exclude={k for k, v in _LEGACY.items() if getattr(self, k) == v})

    def digest(self) -> str:
        return hashlib.sha256(self.record().encode()).hexdigest()[:16]


def load_sounds(cfg: LocalizationBuildConfig) -> tuple[np.ndarray, list[str], list[str]]:
    """([N, n_samples] float32 dry clips, sound ids, source of each: a file or a generated family)."""
    from trainables import sounds

    if cfg.sounds is not None and not cfg.mix_generated:
        return sounds.folder_corpus(cfg.sounds, cfg.n_samples, cfg.sample_rate)
    clips, kinds = sounds.generated_corpus(cfg.generated_sounds, cfg.n_samples, cfg.sample_rate, cfg.seed,
                                           cfg.generated_kinds)
    ids = [f"gen-{i:05d}" for i in range(len(clips))]
    sources = [f"generated/{k}/{i:05d}" for i, k in enumerate(kinds)]
    if cfg.sounds is None:
        return clips, ids, sources
    # Recordings first, then the generated corpus; a recording's source is its path relative to the folder.
    real, real_ids, real_sources = sounds.folder_corpus(cfg.sounds, cfg.n_samples, cfg.sample_rate)
    return np.concatenate([real, clips]), real_ids + ids, real_sources + sources


def load_hrirs(cfg: LocalizationBuildConfig):
    from trainables.acoustics.hrtf import load_hrtf

    return load_hrtf(None if cfg.hrtf is None else str(cfg.hrtf), cfg.sample_rate)


def brir_banks(cfg: LocalizationBuildConfig, hrirs=None) -> dict[str, np.ndarray]:
    """Environment -> [A, 2, L] binaural impulse responses at cfg.azimuths (cached by the acoustics layer); the
    named environments only (randomised rooms: `room_rows.room_banks`)."""
    from trainables.acoustics.rooms import RoomConfig, brir_bank

    hrirs = load_hrirs(cfg) if hrirs is None else hrirs
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


def plan(cfg: LocalizationBuildConfig, ids: list[str], sources: list[str], rooms: list[str] = (),
         heldout_rooms: list[str] = ()) -> list[tuple[int, str, int, str]]:
    """Every row of the dataset as (sound index, environment, azimuth, split), in shard order.

    Every sound is rendered in every named environment at every azimuth, plus in `rooms_per_sound` of the training
    `rooms` drawn per (sound, azimuth); test sounds are also rendered in every one of `heldout_rooms` (split heldout).
    """
    from trainables.localization.room_rows import assign_rooms

    held_out = splits.test_sounds(sources, cfg.test_fraction, cfg.seed)
    drawn = assign_rooms(cfg, len(ids), list(rooms)) if rooms else {}

    def envs(i: int, az: int) -> list[str]:
        return [*cfg.environments, *drawn.get((i, az), ())]

    # Within an (azimuth, environment) cell the clips stay in sound order, as train_val has always seen them.
    trainval = [(i, env, az) for i in range(len(ids)) if sources[i] not in held_out
                for az in cfg.azimuths for env in envs(i, az)]
    if cfg.val_split == "sound":
        val = splits.val_sounds([sources[i] for i, _, _ in trainval], cfg.val_fraction, cfg.seed)
        tv = ["val" if sources[i] in val else "train" for i, _, _ in trainval]
    else:
        tv = splits.train_val([(az, env) for _, env, az in trainval], cfg.val_fraction, cfg.seed)
    rows = [(i, env, az, s) for (i, env, az), s in zip(trainval, tv)]
    rows += [(i, env, az, "test") for i in range(len(ids)) if sources[i] in held_out
             for az in cfg.azimuths for env in envs(i, az)]
    rows += [(i, env, az, "heldout") for i in range(len(ids)) if sources[i] in held_out
             for az in cfg.azimuths for env in heldout_rooms]
    order = {s: k for k, s in enumerate(shards.ALL_SPLITS)}
    return sorted(rows, key=lambda r: (order[r[3]], r[0], r[1], r[2]))


def shard_plan(rows, shard_rows: int) -> list[tuple[str, list]]:
    """Rows grouped per split into shards of at most shard_rows: [(relative file, rows)]."""
    out = []
    for split in shards.ALL_SPLITS:
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
    tmp.write_text(json.dumps({"config_digest": cfg.digest(), "config": json.loads(cfg.record())},
                              indent=2))
    os.replace(tmp, state)


def _write_dry(out: Path, cfg, clips, ids, sources, rows, banks) -> None:
    split_of = {}
    for i, _, _, s in rows:
        split_of.setdefault(i, "test" if s in ("test", "heldout") else "trainval")
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
    from trainables.localization import room_rows

    out = Path(out)
    _check_state(out, cfg)
    clips, ids, sources = load_sounds(cfg)
    hrirs = load_hrirs(cfg)
    banks = brir_banks(cfg, hrirs)
    rooms = room_rows.drawn_rooms(cfg)
    room_banks, room_records = room_rows.room_banks(cfg, hrirs, rooms)
    banks.update(room_banks)
    rows = plan(cfg, ids, sources, [r.name for r in rooms if r.family == "train"],
                [r.name for r in rooms if r.family == "heldout"])
    work = shard_plan(rows, cfg.shard_rows)
    if not (out / "dry" / "brirs.npz").exists():
        _write_dry(out, cfg, clips, ids, sources, rows, banks)
    az_index = {az: k for k, az in enumerate(cfg.azimuths)}
    augment = room_rows.Augmenter(cfg, hrirs)
    done = 0
    for rel, shard_rows in work:
        if not (out / rel).exists():
            batch = shards.Rows()
            cache: dict[tuple[int, str], np.ndarray] = {}
            for i, env, az, split in shard_rows:
                if env in room_banks:  # a room holds a sound at one or a few azimuths: render just those
                    wet = render(clips[i], banks[env][az_index[az]][None], cfg.n_samples)[0]
                else:
                    if (i, env) not in cache:
                        cache = {(i, env): render(clips[i], banks[env], cfg.n_samples)}
                    wet = cache[(i, env)][az_index[az]]
                wave = augment(wet, i, env, az) if augment.active else wet
                batch.add(ids[i], sources[i], az, env, split, shards.to_storage(wave, cfg.dtype))
            shards.write_shard(batch.table(cfg.sample_rate, cfg.n_samples, cfg.dtype), out / rel)
        done += len(shard_rows)
        progress(done, len(rows))
    info = {"sample_rate": cfg.sample_rate, "n_samples": cfg.n_samples, "dtype": cfg.dtype, "source": "binsweep",
            "build": json.loads(cfg.record()),
            "azimuths": list(cfg.azimuths), "environments": list(cfg.environments) + [r.name for r in rooms],
            **room_rows.settings(cfg)}
    if rooms:
        info["rooms"] = room_records
    return shards.write_manifest(out, [{"file": rel, "split": rel.split("/")[1].split("-")[0]} for rel, _ in work],
                                 info)


def read_split(root: str | Path, split: str) -> pa.Table:
    """A whole split as one table (small datasets, tests and evaluation)."""
    manifest = shards.load_manifest(root)
    files = manifest.shards(split)
    if not files:
        raise ValueError(f"{root}: the dataset has no {split!r} rows")
    return pa.concat_tables(datastore.read_table(f) for f in files)
