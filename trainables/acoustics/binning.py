"""Binaural rendering of sound paths through measured HRIRs, shared by every room simulation here (the lecture hall
in `rooms`, the randomised rooms in `random_rooms`, the scene rooms in `shoebox`).

A path is a direction of arrival, an integer delay and a gain. Each path takes the measured HRIR direction nearest to
its own (a k-d tree over the set's unit vectors: chord length orders like the angle); the paths of one direction form
one impulse train, and the trains are convolved with their HRIR pairs and summed. The convolution runs in the
frequency domain and sums over directions before the one inverse FFT, a chunk of directions at a time.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
from scipy.spatial import cKDTree

from trainables.acoustics.hrtf import HRIRSet

DIRECTIONS_PER_FFT = 64  # HRIR directions transformed at once: bounds memory to tens of MB per chunk


def nearest_directions(tree: cKDTree, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[K, 3] unit vectors -> ([D] indices of the measured directions hit, [K] position of each path's in them)."""
    _, nearest = tree.query(units)
    used, which = np.unique(nearest, return_inverse=True)
    return used, which.reshape(-1)


def render_binned(hrirs: HRIRSet, used: np.ndarray, which: np.ndarray, delays: np.ndarray, gains: np.ndarray,
                  n: int) -> np.ndarray:
    """[2, n + taps - 1] float64 response of paths already binned (`nearest_directions`); delays [K] in [0, n)."""
    # One impulse train per direction, [D, n]; bincount sums coinciding arrivals.
    trains = np.bincount(which * n + delays, weights=gains, minlength=used.size * n).reshape(used.size, n)
    length = n + hrirs.taps - 1
    nfft = scipy.fft.next_fast_len(length, real=True)
    spectrum = np.zeros((2, nfft // 2 + 1), np.complex128)
    for lo in range(0, used.size, DIRECTIONS_PER_FFT):
        chunk = slice(lo, lo + DIRECTIONS_PER_FFT)
        spectrum += np.einsum("df,dcf->cf", np.fft.rfft(trains[chunk], nfft),
                              np.fft.rfft(hrirs.ir[used[chunk]].astype(np.float64), nfft))
    return np.fft.irfft(spectrum, nfft)[:, :length]


def render_paths(hrirs: HRIRSet, tree: cKDTree, units: np.ndarray, delays: np.ndarray, gains: np.ndarray,
                 n: int) -> np.ndarray:
    """[2, n + taps - 1] float64 response of paths arriving from `units` [K, 3] after `delays` [K] with `gains` [K]."""
    used, which = nearest_directions(tree, units)
    return render_binned(hrirs, used, which, delays, gains, n)
