"""`binsweep evaluate MODEL --data DIR` end to end, and Table 3 from the evaluation runs it records.

The models are real cnn_loc models whose last layer is set to always predict one direction (weights zero, bias =
(cos a, sin a)), so every number has a hand-computed value; they are loaded the ways users load models (a checkpoint
folder, a registered alias of a LoggedModel, runs:/) from a temporary MLflow SQLite store under the test session's
BINSWEEP_HOME. Datasets: one built by the localization builder (anechoic + reverberant), one written row by row with
randomised rooms and their families in its manifest (a `heldout` split), and one whose clips are too short.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sweep_platform import cross_environment, evaluation, names, tracking
from sweep_platform.cli import app
from trainables.cnn_loc.config import CNNLocConfig
from trainables.localization import shards
from trainables.localization.builder import LocalizationBuildConfig, build
from trainables.registry import get_trainable

# End to end through MLflow (its first model logged costs ~10 s); constant predictions give scipy's warning, rightly
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")]

AZ = (0, 60, 120, 180, 240, 300)
ENVS = ("anechoic", "reverberant")
# rooms dataset: environment -> azimuths of its rows (one row each)
ROOMS = {"room-000": (0, 60), "room-001": (180,), "heldout-000": (90, 300)}
FAMILY = {"room-000": "training", "room-001": "training", "heldout-000": "heldout"}


def wrap(deg):
    """Angle between two directions `deg` apart, in [0, 180]."""
    d = np.mod(np.asarray(deg, dtype=float), 360)
    return np.minimum(d, 360 - d)


@pytest.fixture(scope="module")
def loc(tmp_path_factory):
    # 4 sounds, 25% test -> 1 test sound x 6 azimuths x 2 environments = 12 test rows
    cfg = LocalizationBuildConfig(generated_sounds=4, azimuths=AZ, environments=ENVS, test_fraction=0.25,
                                  shard_rows=10, seed=1)
    return build(cfg, tmp_path_factory.mktemp("loc") / "loc")


@pytest.fixture(scope="module")
def rooms(tmp_path_factory):
    root = tmp_path_factory.mktemp("rooms") / "rooms"
    rows = shards.Rows()
    rng = np.random.default_rng(0)
    for env, azimuths in ROOMS.items():
        for az in azimuths:
            rows.add(f"s-{env}-{az}", "noise", az, env, "heldout", rng.normal(0, 0.1, (2, 8000)).astype(np.float32))
    shards.write_shard(rows.table(16000, 8000, "float32"), root / "heldout" / "part-0.parquet")
    info = {"sample_rate": 16000, "n_samples": 8000, "dtype": "float32",
            "rooms": [{"name": n, "family": f, "size_m": [5.0, 4.0, 3.0], "rt60_s": 0.4} for n, f in FAMILY.items()]}
    return shards.write_manifest(root, [{"file": "heldout/part-0.parquet", "split": "heldout"}], info)


@pytest.fixture(scope="module")
def short(tmp_path_factory):
    cfg = LocalizationBuildConfig(generated_sounds=2, azimuths=(0, 180), environments=("anechoic",),
                                  test_fraction=0.5, val_fraction=0.0, n_samples=4000, shard_rows=10, seed=2)
    return build(cfg, tmp_path_factory.mktemp("short") / "short")


def constant_model(azimuth_deg: float, root, train_environments):
    """(cnn_loc model that always predicts `azimuth_deg`, its config)."""
    config = CNNLocConfig.model_validate({"model": {"preset": "cnn_loc_tiny"},
                                          "data": {"root": str(root), "train_environments": train_environments}})
    torch.manual_seed(0)
    model = get_trainable("cnn_loc").build_model(config)
    last = model.head.mlp[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([math.cos(math.radians(azimuth_deg)), math.sin(math.radians(azimuth_deg))]))
    return model.eval(), config


def checkpoint(folder: Path, model, config) -> Path:
    from trainables.loop import save_checkpoint

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    folder.mkdir(parents=True)
    save_checkpoint(folder, model=model, optimizer=opt, scheduler=torch.optim.lr_scheduler.StepLR(opt, 1), epoch=1,
                    seed=0, trainable="cnn_loc", config=config.model_dump(mode="json"), metrics={"val_ad_deg": 1.0})
    return folder


def logged(model, config, name: str) -> tuple[str, str]:
    """(models:/m-... URI, run id) of a training-like run holding the model as a LoggedModel."""
    c = tracking.client()
    exp = tracking.ensure_experiment("binsweep-cnn_loc-eval-test")
    run = c.create_run(exp, run_name=name, tags={names.TAG_TRAINABLE: "cnn_loc"})
    for k, v in tracking.params_of(config.model_dump(mode="json")).items():
        c.log_param(run.info.run_id, k, v)
    uri = tracking.log_model(run.info.run_id, get_trainable("cnn_loc"), model, config)
    c.set_terminated(run.info.run_id)
    assert uri is not None
    return uri, run.info.run_id


@pytest.fixture(scope="module")
def models(loc, tmp_path_factory):
    """a: 60° trained on anechoic (registered cnn-eval@champion); b: 180° trained on both; c: 0° trained on
    anechoic; d: 60° as a checkpoint folder."""
    out = {}
    for key, az, envs in (("a", 60, ["anechoic"]), ("b", 180, None), ("c", 0, ["anechoic"])):
        model, config = constant_model(az, loc.root, envs)
        out[key] = logged(model, config, f"train-{key}")
    import mlflow

    mv = mlflow.register_model(out["a"][0], "cnn-eval")
    tracking.client().set_registered_model_alias("cnn-eval", "champion", str(mv.version))
    out["alias"] = ("models:/cnn-eval@champion", out["a"][1], mv.version)
    model, config = constant_model(60, loc.root, ["anechoic"])
    out["d"] = (str(checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint_000001", model, config)), None)
    return out


def invoke(*args):
    return CliRunner().invoke(app, ["evaluate", *map(str, args)], catch_exceptions=False)


def only_run(uri: str, data_root) -> object:
    runs = [r for r in cross_environment.evaluation_runs()
            if r.data.tags[evaluation.TAG_MODEL_URI] == uri and r.data.tags[evaluation.TAG_DATASET_URI].endswith(
                Path(str(data_root)).name)]
    assert len(runs) == 1
    return runs[0]


def test_checkpoint_folder_on_a_generated_dataset(loc, models):
    folder = models["d"][0]
    result = invoke(folder, "--data", loc.root)
    assert result.exit_code == 0, result.output
    for text in ("ad_deg", "mse_ref", "front_back_rate", "anechoic", "reverberant", "50.0%", "evaluation run"):
        assert text in result.output

    run = only_run(folder, loc.root)
    tags, m = run.data.tags, run.data.metrics
    assert tags[names.TAG_ROLE] == "evaluation" and tags[names.TAG_TRAINABLE] == "cnn_loc"
    assert tags[names.TAG_DATASET] == loc.fingerprint and tags[evaluation.TAG_SPLIT] == "test"
    assert tags[evaluation.TAG_TRAIN_ENVIRONMENTS] == "anechoic" and evaluation.TAG_MODEL_ID not in tags
    assert tracking.client().get_experiment(run.info.experiment_id).name == "binsweep-cnn_loc"
    # always 60°: AD = mean |az - 60| over 0..300 step 60 = (60 + 0 + 60 + 120 + 180 + 120) / 6 = 90; MSE (eq. 2) =
    # 2 - 2 mean cos(az - 60) = 2; the reference's scale is half; behind the axis (x < 0): 120, 180, 240 -> 3 / 6
    for env in ("", ".anechoic", ".reverberant"):
        assert m[f"test_ad_deg{env}"] == pytest.approx(90.0)
        assert m[f"test_mse{env}"] == pytest.approx(2.0)
        assert m[f"test_mse_ref{env}"] == pytest.approx(1.0)
        assert m[f"test_front_back_rate{env}"] == pytest.approx(0.5)

    c = tracking.client()
    listed = {Path(f.path).name for f in c.list_artifacts(run.info.run_id, "evaluation")}
    assert {"per_azimuth.csv", "per_environment.csv", "ad_per_azimuth.png", "summary.txt", "metrics.json"} <= listed
    local = Path(c.download_artifacts(run.info.run_id, "evaluation/per_environment.csv"))
    rows = {r["name"]: r for r in csv.DictReader(local.open())}
    assert set(rows) == set(ENVS) and float(rows["anechoic"]["mse_ref"]) == pytest.approx(1.0)


def test_registered_alias_on_held_out_rooms_per_room_and_family(rooms, models):
    uri, source_run, version = models["alias"]
    result = invoke(uri, "--data", rooms.root, "--split", "heldout")
    assert result.exit_code == 0, result.output
    assert "family-heldout" in result.output and "room-001" in result.output

    run = only_run(uri, rooms.root)
    tags, m = run.data.tags, run.data.metrics
    model_id = models["a"][0].removeprefix("models:/")
    assert tags[evaluation.TAG_MODEL_ID] == model_id and tags[evaluation.TAG_MODEL_VERSION] == f"cnn-eval/{version}"
    assert tags[evaluation.TAG_SOURCE_RUN] == source_run and tags[evaluation.TAG_SPLIT] == "heldout"
    assert run.info.experiment_id == tracking.client().get_run(source_run).info.experiment_id
    # always 60°. room-000: 0, 60 -> AD (60 + 0) / 2; room-001: 180 -> 120; heldout-000: 90, 300 -> (30 + 120) / 2
    expected_ad = {"room-000": 30.0, "room-001": 120.0, "heldout-000": 75.0, "family-training": 60.0,
                   "family-heldout": 75.0}
    for group, ad in expected_ad.items():
        assert m[f"heldout_ad_deg.{group}"] == pytest.approx(ad)
    assert m["heldout_ad_deg"] == pytest.approx((60 + 0 + 120 + 30 + 120) / 5)
    # room-000: |p - t|^2 = 2 - 2 cos(d): d = 60 -> 1, d = 0 -> 0
    assert m["heldout_mse.room-000"] == pytest.approx(0.5) and m["heldout_mse_ref.room-000"] == pytest.approx(0.25)
    # front/back: only 180 (room-001) is behind, 90 is on the axis: 1 of 4 eligible; training family 1 of 3
    assert m["heldout_front_back_rate"] == pytest.approx(0.25)
    assert m["heldout_front_back_rate.family-training"] == pytest.approx(1 / 3)
    assert m["heldout_front_back_rate.heldout-000"] == 0.0

    # the metrics are the LoggedModel's too, tied to this evaluation run
    lm = tracking.client().get_logged_model(model_id)
    mine = {x.key: x.value for x in lm.metrics if x.run_id == run.info.run_id}
    assert mine["heldout_ad_deg.family-heldout"] == pytest.approx(75.0) and len(mine) == len(m)


def test_a_dataset_that_does_not_fit_the_model_names_both(short, models):
    result = CliRunner().invoke(app, ["evaluate", models["d"][0], "--data", str(short.root), "--no-log"])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "4000 samples" in text and "2x129x30" in text and "7936-8063 samples" in text and "2x129x61" in text


def test_missing_dataset_and_no_log(tmp_path, loc, models):
    result = CliRunner().invoke(app, ["evaluate", models["d"][0], "--data", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no dataset at" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["evaluate", models["d"][0], "--data", str(loc.root), "--split", "bogus"])
    assert result.exit_code == 2 and "unknown split 'bogus'" in " ".join(result.output.split())
    before = len(cross_environment.evaluation_runs())
    result = invoke(models["d"][0], "--data", loc.root, "--no-log", "--format", "json")
    assert result.exit_code == 0 and '"test_front_back_rate": 0.5' in result.output
    assert len(cross_environment.evaluation_runs()) == before


def test_table3_from_evaluation_runs(loc, rooms, models):
    (uri_a, run_a), (uri_b, run_b), (uri_c, run_c) = models["a"], models["b"], models["c"]
    for args in ((uri_a, "--data", loc.root), (uri_a, "--data", rooms.root, "--split", "heldout"),
                 (f"runs:/{run_b}/cnn_loc", "--data", loc.root),  # the same model by its run
                 (uri_b, "--data", rooms.root, "--split", "heldout"), (uri_c, "--data", loc.root)):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
    runs = cross_environment.evaluation_runs({run_a, run_b, run_c})
    assert {r.data.tags[evaluation.TAG_SOURCE_RUN] for r in runs} == {run_a, run_b, run_c}

    # a (60°) ranks above c (0°): the anechoic row is a's; b was trained on everything: the "both" row
    table = cross_environment.assemble(runs, rank={run_a: 1, run_c: 2, run_b: 3})
    assert set(table.rows) == {"anechoic", "both"} and table.models["anechoic"][1] == run_a
    assert table.columns == ["anechoic (loc)", "heldout (rooms)", "reverberant (loc)", "training (rooms)"]
    a, b = table.rows["anechoic"], table.rows["both"]
    assert a["anechoic (loc)"].ad_deg == pytest.approx(90.0) and a["anechoic (loc)"].mse == pytest.approx(2.0)
    assert a["heldout (rooms)"].ad_deg == pytest.approx(75.0) and a["training (rooms)"].ad_deg == pytest.approx(60.0)
    # b always 180°: training rooms 0, 60, 180 -> (180 + 120 + 0) / 3; held-out 90, 300 -> (90 + 120) / 2
    assert b["training (rooms)"].ad_deg == pytest.approx(100.0) and b["heldout (rooms)"].ad_deg == pytest.approx(105.0)
    assert b["anechoic (loc)"].ad_deg == pytest.approx(float(np.mean(wrap(np.array(AZ) - 180))))

    # c ranked first takes the anechoic row; it has no rooms evaluation: those cells are empty
    swapped = cross_environment.assemble(runs, rank={run_c: 1, run_a: 2})
    assert swapped.models["anechoic"][1] == run_c and "training (rooms)" not in swapped.rows["anechoic"]
    md = cross_environment.markdown(swapped)
    assert md.splitlines()[0] == "| train \\ test | anechoic (loc) | heldout (rooms) | reverberant (loc) | training (rooms) |"
    assert "| anechoic | 90.00° / 2.0000 | – |" in md

    page = cross_environment.section([{"run_id": run_a, "rank": 1}, {"run_id": run_b, "rank": 2}])
    assert "Table 3" in page and "105.00° / " in page and run_a in page and run_c not in page
    assert "no evaluation runs" in cross_environment.section([{"run_id": "nope", "rank": 1}])


def constant_bast(azimuth_deg: float) -> torch.nn.Module:
    from test_leaderboard import TINY

    from trainables.bast import BASTConfig

    torch.manual_seed(0)
    model = get_trainable("bast").build_model(BASTConfig.model_validate({"model": dict(TINY)}))
    with torch.no_grad():
        model.head[-1].weight.zero_()
        model.head[-1].bias.copy_(torch.tensor([math.cos(math.radians(azimuth_deg)),
                                                math.sin(math.radians(azimuth_deg))]))
    return model.eval()


def test_report_of_a_sweep_has_table3_of_its_models_evaluations(loc, tmp_path):
    from test_leaderboard import Trial, make_sweep

    from sweep_platform.report import build_html

    trials = [Trial("0", {"data.train_environments": ["reverberant"]}, "completed", model=constant_bast(60),
                    val_history=[20.0]),
              Trial("1", {"data.train_environments": None}, "completed", model=constant_bast(180),
                    val_history=[30.0])]
    make_sweep("eval-t3", trials, loc.fingerprint)
    for t in trials:
        result = invoke(t.model_uri, "--data", loc.root)
        assert result.exit_code == 0, result.output
    page, _ = build_html("eval-t3", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    table = page[page.index("Table 3"):]
    # rows: reverberant (trial 0, 60°), both (trial 1, 180°); columns: the dataset's two environments. Equally
    # spaced azimuths: any constant direction has AD 90° and MSE 2 on each environment
    assert "<td>reverberant</td><td class=num>90.00° / 2.0000</td><td class=num>90.00° / 2.0000</td>" in table
    assert "<td>both</td>" in table and "<th>anechoic</th><th>reverberant</th>" in table
    assert trials[0].run_id in table and trials[1].run_id in table
