"""Head-related impulse response sets: the MIT KEMAR set by default, or any SOFA SimpleFreeFieldHRIR file.

Sources:
- MIT KEMAR (normal pinna): B. Gardner & K. Martin, "HRTF measurements of a KEMAR dummy-head microphone", MIT Media
  Lab Perceptual Computing Technical Report 280 (1994). 710 directions, elevation -40..90 deg, 72 azimuths (5 deg
  steps) at elevation 0, 1.4 m, 44.1 kHz, 512 taps. Free to use provided the authors are cited.
- SOFA: AES69-2020 "AES standard for file exchange - Spatial acoustic data file format", convention
  SimpleFreeFieldHRIR: `Data.IR` [M, R, N], `Data.SamplingRate`, `SourcePosition` [M, 3] with a `Type` attribute
  (spherical: azimuth deg, elevation deg, distance m; or cartesian metres).
- Offline copies of KEMAR (shared/reference/acoustic_data.md): the `slab` 1.8.2 wheel on PyPI pickles it as
  `slab/data/mit_kemar_normal_pinna.bz2`; Debian's `libmysofa1` ships the same data as a SOFA file.

Coordinates (design.md, the SOFA convention of the KEMAR set): azimuth in degrees counter-clockwise, 0 = front,
90 = the listener's left; elevation positive upwards; receiver/channel 0 = left ear.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import uuid
import zipfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import h5py
import numpy as np
import scipy.signal

from trainables import home as paths

KEMAR_DESCRIPTION = "MIT KEMAR normal pinna (Gardner & Martin 1994)"
DEBIAN_KEMAR_SOFA = Path("/usr/share/libmysofa/MIT_KEMAR_normal_pinna.sofa")
SLAB_REQUIREMENT = "slab==1.8.2"
_SLAB_WHEEL_GLOB = "slab-1.8.2-*.whl"
_SLAB_MEMBER = "slab/data/mit_kemar_normal_pinna.bz2"
# We unpickle this member, so it must be the exact bytes that were inspected (acoustic_data.md), not whatever a
# mirror serves under the same name.
_SLAB_MEMBER_SHA256 = "61f562a68284ba40899fd66b9d9e976351a41def04e3e826ae4cb3d5c3a7d975"
_CACHE_FORMAT = 1
_HORIZONTAL_TOL_DEG = 0.01


class HRTFUnavailableError(FileNotFoundError):
    """The default HRIR set could neither be found locally nor downloaded."""


@dataclass(frozen=True, eq=False)
class HRIRSet:
    """M measured directions of a binaural HRIR set.

    azimuth_deg, elevation_deg, distance_m: [M] float64 (azimuth wrapped to [0, 360)).
    ir: [M, 2, taps] float32, channel 0 = left ear. Arrays are stored read-only copies.
    """

    azimuth_deg: np.ndarray
    elevation_deg: np.ndarray
    distance_m: np.ndarray
    ir: np.ndarray
    sample_rate: int
    source: str

    def __post_init__(self):
        az = np.array(self.azimuth_deg, dtype=np.float64).reshape(-1) % 360.0
        el = np.array(self.elevation_deg, dtype=np.float64).reshape(-1)
        dist = np.array(self.distance_m, dtype=np.float64).reshape(-1)
        ir = np.array(self.ir, dtype=np.float32)
        if ir.ndim != 3 or ir.shape[1] != 2:
            raise ValueError(f"HRIRSet({self.source}): ir must have shape [M, 2, taps], got {ir.shape}")
        m = ir.shape[0]
        for name, arr in (("azimuth_deg", az), ("elevation_deg", el), ("distance_m", dist)):
            if arr.shape != (m,):
                raise ValueError(f"HRIRSet({self.source}): {name} has {arr.shape[0]} entries, ir has {m} directions")
        if m == 0 or not (np.isfinite(ir).all() and np.isfinite(el).all() and np.isfinite(az).all()):
            raise ValueError(f"HRIRSet({self.source}): needs at least one direction and finite values")
        if int(self.sample_rate) != self.sample_rate or self.sample_rate <= 0:
            raise ValueError(f"HRIRSet({self.source}): sample_rate must be a positive integer, got {self.sample_rate}")
        for name, arr in (("azimuth_deg", az), ("elevation_deg", el), ("distance_m", dist), ("ir", ir)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "sample_rate", int(self.sample_rate))

    def __len__(self) -> int:
        return self.ir.shape[0]

    @property
    def taps(self) -> int:
        return self.ir.shape[2]

    def subset(self, index: np.ndarray) -> HRIRSet:
        """The directions at `index` (integer indices or a boolean mask), in that order."""
        return HRIRSet(self.azimuth_deg[index], self.elevation_deg[index], self.distance_m[index], self.ir[index],
                       self.sample_rate, self.source)

    def horizontal(self) -> HRIRSet:
        """The directions at elevation 0, sorted by azimuth (72 at 5 deg steps for KEMAR)."""
        on_plane = np.flatnonzero(np.abs(self.elevation_deg) < _HORIZONTAL_TOL_DEG)
        if on_plane.size == 0:
            raise ValueError(f"{self.source}: no direction at elevation 0 (elevations present: "
                             f"{np.unique(np.round(self.elevation_deg, 2)).tolist()})")
        return self.subset(on_plane[np.argsort(self.azimuth_deg[on_plane], kind="stable")])

    def unit_vectors(self) -> np.ndarray:
        """[M, 3] direction of each measurement: x front, y left, z up."""
        return _unit_vectors(self.azimuth_deg, self.elevation_deg)

    def nearest(self, azimuth_deg: float, elevation_deg: float = 0.0) -> int:
        """Index of the measured direction closest on the sphere (largest cosine) to (azimuth, elevation)."""
        target = _unit_vectors(np.array([azimuth_deg], float), np.array([elevation_deg], float))[0]
        return int(np.argmax(self.unit_vectors() @ target))

    def resample(self, sample_rate: int) -> HRIRSet:
        """The same set at another rate (polyphase: 44100 -> 16000 is up 160, down 441; taps = ceil(N * up/down))."""
        if int(sample_rate) != sample_rate or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer, got {sample_rate}")
        if sample_rate == self.sample_rate:
            return self
        ratio = Fraction(int(sample_rate), self.sample_rate)
        ir = scipy.signal.resample_poly(self.ir.astype(np.float64), ratio.numerator, ratio.denominator, axis=-1)
        return HRIRSet(self.azimuth_deg, self.elevation_deg, self.distance_m, ir.astype(np.float32),
                       int(sample_rate), self.source)

    def fingerprint(self) -> str:
        """sha256 over the responses, directions and rate: equal sets give equal fingerprints (cache keys)."""
        h = hashlib.sha256()
        for arr in (self.ir, self.azimuth_deg, self.elevation_deg, self.distance_m):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(str(self.sample_rate).encode())
        return h.hexdigest()


def _unit_vectors(azimuth_deg: np.ndarray, elevation_deg: np.ndarray) -> np.ndarray:
    az, el = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
    return np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1)


# ---------------------------------------------------------------------------------------------------------- SOFA


def _text(value) -> str | None:
    """An HDF5 attribute as text; None when absent or empty (netCDF writes empty strings as h5py.Empty)."""
    if value is None or isinstance(value, h5py.Empty):
        return None
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else ""
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode("utf-8", "replace")
    return str(value).strip() or None


def _variable(f, path: Path, name: str) -> np.ndarray:
    if name not in f:
        raise ValueError(f"{path}: SOFA variable {name!r} is missing (a SimpleFreeFieldHRIR file needs Data.IR, "
                         "Data.SamplingRate and SourcePosition)")
    return np.asarray(f[name][()])


def load_sofa(path: str | os.PathLike) -> HRIRSet:
    """Read a SOFA SimpleFreeFieldHRIR file (any subject, any grid) into an HRIRSet at the file's own rate.

    Data.IR [M, 2, N] (exactly two receivers, left first); a broadband Data.Delay, if present and non-zero, is
    applied as whole-sample shifts. The listener is assumed at the origin looking along +x (the convention's default).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HRTF file {path} does not exist (expected a SOFA SimpleFreeFieldHRIR file)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path} is not a SOFA file: SOFA files are netCDF-4/HDF5, and h5py could not open it "
                         f"({exc})") from None
    with f:
        data_type = _text(f.attrs.get("DataType"))
        if data_type is not None and data_type != "FIR":
            raise ValueError(f"{path}: DataType is {data_type!r}; only FIR impulse responses "
                             "(SimpleFreeFieldHRIR) are supported")
        ir = _variable(f, path, "Data.IR").astype(np.float64)
        if ir.ndim != 3:
            raise ValueError(f"{path}: Data.IR must be [measurements M, receivers R, samples N], got shape {ir.shape}")
        m, r, n = ir.shape
        if r != 2:
            raise ValueError(f"{path}: Data.IR has {r} receivers (shape {ir.shape}); a binaural HRIR set needs "
                             "exactly 2 (receiver 0 = left ear, 1 = right ear)")
        rates = np.unique(_variable(f, path, "Data.SamplingRate").reshape(-1))
        if rates.size != 1 or not rates[0] > 0 or float(rates[0]) != int(rates[0]):
            raise ValueError(f"{path}: Data.SamplingRate must be one positive integer rate in Hz, got {rates.tolist()}")
        positions = _variable(f, path, "SourcePosition").astype(np.float64)
        if positions.ndim != 2 or positions.shape[1] != 3 or positions.shape[0] not in (1, m):
            raise ValueError(f"{path}: SourcePosition must be [M={m}, 3] (or [1, 3]), got shape {positions.shape}")
        positions = np.broadcast_to(positions, (m, 3))
        kind = _text(f["SourcePosition"].attrs.get("Type"))
        units = (_text(f["SourcePosition"].attrs.get("Units")) or "").lower()
        if kind is None:
            raise ValueError(f"{path}: SourcePosition has no 'Type' attribute (allowed: 'spherical', 'cartesian')")
        if kind.lower() == "spherical":
            az, el, dist = positions.T
            if "rad" in units:  # the standard says degrees; tolerate files that say otherwise explicitly
                az, el = np.rad2deg(az), np.rad2deg(el)
        elif kind.lower() == "cartesian":
            x, y, z = positions.T
            az = np.rad2deg(np.arctan2(y, x))
            el = np.rad2deg(np.arctan2(z, np.hypot(x, y)))
            dist = np.sqrt(x**2 + y**2 + z**2)
        else:
            raise ValueError(f"{path}: SourcePosition Type is {kind!r}; allowed: 'spherical', 'cartesian'")
        if "Data.Delay" in f:
            ir = _apply_delays(ir, np.asarray(f["Data.Delay"][()], dtype=np.float64), path)
        names = (_text(f.attrs.get(a)) for a in ("DatabaseName", "ListenerShortName"))
        title = _text(f.attrs.get("Title")) or " ".join(n for n in names if n)
    source = f"{title} (SOFA file {path})" if title else f"SOFA file {path}"
    return HRIRSet(az, el, dist, ir.astype(np.float32), int(rates[0]), source)


