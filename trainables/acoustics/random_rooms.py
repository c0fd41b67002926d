"""Randomised shoebox rooms for localization training (Francl & McDermott, Nature Human Behaviour 2022: a network
trained over many virtual rooms with noise localises in real rooms; one that saw a single room does not).

A room is drawn from a `RoomFamily` (ranges of size, RT60, listener height, source distance) and rendered as a
hybrid BRIR, so that one room of 36 azimuths costs well under a second even at RT60 1.5 s in a 3 m room (where the
full image-source model of `trainables.acoustics.rooms` would need ~50 M image sources):

- Early part, up to the mixing time t_mix = 2 sqrt(V) ms (V in m^3, clamped to 20..80 ms; Polack's estimate of
  when the field becomes diffuse, doubled for margin): every image source (J. B. Allen & D. A. Berkley, JASA 65(4),
  1979) that arrives before t_mix, enumerated directly in numpy, each binned to its nearest measured HRIR direction
  and convolved with that HRIR (`binning`, the recipe of `rooms.py`: frequency-independent walls, integer delays, spreading
  d_direct / d, time relative to the direct sound).
- Late tail, from t_mix: diffuse binaural noise (independent Gaussian noises through the HRIRs of `TAIL_DIRECTIONS`
  random measured directions, so the interaural coherence is that of a diffuse field at the ears, high at low
  frequencies and falling above ~500 Hz) under an exponential envelope of 60 dB per RT60, starting at the early
  part's energy per sample just before t_mix. A late tail is statistically an exponentially decaying Gaussian
  process (Schroeder 1962; Jot & Chaigne 1991), so its detail does not need to be simulated.

The wall absorption follows from the drawn RT60 by Eyring's formula, alpha = 1 - exp(-0.161 V / (S RT60)); the
RT60 recorded for a room is the T30 measured on its rendered BRIR (`rooms.measure_rt60`), not the drawn target.
Banks are cached like the hall's (<cache>/room-<hash>.npz), keyed by the room, the azimuths, the HRIRs and
`ALGORITHM`. Geometry as in `rooms.py`: the listener faces +x, +y is left, azimuth counter-clockwise.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.signal
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.spatial import cKDTree

from trainables.acoustics.binning import render_paths
from trainables.acoustics.hrtf import HRIRSet, load_npz, save_npz_atomic
from trainables.acoustics.rooms import WALL_MARGIN_M, default_cache_dir, measure_rt60

SPEED_OF_SOUND = 343.0  # m/s
ALGORITHM = "ism-early-diffuse-tail-v1"  # bump when the rendering changes, so cached banks are recomputed
TAIL_DIRECTIONS = 32  # measured directions whose HRIRs shape the diffuse tail and the diffuse noise
MIN_SOURCE_DISTANCE_M = 0.5
_MAX_ABSORPTION = 0.95  # Eyring's alpha must stay below 1; rooms needing more are drawn again

Range = tuple[float, float]


def _ordered(name: str, r: Range) -> None:
    if not r[0] <= r[1]:
        raise ValueError(f"{name}={r}: the low end must not exceed the high end")


class RoomFamily(BaseModel):
    """Ranges that shoebox rooms are drawn from (uniformly, each quantity independently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    length_m: Range = Field(description="x extent (the listener faces +x)")
    width_m: Range = Field(description="y extent")
    height_m: Range = Field(description="z extent")
    rt60_s: Range = Field((0.2, 1.5), description="drawn reverberation time; Eyring's absorption gives it")
    listener_height_m: Range = Field((1.0, 1.8), description="ear height: seated to standing")
    source_distance_m: Range = Field((0.5, 3.0), description="capped where the room is too small for it")

    @model_validator(mode="after")
    def _check(self) -> RoomFamily:
        for name in type(self).model_fields:
            _ordered(name, getattr(self, name))
        if min(self.length_m[0], self.width_m[0]) < 2 * (WALL_MARGIN_M + MIN_SOURCE_DISTANCE_M):
            raise ValueError(f"length_m and width_m must start at {2 * (WALL_MARGIN_M + MIN_SOURCE_DISTANCE_M)} m or "
                             f"more: a source {MIN_SOURCE_DISTANCE_M} m away must fit {WALL_MARGIN_M} m inside the walls")
        if self.height_m[0] < self.listener_height_m[0] + WALL_MARGIN_M:
            raise ValueError(f"height_m={self.height_m} must leave {WALL_MARGIN_M} m above the lowest listener height "
                             f"{self.listener_height_m[0]} m")
        if self.rt60_s[0] <= 0.05 or self.source_distance_m[0] < MIN_SOURCE_DISTANCE_M:
            raise ValueError(f"rt60_s must be above 0.05 s and source_distance_m at least {MIN_SOURCE_DISTANCE_M} m")
        return self


# Training rooms: small to medium (offices, living rooms, classrooms; V 20..280 m^3). The held-out family is larger
# in every dimension (V 390..1900 m^3: halls, churches, lobbies), so no held-out room could have been drawn for
# training; RT60 ranges overlap (both 0.2..1.5 s), so the test is of room geometry and direct-to-reverberant ratio.
TRAIN_FAMILY = RoomFamily(length_m=(3.0, 8.0), width_m=(3.0, 10.0), height_m=(2.4, 3.5))
HELDOUT_FAMILY = RoomFamily(length_m=(9.0, 16.0), width_m=(11.0, 20.0), height_m=(3.6, 6.0))


class DrawnRoom(BaseModel):
    """One drawn room: everything its BRIR bank depends on (and what the dataset manifest records)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    family: str
    size_m: tuple[float, float, float]
    listener_m: tuple[float, float, float]
    source_distance_m: float
    rt60_target_s: float
    absorption: float = Field(gt=0.0, lt=1.0, description="energy absorption of every wall (Eyring, from the target)")
    seed: int = Field(description="seed of the tail's noise")

    @property
    def volume(self) -> float:
        return math.prod(self.size_m)

    @property
    def mixing_time_s(self) -> float:
        return min(max(2e-3 * math.sqrt(self.volume), 0.02), 0.08)


def eyring_absorption(size: Sequence[float], rt60_s: float) -> float:
    """Wall energy absorption giving rt60_s by Eyring's formula RT60 = 0.161 V / (-S ln(1 - alpha))."""
    x, y, z = size
    surface = 2 * (x * y + x * z + y * z)
    return 1.0 - math.exp(-24 * math.log(10) / SPEED_OF_SOUND * x * y * z / (surface * rt60_s))


def draw_rooms(family: RoomFamily, n: int, prefix: str, family_name: str, seed: int) -> list[DrawnRoom]:
    """n rooms named <prefix>-000, ...; the same (family, n, prefix, seed) always gives the same rooms."""
    rooms, k = [], 0
    rng = np.random.default_rng([seed, int.from_bytes(prefix.encode()[:8].ljust(8, b"\0"), "little")])
    while len(rooms) < n:
        size = (rng.uniform(*family.length_m), rng.uniform(*family.width_m), rng.uniform(*family.height_m))
        rt60 = rng.uniform(*family.rt60_s)
        alpha = eyring_absorption(size, rt60)
        room_for_source = MIN_SOURCE_DISTANCE_M + WALL_MARGIN_M  # listener x, y leave a 0.5 m circle inside
        head_xy = [rng.uniform(room_for_source, s - room_for_source) for s in size[:2]]
        ear = rng.uniform(family.listener_height_m[0], min(family.listener_height_m[1], size[2] - WALL_MARGIN_M))
        fits = min(head_xy[0], size[0] - head_xy[0], head_xy[1], size[1] - head_xy[1]) - WALL_MARGIN_M
        distance = rng.uniform(family.source_distance_m[0], min(family.source_distance_m[1], fits))
        k += 1
        if alpha >= _MAX_ABSORPTION:  # a short RT60 in a large room would need walls of felt: draw again
            if k > 100 * (n + 1):
                raise ValueError(f"{family_name} rooms: RT60 {family.rt60_s} s is too short for these sizes")
            continue
        rooms.append(DrawnRoom(name=f"{prefix}-{len(rooms):03d}", family=family_name,
                               size_m=tuple(round(v, 3) for v in size), listener_m=(*(round(v, 3) for v in head_xy),
                                                                                     round(ear, 3)),
                               source_distance_m=round(distance, 3), rt60_target_s=round(rt60, 3),
                               absorption=alpha, seed=int(rng.integers(2**31))))
    return rooms


# ------------------------------------------------------------------------------------------------- early part


def image_sources(size: Sequence[float], source: Sequence[float], listener: Sequence[float], max_distance: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Every image of `source` in a shoebox within max_distance of the listener (Allen & Berkley 1979).

    Along an axis of length L with the source at s, images sit at (1 - 2q) s + 2 n L (q in {0, 1}, n integer)
    after |2n - q| reflections. Returns ([K, 3] vectors from the listener, [K] total reflection orders).
    """
    axes = []
    for length, s, r in zip(size, source, listener):
        n = np.arange(-math.ceil(max_distance / (2 * length)) - 1, math.ceil(max_distance / (2 * length)) + 2)
        pos = np.concatenate([s + 2 * n * length, -s + 2 * n * length]) - r
        order = np.concatenate([np.abs(2 * n), np.abs(2 * n - 1)])
        keep = np.abs(pos) <= max_distance
        axes.append((pos[keep], order[keep]))
    (x, ox), (y, oy), (z, oz) = axes
    vec = np.stack(np.meshgrid(x, y, z, indexing="ij"), axis=-1).reshape(-1, 3)
    order = (ox[:, None, None] + oy[None, :, None] + oz[None, None, :]).reshape(-1)
    keep = np.linalg.norm(vec, axis=1) <= max_distance
    return vec[keep], order[keep]


def _early(room: DrawnRoom, azimuth_deg: float, hrirs: HRIRSet, tree: cKDTree, sample_rate: int) -> np.ndarray:
    """[2, n_mix + taps - 1]: every path arriving before the mixing time, through its nearest HRIR."""
    n_mix = math.ceil(room.mixing_time_s * sample_rate)
    d0, az = room.source_distance_m, math.radians(azimuth_deg)
    head = np.asarray(room.listener_m)
    source = head + d0 * np.array([math.cos(az), math.sin(az), 0.0])
    vec, order = image_sources(room.size_m, source, head, d0 + SPEED_OF_SOUND * n_mix / sample_rate)
    dist = np.linalg.norm(vec, axis=1)
    delay = np.rint((dist - d0) / SPEED_OF_SOUND * sample_rate).astype(np.int64)
    keep = delay < n_mix
    vec, dist, delay, order = vec[keep], dist[keep], delay[keep], order[keep]
    gains = d0 / dist * math.sqrt(1.0 - room.absorption) ** order
    return render_paths(hrirs, tree, vec / dist[:, None], delay, gains, n_mix)


def diffuse_noise(hrirs: HRIRSet, n: int, rng: np.random.Generator, directions: int = TAIL_DIRECTIONS
                  ) -> np.ndarray:
    """[2, n] spatially diffuse binaural noise with mean energy 1 per sample (both ears together): independent
    Gaussian noises arriving from `directions` random measured directions."""
    dirs = rng.choice(len(hrirs), size=min(directions, len(hrirs)), replace=False)
    noise = rng.standard_normal((dirs.size, 1, n + hrirs.taps - 1))
    out = scipy.signal.fftconvolve(noise, hrirs.ir[dirs].astype(np.float64), axes=-1, mode="valid").sum(axis=0)
    return out / math.sqrt(np.square(out).sum(axis=0).mean())


def render_room(room: DrawnRoom, azimuth_deg: float, hrirs: HRIRSet, tree: cKDTree, length: int,
                rng: np.random.Generator) -> np.ndarray:
    """[2, length] float64 BRIR: image-source early part plus the diffuse exponential tail from t_mix."""
    sr = hrirs.sample_rate
    early = _early(room, azimuth_deg, hrirs, tree, sr)
    n_mix = math.ceil(room.mixing_time_s * sr)
    out = np.zeros((2, max(length, early.shape[1])))
    out[:, : early.shape[1]] = early
    window = max(n_mix // 2, 1)  # level of the early field just before t_mix: energy per sample, both ears
    level = math.sqrt(np.square(early[:, n_mix - window: n_mix]).sum(axis=0).mean())
    t = np.arange(out.shape[1] - n_mix) / sr
    fade = np.minimum(1.0, t / 0.0025)  # 2.5 ms onset so the tail does not click in
    tail = diffuse_noise(hrirs, t.size, rng) * (level * fade * 10.0 ** (-3.0 * t / room.rt60_target_s))
    out[:, n_mix:] += tail
    return out[:, :length]


# ------------------------------------------------------------------------------------------------------ banks


def _cache_key(hrirs: HRIRSet, room: DrawnRoom, azimuths: np.ndarray, keep: int) -> str:
    key = {"algorithm": ALGORITHM, "room": room.model_dump(mode="json", exclude={"name", "family"}),
           "azimuths_deg": [float(a) for a in azimuths], "hrirs": hrirs.fingerprint(), "keep": keep}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def room_bank(hrirs: HRIRSet, room: DrawnRoom, azimuths_deg: Sequence[float], keep_samples: int,
              cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, float]:
    """([A, 2, keep_samples] float32 BRIRs, measured T30 in s) for sources at azimuths_deg in `room`.

    The BRIRs are rendered to the full RT60 (for the T30, measured on every azimuth and both ears together) and
    kept to keep_samples: a clip of n samples convolved and cut to n samples uses only the first n BRIR samples.
    """
    azimuths = np.asarray(azimuths_deg, dtype=np.float64)
    path = Path(cache_dir or default_cache_dir()) / f"room-{_cache_key(hrirs, room, azimuths, keep_samples)}.npz"
    cached = load_npz(path, "brir", "rt60_s")  # None when missing or unreadable: rendered again and overwritten
    if cached is not None and cached[0].shape == (azimuths.size, 2, keep_samples) and cached[1].shape == ():
        return cached[0], float(cached[1])
    sr = hrirs.sample_rate
    length = max(keep_samples, math.ceil(room.rt60_target_s * sr) + hrirs.taps)
    tree = cKDTree(hrirs.unit_vectors())
    rng = np.random.default_rng(room.seed)
    full = np.stack([render_room(room, float(az), hrirs, tree, length, rng) for az in azimuths])
    rt60 = measure_rt60(full, sr)
    bank = full[..., :keep_samples].astype(np.float32)
    save_npz_atomic(path, brir=bank, rt60_s=np.float64(rt60), room=np.array(room.model_dump_json()))
    return bank, rt60
