import math

import numpy as np
import pytest
import scipy.signal
import torch

from trainables.binaural import metrics
from trainables.binaural.config import LossConfig
from trainables.binaural.losses import BinauralLoss, diff_loss, two_channel_loss

SR = 16000
S = 8000  # 0.5 s: 51 STFT frames


def noise(seed: int = 0, n: int = S) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, n))


def sine(cycles: int, amplitude: float = 1.0, n: int = S) -> np.ndarray:
    """A whole number of cycles in the clip, so its Hilbert envelope is exactly `amplitude`."""
    return amplitude * np.sin(2 * np.pi * cycles * np.arange(n) / n)


# --- per-clip metrics ------------------------------------------------------------------------------------------------

def test_identical_signals_score_zero():
    g = noise()
    m = metrics.evaluate_clip(g, g)
    assert m["stft"] == m["env"] == m["mag"] == m["phase"] == m["wav"] == 0.0
    assert m["snr"] == pytest.approx(10 * math.log10((np.mean(g**2) + 1e-4) / 1e-4))


def test_stft_distance_of_an_impulse_by_hand():
    # One impulse at n0 in both ears against silence: every bin of frame t has |X|² = wpad[n0 + 256 - 160 t]², where
    # wpad is the periodic 400-point Hann window centred in 512 (56 zeros each side). Each ear contributes
    # mean|X|² / 2, so the two ears sum to mean over frames of wpad².
    n0 = 4000
    g = np.zeros((2, S))
    g[:, n0] = 1.0
    T = 1 + S // 160
    m = np.arange(400)
    wpad = np.concatenate([np.zeros(56), 0.5 - 0.5 * np.cos(2 * np.pi * m / 400), np.zeros(56)])
    k = n0 + 256 - 160 * np.arange(T)
    expected = np.sum(wpad[k[(k >= 0) & (k < 512)]] ** 2) / T
    assert metrics.stft_distance(np.zeros_like(g), g) == pytest.approx(expected, rel=1e-12)
    assert metrics.magnitude_distance(np.zeros_like(g), g) == pytest.approx(2 * expected, rel=1e-12)


@pytest.mark.parametrize("a", [0.0, 0.5, -1.0, 3.0])
def test_scaled_prediction(a):
    g = noise(1)
    base = metrics.stft_distance(np.zeros_like(g), g)
    m = metrics.evaluate_clip(a * g, g)
    assert m["stft"] == pytest.approx((1 - a) ** 2 * base, rel=1e-10)
    assert m["mag"] == pytest.approx(2 * m["stft"], rel=1e-12)  # "Mag" is exactly 2 × STFT
    assert m["wav"] == pytest.approx((1 - a) ** 2 * np.sum(np.mean(g**2, axis=1)), rel=1e-10)
    # Hilbert envelope scales with |a|; a sign flip leaves it unchanged.
    env_g = np.abs(scipy.signal.hilbert(g, axis=-1))
    assert m["env"] == pytest.approx(abs(1 - abs(a)) * np.sum(np.sqrt(np.mean(env_g**2, axis=1))), abs=1e-10)
    # The phase of L - R moves by π under a sign flip and not at all under a positive gain. (Silence, a = 0, has no
    # phase: numpy gives its signed zeros angles of 0 or π, as the reference code would.)
    if a != 0:
        assert m["phase"] == pytest.approx(math.pi if a < 0 else 0.0, abs=1e-9)


def test_swapped_ears_give_phase_pi():
    g = noise(2)
    assert metrics.phase_distance(g[::-1], g) == pytest.approx(math.pi, abs=1e-9)


def test_envelope_of_sines():
    g = np.stack([sine(40), sine(40)])
    assert metrics.envelope_distance(0.5 * g, g) == pytest.approx(2 * 0.5, abs=1e-9)  # |1 - 0.5| · A per ear
    # AM tone: envelope 1 + 0.5 cos(2π 4 t), against the bare carrier (envelope 1): RMSE 0.5/√2 per ear.
    n = np.arange(S)
    carrier = np.sin(2 * np.pi * 400 * n / S)
    am = (1 + 0.5 * np.cos(2 * np.pi * 4 * n / S)) * carrier
    assert metrics.envelope_distance(np.stack([carrier] * 2), np.stack([am] * 2)) == pytest.approx(
        2 * 0.5 / math.sqrt(2), abs=1e-9)


def test_snr_with_known_noise():
    A, sigma = 0.5, 0.1
    g = np.stack([sine(25, A), sine(25, A)])  # mean(g²) = A²/2 exactly
    e = sigma * np.where(np.arange(S) % 2, 1.0, -1.0)  # mean(e²) = σ² exactly
    expected = 10 * math.log10((A**2 / 2 + 1e-4) / (sigma**2 + 1e-4))
    assert metrics.snr(g + e, g) == pytest.approx(expected, rel=1e-12)


def test_normalization_switch():
    g = noise(3)
    raw = metrics.evaluate_clip(3 * g, g)
    assert raw["stft"] == pytest.approx(4 * metrics.stft_distance(np.zeros_like(g), g), rel=1e-10)
    normed = metrics.evaluate_clip(3 * g, g, normalization=True)  # both divided by their own max: identical
    assert all(normed[k] == pytest.approx(0.0, abs=1e-12) for k in ("stft", "env", "mag", "phase", "wav"))
    assert np.max(np.abs(metrics.normalize(3 * g))) == 1.0
    assert np.all(metrics.normalize(np.zeros((2, 4))) == 0.0)  # the 1e-20 floor avoids 0/0


