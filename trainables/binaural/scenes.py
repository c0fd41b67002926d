"""Generated audio-visual scenes for binauralization: an RGB frame, a depth map and binaural audio that agree.

One scene holds 1–3 sound sources in front of the listener, inside the camera's field of view. The listener's head and
the camera share one position and look straight ahead (azimuth 0).

- Sound: each source plays a clip of one family of the generated corpus (`trainables.sounds`: noise, harmonic, chirp,
  clicks, vowel, am_mix). That family is the source's class.
- Audio: every source is convolved with the binaural impulse response of its azimuth and scaled by 1/distance and a
  random level. In the anechoic environment the response is the measured KEMAR HRIR. The reverberant one is the
  lecture hall of `trainables.acoustics.rooms`, with the distance rounded to whole metres, 1–4 m, because the hall
  has room for 4.7 m. The sources are summed and the stereo pair is peak-normalised to 0.9, both ears together, so
  interaural level differences survive. The mono mix the model hears is L + R.
- Image: a pinhole camera with horizontal field of view `hfov_deg` and square pixels. A source at azimuth az and
  radial distance r sits at depth z = r cos(az) and is drawn centred on column W/2 − f·tan(az), where
  f = (W/2) / tan(hfov/2), and on the horizon row H/2, because sources are at ear height (elevation 0). So a source
  on the listener's left (az > 0, counter-clockwise, design.md) appears in the left half of the image. Its size is
  f·object_size_m/z pixels. Shape and colour encode its class (`CLASS_STYLE`). Behind the objects are a wall at
  `wall_distance_m` and a floor below the camera (`camera_height_m`), each with a random colour, a gradient and a
  random texture. Objects are painted far to near, so nearer ones occlude farther ones.
- Depth: [1, H, W] float32 metres, the distance along each pixel's ray. Object pixels hold the source's distance r,
  the wall and the floor their own ray distance.

The same (seed, scene index, split length) always gives the same scene, bit for bit.
Notation: H, W image size; S samples; N sources.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.signal
from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainables import sounds

Environment = Literal["anechoic", "reverberant"]

# Shape and RGB colour of each sound class: saturated colours against a muted room.
CLASS_STYLE: dict[str, tuple[str, tuple[float, float, float]]] = {
    "noise": ("square", (0.55, 0.55, 0.58)),
    "harmonic": ("circle", (0.90, 0.12, 0.10)),
    "chirp": ("triangle", (0.10, 0.80, 0.15)),
    "clicks": ("diamond", (0.12, 0.25, 0.95)),
    "vowel": ("cross", (0.95, 0.80, 0.05)),
    "am_mix": ("ring", (0.05, 0.85, 0.90)),
}
assert set(CLASS_STYLE) == set(sounds.KINDS)

REVERBERANT_DISTANCES_M = (1.0, 2.0, 3.0, 4.0)  # the lecture hall's listener is 4.7 m from the nearest wall


class SceneConfig(BaseModel):
    """How scenes are drawn: the camera, where the sources go, the room, the audio."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: tuple[int, int] = Field((64, 128), description="(H, W) of the frame and the depth map")
    hfov_deg: float = Field(90.0, gt=10.0, lt=170.0, description="camera horizontal field of view")
    max_azimuth_deg: float = Field(40.0, gt=0.0, description="sources at azimuths in [-max, +max]")
    azimuth_step_deg: float = Field(5.0, ge=0.0, description="azimuth grid (KEMAR is measured every 5°); 0 = "
                                    "continuous, rendered with the nearest measured HRIR")
    min_separation_deg: float = Field(10.0, ge=0.0, description="smallest azimuth gap between two sources")
    min_sources: int = Field(1, ge=1)
    max_sources: int = Field(3, ge=1)
    min_distance_m: float = Field(1.0, gt=0.2)
    max_distance_m: float = Field(5.0, gt=0.2)
    object_size_m: float = Field(0.5, gt=0.0, description="width and height of every object")
    wall_distance_m: tuple[float, float] = Field((6.0, 8.0), description="range of the wall's distance ahead")
    camera_height_m: tuple[float, float] = Field((1.2, 1.7), description="range of the camera height above floor")
    level_db: tuple[float, float] = Field((-6.0, 0.0), description="range of each source's level before 1/r")
    classes: tuple[str, ...] = Field(sounds.KINDS, description="sound classes drawn from (trainables.sounds.KINDS)")
    sample_rate: int = Field(16000, gt=0)
    rt60_s: float = Field(0.8, gt=0.05, le=3.0, description="reverberation time of the lecture hall")

    @model_validator(mode="after")
    def _check(self) -> SceneConfig:
        h, w = self.image_size
        if h < 8 or w < 8:
            raise ValueError(f"image_size {self.image_size} is too small; at least 8 × 8")
        if self.max_azimuth_deg >= self.hfov_deg / 2:
            raise ValueError(f"max_azimuth_deg {self.max_azimuth_deg} must be inside the field of view "
                             f"(< hfov_deg / 2 = {self.hfov_deg / 2})")
        if self.min_sources > self.max_sources:
            raise ValueError(f"min_sources {self.min_sources} > max_sources {self.max_sources}")
        if self.min_distance_m > self.max_distance_m:
            raise ValueError(f"min_distance_m {self.min_distance_m} > max_distance_m {self.max_distance_m}")
        if self.wall_distance_m[0] > self.wall_distance_m[1] or self.wall_distance_m[0] <= self.max_distance_m:
            raise ValueError(f"wall_distance_m {self.wall_distance_m} must be an increasing range beyond "
                             f"max_distance_m {self.max_distance_m}")
        unknown = sorted(set(self.classes) - set(sounds.KINDS))
        if unknown or not self.classes:
            raise ValueError(f"classes {unknown or '[]'} unknown; allowed: {', '.join(sounds.KINDS)}")
        if len(self.azimuths()) < self.max_sources and self.azimuth_step_deg:
            raise ValueError(f"{self.max_sources} sources need {self.max_sources} distinct azimuths; the grid of "
                             f"{self.azimuth_step_deg}° within ±{self.max_azimuth_deg}° has {len(self.azimuths())}")
        span = 2 * self.max_azimuth_deg
        if (self.max_sources - 1) * self.min_separation_deg > span:
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
class Source:
    kind: str
    azimuth_deg: float  # counter-clockwise, 0 = ahead, + = listener's left
    distance_m: float  # radial distance from the head / camera
    level_db: float
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # visible pixels: (row0, col0, row1, col1), end exclusive; 0s if hidden


