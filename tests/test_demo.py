"""`binsweep demo` (what `make demo` runs) end to end on a smaller sweep file: a real sweep on embedded Ray, the
leaderboard, a real promotion in the SQLite registry, predictions of WAV files from the held-out test split, and
the hints to open MLflow and optuna-dashboard on what was written. It runs test_sweep.py's tiny sweep file (four
trials of three epochs), so one sweep serves both modules; the full bast_demo.yaml demo is timed in
bench/README.md."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import numpy as np
import pytest
import soundfile as sf
from sweep_platform import paths, tracking
from sweep_platform.demo import DEFAULT_SWEEP, angular_error, ui_hints, write_test_clips
from sweep_platform.sweep_file import load_sweep
from test_sweep import demo_run

pytestmark = pytest.mark.slow


def test_the_shipped_demo_sweep_is_what_make_demo_runs():
    spec = load_sweep(DEFAULT_SWEEP)
    assert Path(DEFAULT_SWEEP).name == "bast_demo.yaml"
    assert spec.trainable == "bast" and spec.trials >= 4 and spec.scheduler.type == "asha"
    assert spec.resources.gpus_per_worker == 0 and spec.dataset_build is not None
    assert "demo" in Path(DEFAULT_SWEEP).parents[1].joinpath("Makefile").read_text()


def test_angular_error_wraps_around():
    assert angular_error(350, 10) == 20 and angular_error(10, 350) == 20 and angular_error(90, 270) == 180


def test_ui_hints_name_the_stores_that_were_written():
    mlflow_line, optuna_line = ui_hints("7")
    assert f"ui --backend-store-uri sqlite:///{paths.runs_dir() / 'mlflow.db'}" in mlflow_line
    # the link opens the experiment's runs in the UI's model-training view (3.17 defaults to GenAI)
    assert "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning" in mlflow_line
    assert f"sqlite:///{paths.runs_dir() / 'optuna.db'}" in optuna_line and "optuna-dashboard" in optuna_line


def test_demo_sweeps_ranks_promotes_and_predicts():
    """The demo on test_sweep.py's tiny sweep file (one run serves both modules): four trials, one diverging."""
    name, res, _ = demo_run()
    out = res.output.replace("\n", " ")
    assert res.exit_code == 0, res.output
    for step in ("1/4 sweep", "2/4 leaderboard", "3/4 promote", "4/4 predict"):
        assert step in out, step
    assert "promoted: bast_demo@champion -> version 1" in out
    assert "failed" in out and "FloatingPointError" in out  # the diverging trial is named, the demo goes on

    # the alias is real and points at the best trial's logged model
    c = tracking.client()
    version = c.get_model_version_by_alias("bast_demo", "champion")
    assert version.tags["binsweep.sweep_id"] == name and version.source.startswith("models:/m-")
    mlflow.pyfunc.load_model("models:/bast_demo@champion")  # servable as logged

    # three held-out clips at three azimuths, each predicted
    clips = sorted((paths.runs_dir() / "demo" / name).glob("*.wav"))
    assert len(clips) == 3
    lines = re.findall(r"test_\d\d_az(\d{3})\.wav\s+true\s+(\d+)°\s+predicted\s+([\d.]+)°", out)
    assert len(lines) == 3 and len({az for az, _, _ in lines}) == 3
    for az, true, pred in lines:
        assert int(az) == int(true) and 0 <= float(pred) < 360
    wave, rate = sf.read(str(clips[0]))
    assert rate == 16000 and wave.shape == (8000, 2)

    assert "optuna-dashboard" in out and "ui --backend-store-uri" in out
    assert f"binsweep leaderboard --sweep {name}" in out


def test_test_clips_come_from_the_test_split_only(tmp_path):
    from trainables.localization.builder import LocalizationBuildConfig, build

    root = tmp_path / "loc"
    build(LocalizationBuildConfig(generated_sounds=8, azimuths=(0, 90, 180, 270), environments=("anechoic",),
                                  test_fraction=0.25, shard_rows=16, seed=3), root)
    import pyarrow.parquet as pq

    from trainables.localization import shards

    test_sounds = set()
    for f in shards.load_manifest(root).shards("test"):
        test_sounds |= set(pq.read_table(f, columns=["sound_id"]).column("sound_id").to_pylist())
    clips = write_test_clips(root, tmp_path / "wav", 4)
    assert sorted(c.azimuth_deg for c in clips) == [0, 90, 180, 270]
    assert all(c.sound_id in test_sounds for c in clips)
    for c in clips:
        wave, _ = sf.read(str(c.path))
        assert wave.shape == (8000, 2) and np.abs(wave).max() > 0
