"""The cloud on one machine (cluster/local/start.sh --rehearsal), end to end: what the single-disk local-cluster test
cannot show.

- a Ray head with no GPU, its sweep driver pinned there, and GPU worker nodes (logical GPUs) that join only after
  the sweep was submitted: `concurrency: auto` counts them from BINSWEEP_MAX_RESOURCES, as it would from an
  autoscaler's config, instead of refusing a cluster that has no GPU yet;
- an S3 API (moto's server, a real HTTP process) holding the dataset, Ray's storage (Tune state, checkpoints) and
  MLflow's proxied artifacts; every node has its own BINSWEEP_HOME, so nothing can be read from another node's disk;
- a worker node killed (SIGKILL of its raylet) while a trial trains on it: the trial goes on elsewhere from its last
  checkpoint in the object store, with no epoch lost or repeated and no second MLflow run;
- `binsweep submit` for the sweep (git sha, job id and dashboard URL on the parent run) and for `report` as a job;
- a bare ray.init() on the head (no RAY_ADDRESS) joins the cluster.

About 3-4 minutes on 2 cores. Figures (node join, recovery after the kill, sweep time) are printed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from test_local_cluster import _exports, copy_code, _free_ports, _http, _job_status, _metrics, _rest, _tag, _token

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "cluster" / "local"
SWEEP = "rehearsal"
BUCKET = "binsweep"
DATASET = f"s3://{BUCKET}/datasets/loc_rehearsal"
EPOCHS = 8

pytestmark = pytest.mark.slow


def _binsweep(*args: str, env: dict, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweep_platform", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def _sweep_file() -> dict:
    """Four trials of a tiny BAST on a GPU each (logical GPUs here), the dataset in the object store only."""
    data = yaml.safe_load((REPO / "search_spaces" / "bast_smoke.yaml").read_text())
    data.pop("dataset_build")
    data.update(name="rehearsal", dataset=DATASET, trials=4, concurrency="auto", max_failures=2,
                resources={"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 1},
                scheduler={"type": "none"}, sampler={"type": "random", "seed": 0})
    data["base"]["train"]["epochs"] = EPOCHS
    return data


def _checkout(root: Path) -> Path:
    """A git checkout of the code and the sweep file: what a researcher submits from."""
    wd = copy_code(root / "checkout")
    (wd / "search_spaces" / "rehearsal.yaml").write_text(yaml.safe_dump(_sweep_file(), sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=wd, check=True)
    subprocess.run([*git, "add", "-A"], cwd=wd, check=True)
    subprocess.run([*git, "commit", "-qm", "rehearsal"], cwd=wd, check=True)
    return wd


def _nodes(dash: int) -> dict[str, dict]:
    """Ray's nodes by their binsweep-node label (head, w1, w2, ...), from the State API over HTTP."""
    status, body = _http(f"http://127.0.0.1:{dash}/api/v0/nodes?limit=100&detail=true", token=_token())
    assert status == 200, body[:2000]
    return {n["labels"].get("binsweep-node"): n for n in json.loads(body)["data"]["result"]["result"]}


def _trial_actor_nodes(dash: int) -> set[str]:
    """Node ids of the live Tune trial actors (function trainables run in ImplicitFunc actors)."""
    status, body = _http(f"http://127.0.0.1:{dash}/api/v0/actors?limit=1000&detail=true", token=_token())
    assert status == 200, body[:2000]
    return {a["node_id"] for a in json.loads(body)["data"]["result"]["result"]
            if a["state"] == "ALIVE" and "ImplicitFunc" in a["class_name"]}


def _children(base: str, exp_id: str, parent_id: str) -> list[dict]:
    runs = _rest(base, "runs/search", {"experiment_ids": [exp_id], "max_results": 200,
                                       "filter": f"tags.`mlflow.parentRunId` = '{parent_id}'"})
    return runs.get("runs", [])


