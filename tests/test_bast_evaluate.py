"""BAST evaluation on a real (tiny) two-environment dataset: stub models with hand-computable errors, and a tiny BAST
for the files it writes."""

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from trainables.audio import BinauralFrontEnd
from trainables.bast import evaluate as ev
from trainables.bast.config import preset
from trainables.bast.model import BAST
from trainables.localization import shards
from trainables.localization.builder import LocalizationBuildConfig, build, read_split

# Stubs that always predict one direction have hemifield differences with zero spread: scipy warns, rightly.
pytestmark = pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")

# 6 azimuths: mirrored pairs (60, 300) and (120, 240); no 90°, so the rollout takes the nearest azimuth
AZ = tuple(range(0, 360, 60))
ENVS = ("anechoic", "reverberant")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    # 8 sounds, 25% test -> 2 test sounds x 6 azimuths x 2 environments = 24 test rows over 3 shards of 10
    cfg = LocalizationBuildConfig(generated_sounds=8, azimuths=AZ, environments=ENVS, test_fraction=0.25,
                                  shard_rows=10, seed=1)
    return build(cfg, tmp_path_factory.mktemp("loc") / "ds")


class Fixed(nn.Module):
    """Always predicts the same (x, y), whatever it hears."""

    def __init__(self, xy=(1.0, 0.0), nan_first_row=False):
        super().__init__()
        self.register_buffer("xy", torch.tensor(xy))
        self.nan_first_row = nan_first_row

    def forward(self, spec):
        out = self.xy.expand(len(spec), 2).clone()
        if self.nan_first_row:
            out[0] = float("nan")
        return out


class Echo(nn.Module):
    """Predicts each ear's mean spectrogram value: depends on the input, so rows can be matched to their samples."""

    def forward(self, spec):
        return spec.mean(dim=(2, 3)) + torch.tensor([0.0, 1.0])


def wrap(az):
    """Angle between azimuth az and the front, i.e. the AD of always predicting (1, 0)."""
    az = np.asarray(az) % 360
    return np.minimum(az, 360 - az).astype(float)


def test_predict_rows_follow_the_dataset(dataset):
    p = ev.predict(Echo(), dataset.root, batch_size=7)  # 7 does not divide 24 nor the shard size 10
    table = read_split(dataset.root, "test")
    with torch.no_grad():
        spec = BinauralFrontEnd()(torch.from_numpy(shards.read_waves(table)))
    np.testing.assert_allclose(p.pred, Echo()(spec).numpy(), atol=1e-5)
    np.testing.assert_array_equal(p.azimuth_deg, table.column("azimuth_deg").to_numpy())
    np.testing.assert_array_equal(p.environment, table.column("environment").to_pylist())
    assert len(p) == dataset.count("test") == 24
    assert p.pred.shape == (24, 2) and p.azimuth_deg.dtype.kind == "i" and p.environment.dtype.kind == "U"

    only = ev.predict(Echo(), dataset.root, environments=["reverberant"])
    assert len(only) == 12 and set(only.environment) == {"reverberant"}


def test_fixed_prediction_gives_hand_computed_metrics(dataset):
    model = Fixed().train()
    p = ev.predict(model, dataset.root, batch_size=5)
    assert model.training  # mode restored
    np.testing.assert_allclose(p.error_deg, wrap(p.azimuth_deg), atol=1e-9)

    result = ev.evaluate(model, dataset.root, batch_size=5)
    m = result.metrics
    keys = ("ad_deg", "mse", "mse_ref", "front_back_rate")
    assert set(m) == {f"test_{k}" for k in keys} | {f"test_{k}.{e}" for k in keys for e in ENVS}
    # (1, 0) is in front; none of the 6 azimuths is on the interaural axis, and the 3 behind it (120, 180, 240) are
    # confused: 3 / 6. MSE ref = MSE / 2
    assert m["test_front_back_rate"] == pytest.approx(0.5) and m["test_mse_ref"] == pytest.approx(1.0)
    # 6 equally spaced azimuths, balanced: AD = mean(0, 60, 120, 180, 120, 60) = 90; MSE = 2 - 2 mean(cos az) = 2
    for env in ("", ".anechoic", ".reverberant"):
        assert m[f"test_ad_deg{env}"] == pytest.approx(90.0)
        assert m[f"test_mse{env}"] == pytest.approx(2.0)
    assert [s.group for s in result.per_azimuth] == list(AZ)
    np.testing.assert_allclose([s.ad_deg for s in result.per_azimuth], wrap(AZ), atol=1e-9)
    np.testing.assert_allclose([s.mse for s in result.per_azimuth], 2 - 2 * np.cos(np.radians(AZ)), atol=1e-9)
    assert [(s.group, s.n) for s in result.per_environment] == [("anechoic", 12), ("reverberant", 12)]

    # left (60, 120) and right (300, 240) are mirror images: equal means, nothing significant, every environment
    assert {(t.metric, t.environment) for t in result.hemifield} == {
        (k, e) for k in ("ad_deg", "mse") for e in ("all", *ENVS)}
    ad = next(t for t in result.hemifield if t.metric == "ad_deg" and t.environment == "all")
    assert ad.n_pairs == 2 and ad.left_mean == pytest.approx(90.0) and ad.right_mean == pytest.approx(90.0)
    assert not any(t.significant for t in result.hemifield)
    assert result.cross_environment is None and result.files == {}

    text = result.table()
    assert "anechoic" in text and "reverberant" in text and "90.000" in text and "p_FDR" in text