@dataclass
class Scene:
    sources: list[Source]
    image: np.ndarray  # [3, H, W] uint8 RGB
    depth: np.ndarray  # [1, H, W] float32 metres
    waves: dict[str, np.ndarray] = field(default_factory=dict)  # environment -> [2, S] float32, channel 0 = left


class Camera:
    """Pinhole camera at the head, looking along azimuth 0; x right, y up, z forward."""

    def __init__(self, image_size: tuple[int, int], hfov_deg: float):
        self.height, self.width = image_size
        self.focal = (self.width / 2) / math.tan(math.radians(hfov_deg) / 2)  # pixels

    def column(self, azimuth_deg: float) -> float:
        """Continuous image column of the centre of a source at this azimuth (left half for az > 0)."""
        return self.width / 2 - self.focal * math.tan(math.radians(azimuth_deg))

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """Per pixel (dx, dy) with the ray (dx, dy, 1): [H, W] each, through the pixel centres."""
        u = (np.arange(self.width) + 0.5 - self.width / 2) / self.focal
        v = -(np.arange(self.height) + 0.5 - self.height / 2) / self.focal
        return np.meshgrid(u, v)  # dx varies along columns, dy along rows


def draw_sources(cfg: SceneConfig, rng: np.random.Generator) -> list[Source]:
    """1..N sources at distinct azimuths (min separation), uniform distances and levels, classes uniform."""
    n = int(rng.integers(cfg.min_sources, cfg.max_sources + 1))
    grid = cfg.azimuths()
    for _ in range(1000):
        if len(grid):
            az = rng.choice(grid, size=n, replace=False)
        else:
            az = rng.uniform(-cfg.max_azimuth_deg, cfg.max_azimuth_deg, size=n)
        gaps = np.diff(np.sort(az))
        if not len(gaps) or gaps.min() >= cfg.min_separation_deg - 1e-9:
            break
    else:  # pragma: no cover - the validator guarantees the separation fits
        raise RuntimeError("could not place the sources with the requested separation")
    kinds = rng.choice(np.array(cfg.classes), size=n)
    dist = rng.uniform(cfg.min_distance_m, cfg.max_distance_m, size=n)
    level = rng.uniform(*cfg.level_db, size=n)
    return [Source(str(k), float(a), float(d), float(lv)) for k, a, d, lv in zip(kinds, az, dist, level)]


