"""`binsweep submit` without a cluster: the job it would send (entrypoint, submission id, resources, environment),
what it refuses before contacting anything, where the git sha comes from, and the Ray job tags of a parent run.

A fake Jobs API client stands in for the cluster; tests/test_local_cluster.py submits to a real one."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sweep_platform import jobs, names, tracking
from sweep_platform.cli import app

SWEEP_FILE = "name: s\ntrainable: bast\ntrials: 1\nscheduler: {type: none}\nspace:\n  train.lr: {fixed: 0.001}\n"
STAMP = r"\d{4}-\d{6}"  # MMDD-HHMMSS


class FakeJobs:
    """The parts of ray.job_submission.JobSubmissionClient that submit uses; records what would be sent."""

    def __init__(self, existing=()):
        self.existing = list(existing)
        self.submitted: list[dict] = []

    def list_jobs(self):
        return [type("Job", (), {"submission_id": s})() for s in self.existing]

    def submit_job(self, **kwargs):
        self.submitted.append(kwargs)
        return kwargs["submission_id"]


@pytest.fixture
def cluster(monkeypatch):
    """A fake cluster; `cluster.contacted` says whether submit got as far as the Jobs API."""
    fake = FakeJobs()
    fake.contacted = False

    def client(address):
        fake.contacted = True
        fake.address = address
        return fake

    monkeypatch.setattr(jobs, "_client", client)
    return fake


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A working directory with a sweep file, and this shell's cluster settings set (they must not travel)."""
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "search_spaces" / "s.yaml").write_text(SWEEP_FILE)
    monkeypatch.chdir(tmp_path)
    for key, value in {"MLFLOW_TRACKING_URI": "http://this-shell:5000", "BINSWEEP_RAY_STORAGE": "/this/shell/ray",
                       "BINSWEEP_OPTUNA_STORAGE": "sqlite:///this-shell.db", "MLFLOW_EXPERIMENT_NAME": "mine",
                       "MLFLOW_TRACKING_PASSWORD": "never-sent"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(tracking.GIT_SHA_VARIABLE, "f" * 40)  # not a checkout: this shell's sha is what travels
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


def submit(*args: str):
    return CliRunner().invoke(app, ["submit", *args, "--address", "http://head:8265"])


# ------------------------------------------------------------------------------------------------ what is sent


def test_a_sweep_job_carries_only_the_git_sha_unless_settings_are_given(checkout, cluster):
    res = submit("search_spaces/s.yaml", "--name", "s1")
    assert res.exit_code == 0, res.output
    sent = cluster.submitted[0]
    assert sent["runtime_env"]["env_vars"] == {"BINSWEEP_GIT_SHA": "f" * 40}  # nothing of this shell
    assert sent["entrypoint"] == "python -m sweep_platform sweep search_spaces/s.yaml --name s1"
    assert sent["submission_id"] == "binsweep-s1"
    assert sent["entrypoint_resources"] == {"sweep_driver": 1} and sent["entrypoint_num_cpus"] == 1.0
    assert sent["metadata"] == {names.JOB_COMMAND: "sweep", names.JOB_SWEEP: "s1",
                                names.JOB_SWEEP_FILE: "search_spaces/s.yaml"}
    assert "BINSWEEP_GIT_SHA=" + "f" * 40 in res.output
    assert "not sent: MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME, BINSWEEP_RAY_STORAGE, BINSWEEP_OPTUNA_STORAGE" \
        in res.output.replace("\n", "")
    assert "never-sent" not in res.output


def test_settings_travel_when_given_as_flags_or_env(checkout, cluster):
    res = submit("search_spaces/s.yaml", "--name", "s2", "--mlflow-uri", "http://mlflow.internal:5000",
                 "--ray-storage", "s3://bucket/ray", "--optuna-storage", "postgresql://optuna@db/optuna",
                 "--env", "OMP_NUM_THREADS=4", "--env", "BINSWEEP_GIT_SHA=abc", "--concurrency", "8",
                 "--max-failures", "0")
    assert res.exit_code == 0, res.output
    sent = cluster.submitted[0]
    assert sent["runtime_env"]["env_vars"] == {
        "BINSWEEP_GIT_SHA": "abc", "MLFLOW_TRACKING_URI": "http://mlflow.internal:5000",
        "BINSWEEP_RAY_STORAGE": "s3://bucket/ray", "BINSWEEP_OPTUNA_STORAGE": "postgresql://optuna@db/optuna",
        "OMP_NUM_THREADS": "4"}
    assert sent["entrypoint"].endswith("--name s2 --max-failures 0 --concurrency 8")
    assert "not sent: MLFLOW_EXPERIMENT_NAME of this shell" in res.output


def test_resume_as_a_job(checkout, cluster):
    res = submit("--resume", "s1", "--retry-failed")
    assert res.exit_code == 0, res.output
    sent = cluster.submitted[0]
    assert sent["entrypoint"] == "python -m sweep_platform resume s1 --retry-failed"
    assert re.fullmatch(rf"binsweep-s1-resume-{STAMP}", sent["submission_id"]), sent["submission_id"]
    assert sent["entrypoint_resources"] == {"sweep_driver": 1}  # a resumed sweep's driver stays on the head too
    assert sent["metadata"] == {names.JOB_COMMAND: "resume", names.JOB_SWEEP: "s1"}
    assert sent["runtime_env"]["env_vars"] == {"BINSWEEP_GIT_SHA": "f" * 40}
    assert "binsweep leaderboard --sweep s1" in res.output


def test_resume_entrypoints():
    assert jobs.resume_command("s1") == ["resume", "s1"]
    req = jobs.JobRequest(working_dir=Path("."), address="http://h:8265", name="s1",
                          command=jobs.resume_command("s1", retry_failed=True), stamp="1206-120000")
    assert req.entrypoint == "python -m sweep_platform resume s1 --retry-failed"
    assert req.submission_id == "binsweep-s1-resume-1206-120000"
    assert req.command_line().endswith(" -- python -m sweep_platform resume s1 --retry-failed")


@pytest.mark.parametrize("run, entrypoint, id_pattern", [
    ("promote --sweep s1 --alias champion", "promote --sweep s1 --alias champion", rf"binsweep-s1-promote-{STAMP}"),
    ("promote", "promote", rf"binsweep-promote-{STAMP}"),
    ("report s1 -o out/report.html", "report s1 -o out/report.html", rf"binsweep-s1-report-{STAMP}"),
    ("leaderboard --sweep 's 1' --format json", "leaderboard --sweep 's 1' --format json",
     rf"binsweep-s_1-leaderboard-{STAMP}"),
    ("resume s1", "resume s1", rf"binsweep-s1-resume-{STAMP}"),
])
def test_commands_as_jobs(checkout, cluster, run, entrypoint, id_pattern):
    res = submit("--run", run)
    assert res.exit_code == 0, res.output
    sent = cluster.submitted[0]
    assert sent["entrypoint"] == "python -m sweep_platform " + entrypoint
    assert re.fullmatch(id_pattern, sent["submission_id"]), sent["submission_id"]
    expected = {"sweep_driver": 1} if run.startswith("resume") else None  # short commands run anywhere
    assert sent["entrypoint_resources"] == expected
    assert sent["runtime_env"]["env_vars"] == {"BINSWEEP_GIT_SHA": "f" * 40}


def test_driver_resource_can_be_set_or_dropped(checkout, cluster):
    assert submit("search_spaces/s.yaml", "--name", "s3", "--driver-resource", "").exit_code == 0
    assert submit("--run", "report s1", "--driver-resource", "sweep_driver").exit_code == 0
    assert [s["entrypoint_resources"] for s in cluster.submitted] == [None, {"sweep_driver": 1}]


def test_dry_run_sends_nothing_and_shows_the_job(checkout, cluster):
    res = submit("--resume", "s1", "--mlflow-uri", "http://mlflow.internal:5000", "--dry-run")
    assert res.exit_code == 0, res.output
    assert not cluster.contacted
    out = res.output.replace("\n", "")
    assert "would submit binsweep resume s1" in out and "nothing sent" in out
    line = out[out.index("same as: ") + len("same as: "):]
    runtime_env = json.loads(re.search(r"--runtime-env-json '(\{.*?\}\})'", line)[1])
    assert runtime_env == {"env_vars": {"BINSWEEP_GIT_SHA": "f" * 40,
                                        "MLFLOW_TRACKING_URI": "http://mlflow.internal:5000"}}
    assert line.endswith("-- python -m sweep_platform resume s1")


def test_a_submission_id_is_never_reused(checkout, cluster):
    cluster.existing = ["binsweep-s1"]
    res = submit("search_spaces/s.yaml", "--name", "s1")
    assert res.exit_code == 2 and "already submitted" in res.output and not cluster.submitted
    assert "binsweep submit --resume s1" in res.output.replace("\n", "")


# ------------------------------------------------------------------------------- refused before the cluster


@pytest.mark.parametrize("args, message", [
    (["--run", "sweep search_spaces/s.yaml"], "binsweep submit FILE"),
    (["--run", "models --name bast"], "one of resume, promote, report, leaderboard"),
    (["--run", ""], "it is empty"),
    (["--run", "report 'unclosed"], "No closing quotation"),
    (["--run", "promote --sweep s1 --bogus"], "No such option: --bogus"),
    (["--run", "leaderboard --format xml"], "--format"),
    (["--run", "resume"], "Missing argument"),
    (["--run", "report s1 --help"], "cannot show help"),
    (["search_spaces/s.yaml", "--resume", "s1"], "not FILE and --resume"),
    (["search_spaces/s.yaml", "--run", "report s1"], "not FILE and --run"),
    ([], "give one of FILE"),
    (["search_spaces/s.yaml", "--retry-failed"], "--retry-failed goes with --resume"),
    (["--resume", "s1", "--name", "x"], "only for a new sweep"),
    (["--run", "promote", "--concurrency", "2"], "only for a new sweep"),
    (["search_spaces/s.yaml", "--env", "MLFLOW_TRACKING_PASSWORD=hunter2"], "credentials"),
    (["--resume", "s1", "--env", "AWS_SECRET_ACCESS_KEY=hunter2"], "credentials"),
    (["--resume", "s1", "--env", "NOEQUALS"], "KEY=VALUE"),
    (["--resume", "s1", "--mlflow-uri", "http://me:hunter2@mlflow:5000"], "password"),
    (["--run", "report s1", "--env", "BINSWEEP_RAY_STORAGE=s3://ak:hunter2@bucket/ray"], "password"),
    (["--resume", "s1", "--ray-storage", "/a", "--env", "BINSWEEP_RAY_STORAGE=/b"], "given both"),
    (["search_spaces/nothere.yaml"], "nothere.yaml"),
    (["--resume", "s1", "--working-dir", "no/such/dir"], "not a directory"),
])
def test_refused_before_anything_is_sent(checkout, cluster, args, message):
    res = submit(*args)
    assert res.exit_code == 2, res.output
    assert message in res.output.replace("\n", ""), res.output
    assert "hunter2" not in res.output
    assert not cluster.contacted


def test_a_bad_sweep_file_is_refused_with_its_key(checkout, cluster):
    (checkout / "search_spaces" / "bad.yaml").write_text("name: bad\ntrainable: bast\ntrials: -1\n")
    res = submit("search_spaces/bad.yaml")
    assert res.exit_code == 2 and "bad.yaml" in res.output and "trials" in res.output
    assert not cluster.contacted


def test_job_env_takes_nothing_from_this_shell(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://this-shell:5000")
    monkeypatch.setenv("BINSWEEP_RAY_STORAGE", "/this/shell")
    assert jobs.job_env({"MLFLOW_TRACKING_URI": None, "BINSWEEP_RAY_STORAGE": None}, {}, None) == {}
    assert jobs.job_env({"BINSWEEP_RAY_STORAGE": "s3://b/r"}, {"A": "1"}, "abc") == {
        "BINSWEEP_GIT_SHA": "abc", "BINSWEEP_RAY_STORAGE": "s3://b/r", "A": "1"}
    assert jobs.not_sent({"BINSWEEP_RAY_STORAGE": "s3://b/r"}) == ["MLFLOW_TRACKING_URI"]


# ---------------------------------------------------------------------------------------------------- git sha


def _git(cwd, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("no git")
    d = tmp_path / "repo"
    d.mkdir()
    _git(d, "init", "-q")
    (d / "a.txt").write_text("a\n")
    _git(d, "add", "a.txt")
    _git(d, "commit", "-q", "-m", "a")
    return d


def test_checkout_sha_marks_uncommitted_changes(repo, tmp_path):
    head = _git(repo, "rev-parse", "HEAD")
    assert tracking.checkout_sha(repo) == head
    (repo / "new.txt").write_text("untracked files do not count\n")
    assert tracking.checkout_sha(repo) == head
    (repo / "a.txt").write_text("changed\n")
    assert tracking.checkout_sha(repo) == head + "-dirty"
    (tmp_path / "plain").mkdir()
    assert tracking.checkout_sha(tmp_path / "plain") is None


def test_git_sha_order_variable_then_checkout_then_unknown(repo, monkeypatch):
    head = _git(repo, "rev-parse", "HEAD")
    monkeypatch.delenv(tracking.GIT_SHA_VARIABLE, raising=False)
    assert tracking.git_sha(repo) == head
    monkeypatch.setenv(tracking.GIT_SHA_VARIABLE, "0123abc-dirty")  # a submitted job: the submitter's checkout
    assert tracking.git_sha(repo) == "0123abc-dirty"
    monkeypatch.setenv(tracking.GIT_SHA_VARIABLE, "")
    assert tracking.git_sha(repo.parent) == "unknown"  # no .git (a job's upload) and no variable


def test_submit_sends_the_working_dirs_commit(repo, monkeypatch):
    monkeypatch.setenv(tracking.GIT_SHA_VARIABLE, "from-this-shell")
    head = _git(repo, "rev-parse", "HEAD")
    assert jobs.checkout_sha(repo) == head  # the uploaded checkout's commit, not this shell's variable
    assert jobs.checkout_sha(repo.parent) == "from-this-shell"  # no checkout there: the variable, if any
    monkeypatch.delenv(tracking.GIT_SHA_VARIABLE)
    assert jobs.checkout_sha(repo.parent) is None


# ------------------------------------------------------------------------------------ the parent run of a job


def _driver_env(monkeypatch, submission_id: str) -> None:
    """What Ray 2.60's JobSupervisor puts in a job driver's environment (job_supervisor._get_driver_env_vars):
    RAY_JOB_CONFIG_JSON_ENV_VAR with the runtime env and the metadata, the submission id under its own key."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR
    from ray.dashboard.modules.job.common import JOB_ID_METADATA_KEY, JOB_NAME_METADATA_KEY

    assert (RAY_JOB_CONFIG_JSON_ENV_VAR, JOB_ID_METADATA_KEY) == (jobs.RAY_JOB_CONFIG_VARIABLE,
                                                                   jobs.RAY_SUBMISSION_ID_KEY)
    metadata = {JOB_ID_METADATA_KEY: submission_id, JOB_NAME_METADATA_KEY: submission_id, names.JOB_SWEEP: "s1"}
    monkeypatch.setenv(RAY_JOB_CONFIG_JSON_ENV_VAR, json.dumps({
        "runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip", "env_vars": {"BINSWEEP_GIT_SHA": "abc123"}},
        "metadata": metadata}))


def _parent_run_tags(name: str) -> dict[str, str]:
    from sweep_platform.parent_run import create
    from sweep_platform.sweep_file import parse_sweep

    spec = parse_sweep({"name": "job", "trainable": "bast", "trials": 1, "scheduler": {"type": "none"},
                        "space": {"train.lr": {"fixed": 1e-3}}}, "job.yaml")
    _, run_id = create(name, spec, sweep_file="name: job\n", concurrency=1, optuna_storage="sqlite:///o.db",
                       fingerprint="fp")
    return tracking.client().get_run(run_id).data.tags


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    for key in (jobs.RAY_JOB_CONFIG_VARIABLE, "RAY_OVERRIDE_DASHBOARD_URL", tracking.GIT_SHA_VARIABLE):
        monkeypatch.delenv(key, raising=False)


def test_a_sweep_run_as_a_job_records_the_job_the_dashboard_and_the_sent_sha(store, monkeypatch):
    import ray

    _driver_env(monkeypatch, "binsweep-s1")
    monkeypatch.setenv(tracking.GIT_SHA_VARIABLE, "abc123")
    # the driver has joined the cluster: ray.init read the dashboard address the head published (GCS webui:url)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray._private.worker, "get_dashboard_url", lambda: "10.0.0.5:8265")
    tags = _parent_run_tags("job-sweep")
    assert tags[names.TAG_RAY_JOB] == "binsweep-s1"
    assert tags[names.TAG_RAY_DASHBOARD] == "http://10.0.0.5:8265"
    assert tags[names.TAG_GIT] == "abc123"
    assert tags[names.TAG_SWEEP] == "job-sweep"


def test_the_dashboard_override_is_honoured_and_ray_need_not_be_up(store, monkeypatch):
    import ray

    _driver_env(monkeypatch, "raysubmit_XYZ")  # a plain `ray job submit` without --submission-id
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert jobs.running_job() == {names.TAG_RAY_JOB: "raysubmit_XYZ"}
    monkeypatch.setenv("RAY_OVERRIDE_DASHBOARD_URL", "https://ray.example.org/dash")
    tags = _parent_run_tags("job-sweep-2")
    assert tags[names.TAG_RAY_JOB] == "raysubmit_XYZ"
    assert tags[names.TAG_RAY_DASHBOARD] == "https://ray.example.org/dash"


def test_a_sweep_outside_a_job_has_no_job_tags(store, monkeypatch):
    monkeypatch.setenv("RAY_OVERRIDE_DASHBOARD_URL", "http://127.0.0.1:8265")
    tags = _parent_run_tags("local-sweep")
    assert names.TAG_RAY_JOB not in tags and names.TAG_RAY_DASHBOARD not in tags
    monkeypatch.setenv(jobs.RAY_JOB_CONFIG_VARIABLE, "not json")
    assert jobs.running_job() == {}
