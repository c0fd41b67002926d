"""Binaural room impulse responses (BRIRs) for BAST's two environments: anechoic and a simulated lecture hall.

- Anechoic: the measured horizontal-plane HRIR at the nearest measured azimuth (KEMAR: 5 deg steps, so BAST's 10 deg
  azimuths are exact).
- Reverberant: BAST/NI-CNN (Kuang et al. 2022, arXiv:2207.03927; van der Heijden & Mehrkanoon 2022) use a lecture
  hall of 10 m x 14 m with sources 1 m from the listener; the height (4 m) and RT60 (0.8 s) are our assumptions.
  Image-source method (J. B. Allen & D. A. Berkley, JASA 65(4), 1979) in a shoebox with pyroomacoustics
  (R. Scheibler et al., ICASSP 2018), at the full order that holds every path arriving within the RT60 after the
  direct sound (a little above `pra.inverse_sabine`'s order), so the tail is not cut short. Every image source is
  binned to the nearest measured HRIR direction (azimuth and elevation), the impulses of each direction form one
  train, and the trains are FFT-convolved with their HRIRs and summed (`binning`; the recipe measured in
  shared/reference/acoustic_data.md; listener treated as a point, omni source, integer delays, frequency-independent
  walls; KEMAR stops at -40 deg elevation, so steeper floor reflections take the -40 deg responses).
- Reverberation time: Schroeder backward integration (M. R. Schroeder, JASA 37(3), 1965) with the T30 range of
  ISO 3382-2:2008 (-5 to -35 dB) extrapolated to 60 dB. The image-source model decays slower than Sabine's formula
  predicts (with Sabine's absorption the 10 x 14 x 4 m hall gives T30 1.07 s for 0.8 s), so the wall absorption
  is calibrated on a rendered BRIR until its measured T30 matches rt60_s.

Geometry: room coordinates in metres; the listener faces +x with +y to the left and +z up, so a source at azimuth
az (counter-clockwise, 90 = left, design.md) sits at listener + d (cos az, sin az, 0).

Normalisation: each image path gets gain damping * d_direct / d and delay (d - d_direct) / c * fs, i.e. spherical
spreading relative to the direct path and time relative to the direct sound. The direct path therefore equals the
anechoic BRIR sample for sample, and both environments share one level and one onset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pyroomacoustics as pra
import scipy.optimize
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.spatial import cKDTree

from trainables import home as paths
from trainables.acoustics.binning import nearest_directions, render_binned
from trainables.acoustics.hrtf import HRIRSet, load_npz, save_npz_atomic

log = logging.getLogger(__name__)

WALL_MARGIN_M = 0.3  # listener and sources keep this far from every surface (a head is ~0.18 m wide)
_MAX_ABSORPTION = 0.99  # calibration stays below total absorption (sqrt(1 - a) must stay real and non-zero)
MAX_SABINE_ABSORPTION = 0.8  # calibration may move it ~30 % either way and must stay below 1
MAX_IMAGE_SOURCES = 12_000_000  # ~300 bytes each at peak (measured): one BRIR stays under ~4 GB
_ALGORITHM = "ism-binned-v1"  # bump when the rendering changes, so cached banks are recomputed


def _lattice_radius(size: Sequence[float]) -> float:
    """Distance gained per reflection order at worst: image sources up to order N fill the octahedron
    |x|/Lx + |y|/Ly + |z|/Lz <= N, whose inscribed sphere has radius N / sqrt(sum 1/L^2). (pra.inverse_sabine uses
    the larger two-dimensional radius, so its order falls a few short of c * rt60 in 3-D rooms.)"""
    return 1.0 / math.sqrt(sum(1.0 / side**2 for side in size))


def _sabine_absorption(size: Sequence[float], rt60: float, c: float) -> float:
    volume = size[0] * size[1] * size[2]
    surface = 2 * (size[0] * size[1] + size[0] * size[2] + size[1] * size[2])
    return 24 * math.log(10) * volume / (c * surface * rt60)


def _image_order(room: RoomConfig) -> int:
    """First guess of the reflection order whose image lattice holds every path up to c * rt60 beyond the direct
    one; head and source sit off the lattice's centre by up to half the room's diagonal."""
    c = pra.constants.get("c")
    reach = c * room.rt60_s + room.source_distance_m + math.hypot(*room.size_m) / 2
    return math.ceil(reach / _lattice_radius(room.size_m))


class RoomConfig(BaseModel):
    """One acoustic environment: anechoic, or a shoebox room with a listener and sources on a horizontal circle."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["anechoic", "reverberant"]
    size_m: tuple[float, float, float] = Field((10.0, 14.0, 4.0), description="room x, y, z extent in metres")
    rt60_s: float = Field(0.8, gt=0.0, le=5.0, description="target reverberation time (measured T30)")
    listener_m: tuple[float, float, float] = Field((5.0, 9.0, 1.2), description="head centre; it faces +x")
    source_distance_m: float = Field(1.0, gt=0.0, description="source-to-head distance (BAST: 1 m)")
    sample_rate: int = Field(16000, ge=8000, le=192000)

    @model_validator(mode="after")
    def _geometry(self) -> RoomConfig:
        if self.kind == "anechoic":  # no room: the HRIRs are used as measured
            return self
        size, head, m = self.size_m, self.listener_m, WALL_MARGIN_M
        if min(size) <= 2 * m:
            raise ValueError(f"size_m={size}: every side must be longer than {2 * m} m")
        if any(not m <= p <= s - m for p, s in zip(head, size)):
            allowed = ", ".join(f"{ax} in [{m:g}, {s - m:g}]" for ax, s in zip("xyz", size))
            raise ValueError(f"listener_m={head} must lie inside the room size_m={size} with at least {m} m to every "
                             f"wall: allowed {allowed}")
        room_for_sources = min(head[0] - m, size[0] - m - head[0], head[1] - m, size[1] - m - head[1])
        if self.source_distance_m > room_for_sources:
            raise ValueError(f"source_distance_m={self.source_distance_m} puts sources outside the room: the circle "
                             f"around listener_m={head} must stay {m} m inside size_m={size}, so at most "
                             f"{room_for_sources:.2f} m is allowed here")
        c = pra.constants.get("c")
        alpha = _sabine_absorption(size, self.rt60_s, c)
        if alpha >= MAX_SABINE_ABSORPTION:
            raise ValueError(f"rt60_s={self.rt60_s} is too short for a room of size_m={size}: Sabine would need "
                             f"wall absorption {alpha:.2f}; use rt60_s >= "
                             f"{self.rt60_s * alpha / MAX_SABINE_ABSORPTION:.2f} or a smaller room")
        order = _image_order(self)
        images = 4 * order**3 / 3
        if images > MAX_IMAGE_SOURCES:
            raise ValueError(f"rt60_s={self.rt60_s} in size_m={size} needs image sources up to order {order} "
                             f"(~{images / 1e6:.0f}M, more than the {MAX_IMAGE_SOURCES // 10**6}M that keep memory "
                             "bounded); use a shorter rt60_s or a larger room")
        return self

    @property
    def tail_samples(self) -> int:
        """Impulse-train length after the direct sound: the whole RT60."""
        return math.ceil(self.rt60_s * self.sample_rate)