def test_prefix_and_split(dataset):
    result = ev.evaluate(Fixed((0.0, 1.0)), dataset.root, "val", prefix="val")  # always 90° (left)
    keys = ("ad_deg", "mse", "mse_ref", "front_back_rate")
    assert set(result.metrics) == {f"val_{k}" for k in keys} | {f"val_{k}.{e}" for k in keys for e in ENVS}
    np.testing.assert_allclose([s.ad_deg for s in result.per_azimuth], wrap(np.array(AZ) - 90), atol=1e-9)
    assert result.n == dataset.count("val")


def test_cross_environment_only_for_one_training_environment(dataset, tmp_path):
    model = Fixed((np.cos(np.radians(60)), np.sin(np.radians(60))))
    both = ev.evaluate(model, dataset.root, out_dir=tmp_path / "both", train_environments=list(ENVS))
    assert both.cross_environment is None and "cross_environment" not in both.files
    assert not (tmp_path / "both" / "cross_environment.md").exists()

    one = ev.evaluate(model, dataset.root, out_dir=tmp_path / "one", train_environments=("anechoic",))
    # the split is still evaluated on both environments: the Table 3 row
    assert set(one.cross_environment) == {"anechoic"}
    assert one.cross_environment["anechoic"] == {e: pytest.approx(one.metrics[f"test_ad_deg.{e}"]) for e in ENVS}
    assert one.metrics["test_ad_deg.anechoic"] == pytest.approx(np.mean(wrap(np.array(AZ) - 60)))
    md = one.files["cross_environment"].read_text()
    assert md.splitlines()[0] == "| train \\ test | anechoic | reverberant |"
    saved = json.loads(one.files["metrics"].read_text())
    assert saved["cross_environment"] == one.cross_environment
    assert "cross-environment" in one.table()
    # a stub has no attention maps: no rollout, everything else is written
    assert set(one.files) == {"ad_per_azimuth", "hemifield", "predictions", "per_azimuth", "per_environment",
                              "metrics", "cross_environment"}


def test_tiny_bast_writes_every_file(dataset, tmp_path):
    torch.manual_seed(0)
    model = BAST(preset("bast_tiny")).train()
    result = ev.evaluate(model, dataset.root, out_dir=tmp_path, batch_size=16, train_environments=["reverberant"])
    assert model.training

    assert set(result.files) == {"ad_per_azimuth", "hemifield", "predictions", "attention_rollout", "per_azimuth",
                                 "per_environment", "metrics", "cross_environment"}
    for name in ("ad_per_azimuth.png", "hemifield.png", "predictions.png", "attention_rollout.png"):
        path = tmp_path / name
        assert path in result.files.values()
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000

    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["metrics"] == pytest.approx(result.metrics)
    assert all(np.isfinite(v) for v in result.metrics.values())
    assert len(saved["hemifield"]) == len(result.hemifield) == 6
    # no sample at 90°: the rollout takes the nearest azimuth, from the environment trained on
    assert saved["rollout_sample"]["azimuth_deg"] in (60, 120)
    assert saved["rollout_sample"]["environment"] == "reverberant"

    counts = dataset.data["counts"]["test"]
    with (tmp_path / "per_azimuth.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(AZ) * len(ENVS)
    for az in AZ:
        assert sum(int(r["n"]) for r in rows if int(r["azimuth_deg"]) == az) == counts["by_azimuth"][str(az)]
    for env in ENVS:
        assert sum(int(r["n"]) for r in rows if r["environment"] == env) == counts["by_environment"][env]
    mean_ad = sum(float(r["ad_deg_mean"]) * int(r["n"]) for r in rows) / sum(int(r["n"]) for r in rows)
    assert mean_ad == pytest.approx(result.metrics["test_ad_deg"], rel=1e-4)


def test_nan_predictions_name_the_split_and_count(dataset):
    with pytest.raises(ValueError, match=r"5 of 24 predictions on the 'test' split are NaN"):
        ev.evaluate(Fixed(nan_first_row=True), dataset.root, batch_size=5)  # first row of each of 5 batches


def test_bad_model_output_is_clear(dataset):
    class Flat(nn.Module):
        def forward(self, spec):
            return torch.zeros(len(spec))

    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        ev.predict(Flat(), dataset.root)


def test_no_mirrored_pairs_means_no_hemifield(tmp_path):
    # one mirrored pair (90, 270) is not enough for a paired t-test
    cfg = LocalizationBuildConfig(generated_sounds=4, azimuths=(0, 90, 180, 270), environments=("anechoic",),
                                  test_fraction=0.25, shard_rows=50, seed=2)
    root = build(cfg, tmp_path / "ds").root
    result = ev.evaluate(Fixed(), root, out_dir=tmp_path / "out", train_environments=["anechoic"])
    assert result.hemifield is None and "hemifield" not in result.files
    assert json.loads(result.files["metrics"].read_text())["hemifield"] is None
    assert "hemifield tests: none" in result.table()
    assert result.cross_environment == {"anechoic": {"anechoic": pytest.approx(90.0)}}  # mean of 0, 90, 180, 90
    assert ev.evaluate(Fixed(), root, train_environments="anechoic").cross_environment == result.cross_environment


def test_cross_environment_table_by_hand():
    rows = {"reverberant": {"reverberant": 2.5, "anechoic": 7.125}, "anechoic": {"anechoic": 1.29}}
    assert ev.cross_environment_table(rows) == "\n".join([
        "| train \\ test | anechoic | reverberant |",
        "|---|---:|---:|",
        "| anechoic | 1.29 | – |",
        "| reverberant | 7.12 | 2.50 |",
    ])
    with pytest.raises(ValueError, match="at least one"):
        ev.cross_environment_table({})
