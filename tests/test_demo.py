"""The demo really trains: loss falls, AD drops well below chance, and the analysis files are real PNGs."""

import matplotlib.image
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sweep_platform.cli import app
from trainables.bast.config import BASTConfig, LossConfig, TrainConfig, preset
from trainables.bast.demo import make_dataset, train

AZIMUTHS = list(range(0, 360, 10))


@pytest.fixture(scope="module")
def data():
    return make_dataset(48, AZIMUTHS, val_fraction=0.25, seed=0)


def test_dataset_is_split_by_sound(data):
    train_set, val_set = data
    assert train_set.spec.shape == (36 * 36, 2, 129, 61) and val_set.spec.shape == (12 * 36, 2, 129, 61)
    assert torch.isfinite(train_set.spec).all()
    # no validation clip is a training clip
    tr = {tuple(np.round(s[0, :4, :4].flatten().numpy(), 4)) for s in train_set.spec[::36]}
    va = {tuple(np.round(s[0, :4, :4].flatten().numpy(), 4)) for s in val_set.spec[::36]}
    assert not tr & va


@pytest.mark.slow
def test_small_bast_learns(data):
    cfg = BASTConfig(model=preset("bast_tiny"), loss=LossConfig(name="hybrid"),
                     train=TrainConfig(epochs=6, batch_size=32, lr=1e-3))
    _, history = train(cfg, *data)
    assert history[-1].train_loss < history[0].train_loss
    assert history[-1].val_ad_deg < 50.0, [round(h.val_ad_deg, 1) for h in history]  # chance is 90°


def test_nan_loss_is_a_clear_error(data):
    train_set, val_set = data
    poisoned = type(train_set)(train_set.spec.clone(), train_set.target, train_set.azimuth)
    poisoned.spec[0, 0, 0, 0] = float("nan")
    cfg = BASTConfig(model=preset("bast_tiny"), train=TrainConfig(epochs=1, batch_size=len(poisoned.spec)))
    with pytest.raises(FloatingPointError, match="epoch 1, step 0"):
        train(cfg, poisoned, val_set)


def test_demo_command_end_to_end(tmp_path):
    res = CliRunner().invoke(app, ["demo", "--epochs", "2", "--sounds", "8", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "epoch   1" in res.output and "epoch   2" in res.output and "val_ad_deg" in res.output
    for name in ("ad_per_azimuth", "hemifield", "predictions", "attention_rollout"):
        img = matplotlib.image.imread(tmp_path / f"{name}.png")
        assert img.shape[0] > 100 and img.std() > 0