# ------------------------------------------------------------------------------------------------ reverberation time


def measure_rt60(ir: np.ndarray, sample_rate: int, decay_db: float = 30.0) -> float:
    """RT60 in seconds from an impulse response [..., L] (energy summed over leading axes, e.g. both ears).

    Schroeder's backward-integrated energy decay curve, a least-squares line from -5 dB to -(5 + decay_db) dB
    (decay_db=30: T30, ISO 3382-2), extrapolated to a 60 dB decay.
    """
    if not 0 < decay_db <= 60:
        raise ValueError(f"decay_db must be in (0, 60], got {decay_db}")
    ir = np.asarray(ir, dtype=np.float64)
    if ir.ndim == 0 or ir.shape[-1] < 2:
        raise ValueError(f"ir must have shape [..., L] with L >= 2, got {ir.shape}")
    energy = np.square(ir).reshape(-1, ir.shape[-1]).sum(axis=0)
    edc = np.cumsum(energy[::-1])[::-1]
    if not edc[0] > 0:
        raise ValueError("impulse response is all zeros: no decay to measure")
    with np.errstate(divide="ignore"):
        edc_db = 10 * np.log10(edc / edc[0])
    start = int(np.argmax(edc_db <= -5.0))
    below = edc_db <= -5.0 - decay_db
    if not below.any():
        reached = float(edc_db[np.isfinite(edc_db)].min())
        raise ValueError(f"the energy decay curve falls only to {reached:.1f} dB; T{decay_db:g} needs "
                         f"{-5 - decay_db:g} dB (the impulse response does not decay far enough)")
    stop = int(np.argmax(below))
    t = np.arange(start, stop + 1) / sample_rate
    slope = np.polyfit(t, edc_db[start: stop + 1], 1)[0] if stop > start else -np.inf
    if not slope < 0:
        raise ValueError("the energy decay curve does not decay between -5 dB and the end of the fit range")
    return float(-60.0 / slope)


