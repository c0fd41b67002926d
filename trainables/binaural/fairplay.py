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

Import (`import_fairplay`; `binsweep data fairplay ROOT --out data/fairplay --split 1`):
- audio is resampled to 16 kHz;
- train and val clips give `windows_per_clip` random 0.63 s windows each, every window with its nearest frame
  (one frame per row), as 2.5D's random crops: the start is uniform in [0, S − window], seeded;
- test clips are kept whole, with every frame (10 fps), for whole-clip sliding-window evaluation
  (`test_seconds` cuts them shorter);
- frames are resized to `image_size` (bilinear). FAIR-Play has no depth maps: train with depth_source=rgb, the
  paper's setting, where the depth network reads the RGB frame.
The split is by recording, so a recording's windows never leave its split. The import is seeded and resumable
like the generated builder.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from trainables import datastore
from trainables.binaural.data import (SPLITS, Clip, Manifest, check_build_state, load_manifest, table_of,
                                      write_manifest)
from trainables.localization.shards import write_shard

FPS = 10.0
AUDIO_DIR = "binaural_audios"
FRAMES_DIR = "frames"
SPLIT_SETS = {"splits": ".h5", "new_splits": ".txt", "five_splits": ".txt"}
_SHOW = 10  # missing files named in an error


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
    split_index: int = Field(1, ge=1, description="splitN of the split set")
    split_set: Literal["splits", "new_splits", "five_splits"] = "splits"
    image_size: tuple[int, int] = (224, 448)
    sample_rate: int = 16000
    window_seconds: float = Field(0.63, gt=0.0)
    windows_per_clip: int = Field(8, ge=1, description="random windows per train/val recording")
    test_seconds: Optional[float] = Field(None, gt=0.0, description="cut test recordings to this length")
    dtype: Literal["int16", "float32"] = "int16"
    clips_per_shard: int = Field(16, ge=1, description="recordings per shard")
    seed: int = 0

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def _clips_of_recording(cfg: FairPlayImportConfig, clip_id: str, split: str) -> list[Clip]:
    root, sr = cfg.root, cfg.sample_rate
    wave = load_audio(wav_path(root, clip_id), sr)
    frames = FrameSource(root, clip_id, tuple(cfg.image_size))
    source = f"{AUDIO_DIR}/{clip_id}.wav"
    L = round(cfg.window_seconds * sr)
    S = wave.shape[1]
    if S < L:
        raise ValueError(f"{wav_path(root, clip_id)}: {S / sr:.2f} s is shorter than one {cfg.window_seconds} s window")
    if split == "test":
        if cfg.test_seconds is not None:
            wave = wave[:, :max(L, round(cfg.test_seconds * sr))]
        duration = wave.shape[1] / sr
        indices = sorted({frames.index_at(t) for t in np.arange(0, duration, 1 / FPS) + 0.5 / FPS})
        return [Clip(clip_id=clip_id, scene_id=clip_id, source=source, environment="recorded", split=split,
                     sample_rate=sr, wave=wave, frames=np.stack([frames.load(k) for k in indices]),
                     frame_times=(np.asarray(indices, dtype=np.float64) - 0.5) / FPS)]
    digest = int.from_bytes(hashlib.sha256(clip_id.encode()).digest()[:4], "little")
    rng = np.random.default_rng([cfg.seed, digest])
    starts = sorted(int(s) for s in rng.integers(0, S - L + 1, size=cfg.windows_per_clip))
    out = []
    for s in starts:
        t_mid = (s + L / 2) / sr
        k = frames.index_at(t_mid)
        out.append(Clip(clip_id=f"{clip_id}@{s / sr:.4f}s", scene_id=clip_id, source=source, environment="recorded",
                        split=split, sample_rate=sr, wave=wave[:, s:s + L], frames=frames.load(k)[None],
                        frame_times=np.array([(k - 0.5) / FPS - s / sr]), start_s=s / sr))
    return out


def import_fairplay(cfg: FairPlayImportConfig, out: str | Path,
                    progress: Callable[[int, int], None] = lambda done, total: None) -> Manifest:
    """Import one split of a FAIR-Play root into `out`, a folder or a URI (staged and published); resumable; returns
    the manifest."""
    if datastore.is_uri(out):
        return datastore.build_and_publish(out, lambda folder: import_fairplay(cfg, folder, progress),
                                           digest=cfg.digest(), load=load_manifest)
    out = Path(out)
    ids = {s: read_split(cfg.root, cfg.split_index, s, cfg.split_set) for s in SPLITS}
    seen: dict[str, str] = {}
    for s in SPLITS:
        for i in ids[s]:
            if seen.setdefault(i, s) != s:
                raise ValueError(f"recording {i} is in both the {seen[i]} and the {s} list of "
                                 f"{cfg.split_set}/split{cfg.split_index}")
    check_layout(cfg.root, [i for s in SPLITS for i in ids[s]])
    check_build_state(out, cfg.digest(), json.loads(cfg.model_dump_json()))
    work = []
    for s in SPLITS:
        for k in range(0, len(ids[s]), cfg.clips_per_shard):
            work.append((f"shards/{s}-{k // cfg.clips_per_shard:05d}.parquet", s, ids[s][k:k + cfg.clips_per_shard]))
    total, done = sum(len(v) for v in ids.values()), 0
    for rel, split, chunk in work:
        if not (out / rel).exists():
            clips = [c for i in chunk for c in _clips_of_recording(cfg, i, split)]
            write_shard(table_of(clips, cfg.dtype), out / rel)
        done += len(chunk)
        progress(done, total)
    L = round(cfg.window_seconds * cfg.sample_rate)
    info = {"sample_rate": cfg.sample_rate, "image_size": list(cfg.image_size), "has_depth": False,
            "dtype": cfg.dtype, "source": "fairplay", "environments": ["recorded"],
            "clip_samples": {"train": L, "val": L, "test": None},
            "build": json.loads(cfg.model_dump_json()) | {"root": "<FAIR-Play root>"}}
    return write_manifest(out, [{"file": rel, "split": split} for rel, split, _ in work], info)
