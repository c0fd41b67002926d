"""FAIR-Play (Gao & Grauman 2019) in binsweep's binauralization shard format.

Expected layout of a FAIR-Play root (binauralization.md §1; frames as 2.5D Visual Sound extracts them):

    <root>/binaural_audios/000001.wav ... 001871.wav     10 s stereo recordings (channel 0 = left)
    <root>/frames/000001.mp4/000001.png, 000002.png ...  frames extracted at 10 fps, 1-based, %06d.png
    <root>/splits/split1 ... split10/{train,val,test}.h5 dataset 'audio': byte-string absolute wav paths
    <root>/new_splits/split1 ... split5/{train,val,test}.txt  (optional) the 5 non-overlapping splits of
                                                         PseudoBinaural, one file name per line (xxxxxx.mp3/.wav)

The h5 files hold the authors' own paths (e.g. /home/.../BINAURAL_MUSIC_ROOM/binaural16k/001158.wav). Only the file
name is kept and it is re-rooted under <root>/binaural_audios/, so no prefix needs rewriting by hand. The text
splits are read the same way.

Frames: with t in seconds from the clip start, 2.5D's loader uses frame round((t + 0.05) · 10), 1-based, for the
window centre t. That is the frame nearest t when frame k (1-based) stands for time (k − 0.5) / 10, the convention
used here (`frame_times`). A missing frame within one frame (0.1 s) of the wanted one is replaced by the nearest
frame that exists, because ffmpeg extraction can end one frame short. Anything further away is an error naming the
files.

Import (`import_fairplay`; `binsweep data fairplay ROOT --out data/fairplay`):
- every recording listed by any split of the split set is stored once, whole (10 s at 16 kHz), with every frame
  (10 fps); frames are resized (bilinear) to 2.5D's 240×480 for a 224×448 model (`frame_augment.stored_size`, or
  to the model's size with augment=False) and stored as JPEG (`frame_format`; every epoch reads every frame of a
  shard, of which it uses one per recording);
- each split N becomes a view, `<out>/splitN/manifest.json`: a dataset of its own whose entries name the import's
  shards and the rows of each in N's train/val/test lists. `data.root: <out>` with `data.split: N` (config.py)
  reads it, so a sweep grids over the ten splits without ten copies of the data;
- FAIR-Play has no depth maps: train with depth_source=rgb, the paper's setting, where the depth network reads the
  RGB frame.
How training reads it (the 2.5D protocol, `BinauralReader`, `frame_augment`):
- train: every epoch a fresh random 0.63 s window of each whole recording (2.5D draws its start uniformly in
  [0, 9.9 − 0.63] s; here [0, S − window]), seeded by (seed, epoch, rank), with the frame nearest the window's
  centre, cropped at random to the model's size and brightness/colour-jittered ×[0.7, 1.3];
- val: the centre window of each recording and the centre crop of its frame, the same every epoch (deterministic,
  where 2.5D validates on random crops);
- test: whole recordings by sliding windows (`evaluate.py`, as 2.5D's demo + evaluate.py), centre-cropped frames.
The import is resumable like the generated builder (a shard that exists is complete).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from trainables import datastore
from trainables.binaural import frame_augment
from trainables.binaural.data import (KIND, MANIFEST, SCHEMA_VERSION, SPLITS, Clip, Manifest, check_build_state,
                                      load_manifest, table_of, write_manifest)
from trainables.localization.shards import write_shard

FPS = 10.0
AUDIO_DIR = "binaural_audios"
FRAMES_DIR = "frames"
SPLIT_SETS = {"splits": ".h5", "new_splits": ".txt", "five_splits": ".txt"}
_SHOW = 10  # missing files named in an error
ALL = "all"  # the split column of an imported recording: its split depends on the view (split N) that reads it


class FairPlayError(FileNotFoundError):
    """A FAIR-Play root that does not have the expected layout; the message names the missing paths."""


def _missing(what: str, paths: list[Path], hint: str) -> FairPlayError:
    shown = "\n  ".join(str(p) for p in paths[:_SHOW])
    more = f"\n  ... and {len(paths) - _SHOW} more" if len(paths) > _SHOW else ""
    return FairPlayError(f"{len(paths)} {what} missing:\n  {shown}{more}\n{hint}")


def split_file(root: str | Path, split_index: int, split: str, split_set: str = "splits") -> Path:
    if split_set not in SPLIT_SETS:
        raise ValueError(f"split_set {split_set!r} unknown; allowed: {', '.join(SPLIT_SETS)}")
    if split not in SPLITS:
        raise ValueError(f"split {split!r} unknown; allowed: {', '.join(SPLITS)}")
    return Path(root) / split_set / f"split{split_index}" / f"{split}{SPLIT_SETS[split_set]}"


def read_split(root: str | Path, split_index: int, split: str, split_set: str = "splits") -> list[str]:
    """The recording ids (e.g. "000001") of one split, in file order, read from the h5 (dataset 'audio') or txt."""
    path = split_file(root, split_index, split, split_set)
    if not path.is_file():
        raise _missing("split file", [path], f"expected {split_set}/splitN/{{train,val,test}}{SPLIT_SETS[split_set]} "
                       f"under the FAIR-Play root {root} (FAIR-Play ships splits.tar.gz)")
    if path.suffix == ".h5":
        import h5py

        with h5py.File(path, "r") as f:
            if "audio" not in f:
                raise ValueError(f"{path}: no 'audio' dataset (keys: {', '.join(f.keys())})")
            entries = [e.decode() if isinstance(e, bytes) else str(e) for e in f["audio"][:]]
    else:
        entries = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    ids = []
    for e in entries:
        name = e.replace("\\", "/").rsplit("/", 1)[-1]  # the foreign prefix goes; only the file name counts
        ids.append(name.rsplit(".", 1)[0] if "." in name else name)
    if not ids:
        raise ValueError(f"{path} lists no recordings")
    return ids


def wav_path(root: str | Path, clip_id: str) -> Path:
    return Path(root) / AUDIO_DIR / f"{clip_id}.wav"


def frame_dir(root: str | Path, clip_id: str) -> Path:
    return Path(root) / FRAMES_DIR / f"{clip_id}.mp4"


def frame_path(root: str | Path, clip_id: str, index1: int) -> Path:
    return frame_dir(root, clip_id) / f"{index1:06d}.png"


def check_layout(root: str | Path, ids: list[str]) -> None:
    """Every recording's wav and frame folder exists, or one error naming all the missing ones."""
    root = Path(root)
    wavs = [wav_path(root, i) for i in ids if not wav_path(root, i).is_file()]
    if wavs:
        raise _missing("audio files", wavs, f"the split lists recordings that are not in {root / AUDIO_DIR}; "
                       "their paths were re-rooted there from the split file (the foreign prefix is dropped)")
    frames = [frame_dir(root, i) for i in ids if not frame_dir(root, i).is_dir()]
    if frames:
        raise _missing("frame folders", frames, "extract frames at 10 fps first, e.g. ffmpeg -i videos/000001.mp4 "
                       "-vf fps=10 frames/000001.mp4/%06d.png")


