"""Generated audio-visual scenes for binauralization: one room geometry for the picture, the depth map and the sound.

Each scene is a shoebox room with a camera/listener and 1–3 sound sources inside it, in the camera's field of view:

- Room (`draw_room`): length (forward, +x), width and height drawn from ranges; the listener's head, which is also the
  camera, stands near the back wall at a drawn ear height and faces +x (+y left, +z up; trainables.acoustics.rooms).
  Reverberant rooms get one material per surface (`scene_view.MATERIALS`: hard plaster, concrete, brick, wood,
  curtain, foam on the four walls; tiles, parquet, carpet on the floor; plaster or acoustic tiles above), each with
  an energy absorption drawn from its class's range, so reverberation time varies with what the picture shows.
  Anechoic scenes are drawn as an anechoic chamber: the same kind of box lined everywhere with wedge foam
  (`chamber_wedges`, drawn nowhere else) whose walls absorb everything, so the audio is the free-field direct path.
- Sources (`draw_sources`): a class (the family of the generated sound corpus, `trainables.sounds`), an azimuth
  within ±max_azimuth_deg (distinct, min_separation_deg apart), an elevation from the object's height against the ear
  height (within ±max_elevation_deg, inside the vertical field of view), a horizontal distance from min_distance_m
  up to the wall behind it less a margin, a level, and a physical size (object_size_m, drawn independently of the
  distance, so the size in pixels does not tell the distance on its own).
- Picture (`scene_view.render`): the RGB frame and the depth map [1, H, W] float32 metres along each ray, ray-cast
  through that room and camera; each source is a flat shape facing the camera at its position, its class's shape and
  colour (`CLASS_STYLE`).
- Sound (`Renderer`): the image-source method in the same room with the per-wall absorption and KEMAR at the
  listener (`trainables.acoustics.shoebox`), each source at its drawn 3-D position: the direct path has amplitude
  1/r and the reverberation depends on the room, so distance reaches the audio through level and direct-to-
  reverberant ratio. Each source's clip is convolved with its response, scaled by its level and summed; then one gain
  for the whole binaural pair brings its peak to 0.9, so level relations between sources, between the ears and
  between direct sound and reverberation are kept. The mono mix the model hears is L + R.

The same (seed, scene index, environment) always gives the same scene, bit for bit.
Notation: H, W image size; S samples; N sources.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.signal
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trainables import sounds
from trainables.acoustics.shoebox import WALLS, ShoeboxRoom
from trainables.binaural.scene_view import Camera  # noqa: F401  (re-exported: callers use scenes.Camera)
from trainables.binaural.scene_view import (CEILING_MATERIALS, CHAMBER, FLOOR_MATERIALS, MATERIALS, WALL_MATERIALS,
                                            render)

Environment = Literal["anechoic", "reverberant"]

# Shape and RGB colour of each sound class: saturated colours against muted rooms.
CLASS_STYLE: dict[str, tuple[str, tuple[float, float, float]]] = {
    "noise": ("square", (0.55, 0.55, 0.58)),
    "harmonic": ("circle", (0.90, 0.12, 0.10)),
    "chirp": ("triangle", (0.10, 0.80, 0.15)),
    "clicks": ("diamond", (0.12, 0.25, 0.95)),
    "vowel": ("cross", (0.95, 0.80, 0.05)),
    "am_mix": ("ring", (0.05, 0.85, 0.90)),
}
assert set(CLASS_STYLE) == set(sounds.KINDS)

SOURCE_WALL_MARGIN_M = 0.3  # an object's centre stays this far from the wall behind it (plus half its size)

Range = tuple[float, float]


class SceneConfig(BaseModel):
    """How scenes are drawn: the room, the camera, where the sources go, the audio."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: tuple[int, int] = Field((64, 128), description="(H, W) of the frame and the depth map")
    hfov_deg: float = Field(90.0, gt=10.0, lt=170.0, description="camera horizontal field of view")
    max_azimuth_deg: float = Field(40.0, gt=0.0, description="sources at azimuths in [-max, +max]")
    azimuth_step_deg: float = Field(5.0, ge=0.0, description="azimuth grid (KEMAR is measured every 5°); 0 = "
                                    "continuous, rendered with the nearest measured HRIR")
    min_separation_deg: float = Field(10.0, ge=0.0, description="smallest azimuth gap between two sources")
    max_elevation_deg: float = Field(15.0, ge=0.0, lt=45.0, description="sources within ± this elevation")
    min_sources: int = Field(1, ge=1)
    max_sources: int = Field(3, ge=1)
    min_distance_m: float = Field(0.5, gt=0.2, description="nearest horizontal source distance")
    max_distance_m: float = Field(6.0, gt=0.2, description="farthest horizontal source distance (the room's far "
                                  "wall less a margin may cut it shorter)")
    object_size_m: Range = Field((0.2, 1.0), description="range of an object's width and height, drawn "
                              "independently of its distance (one number: every object that size)")
    room_length_m: Range = Field((4.0, 9.0), description="range of the room's extent ahead (x)")
    room_width_m: Range = Field((3.5, 7.0), description="range of the room's width (y)")
    room_height_m: Range = Field((2.5, 3.5), description="range of the room's height (z)")
    listener_back_m: Range = Field((0.5, 1.5), description="range of the head's distance from the back wall")
    camera_height_m: Range = Field((1.2, 1.7), description="range of the ear / camera height above the floor")
    level_db: Range = Field((-6.0, 0.0), description="range of each source's level (at 1 m)")
    classes: tuple[str, ...] = Field(sounds.KINDS, description="sound classes drawn from (trainables.sounds.KINDS)")
    sample_rate: int = Field(16000, gt=0)
    max_order: int = Field(16, ge=1, le=40, description="image-source order of the early reflections")
    max_rir_seconds: float = Field(0.6, gt=0.05, le=3.0, description="room responses are cut this long")

    @field_validator("object_size_m", mode="before")
    @classmethod
    def _one_size(cls, v):
        return (v, v) if isinstance(v, (int, float)) else v

    @model_validator(mode="after")
    def _check(self) -> SceneConfig:
        h, w = self.image_size
        if h < 8 or w < 8:
            raise ValueError(f"image_size {self.image_size} is too small; at least 8 × 8")
        if self.max_azimuth_deg >= self.hfov_deg / 2:
            raise ValueError(f"max_azimuth_deg {self.max_azimuth_deg} must be inside the field of view "
                             f"(< hfov_deg / 2 = {self.hfov_deg / 2})")
        vfov = math.degrees(math.atan(math.tan(math.radians(self.hfov_deg) / 2) * h / w))
        if self.max_elevation_deg >= vfov:
            raise ValueError(f"max_elevation_deg {self.max_elevation_deg} must be inside the vertical field of view "
                             f"(< {vfov:.1f}° for hfov_deg {self.hfov_deg} and image_size {self.image_size})")
        for name in ("object_size_m", "room_length_m", "room_width_m", "room_height_m", "listener_back_m",
                     "camera_height_m", "level_db"):
            lo, hi = getattr(self, name)
            if lo > hi or (name != "level_db" and lo <= 0):
                raise ValueError(f"{name} {getattr(self, name)} must be an increasing range of positive values")
        if self.camera_height_m[1] >= self.room_height_m[0] - 0.3:
            raise ValueError(f"camera_height_m {self.camera_height_m} must stay 0.3 m below the lowest ceiling "
                             f"(room_height_m {self.room_height_m})")
        reach = self.room_length_m[0] - self.listener_back_m[1] - SOURCE_WALL_MARGIN_M - self.object_size_m[1] / 2
        if self.min_distance_m > min(self.max_distance_m, reach):
            raise ValueError(f"min_distance_m {self.min_distance_m} leaves no room for sources: at most "
                             f"{min(self.max_distance_m, reach):.2f} m (max_distance_m, or the shortest room_length_m "
                             "less listener_back_m, the wall margin and half the largest object)")
        if self.min_sources > self.max_sources:
            raise ValueError(f"min_sources {self.min_sources} > max_sources {self.max_sources}")
        unknown = sorted(set(self.classes) - set(sounds.KINDS))
        if unknown or not self.classes:
            raise ValueError(f"classes {unknown or '[]'} unknown; allowed: {', '.join(sounds.KINDS)}")
        if len(self.azimuths()) < self.max_sources and self.azimuth_step_deg:
            raise ValueError(f"{self.max_sources} sources need {self.max_sources} distinct azimuths; the grid of "
                             f"{self.azimuth_step_deg}° within ±{self.max_azimuth_deg}° has {len(self.azimuths())}")
        if (self.max_sources - 1) * self.min_separation_deg > 2 * self.max_azimuth_deg:
            raise ValueError(f"{self.max_sources} sources {self.min_separation_deg}° apart do not fit in ±"
                             f"{self.max_azimuth_deg}°")
        return self

    def azimuths(self) -> np.ndarray:
        """The azimuth grid (degrees) when azimuth_step_deg > 0."""
        step = self.azimuth_step_deg
        if not step:
            return np.zeros(0)
        k = math.floor(self.max_azimuth_deg / step + 1e-9)
        return np.arange(-k, k + 1) * step


