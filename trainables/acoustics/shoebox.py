"""Binaural room impulse responses for sources at arbitrary positions in a shoebox room with one absorption per wall.

The generated audio-visual scenes (`trainables.binaural.scenes`) draw a room, a listener and sources anywhere in it;
this module gives the [2, L] response of each source at the listener's ears, in the same room the picture shows.

- Early part: the image-source method (Allen & Berkley 1979) of pyroomacoustics' ShoeBox with six materials, one
  frequency-independent energy absorption a_w per wall, up to `max_order` reflections. pyroomacoustics gives every
  image its damping prod_w sqrt(1 - a_w)^(hits on w); the path's amplitude is damping / d (spherical spreading in
  absolute metres, so the direct path of a source at r has amplitude 1/r: distance reaches the audio through level
  and through the direct-to-reverberant ratio). Images up to order N are complete inside the sphere of radius
  N * lattice radius (see rooms._lattice_radius), so only paths shorter than that horizon are kept.
- Late part, after the horizon: a statistical tail, as in hybrid ISM / ray-tracing simulators, because the full
  image lattice up to the RT60 needs millions of images. Pseudo-images at uniformly random times and uniformly
  random directions on the sphere carry the energy the image lattice would: the early part's energy rate just
  before the horizon, decaying at 60 dB per Eyring RT60 of this room (area-weighted absorption).
- Binaural rendering as in `rooms` (`binning`): each path is binned to the nearest measured HRIR direction (azimuth and elevation;
  KEMAR stops at -40 deg, so steeper floor paths take the -40 deg responses), impulses of one direction form one train
  (integer delays), and the trains are FFT-convolved with their HRIRs and summed.
- Free field (`anechoic=True`): the direct path only, amplitude 1/r: an anechoic chamber with perfectly absorbing walls.

Geometry: room coordinates in metres, walls at x = 0 (pyroomacoustics "west"), x = Lx ("east"), y = 0 ("south"),
y = Ly ("north"), z = 0 (floor), z = Lz (ceiling). The listener faces +x with +y to the left and +z up (rooms.py).
Time: sample 0 of every response is the moment the nearest source of the call is heard (the shortest direct path),
so the relative onsets of several sources are kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyroomacoustics as pra
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.spatial import cKDTree

from trainables.acoustics.binning import render_paths
from trainables.acoustics.hrtf import HRIRSet
from trainables.acoustics.rooms import WALL_MARGIN_M, _lattice_radius

WALLS = ("west", "east", "south", "north", "floor", "ceiling")  # pyroomacoustics' names, in its order
_TAIL_DENSITY_PER_S = 4000  # pseudo-images per second of late tail: dense enough to sound smooth at 16 kHz
_DECAY_DB = 60.0


class ShoeboxRoom(BaseModel):
    """A shoebox with one energy absorption per wall, and how far the simulation goes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size_m: tuple[float, float, float] = Field(description="x (forward), y (left), z (up) extent in metres")
    absorption: tuple[float, float, float, float, float, float] = Field(
        description="energy absorption of the walls west (x=0), east (x=Lx), south (y=0), north (y=Ly), floor, "
                    "ceiling; each in [0, 1)")
    anechoic: bool = Field(False, description="free field: the direct path only (walls absorb everything)")
    max_order: int = Field(16, ge=0, le=40, description="image-source reflection order (the early part)")
    max_seconds: float = Field(0.6, gt=0.0, le=3.0, description="response length after the first arrival")
    sample_rate: int = Field(16000, ge=8000, le=192000)

    @model_validator(mode="after")
    def _check(self) -> ShoeboxRoom:
        if min(self.size_m) <= 2 * WALL_MARGIN_M:
            raise ValueError(f"size_m={self.size_m}: every side must be longer than {2 * WALL_MARGIN_M} m")
        bad = [f"{w}={a}" for w, a in zip(WALLS, self.absorption) if not 0.0 <= a < 1.0]
        if bad and not self.anechoic:
            raise ValueError(f"absorption {', '.join(bad)} outside [0, 1); use anechoic=True for a free field")
        return self

    @property
    def volume(self) -> float:
        return math.prod(self.size_m)

    def areas(self) -> np.ndarray:
        """[6] wall areas in WALLS order."""
        x, y, z = self.size_m
        return np.array([y * z, y * z, x * z, x * z, x * y, x * y])

    def rt60_eyring(self) -> float:
        """Eyring's reverberation time 0.161 V / (-S ln(1 - a_mean)), a_mean area-weighted; inf without absorption."""
        if self.anechoic:
            return 0.0
        s = self.areas()
        mean = float((s * np.array(self.absorption)).sum() / s.sum())
        return math.inf if mean <= 0 else 0.161 * self.volume / (-s.sum() * math.log(1.0 - mean))

    def horizon_m(self) -> float:
        """Path length up to which the image sources of order <= max_order are complete: the lattice's inscribed
        sphere (max_order * lattice radius) less half the room's diagonal, by which source and listener may sit off
        its centre (as rooms._image_order reasons)."""
        return max(0.0, self.max_order * _lattice_radius(self.size_m) - math.hypot(*self.size_m) / 2)

    def inside(self, point: Sequence[float], margin: float = WALL_MARGIN_M) -> bool:
        return all(margin <= p <= s - margin for p, s in zip(point, self.size_m))


