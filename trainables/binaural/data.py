"""Binauralization datasets on disk: Parquet shards plus `manifest.json`, the generated-scene builder, the reader.

One row is one clip: binaural audio plus the frame(s) seen while it plays, and a depth map when the dataset has one.
Columns:
    clip_id      string   unique: "<scene_id>/<environment>" (generated) or "<id>@<start>s" (FAIR-Play windows)
    scene_id     string   the scene / recording; splits are by scene, so a scene id lives in one split only
    source       string   "generated" or the file the clip came from ("binaural_audios/000001.wav")
    environment  string   anechoic | reverberant | recorded
    split        string   train | val | test
    sample_rate  int32
    start_s      float32  where the clip starts in its recording (0 for generated scenes)
    left, right  list<int16 | float32>   the ears (channel 0 = left); full scale 1.0. Lengths may differ between
                 rows: the recipe crops training windows of `clip_samples` out of longer rows
    frames       list<binary>   RGB frames, each raw uint8 [3, H, W] planar (H, W in the manifest's image_size), or
                 a PNG / JPEG file of it when the manifest's frame_format says so (FAIR-Play imports)
    frame_times  list<float32>  when each frame is seen, in seconds from the clip start; a window uses the frame
                 nearest its centre (a still scene has one frame at the clip's middle)
    depth        binary (nullable)  float32 [H, W] metres along each pixel's ray; null when the dataset has none
    azimuth_deg, distance_m  list<float32>, classes list<string>, boxes list<int16> (4 per source: row0, col0,
                 row1, col1 of its visible pixels)  per-source ground truth of generated scenes (empty for FAIR-Play)

Shards are written atomically (`trainables.localization.shards.write_shard`), so a shard that exists is complete and a
build resumes by skipping it. The manifest carries the kind ("binaural"), the schema version, counts per split
(total, per environment, per number of sources), the sample rate, the image size, whether depth maps exist, each
shard's row count and sha256, and a fingerprint over all of them: two datasets with one fingerprint hold the same bytes.
A generated dataset's manifest also holds `rooms`: per scene id, its room (environment, size, listener, wall
materials and absorptions, Eyring RT60; `scenes.Room.summary`).
Datasets are built locally and read from a folder or a URI (s3://bucket/prefix, `trainables.datastore`); a build
with `out` at a URI is staged under the home's cache and published there, manifest last.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from trainables import datastore
from trainables.binaural import frame_augment
from trainables.binaural.scenes import Environment, SceneConfig
from trainables.localization.shards import file_sha256, to_storage, write_shard
from trainables.sharding import ShardedSplit

KIND = "binaural"
SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
BUILD_STATE = "build.json"


def schema(dtype: str) -> pa.Schema:
    value = {"int16": pa.int16(), "float32": pa.float32()}[dtype]
    return pa.schema([
        ("clip_id", pa.string()), ("scene_id", pa.string()), ("source", pa.string()),
        ("environment", pa.string()), ("split", pa.string()), ("sample_rate", pa.int32()),
        ("start_s", pa.float32()),
        ("left", pa.list_(value)), ("right", pa.list_(value)),
        ("frames", pa.list_(pa.binary())), ("frame_times", pa.list_(pa.float32())),
        ("depth", pa.binary()),
        ("azimuth_deg", pa.list_(pa.float32())), ("distance_m", pa.list_(pa.float32())),
        ("classes", pa.list_(pa.string())), ("boxes", pa.list_(pa.int16())),
    ])


@dataclass
class Clip:
    """One row before it is written, or after it is read (waves float32 [2, S], frames uint8 [K, 3, H, W])."""

    clip_id: str
    scene_id: str
    source: str
    environment: str
    split: str
    sample_rate: int
    wave: np.ndarray  # [2, S]
    frames: np.ndarray  # [K, 3, H, W] uint8
    frame_times: np.ndarray  # [K] seconds from the clip start
    depth: Optional[np.ndarray] = None  # [1, H, W] float32 metres
    start_s: float = 0.0
    azimuth_deg: tuple[float, ...] = ()
    distance_m: tuple[float, ...] = ()
    classes: tuple[str, ...] = ()
    boxes: tuple[tuple[int, int, int, int], ...] = ()

    def frame_at(self, t_s: float) -> int:
        """Index of the frame nearest to time t_s (seconds from the clip start); ties go to the earlier frame."""
        return int(np.argmin(np.abs(np.asarray(self.frame_times, dtype=np.float64) - t_s)))


FRAME_FORMATS = ("raw", "png", "jpeg")  # how a frame's bytes are stored: the manifest's frame_format (default raw)
JPEG_QUALITY = 95


def encode_frame(frame: np.ndarray, fmt: str) -> bytes:
    """uint8 [3, H, W] -> its stored bytes: raw planar, or a PNG / JPEG file. A FAIR-Play recording keeps 100
    frames of which a training step reads one, so encoded frames cut what every epoch reads (a 240×480 photo: 346 kB
    raw, 174 kB PNG, 48 kB JPEG at quality 95)."""
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    if fmt == "raw":
        return frame.tobytes()
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame.transpose(1, 2, 0), "RGB").save(buf, format=fmt.upper(), **(
        {"quality": JPEG_QUALITY} if fmt == "jpeg" else {}))
    return buf.getvalue()


def decode_frame(data: bytes, size: tuple[int, int], fmt: str = "raw") -> np.ndarray:
    """Stored bytes -> uint8 [3, H, W] (`encode_frame`'s inverse; lossy for JPEG)."""
    if fmt == "raw":
        return np.frombuffer(data, np.uint8).reshape(3, *size)
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)