@dataclass(frozen=True)
class Room:
    """A scene's room: box size, the head (= camera) position and the six surfaces (shoebox.WALLS order)."""

    environment: str  # anechoic | reverberant
    size_m: tuple[float, float, float]
    listener_m: tuple[float, float, float]
    materials: tuple[str, ...]
    absorption: tuple[float, ...]

    def acoustics(self, cfg: SceneConfig) -> ShoeboxRoom:
        return ShoeboxRoom(size_m=self.size_m, absorption=self.absorption, anechoic=self.environment == "anechoic",
                           max_order=cfg.max_order, max_seconds=cfg.max_rir_seconds, sample_rate=cfg.sample_rate)

    def position(self, azimuth_deg: float, elevation_deg: float, distance_m: float) -> np.ndarray:
        """Room coordinates [3] of a point at this direction and radial distance from the head."""
        az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
        return np.asarray(self.listener_m) + distance_m * np.array(
            [math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])

    def summary(self, cfg: SceneConfig) -> dict:
        """JSON-ready parameters (what the dataset manifest records per scene)."""
        return {"environment": self.environment, "size_m": [round(v, 3) for v in self.size_m],
                "listener_m": [round(v, 3) for v in self.listener_m], "materials": dict(zip(WALLS, self.materials)),
                "absorption": [round(v, 3) for v in self.absorption],
                "rt60_eyring_s": round(self.acoustics(cfg).rt60_eyring(), 3)}