def test_pad_mode_changes_only_the_edge_frames():
    x = noise(4)[0]
    reflect, zeros = metrics.stft(x), metrics.stft(x, pad_mode="constant")
    assert reflect.shape == (257, 51)
    np.testing.assert_allclose(reflect[:, 2:-2], zeros[:, 2:-2], atol=1e-12)  # frames not touching the padding
    assert not np.allclose(reflect[:, 0], zeros[:, 0])


def test_shape_errors_and_baseline_and_summary():
    with pytest.raises(ValueError, match=r"\[2, S\]"):
        metrics.evaluate_clip(np.zeros((1, 100)), np.zeros((1, 100)))
    g = noise(5)
    mono = metrics.mono_baseline(g)
    np.testing.assert_allclose(mono[0], (g[0] + g[1]) / 2)
    np.testing.assert_allclose(mono[1], mono[0])
    s = metrics.summarize([{"stft": 1.0, "env": 0.1}, {"stft": 3.0, "env": 0.3}], prefix="test")
    assert s["test_stft"] == 2.0 and s["test_stft_std"] == 1.0 and s["test_stft_stderr"] == pytest.approx(1 / math.sqrt(2))
    assert s["test_env"] == pytest.approx(0.2)


# --- whole-clip sliding windows --------------------------------------------------------------------------------------

def test_window_starts_of_a_10s_clip():
    starts = metrics.window_starts(10 * SR, 10080, 800)
    assert len(starts) == 189  # ceil((160000 - 10080) / 800) = 188 hops, plus one window flush with the end
    assert starts[0] == 0 and starts[-2] == 187 * 800 and starts[-1] == 160000 - 10080
    assert np.all(starts + 10080 <= 160000)
    assert list(metrics.window_starts(10080, 10080, 800)) == [0]
    assert list(metrics.window_starts(10080 + 800, 10080, 800)) == [0, 800]  # 0 + L < n, then the end window
    with pytest.raises(ValueError, match="shorter"):
        metrics.window_starts(100, 10080, 800)


def test_window_frame_index():
    # Centre of the first 0.63 s window is 0.315 s: round((0.315 + 0.05) · 10) = 4 (1-based frames at 10 fps).
    assert metrics.window_frame_index(0, 10080) == 4
    assert metrics.window_frame_index(160000 - 10080, 10080) == 97  # centre 9.685 s -> 97.35


def test_binauralize_clip_with_a_linear_predictor_is_exact():
    # diff = c · mix in every window: the per-window RMS gain cancels, so the clip is exactly ((1±c)/2) · mix.
    c = 0.4
    mix = np.random.default_rng(6).standard_normal(2 * SR)
    seen = []

    def predict(window, start):
        seen.append((start, float(np.sqrt(np.mean(window**2)))))
        return np.stack([(1 + c) / 2 * window, (1 - c) / 2 * window])

    out = metrics.binauralize_clip(predict, mix)
    np.testing.assert_allclose(out, np.stack([(1 + c) / 2 * mix, (1 - c) / 2 * mix]), atol=1e-12)
    assert len(seen) == len(metrics.window_starts(2 * SR, 10080, 800)) == 29
    assert all(rms == pytest.approx(0.1) for _, rms in seen)  # each window scaled to RMS 0.1 (demo.py)


def test_binauralize_clip_averages_overlaps():
    # Window k predicts the constant k: a sample's value is the mean index of the windows covering it.
    mix = np.zeros(SR)
    starts = list(metrics.window_starts(SR, 10080, 800))
    out = metrics.binauralize_clip(lambda w, s: np.full((2, w.size), float(starts.index(s))), mix,
                                   rms_normalize=False)
    assert out[0, 0] == 0.0  # window 0 only
    assert out[0, 800] == 0.5  # windows 0 and 1
    assert out[1, 5000] == pytest.approx(np.mean(range(7)))  # windows 0..6 start at or before 4800
    assert out[0, -1] == len(starts) - 1  # only the end window reaches the last sample
    # Reference RMS from the ground-truth stereo, as demo.py: the window handed to predict is scaled by its gain.
    gt = np.stack([np.full(SR, 0.2), np.full(SR, 0.2)])
    got = []
    metrics.binauralize_clip(lambda w, s: got.append(w[0]) or np.zeros((2, w.size)), np.full(SR, 0.4),
                             rms_reference=gt)
    assert got[0] == pytest.approx(0.4 * 0.1 / 0.2)


# --- losses ----------------------------------------------------------------------------------------------------------

def test_losses():
    g = torch.Generator().manual_seed(0)
    mix, target = torch.randn(2, 2, 257, 64, generator=g), torch.randn(2, 2, 257, 64, generator=g)
    pred, left, right = (torch.randn(2, 2, 256, 64, generator=g) for _ in range(3))
    d = diff_loss(pred, target)
    torch.testing.assert_close(d, ((pred - target[:, :, :-1]) ** 2).mean())
    assert diff_loss(target[:, :, :-1], target) == 0.0
    # 2ch scores the two ear heads against the true ears (A ± O)/2; both = diff + 2ch (tests/test_binaural_two_channel.py
    # checks that 2ch is not a multiple of diff).
    a, o = mix[:, :, :-1], target[:, :, :-1]
    two = two_channel_loss(left, right, mix, target)
    torch.testing.assert_close(two, ((left - (a + o) / 2) ** 2).mean() + ((right - (a - o) / 2) ** 2).mean())
    out = {"diff_spec": pred, "left_spec": left, "right_spec": right}
    for kind, expected in (("diff", d), ("2ch", two), ("both", d + two)):
        torch.testing.assert_close(BinauralLoss(LossConfig(kind=kind))(out, mix, target), expected)
    with pytest.raises(ValueError, match="bins"):
        diff_loss(pred, target[:, :, :100])
