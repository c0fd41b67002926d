"""Real Ray Train runs on CPU (gloo DDP), logged to a real SQLite MLflow store and read back.

One Ray instance serves the whole test session. Datasets are small generated-sound, KEMAR anechoic sets.
"""

from __future__ import annotations

import math

import mlflow
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from sweep_platform import tracking
from sweep_platform.cli import app
from sweep_platform.model_store import load_checkpoint, load_model
from sweep_platform.training import Resources, TrainingFailed, metric_history, run_training
from trainables.bast import BASTConfig
from trainables.localization.builder import LocalizationBuildConfig, build
from trainables.registry import get_trainable

pytestmark = pytest.mark.slow

TINY = {"preset": "bast_tiny", "embed_dim": 32, "heads": 2, "dim_head": 16, "mlp_dim": 64}


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train") / "loc_small"
    build(LocalizationBuildConfig(generated_sounds=24, azimuths=tuple(range(0, 360, 30)), environments=("anechoic",),
                                  test_fraction=0.25, shard_rows=48, seed=1), root)
    return root


def config(root, **train) -> BASTConfig:
    return BASTConfig.model_validate({"model": TINY, "data": {"root": str(root)},
                                      "train": {"epochs": 3, "batch_size": 16, "lr": 1e-3, **train}})


@pytest.fixture(scope="module")
def reference(small_data):
    """One worker, three epochs, never interrupted."""
    return run_training("bast", config(small_data), name="ref-1w", evaluate=False)


def epochs_of(run_id):
    return [int(h["epoch"]) for h in metric_history(run_id)]


