"""Import the original NI-CNN dataset into binsweep's Parquet shards (`shards.py`).

The dataset is the one of K. van der Heijden & S. Mehrkanoon, "Goal-driven, neurobiological-inspired convolutional
neural network models of human spatial hearing", Neurocomputing 470 (2022) 432-442, doi:10.1016/j.neucom.2021.05.104,
on which BAST (Kuang et al. 2022, arXiv:2207.03927) was trained and tested. It is not public (the BAST authors hand
it out on request), so its convention is known only from the BAST reference code:

    SRC/train/*.wav, SRC/test/*.wav
    stereo (channel 0 = left ear), 16-bit PCM, 16 kHz, 8000 samples per channel (500 ms)
    file name: one prefix character, the azimuth as 3 digits (`int(name[1:4])`), then the rest of the name, which
    holds the environment tag RI01 (anechoic) or RI02 (reverberant lecture hall) and maybe more (`RI01_SNR...`)

How a file becomes a row:
    azimuth_deg  int(name[1:4]); any integer 0..359 is accepted (the paper uses 0..350 in 10° steps; the report
                 says when the imported azimuths are not that grid). The files' physical convention (which way is
                 positive) is not documented anywhere; the degrees are stored as the files state them.
    environment  "anechoic" for RI01, "reverberant" for RI02, found as a substring after the azimuth field as the
                 reference code does; other tags (SNR variants) do not change it.
    source       "{folder}/{file name}": the raw name, SNR tags and all.
    sound_id     "{folder}/{name[0]}{stem[4:]}", the name without its azimuth field: the same sound at every
                 azimuth shares an id. The environment and SNR tags stay in it because nothing in the names says
                 that the RI01 and RI02 versions of a name are one recording; the folder keeps train and test apart.
    split        test/ -> "test"; train/ -> "train" or "val" by `splits.train_val` on (azimuth, environment) cells,
                 the paper's stratified 75/25.

A file that breaks the convention (unreadable, not WAV, not 16-bit PCM, not 16 kHz, not 2 channels, not 8000
samples, or a name without azimuth or with no or both environment tags) is left out and listed in the report with
every reason; none is dropped silently. With `strict=True` any such file is an error raised before anything is
written. The import is built in a hidden sibling folder and renamed into place when complete, so `out` holds either
a whole import or nothing. `out` may be a URI (s3://bucket/prefix): the import is made in a staging folder under the
home's cache and published there, manifest last (`trainables.datastore`).
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import soundfile as sf

from trainables import datastore
from trainables.localization import shards, splits

SAMPLE_RATE = 16000
N_SAMPLES = 8000
FOLDERS = ("train", "test")
ENVIRONMENTS = {"RI01": "anechoic", "RI02": "reverberant"}
REPORT = "import_report.txt"
DTYPES = ("int16", "float32")
_PAPER_AZIMUTHS = list(range(0, 360, 10))


class NICNNImportError(ValueError):
    """The source breaks the NI-CNN convention; `problems` lists every offending file."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()):
        self.problems = list(problems)
        super().__init__(message + "".join(f"\n  {p}" for p in self.problems))


