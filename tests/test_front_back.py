"""Front/back confusion and the reference-scale MSE on hand-made predictions; the dataset-fit check and room families
on hand-written manifests."""

import numpy as np
import pytest
import torch

from trainables.bast import metrics
from trainables.localization.dataset_fit import (DatasetMismatchError, check_input_fits, room_families,
                                                 samples_for_frames, spectrogram_shape)
from trainables.localization.shards import Manifest


def xy(*azimuths_deg):
    rad = np.radians(azimuths_deg)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


def test_confusion_is_the_wrong_side_of_the_interaural_axis():
    target = xy(10, 10, 170, 30, 90, 270, 200, 0)
    pred = xy(170, 80, 10, 95, 180, 0, 340, 0) * 3  # the scale of a prediction does not matter
    confused, eligible = metrics.front_back(pred, target)
    # 10 -> 170: the mirror image across the axis; 10 -> 80: same side; 170 -> 10: mirror; 30 -> 95: just behind;
    # 90 and 270 lie on the axis (their mirror is themselves): not eligible whatever the prediction; 200 -> 340:
    # front; 0 -> 0: right
    assert confused.tolist() == [True, False, True, True, False, False, True, False]
    assert eligible.tolist() == [True, True, True, True, False, False, True, True]
    assert metrics.front_back_rate(pred, target) == pytest.approx(4 / 6)


def test_a_prediction_on_the_axis_or_zero_picks_no_side():
    target = xy(0, 180)
    pred = np.array([[0.0, 1.0], [0.0, 0.0]])
    assert metrics.front_back(pred, target)[0].tolist() == [False, False]
    assert metrics.front_back_rate(pred, target) == 0.0


def test_rate_is_undefined_when_every_target_is_on_the_axis():
    assert metrics.front_back_rate(xy(0, 180), xy(90, 270)) is None
    (stats,) = metrics.per_environment(xy(0, 180), xy(90, 270), ["anechoic", "anechoic"])
    assert stats.front_back_rate is None and stats.n == 2


def test_per_group_rates_and_reference_mse():
    target = xy(0, 180, 45, 135)
    pred = xy(180, 180, 45, 45)  # confused: first (front -> back) and last (back -> front)
    by_env = {s.group: s for s in metrics.per_environment(pred, target, ["a", "a", "b", "b"])}
    assert by_env["a"].front_back_rate == 0.5 and by_env["b"].front_back_rate == 0.5
    # a: squared distances 4 and 0 -> eq. 2 = 2, the reference's nn.MSELoss (mean over both coordinates) = 1
    assert by_env["a"].mse == pytest.approx(2.0) and by_env["a"].mse_ref == pytest.approx(1.0)
    # b: 45 vs 135 is 90 degrees apart: |p - t|^2 = 2
    assert by_env["b"].mse == pytest.approx(1.0) and by_env["b"].mse_ref == pytest.approx(0.5)


def test_mse_ref_equals_torch_mse_loss():
    rng = np.random.default_rng(3)
    pred, target = rng.normal(size=(17, 2)), xy(*rng.integers(0, 360, 17))
    ref = torch.nn.MSELoss()(torch.from_numpy(pred), torch.from_numpy(target)).item()  # the reference's evaluation
    assert metrics.mse_ref(pred, target) == pytest.approx(ref)
    assert metrics.mse_ref(pred, target) == pytest.approx(metrics.summary(pred, target)["mse"] / 2)


def manifest(**data):
    return Manifest("/data/x", {"sample_rate": 16000, "n_samples": 8000, **data})


class _Model:
    def __init__(self, freq_bins=129, frames=61):
        self.freq_bins, self.frames = freq_bins, frames


class _Config:
    def __init__(self, **kw):
        self.model = _Model(**kw)


def test_spectrogram_size_of_a_clip():
    assert spectrogram_shape(8000) == (129, 61)  # (8000 - 256) // 128 + 1
    assert spectrogram_shape(100) == (129, 0)
    assert samples_for_frames(61) == (7936, 8063)
    assert spectrogram_shape(7936) == spectrogram_shape(8063) == (129, 61) and spectrogram_shape(8064)[1] == 62


def test_a_dataset_that_does_not_fit_names_both_inputs():
    check_input_fits(manifest(), _Config())  # fits: nothing raised
    check_input_fits(manifest(n_samples=8063), _Config())
    with pytest.raises(DatasetMismatchError) as err:
        check_input_fits(manifest(n_samples=4000), _Config())
    text = str(err.value)
    assert "/data/x" in text and "4000 samples" in text and "2x129x30" in text
    assert "7936-8063 samples" in text and "2x129x61" in text
    with pytest.raises(DatasetMismatchError, match="44100 Hz.*the model takes 16000 Hz"):
        check_input_fits(manifest(sample_rate=44100), _Config())


def test_room_families_from_the_manifest():
    rooms = [{"name": "room-000", "family": "training", "size_m": [5, 4, 3]},
             {"name": "heldout-000", "family": "heldout"}, {"name": "broken"}]
    assert room_families(manifest(rooms=rooms)) == {"room-000": "training", "heldout-000": "heldout"}
    assert room_families(manifest()) == {}
