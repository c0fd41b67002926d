"""A generated sound corpus that needs no files, so every default works on any machine.

Six families with randomised parameters, each a broadband or harmonic source whose spectrum varies from clip to clip:
noise bursts with random spectral tilt and band, harmonic complexes, chirps, click trains, formant vowels and
amplitude-modulated mixtures. Every clip is float32 in [-1, 1], peak-normalised, with short raised-cosine ramps.
The same (seed, index) always gives the same clip.
"""

from __future__ import annotations

import numpy as np

KINDS = ("noise", "harmonic", "chirp", "clicks", "vowel", "am_mix")

# First three formants (Hz) of five vowels (Peterson & Barney 1952, adult male averages).
_FORMANTS = {"a": (730, 1090, 2440), "e": (530, 1840, 2480), "i": (270, 2290, 3010), "o": (570, 840, 2410),
             "u": (300, 870, 2240)}


def _ramp(x: np.ndarray, sr: int, ms: float = 10.0) -> np.ndarray:
    n = min(int(sr * ms / 1000), len(x) // 2)
    if n:
        w = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, n))
        x[:n] *= w
        x[-n:] *= w[::-1]
    return x


def _shape_spectrum(x: np.ndarray, sr: int, gain_db_fn) -> np.ndarray:
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / sr)
    return np.fft.irfft(spec * 10 ** (gain_db_fn(f) / 20), n=len(x))


def _noise(rng, n, sr):
    tilt = rng.uniform(-6, 3)  # dB per octave re 1 kHz: from pink-ish to slightly blue
    lo, hi = rng.uniform(80, 600), rng.uniform(4000, sr / 2)
    def gain(f):
        g = tilt * np.log2(np.maximum(f, 20) / 1000)
        return np.where((f >= lo) & (f <= hi), g, g - 40)
    return _shape_spectrum(rng.standard_normal(n), sr, gain)


def _harmonic(rng, n, sr):
    t = np.arange(n) / sr
    f0 = rng.uniform(80, 800)
    slope = rng.uniform(3, 12)  # dB per harmonic number octave
    k = np.arange(1, int((sr / 2 - 100) // f0) + 1)
    amps = 10 ** (-slope * np.log2(k) / 20) * rng.uniform(0.5, 1.0, len(k))
    phases = rng.uniform(0, 2 * np.pi, len(k))
    return (amps[:, None] * np.sin(2 * np.pi * f0 * k[:, None] * t + phases[:, None])).sum(0)


def _chirp(rng, n, sr):
    t = np.arange(n) / sr
    f_start, f_end = np.exp(rng.uniform(np.log(100), np.log(7000), 2))
    # Exponential sweep: instantaneous frequency f_start * (f_end/f_start)^(t/T).
    T = n / sr
    k = np.log(f_end / f_start) / T
    phase = 2 * np.pi * f_start * (np.expm1(k * t) / k if abs(k) > 1e-9 else t)
    return np.sin(phase) + 0.05 * rng.standard_normal(n)


def _clicks(rng, n, sr):
    x = np.zeros(n)
    rate = rng.uniform(5, 60)  # clicks per second
    starts = np.arange(rng.integers(0, max(1, int(sr / rate))), n, int(sr / rate))
    click = rng.standard_normal(int(sr * 0.002)) * np.hanning(int(sr * 0.002))
    for s in starts:
        seg = click[: n - s]
        x[s : s + len(seg)] += seg
    return x


def _vowel(rng, n, sr):
    t = np.arange(n) / sr
    f0 = rng.uniform(90, 300) * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(4, 7) * t))  # with vibrato
    phase = 2 * np.pi * np.cumsum(f0) / sr
    k = np.arange(1, 40)
    source = (np.sin(k[:, None] * phase) / k[:, None]).sum(0)
    formants = np.array(_FORMANTS[rng.choice(list(_FORMANTS))]) * rng.uniform(0.9, 1.15)
    def gain(f):
        g = sum(20 * np.log10(1 / np.sqrt((1 - (f / fc) ** 2) ** 2 + (f / (fc * 8)) ** 2) + 1e-3) for fc in formants)
        return np.clip(g, -60, 30)
    return _shape_spectrum(source, sr, gain)


def _am_mix(rng, n, sr):
    t = np.arange(n) / sr
    parts = [_noise, _harmonic, _chirp][rng.integers(0, 3)](rng, n, sr), _noise(rng, n, sr)
    mod = 1 + rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * rng.uniform(2, 40) * t + rng.uniform(0, 2 * np.pi))
    return parts[0] / (np.abs(parts[0]).max() + 1e-9) * mod + 0.5 * parts[1] / (np.abs(parts[1]).max() + 1e-9)


