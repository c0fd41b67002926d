"""`binsweep sweep`: a real Ray Tune sweep (Train V2 trials, Optuna grid, ASHA) logged to a real SQLite MLflow store
and a real SQLite Optuna storage, then read back.

One sweep serves most tests here and in test_demo.py: a tiny BAST on a tiny generated dataset (built from the
file's dataset_build), four trials of three epochs, two at once, ASHA grace 1 / max 3 / reduction 2, objectives
val_ad_deg and params_m, run through `binsweep demo` (which runs the sweep as `binsweep sweep` does, then the
leaderboard, a promotion and predictions). One trial gets lr 1e8 without gradient clipping, so its loss turns NaN
in its first epoch and it must be recorded as failed while the others finish. One gets lr 1e-7, which learns
nothing: the grid sampler (seed 0) starts it third, after a trial that learns has set ASHA's first rung, so ASHA
stops it after epoch 1 and it must be labelled "stopped".
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from typer.testing import CliRunner

from sweep_platform import paths, ray_runtime, tracking
from sweep_platform.cli import app
from sweep_platform.sweep_file import parse_sweep
from sweep_platform.storage import optuna_storage
from sweep_platform.placement import trial_resources, trials_at_once
from sweep_platform.trial import end_state, trial_epochs

runner = CliRunner()

DATASET_BUILD = {"generated_sounds": 24, "azimuths": list(range(0, 360, 30)), "environments": ["anechoic"],
                 "test_fraction": 0.25, "shard_rows": 64, "seed": 1}
# GridSampler(seed=0) starts these in the order 3e-3, 1e8, 1e-7, 1e-3 (checked in test_grid_order_puts_...)
LRS = [1.0e-3, 1.0e-7, 3.0e-3, 1.0e8]
DIVERGES, LEARNS_NOTHING = 1.0e8, 1.0e-7
NAME = "tiny-sweep"


def sweep_file(tmp: Path, **over) -> dict:
    data = {
        "name": "tiny", "trainable": "bast", "dataset": "data/sweep_loc", "dataset_build": DATASET_BUILD,
        "objectives": [{"metric": "val_ad_deg", "mode": "min"}, {"metric": "params_m", "mode": "min"}],
        "scheduler": {"type": "asha", "grace_epochs": 1, "max_epochs": 3, "reduction_factor": 2},
        "concurrency": 2, "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
        "sampler": {"type": "grid", "seed": 0}, "evaluate_stopped": True,
        "base": {"model": {"preset": "bast_tiny", "embed_dim": 32, "mlp_dim": 64, "layers_left": 1,
                           "layers_right": 1, "layers_center": 1},
                 "train": {"epochs": 3, "batch_size": 16, "precision": "fp32", "grad_clip": None}},
        "space": {"train.lr": {"choice": LRS}},
    }
    data.update(over)
    return data


def write(tmp: Path, name: str, data) -> Path:
    path = tmp / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def children(parent_id: str, exp_id: str) -> list:
    return tracking.client().search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


def parents(name: str) -> list:
    c = tracking.client()
    ids = [e.experiment_id for e in c.search_experiments()]
    return c.search_runs(ids, filter_string=f"tags.`binsweep.sweep_id` = '{name}' and tags.`binsweep.role` = 'sweep'")


def all_runs() -> int:
    c = tracking.client()
    ids = [e.experiment_id for e in c.search_experiments()]
    return len(c.search_runs(ids)) if ids else 0


# ------------------------------------------------------------------------------------------- fast, no Ray needed


def test_concurrency_follows_the_cluster_and_the_file(tmp_path):
    spec = parse_sweep(sweep_file(tmp_path, concurrency="auto", trials=4, sampler={"type": "random", "seed": 0}),
                       "t.yaml")
    assert trials_at_once(spec, {"CPU": 3}) == 3  # a single-worker trial trains in its own actor: 1 CPU each
    assert trials_at_once(spec, {"CPU": 16}) == 4  # never more than the trials
    gpu = parse_sweep(sweep_file(tmp_path, concurrency="auto", trials=8, sampler={"type": "random"},
                                 resources={"workers": 2, "cpus_per_worker": 2, "gpus_per_worker": 1}), "t.yaml")
    assert trials_at_once(gpu, {"CPU": 64, "GPU": 8}) == 4  # GPUs bind first: 8 / (2 x 1)
    with pytest.raises(ValueError, match="one trial needs 5 CPUs and 2 GPUs"):
        trials_at_once(gpu, {"CPU": 64, "GPU": 1})
    assert trials_at_once(parse_sweep(sweep_file(tmp_path), "t.yaml"), {"CPU": 1}) == 2  # the file's number wins


def test_auto_concurrency_counts_what_an_autoscaling_cluster_can_grow_to(tmp_path):
    one_gpu = parse_sweep(sweep_file(tmp_path, concurrency="auto", trials=8, sampler={"type": "random"},
                                     resources={"workers": 1, "cpus_per_worker": 4, "gpus_per_worker": 1}), "t.yaml")
    assert trial_resources(one_gpu) == {"CPU": 4, "GPU": 1}  # the trial's actor holds what its loop uses
    head_only = {"CPU": 8}  # GPU workers not up yet
    with pytest.raises(ValueError, match="one trial needs 4 CPUs and 1 GPUs but the Ray cluster has 8 CPUs and 0 GPUs"):
        trials_at_once(one_gpu, head_only)
    # the autoscaler can add 3 nodes of 8 CPUs + 1 GPU: 3 trials, not an error before anything is requested
    assert trials_at_once(one_gpu, head_only, {"CPU": 32, "GPU": 3}) == 3
    with pytest.raises(ValueError, match="at its largest"):
        trials_at_once(one_gpu, head_only, {"CPU": 32, "GPU": 0})
    shared = parse_sweep(sweep_file(tmp_path, concurrency="auto", trials=8, sampler={"type": "random"},
                                    resources={"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0.5}), "t.yaml")
    assert trials_at_once(shared, {"CPU": 16, "GPU": 1}) == 2  # two trials share one GPU


def test_multi_worker_trial_drivers_take_a_head_slot_not_a_gpu_nodes_cpu(tmp_path):
    """On a cluster whose head offers trial_driver slots (start.sh, aws-gpu.yaml, KubeRay, the embedded cluster), the
    actor that drives a multi-worker trial holds a slot and no CPU: it can only run on the head, and on a 4-vCPU GPU
    node all 4 CPUs stay for the worker. Without slots it takes a CPU wherever one is free, as before."""
    from sweep_platform import placement

    spec = parse_sweep(sweep_file(tmp_path, concurrency="auto", trials=8, sampler={"type": "random"},
                                  resources={"workers": 2, "cpus_per_worker": 4, "gpus_per_worker": 1}), "t.yaml")
    assert placement.trial_resources(spec) == {"CPU": 0, "trial_driver": 1}
    assert placement.trial_resources(spec, driver_slots=False) == {"CPU": 1}
    head = {"CPU": 4, **placement.head_resources()}
    # 4 GPU nodes of 4 CPUs + 1 GPU may join: 2 two-worker trials, their drivers on the head
    assert trials_at_once(spec, head, {"CPU": 20, "GPU": 4, **placement.head_resources()}) == 2
    assert placement.trial_footprint(spec, True) == {"CPU": 8, "GPU": 2, "trial_driver": 1}


def test_the_ceiling_comes_from_the_autoscaler_config_or_the_environment(tmp_path, monkeypatch):
    from sweep_platform import placement

    config = {"max_workers": 5, "head_node_type": "head", "available_node_types": {
        "head": {"resources": {"CPU": 4, "GPU": 0, "sweep_driver": 1}},
        "gpu": {"min_workers": 0, "max_workers": 3, "resources": {"CPU": 4, "GPU": 1}},
        "cpu": {"min_workers": 0, "max_workers": 4, "resources": {"CPU": 16}}}}
    # per resource, the node types richest in it, within each type's and the cluster's max_workers
    assert placement.bootstrap_ceiling(config) == {"CPU": 4 + 4 * 16 + 1 * 4, "GPU": 3, "sweep_driver": 1}
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("BINSWEEP_AUTOSCALING_CONFIG", str(path))
    assert placement.max_cluster_resources()["GPU"] == 3
    monkeypatch.setenv("BINSWEEP_AUTOSCALING_CONFIG", str(tmp_path / "none.yaml"))
    monkeypatch.setenv("BINSWEEP_MAX_RESOURCES", '{"CPU": 10, "GPU": 2}')
    assert placement.max_cluster_resources() == {"CPU": 10.0, "GPU": 2.0}
    monkeypatch.setenv("BINSWEEP_MAX_RESOURCES", "8 GPUs")
    with pytest.raises(ValueError, match="BINSWEEP_MAX_RESOURCES='8 GPUs': expected a JSON object"):
        placement.max_cluster_resources()


def test_a_trial_that_ends_before_its_last_epoch_was_stopped(tmp_path):
    spec = parse_sweep(sweep_file(tmp_path), "t.yaml")
    assert trial_epochs(spec, {"train.lr": 1e-3}) == 3
    assert end_state(spec, {"train.lr": 1e-3}, 3) == "completed"
    assert end_state(spec, {"train.lr": 1e-3}, 1) == "stopped"


def test_bad_yaml_exits_2_naming_the_file_and_creates_nothing(tmp_path):
    before = all_runs()
    bad = write(tmp_path, "bad_sweep.yaml", "name: x\ntrainable: bast\nspace: {train.lr: {choice: [1, 2]\n")
    res = runner.invoke(app, ["sweep", str(bad), "--name", "never-bad"])
    assert res.exit_code == 2, res.output
    assert "bad_sweep.yaml" in res.output and "not valid YAML" in res.output
    wrong = write(tmp_path, "wrong_key.yaml", {**sweep_file(tmp_path), "trials": 2, "schedulr": {"type": "none"}})
    res = runner.invoke(app, ["sweep", str(wrong), "--name", "never-wrong"])
    assert res.exit_code == 2 and "wrong_key.yaml" in res.output and "schedulr" in res.output, res.output
    res = runner.invoke(app, ["sweep", str(write(tmp_path, "ok.yaml", sweep_file(tmp_path))), "--name", "never-conc",
                              "--concurrency", "0"])
    assert res.exit_code == 2 and "--concurrency" in res.output, res.output
    late = write(tmp_path, "late.yaml", {**sweep_file(tmp_path), "max_failures": -1, "evaluate_stopped": "often"})
    res = runner.invoke(app, ["sweep", str(late), "--name", "never-late"])
    assert res.exit_code == 2 and "max_failures" in res.output and "evaluate_stopped" in res.output, res.output
    assert all_runs() == before
    for name in ("never-bad", "never-wrong", "never-conc", "never-late"):
        assert not (Path(ray_runtime.storage_path()) / name).exists()


def test_missing_dataset_without_build_is_a_clear_error(tmp_path):
    data = sweep_file(tmp_path, dataset="data/not_there")
    data.pop("dataset_build")
    res = runner.invoke(app, ["sweep", str(write(tmp_path, "nodata.yaml", data)), "--name", "never-nodata"])
    assert res.exit_code == 2, res.output
    assert "nodata.yaml" in res.output and str(paths.home() / "data" / "not_there") in res.output.replace("\n", "")


def test_resume_of_an_unknown_sweep_lists_the_known_ones():
    res = runner.invoke(app, ["resume", "no-such-sweep"])
    assert res.exit_code == 2, res.output
    assert "no sweep named 'no-such-sweep'" in res.output and "existing sweeps" in res.output


# -------------------------------------------------------------------------------------------------- the sweep


@functools.cache
def demo_run():
    """`binsweep demo` on the tiny sweep file, once per test session (test_demo.py checks the demo's own steps)."""
    tmp = Path(tempfile.mkdtemp(prefix="sweep-", dir=paths.home()))
    res = runner.invoke(app, ["demo", "--sweep", str(write(tmp, "tiny.yaml", sweep_file(tmp))), "--name", NAME,
                              "--clips", "3", "--model-name", "bast_demo"])
    return NAME, res, parents(NAME)


def test_grid_order_puts_the_learner_first_and_the_idle_trial_third():
    """What the ASHA check relies on: Optuna's GridSampler (seed 0) hands out LRS in this order."""
    study = optuna.create_study(sampler=optuna.samplers.GridSampler({"train.lr": LRS}, seed=0))
    order = [study.ask().suggest_categorical("train.lr", LRS) for _ in LRS]
    assert order == [3.0e-3, DIVERGES, LEARNS_NOTHING, 1.0e-3]


@pytest.fixture(scope="module")
def swept():
    return demo_run()


@pytest.mark.slow
def test_sweep_exits_0_and_reports_the_failed_trial(swept):
    name, res, _ = swept
    assert res.exit_code == 0, res.output
    assert "FloatingPointError" in res.output and "epoch 1" in res.output
    assert f"binsweep leaderboard --sweep {name}" in res.output.replace("\n", "")


@pytest.mark.slow
def test_one_parent_run_with_settings_artifacts_and_summary(swept):
    name, _, found = swept
    assert len(found) == 1
    parent = found[0]
    tags, params, metrics = parent.data.tags, parent.data.params, parent.data.metrics
    assert parent.info.status == "FINISHED" and tags["binsweep.state"] == "finished"
    manifest = json.loads((paths.home() / "data" / "sweep_loc" / "manifest.json").read_text())
    assert tags["binsweep.dataset_fingerprint"] == manifest["fingerprint"]
    assert tags["binsweep.trainable"] == "bast" and tags["binsweep.git_sha"]
    assert params["trials"] == "4" and params["concurrency"] == "2" and params["scheduler.max_epochs"] == "3"
    assert params["objectives"] == "val_ad_deg (min), params_m (min)" and params["optuna.study"] == name
    arts = {a.path for a in tracking.client().list_artifacts(parent.info.run_id)}
    assert {"sweep.yaml", "space.txt"} <= arts
    assert metrics["trials_failed"] == 1 and metrics["trials_completed"] + metrics["trials_stopped"] == 3
    assert metrics["trials_stopped"] >= 1  # the idle trial, at least
    assert tags["binsweep.best_trial"] and "test_ad_deg" in metrics and metrics["best_val_ad_deg"] > 0
    # MLflow's conventions: a model-training experiment (the UI opens its runs, not GenAI traces), the dataset as a
    # dataset input, the leaderboard as a table
    c = tracking.client()
    assert c.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    (ds,) = parent.inputs.dataset_inputs
    assert ds.dataset.name == "sweep_loc" and ds.dataset.digest == manifest["fingerprint"][:32]
    assert json.loads(ds.dataset.source)["uri"].endswith("data/sweep_loc")
    assert "leaderboard.json" in arts
    table = json.loads(Path(c.download_artifacts(parent.info.run_id, "leaderboard.json")).read_text())
    assert len(table["data"]) == 4 and "val_ad_deg" in table["columns"] and "params.train.lr" in table["columns"]


@pytest.mark.slow
def test_one_child_run_per_trial_with_params_epochs_and_state(swept):
    name, _, (parent,) = swept
    runs = children(parent.info.run_id, parent.info.experiment_id)
    assert len(runs) == 4
    c = tracking.client()
    assert sorted(float(r.data.params["train.lr"]) for r in runs) == sorted(LRS)
    for run in runs:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        assert tags["binsweep.sweep_id"] == name and tags["binsweep.trial_id"] == run.info.run_name
        assert tags["binsweep.dataset_fingerprint"] == parent.data.tags["binsweep.dataset_fingerprint"]
        # the whole flattened trial config, not just the searched params
        assert params["model.embed_dim"] == "32" and params["train.epochs"] == "3" and params["loss.name"]
        assert params["data.root"].endswith("sweep_loc") and params["resources.workers"] == "1"
        assert 0.01 < metrics["params_m"] < 0.1 and metrics["gpu_hours"] == 0 and metrics["wall_s"] > 0
        steps = [m.step for m in c.get_metric_history(run.info.run_id, "val_ad_deg")]
        if float(params["train.lr"]) == LEARNS_NOTHING:  # below the first rung's cutoff: ASHA stopped it
            assert tags["binsweep.state"] == "stopped" and steps == [1], (tags, steps)
        if float(params["train.lr"]) == DIVERGES:
            assert tags["binsweep.state"] == "failed" and run.info.status == "FAILED"
            assert "FloatingPointError" in tags["binsweep.error"] and "epoch 1" in tags["binsweep.error"]
            assert steps == []
            continue
        assert steps == list(range(1, len(steps) + 1)) and 1 <= len(steps) <= 3
        # sampled in the trial's own process, on its node (at least once: when it ends). Only asserted for trials
        # that ran to their end: Tune stops an ASHA-stopped trial's function mid-run, and its last sample may be lost
        if tags["binsweep.state"] == "completed":
            assert any(k.startswith("system/") and k.endswith("/cpu_utilization_percentage") for k in metrics), \
                metrics
        (ds,) = run.inputs.dataset_inputs
        assert ds.dataset.digest == parent.data.tags["binsweep.dataset_fingerprint"][:32]
        for key in ("train_loss", "val_loss", "val_mse", "epoch"):
            assert [m.step for m in c.get_metric_history(run.info.run_id, key)] == steps, key
        assert tags["binsweep.state"] == ("completed" if len(steps) == 3 else "stopped"), (tags, steps)
        assert run.info.status == "FINISHED"


@pytest.mark.slow
def test_finished_trials_have_test_metrics_and_a_logged_model(swept):
    """Completed trials scored themselves before their last report; stopped ones (evaluate_stopped: true) were scored
    by a Ray task; none of it on the driver."""
    _, _, (parent,) = swept
    tracking.client()  # fluent API on the same store
    states = []
    for run in children(parent.info.run_id, parent.info.experiment_id):
        states.append(run.data.tags["binsweep.state"])
        if run.data.tags["binsweep.state"] == "failed":
            continue
        m = run.data.metrics
        assert m["eval_s"] > 0 and "binsweep.eval_error" not in run.data.tags
        assert 0 <= m["test_ad_deg"] <= 180 and m["test_mse"] >= 0
        ckpt = run.data.tags["binsweep.best_checkpoint"]
        assert Path(ckpt, "state.pt").is_file()
        models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                             filter_string=f"source_run_id='{run.info.run_id}'")
        assert len(models) == 1
        arts = {a.path for a in tracking.client().list_artifacts(run.info.run_id, "evaluation")}
        assert "evaluation/attention_rollout.png" in arts
    assert "completed" in states and "stopped" in states  # both ways of evaluating were exercised


