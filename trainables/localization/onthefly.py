"""On-the-fly binaural rendering on the training device.

The dry sounds and BRIR banks that a build keeps in `dry/` are loaded once onto the device; every batch draws a
random sound, azimuth, environment and gain (and optional noise at a given SNR) and convolves on the device with
FFTs (torchaudio.functional.fftconvolve). A few hundred MB of dry audio thus give millions of distinct samples.
All random draws come from one CPU `torch.Generator`, so the same seed gives the same batch on any device.
The held-out room family of a randomised-room build (heldout-*) is never drawn unless `environments` names it.
"""

from __future__ import annotations

import fnmatch
import io
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

from trainables import datastore
from trainables.localization.reader import match_environments


class OnTheFlyRenderer:
    """Draws rendered batches: {"wave": [B, 2, S], "azimuth": [B] int64 degrees, "environment": [B] int64 (an
    index into `self.environments`)}. `environments`: names or patterns (room-*) to draw from."""

    def __init__(self, root: str | Path, device: str | torch.device = "cpu", sounds_split: str = "trainval",
                 gain_db: tuple[float, float] = (-6.0, 6.0), snr_db: float | tuple[float, float] | None = None,
                 n_samples: int | None = None, environments: list[str] | tuple[str, ...] | None = None):
        dry, brirs = datastore.join(root, "dry", "sounds.parquet"), datastore.join(root, "dry", "brirs.npz")
        for f in (dry, brirs):
            if not datastore.is_file(f):
                raise FileNotFoundError(f"{f} not found: on-the-fly rendering needs a dataset built by "
                                        f"`binsweep data localization`")
        if sounds_split not in ("trainval", "test"):
            raise ValueError(f"sounds_split must be trainval or test, got {sounds_split!r}")
        table = datastore.read_table(dry)
        keep = np.array(table.column("split").to_pylist()) == sounds_split
        clips = table.column("clip").combine_chunks()
        clips = clips.flatten().to_numpy().reshape(len(clips), clips.type.list_size)[keep]
        if not len(clips):
            raise ValueError(f"{dry} has no {sounds_split} sounds")
        self.device = torch.device(device)
        self.sounds = torch.from_numpy(np.ascontiguousarray(clips)).to(self.device)  # [N, S]
        bank = np.load(io.BytesIO(datastore.read_bytes(brirs)))
        self.azimuths = torch.from_numpy(bank["azimuths"].astype(np.int64))
        available = [str(e) for e in bank["environments"]]
        if environments is None:  # every environment a model may train on: not the held-out rooms
            self.environments = [e for e in available if not fnmatch.fnmatch(e, "heldout-*")]
        else:
            keep = match_environments(environments, available, str(brirs))
            self.environments = [e for e in available if e in keep]
        longest = max(bank[f"brir_{e}"].shape[-1] for e in self.environments)
        # One [E, A, 2, L] tensor (shorter banks zero-padded) so a batch gathers its BRIRs in one indexing op.
        self.brirs = torch.stack([
            torch.nn.functional.pad(torch.from_numpy(bank[f"brir_{e}"]), (0, longest - bank[f"brir_{e}"].shape[-1]))
            for e in self.environments]).to(self.device)
        self.n_samples = n_samples or self.sounds.shape[1]
        self.gain_db = gain_db
        self.snr_db = (snr_db, snr_db) if isinstance(snr_db, (int, float)) else snr_db

    def batch(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        g = generator
        sound = torch.randint(len(self.sounds), (batch_size,), generator=g)
        env = torch.randint(len(self.environments), (batch_size,), generator=g)
        az = torch.randint(len(self.azimuths), (batch_size,), generator=g)
        gain = torch.empty(batch_size).uniform_(*self.gain_db, generator=g)
        noise = torch.randn(batch_size, 2, self.n_samples, generator=g) if self.snr_db else None
        snr = torch.empty(batch_size).uniform_(*self.snr_db, generator=g) if self.snr_db else None

        dev = self.device
        dry = self.sounds[sound.to(dev), : self.n_samples]  # [B, S]
        brir = self.brirs[env.to(dev), az.to(dev)]  # [B, 2, L]
        wet = AF.fftconvolve(dry.unsqueeze(1), brir)[..., : self.n_samples]  # [B, 2, S]
        if noise is not None:
            power = wet.square().mean(dim=(1, 2), keepdim=True)
            scale = torch.sqrt(power / 10 ** (snr.to(dev).view(-1, 1, 1) / 10))
            wet = wet + noise.to(dev) * scale
        peak = wet.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        wet = wet / peak * 0.5 * 10 ** (gain.to(dev).view(-1, 1, 1) / 20)
        return {"wave": wet, "azimuth": self.azimuths[az].to(dev), "environment": env.to(dev)}
