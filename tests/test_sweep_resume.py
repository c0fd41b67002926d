"""`binsweep resume`: a sweep whose driver was SIGKILLed goes on without rerunning finished trials or duplicating runs.

The first tests drive the MLflow callback directly with fake trials (no Ray, seconds): restore through
get_state/set_state, and a restore whose state lags behind MLflow (Tune saves it every ~10 s, a killed driver can
have logged more). The last one is the real thing: `python -m sweep_platform sweep` in a subprocess, SIGKILLed once a
trial has finished and another is mid-way, then `python -m sweep_platform resume` in a new process.
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from sweep_platform import ray_runtime, tracking
from sweep_platform.mlflow_callback import MlflowSweepCallback
from sweep_platform.parent_run import create as create_parent_run
from sweep_platform.sweep_file import parse_sweep
from sweep_platform.storage import optuna_storage, train_run_name
from sweep_platform.trial import SweepContext

DATASET_BUILD = {"generated_sounds": 24, "azimuths": list(range(0, 360, 30)), "environments": ["anechoic"],
                 "test_fraction": 0.25, "shard_rows": 64, "seed": 1}
EPOCHS = 4
LONG_EPOCHS = 10  # the killed-driver test: long enough to catch a trial part-way (trials take seconds now)


def sweep_data(epochs: int = EPOCHS) -> dict:
    return {
        "name": "resumable", "trainable": "bast", "dataset": "data/sweep_loc", "dataset_build": DATASET_BUILD,
        "metric": "val_ad_deg", "scheduler": {"type": "none"}, "concurrency": 2,
        "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0}, "sampler": {"type": "grid"},
        "base": {"model": {"preset": "bast_tiny", "embed_dim": 32, "mlp_dim": 64, "layers_left": 1,
                           "layers_right": 1, "layers_center": 1},
                 "train": {"epochs": epochs, "batch_size": 16, "lr": 1.0e-3, "precision": "fp32"}},
        "space": {"model.integration": {"choice": ["sub", "add", "concat"]}},
    }


def children(parent_id: str) -> list:
    c = tracking.client()
    ids = [e.experiment_id for e in c.search_experiments()]
    return c.search_runs(ids, filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


def epochs_of(run_id: str) -> list[int]:
    return [int(m.step) for m in tracking.client().get_metric_history(run_id, "epoch")]


# ------------------------------------------------------------------------------- the callback, without Ray


class FakeTrial:
    def __init__(self, trial_id: str, config: dict):
        self.trial_id, self.config, self.status = trial_id, config, "RUNNING"
        self.last_result: dict = {}
        self.metric_analysis: dict = {}
        self.pickled_error_file = self.error_file = None


def result(epoch: int) -> dict:
    return {"epoch": epoch, "val_ad_deg": 60.0 - epoch, "train_loss": 1.0 / epoch, "val_loss": 0.5,
            "params_m": 0.05, "checkpoint_path": "/nowhere", "training_iteration": epoch, "time_total_s": 1.0}


@pytest.fixture()
def ctx(tmp_path):
    data = sweep_data()
    spec = parse_sweep(data, "unit.yaml")
    name = f"unit-{tmp_path.name}"
    exp_id, parent = create_parent_run(name, spec, sweep_file=yaml.safe_dump(data), concurrency=2,
                                       optuna_storage="sqlite:///x.db", fingerprint="fp")
    return SweepContext(name=name, spec=spec, sweep_file=yaml.safe_dump(data), parent_run_id=parent,
                        experiment_id=exp_id)


def callback(ctx, state=None) -> MlflowSweepCallback:
    cb = pickle.loads(pickle.dumps(MlflowSweepCallback(ctx, evaluate=False)))  # as Tune keeps it in tuner.pkl
    if state is not None:
        cb.set_state(state)
    cb.setup()
    return cb


def test_a_restored_callback_reuses_the_run_and_skips_logged_epochs(ctx):
    trial = FakeTrial("aaaa_00000", {"model.integration": "sub"})
    cb = callback(ctx)
    cb.on_trial_start(0, [trial], trial)
    cb.on_trial_start(0, [trial], trial)  # idempotent
    for e in (1, 2):
        cb.on_trial_result(0, [trial], trial, result(e))
    state = cb.get_state()
    (run,) = children(ctx.parent_run_id)
    assert run.data.params["model.integration"] == "sub" and run.data.metrics["params_m"] > 0

    again = callback(ctx, state)  # `binsweep resume`: Train goes on after epoch 2, Tune replays nothing
    again.on_trial_start(0, [trial], trial)
    for e in (3, 4):
        again.on_trial_result(0, [trial], trial, result(e))
    trial.last_result = result(EPOCHS)
    again.on_trial_complete(0, [trial], trial)
    again.on_experiment_end([trial])
    (run,) = children(ctx.parent_run_id)
    assert epochs_of(run.info.run_id) == list(range(1, EPOCHS + 1))
    assert run.data.tags["binsweep.state"] == "completed" and run.info.status == "FINISHED"
    assert run.data.tags["binsweep.restarts"] == "1" and run.data.tags["binsweep.resumed_from_epoch"] == "2"


def test_a_restore_that_lags_behind_mlflow_finds_the_run_by_its_tags(ctx):
    trial = FakeTrial("bbbb_00001", {"model.integration": "add"})
    cb = callback(ctx)
    cb.on_trial_start(0, [trial], trial)
    stale = cb.get_state()  # saved before the results below: the driver then died
    for e in (1, 2):
        cb.on_trial_result(0, [trial], trial, result(e))

    again = callback(ctx, {"trials": {}})  # even an empty map: the run is found by its parent and trial tags
    again.on_trial_start(0, [trial], trial)
    for e in (1, 2, 3):  # Train resumed from an older checkpoint: epochs 1 and 2 are replayed
        again.on_trial_result(0, [trial], trial, result(e))
    again.on_trial_complete(0, [trial], trial)  # stopped after epoch 3 of 4
    again.on_experiment_end([trial])
    (run,) = children(ctx.parent_run_id)
    assert epochs_of(run.info.run_id) == [1, 2, 3]
    assert run.data.tags["binsweep.state"] == "stopped"
    assert stale["trials"]["bbbb_00001"]["run_id"] == run.info.run_id


def test_the_driver_starts_no_evaluation_for_trials_that_evaluate_themselves(ctx):
    """A completed single-worker trial scored itself; an ASHA-stopped one gets nothing unless evaluate_stopped."""
    cb = pickle.loads(pickle.dumps(MlflowSweepCallback(ctx, evaluate=True)))
    cb.setup()
    done, cut = FakeTrial("dddd_00000", {"model.integration": "sub"}), FakeTrial("dddd_00001", {"model.integration": "add"})
    for t, epochs in ((done, EPOCHS), (cut, 2)):
        cb.on_trial_start(0, [done, cut], t)
        for e in range(1, epochs + 1):
            cb.on_trial_result(0, [done, cut], t, result(e))
        t.last_result = result(epochs)
        cb.on_trial_complete(0, [done, cut], t)
    assert cb._rt["evaluations"] == {}  # no Ray task, nothing queued on the driver
    cb.on_experiment_end([done, cut])
    runs = {r.data.tags["binsweep.trial_id"]: r for r in children(ctx.parent_run_id)}
    assert runs["dddd_00000"].data.tags["binsweep.state"] == "completed"
    assert runs["dddd_00001"].data.tags["binsweep.state"] == "stopped"
    assert all(r.info.status == "FINISHED" for r in runs.values())


def test_a_failed_trial_gets_its_error_and_the_sweep_its_summary(ctx, tmp_path):
    ok = FakeTrial("cccc_00000", {"model.integration": "sub"})
    bad = FakeTrial("cccc_00001", {"model.integration": "add"})
    (tmp_path / "error.txt").write_text("Traceback ...\nFloatingPointError: loss is nan at epoch 1, step 2\n")
    bad.error_file = str(tmp_path / "error.txt")
    cb = callback(ctx)
    for t in (ok, bad):
        cb.on_trial_start(0, [ok, bad], t)
    for e in range(1, EPOCHS + 1):
        cb.on_trial_result(0, [ok, bad], ok, result(e))
    cb.on_trial_complete(0, [ok, bad], ok)
    cb.on_trial_error(0, [ok, bad], bad)
    cb.on_experiment_end([ok, bad])
    runs = {r.data.tags["binsweep.trial_id"]: r for r in children(ctx.parent_run_id)}
    assert runs["cccc_00001"].data.tags["binsweep.state"] == "failed"
    assert "loss is nan at epoch 1, step 2" in runs["cccc_00001"].data.tags["binsweep.error"]
    parent = tracking.client().get_run(ctx.parent_run_id)
    # two of the file's three trials ended: a sweep with a trial still to run was interrupted, not finished
    assert parent.data.tags["binsweep.state"] == "interrupted" and parent.info.status == "KILLED"
    assert parent.data.metrics["trials_completed"] == 1 and parent.data.metrics["trials_failed"] == 1
    assert parent.data.tags["binsweep.best_trial"] == "cccc_00000"


# ------------------------------------------------------------------------------------ a real killed driver


def _trial_states(exp_dir: Path) -> list[tuple[str, str, int]]:
    """(trial id, status, last epoch) from Tune's newest saved experiment state."""
    files = sorted(glob.glob(str(exp_dir / "experiment_state-*.json")))
    if not files:
        return []
    try:
        state = json.loads(Path(files[-1]).read_text())
    except ValueError:  # being rewritten
        return []
    out = []
    for trial_json, meta_json in state["trial_data"]:
        trial, meta = json.loads(trial_json), json.loads(meta_json)
        out.append((trial["trial_id"], trial["status"], int((meta.get("last_result") or {}).get("epoch", 0))))
    return out