def _paths(room: ShoeboxRoom, listener: np.ndarray, sources: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per source: ([K, 3] vectors from the listener to its images, [K] damping), direct path first."""
    if room.anechoic or room.max_order == 0:
        return [(s[None] - listener, np.ones(1)) for s in sources]
    materials = {w: pra.Material(float(a)) for w, a in zip(WALLS, room.absorption)}
    box = pra.ShoeBox(list(room.size_m), fs=room.sample_rate, materials=materials, max_order=room.max_order,
                      air_absorption=False)
    for s in sources:
        box.add_source(s)
    box.add_microphone(listener)
    box.image_source_model()
    out = []
    for src in box.sources:
        damping = src.damping.reshape(-1, src.images.shape[1])[0]  # frequency-independent walls: one band
        order = np.argsort(src.orders, kind="stable")
        out.append((src.images.T[order].astype(np.float64) - listener, damping[order].astype(np.float64)))
    return out


def _tail(room: ShoeboxRoom, dist: np.ndarray, amp: np.ndarray, d_ref: float, n: int,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Late pseudo-images after the horizon: ([K, 3] unit directions, [K] int delays, [K] amplitudes)."""
    c, fs = pra.constants.get("c"), room.sample_rate
    horizon = room.horizon_m()
    rt60 = room.rt60_eyring()
    start = int(round((horizon - d_ref) / c * fs))
    if not math.isfinite(rt60) or rt60 <= 0 or start >= n:
        return np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros(0)
    # Energy per second of the complete image lattice over the last quarter before the horizon.
    lo = 0.75 * horizon
    window = (dist >= lo) & (dist < horizon)
    rate = float(np.square(amp[window]).sum()) / ((horizon - lo) / c) if window.any() else 0.0
    k = max(1, round(_TAIL_DENSITY_PER_S * (n - start) / fs))
    delay = rng.integers(start, n, size=k)
    t_after = (delay - start) / fs
    decay = 10 ** (-_DECAY_DB / 10 * t_after / rt60)  # energy falls 60 dB per RT60
    a = np.sqrt(rate * decay / _TAIL_DENSITY_PER_S)  # k pulses per (n - start) samples share the energy rate
    v = rng.standard_normal((k, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True), delay, a


def brirs(hrirs: HRIRSet, room: ShoeboxRoom, listener: Sequence[float], sources: Sequence[Sequence[float]],
          seed: int = 0) -> np.ndarray:
    """[N, 2, L] float64 responses (channel 0 = left) of the N sources at the listener's ears.

    L = max_seconds * sample_rate + taps - 1 (anechoic: the longest direct delay + taps). Direct-path amplitude 1/r;
    sample 0 is the arrival of the nearest source. `seed` draws the late tail's pseudo-images.
    """
    if hrirs.sample_rate != room.sample_rate:
        raise ValueError(f"HRIRs are at {hrirs.sample_rate} Hz but the room renders at {room.sample_rate} Hz")
    head = np.asarray(listener, dtype=np.float64)
    pos = np.asarray(sources, dtype=np.float64).reshape(-1, 3)
    for name, p in [("listener", head)] + [(f"source {i}", s) for i, s in enumerate(pos)]:
        if not room.inside(p, margin=0.0):
            raise ValueError(f"{name} at {np.round(p, 3).tolist()} is outside the room size_m={room.size_m}")
    c, fs = pra.constants.get("c"), room.sample_rate
    paths = _paths(room, head, pos)
    direct = np.array([np.linalg.norm(v[0]) for v, _ in paths])
    if direct.min() < 0.05:
        raise ValueError(f"a source is {direct.min():.3f} m from the listener; at least 0.05 m")
    d_ref = float(direct.min())
    if room.anechoic:
        n = int(round((direct.max() - d_ref) / c * fs)) + 1
    else:
        n = int(round(room.max_seconds * fs))
    tree = cKDTree(hrirs.unit_vectors())
    rng = np.random.default_rng([seed, 31])
    out = np.zeros((len(pos), 2, n + hrirs.taps - 1))
    for k, (vec, damping) in enumerate(paths):
        dist = np.linalg.norm(vec, axis=1)
        amp = damping / dist
        delay = np.rint((dist - d_ref) / c * fs).astype(np.int64)
        keep = (delay < n) & ((dist <= room.horizon_m()) | (np.arange(len(dist)) == 0))
        units = vec[keep] / dist[keep, None]
        delays, amps = delay[keep], amp[keep]
        if not room.anechoic:
            tu, td, ta = _tail(room, dist, amp, d_ref, n, rng)
            units, delays, amps = np.concatenate([units, tu]), np.concatenate([delays, td]), np.concatenate([amps, ta])
        out[k] = render_paths(hrirs, tree, units, delays, amps, n)
    return out


def direct_to_reverberant_db(ir: np.ndarray, sample_rate: int, direct_ms: float = 2.5) -> float:
    """DRR of a [2, L] (or [L]) response: energy within ±direct_ms of its strongest sample over the rest, in dB."""
    e = np.square(np.asarray(ir, dtype=np.float64)).reshape(-1, np.shape(ir)[-1]).sum(axis=0)
    peak = int(np.argmax(e))
    w = max(1, int(round(direct_ms / 1000 * sample_rate)))
    direct = e[max(0, peak - w): peak + w + 1].sum()
    rest = e.sum() - direct
    return math.inf if rest <= 0 else 10 * math.log10(direct / rest)