@pytest.mark.slow
def test_optuna_study_holds_every_trial(swept):
    name, _, _ = swept
    study = optuna.load_study(study_name=name, storage=optuna_storage())
    assert len(study.trials) == 4 and len(study.directions) == 2
    runs = {float(r.data.params["train.lr"]): r.data.tags["binsweep.state"]
            for r in children(_parent_run(name).info.run_id, _parent_run(name).info.experiment_id)}
    told = {"completed": "COMPLETE", "stopped": "PRUNED", "failed": "FAIL"}  # ASHA's stops are prunes to Optuna
    for t in study.trials:
        assert told[runs[float(t.params["train.lr"])]] == t.state.name, (runs, [(t.params, t.state.name) for t in study.trials])
        if t.state.name == "COMPLETE":
            assert 0.01 < t.values[1] < 0.1  # params_m, added to every Tune result for the multi-objective study
    assert "PRUNED" in {t.state.name for t in study.trials}


def _parent_run(name: str):
    (run,) = parents(name)
    return run


@pytest.mark.slow
def test_a_sweep_name_cannot_be_reused(swept, tmp_path):
    name, _, _ = swept
    res = runner.invoke(app, ["sweep", str(write(tmp_path, "again.yaml", sweep_file(tmp_path))), "--name", name])
    assert res.exit_code == 2, res.output
    assert "already exists" in res.output and f"binsweep resume {name}" in res.output
    assert len(parents(name)) == 1
