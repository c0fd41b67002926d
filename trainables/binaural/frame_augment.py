"""2.5D Visual Sound's frame pipeline (`data/audioVisual_dataset.py` `process_image`), vectorised over a batch.

2.5D resizes every frame to 480×240 (W×H), takes a random 448×224 crop, and in training multiplies the brightness
and then the colour saturation by factors drawn uniformly from [0.7, 1.3] (PIL `ImageEnhance.Brightness` and
`ImageEnhance.Color`, each `random.random() * 0.6 + 0.7`). binsweep does the resize once, at import
(`stored_size`), and the crop and jitter per batch in the reader. Training crops are random; validation and test
take the centre crop with no jitter, so they are deterministic (2.5D random-crops its validation frames too).

Frames are uint8 [N, 3, H, W] (planar RGB) throughout.
"""

from __future__ import annotations

import numpy as np

RESIZE_HW = (240, 480)  # 2.5D: image.resize((480, 240))
CROP_HW = (224, 448)  # 2.5D: the 448×224 crop the visual net sees
JITTER = (0.7, 1.3)  # brightness and colour factors, uniform
# PIL's RGB -> L conversion (ITU-R 601-2 luma), in its fixed-point form: (R·19595 + G·38470 + B·7471 + 2^15) >> 16.
_LUMA = np.array([19595, 38470, 7471], dtype=np.int32)


def stored_size(crop: tuple[int, int]) -> tuple[int, int]:
    """The size frames are stored at so that `crop` is to it what 224×448 is to 240×480 (2.5D's margins)."""
    h, w = crop
    return round(h * RESIZE_HW[0] / CROP_HW[0]), round(w * RESIZE_HW[1] / CROP_HW[1])


def centre_offsets(n: int, size: tuple[int, int], crop: tuple[int, int]) -> np.ndarray:
    """[n, 2] (row, col) of the centre crop."""
    return np.tile([(size[0] - crop[0]) // 2, (size[1] - crop[1]) // 2], (n, 1))


def random_offsets(rng: np.random.Generator, n: int, size: tuple[int, int], crop: tuple[int, int]) -> np.ndarray:
    """[n, 2] (row, col) uniform over every position where the crop fits (2.5D: randrange(0, offset + 1))."""
    return np.stack([rng.integers(0, size[0] - crop[0] + 1, n), rng.integers(0, size[1] - crop[1] + 1, n)], axis=1)


def crop(frames: np.ndarray, offsets: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """frames [N, 3, H, W], offsets [N, 2] -> [N, 3, h, w] with (h, w) = size."""
    h, w = size
    return np.stack([f[:, r:r + h, c:c + w] for f, (r, c) in zip(frames, offsets)])


def jitter_factors(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(brightness [n], colour [n]) uniform in [0.7, 1.3]."""
    lo, hi = JITTER
    return rng.uniform(lo, hi, n), rng.uniform(lo, hi, n)


def _blend(base: np.ndarray, image: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """PIL Image.blend(base, image, factor) = base + factor · (image − base) in float32, truncated and clipped to
    uint8 (as PIL's C blend does)."""
    out = base + factor[:, None, None, None] * (image - base)
    return np.clip(out, 0, 255).astype(np.uint8)  # float -> uint8 truncates, like PIL's (int) cast


def colour_jitter(frames: np.ndarray, brightness: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """ImageEnhance.Brightness(f).enhance(b) then ImageEnhance.Color(·).enhance(c) per frame; uint8 [N, 3, H, W].

    Brightness blends with black (x · b); colour blends with the frame's own grey version (PIL luma), so c = 0 is
    greyscale and c > 1 over-saturates. Both go back to uint8 in between, as with PIL (the result matches PIL
    bit for bit; tests/test_fairplay_protocol.py).
    """
    b = np.asarray(brightness, np.float32)[:, None, None, None]
    x = np.clip(frames.astype(np.float32) * b, 0, 255).astype(np.uint8)  # blend with black
    grey = (np.einsum("c,nchw->nhw", _LUMA, x.astype(np.int32)) + (1 << 15)) >> 16  # [N, H, W]
    return _blend(grey[:, None].astype(np.float32), x.astype(np.float32), np.asarray(colour, np.float32))
