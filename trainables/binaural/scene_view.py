"""The picture of a generated scene: ray-cast RGB frame and depth map of a shoebox room and the objects in it.

A pinhole camera at the listener's head looks along +x (room coordinates: +y left, +z up; `scenes.Room`). Every pixel's
ray is intersected with the five visible planes of the box (the wall behind the camera is never seen) and with each
object, a flat shape facing the camera (a billboard in the plane x = x_source, `size_m` wide and high) centred at the
source's position; the nearest hit colours the pixel and gives its depth.

- Surfaces are painted by material class (`MATERIALS`): hard plaster, concrete and brick, wood panelling, heavy
  curtains, absorbent foam, tiles, parquet, carpet, acoustic ceiling tiles, and the anechoic chamber's wedges, each
  with its own colour family and a pattern fixed in room coordinates, so the picture tells how reverberant the room is.
- Objects keep the class shapes and colours of `CLASS_STYLE`. Their physical size is drawn independently of their
  distance, so the size in pixels alone does not give the distance (the depth map does, and perspective on the floor).
- Depth: [1, H, W] float32 metres along each pixel's ray (the convention of data.py's `depth` column).

Vectorised numpy: a 64 x 128 frame renders in a few milliseconds.
"""

from __future__ import annotations

import math

import numpy as np

# material -> (energy absorption range, base RGB, pattern). Absorptions are broadband (~500 Hz-1 kHz) textbook values.
MATERIALS: dict[str, tuple[tuple[float, float], tuple[float, float, float], str]] = {
    "plaster": ((0.04, 0.08), (0.86, 0.84, 0.78), "smooth"),
    "concrete": ((0.02, 0.05), (0.62, 0.62, 0.60), "blotches"),
    "brick": ((0.03, 0.06), (0.62, 0.30, 0.22), "bricks"),
    "wood": ((0.08, 0.15), (0.55, 0.38, 0.22), "planks"),
    "curtain": ((0.40, 0.60), (0.45, 0.10, 0.18), "folds"),
    "foam": ((0.65, 0.85), (0.22, 0.22, 0.26), "wedges"),
    "tiles": ((0.02, 0.04), (0.80, 0.80, 0.82), "checker"),
    "parquet": ((0.06, 0.12), (0.62, 0.44, 0.26), "planks_floor"),
    "carpet": ((0.25, 0.40), (0.30, 0.34, 0.48), "speckle"),
    "acoustic_tiles": ((0.55, 0.80), (0.93, 0.93, 0.90), "grid"),
    "chamber_wedges": ((1.0, 1.0), (0.42, 0.48, 0.56), "big_wedges"),
}
WALL_MATERIALS = ("plaster", "concrete", "brick", "wood", "curtain", "foam")
FLOOR_MATERIALS = ("tiles", "parquet", "carpet")
CEILING_MATERIALS = ("plaster", "acoustic_tiles")
CHAMBER = "chamber_wedges"


class Camera:
    """Pinhole camera at the head looking along room +x; image columns grow to the right (room -y), rows downwards."""

    def __init__(self, image_size: tuple[int, int], hfov_deg: float):
        self.height, self.width = image_size
        self.focal = (self.width / 2) / math.tan(math.radians(hfov_deg) / 2)  # pixels

    def column(self, azimuth_deg: float) -> float:
        """Continuous column of a direction at this azimuth (left half of the image for az > 0)."""
        return self.width / 2 - self.focal * math.tan(math.radians(azimuth_deg))

    def project(self, offset: np.ndarray) -> tuple[float, float]:
        """(row, column) of a point at `offset` (room x, y, z from the camera; x > 0)."""
        x, y, z = offset
        return self.height / 2 - self.focal * z / x, self.width / 2 - self.focal * y / x

    def rays(self) -> np.ndarray:
        """[3, H, W] room-frame directions (1, y, z) through the pixel centres (x component 1)."""
        u = (np.arange(self.width) + 0.5 - self.width / 2) / self.focal  # right
        v = (np.arange(self.height) + 0.5 - self.height / 2) / self.focal  # down
        right, down = np.meshgrid(u, v)
        return np.stack([np.ones_like(right), -right, -down])