def _apply_delays(ir: np.ndarray, delay: np.ndarray, path: Path) -> np.ndarray:
    """[M, 2, N] IRs and a SOFA Data.Delay ([1 or M, 2], samples) -> IRs with the delays built in."""
    m, r, n = ir.shape
    try:
        delay = np.broadcast_to(delay, (m, r))
    except ValueError:
        raise ValueError(f"{path}: Data.Delay has shape {delay.shape}; expected [1, 2] or [{m}, 2]") from None
    shifts = np.rint(delay).astype(int)  # sub-sample delays are rounded: HRIR sets rarely use them
    if not shifts.any():
        return ir
    if (shifts < 0).any():
        raise ValueError(f"{path}: Data.Delay has negative delays; only delays >= 0 samples are allowed")
    out = np.zeros((m, r, n + int(shifts.max())), dtype=ir.dtype)
    for i in range(m):
        for ch in range(r):
            out[i, ch, shifts[i, ch]: shifts[i, ch] + n] = ir[i, ch]
    return out


# --------------------------------------------------------------------------------------------------------- KEMAR


class _SlabRecord:
    """Stands in for slab's HRTF and Filter classes: keeps the pickled attributes and runs none of slab's code."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{_SLAB_MEMBER}: unexpected object state of type {type(state).__name__}")
        self.__dict__.update(state)


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2 has no numpy._core
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _SlabUnpickler(pickle.Unpickler):
    """Loads slab's pickled KEMAR set without slab (whose import needs PortAudio) and without running arbitrary code:
    the pickle names only slab.hrtf.HRTF, slab.filter.Filter and what numpy needs to rebuild arrays."""

    def find_class(self, module, name):
        if (module, name) in {("slab.hrtf", "HRTF"), ("slab.filter", "Filter")}:
            return _SlabRecord
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}:
            return _numpy_reconstruct()
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        raise pickle.UnpicklingError(f"{_SLAB_MEMBER}: refusing to load {module}.{name}; only slab's HRTF and "
                                     "Filter records and numpy arrays are allowed")


def _kemar_from_slab_wheel(wheel: Path) -> HRIRSet:
    """The 710-direction KEMAR set at 44.1 kHz from slab's wheel: [710, 2, 512]."""
    try:
        with zipfile.ZipFile(wheel) as z:
            packed = z.read(_SLAB_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise HRTFUnavailableError(f"{wheel}: cannot read {_SLAB_MEMBER} ({exc}); delete the file and retry") from None
    if hashlib.sha256(packed).hexdigest() != _SLAB_MEMBER_SHA256:
        raise HRTFUnavailableError(f"{wheel}: {_SLAB_MEMBER} does not have the expected sha256 "
                                   f"{_SLAB_MEMBER_SHA256}; refusing to unpickle it. Delete the file and retry")
    hrtf = _SlabUnpickler(io.BytesIO(bz2.decompress(packed))).load()
    # slab's vertical-polar source table: [710, 3] azimuth deg (counter-clockwise), elevation deg, distance m
    sources = np.asarray(hrtf.sources, dtype=np.float64)
    ir = np.stack([np.asarray(flt.data, dtype=np.float32).T for flt in hrtf.data])  # slab keeps [taps, 2]
    rates = {float(hrtf.samplerate)} | {float(flt.samplerate) for flt in hrtf.data}
    if len(rates) != 1 or sources.shape != (ir.shape[0], 3):
        raise HRTFUnavailableError(f"{wheel}: unexpected KEMAR content (rates {rates}, sources {sources.shape}, "
                                   f"responses {ir.shape})")
    return HRIRSet(sources[:, 0], sources[:, 1], sources[:, 2], ir, int(rates.pop()),
                   f"{KEMAR_DESCRIPTION}, from the {SLAB_REQUIREMENT} wheel")


def _download_slab_wheel(cache_dir: Path) -> Path:
    """The slab wheel in cache_dir, fetched with this interpreter's pip if it is not there yet."""
    found = sorted(cache_dir.glob(_SLAB_WHEEL_GLOB))
    if found:
        return found[0]
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Download into a private folder and move the finished wheel in, so concurrent workers never read half a file.
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
               "--disable-pip-version-check", "--quiet", SLAB_REQUIREMENT, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            problem = None if proc.returncode == 0 else (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        except (OSError, subprocess.TimeoutExpired) as exc:
            problem = [str(exc)]
        wheels = sorted(Path(tmp).glob(_SLAB_WHEEL_GLOB))
        if problem is not None or not wheels:
            raise HRTFUnavailableError(
                f"could not obtain the MIT KEMAR HRIRs: `python -m pip download --no-deps {SLAB_REQUIREMENT}` failed"
                f"{': ' + ' | '.join(problem) if problem else ''}. Either give PyPI access once (the set is then "
                f"cached in {cache_dir}), pass your own HRIRs with --hrtf FILE.sofa, or install Debian's libmysofa1 "
                f"(provides {DEBIAN_KEMAR_SOFA})")
        final = cache_dir / wheels[0].name
        os.replace(wheels[0], final)
    return final


def save_npz_atomic(path: Path, **arrays) -> None:
    """np.savez to `path` via a temporary file and os.replace, so readers (other workers) never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_npz(path: Path, *keys: str) -> tuple[np.ndarray, ...] | None:
    """The arrays `keys` of an .npz cache file, or None when it is missing, unreadable or lacks one of them."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return tuple(z[k] for k in keys)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def _save_npz(path: Path, hrirs: HRIRSet) -> None:
    save_npz_atomic(path, format=np.int64(_CACHE_FORMAT), azimuth_deg=hrirs.azimuth_deg,
                    elevation_deg=hrirs.elevation_deg, distance_m=hrirs.distance_m, ir=hrirs.ir,
                    sample_rate=np.int64(hrirs.sample_rate), source=np.array(hrirs.source))


def _load_npz(path: Path) -> HRIRSet | None:
    """The cached set, or None when the file is missing, unreadable or from another cache format."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format"]) != _CACHE_FORMAT:
                return None
            return HRIRSet(z["azimuth_deg"], z["elevation_deg"], z["distance_m"], z["ir"], int(z["sample_rate"]),
                           str(z["source"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def default_cache_dir() -> Path:
    return paths.home() / "data" / "cache" / "hrtf"


def kemar(sample_rate: int = 16000, cache_dir: str | os.PathLike | None = None,
          debian_sofa: str | os.PathLike | None = DEBIAN_KEMAR_SOFA) -> HRIRSet:
    """The MIT KEMAR normal-pinna set (710 directions) at `sample_rate`: [710, 2, ceil(512 * sample_rate / 44100)].

    Taken from Debian's libmysofa1 SOFA file when installed, otherwise from the slab 1.8.2 wheel (downloaded once
    with pip, no root needed). The resampled set is cached as .npz in cache_dir (default
    $BINSWEEP_HOME/data/cache/hrtf), so later calls are fast and offline. `debian_sofa=None` skips the Debian copy.
    """
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate}")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached_path = cache_dir / f"mit_kemar_normal_pinna_{int(sample_rate)}hz.npz"
    cached = _load_npz(cached_path) if cached_path.is_file() else None
    if cached is not None:
        return cached
    if debian_sofa is not None and Path(debian_sofa).is_file():
        full = load_sofa(debian_sofa)
        full = HRIRSet(full.azimuth_deg, full.elevation_deg, full.distance_m, full.ir, full.sample_rate,
                       f"{KEMAR_DESCRIPTION}, from {debian_sofa}")
    else:
        full = _kemar_from_slab_wheel(_download_slab_wheel(cache_dir))
    hrirs = full.resample(int(sample_rate))
    _save_npz(cached_path, hrirs)
    return hrirs


def load_hrtf(path: str | os.PathLike | None, sample_rate: int = 16000) -> HRIRSet:
    """None -> MIT KEMAR; otherwise the SOFA file at `path`, resampled to `sample_rate`."""
    if path is None:
        return kemar(sample_rate)
    return load_sofa(path).resample(sample_rate)