def _history(base: str, run_id: str, key: str) -> list[dict]:
    return _rest(base, f"metrics/get-history?run_id={run_id}&metric_key={key}&max_results=1000")["metrics"]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def rehearsal():
    t0 = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="bsr-"))  # the researcher's machine; 0755 for the postgres OS user
    home.chmod(0o755)
    from trainables.acoustics.hrtf import default_cache_dir, kemar

    kemar()  # the dataset is rendered on the researcher's machine, from the test session's KEMAR cache
    shutil.copytree(default_cache_dir(), home / "data" / "cache" / "hrtf")
    gcs, dash, agent, mlflow_port, pg, s3 = _free_ports(6)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER", "MLFLOW_", "BINSWEEP_", "AWS_"))}
    env.update(BINSWEEP_HOME=str(home), BINSWEEP_PYTHON=sys.executable)
    args = [str(LOCAL / "start.sh"), "--rehearsal", "--num-cpus", "2", "--max-workers", "2", "--worker-cpus", "1",
            "--worker-gpus", "1", "--port", str(gcs), "--dashboard-port", str(dash), "--agent-port", str(agent),
            "--mlflow-port", str(mlflow_port), "--mlflow-workers", "1", "--pg-port", str(pg), "--s3-port", str(s3),
            "--object-store-mb", "150"]
    info = {"home": home, "env": env, "dash": dash, "run_dir": home / "runs" / "cluster", "t0": t0, "figures": {}}
    try:
        started = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
        assert started.returncode == 0, started.stderr[-4000:]
        info["figures"]["cluster start"] = time.monotonic() - t0
        info["client_env"] = {**env, **_exports(started.stdout)}
        yield info
    finally:
        stopped = subprocess.run([str(LOCAL / "stop.sh")], env=env, capture_output=True, text=True, timeout=180)
        print(stopped.stderr[-2000:])
        ray_link = info["run_dir"] / "logs" / "ray"
        if ray_link.is_symlink():  # Ray's private temp dirs (session logs) outlive stop.sh on purpose
            shutil.rmtree(Path(os.readlink(ray_link)).parents[2], ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def test_a_sweep_on_nodes_that_join_late_and_die(rehearsal):
    env, home, dash, figures = rehearsal["client_env"], rehearsal["home"], rehearsal["dash"], rehearsal["figures"]
    base = env["MLFLOW_TRACKING_URI"]
    assert env["BINSWEEP_RAY_STORAGE"] == f"s3://{BUCKET}/ray" and env["AWS_ENDPOINT_URL"].startswith("http://127.")
    from s3_server import keys_of

    # the dataset goes straight to the object store: built here, uploaded, manifest last
    t = time.monotonic()
    built = _binsweep("data", "localization", "--out", DATASET, "--generated-sounds", "24", "--azimuth-step", "30",
                      "--environments", "anechoic", env=env, cwd=home, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    figures["dataset build + upload"] = time.monotonic() - t
    assert "datasets/loc_rehearsal/manifest.json" in keys_of(env, BUCKET, "datasets/")

    # a bare ray.init() on the head, without RAY_ADDRESS, joins the cluster (as on a `ray up` head)
    ray_tmp = Path(os.readlink(rehearsal["run_dir"] / "logs" / "ray")).parents[1]
    bare = subprocess.run([sys.executable, "-c", "from sweep_platform.ray_runtime import ensure_ray; "
                           "r = ensure_ray(); print(r.get('sweep_driver'), r.get('GPU', 0))"],
                          env={k: v for k, v in env.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(ray_tmp.parent)},
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bare.returncode == 0 and bare.stdout.split() == ["1.0", "0"], bare.stdout + bare.stderr

    # submitted while no node has a GPU: the sweep sizes itself from what the cluster may become and waits
    wd = _checkout(home)
    t_submit = time.monotonic()
    sub = _binsweep("submit", "search_spaces/rehearsal.yaml", "--name", SWEEP, env=env, cwd=wd, timeout=120)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    job_id = f"binsweep-{SWEEP}"
    exp = parent = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and parent is None:
        assert _job_status(dash, job_id) in ("PENDING", "RUNNING"), _job_logs(dash, job_id)
        status, body = _http(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=binsweep-bast")
        if status == 200:
            exp = json.loads(body)["experiment"]["experiment_id"]
            found = _rest(base, "runs/search", {"experiment_ids": [exp], "filter":
                                                f"tags.`binsweep.sweep_id` = '{SWEEP}' and tags.`binsweep.role` = 'sweep'"})
            parent = (found.get("runs") or [None])[0]
        time.sleep(1)
    assert parent is not None, _job_logs(dash, job_id)
    params = {p["key"]: p["value"] for p in parent["data"].get("params", [])}
    assert params["concurrency"] == "2"  # 2 GPUs at most (--max-workers 2), none up yet
    assert _tag(parent, "binsweep.ray_job_id") == job_id
    assert _tag(parent, "binsweep.ray_dashboard_url").startswith("http://")
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=wd, capture_output=True, text=True).stdout.strip()
    assert _tag(parent, "binsweep.git_sha") == sha
    time.sleep(3)
    assert _children(base, exp, parent["info"]["run_id"]) == []  # nothing can start without a GPU node

    # the GPU nodes join
    t = time.monotonic()
    added = subprocess.run([str(LOCAL / "start.sh"), "--add-workers", "2"], env=rehearsal["env"],
                           capture_output=True, text=True, timeout=180)
    assert added.returncode == 0, added.stderr[-3000:]
    figures["2 GPU nodes join"] = time.monotonic() - t

    # kill a node while a trial trains on it (part-way: at least one epoch reported, several to go)
    victim, t_kill = None, None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        running = [c for c in _children(base, exp, parent["info"]["run_id"]) if _tag(c, "binsweep.state") == "running"]
        # every running trial part-way, so whichever node hosts a trial hosts a part-way one
        if running and all(1 <= _metrics(c).get("epoch", 0) <= EPOCHS - 3 for c in running):
            nodes = _nodes(dash)
            busy = [name for name in ("w1", "w2") if nodes[name]["node_id"] in _trial_actor_nodes(dash)]
            victim = busy[0] if len(busy) == len(running) else None
            if victim:
                killed = subprocess.run([str(LOCAL / "kill-node.sh"), victim], env=rehearsal["env"],
                                        capture_output=True, text=True, timeout=30)
                t_kill = time.time()
                assert killed.returncode == 0, killed.stderr
                break
        assert _job_status(dash, job_id) == "RUNNING", _job_logs(dash, job_id)
        time.sleep(0.3)
    assert victim, "no trial part-way within 180 s"
    # a new node takes the dead one's place, as an autoscaler replaces a reclaimed spot node
    replaced = subprocess.run([str(LOCAL / "start.sh"), "--add-workers", "1"], env=rehearsal["env"],
                              capture_output=True, text=True, timeout=180)
    assert replaced.returncode == 0, replaced.stderr[-3000:]

    deadline = time.monotonic() + 300
    while (status := _job_status(dash, job_id)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, _job_logs(dash, job_id)
        time.sleep(2)
    assert status == "SUCCEEDED", _job_logs(dash, job_id)
    figures["sweep job (submit to end)"] = time.monotonic() - t_submit
    assert _nodes(dash)[victim]["state"] == "DEAD"

    # MLflow: each trial once, each epoch once, every trial completed and evaluated
    children = _children(base, exp, parent["info"]["run_id"])
    assert len(children) == 4 and len({_tag(c, "binsweep.trial_id") for c in children}) == 4
    recovered = []
    for c in children:
        run_id = c["info"]["run_id"]
        epochs = _history(base, run_id, "epoch")
        assert sorted(int(h["step"]) for h in epochs) == list(range(1, EPOCHS + 1)), _tag(c, "binsweep.trial_id")
        assert _tag(c, "binsweep.state") == "completed" and 0 <= _metrics(c)["test_ad_deg"] <= 180
        assert _tag(c, "binsweep.best_checkpoint").startswith(f"{BUCKET}/ray/{SWEEP}-trial-")
        if _tag(c, "binsweep.restarts"):  # Tune retried it (max_failures): the trial of the killed node
            times = sorted(int(h["timestamp"]) / 1000 for h in epochs)
            before = [x for x in times if x <= t_kill]
            after = [x for x in times if x > t_kill]
            recovered.append((c, after[0] - t_kill, len(before)))
    assert len(recovered) == 1, [(_tag(c, "binsweep.trial_id"), _tag(c, "binsweep.restarts")) for c in children]
    (c, recovery_s, done_before), = recovered
    assert _tag(c, "binsweep.restarts") == "1" and 1 <= done_before < EPOCHS
    # retried on another node from its newest checkpoint in the object store, not from scratch: at most the epoch
    # whose checkpoint was still uploading when the node died is trained again (and logged once). done_before counts
    # epochs MLflow had logged at the kill; one reported just before it may be logged just after (the driver logs
    # results as Tune processes them), hence + 1
    assert max(1, done_before - 1) <= int(_tag(c, "binsweep.resumed_from_epoch")) <= done_before + 1
    figures["killed trial: kill -> next epoch logged"] = recovery_s
    figures["killed trial: epochs done before the kill"] = done_before
    parent = _rest(base, f"runs/get?run_id={parent['info']['run_id']}")["run"]
    assert parent["info"]["status"] == "FINISHED" and _tag(parent, "binsweep.state") == "finished"

    # the object store holds the Tune state, every trial's checkpoints and the logged models
    ray_keys = keys_of(env, BUCKET, "ray/")
    assert any(k.startswith(f"ray/{SWEEP}/tuner.pkl") for k in ray_keys)
    for c in children:
        assert any(k.startswith(f"ray/{SWEEP}-trial-{_tag(c, 'binsweep.trial_id')}/checkpoint_") for k in ray_keys)
    assert any(k.endswith("MLmodel") for k in keys_of(env, BUCKET, "mlartifacts/"))

    # nothing on any node's own disk but the head's Optuna study: no dataset, no checkpoint, no artifact
    nodes_dir = rehearsal["run_dir"] / "nodes"
    assert sorted(p.name for p in nodes_dir.iterdir()) == ["head", "w1", "w2", "w3"]
    for node in ("w1", "w2", "w3"):
        assert _files(nodes_dir / node) == [], node
    assert _files(nodes_dir / "head") == ["runs/optuna.db"]

    # `report` as a job, on whichever node has room
    rep = _binsweep("submit", "--run", f"report {SWEEP}", "--follow", env=env, cwd=wd, timeout=240)
    assert rep.returncode == 0 and "SUCCEEDED" in rep.stdout + rep.stderr, rep.stdout + rep.stderr
    assert any(k.endswith("/report.html") for k in keys_of(env, BUCKET, "mlartifacts/"))
    figures["total"] = time.monotonic() - rehearsal["t0"]
    print("rehearsal cluster: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()) + " (seconds, epochs)")


def _job_logs(dash: int, job_id: str) -> str:
    status, body = _http(f"http://127.0.0.1:{dash}/api/jobs/{job_id}/logs", token=_token())
    return body[-6000:] if status == 200 else f"(no logs: {status})"
