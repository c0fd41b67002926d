"""Secure defaults that are not covered by the cluster end-to-end test: no credential reaches MLflow params, tags,
logs or a job's runtime environment; `binsweep submit` checks everything before it contacts a cluster."""

from __future__ import annotations

import logging

import pytest
from typer.testing import CliRunner

from sweep_platform import jobs, tracking
from sweep_platform.cli import app
from sweep_platform.sweep_file import parse_sweep


@pytest.mark.parametrize("text, expected", [
    ("postgresql://mlflow:s3cret@db.internal:5432/mlflow", "postgresql://mlflow:***@db.internal:5432/mlflow"),
    ("postgresql+psycopg://u:p%40ss@/db?host=/run/pg", "postgresql+psycopg://u:***@/db?host=/run/pg"),
    ("http://alice:hunter2@mlflow:5000", "http://alice:***@mlflow:5000"),
    ("a=sqlite:///runs/mlflow.db b=s3://KEY:SECRET@bucket/x", "a=sqlite:///runs/mlflow.db b=s3://KEY:***@bucket/x"),
    ("http://mlflow:5000 and https://user@host/path", "http://mlflow:5000 and https://user@host/path"),
])
def test_redact_blanks_only_the_password_of_every_uri(text, expected):
    assert tracking.redact(text) == expected


def test_logged_params_carry_no_password():
    params = tracking.params_of({"data": {"root": "s3://ak:sk-secret@bucket/loc"}, "train": {"lr": 1e-3}})
    assert params == {"data.root": "s3://ak:***@bucket/loc", "train.lr": "0.001"}


def test_retry_warnings_carry_no_password(caplog):
    def fail():
        raise ConnectionError("cannot reach postgresql://mlflow:s3cret@db/mlflow")

    with caplog.at_level(logging.WARNING, logger="sweep_platform.tracking"):
        assert tracking.with_retries(fail, "a test call", attempts=2, delay_s=0.0) is None
    assert "s3cret" not in caplog.text and "mlflow:***@db" in caplog.text


def test_the_sweep_parent_run_redacts_its_storage_url():
    from sweep_platform.parent_run import create as create_parent_run

    spec = parse_sweep({"name": "sec", "trainable": "bast", "trials": 1, "scheduler": {"type": "none"},
                        "space": {"train.lr": {"fixed": 1e-3}}}, "sec.yaml")
    _, run_id = create_parent_run("security-sweep", spec, sweep_file="name: sec\n", concurrency=1,
                                  optuna_storage="postgresql://optuna:pa55word@db/optuna", fingerprint="fp")
    c = tracking.client()
    run = c.get_run(run_id)
    c.delete_run(run_id)  # a sweep without trials: not one for later tests' "most recent sweep"
    assert run.data.params["optuna.storage"] == "postgresql://optuna:***@db/optuna"
    assert not any("pa55word" in v for v in [*run.data.params.values(), *run.data.tags.values()])


# ---------------------------------------------------------------------------------------- binsweep submit checks


def test_submit_sends_nothing_of_this_shell_and_refuses_credentials(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    monkeypatch.setenv("BINSWEEP_RAY_STORAGE", "s3://bucket/ray")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "never-sent")  # read by the nodes themselves, never sent
    env = jobs.job_env({"MLFLOW_TRACKING_URI": None}, {"OMP_NUM_THREADS": "4"}, "abc")
    assert env == {"BINSWEEP_GIT_SHA": "abc", "OMP_NUM_THREADS": "4"}  # only what was asked for, and the sha
    with pytest.raises(jobs.SubmitError, match="password") as err:
        jobs.job_env({"MLFLOW_TRACKING_URI": "http://u:topsecret@mlflow:5000"}, {}, None)
    assert "topsecret" not in str(err.value)
    for key in ("MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_TOKEN"):
        with pytest.raises(jobs.SubmitError, match="credentials"):
            jobs.job_env({}, {key: "x"}, None)
    with pytest.raises(jobs.SubmitError, match="KEY=VALUE"):
        jobs.parse_env(["NOEQUALS"])


def test_submit_address_and_entrypoint(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    assert jobs.job_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a GCS address is not the Jobs API
    assert jobs.job_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://head:8265/")
    assert jobs.job_address() == "http://head:8265"
    assert jobs.job_address("https://ray.example:443") == "https://ray.example:443"
    with pytest.raises(jobs.SubmitError, match="HTTP address"):
        jobs.job_address("head:6379")

    (tmp_path / "search_spaces").mkdir()
    req = jobs.JobRequest(sweep_file=tmp_path / "search_spaces" / "s.yaml", working_dir=tmp_path, name="s1",
                          address="http://head:8265", env={"MLFLOW_TRACKING_URI": "http://m:5000"})
    assert req.entrypoint == "python -m sweep_platform sweep search_spaces/s.yaml --name s1"
    assert req.submission_id == "binsweep-s1"
    tuned = jobs.JobRequest(sweep_file=tmp_path / "search_spaces" / "s.yaml", working_dir=tmp_path, name="s1",
                            address="http://head:8265", concurrency=8, max_failures=0)
    assert tuned.entrypoint.endswith("--name s1 --max-failures 0 --concurrency 8")  # overrides reach the job
    line = req.command_line()
    assert "--entrypoint-resources '{\"sweep_driver\": 1}'" in line and line.endswith(req.entrypoint)
    outside = jobs.JobRequest(sweep_file=tmp_path.parent / "elsewhere.yaml", working_dir=tmp_path, name="s2",
                              address="http://head:8265")
    with pytest.raises(jobs.SubmitError, match="inside --working-dir"):
        _ = outside.entrypoint


def test_submit_of_a_bad_file_exits_2_without_a_cluster(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ntrainable: bast\ntrials: -1\n")
    res = CliRunner().invoke(app, ["submit", str(bad), "--working-dir", str(tmp_path),
                                   "--address", "http://127.0.0.1:9"])  # nothing listens there: never contacted
    assert res.exit_code == 2, res.output
    assert "bad.yaml" in res.output and "trials" in res.output