@dataclass(frozen=True)
class Source:
    kind: str
    azimuth_deg: float  # counter-clockwise, 0 = ahead, + = listener's left
    distance_m: float  # radial distance from the head / camera
    level_db: float
    elevation_deg: float = 0.0  # + = above ear height
    size_m: float = 0.5  # the object's width and height
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # visible pixels (row0, col0, row1, col1), end exclusive; 0s: hidden


@dataclass
class Scene:
    room: Room
    sources: list[Source]
    image: np.ndarray  # [3, H, W] uint8 RGB
    depth: np.ndarray  # [1, H, W] float32 metres
    wave: np.ndarray = field(default_factory=lambda: np.zeros((2, 0), np.float32))  # [2, S], channel 0 = left


def draw_room(cfg: SceneConfig, environment: str, rng: np.random.Generator) -> Room:
    if environment not in ("anechoic", "reverberant"):
        raise ValueError(f"unknown environment {environment!r}; allowed anechoic, reverberant")
    size = (rng.uniform(*cfg.room_length_m), rng.uniform(*cfg.room_width_m), rng.uniform(*cfg.room_height_m))
    head = (rng.uniform(*cfg.listener_back_m), size[1] / 2 + rng.uniform(-0.2, 0.2) * size[1],
            rng.uniform(*cfg.camera_height_m))
    if environment == "anechoic":
        materials = (CHAMBER,) * 6
    else:
        materials = tuple(str(m) for m in rng.choice(WALL_MATERIALS, 4)) + (
            str(rng.choice(FLOOR_MATERIALS)), str(rng.choice(CEILING_MATERIALS)))
    absorption = tuple(float(rng.uniform(*MATERIALS[m][0])) for m in materials)
    return Room(environment, tuple(map(float, size)), tuple(map(float, head)), materials, absorption)


def _reach(room: Room, azimuth_deg: float) -> float:
    """Horizontal distance from the head to the walls along this azimuth."""
    az = math.radians(azimuth_deg)
    (lx, ly, _), (x, y, _) = room.size_m, room.listener_m
    c, s = math.cos(az), math.sin(az)
    return min((lx - x) / c, (ly - y) / s if s > 1e-9 else math.inf, -y / s if s < -1e-9 else math.inf)


def draw_sources(cfg: SceneConfig, room: Room, rng: np.random.Generator) -> list[Source]:
    """1..N sources at distinct azimuths (min separation), inside the room and the view; see the module docstring."""
    n = int(rng.integers(cfg.min_sources, cfg.max_sources + 1))
    grid = cfg.azimuths()
    for _ in range(1000):
        az = (rng.choice(grid, size=n, replace=False) if len(grid)
              else rng.uniform(-cfg.max_azimuth_deg, cfg.max_azimuth_deg, size=n))
        gaps = np.diff(np.sort(az))
        if not len(gaps) or gaps.min() >= cfg.min_separation_deg - 1e-9:
            break
    else:  # pragma: no cover - the validator guarantees the separation fits
        raise RuntimeError("could not place the sources with the requested separation")
    out = []
    ear, top = room.listener_m[2], room.size_m[2]
    for a in az:
        kind = str(rng.choice(np.array(cfg.classes)))
        size = float(rng.uniform(*cfg.object_size_m))
        far = min(cfg.max_distance_m, _reach(room, float(a)) - SOURCE_WALL_MARGIN_M - size / 2)
        rho = float(rng.uniform(cfg.min_distance_m, max(cfg.min_distance_m, far)))  # horizontal distance
        # Elevation: uniform within the limit, narrowed so the object's centre stays between floor and ceiling.
        lim = math.radians(cfg.max_elevation_deg)
        lo = max(-lim, math.atan2(min(size / 2, 0.3) - ear, rho))
        hi = min(lim, math.atan2(top - 0.3 - ear, rho))
        el = float(rng.uniform(lo, hi))
        out.append(Source(kind, float(a), rho / math.cos(el), float(rng.uniform(*cfg.level_db)),
                          math.degrees(el), size))
    return out


