"""Quiet by default (sweep_platform.quiet): a real `binsweep sweep` prints its table and our own lines, not Ray's
token-auth warning, MLflow's "View run" lines, its INFO lines or download bars, while a failing trial's error still
shows; `binsweep -v` shows the hidden lines. The sweep's Optuna study carries the metric names and the sweep's
name, MLflow parent run and trainable (what optuna-dashboard shows).

The two sweeps (2 trials x 1 epoch of a tiny BAST, one of them diverging) run at once as subprocesses, each with
its own BINSWEEP_HOME, so that a dataset build, a fresh MLflow database and a fresh local Ray are seen by both.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sweep_platform import quiet

REPO = Path(__file__).resolve().parents[1]
DATASET_BUILD = {"generated_sounds": 24, "azimuths": list(range(0, 360, 30)), "environments": ["anechoic"],
                 "test_fraction": 0.25, "shard_rows": 64, "seed": 1}
SWEEP = {
    "name": "quiet", "trainable": "bast", "dataset": "data/sweep_loc", "dataset_build": DATASET_BUILD,
    "objectives": [{"metric": "val_ad_deg", "mode": "min"}, {"metric": "params_m", "mode": "min"}],
    "scheduler": {"type": "none"}, "concurrency": 2,
    "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0}, "sampler": {"type": "grid", "seed": 0},
    "base": {"model": {"preset": "bast_tiny", "embed_dim": 32, "mlp_dim": 64, "layers_left": 1, "layers_right": 1,
                       "layers_center": 1},
             "train": {"epochs": 1, "batch_size": 16, "precision": "fp32", "grad_clip": None}},
    "space": {"train.lr": {"choice": [1.0e-3, 1.0e8]}},  # 1e8 without clipping: NaN loss in epoch 1, a failed trial
}
NOISE = ["View run", "View experiment", "PYTHON worker processes", "Token authentication is enabled", "pickle",
         "Creating initial MLflow database tables", "system_metrics_monitor", "Downloading artifacts"]


# --- the filter itself -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("line", [
    "2026-12-06 02:58:44,946\tWARNING authentication_token_setup.py:85 -- Token authentication is enabled for this Ray "
    "cluster. Set RAY_AUTH_MODE=disabled to opt out.",
    "WARNING: 8 PYTHON worker processes have been started on node: abc with address: 10.0.0.1, which is 2x the maximum",
    "🏃 View run trial-3 at: http://mlflow:5000/#/experiments/1/runs/abc",
    "🧪 View experiment at: http://mlflow:5000/#/experiments/1",
    "2026/12/06 03:02:21 INFO mlflow.system_metrics.system_metrics_monitor: Started monitoring system metrics.",
    "Downloading artifacts: 100%|██████████| 1/1 [00:00<00:00, 17697.49it/s]",
])
def test_noise_is_recognised(line):
    assert quiet.is_noise(line)


@pytest.mark.parametrize("line", [
    "failed: trial 9c979d6d (9c979d6d, 74bb4c11): FloatingPointError: bast: training loss is nan at epoch 1",
    "Token authentication is disabled for this Ray cluster. Anyone with network access to the cluster can run code",
    "Traceback (most recent call last):",
    "WARNING insufficient_resources_manager.py:163 -- Ignore this message if the cluster is autoscaling. No trial is "
    "running and no new trial has been started within the last 60 seconds.",
    "2026/12/06 03:02:21 WARNING mlflow.utils.requirements_utils: Detected one or more mismatches",
    "MLflow: model bast_t not logged: OSError: disk full",
])
def test_problems_are_not_noise(line):
    assert not quiet.is_noise(line)


def test_noise_filter_drops_only_matching_records():
    f = quiet.NoiseFilter(r"Token authentication is enabled")
    rec = lambda msg: logging.LogRecord("ray", logging.WARNING, __file__, 1, msg, (), None)  # noqa: E731
    assert not f.filter(rec("Token authentication is enabled for this Ray cluster."))
    assert f.filter(rec("Token authentication is disabled for this Ray cluster."))


def test_worker_env_carries_verbosity_and_mlflow_switches(monkeypatch):
    monkeypatch.delenv(quiet.VERBOSE_VARIABLE, raising=False)
    monkeypatch.delenv(quiet.DEBUG_VARIABLE, raising=False)
    assert quiet.worker_env()["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"
    monkeypatch.setenv(quiet.VERBOSE_VARIABLE, "1")
    assert quiet.worker_env() == {quiet.VERBOSE_VARIABLE: "1"}


# --- a real sweep, quiet and with -v --------------------------------------------------------------------------------

def _start(tmp: Path, name: str, *flags: str) -> tuple[subprocess.Popen, Path]:
    home = tmp / name
    home.mkdir()
    sweep = tmp / f"{name}.yaml"
    sweep.write_text(yaml.safe_dump(SWEEP, sort_keys=False))
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS", quiet.VERBOSE_VARIABLE, quiet.DEBUG_VARIABLE)
           and not k.startswith("MLFLOW_")}
    env.update(BINSWEEP_HOME=str(home), BINSWEEP_RAY_CPUS="4", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "sweep_platform", *flags, "sweep", str(sweep), "--no-progress", "--name", name]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True), home


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quiet")
    runs = {name: _start(tmp, name, *flags) for name, flags in (("calm", ()), ("loud", ("-v",)))}
    out = {}
    for name, (proc, home) in runs.items():
        text, _ = proc.communicate(timeout=400)
        out[name] = (proc.returncode, text, home)
    return out


@pytest.mark.slow
def test_quiet_sweep_hides_noise_but_not_the_failure(sweeps):
    code, text, _ = sweeps["calm"]
    assert code == 0, text
    for noise in NOISE:
        assert noise not in text, f"{noise!r} in:\n{text}"
    assert "2 trials (1 completed, 1 failed)" in text, text
    assert "FloatingPointError" in text and "training loss is nan" in text, text  # the failing trial's error


@pytest.mark.slow
def test_verbose_shows_the_hidden_lines(sweeps):
    code, text, _ = sweeps["loud"]
    assert code == 0, text
    assert "Token authentication is enabled" in text, text
    assert "Creating initial MLflow database tables" in text or "system_metrics_monitor" in text, text


@pytest.mark.slow
def test_study_carries_metric_names_and_sweep_attrs(sweeps):
    code, text, home = sweeps["calm"]
    assert code == 0, text
    script = ("import json, optuna; from sweep_platform import storage; "
              "s = optuna.load_study(study_name='calm', storage=storage.optuna_rdb()); "
              "print(json.dumps({'names': s.metric_names, 'attrs': s.user_attrs}))")
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "BINSWEEP_HOME": str(home)})
    import json

    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["names"] == ["val_ad_deg", "params_m"]
    parent = got["attrs"]["mlflow_parent_run_id"]
    assert got["attrs"]["sweep"] == "calm" and got["attrs"]["trainable"] == "bast"
    assert f"MLflow parent run {parent}" in text


def test_condense_keeps_a_tracebacks_last_line_and_drops_train_retry_noise():
    batch = ["Error in training function:", "Traceback (most recent call last):",
             '  File "/work/main/trainables/loop.py", line 333, in train_worker', "    train_loop(cfg)",
             "    ^^^^^^^^^^^^^^", "FloatingPointError: bast: training loss is nan at epoch 1", "",
             "[FailurePolicy] RETRY", "  Source: worker group", "  Error count: 1 (max allowed: 1)",
             "Error: Training failed due to worker errors:", "[Rank 0,1 Error Snippet]:",
             "bast: fp32 on cpu (train.precision=fp32)"]
    assert quiet.condense(batch) == ["FloatingPointError: bast: training loss is nan at epoch 1",
                                     "[FailurePolicy] RETRY", "bast: fp32 on cpu (train.precision=fp32)"]
