"""What a localization dataset must be for a trained localizer to be scored on it, and how its rooms group.

A localizer (BAST, cnn_loc) was trained on 16 kHz clips turned by `trainables.audio.BinauralFrontEnd` into
[2, F, T] spectrograms of the size its config's `model.freq_bins` x `model.frames` says. Any dataset (generated,
imported from NI-CNN, held-out rooms) fits it only when its clips are at that rate and their length gives that
spectrogram; otherwise the model would see inputs of another size or another frequency axis, so evaluation stops
with both named.

Datasets with randomised rooms list them in the manifest (`"rooms": [{"name", "family", ...}]`, each room being one
environment value such as `room-003` or `heldout-000`); `room_families` maps each room to its family, so results can
be aggregated per family (training rooms versus held-out rooms) as well as per room.
"""

from __future__ import annotations

from typing import Any

from trainables.audio import NOVERLAP, NPERSEG, n_frames
from trainables.localization.predict import SAMPLE_RATE
from trainables.localization.shards import Manifest

HOP = NPERSEG - NOVERLAP  # BinauralFrontEnd's defaults, the front end every localizer is trained with


class DatasetMismatchError(ValueError):
    """The dataset's clips cannot be fed to the model: another sample rate or another spectrogram size."""


def spectrogram_shape(n_samples: int) -> tuple[int, int]:
    """(F, T) that BinauralFrontEnd gives for a clip of `n_samples` (F = 129 bins; T = (S - 256) // 128 + 1)."""
    return NPERSEG // 2 + 1, n_frames(n_samples)


def samples_for_frames(frames: int) -> tuple[int, int]:
    """The clip lengths (first, last) in samples that give `frames` time frames."""
    first = (frames - 1) * HOP + NPERSEG
    return first, first + HOP - 1


def check_input_fits(manifest: Manifest, config: Any) -> None:
    """DatasetMismatchError naming the dataset's and the model's input when the dataset's clips do not fit
    `config.model` (freq_bins x frames at 16 kHz)."""
    rate, n = manifest.sample_rate, manifest.n_samples
    bins, frames = spectrogram_shape(n)
    want_bins, want_frames = getattr(config.model, "freq_bins", None), getattr(config.model, "frames", None)
    if want_bins is None or want_frames is None:
        # A localizer of the user's own (e.g. a plugin's MLP) may not declare its input size: only the rate is known.
        if rate != SAMPLE_RATE:
            raise DatasetMismatchError(f"dataset {manifest.root} does not fit the model: its clips are {rate} Hz; "
                                       f"localizers are trained on {SAMPLE_RATE} Hz clips")
        return
    if rate == SAMPLE_RATE and (bins, frames) == (want_bins, want_frames):
        return
    first, last = samples_for_frames(want_frames)
    length = f"{first} samples" if first == last else f"{first}-{last} samples"
    raise DatasetMismatchError(
        f"dataset {manifest.root} does not fit the model: its clips are {rate} Hz, {n} samples "
        f"({n / rate:.3f} s, spectrograms 2x{bins}x{frames}); the model takes {SAMPLE_RATE} Hz clips of {length} "
        f"({first / SAMPLE_RATE:.3f} s, spectrograms 2x{want_bins}x{want_frames}, its config's model.freq_bins x "
        f"model.frames)")


def room_families(manifest: Manifest) -> dict[str, str]:
    """{room (environment) name: family} from the manifest's `rooms` list; {} for a dataset without one.

    A malformed entry (no name or no family) is skipped: the per-room numbers are still right, only that room is
    left out of its family's aggregate."""
    rooms = manifest.data.get("rooms") or []
    return {str(r["name"]): str(r["family"]) for r in rooms
            if isinstance(r, dict) and r.get("name") is not None and r.get("family") is not None}