def load_audio(path: Path, sample_rate: int) -> np.ndarray:
    """A FAIR-Play wav -> [2, S] float32 at sample_rate."""
    import soundfile as sf
    from scipy.signal import resample_poly

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path}: cannot be read as audio ({exc})") from None
    if data.shape[1] != 2:
        raise ValueError(f"{path}: {data.shape[1]} channel(s); FAIR-Play recordings are binaural (2 channels)")
    wave = data.T
    if rate != sample_rate:
        g = math.gcd(int(rate), sample_rate)
        wave = resample_poly(wave, sample_rate // g, int(rate) // g, axis=1)
    return np.ascontiguousarray(wave, dtype=np.float32)


class FrameSource:
    """The extracted frames of one recording: which exist, the nearest to a time, loading and resizing."""

    def __init__(self, root: str | Path, clip_id: str, image_size: tuple[int, int]):
        self.dir = frame_dir(root, clip_id)
        self.clip_id = clip_id
        self.image_size = image_size
        self.available = sorted(int(p.stem) for p in self.dir.glob("*.png") if p.stem.isdigit())
        if not self.available:
            raise _missing("frames", [self.dir / "000001.png"], f"{self.dir} holds no %06d.png frames")

    def index_at(self, t_s: float) -> int:
        """1-based frame nearest to t_s (2.5D: round((t + 0.05) · 10), halves up), or the nearest one that exists
        within one frame."""
        want = int(math.floor((t_s + 0.05) * FPS + 0.5))
        want = max(1, want)
        best = min(self.available, key=lambda k: (abs(k - want), k))
        if abs(best - want) > 1:
            raise _missing("frames", [frame_path(self.dir.parent.parent, self.clip_id, want)],
                           f"recording {self.clip_id} needs the frame at {t_s:.2f} s; the nearest extracted one is "
                           f"{best:06d}.png")
        return best

    def load(self, index1: int) -> np.ndarray:
        from trainables.binaural.inference import read_image

        return read_image(self.dir / f"{index1:06d}.png", self.image_size)[0]


class FairPlayImportConfig(BaseModel):
    """Everything that determines an imported dataset's bytes (besides the FAIR-Play files themselves)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    root: Path
    split_set: Literal["splits", "new_splits", "five_splits"] = "splits"
    splits: Optional[tuple[int, ...]] = Field(None, description="which splitN folders to record; None = all there "
                                              "(10 under splits/, 5 under new_splits/)")
    image_size: tuple[int, int] = Field((224, 448), description="(H, W) the model sees: the crop size")
    augment: bool = Field(True, description="store frames at 2.5D's resize (e.g. 240×480 for 224×448) so training "
                          "can crop them at random; False stores them at image_size, used whole")
    sample_rate: int = Field(16000, gt=0)
    max_seconds: Optional[float] = Field(None, gt=0.0, description="cut every recording to this length")
    dtype: Literal["int16", "float32"] = "int16"
    frame_format: Literal["jpeg", "png", "raw"] = Field(
        "jpeg", description="how frames are stored: JPEG (quality 95; the frames come from lossy video anyway) "
        "stores a 240×480 photo in about 48 kB (matplotlib's grace_hopper.jpg: 48 kB JPEG, 174 kB PNG, 346 kB raw), "
        "which matters because every training epoch reads every frame of a shard to use one per recording")
    clips_per_shard: int = Field(8, ge=1, description="recordings per shard")

    @field_validator("image_size")
    @classmethod
    def _size(cls, v):
        if min(v) < 1:
            raise ValueError(f"image_size must be two positive integers (H, W), got {v}")
        return v

    @field_validator("splits")
    @classmethod
    def _splits(cls, v):
        if v is not None and (not v or min(v) < 1 or len(set(v)) != len(v)):
            raise ValueError(f"splits must be distinct split numbers 1, 2, ... (splitN folders), got {v}")
        return v

    @property
    def stored_size(self) -> tuple[int, int]:
        return frame_augment.stored_size(self.image_size) if self.augment else tuple(self.image_size)

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def split_numbers(cfg: FairPlayImportConfig) -> list[int]:
    """The splitN folders to record: cfg.splits, else every splitN folder of the split set."""
    if cfg.splits is not None:
        return sorted(cfg.splits)
    folder = Path(cfg.root) / cfg.split_set
    found = sorted(int(p.name[5:]) for p in folder.glob("split*") if p.is_dir() and p.name[5:].isdigit())
    if not found:
        raise _missing("split folders", [folder / "split1"], f"expected {cfg.split_set}/split1 ... under the FAIR-Play "
                       f"root {cfg.root} (FAIR-Play ships splits.tar.gz)")
    return found


def memberships(cfg: FairPlayImportConfig) -> dict[int, dict[str, list[str]]]:
    """{N: {train/val/test: recording ids}} for every recorded split; a recording in two lists of one split is
    refused."""
    out = {}
    for n in split_numbers(cfg):
        ids = {s: read_split(cfg.root, n, s, cfg.split_set) for s in SPLITS}
        seen: dict[str, str] = {}
        for s in SPLITS:
            for i in ids[s]:
                if seen.setdefault(i, s) != s:
                    raise ValueError(f"recording {i} is in both the {seen[i]} and the {s} list of "
                                     f"{cfg.split_set}/split{n}")
        out[n] = ids
    return out


def _recording(cfg: FairPlayImportConfig, clip_id: str) -> Clip:
    """One whole recording with every frame (10 fps) at the stored size; its split is given by the views."""
    sr = cfg.sample_rate
    wave = load_audio(wav_path(cfg.root, clip_id), sr)
    if cfg.max_seconds is not None:
        wave = wave[:, :round(cfg.max_seconds * sr)]
    frames = FrameSource(cfg.root, clip_id, cfg.stored_size)
    duration = wave.shape[1] / sr
    indices = sorted({frames.index_at(t) for t in np.arange(0, duration, 1 / FPS) + 0.5 / FPS})
    return Clip(clip_id=clip_id, scene_id=clip_id, source=f"{AUDIO_DIR}/{clip_id}.wav", environment="recorded",
                split=ALL, sample_rate=sr, wave=wave, frames=np.stack([frames.load(k) for k in indices]),
                frame_times=(np.asarray(indices, dtype=np.float64) - 0.5) / FPS)


def _write_view(out: Path, n: int, ids: dict[str, list[str]], shard_ids: dict[str, list[str]],
                top: Manifest, info: dict) -> None:
    """out/splitN/manifest.json: split N as a dataset of its own. Each entry names a shard of the import (relative to
    `out`) and the rows of it in one of N's train/val/test lists; load_manifest reads it through `out`."""
    by_shard = {e["file"]: e for e in top.data["shards"]}
    entries, counts = [], {}
    lengths = {}
    for file, rec in shard_ids.items():
        table = pq.read_table(out / file, columns=["left"])
        for rid, length in zip(rec, pc.list_value_length(table.column("left")).to_pylist()):
            lengths[rid] = length
    for split in SPLITS:
        wanted = set(ids[split])
        for file, rec in shard_ids.items():
            select = [k for k, rid in enumerate(rec) if rid in wanted]
            if select:
                entries.append({"file": file, "split": split, "rows": len(select), "select": select,
                                "sha256": by_shard[file]["sha256"], "by_environment": {"recorded": len(select)}})
        ns = [lengths[i] for i in ids[split]]
        counts[split] = {"total": len(ns), "by_environment": {"recorded": len(ns)}, "by_sources": {"0": len(ns)},
                         "by_class": {}, "samples": [min(ns), max(ns)]}
    view = {**info, "fairplay_split": {"split_set": info["build"]["split_set"], "split": n}, "view_of": ".."}
    fingerprint = hashlib.sha256(json.dumps([[e["file"], e["sha256"], e["select"]] for e in entries] + [view],
                                            sort_keys=True).encode()).hexdigest()
    data = {"kind": KIND, "schema_version": SCHEMA_VERSION, **view, "counts": counts, "shards": entries,
            "fingerprint": fingerprint}
    folder = out / f"split{n}"
    folder.mkdir(exist_ok=True)
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, folder / MANIFEST)


