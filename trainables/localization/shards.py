"""The on-disk format of localization datasets: Parquet shards plus `manifest.json` (design.md).

One row is one binaural clip. Columns:
    sound_id      string   which dry sound (splits are by sound, so a sound id lives in one split only)
    source        string   where the sound came from (generated family, file path, NI-CNN file name)
    azimuth_deg   int16    0..359, counter-clockwise, 0 = front, 90 = left
    environment   string   anechoic | reverberant | room-NNN | heldout-NNN | any other named room
    split         string   train | val | test | heldout
    sample_rate   int32
    left, right   fixed_size_list<int16 | float32>[n_samples]

Shards are written atomically (temporary file, then rename), so a shard that exists is complete; builders resume
by skipping the shards already present. The manifest carries counts per split, azimuth and environment and a
fingerprint over the shards' content hashes, so two datasets with the same fingerprint hold the same bytes.

Datasets are written locally and read from a local folder or a URI (`trainables.datastore`: s3://bucket/prefix ...);
a dataset published to a URI keeps its manifest, so its fingerprint is the one of the same dataset built locally.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainables import datastore

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")  # every dataset has these
# heldout: test sounds in rooms of a family never used for training (randomised-room builds only)
ALL_SPLITS = SPLITS + ("heldout",)
MANIFEST = "manifest.json"


def schema(n_samples: int, dtype: str) -> pa.Schema:
    value = {"int16": pa.int16(), "float32": pa.float32()}[dtype]
    return pa.schema([
        ("sound_id", pa.string()),
        ("source", pa.string()),
        ("azimuth_deg", pa.int16()),
        ("environment", pa.string()),
        ("split", pa.string()),
        ("sample_rate", pa.int32()),
        ("left", pa.list_(value, n_samples)),
        ("right", pa.list_(value, n_samples)),
    ])


def to_storage(wav: np.ndarray, dtype: str) -> np.ndarray:
    """float waveforms in [-1, 1] -> the stored dtype (int16 full scale, or float32)."""
    if dtype == "float32":
        return wav.astype(np.float32)
    return np.clip(np.round(wav * 32767.0), -32768, 32767).astype(np.int16)


@dataclass
class Rows:
    """Columns of a batch of clips before they become a Parquet table."""

    sound_id: list[str] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    azimuth_deg: list[int] = field(default_factory=list)
    environment: list[str] = field(default_factory=list)
    split: list[str] = field(default_factory=list)
    waves: list[np.ndarray] = field(default_factory=list)  # each [2, n_samples] in storage dtype

    def add(self, sound_id: str, source: str, azimuth_deg: int, environment: str, split: str, wave: np.ndarray):
        self.sound_id.append(sound_id)
        self.source.append(source)
        self.azimuth_deg.append(int(azimuth_deg) % 360)
        self.environment.append(environment)
        self.split.append(split)
        self.waves.append(wave)

    def __len__(self) -> int:
        return len(self.sound_id)

    def table(self, sample_rate: int, n_samples: int, dtype: str) -> pa.Table:
        waves = np.stack(self.waves) if self.waves else np.zeros((0, 2, n_samples))
        waves = waves.astype({"int16": np.int16, "float32": np.float32}[dtype], copy=False)
        sch = schema(n_samples, dtype)

        def ear(ch: int) -> pa.FixedSizeListArray:
            return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(waves[:, ch]).ravel()), n_samples)

        return pa.Table.from_arrays(
            [pa.array(self.sound_id, pa.string()), pa.array(self.source, pa.string()),
             pa.array(self.azimuth_deg, pa.int16()), pa.array(self.environment, pa.string()),
             pa.array(self.split, pa.string()), pa.array([sample_rate] * len(self), pa.int32()), ear(0), ear(1)],
            schema=sch,
        )


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_shard(table: pa.Table, path: Path) -> None:
    """Atomic: the final name appears only once the file is complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def read_waves(table: pa.Table) -> np.ndarray:
    """The left/right columns of a table -> [N, 2, n_samples] float32 in [-1, 1] scale."""
    ears = []
    for name in ("left", "right"):
        col = table.column(name).combine_chunks()
        n = col.type.list_size
        values = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), n)
        ears.append(values.astype(np.float32) / 32767.0 if values.dtype == np.int16 else values.astype(np.float32))
    return np.stack(ears, axis=1)


@dataclass(frozen=True)
class Manifest:
    root: Path | str  # the local folder, or the URI the dataset was read from (trainables.datastore)
    data: dict

    @property
    def fingerprint(self) -> str:
        return self.data["fingerprint"]

    @property
    def sample_rate(self) -> int:
        return int(self.data["sample_rate"])

    @property
    def n_samples(self) -> int:
        return int(self.data["n_samples"])

    def entries(self, split: str) -> list[dict]:
        if split not in ALL_SPLITS:
            raise ValueError(f"unknown split {split!r}; splits are {', '.join(ALL_SPLITS)}")
        return [s for s in self.data["shards"] if s["split"] == split]

    def shards(self, split: str) -> list[Path | str]:
        """The split's shard files: Paths in a local folder, URIs at a URI."""
        return [datastore.join(self.root, s["file"]) for s in self.entries(split)]

    def count(self, split: str) -> int:
        return int(self.data["counts"].get(split, {}).get("total", 0))


def load_manifest(root: str | Path) -> Manifest:
    """The manifest of the dataset at `root`: a local folder as given (relative to the working directory, as
    always), or a URI."""
    root = root.rstrip("/") if datastore.is_uri(root) else Path(root)
    path = datastore.join(root, MANIFEST)
    try:
        data = json.loads(datastore.read_text(path))
    except FileNotFoundError:
        raise datastore.missing_manifest(root, f"binsweep data localization --out {root}") from None
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {data.get('schema_version')!r} is not {SCHEMA_VERSION}")
    return Manifest(root, data)


def write_manifest(root: Path, shards: list[dict], info: dict) -> Manifest:
    """Count rows per split/azimuth/environment from the shards themselves and fingerprint their bytes.

    shards: [{"file": relative path, "split": ...}], info: sample_rate, n_samples, dtype and how it was made.
    """
    counts: dict[str, dict] = {}
    entries = []
    for s in sorted(shards, key=lambda s: s["file"]):
        path = root / s["file"]
        table = pq.read_table(path, columns=["azimuth_deg", "environment", "split"])
        sha = file_sha256(path)
        envs = Counter(table.column("environment").to_pylist())
        entries.append({"file": s["file"], "split": s["split"], "rows": table.num_rows, "sha256": sha,
                        "by_environment": dict(sorted(envs.items()))})
        for split, az, env in zip(table.column("split").to_pylist(), table.column("azimuth_deg").to_pylist(),
                                  table.column("environment").to_pylist()):
            c = counts.setdefault(split, {"total": 0, "by_azimuth": Counter(), "by_environment": Counter()})
            c["total"] += 1
            c["by_azimuth"][str(az)] += 1
            c["by_environment"][env] += 1
    for c in counts.values():
        c["by_azimuth"] = dict(sorted(c["by_azimuth"].items(), key=lambda kv: int(kv[0])))
        c["by_environment"] = dict(sorted(c["by_environment"].items()))
    fingerprint = hashlib.sha256(
        json.dumps([[e["file"], e["sha256"]] for e in entries] + [info], sort_keys=True).encode()
    ).hexdigest()
    data = {"schema_version": SCHEMA_VERSION, **info, "counts": counts, "shards": entries, "fingerprint": fingerprint}
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, root / MANIFEST)
    return Manifest(root, data)
