"""`binsweep watch`, read back from a real MLflow store (SQLite under the session's BINSWEEP_HOME).

The sweeps are written with the MLflow client the way the sweep driver writes them (a parent run tagged
binsweep.role=sweep with its `trials` param and sweep.yaml, one child run per trial with flattened params, per-epoch
metrics, state and error tags), as tests/test_leaderboard.py's make_sweep does, without models.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sweep_platform import names, tracking
from sweep_platform import watch as w
from sweep_platform.cli import app

runner = CliRunner()
EPOCHS = 3


def _write_sweep(name: str, trials: list[dict], *, state: str = names.RUNNING, job: str | None = None) -> dict:
    """trials: dicts with id, state, val (per-epoch val_ad_deg), optional test (test_ad_deg), lr, sharing."""
    from mlflow.entities import Metric, Param

    c = tracking.client()
    exp = tracking.ensure_experiment("binsweep-bast")
    tags = {names.TAG_ROLE: names.ROLE_SWEEP, names.TAG_SWEEP: name, names.TAG_TRAINABLE: "bast",
            names.TAG_STATE: state}
    if job:
        tags[names.TAG_RAY_JOB] = job
    parent = c.create_run(exp, run_name=name, tags=tags).info.run_id
    c.log_batch(parent, params=[Param("trials", "4"), Param("trainable", "bast")])
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "sweep.yaml").write_text(yaml.safe_dump({
            "name": name, "trainable": "bast", "metric": "val_ad_deg", "mode": "min", "trials": 4,
            "space": {"train.lr": {"float": [1e-4, 3e-3], "log": True}, "model.sharing": {"choice": ["SP", "NSP"]}}}))
        c.log_artifact(parent, str(Path(d) / "sweep.yaml"))
    runs = {}
    for t in trials:
        ctags = {names.TAG_PARENT: parent, names.TAG_SWEEP: name, names.TAG_TRIAL: t["id"],
                 names.TAG_TRAINABLE: "bast", names.TAG_STATE: t["state"]}
        if t["state"] == names.FAILED:
            ctags[names.TAG_ERROR] = "FloatingPointError: training loss is nan at epoch 1"
        run_id = c.create_run(exp, run_name=f"{name}-{t['id']}", tags=ctags).info.run_id
        c.log_batch(run_id, params=[Param("train.epochs", str(EPOCHS)), Param("train.lr", str(t["lr"])),
                                    Param("model.sharing", t["sharing"]), Param("train.batch_size", "24")])
        for epoch, val in enumerate(t["val"], start=1):
            c.log_batch(run_id, metrics=[Metric("epoch", epoch, 0, epoch), Metric("val_ad_deg", val, 0, epoch),
                                         Metric("val_loss", val / 50, 0, epoch)])
        if "test" in t:
            c.log_batch(run_id, metrics=[Metric("test_ad_deg", t["test"], 0, 0)])
        if t["state"] != names.RUNNING:
            c.set_terminated(run_id, status="FAILED" if t["state"] == names.FAILED else "FINISHED")
        runs[t["id"]] = run_id
    if state != names.RUNNING:
        c.set_terminated(parent, status="FINISHED" if state == names.SWEEP_FINISHED else "FAILED")
    return {"parent": parent, "runs": runs}


TRIALS = [
    {"id": "0000", "state": names.COMPLETED, "val": [30.5, 20.123456789, 25.25], "test": 22.987654321,
     "lr": 0.0019280284410033446, "sharing": "SP"},
    {"id": "0001", "state": names.RUNNING, "val": [40.0], "lr": 0.0003, "sharing": "NSP"},
    {"id": "0002", "state": names.FAILED, "val": [90.0], "lr": 0.002, "sharing": "SP"},
]


@pytest.fixture(scope="module")
def sweep() -> dict:
    return _write_sweep("watch-live", TRIALS, job="raysubmit_watch123")


def _row(out: str, trial: str) -> list[str]:
    lines = [ln.split() for ln in out.splitlines() if ln.split()[:1] == [trial]]
    assert len(lines) == 1, out
    return lines[0]


def test_once_table_matches_mlflow(sweep):
    res = runner.invoke(app, ["watch", "watch-live", "--once"], env={"COLUMNS": "120"})
    assert res.exit_code == 0, res.output
    out = res.output
    assert "sweep watch-live (bast): running | trials 1 done, 1 running, 1 failed of 4 | best val_ad_deg 20.12 " \
           "(trial 0000)" in " ".join(out.split())
    # trial, state, epoch k/N, last, best, test, then parameters (lr in scientific notation)
    assert _row(out, "0000")[:6] == ["0000", "completed", "3/3", "25.25", "20.12", "22.99"]
    assert _row(out, "0001")[:5] == ["0001", "running", "1/3", "40", "40"]
    assert _row(out, "0002")[:5] == ["0002", "failed", "1/3", "90", "90"]
    assert "1.93e-3" in " ".join(_row(out, "0000")) and "3e-4" in " ".join(_row(out, "0001"))
    assert max(len(ln) for ln in out.splitlines()) <= 120


def test_once_json_is_full_precision(sweep):
    res = runner.invoke(app, ["watch", "watch-live", "--once", "--format", "json"])
    assert res.exit_code == 0, res.output
    snap = json.loads(res.output)
    assert {k: snap[k] for k in ("sweep", "trainable", "run_id", "state", "planned_trials", "metric", "mode",
                                 "test_metric")} == {
        "sweep": "watch-live", "trainable": "bast", "run_id": sweep["parent"], "state": "running",
        "planned_trials": 4, "metric": "val_ad_deg", "mode": "min", "test_metric": "test_ad_deg"}
    assert snap["counts"] == {"trials": 3, "done": 1, "running": 1, "failed": 1, "other": 0}
    assert snap["best"] == {"trial": "0000", "run_id": sweep["runs"]["0000"], "value": 20.123456789}
    by_id = {t["trial"]: t for t in snap["trials"]}
    assert [t["trial"] for t in snap["trials"]] == ["0000", "0001", "0002"]
    t0 = by_id["0000"]
    assert (t0["state"], t0["epoch"], t0["epochs"], t0["last"], t0["best"], t0["test"]) == \
        ("completed", 3, 3, 25.25, 20.123456789, 22.987654321)
    assert t0["run_id"] == sweep["runs"]["0000"] and t0["error"] is None
    assert t0["params"]["train.lr"] == "0.0019280284410033446" and t0["params"]["model.sharing"] == "SP"
    assert (by_id["0001"]["state"], by_id["0001"]["epoch"], by_id["0001"]["test"]) == ("running", 1, None)
    assert by_id["0002"]["state"] == "failed" and "nan" in by_id["0002"]["error"]


def test_unknown_sweep_is_a_clear_error_listing_the_known_ones(sweep):
    res = runner.invoke(app, ["watch", "no-such-sweep", "--once"])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "no sweep named 'no-such-sweep'" in text and "watch-live" in text and "Traceback" not in text
    res = runner.invoke(app, ["watch", "--once"])
    assert res.exit_code == 2 and "NAME or --job" in res.output


def test_job_lookup_by_tag_then_by_submission_id(sweep):
    res = runner.invoke(app, ["watch", "--job", "raysubmit_watch123", "--once", "-f", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["run_id"] == sweep["parent"]
    # binsweep submit's convention: binsweep-NAME, for a parent run without the tag
    other = _write_sweep("watch-untagged", TRIALS[:1], state=names.SWEEP_FINISHED)
    res = runner.invoke(app, ["watch", "--job", "binsweep-watch-untagged", "--once", "-f", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["run_id"] == other["parent"]
    res = runner.invoke(app, ["watch", "--job", "raysubmit_nope", "--once"])
    assert res.exit_code == 2, res.output
    assert "raysubmit_nope" in res.output and "watch-live" in " ".join(res.output.split())


def test_refreshes_until_final_and_reads_history_only_when_a_trial_moved(monkeypatch):
    import mlflow

    made = _write_sweep("watch-loop", TRIALS[:2])
    calls = []
    real = mlflow.MlflowClient.get_metric_history
    monkeypatch.setattr(mlflow.MlflowClient, "get_metric_history",
                        lambda self, run_id, key: calls.append((run_id, key)) or real(self, run_id, key))
    seen = []

    def sleep(_):
        c = tracking.client()
        if len(seen) == 2:  # the running trial ends its last epochs, then the sweep finishes
            run = made["runs"]["0001"]
            from mlflow.entities import Metric

            c.log_batch(run, metrics=[m for e, v in ((2, 35.0), (3, 12.5)) for m in
                                      (Metric("epoch", e, 0, e), Metric("val_ad_deg", v, 0, e))])
            c.set_tag(run, names.TAG_STATE, names.COMPLETED)
            c.set_terminated(run, "FINISHED")
        if len(seen) == 3:
            c.set_tag(made["parent"], names.TAG_STATE, names.SWEEP_FINISHED)

    from sweep_platform import leaderboard as lb

    last = w.watch(lb.find_sweep("watch-loop"), interval=0, once=False, show=seen.append, sleep=sleep)
    assert [s["state"] for s in seen] == ["running", "running", "running", "finished"]
    assert last is seen[-1] and w.is_final(last)
    # history: both trials once at first, nothing when nothing moved, the moved trial once more, then nothing
    per_snapshot = [2, 0, 1, 0]
    assert len(calls) == sum(per_snapshot), calls
    t1 = {t["trial"]: t for t in last["trials"]}["0001"]
    assert (t1["state"], t1["epoch"], t1["last"], t1["best"]) == ("completed", 3, 12.5, 12.5)
    assert last["best"]["trial"] == "0001" and last["counts"]["done"] == 2


def test_a_finished_sweep_returns_at_once_and_a_failed_one_exits_1():
    _write_sweep("watch-done", TRIALS[:1], state=names.SWEEP_FINISHED)
    res = runner.invoke(app, ["watch", "watch-done", "--interval", "0.5"])
    assert res.exit_code == 0, res.output
    assert re.search(r"sweep watch-done \(bast\): finished \| trials 1 done, 0 running, 0 failed", res.output)
    _write_sweep("watch-bad", TRIALS[2:], state=names.SWEEP_FAILED)
    res = runner.invoke(app, ["watch", "watch-bad", "-f", "json"])
    assert res.exit_code == 1, res.output
    assert json.loads(res.output.splitlines()[-1])["state"] == "failed"