def render_view(cfg: SceneConfig, room: Room, srcs: list[Source], rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, list[Source]]:
    """The frame [3, H, W] uint8, the depth map [1, H, W] float32 and the sources with their visible boxes."""
    objects = [(*CLASS_STYLE[s.kind], room.position(s.azimuth_deg, s.elevation_deg, s.distance_m), s.size_m)
               for s in srcs]
    # Far to near, so the colour draw order (and thus the bytes) does not depend on the list order.
    order = sorted(range(len(srcs)), key=lambda i: -srcs[i].distance_m)
    image, depth, boxes = render(cfg.image_size, cfg.hfov_deg, room.size_m, room.listener_m, room.materials,
                                 [objects[i] for i in order], rng)
    box_of = {i: b for i, b in zip(order, boxes)}
    return image, depth, [Source(s.kind, s.azimuth_deg, s.distance_m, s.level_db, s.elevation_deg, s.size_m,
                                 box_of[i]) for i, s in enumerate(srcs)]


class Renderer:
    """Binaural rendering of scenes in their own rooms with KEMAR (or a SOFA file) at the listener."""

    def __init__(self, cfg: SceneConfig, hrtf: str | None = None):
        from trainables.acoustics.hrtf import load_hrtf

        self.cfg = cfg
        self.hrirs = load_hrtf(hrtf, cfg.sample_rate)

    def responses(self, room: Room, srcs: list[Source], seed: int = 0) -> np.ndarray:
        """[N, 2, L] responses of the sources at the ears (direct path amplitude 1/r), sample 0 = first arrival."""
        from trainables.acoustics.shoebox import brirs

        positions = [room.position(s.azimuth_deg, s.elevation_deg, s.distance_m) for s in srcs]
        return brirs(self.hrirs, room.acoustics(self.cfg), room.listener_m, positions, seed)

    def render(self, room: Room, srcs: list[Source], dry: np.ndarray, seed: int = 0) -> np.ndarray:
        """dry [N, S] clips -> [2, S] float32 binaural mix; one gain for the pair brings the peak to 0.9."""
        S = dry.shape[-1]
        out = np.zeros((2, S))
        for s, clip, ir in zip(srcs, dry, self.responses(room, srcs, seed)):
            out += 10 ** (s.level_db / 20) * scipy.signal.oaconvolve(clip[None].astype(np.float64), ir,
                                                                     axes=-1)[:, :S]
        peak = np.abs(out).max()
        return (out * (0.9 / peak) if peak > 0 else out).astype(np.float32)


def scene_environment(seed: int, index: int, environments: tuple[str, ...], reverberant_fraction: float) -> str:
    """The environment of scene `index`: the only one listed, or reverberant with probability reverberant_fraction."""
    if len(environments) == 1:
        return environments[0]
    return "reverberant" if np.random.default_rng([seed, index, 13]).uniform() < reverberant_fraction else "anechoic"


def scene_room(cfg: SceneConfig, seed: int, index: int, environment: str) -> Room:
    """The room of scene `index` alone (cheap: what make_scene draws first)."""
    return draw_room(cfg, environment, np.random.default_rng([seed, index, 7]))


def make_scene(cfg: SceneConfig, renderer: Renderer, seed: int, index: int, n_samples: int,
               environment: str = "anechoic") -> Scene:
    """Scene `index` of the dataset seeded `seed`: the same arguments always give the same arrays."""
    rng = np.random.default_rng([seed, index, 7])
    room = draw_room(cfg, environment, rng)
    srcs = draw_sources(cfg, room, rng)
    image, depth, srcs = render_view(cfg, room, srcs, rng)
    dry = np.stack([sounds.generate_sound(s.kind, n_samples, cfg.sample_rate, rng) for s in srcs])  # [N, S]
    wave = renderer.render(room, srcs, dry, seed=int(rng.integers(2**31)))
    return Scene(room, srcs, image, depth, wave)
