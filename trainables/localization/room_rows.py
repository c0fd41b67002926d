"""The randomised-room side of a localization build: which rooms, their BRIR banks, and noise and level jitter.

Rooms come from `trainables.acoustics.random_rooms`: `rooms` training rooms (room-000, ...) from TRAIN_FAMILY and
`heldout_rooms` from the disjoint HELDOUT_FAMILY (heldout-000, ...), drawn from the build's seed. Every row of a
build with `snr_db` gets spatially diffuse binaural noise (independent noises through many measured directions) at an
SNR drawn per clip, relative to the clip's power over both ears; `level_jitter_db` then attenuates each clip by a
drawn 0..jitter dB, the same on both ears so interaural level differences survive. The draws of a row depend only
on (seed, sound, environment, azimuth), so the same config gives the same bytes in any shard order.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from trainables.acoustics import random_rooms as rr

PEAK = 0.9  # the builder's peak level of a clip before the level jitter (int16 never clips)
NOISE_SNIPPETS = 16  # diffuse noise drawn once per build; a clip takes one at a random offset


def _stable(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def drawn_rooms(cfg) -> list[rr.DrawnRoom]:
    """The build's training rooms, then its held-out rooms."""
    return (rr.draw_rooms(rr.TRAIN_FAMILY, cfg.rooms, "room", "train", cfg.seed)
            + rr.draw_rooms(rr.HELDOUT_FAMILY, cfg.heldout_rooms, "heldout", "heldout", cfg.seed))


def room_banks(cfg, hrirs, rooms: list[rr.DrawnRoom]) -> tuple[dict[str, np.ndarray], list[dict]]:
    """({room name: [A, 2, n_samples] BRIRs}, the manifest's record of each room with its measured T30)."""
    banks, records = {}, []
    for room in rooms:
        banks[room.name], t30 = rr.room_bank(hrirs, room, list(cfg.azimuths), cfg.n_samples)
        records.append({"name": room.name, "family": room.family, "size_m": list(room.size_m),
                        "listener_m": list(room.listener_m), "source_distance_m": room.source_distance_m,
                        "absorption": round(room.absorption, 4), "rt60_s": round(t30, 3),
                        "rt60_target_s": room.rt60_target_s, "mixing_time_s": round(room.mixing_time_s, 4)})
    return banks, records


def settings(cfg) -> dict:
    """What the manifest records about rooms, noise and jitter (empty for builds without them)."""
    out = {}
    if cfg.rooms:
        out["room_families"] = {"train": rr.TRAIN_FAMILY.model_dump(mode="json"),
                                "heldout": rr.HELDOUT_FAMILY.model_dump(mode="json"),
                                "rendering": rr.ALGORITHM, "rooms_per_sound": cfg.rooms_per_sound}
    if cfg.snr_db is not None or cfg.level_jitter_db:
        out["noise"] = {"snr_db": None if cfg.snr_db is None else list(cfg.snr_db), "kind": "diffuse binaural",
                        "directions": rr.TAIL_DIRECTIONS, "level_jitter_db": cfg.level_jitter_db}
    return out


def assign_rooms(cfg, n_sounds: int, names: list[str]) -> dict[tuple[int, int], list[str]]:
    """(sound index, azimuth) -> the `rooms_per_sound` training rooms it is rendered in (seeded, without repeats)."""
    out = {}
    for i in range(n_sounds):
        for az in cfg.azimuths:
            rng = np.random.default_rng([cfg.seed, 3, i, az])
            out[(i, az)] = sorted(names[k] for k in rng.choice(len(names), cfg.rooms_per_sound, replace=False))
    return out


class Augmenter:
    """Diffuse noise and level jitter for the rows of one build (a no-op when the config asks for neither)."""

    def __init__(self, cfg, hrirs):
        self.cfg = cfg
        self.noise = None
        if cfg.snr_db is not None:
            rng = np.random.default_rng([cfg.seed, 4])
            self.noise = np.stack([rr.diffuse_noise(hrirs, 2 * cfg.n_samples, rng) for _ in range(NOISE_SNIPPETS)])

    @property
    def active(self) -> bool:
        return self.noise is not None or self.cfg.level_jitter_db > 0

    def __call__(self, wet: np.ndarray, sound: int, env: str, az: int) -> np.ndarray:
        """[2, S] clip peak-normalised to PEAK -> the clip with noise at the drawn SNR, at PEAK less the jitter."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, 5, sound, _stable(env), az])
        out = wet
        if self.noise is not None:
            snippet, start = rng.integers(NOISE_SNIPPETS), rng.integers(cfg.n_samples)
            noise = self.noise[snippet, :, start: start + wet.shape[1]]  # energy 1 per sample, both ears together
            snr = rng.uniform(*cfg.snr_db)
            power = np.square(wet).sum(axis=0).mean()
            out = wet + noise * math.sqrt(power / 10 ** (snr / 10))
            out = out * (PEAK / max(np.abs(out).max(), 1e-12))
        if cfg.level_jitter_db:
            out = out * 10 ** (-rng.uniform(0, cfg.level_jitter_db) / 20)
        return out