@dataclass(frozen=True)
class Problem:
    """A file left out of the import and why (all reasons, joined by '; ')."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class _Clip:
    """A file that follows the convention, waiting to be read into its row."""

    path: Path
    folder: str
    azimuth: int
    environment: str

    @property
    def source(self) -> str:
        return f"{self.folder}/{self.path.name}"

    @property
    def sound_id(self) -> str:
        stem = self.path.stem
        return f"{self.folder}/{stem[0]}{stem[4:]}"


@dataclass
class ImportReport:
    """What an import did: rows written, files left out, and the manifest of the result."""

    imported: int
    problems: list[Problem]
    manifest: shards.Manifest
    ignored: list[Path] = field(default_factory=list)  # entries of train/ and test/ that are not .wav files

    def format(self) -> str:
        data = self.manifest.data
        src = Path(data["import"]["src"])
        counts = data["counts"]
        per_split = ", ".join(f"{s} {counts[s]['total']}" for s in shards.SPLITS if s in counts)
        per_env: dict[str, int] = {}
        azimuths: set[int] = set()
        for c in counts.values():
            for env, n in c["by_environment"].items():
                per_env[env] = per_env.get(env, 0) + n
            azimuths.update(int(a) for a in c["by_azimuth"])
        lines = [
            f"NI-CNN import of {src} into {self.manifest.root}",
            f"imported {self.imported} clips ({per_split}); {_files(len(self.problems))} left out",
            "environments: " + ", ".join(f"{env} {n}" for env, n in sorted(per_env.items())),
            _describe_azimuths(sorted(azimuths)),
            f"val fraction {data['import']['val_fraction']}, seed {data['import']['seed']}, "
            f"stored as {data['dtype']}",
            f"fingerprint {self.manifest.fingerprint}",
        ]
        if "val" not in counts and data["import"]["val_fraction"] > 0:
            # splits.train_val rounds per cell, so cells of one or two clips give no val at all.
            lines.append("no val rows: every (azimuth, environment) cell is too small for the val fraction")
        if self.problems:
            lines.append(f"files that break the NI-CNN convention ({len(self.problems)}), not imported:")
            lines += [f"  {_shown(p.path, src)}: {p.reason}" for p in self.problems]
        else:
            lines.append("every WAV file follows the NI-CNN convention")
        if self.ignored:
            lines.append(f"not WAV files, ignored ({len(self.ignored)}):")
            lines += [f"  {_shown(p, src)}" for p in self.ignored]
        return "\n".join(lines) + "\n"


def _files(n: int) -> str:
    return f"{n} file{'s' * (n != 1)}"


def _describe_azimuths(azimuths: list[int]) -> str:
    if azimuths == _PAPER_AZIMUTHS:
        return "azimuths: 36, 0..350 in 10° steps (the paper's grid)"
    return (f"azimuths: {len(azimuths)} ({', '.join(map(str, azimuths))}); "
            f"not the paper's 0..350 in 10° steps")


def _shown(path: Path, src: Path) -> str:
    try:
        return str(path.relative_to(src))
    except ValueError:
        return str(path)


def parse_name(name: str) -> tuple[int, str]:
    """'S090_dog_RI02_SNR10.wav' -> (90, 'reverberant'); ValueError naming everything wrong with the name."""
    stem = Path(name).stem
    reasons = []
    digits = stem[1:4]
    if len(digits) != 3 or not (digits.isascii() and digits.isdigit()):
        reasons.append(f"no azimuth in the name: name[1:4] is {digits!r}, not 3 digits")
    elif int(digits) >= 360:
        reasons.append(f"azimuth {int(digits)} in the name is outside 0..359")
    # The azimuth field is left out of the search so a prefix or digits can never be mistaken for a tag.
    tags = [tag for tag in ENVIRONMENTS if tag in stem[4:]]
    if not tags:
        reasons.append("no environment tag in the name (RI01 anechoic or RI02 reverberant)")
    elif len(tags) > 1:
        reasons.append("both RI01 and RI02 in the name: the environment is ambiguous")
    if reasons:
        raise ValueError("; ".join(reasons))
    return int(digits), ENVIRONMENTS[tags[0]]


def audio_problems(path: Path) -> list[str]:
    """Every way the file's header breaks the convention ([] when it is a conforming WAV).

    Only the header is read: libsndfile derives the frame count from the data actually present, so a truncated file
    shows up here as a wrong length.
    """
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, OSError) as exc:
        return [f"unreadable as audio ({getattr(exc, 'error_string', None) or exc})"]
    reasons = []
    if info.format not in ("WAV", "WAVEX"):
        reasons.append(f"a {info.format} file, not WAV")
    if info.subtype != "PCM_16":
        reasons.append(f"{info.subtype} samples, not 16-bit PCM (PCM_16)")
    if info.samplerate != SAMPLE_RATE:
        reasons.append(f"sample rate {info.samplerate} Hz, not {SAMPLE_RATE}")
    if info.channels != 2:
        reasons.append(f"{info.channels} channel{'s' * (info.channels != 1)}, not 2 (stereo)")
    if info.frames != N_SAMPLES:
        reasons.append(f"{info.frames} samples per channel, not {N_SAMPLES}")
    return reasons


def read_clip(path: Path) -> np.ndarray:
    """A conforming NI-CNN WAV -> [2, 8000] int16, bit-exact (no scaling on the way)."""
    data, _ = sf.read(str(path), dtype="int16", always_2d=True)  # [8000, 2]
    if data.shape != (N_SAMPLES, 2):
        # Only a file changed since it was checked gets here; the caller aborts the whole import.
        raise NICNNImportError(f"{path}: read {data.shape[0]} x {data.shape[1]} samples, expected "
                               f"{N_SAMPLES} x 2 (did the file change during the import?)")
    return np.ascontiguousarray(data.T)


def _check_file(path: Path, folder: str) -> _Clip | Problem:
    reasons = []
    try:
        azimuth, environment = parse_name(path.name)
    except ValueError as exc:
        reasons.append(str(exc))
    # Header problems are collected even for a bad name, so one report names everything to fix in a file.
    reasons += audio_problems(path)
    if reasons:
        return Problem(path, "; ".join(reasons))
    return _Clip(path, folder, azimuth, environment)


def _list_folder(src: Path, folder: str) -> tuple[list[Path], list[Path]]:
    """(WAV files sorted by name, other entries) of src/folder."""
    where = src / folder
    if not where.is_dir():
        raise FileNotFoundError(f"{where} not found: an NI-CNN dataset folder holds train/ and test/ folders of WAVs")
    wavs, other = [], []
    for entry in sorted(where.iterdir(), key=lambda p: p.name):
        (wavs if entry.is_file() and entry.suffix.lower() == ".wav" else other).append(entry)
    if not wavs:
        raise NICNNImportError(f"{where} holds no .wav files: the NI-CNN dataset is empty there")
    return wavs, other


def _assign_splits(clips: list[_Clip], val_fraction: float, seed: int) -> dict[str, list[_Clip]]:
    """Split name -> its clips in file-name order (clips come sorted by folder, then name)."""
    train = [c for c in clips if c.folder == "train"]
    labels = splits.train_val([(c.azimuth, c.environment) for c in train], val_fraction, seed)
    out: dict[str, list[_Clip]] = {s: [] for s in shards.SPLITS}
    for clip, label in zip(train, labels):
        out[label].append(clip)
    out["test"] = [c for c in clips if c.folder == "test"]
    return out


def _to_dtype(wave: np.ndarray, dtype: str) -> np.ndarray:
    # float32 uses the same 1/32767 scale as shards.read_waves, so both dtypes read back alike.
    return wave if dtype == "int16" else wave.astype(np.float32) / 32767.0


def _write_shards(root: Path, by_split: dict[str, list[_Clip]], dtype: str, shard_rows: int,
                  step: Callable[[int], None]) -> list[dict]:
    """Write every split's rows in order into root/shards; the manifest entries of the files written."""
    entries = []
    for split in shards.SPLITS:
        clips = by_split[split]
        for index, start in enumerate(range(0, len(clips), shard_rows)):
            rows = shards.Rows()
            for clip in clips[start:start + shard_rows]:
                rows.add(clip.sound_id, clip.source, clip.azimuth, clip.environment, split,
                         _to_dtype(read_clip(clip.path), dtype))
                step(1)
            rel = f"shards/{split}-{index:05d}.parquet"
            shards.write_shard(rows.table(SAMPLE_RATE, N_SAMPLES, dtype), root / rel)
            entries.append({"file": rel, "split": split})
    return entries