def _shape_mask(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x, y: pixel coordinates relative to the object's centre in half-sizes (y down) -> bool mask."""
    if shape == "square":
        return (np.abs(x) <= 1) & (np.abs(y) <= 1)
    if shape == "circle":
        return x**2 + y**2 <= 1
    if shape == "triangle":  # apex up
        return (y >= -1) & (y <= 1) & (np.abs(x) <= (y + 1) / 2)
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= 1
    if shape == "cross":
        return ((np.abs(x) <= 0.35) & (np.abs(y) <= 1)) | ((np.abs(y) <= 0.35) & (np.abs(x) <= 1))
    if shape == "ring":
        r2 = x**2 + y**2
        return (r2 <= 1) & (r2 >= 0.3)
    raise ValueError(f"unknown shape {shape!r}")


def _texture(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Blocky random texture in [-1, 1]: a coarse noise grid repeated to [h, w]."""
    coarse = rng.uniform(-1, 1, size=(-(-h // cell), -(-w // cell)))
    return np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[:h, :w]


def render_view(cfg: SceneConfig, srcs: list[Source], rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, list[Source]]:
    """The frame [3, H, W] uint8, the depth map [1, H, W] float32 and the sources with their visible boxes."""
    cam = Camera(cfg.image_size, cfg.hfov_deg)
    H, W = cfg.image_size
    dx, dy = cam.rays()
    norm = np.sqrt(dx**2 + dy**2 + 1.0)  # ray length per unit forward depth
    wall_z = rng.uniform(*cfg.wall_distance_m)
    cam_h = rng.uniform(*cfg.camera_height_m)
    with np.errstate(divide="ignore"):
        floor_z = np.where(dy < 0, cam_h / np.maximum(-dy, 1e-12), np.inf)
    is_floor = floor_z < wall_z
    z = np.where(is_floor, floor_z, wall_z)
    depth = (z * norm).astype(np.float32)  # [H, W] metres along the ray

    # Room surfaces: muted random colours, a vertical gradient on the wall, distance shading and tiles on the floor,
    # blocky texture on both.
    def muted():
        c = rng.uniform(0.3, 0.8, 3)
        return 0.5 * c + 0.5 * c.mean()

    wall_rgb, floor_rgb = muted(), muted()
    rows = (np.arange(H) + 0.5)[:, None] / H  # 0 at the top
    wall = wall_rgb[:, None, None] * (1.1 - 0.25 * rows)[None] * np.ones((1, 1, W))
    tiles = (np.floor(dx * z / 0.5) + np.floor(z / 0.5)) % 2  # 0.5 m floor tiles
    shade = np.clip(1.5 / np.maximum(z, 1e-6), 0.4, 1.0)
    floor = floor_rgb[:, None, None] * (0.75 + 0.25 * shade + 0.08 * (tiles - 0.5))[None]
    img = np.where(is_floor[None], floor, wall)
    img = img * (1 + 0.12 * _texture(rng, H, W, max(2, W // 16)))[None] + 0.03 * rng.uniform(-1, 1, (3, H, W))

    # Objects far to near (painter's algorithm), each a flat shape facing the camera at its distance.
    order = sorted(range(len(srcs)), key=lambda i: -srcs[i].distance_m)
    owner = np.full((H, W), -1)
    u = np.arange(W) + 0.5
    v = np.arange(H) + 0.5
    for i in order:
        s = srcs[i]
        shape, rgb = CLASS_STYLE[s.kind]
        zf = s.distance_m * math.cos(math.radians(s.azimuth_deg))
        half = 0.5 * cam.focal * cfg.object_size_m / zf  # half size in pixels
        x = (u[None, :] - cam.column(s.azimuth_deg)) / half
        y = (v[:, None] - H / 2) / half
        mask = _shape_mask(shape, *np.broadcast_arrays(x, y))
        tone = rng.uniform(0.85, 1.0) * (1.08 - 0.16 * (y.clip(-1, 1) + 1) / 2)  # lit from above
        colour = np.asarray(rgb)[:, None, None] * tone[None] * np.ones((1, 1, W))
        img = np.where(mask[None], colour, img)
        depth = np.where(mask, np.float32(s.distance_m), depth)
        owner[mask] = i
    boxed = []
    for i, s in enumerate(srcs):
        r, c = np.nonzero(owner == i)
        box = (int(r.min()), int(c.min()), int(r.max()) + 1, int(c.max()) + 1) if len(r) else (0, 0, 0, 0)
        boxed.append(Source(s.kind, s.azimuth_deg, s.distance_m, s.level_db, box))
    image = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return image, depth[None].astype(np.float32), boxed


class Renderer:
    """Binaural rendering of scenes with the KEMAR HRIRs, anechoic or in the lecture hall (banks built lazily)."""

    def __init__(self, cfg: SceneConfig, hrtf: str | None = None):
        from trainables.acoustics.hrtf import load_hrtf

        self.cfg = cfg
        self.hrirs = load_hrtf(hrtf, cfg.sample_rate)
        self.plane = self.hrirs.horizontal()
        self._reverb: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    def _brir(self, environment: str, azimuth_deg: float, distance_m: float) -> np.ndarray:
        """[2, L] response of a source at this azimuth and distance (direct path at 1 m level)."""
        if environment == "anechoic":
            return self.plane.ir[self.plane.nearest(azimuth_deg, 0.0)]
        if environment != "reverberant":
            raise ValueError(f"unknown environment {environment!r}; allowed anechoic, reverberant")
        from trainables.acoustics.rooms import RoomConfig, brir_bank

        d = min(REVERBERANT_DISTANCES_M, key=lambda x: abs(x - distance_m))
        if d not in self._reverb:
            grid = np.unique(np.round(self.plane.azimuth_deg[np.abs(((self.plane.azimuth_deg + 180) % 360) - 180)
                                                             <= self.cfg.max_azimuth_deg + 5]))
            room = RoomConfig(kind="reverberant", rt60_s=self.cfg.rt60_s, source_distance_m=d,
                              sample_rate=self.cfg.sample_rate)
            self._reverb[d] = (grid, brir_bank(self.hrirs, room, list(grid)))
        grid, bank = self._reverb[d]
        k = int(np.argmin(np.abs(((grid - azimuth_deg + 180) % 360) - 180)))
        return bank[k]

    def render(self, srcs: list[Source], dry: np.ndarray, environment: str) -> np.ndarray:
        """dry [N, S] clips -> [2, S] float32 binaural mix, peak 0.9."""
        S = dry.shape[-1]
        out = np.zeros((2, S))
        for s, clip in zip(srcs, dry):
            ir = self._brir(environment, s.azimuth_deg, s.distance_m)  # [2, L]
            gain = 10 ** (s.level_db / 20) / s.distance_m
            out += gain * scipy.signal.oaconvolve(clip[None].astype(np.float64), ir.astype(np.float64),
                                                  axes=-1)[:, :S]
        peak = np.abs(out).max()
        return (out * (0.9 / peak) if peak > 0 else out).astype(np.float32)


def make_scene(cfg: SceneConfig, renderer: Renderer, seed: int, index: int, n_samples: int,
               environments: tuple[str, ...] = ("anechoic",)) -> Scene:
    """Scene `index` of the dataset seeded `seed`: the same arguments always give the same arrays."""
    rng = np.random.default_rng([seed, index, 7])
    srcs = draw_sources(cfg, rng)
    image, depth, srcs = render_view(cfg, srcs, rng)
    dry = np.stack([sounds.generate_sound(s.kind, n_samples, cfg.sample_rate, rng) for s in srcs])  # [N, S]
    waves = {env: renderer.render(srcs, dry, env) for env in environments}
    return Scene(srcs, image, depth, waves)