_GENERATORS = {"noise": _noise, "harmonic": _harmonic, "chirp": _chirp, "clicks": _clicks, "vowel": _vowel,
               "am_mix": _am_mix}


def generate_sound(kind: str, n_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One clip of the given family: [n_samples] float32, peak 1."""
    if kind not in _GENERATORS:
        raise ValueError(f"unknown sound kind {kind!r}; known kinds: {', '.join(KINDS)}")
    x = _ramp(_GENERATORS[kind](rng, n_samples, sample_rate).astype(np.float64), sample_rate)
    return (x / (np.abs(x).max() + 1e-12)).astype(np.float32)


def check_kinds(kinds) -> tuple[str, ...]:
    """`kinds` as a tuple of distinct known families, or a ValueError naming what is allowed."""
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in _GENERATORS]
    if not kinds or unknown or len(set(kinds)) != len(kinds):
        what = f"unknown {', '.join(map(repr, unknown))}" if unknown else "give at least one, each once"
        raise ValueError(f"sound kinds {list(kinds)}: {what}; known kinds: {', '.join(KINDS)}")
    return kinds


def generated_corpus(
    n_sounds: int, n_samples: int = 8000, sample_rate: int = 16000, seed: int = 0, kinds=KINDS
) -> tuple[np.ndarray, list[str]]:
    """n_sounds clips cycling through the families `kinds` (default all six): ([n_sounds, n_samples] float32, kind
    of each clip). Clip i is drawn from the seed (seed, i), so the all-family corpus keeps its bytes."""
    families = check_kinds(kinds)
    labels = [families[i % len(families)] for i in range(n_sounds)]
    clips = np.empty((n_sounds, n_samples), np.float32)
    for i, kind in enumerate(labels):
        clips[i] = generate_sound(kind, n_samples, sample_rate, np.random.default_rng([seed, i]))
    return clips, labels


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff")


def _resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    from fractions import Fraction

    import scipy.signal

    if rate == target:
        return x
    ratio = Fraction(target, rate).limit_denominator(1000)
    return scipy.signal.resample_poly(x, ratio.numerator, ratio.denominator)


def clips_from_file(path, n_samples: int = 8000, sample_rate: int = 16000, silence_dbfs: float = -45.0
                    ) -> list[np.ndarray]:
    """Read any audio file soundfile can (any rate, mono or stereo), mix to mono, resample, cut into
    non-overlapping clips of n_samples, and drop clips whose RMS is below `silence_dbfs` re full scale.
    Each kept clip is peak-normalised float32 [n_samples]."""
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float64", always_2d=True)
    except Exception as exc:  # soundfile raises its own LibsndfileError and RuntimeError subclasses
        raise ValueError(f"{path}: cannot be read as audio ({exc})") from exc
    mono = _resample(data.mean(axis=1), rate, sample_rate)
    clips = []
    for start in range(0, len(mono) - n_samples + 1, n_samples):
        clip = mono[start : start + n_samples]
        rms = np.sqrt(np.mean(clip**2))
        if rms <= 0 or 20 * np.log10(rms) < silence_dbfs:
            continue
        clips.append(_ramp((clip / np.abs(clip).max()).astype(np.float64), sample_rate).astype(np.float32))
    return clips


def folder_corpus(folder, n_samples: int = 8000, sample_rate: int = 16000, silence_dbfs: float = -45.0
                  ) -> tuple[np.ndarray, list[str], list[str]]:
    """Every audio file below `folder`, cut into clips: ([N, n_samples] float32, sound ids, source paths).

    A sound id is the file's path relative to the folder plus the clip index, so clips of one file stay
    distinguishable while the split can still be made by sound.
    """
    from pathlib import Path

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"sound folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"sound folder {root} holds no audio files ({', '.join(AUDIO_SUFFIXES)})")
    clips, ids, sources = [], [], []
    for f in files:
        rel = f.relative_to(root).as_posix()
        for i, clip in enumerate(clips_from_file(f, n_samples, sample_rate, silence_dbfs)):
            clips.append(clip)
            ids.append(f"{rel}#{i}")
            sources.append(rel)
    if not clips:
        raise ValueError(f"sound folder {root}: no clip of {n_samples} samples above {silence_dbfs} dBFS in "
                         f"{len(files)} files")
    return np.stack(clips), ids, sources