# ------------------------------------------------------------------------------------------------- image sources


class _BinnedPaths:
    """Sound paths from one source to the head that arrive within the RT60 after the direct sound, each assigned
    to its nearest measured HRIR direction.

    delay [K] int samples after the direct sound; spread [K] d_direct / d; order [K] wall reflections;
    used [D] indices of the HRIR directions hit; which [K] position of each path's direction in `used`.
    """

    def __init__(self, room: RoomConfig, azimuth_deg: float, tree: cKDTree):
        c = pra.constants.get("c")
        head = np.array(room.listener_m)
        az = math.radians(azimuth_deg)
        d0 = room.source_distance_m
        source = head + d0 * np.array([math.cos(az), math.sin(az), 0.0])
        reach_needed = d0 + c * room.rt60_s
        alpha = _sabine_absorption(room.size_m, room.rt60_s, c)
        max_order = _image_order(room)
        for _ in range(5):
            vec, order = _image_sources(room, source, alpha, max_order)
            dist = np.linalg.norm(vec, axis=1)
            # Missing images (order > max_order) all lie beyond the nearest image of the highest order computed.
            reach = float(dist[order == max_order].min())
            if reach >= reach_needed:
                break
            max_order += math.ceil((reach_needed - reach) / _lattice_radius(room.size_m)) + 1
        else:
            raise RuntimeError(f"image sources of {room} did not reach {reach_needed:.0f} m")
        delay = np.rint((dist - d0) / c * room.sample_rate).astype(np.int64)
        keep = delay < room.tail_samples
        self.n = room.tail_samples
        self.delay, self.order, self.spread = delay[keep], order[keep], d0 / dist[keep]
        self.used, self.which = nearest_directions(tree, vec[keep] / dist[keep, None])
        self.max_order = max_order

    def render(self, hrirs: HRIRSet, absorption: float) -> np.ndarray:
        """[2, n + taps - 1] float64 BRIR for walls of energy absorption `absorption`."""
        gains = self.spread * np.sqrt(1.0 - absorption) ** self.order
        return render_binned(hrirs, self.used, self.which, self.delay, gains, self.n)


def _image_sources(room: RoomConfig, source: np.ndarray, absorption: float, max_order: int):
    """pyroomacoustics' image sources up to max_order: [N, 3] vectors from the head, [N] reflection orders."""
    shoebox = pra.ShoeBox(list(room.size_m), fs=room.sample_rate, materials=pra.Material(absorption),
                          max_order=max_order, air_absorption=False)
    shoebox.add_source(source)
    shoebox.add_microphone(np.array(room.listener_m))
    shoebox.image_source_model()
    images = shoebox.sources[0]
    order = images.orders.astype(np.int64)
    # With one material on all six walls each reflection scales the amplitude by sqrt(1 - absorption), so the
    # damping of any other absorption follows from the order alone (no second image-source run to calibrate).
    if not np.allclose(images.damping[0], np.sqrt(1.0 - absorption) ** order, rtol=1e-4, atol=1e-7):
        raise RuntimeError("pyroomacoustics' image damping is no longer sqrt(1 - absorption) ** order; "
                           "trainables.acoustics.rooms needs updating for this version")
    return images.images.T.astype(np.float64) - np.array(room.listener_m), order


_ABSORPTION: dict[tuple[str, RoomConfig], float] = {}