def table_of(clips: list[Clip], dtype: str, frame_format: str = "raw") -> pa.Table:
    def wave_col(ch: int) -> pa.Array:
        return pa.array([to_storage(c.wave[ch], dtype) for c in clips], type=schema(dtype).field("left").type)

    return pa.Table.from_arrays([
        pa.array([c.clip_id for c in clips], pa.string()),
        pa.array([c.scene_id for c in clips], pa.string()),
        pa.array([c.source for c in clips], pa.string()),
        pa.array([c.environment for c in clips], pa.string()),
        pa.array([c.split for c in clips], pa.string()),
        pa.array([c.sample_rate for c in clips], pa.int32()),
        pa.array([c.start_s for c in clips], pa.float32()),
        wave_col(0), wave_col(1),
        pa.array([[encode_frame(f, frame_format) for f in c.frames] for c in clips], pa.list_(pa.binary())),
        pa.array([np.asarray(c.frame_times, dtype=np.float32) for c in clips], pa.list_(pa.float32())),
        pa.array([None if c.depth is None else np.ascontiguousarray(c.depth, dtype=np.float32).tobytes()
                  for c in clips], pa.binary()),
        pa.array([list(c.azimuth_deg) for c in clips], pa.list_(pa.float32())),
        pa.array([list(c.distance_m) for c in clips], pa.list_(pa.float32())),
        pa.array([list(c.classes) for c in clips], pa.list_(pa.string())),
        pa.array([[int(v) for b in c.boxes for v in b] for c in clips], pa.list_(pa.int16())),
    ], schema=schema(dtype))