def test_run_reports_every_epoch_once_with_checkpoints(reference):
    hist = reference.history
    assert epochs_of(reference.run_id) == [1, 2, 3]
    for h in hist:
        for k in ("train_loss", "val_loss", "val_ad_deg", "val_mse", "samples_per_s"):
            assert math.isfinite(h[k]), (k, h)
        assert 0 <= h["val_ad_deg"] <= 180
    run = tracking.client().get_run(reference.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.embed_dim"] == "32" and run.data.params["resources.workers"] == "1"
    # the best checkpoint is the one with the lowest val_ad_deg and holds what loop.py wrote
    best_epoch = min(hist, key=lambda h: h["val_ad_deg"])["epoch"]
    assert reference.best_metrics["epoch"] == best_epoch
    model, cfg, meta = load_checkpoint(get_trainable("bast"), reference.best_checkpoint)
    assert meta["epoch"] == best_epoch and cfg.model.embed_dim == 32


def test_restarted_run_resumes_and_matches_the_uninterrupted_one(small_data, reference, tmp_path):
    marker = tmp_path / "raised"
    with pytest.raises(TrainingFailed, match="injected fault: rank 0 at epoch 3"):
        run_training("bast", config(small_data), name="resume-1w", evaluate=False, fault=f"raise:0:3:{marker}")
    assert marker.exists()
    # the same name again: Ray Train resumes from the epoch-2 checkpoint, MLflow reuses the run
    again = run_training("bast", config(small_data), name="resume-1w", evaluate=False)
    assert epochs_of(again.run_id) == [1, 2, 3]
    final, ref = again.history[-1], reference.history[-1]
    for k in ("train_loss", "val_loss", "val_ad_deg", "val_mse"):
        assert final[k] == pytest.approx(ref[k], rel=1e-6, abs=1e-9), k
    runs = tracking.client().search_runs([tracking.ensure_experiment("binsweep-bast")],
                                         filter_string="tags.`binsweep.train_name` = 'resume-1w'")
    assert len(runs) == 1


def test_killed_worker_is_replaced_and_no_epoch_is_lost_or_repeated(small_data, tmp_path):
    marker = tmp_path / "killed"
    out = run_training("bast", config(small_data), name="kill-2w", resources=Resources(workers=2), max_failures=1,
                       evaluate=False, fault=f"kill:1:2:{marker}")
    assert marker.read_text().startswith("kill rank 1 at epoch 2")  # the process really died (SIGKILL)
    assert epochs_of(out.run_id) == [1, 2, 3]
    assert all(math.isfinite(h["val_ad_deg"]) for h in out.history)


def test_two_workers_match_one_with_the_same_global_batch(small_data, reference):
    """DDP averages gradients over the global batch of 16 (2 x 8). The two runs see the same rows per epoch but
    in different batches (each rank streams its own half), so they agree closely, not bit for bit: the stated
    tolerance is 25% on the first epoch's training loss and 15 degrees on the final validation error."""
    two = run_training("bast", config(small_data), name="ddp-2w", resources=Resources(workers=2), evaluate=False)
    one = reference.history
    assert two.history[0]["train_loss"] == pytest.approx(one[0]["train_loss"], rel=0.25)
    assert abs(two.history[-1]["val_ad_deg"] - one[-1]["val_ad_deg"]) < 15
    assert two.history[-1]["train_loss"] < two.history[0]["train_loss"]  # both learn


def test_nan_loss_stops_the_run_naming_epoch_and_step(small_data):
    cfg = config(small_data, lr=1e30, grad_clip=None, epochs=2)
    with pytest.raises(FloatingPointError, match=r"training loss is (nan|inf) at epoch 1, step \d+"):
        run_training("bast", cfg, name="nan-1w", evaluate=False)
    run = tracking.client().search_runs([tracking.ensure_experiment("binsweep-bast")],
                                        filter_string="tags.`binsweep.train_name` = 'nan-1w'")[0]
    assert run.info.status == "FAILED" and "epoch 1, step" in run.data.tags["binsweep.error"]


def test_bad_config_file_names_file_and_key_and_starts_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {sharing: XP}\ntrain: {epochz: 3}\n")
    before = len(tracking.client().search_runs([tracking.ensure_experiment("binsweep-bast")]))
    res = CliRunner().invoke(app, ["train", "bast", "--config", str(bad)])
    assert res.exit_code == 2
    assert "bad.yaml: model.sharing" in res.output and "'SP' or 'NSP'" in res.output
    assert "train.epochz: unknown key" in res.output
    assert len(tracking.client().search_runs([tracking.ensure_experiment("binsweep-bast")])) == before


@pytest.fixture(scope="module")
def learning_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train") / "loc_learn"
    build(LocalizationBuildConfig(generated_sounds=240, azimuths=tuple(range(0, 360, 30)), environments=("anechoic",),
                                  test_fraction=0.2, shard_rows=256, seed=1), root)
    return root


def test_cli_train_learns_localization_and_logs_everything(learning_data, tmp_path):
    """The learning check: a D=48, 1/1/1 BAST on measured KEMAR anechoic data gets below 20 degrees on unseen
    test sounds (chance is 90) in 11 short epochs (measured 13.1 on test, 16.4 on validation). D=48 rather than
    bast_tiny's 64 keeps it under about 3 minutes on two cores (1.4x the step rate; in 12 epochs 16.8 degrees on
    validation against 17.2 for D=64)."""
    cfg = {"model": {"preset": "bast_tiny", "embed_dim": 48, "dim_head": 24, "mlp_dim": 96},
           "data": {"root": str(learning_data)},
           "train": {"epochs": 11, "batch_size": 32, "lr": 2e-3, "schedule": "cosine", "warmup_epochs": 0.5}}
    path = tmp_path / "learn.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # two torch threads on CI's two cores: the check takes about half the time of one
    res = CliRunner().invoke(app, ["train", "bast", "--config", str(path), "--name", "learn-cli",
                                   "--cpus-per-worker", "2"])
    assert res.exit_code == 0, res.output
    assert "per-epoch metrics" in res.output and "test split" in res.output

    c = tracking.client()
    run = c.search_runs([tracking.ensure_experiment("binsweep-bast")],
                        filter_string="tags.`binsweep.train_name` = 'learn-cli'")[0]
    m = run.data.metrics
    assert m["test_ad_deg"] < 20, m["test_ad_deg"]
    assert "test_ad_deg.anechoic" in m and m["gpu_hours"] == 0
    assert epochs_of(run.info.run_id) == list(range(1, 12))
    names = {a.path for a in c.list_artifacts(run.info.run_id, "evaluation")}
    for f in ("ad_per_azimuth.png", "hemifield.png", "attention_rollout.png", "per_azimuth.csv", "summary.txt"):
        assert f"evaluation/{f}" in names, names
    # the logged model is the best checkpoint: same predictions
    logged = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                         filter_string=f"source_run_id = '{run.info.run_id}'")
    assert logged[0].artifact_location.startswith((tracking.paths.runs_dir() / "mlartifacts").as_uri())
    assert len(logged) == 1
    model, _ = load_model(logged[0].model_uri)  # weights only, as the served model rebuilds it
    ckpt_model, _, _ = load_checkpoint(get_trainable("bast"), run.data.tags["binsweep.best_checkpoint"])
    x = torch.randn(3, 2, 129, 61)
    with torch.no_grad():
        np.testing.assert_allclose(model.eval()(x).numpy(), ckpt_model(x).numpy(), rtol=1e-5, atol=1e-6)