def _parent(name: str):
    c = tracking.client()
    (run,) = c.search_runs([e.experiment_id for e in c.search_experiments()],
                           filter_string=f"tags.`binsweep.sweep_id` = '{name}' and tags.`binsweep.role` = 'sweep'")
    return run


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(tmp_path):
    name = "killed-sweep"
    path = tmp_path / "resumable.yaml"
    path.write_text(yaml.safe_dump(sweep_data(LONG_EPOCHS), sort_keys=False))
    exp_dir = Path(ray_runtime.storage_path()) / name
    log1 = tmp_path / "first.log"
    cmd = [sys.executable, "-m", "sweep_platform"]
    # Tune saves its experiment state every second here (default: adaptive, ~10 s), so the state this test watches
    # lags little behind trials that now take seconds
    with open(log1, "w") as out:
        driver = subprocess.Popen([*cmd, "sweep", str(path), "--name", name], stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True, env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"})
    # Kill once Tune's saved state has all three trials and one finished, and another is part-way (MLflow is live;
    # Tune's saved state can lag ~10 s behind, so it would not tell whether a trial is really part-way).
    deadline, states, finished, midway = time.time() + 240, [], [], []
    try:
        while time.time() < deadline:
            states = _trial_states(exp_dir)
            finished = [t for t, s, _ in states if s == "TERMINATED"]
            if len(states) == 3 and finished:
                midway = [r.data.tags["binsweep.trial_id"] for r in children(_parent(name).info.run_id)
                          if r.data.tags.get("binsweep.state") == "running"
                          and 1 <= r.data.metrics.get("epoch", 0) < LONG_EPOCHS]
                if midway:
                    break
            assert driver.poll() is None, log1.read_text()
            time.sleep(0.25)
        else:
            pytest.fail(f"no finished + part-way trial within 240 s: {states}\n{log1.read_text()}")
    finally:
        os.kill(driver.pid, signal.SIGKILL)  # the driver only: its local Ray cluster may die with it or not
        driver.wait()
    parent = _parent(name)
    before = {r.data.tags["binsweep.trial_id"]: (r.info.run_id, epochs_of(r.info.run_id))
              for r in children(parent.info.run_id)}
    for tid in finished:
        assert before[tid][1] == list(range(1, LONG_EPOCHS + 1))

    res = subprocess.run([*cmd, "resume", name], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = {r.data.tags["binsweep.trial_id"]: r for r in children(parent.info.run_id)}
    assert len(runs) == 3  # one child run per trial: none duplicated
    for tid, run in runs.items():
        assert epochs_of(run.info.run_id) == list(range(1, LONG_EPOCHS + 1)), tid  # every epoch exactly once
        assert run.data.tags["binsweep.state"] == "completed" and "test_ad_deg" in run.data.metrics
    for tid in finished:  # finished trials were not rerun: same run, untouched, no restart, not started again
        assert runs[tid].info.run_id == before[tid][0]
        assert "binsweep.restarts" not in runs[tid].data.tags and f"start     {tid}" not in res.stdout
    for tid in midway:  # unfinished trials went on from their Train checkpoint, in the same run
        assert runs[tid].info.run_id == before[tid][0]
        assert runs[tid].data.tags["binsweep.restarts"] == "1"
        assert int(runs[tid].data.tags["binsweep.resumed_from_epoch"]) >= before[tid][1][-1]
        assert Path(ray_runtime.storage_path(), train_run_name(name, tid)).is_dir()
    again = tracking.client().get_run(parent.info.run_id)
    assert again.info.status == "FINISHED" and again.data.tags["binsweep.state"] == "finished"
    study = optuna.load_study(study_name=name, storage=optuna_storage())
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials), [
        (t.number, t.state.name, t.values, sorted(t.intermediate_values)) for t in study.trials]


# ------------------------------------------------------------------------------- a real killed trial process


@pytest.mark.slow
def test_a_trial_whose_process_dies_goes_on_from_its_last_checkpoint(tmp_path):
    """SIGKILL of the trial's own process at the start of epoch 3 (BINSWEEP_FAULT): Tune retries it (max_failures,
    default 1) and the new process resumes after epoch 2; MLflow has every epoch once and the trial is evaluated."""
    name = "killed-trial"
    data = {**sweep_data(), "space": {"model.integration": {"choice": ["sub"]}}, "trials": 1}
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    marker = tmp_path / "killed"
    env = {**os.environ, "BINSWEEP_FAULT": f"kill:0:3:{marker}"}
    res = subprocess.run([sys.executable, "-m", "sweep_platform", "sweep", str(path), "--name", name, "--no-progress"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert marker.is_file() and "kill rank 0 at epoch 3" in marker.read_text()  # the process really died
    (run,) = children(_parent(name).info.run_id)
    assert epochs_of(run.info.run_id) == list(range(1, EPOCHS + 1))  # every epoch once
    assert run.data.tags["binsweep.state"] == "completed" and "test_ad_deg" in run.data.metrics
    tid = run.data.tags["binsweep.trial_id"]
    results = [json.loads(line) for line in
               Path(ray_runtime.storage_path(), name, tid, "result.json").read_text().splitlines()]
    # the first process reported epochs 1 and 2; the retried one (a new pid, Tune's iterations from 1 again) went on
    # from the epoch-2 checkpoint instead of training from scratch
    assert [(r["epoch"], r["training_iteration"]) for r in results] == [(1, 1), (2, 2)] + [
        (e, e - 2) for e in range(3, EPOCHS + 1)]
    assert results[0]["pid"] == results[1]["pid"] != results[2]["pid"] == results[3]["pid"]
    (trial,) = optuna.load_study(study_name=name, storage=optuna_storage()).trials
    assert trial.state.name == "COMPLETE"


@pytest.mark.slow
def test_resume_retry_failed_reruns_an_errored_trial_from_its_last_checkpoint(tmp_path):
    """A trial that raises at epoch 3 with no retries left ends FAILED; `resume --retry-failed` runs it again from
    its epoch-2 checkpoint in the same MLflow run (every epoch once, error cleared), and Optuna keeps the FAIL and
    gains a COMPLETE trial with the same parameters. A plain `resume` would not have touched it."""
    name = "retry-failed"
    data = {**sweep_data(), "space": {"model.integration": {"choice": ["sub"]}}, "trials": 1}
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    marker = tmp_path / "raised"
    cmd = [sys.executable, "-m", "sweep_platform"]
    env = {**os.environ, "BINSWEEP_FAULT": f"raise:0:3:{marker}"}
    first = subprocess.run([*cmd, "sweep", str(path), "--name", name, "--no-progress", "--max-failures", "0"],
                           capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode != 0 and marker.is_file(), first.stdout + first.stderr  # the only trial failed
    (run,) = children(_parent(name).info.run_id)
    assert run.data.tags["binsweep.state"] == "failed" and "injected fault" in run.data.tags["binsweep.error"]
    assert epochs_of(run.info.run_id) == [1, 2]

    res = subprocess.run([*cmd, "resume", name, "--retry-failed"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    (again,) = children(_parent(name).info.run_id)
    assert again.info.run_id == run.info.run_id  # the same run, not a duplicate
    assert epochs_of(run.info.run_id) == list(range(1, EPOCHS + 1))  # epochs 1-2 not repeated, 3.. added
    assert again.data.tags["binsweep.state"] == "completed" and "binsweep.error" not in again.data.tags
    assert "test_ad_deg" in again.data.metrics and int(again.data.tags["binsweep.resumed_from_epoch"]) == 2
    trials = optuna.load_study(study_name=name, storage=optuna_storage()).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[0].params == trials[1].params and trials[1].user_attrs["retry_of"] == trials[0].number