def _check_arguments(out: Path, val_fraction: float, dtype: str, shard_rows: int) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not isinstance(shard_rows, int) or shard_rows < 1:
        raise ValueError(f"shard_rows must be a positive integer, got {shard_rows!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not empty: choose a new --out or delete it")


def _require_clips(src: Path, clips: list[_Clip], problems: list[Problem]) -> None:
    for folder in FOLDERS:
        if not any(c.folder == folder for c in clips):
            raise NICNNImportError(f"{src / folder}: none of its WAV files follows the NI-CNN convention",
                                   [p for p in problems if p.path.parent == src / folder])


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished import into place; an empty `out` (allowed by the checks) is replaced."""
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)


def import_nicnn(src: Path, out: Path | str, *, val_fraction: float = 0.25, seed: int = 0, strict: bool = False,
                 dtype: str = "int16", shard_rows: int = 4096,
                 progress: Callable[[int, int], None] | None = None, _named: str | None = None) -> ImportReport:
    """Import SRC/train and SRC/test into `out` (shards/, manifest.json, import_report.txt).

    progress(done, total) counts two steps per WAV file, checking it and writing it; the writing step of a file
    left out counts as done when writing starts.

    `_named` is what the report calls the result (the URI of an import published there).

    Raises FileNotFoundError for a missing folder, NICNNImportError for an empty folder, for a folder with no
    conforming file, and (strict=True) for any file that breaks the convention; nothing is written in these cases.
    """
    if datastore.is_uri(out):  # imported afresh into the staging folder, then published (manifest last)
        uri = datastore.normalize(out)
        staging = datastore.staging_dir(uri)
        shutil.rmtree(staging, ignore_errors=True)
        report = import_nicnn(src, staging, val_fraction=val_fraction, seed=seed, strict=strict, dtype=dtype,
                              shard_rows=shard_rows, progress=progress, _named=uri)
        datastore.publish(staging, uri)
        shutil.rmtree(staging, ignore_errors=True)
        return report
    src, out = Path(src), Path(out)
    _check_arguments(out, val_fraction, dtype, shard_rows)
    listed = {folder: _list_folder(src, folder) for folder in FOLDERS}
    wavs = [(folder, path) for folder in FOLDERS for path in listed[folder][0]]
    ignored = [path for folder in FOLDERS for path in listed[folder][1]]
    total, done = 2 * len(wavs), 0
    report_progress = progress or (lambda done, total: None)

    clips: list[_Clip] = []
    problems: list[Problem] = []
    for folder, path in wavs:
        checked = _check_file(path, folder)
        (problems if isinstance(checked, Problem) else clips).append(checked)
        done += 1
        report_progress(done, total)
    if strict and problems:
        raise NICNNImportError(f"{_files(len(problems))} in {src} break the NI-CNN convention (strict import; "
                               f"nothing was written)", problems)
    _require_clips(src, clips, problems)
    by_split = _assign_splits(clips, val_fraction, seed)

    done += len(problems)
    report_progress(done, total)

    def step(n: int) -> None:
        nonlocal done
        done += n
        report_progress(done, total)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        entries = _write_shards(tmp, by_split, dtype, shard_rows, step)
        info = {"sample_rate": SAMPLE_RATE, "n_samples": N_SAMPLES, "dtype": dtype, "source": "nicnn",
                "import": {"src": str(src), "val_fraction": val_fraction, "seed": seed, "problems": len(problems)}}
        manifest = shards.write_manifest(tmp, entries, info)
        # The report names the final folder, not the temporary one it is written in.
        report = ImportReport(len(clips), problems, shards.Manifest(_named or out, manifest.data), ignored)
        (tmp / REPORT).write_text(report.format())
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report