def import_fairplay(cfg: FairPlayImportConfig, out: str | Path,
                    progress: Callable[[int, int], None] = lambda done, total: None) -> Manifest:
    """Import every recording of the chosen splits once into `out` (a folder or a URI, staged and published), with
    one view per split (`out/splitN`); resumable; returns the manifest of the whole import."""
    if datastore.is_uri(out):
        return datastore.build_and_publish(out, lambda folder: import_fairplay(cfg, folder, progress),
                                           digest=cfg.digest(), load=load_manifest)
    out = Path(out)
    members = memberships(cfg)
    recordings = sorted({i for ids in members.values() for s in SPLITS for i in ids[s]})
    check_layout(cfg.root, recordings)
    check_build_state(out, cfg.digest(), json.loads(cfg.model_dump_json()))
    k = cfg.clips_per_shard
    shard_ids = {f"shards/rec-{j // k:05d}.parquet": recordings[j:j + k] for j in range(0, len(recordings), k)}
    done = 0
    for rel, chunk in shard_ids.items():
        if not (out / rel).exists():
            write_shard(table_of([_recording(cfg, i) for i in chunk], cfg.dtype, cfg.frame_format), out / rel)
        done += len(chunk)
        progress(done, len(recordings))
    views = [f"split{n}" for n in members]
    info = {"sample_rate": cfg.sample_rate, "image_size": list(cfg.stored_size), "has_depth": False,
            "frame_crop": list(cfg.image_size) if cfg.augment else None, "frame_format": cfg.frame_format,
            "dtype": cfg.dtype, "source": "fairplay",
            "environments": ["recorded"], "clip_samples": {s: None for s in SPLITS},
            "build": json.loads(cfg.model_dump_json()) | {"root": "<FAIR-Play root>"}}
    top = write_manifest(out, [{"file": rel, "split": ALL} for rel in shard_ids], info | {"views": views})
    for n, ids in members.items():
        _write_view(out, n, ids, shard_ids, top, info)
    return top