def calibrated_absorption(hrirs: HRIRSet, room: RoomConfig) -> float:
    """Wall energy absorption whose rendered BRIR (source straight ahead, both ears) has T30 = room.rt60_s.

    T30 falls as the absorption rises: starting from Sabine's value, a bracket is widened until the error changes
    sign, then Brent's method (scipy.optimize.brentq) solves log(T30 / rt60) = 0 in log(absorption). Only the gains
    change between renderings, not the image sources.
    """
    key = (hrirs.fingerprint(), room)
    if key in _ABSORPTION:
        return _ABSORPTION[key]
    c = pra.constants.get("c")
    reference = _BinnedPaths(room, 0.0, cKDTree(hrirs.unit_vectors()))
    target, top = room.rt60_s, math.log(_MAX_ABSORPTION)
    errors: dict[float, float] = {}  # log(absorption) -> log(T30 / target)

    def log_error(x: float) -> float:
        if x not in errors:
            errors[x] = math.log(measure_rt60(reference.render(hrirs, math.exp(x)), room.sample_rate) / target)
        return errors[x]

    x0 = math.log(_sabine_absorption(room.size_m, target, c))
    y0 = log_error(x0)
    # T30 is roughly proportional to 1 / absorption, so the first step is y0; later steps double.
    step, x = max(abs(y0), 0.05), x0
    while log_error(x) * y0 > 0 and math.log(1e-3) < x < top:
        x0, x = x, min(x + math.copysign(step, y0), top)
        step *= 2
    if log_error(x) * y0 <= 0 and y0 != 0:
        scipy.optimize.brentq(log_error, min(x0, x), max(x0, x), xtol=0.003)
    best = min(errors, key=lambda k: abs(errors[k]))
    if abs(errors[best]) > 0.1:
        raise ValueError(f"could not calibrate the wall absorption of {room}: the simulated decay does not follow "
                         f"the absorption closely enough (best T30 {target * math.exp(errors[best]):.2f} s at "
                         f"absorption {math.exp(best):.3f}); try a less elongated room or another rt60_s")
    log.info("room %s: absorption %.3f gives T30 %.3f s (target %.3f s; Sabine absorption %.3f; order %d; %d tries)",
             room.size_m, math.exp(best), target * math.exp(errors[best]), target,
             _sabine_absorption(room.size_m, target, c), reference.max_order, len(errors))
    _ABSORPTION[key] = math.exp(best)
    return _ABSORPTION[key]


# -------------------------------------------------------------------------------------------------------- BRIRs


def _anechoic_bank(hrirs: HRIRSet, azimuths: np.ndarray) -> np.ndarray:
    plane = hrirs.horizontal()
    return np.stack([plane.ir[plane.nearest(az, 0.0)] for az in azimuths]).astype(np.float32)


def default_cache_dir() -> Path:
    return paths.home() / "data" / "cache" / "brir"


def _cache_key(hrirs: HRIRSet, room: RoomConfig, azimuths: np.ndarray) -> str:
    key = {"algorithm": _ALGORITHM, "pyroomacoustics": pra.__version__, "room": room.model_dump(mode="json"),
           "azimuths_deg": [float(a) for a in azimuths], "hrirs": hrirs.fingerprint()}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def brir_bank(hrirs: HRIRSet, room: RoomConfig, azimuths_deg: Sequence[float],
              cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """[A, 2, L] float32 BRIRs (channel 0 = left) for sources at azimuths_deg in `room`.

    Anechoic: L = hrirs.taps. Reverberant: L = ceil(rt60_s * sample_rate) + taps - 1, cached as
    <cache_dir>/<hash>.npz (default $BINSWEEP_HOME/data/cache/brir), keyed by the room, the azimuths, the HRIR set
    and the algorithm version.
    """
    azimuths = np.asarray(azimuths_deg, dtype=np.float64)
    if azimuths.ndim != 1 or azimuths.size == 0 or not np.isfinite(azimuths).all():
        raise ValueError(f"azimuths_deg must be a non-empty list of finite degrees, got {azimuths_deg!r}")
    if hrirs.sample_rate != room.sample_rate:
        raise ValueError(f"HRIRs are at {hrirs.sample_rate} Hz but the room renders at {room.sample_rate} Hz: "
                         f"pass hrirs.resample({room.sample_rate})")
    if room.kind == "anechoic":
        return _anechoic_bank(hrirs, azimuths)

    path = Path(cache_dir or default_cache_dir()) / f"{_cache_key(hrirs, room, azimuths)}.npz"
    length = room.tail_samples + hrirs.taps - 1
    if path.is_file():
        cached = load_npz(path, "brir")
        if cached is not None and cached[0].shape == (azimuths.size, 2, length) and cached[0].dtype == np.float32:
            return cached[0]
        log.warning("ignoring unreadable BRIR cache %s", path)  # rendered again and overwritten

    absorption = calibrated_absorption(hrirs, room)
    tree = cKDTree(hrirs.unit_vectors())
    bank = np.stack([_BinnedPaths(room, float(az), tree).render(hrirs, absorption) for az in azimuths])
    bank = bank.astype(np.float32)
    save_npz_atomic(path, brir=bank, azimuths_deg=azimuths, absorption=np.float64(absorption),
                    room=np.array(room.model_dump_json()), hrirs=np.array(hrirs.source))
    return bank