def _pattern(name: str, a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness factor ~1 of a material at surface coordinates a (horizontal) and b (vertical or depth), metres."""
    if name == "smooth":
        return 1.0 + 0.03 * np.sin(a * 3.1 + rng.uniform(0, 6)) * np.sin(b * 2.3)
    if name == "blotches":
        return 1.0 + 0.08 * np.sin(a * 5.3 + rng.uniform(0, 6)) * np.cos(b * 4.1 + rng.uniform(0, 6))
    if name == "bricks":
        row = np.floor(b / 0.15)
        mortar = ((b % 0.15) < 0.03) | (((a + 0.2 * (row % 2)) % 0.4) < 0.04)
        return np.where(mortar, 1.45, 1.0)
    if name in ("planks", "planks_floor"):
        return 1.0 + 0.18 * (np.floor(a / 0.2) % 2 - 0.5) + 0.05 * np.sin(b * 9.0)
    if name == "folds":
        return 0.8 + 0.35 * np.sin(a * 2 * math.pi / 0.25) ** 2
    if name == "wedges":
        return 0.7 + 0.6 * np.abs(((a / 0.2) % 1) - 0.5) + 0.3 * np.abs(((b / 0.2) % 1) - 0.5)
    if name == "big_wedges":
        return 0.6 + 0.8 * np.abs(((a / 0.4) % 1) - 0.5) * np.abs(((b / 0.4) % 1) - 0.5) * 4
    if name == "checker":
        return np.where((np.floor(a / 0.5) + np.floor(b / 0.5)) % 2 == 0, 1.0, 0.72)
    if name == "speckle":
        return 1.0 + 0.12 * np.sin(a * 37.0) * np.sin(b * 41.0)
    if name == "grid":
        return np.where(((a % 0.6) < 0.04) | ((b % 0.6) < 0.04), 0.65, 1.0)
    raise ValueError(f"unknown pattern {name!r}")


def _shape_mask(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x, y: coordinates relative to the object's centre in half-sizes (x right, y down) -> bool mask."""
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


def render(image_size: tuple[int, int], hfov_deg: float, size_m: tuple[float, float, float],
           camera_m: tuple[float, float, float], materials: tuple[str, ...], objects: list[tuple[str, tuple, np.ndarray,
                                                                                            float]],
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int]]]:
    """Frame [3, H, W] uint8, depth [1, H, W] float32 metres and each object's visible box (row0, col0, row1, col1;
    zeros when hidden).

    materials: six names in the order west, east, south, north, floor, ceiling (shoebox.WALLS).
    objects: (shape, rgb, centre [3] room metres, size_m) each.
    """
    cam = Camera(image_size, hfov_deg)
    H, W = image_size
    d = cam.rays()  # [3, H, W]
    norm = np.linalg.norm(d, axis=0)  # ray length per metre forward
    o = np.asarray(camera_m, dtype=np.float64)
    L = np.asarray(size_m, dtype=np.float64)
    # Ray parameter t (metres forward) to each visible plane; +inf where the ray runs away from it.
    with np.errstate(divide="ignore", invalid="ignore"):
        ty = np.where(d[1] > 0, (L[1] - o[1]) / d[1], np.where(d[1] < 0, -o[1] / d[1], np.inf))
        tz = np.where(d[2] > 0, (L[2] - o[2]) / d[2], np.where(d[2] < 0, -o[2] / d[2], np.inf))
    tx = np.full((H, W), L[0] - o[0])
    t = np.minimum(np.minimum(tx, ty), tz)
    hit = o[:, None, None] + d * t  # [3, H, W] room coordinates of the surface hit
    # Surface index in shoebox.WALLS order: east (1), south (2) / north (3), floor (4) / ceiling (5).
    surface = np.where(t == tx, 1, np.where(t == ty, np.where(d[1] > 0, 3, 2), np.where(d[2] > 0, 5, 4)))
    img = np.zeros((3, H, W))
    light = rng.uniform(0.9, 1.1)
    for k, name in enumerate(materials):
        mask = surface == k
        if k == 0 or not mask.any():
            continue
        _, rgb, pattern = MATERIALS[name]
        base = np.clip(np.asarray(rgb) * rng.uniform(0.9, 1.1, 3), 0, 1)
        # surface coordinates: horizontal along the wall, and height (walls) or forward distance (floor, ceiling)
        a = hit[1] if k == 1 else hit[0]
        b = hit[2] if k in (1, 2, 3) else hit[1]
        shade = {1: 1.0, 2: 0.85, 3: 0.85, 4: 0.75, 5: 1.05}[k] * light
        fade = np.clip(1.15 - 0.03 * t * norm, 0.7, 1.1)  # farther surfaces a little darker
        img = np.where(mask[None], base[:, None, None] * (shade * fade * _pattern(pattern, a, b, rng))[None], img)
    depth = t * norm

    owner = np.full((H, W), -1)
    for i, (shape, rgb, centre, size) in enumerate(objects):
        c = np.asarray(centre, dtype=np.float64)
        t_obj = c[0] - o[0]  # billboard plane x = c[0]: t forward metres for every ray
        p = o[:, None, None] + d * t_obj
        half = size / 2
        x = -(p[1] - c[1]) / half  # image-right is room -y
        y = -(p[2] - c[2]) / half  # image-down is room -z
        mask = _shape_mask(shape, x, y) & (t_obj * norm < depth)
        tone = rng.uniform(0.85, 1.0) * (1.08 - 0.16 * (np.clip(y, -1, 1) + 1) / 2)  # lit from above
        img = np.where(mask[None], np.asarray(rgb)[:, None, None] * tone[None], img)
        depth = np.where(mask, t_obj * norm, depth)
        owner[mask] = i
    boxes = []
    for i in range(len(objects)):
        r, c = np.nonzero(owner == i)
        boxes.append((int(r.min()), int(c.min()), int(r.max()) + 1, int(c.max()) + 1) if len(r) else (0, 0, 0, 0))
    img = img + 0.02 * rng.uniform(-1, 1, (3, H, W))  # sensor noise
    image = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return image, depth[None].astype(np.float32), boxes