def _list_rows(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A list column -> (flat values as numpy, offsets [N + 1])."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = arr.offsets.to_numpy()
    values = arr.values.to_numpy(zero_copy_only=False)
    return values, offsets


def _to_float(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 32767.0 if x.dtype == np.int16 else x.astype(np.float32)


def clips_of(table: pa.Table, image_size: tuple[int, int], crop: tuple[int, int] | None = None,
             frame_format: str = "raw") -> list[Clip]:
    """Decode every row of a table (evaluation and tests; training uses `BinauralReader`). Frames stored at
    `image_size` are centre-cropped to `crop` when given (the manifest's frame_crop: evaluation sees the deterministic
    crop of 2.5D's pipeline, `frame_augment`)."""
    H, W = image_size
    left, lo = _list_rows(table.column("left"))
    right, ro = _list_rows(table.column("right"))
    out = []
    cols = {name: table.column(name).to_pylist() for name in
            ("clip_id", "scene_id", "source", "environment", "split", "sample_rate", "start_s", "frames",
             "frame_times", "depth", "azimuth_deg", "distance_m", "classes", "boxes")}
    for i in range(table.num_rows):
        wave = np.stack([_to_float(left[lo[i]:lo[i + 1]]), _to_float(right[ro[i]:ro[i + 1]])])
        frames = np.stack([decode_frame(f, (H, W), frame_format) for f in cols["frames"][i]])
        if crop is not None:
            frames = frame_augment.crop(frames, frame_augment.centre_offsets(len(frames), (H, W), crop), crop)
        depth = cols["depth"][i]
        boxes = cols["boxes"][i]
        out.append(Clip(
            clip_id=cols["clip_id"][i], scene_id=cols["scene_id"][i], source=cols["source"][i],
            environment=cols["environment"][i], split=cols["split"][i], sample_rate=cols["sample_rate"][i],
            wave=wave, frames=frames, frame_times=np.asarray(cols["frame_times"][i], dtype=np.float64),
            depth=None if depth is None else np.frombuffer(depth, np.float32).reshape(1, H, W).copy(),
            start_s=float(cols["start_s"][i]), azimuth_deg=tuple(cols["azimuth_deg"][i]),
            distance_m=tuple(cols["distance_m"][i]), classes=tuple(cols["classes"][i]),
            boxes=tuple(tuple(boxes[k:k + 4]) for k in range(0, len(boxes), 4))))
    return out


# ------------------------------------------------------------------------------------------------ manifest


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
    def image_size(self) -> tuple[int, int]:
        h, w = self.data["image_size"]
        return int(h), int(w)

    @property
    def has_depth(self) -> bool:
        return bool(self.data["has_depth"])

    @property
    def frame_crop(self) -> tuple[int, int] | None:
        """(h, w) the reader crops stored frames to (FAIR-Play with 2.5D augmentation), or None: frames used whole."""
        c = self.data.get("frame_crop")
        return None if c is None else (int(c[0]), int(c[1]))

    @property
    def frame_format(self) -> str:
        return str(self.data.get("frame_format", "raw"))

    @property
    def environments(self) -> list[str]:
        return sorted({e for c in self.data["counts"].values() for e in c.get("by_environment", {})})

    def entries(self, split: str) -> list[dict]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
        views = self.data.get("views")
        if views:  # a whole FAIR-Play import: its recordings belong to a split only within one of its views
            raise ValueError(f"{self.root} holds the recordings of {len(views)} FAIR-Play splits; read one of them: "
                             f"data.split: 1..{len(views)} (the view {datastore.join(self.root, views[0])} and "
                             "its siblings)")
        return [s for s in self.data["shards"] if s["split"] == split]

    def shards(self, split: str) -> list[Path | str]:
        """The split's shard files: Paths in a local folder, URIs at a URI."""
        return [datastore.join(self.root, s["file"]) for s in self.entries(split)]

    def count(self, split: str) -> int:
        return int(self.data["counts"].get(split, {}).get("total", 0))


def load_manifest(root: str | Path) -> Manifest:
    """The manifest of the dataset at `root`: a local folder as given, or a URI."""
    root = root.rstrip("/") if datastore.is_uri(root) else Path(root)
    path = datastore.join(root, MANIFEST)
    try:
        data = json.loads(datastore.read_text(path))
    except FileNotFoundError:
        raise datastore.missing_manifest(root, f"binsweep data binaural --out {root}, or binsweep data fairplay "
                                         f"FAIRPLAY_ROOT --out {root}") from None
    if data.get("kind") != KIND:
        raise ValueError(f"{root} is not a binauralization dataset (manifest kind {data.get('kind')!r}, expected "
                         f"{KIND!r}); build one with `binsweep data binaural --out {root}`")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {data.get('schema_version')!r} is not {SCHEMA_VERSION}")
    if data.get("view_of") == "..":
        # One FAIR-Play split (fairplay.py): its entries name shards of the import folder one level up, plus the rows
        # of each that belong to the split ("select"); reading through the parent keeps URIs free of "..".
        root = root.rsplit("/", 1)[0] if isinstance(root, str) else root.parent
    return Manifest(root, data)


def write_manifest(root: Path, shards: list[dict], info: dict) -> Manifest:
    """Count rows from the shards themselves and fingerprint their bytes. shards: [{"file", "split"}];
    info: sample_rate, image_size, has_depth, how it was made."""
    counts: dict[str, dict] = {}
    entries = []
    for s in sorted(shards, key=lambda s: s["file"]):
        path = root / s["file"]
        table = pq.read_table(path, columns=["environment", "split", "classes", "left"])
        envs = Counter(table.column("environment").to_pylist())
        entries.append({"file": s["file"], "split": s["split"], "rows": table.num_rows, "sha256": file_sha256(path),
                        "by_environment": dict(sorted(envs.items()))})
        lengths = pc.list_value_length(table.column("left")).to_pylist()
        for split, env, classes, n in zip(table.column("split").to_pylist(), table.column("environment").to_pylist(),
                                          table.column("classes").to_pylist(), lengths):
            c = counts.setdefault(split, {"total": 0, "by_environment": Counter(), "by_sources": Counter(),
                                          "by_class": Counter(), "samples": [n, n]})
            c["total"] += 1
            c["by_environment"][env] += 1
            c["by_sources"][str(len(classes))] += 1
            c["by_class"].update(classes)
            c["samples"] = [min(c["samples"][0], n), max(c["samples"][1], n)]
    for c in counts.values():
        for k in ("by_environment", "by_sources", "by_class"):
            c[k] = dict(sorted(c[k].items()))
    fingerprint = hashlib.sha256(
        json.dumps([[e["file"], e["sha256"]] for e in entries] + [info], sort_keys=True).encode()).hexdigest()
    data = {"kind": KIND, "schema_version": SCHEMA_VERSION, **info, "counts": counts, "shards": entries,
            "fingerprint": fingerprint}
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, root / MANIFEST)
    return Manifest(root, data)


def check_build_state(out: Path, digest: str, config: dict) -> None:
    """A fresh or empty folder gets build.json; a folder of the same build resumes; anything else is refused."""
    state = out / BUILD_STATE
    if state.exists():
        found = json.loads(state.read_text()).get("config_digest")
        if found != digest:
            raise ValueError(f"{out} holds a different build (config {found}, now {digest}): choose another --out "
                             f"or delete {out}")
    elif out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not a binsweep build folder: choose an empty or new --out")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (BUILD_STATE + ".tmp")
    tmp.write_text(json.dumps({"config_digest": digest, "config": config}, indent=2))
    os.replace(tmp, state)


def iter_clips(root: str | Path, split: str, limit: int | None = None) -> Iterator[Clip]:
    """The clips of a split in manifest (unshuffled) order, at most `limit`, one shard in memory at a time."""
    manifest = load_manifest(root)
    files = manifest.shards(split)
    if not files:
        raise ValueError(f"{manifest.root}: the dataset has no {split!r} clips")
    seen = 0
    fs, base = datastore.filesystem(manifest.root)
    for e in manifest.entries(split):
        table = pq.read_table(f"{base}/{e['file']}", filesystem=fs)
        if "select" in e:
            table = table.take(e["select"])
        if limit is not None:
            table = table.slice(0, max(0, limit - seen))
        for clip in clips_of(table, manifest.image_size, manifest.frame_crop, manifest.frame_format):
            if "select" in e:
                clip.split = split  # a FAIR-Play row's split is the view's, not the stored "all"
            seen += 1
            yield clip
        if limit is not None and seen >= limit:
            return


def read_clips(root: str | Path, split: str, limit: int | None = None) -> list[Clip]:
    """Every clip of a split in manifest (unshuffled) order, at most `limit`."""
    return list(iter_clips(root, split, limit))


# ------------------------------------------------------------------------------------------------ generated scenes


class BinauralBuildConfig(BaseModel):
    """Everything that determines a generated dataset's bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scenes: int = Field(1000, ge=3, description="scenes in all; each is one row, in one environment")
    scene: SceneConfig = SceneConfig()
    environments: tuple[Environment, ...] = Field(("anechoic",), description="the kinds of scene drawn: each scene is "
                                                  "an anechoic chamber or a reverberant room with its own picture")
    reverberant_fraction: float = Field(0.5, ge=0.0, le=1.0, description="with both environments: the share of "
                                        "reverberant scenes (each scene draws its kind, seeded)")
    hrtf: Optional[Path] = Field(None, description="SOFA file; None = MIT KEMAR")
    clip_seconds: float = Field(0.63, gt=0.0, description="train/val clip length (the model's window)")
    test_clip_seconds: float = Field(1.0, gt=0.0, description="test clips, evaluated whole with sliding windows")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    dtype: Literal["int16", "float32"] = "int16"
    shard_rows: int = Field(256, ge=1)
    seed: int = 0

    @field_validator("environments")
    @classmethod
    def _environments(cls, v):
        if not v or len(set(v)) != len(v):
            raise ValueError("environments must be a non-empty list of distinct names (anechoic, reverberant)")
        return tuple(v)

    @property
    def clip_samples(self) -> int:
        return round(self.clip_seconds * self.scene.sample_rate)

    @property
    def test_clip_samples(self) -> int:
        return round(self.test_clip_seconds * self.scene.sample_rate)

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def scene_splits(n: int, val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """Split of each scene index: a seeded permutation, the first test_fraction to test, the next val_fraction to val;
    at least one scene in each of val and test when its fraction is positive (and one left for train)."""
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    if n_test + n_val >= n:
        raise ValueError(f"{n} scenes leave none for training with val_fraction {val_fraction} and test_fraction "
                         f"{test_fraction}")
    order = np.random.default_rng([seed, 11]).permutation(n)
    out = ["train"] * n
    for k, i in enumerate(order):
        out[i] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return out


def plan(cfg: BinauralBuildConfig) -> list[tuple[str, list[int]]]:
    """Shards as (relative file, scene indices), per split in scene order; each scene gives one row."""
    split_of = scene_splits(cfg.scenes, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    per_shard = cfg.shard_rows
    work = []
    for split in SPLITS:
        mine = [i for i in range(cfg.scenes) if split_of[i] == split]
        for k in range(0, len(mine), per_shard):
            work.append((f"shards/{split}-{k // per_shard:05d}.parquet", mine[k:k + per_shard]))
    return work


def build(cfg: BinauralBuildConfig, out: str | Path,
          progress: Callable[[int, int], None] = lambda done, total: None) -> Manifest:
    """Build (or resume building) generated scenes in `out`, a folder or a URI; returns the manifest. Same config, same
    bytes."""
    from trainables.binaural.scenes import Renderer, make_scene, scene_environment, scene_room

    if datastore.is_uri(out):
        return datastore.build_and_publish(out, lambda folder: build(cfg, folder, progress), digest=cfg.digest(),
                                           load=load_manifest)
    out = Path(out)
    check_build_state(out, cfg.digest(), json.loads(cfg.model_dump_json()))
    work = plan(cfg)
    renderer = None
    done, total = 0, cfg.scenes
    for rel, indices in work:
        split = rel.split("/")[1].split("-")[0]
        if not (out / rel).exists():
            renderer = renderer or Renderer(cfg.scene, None if cfg.hrtf is None else str(cfg.hrtf))
            n = cfg.test_clip_samples if split == "test" else cfg.clip_samples
            clips = []
            for i in indices:
                env = scene_environment(cfg.seed, i, cfg.environments, cfg.reverberant_fraction)
                scene = make_scene(cfg.scene, renderer, cfg.seed, i, n, env)
                s = scene.sources
                clips.append(Clip(
                    clip_id=f"scene-{i:06d}/{env}", scene_id=f"scene-{i:06d}", source="generated",
                    environment=env, split=split, sample_rate=cfg.scene.sample_rate, wave=scene.wave,
                    frames=scene.image[None], frame_times=np.array([n / cfg.scene.sample_rate / 2]),
                    depth=scene.depth, azimuth_deg=tuple(x.azimuth_deg for x in s),
                    distance_m=tuple(x.distance_m for x in s), classes=tuple(x.kind for x in s),
                    boxes=tuple(x.box for x in s)))
            write_shard(table_of(clips, cfg.dtype), out / rel)
        done += len(indices)
        progress(done, total)
    info = {"sample_rate": cfg.scene.sample_rate, "image_size": list(cfg.scene.image_size), "has_depth": True,
            "dtype": cfg.dtype, "source": "generated", "environments": list(cfg.environments),
            "clip_samples": {"train": cfg.clip_samples, "val": cfg.clip_samples, "test": cfg.test_clip_samples},
            "build": json.loads(cfg.model_dump_json()),
            # each scene's room (size, listener, materials, absorption, Eyring RT60): cheap to redraw, so resumed
            # builds list every scene
            "rooms": {f"scene-{i:06d}": scene_room(cfg.scene, cfg.seed, i, scene_environment(
                cfg.seed, i, cfg.environments, cfg.reverberant_fraction)).summary(cfg.scene)
                for i in range(cfg.scenes)}}
    return write_manifest(out, [{"file": rel, "split": rel.split("/")[1].split("-")[0]} for rel, _ in work], info)


# ------------------------------------------------------------------------------------------------ reader


class BinauralReader(ShardedSplit):
    """Streams a split as training batches: {"wave": [B, 2, L] float32, "image": [B, 3, H, W] uint8 (with image=True),
    "depth": [B, 1, H, W] float32 metres (with depth=True)}.

    Every row gives one window of `window` samples: a random one (random_crop) or the centre one; rows of exactly
    `window` samples are used whole. The frame is the one nearest the window's centre. Random positions come from
    the (seed, epoch, rank) generator, so every epoch draws fresh crops of whole recordings (FAIR-Play) and a resumed
    run draws the same ones again. When the manifest has a frame_crop (FAIR-Play stores frames at 2.5D's resize),
    frames are cropped to it: at a random position with 2.5D's brightness/colour jitter when random_crop, else the
    centre crop untouched (`frame_augment`). A view's entries ("select") keep only its split's rows. Like the
    localization `ShardReader`, each of `world_size` workers reads its contiguous share of the epoch-shuffled shard
    order and every worker gets the same number of rows; the same (seed, epoch, rank) gives the same batches.
    """

    def __init__(self, root: str | Path, split: str, batch_size: int, *, window: int, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True, random_crop: bool = False, seed: int = 0,
                 drop_last: bool = False, image: bool = True, depth: bool = False,
                 environments: list[str] | tuple[str, ...] | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.manifest = load_manifest(root)
        if depth and not self.manifest.has_depth:
            raise ValueError(f"{self.manifest.root} has no depth maps (source {self.manifest.data.get('source')}); "
                             "use model.depth_source: rgb or a modality without depth")
        self.split, self.window = split, window
        self.random_crop, self.image, self.depth = random_crop, image, depth
        unknown = sorted(set(environments or ()) - set(self.manifest.environments))
        if unknown:
            raise ValueError(f"{self.manifest.root}: no environment {', '.join(map(repr, unknown))} in the dataset; "
                             f"it has {', '.join(self.manifest.environments)}")
        self.keep = None if environments is None else set(environments)
        shortest = self.manifest.data["counts"].get(split, {}).get("samples", [window])[0]
        if shortest < window:
            raise ValueError(f"{self.manifest.root}: {split} clips are {shortest} samples long, shorter than the "
                             f"model's window of {window} (model.clip_seconds)")
        self.fs, base = datastore.filesystem(self.manifest.root)  # opened once; shards are paths inside it
        entries = self.manifest.entries(split)
        files = [(f"{base}/{e['file']}",
                  e["rows"] if self.keep is None else sum(n for k, n in e["by_environment"].items() if k in self.keep))
                 for e in entries]
        self._select = {f"{base}/{e['file']}": np.asarray(e["select"], np.int64) for e in entries if "select" in e}
        super().__init__(files, batch_size=batch_size, rank=rank, world_size=world_size, shuffle=shuffle, seed=seed,
                         drop_last=drop_last, where=f"{self.manifest.root} ({split} clips)")
        if not self.files:
            raise ValueError(f"{self.manifest.root}: the dataset has no {split!r} clips"
                             + (f" in {', '.join(sorted(self.keep))}" if self.keep else ""))

    def _frames(self, table: pa.Table, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The frame nearest each row's window centre, [n, 3, h, w] uint8, cropped (and jittered) per frame_crop.
        Only the chosen frame of each row is copied out of Arrow (a FAIR-Play row holds 100 of them)."""
        H, W = self.manifest.image_size
        times, to = _list_rows(table.column("frame_times"))
        col = table.column("frames")
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        flat, fo = col.values, col.offsets.to_numpy()
        picks = [fo[i] + int(np.argmin(np.abs(times[to[i]:to[i + 1]] - centres[i]))) for i in range(len(centres))]
        fmt = self.manifest.frame_format
        frames = np.stack([decode_frame(flat[k].as_py(), (H, W), fmt) for k in picks])
        crop = self.manifest.frame_crop
        if crop is None:
            return frames
        n = len(frames)
        if self.random_crop:
            frames = frame_augment.crop(frames, frame_augment.random_offsets(rng, n, (H, W), crop), crop)
            return frame_augment.colour_jitter(frames, *frame_augment.jitter_factors(rng, n))
        return frame_augment.crop(frames, frame_augment.centre_offsets(n, (H, W), crop), crop)

    def _decode(self, table: pa.Table, rng: np.random.Generator) -> dict[str, np.ndarray]:
        H, W = self.manifest.image_size
        L = self.window
        left, lo = _list_rows(table.column("left"))
        right, ro = _list_rows(table.column("right"))
        n = table.num_rows
        wave = np.empty((n, 2, L), np.float32)
        centres = np.empty(n)
        sr = self.manifest.sample_rate
        for i in range(n):
            length = lo[i + 1] - lo[i]
            s = (int(rng.integers(0, length - L + 1)) if self.random_crop else (length - L) // 2)
            wave[i, 0] = _to_float(left[lo[i] + s:lo[i] + s + L])
            wave[i, 1] = _to_float(right[ro[i] + s:ro[i] + s + L])
            centres[i] = (s + L / 2) / sr
        out = {"wave": wave}
        if self.image:
            out["image"] = self._frames(table, centres, rng)
        if self.depth:
            out["depth"] = np.stack([np.frombuffer(d, np.float32).reshape(1, H, W)
                                     for d in table.column("depth").to_pylist()])
        return out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, 1])
        columns = ["environment", "left", "right"] + (["frames", "frame_times"] if self.image else []) + \
            (["depth"] if self.depth else [])
        parts: list[dict[str, np.ndarray]] = []
        buffered = 0
        for path, part in self._my_rows():
            table = pq.read_table(path, columns=columns, filesystem=self.fs)
            kept = self._select.get(path, np.arange(table.num_rows))
            if self.keep is not None:
                envs = table.column("environment").to_pylist()
                kept = kept[[envs[k] in self.keep for k in kept]]
            table = table.take(kept[part])
            if self.shuffle:
                table = table.take(rng.permutation(table.num_rows))
            parts.append(self._decode(table, rng))
            buffered += table.num_rows
            while buffered >= self.batch_size:
                batch, parts = _take(parts, self.batch_size)
                buffered -= self.batch_size
                yield batch
        if buffered and not self.drop_last:
            yield _take(parts, buffered)[0]


def _take(parts: list[dict[str, np.ndarray]], n: int) -> tuple[dict[str, torch.Tensor], list[dict[str, np.ndarray]]]:
    joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return ({k: torch.from_numpy(np.ascontiguousarray(v[:n])) for k, v in joined.items()},
            [{k: v[n:] for k, v in joined.items()}])
