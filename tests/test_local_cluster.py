"""The cluster path end to end, for real: cluster/local/start.sh (a Ray head plus one extra node, an MLflow server on
PostgreSQL when the machine has it), a smoke sweep submitted with `ray job submit` exactly as the README writes it,
the results read back through MLflow's REST API, promotion and prediction through the server, `binsweep submit`,
and cluster/local/stop.sh leaving no port open and no process behind.

The tests share one cluster (module fixture) and run in file order. It uses its own BINSWEEP_HOME and free ports,
so it meets neither the embedded Ray of other tests nor a cluster someone runs on the default ports. The MLflow
backend is whatever `--backend auto` finds: PostgreSQL when initdb/pg_ctl and a Python driver are there (as root
only if the `postgres` OS user exists; .ci/run installs PostgreSQL where it can), else SQLite; the test checks that
the choice is the expected one. About 2-3 minutes on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "cluster" / "local"
SWEEP_NAME = "e2e-smoke"

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------------------------------------------ helpers


def _free_ports(n: int) -> list[int]:
    """n free ports from 20000-32767: above Ray's worker ports (10002-19999) and below the kernel's ephemeral range
    (32768-60999), from which Ray's own components draw their unnamed ports while the cluster starts. A fixed port
    from the ephemeral range (what binding port 0 gives) could be taken by one of those before the process meant for
    it binds it: the dashboard agent then dies and the job server answers "No available agent" (seen once in CI)."""
    rng = random.Random()
    socks, ports = [], []
    try:
        while len(ports) < n:
            port = rng.randrange(20000, 32768)
            if port in ports or (port + 1) in ports or (port - 1) in ports:  # the agent's neighbour is used too
                continue
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            socks.append(s)
            ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def _hex_to_host(addr: str) -> str:
    """A /proc/net/tcp{,6} address (little-endian 32-bit words in hex) -> 127.0.0.1, 0.0.0.0, ::, ::ffff:127.0.0.1."""
    import ipaddress

    raw = bytes.fromhex(addr)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def _listeners(port: int) -> list[str]:
    """Local addresses listening on TCP `port`, read from the kernel's socket tables (no ss or netstat needed)."""
    hosts = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr, _, p = local.rpartition(":")
            if state == "0A" and int(p, 16) == port:  # 0A = LISTEN
                hosts.append(_hex_to_host(addr))
    return hosts


def _http(url: str, token: str | None = None, data: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=None if data is None else json.dumps(data).encode())
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def _rest(base: str, path: str, data: dict | None = None) -> dict:
    status, body = _http(f"{base}/api/2.0/mlflow/{path}", data=data)
    assert status == 200, (path, status, body[:2000])
    return json.loads(body)


def _token() -> str:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"]
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return Path(path).read_text().strip()


def _expected_backend() -> str:
    pg = shutil.which("initdb") or any(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    driver = importlib.util.find_spec("psycopg") or importlib.util.find_spec("psycopg2")
    root_ok = os.getuid() != 0 or shutil.which("runuser") and subprocess.run(
        ["id", "postgres"], capture_output=True).returncode == 0
    return "postgresql" if pg and driver and root_ok else "sqlite"


def _exports(stdout: str) -> dict[str, str]:
    env = {}
    for line in stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = value
    return env


def _job_status(dash: int, job_id: str) -> str:
    """The job's status from the Jobs REST API (what `ray job status` prints, in its enum's spelling)."""
    status, body = _http(f"http://127.0.0.1:{dash}/api/jobs/{job_id}", token=_token())
    assert status == 200, body
    return json.loads(body)["status"]


def _tag(run: dict, key: str) -> str | None:
    return next((t["value"] for t in run["data"].get("tags", []) if t["key"] == key), None)


def _metrics(run: dict) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def _ray(*args: str, env: dict, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """The `ray` CLI of this interpreter (`ray` itself may not be on PATH)."""
    return subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def _binsweep(*args: str, env: dict, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweep_platform", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def _smoke_sweep() -> dict:
    """The shipped smoke sweep, cut to two trials of two epochs so the suite stays short; a trial that ASHA stops is
    scored too (evaluate_stopped: a Ray task on the cluster, beside the completed trial's own evaluation)."""
    data = yaml.safe_load((REPO / "search_spaces" / "bast_smoke.yaml").read_text())
    data.update(name="e2e_smoke", dataset="data/e2e_loc", trials=2, concurrency=2, evaluate_stopped=True,
                scheduler={"type": "asha", "grace_epochs": 1, "max_epochs": 2, "reduction_factor": 2})
    data["base"]["train"]["epochs"] = 2
    return data


def copy_code(wd: Path) -> Path:
    """The code, the search spaces and .rayignore of this checkout, copied into `wd` (what a job uploads)."""
    for part in ("sweep_platform", "trainables", "search_spaces"):
        shutil.copytree(REPO / part, wd / part, ignore=shutil.ignore_patterns("__pycache__"))
    for f in (".rayignore", "pyproject.toml", "README.md"):
        shutil.copy(REPO / f, wd / f)
    return wd


def _working_dir(root: Path) -> Path:
    """What `--working-dir .` uploads from a checkout: the code, the search spaces, .rayignore; plus the things
    .rayignore must keep out (a dataset, runs, a virtual environment)."""
    wd = copy_code(root / "checkout")
    (wd / "search_spaces" / "e2e_smoke.yaml").write_text(yaml.safe_dump(_smoke_sweep(), sort_keys=False))
    for junk in ("data/big.bin", "runs/mlflow.db", ".venv/lib/big.so"):
        (wd / junk).parent.mkdir(parents=True, exist_ok=True)
        (wd / junk).write_bytes(os.urandom(1024) * 12 * 1024)  # 12 MiB each: Ray would warn about every one
    return wd


# ------------------------------------------------------------------------------------------------------ cluster


@pytest.fixture(scope="module")
def cluster():
    t0 = time.monotonic()
    # a home that the postgres OS user can traverse when the test runs as root (pytest's tmp dirs are 0700)
    home = Path(tempfile.mkdtemp(prefix="bsc-"))
    home.chmod(0o755)
    # the KEMAR cache of the test session, so the job's dataset build needs no download
    from trainables.acoustics.hrtf import default_cache_dir, kemar

    kemar()
    shutil.copytree(default_cache_dir(), home / "data" / "cache" / "hrtf")
    gcs, dash, client, agent, mlflow_port, pg = _free_ports(6)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER", "MLFLOW_TRACKING", "BINSWEEP_"))}
    env.update(BINSWEEP_HOME=str(home), BINSWEEP_PYTHON=sys.executable)
    args = [str(LOCAL / "start.sh"), "--num-cpus", "4", "--workers", "1", "--worker-cpus", "1",
            "--port", str(gcs), "--dashboard-port", str(dash), "--client-port", str(client),
            "--agent-port", str(agent), "--mlflow-port", str(mlflow_port), "--mlflow-workers", "1",
            "--pg-port", str(pg), "--object-store-mb", "150"]
    info = {"home": home, "env": env, "args": args, "ports": (gcs, dash, client, agent, agent + 1, mlflow_port),
            "run_dir": home / "runs" / "cluster", "t0": t0}
    try:
        info["started"] = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
        info["t_start"] = time.monotonic() - t0
        info["exports"] = _exports(info["started"].stdout)
        info["job_env"] = {**env, **info["exports"]}
        yield info
    finally:
        info["stopped"] = subprocess.run([str(LOCAL / "stop.sh")], env=env, capture_output=True, text=True,
                                         timeout=180)
        ray_link = info["run_dir"] / "logs" / "ray"
        if ray_link.is_symlink():  # Ray's private temp dirs (session logs) outlive stop.sh on purpose
            shutil.rmtree(Path(os.readlink(ray_link)).parents[2], ignore_errors=True)  # /tmp/binsweep-<uid>-<h>
        shutil.rmtree(home, ignore_errors=True)


def test_start_brings_up_ray_and_mlflow_on_loopback_with_token_auth(cluster):
    started = cluster["started"]
    assert started.returncode == 0, started.stderr[-4000:]
    home, (gcs, dash, _, _, _, mlflow_port) = cluster["home"], cluster["ports"]
    # stdout is nothing but the exports a client needs
    assert cluster["exports"] == {
        "RAY_AUTH_MODE": "token",
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dash}",
        "RAY_ADDRESS": f"127.0.0.1:{gcs}",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        "BINSWEEP_HOME": str(home),
        "BINSWEEP_RAY_STORAGE": str(home / "runs" / "ray"),
    }, started.stdout
    assert all(line.startswith(("export ", "#")) for line in started.stdout.splitlines() if line)
    assert (cluster["run_dir"] / "env.sh").read_text() == started.stdout
    assert (cluster["run_dir"] / "mlflow.backend").read_text().strip() == _expected_backend()

    # Ray dashboard / job API: token auth on, loopback only
    assert _http(f"http://127.0.0.1:{dash}/api/version")[0] == 401
    status, body = _http(f"http://127.0.0.1:{dash}/api/version", token=_token())
    assert status == 200 and json.loads(body)["ray_version"] == "2.60.0", body
    assert _http(f"http://127.0.0.1:{mlflow_port}/health")[0] == 200
    for port in (dash, mlflow_port):
        hosts = _listeners(port)
        assert hosts and set(hosts) <= {"127.0.0.1", "::ffff:127.0.0.1"}, (port, hosts)


def test_readme_ray_job_submit_runs_a_smoke_sweep_logged_to_the_server(cluster):
    """`ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m sweep_platform sweep FILE` from a
    checkout, with only the exports of start.sh in the environment (README, "Scale out")."""
    assert cluster["started"].returncode == 0
    env, dash = cluster["job_env"], cluster["ports"][1]
    wd = _working_dir(cluster["home"])
    t0 = time.monotonic()
    job = _ray("job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", ".",
               "--submission-id", SWEEP_NAME, "--", "python", "-m", "sweep_platform", "sweep",
               "search_spaces/e2e_smoke.yaml", "--name", SWEEP_NAME, env=env, cwd=wd, timeout=420)
    cluster["t_sweep"] = time.monotonic() - t0
    out = job.stdout + job.stderr
    assert job.returncode == 0, out[-6000:]
    assert _job_status(dash, SWEEP_NAME) == "SUCCEEDED"
    assert "2 trials" in out and f"binsweep leaderboard --sweep {SWEEP_NAME}" in out.replace("\n", "")
    # what the node unpacked as the job's working dir: the code and the sweep file, not the 36 MiB that .rayignore
    # keeps out (data/, runs/, .venv/)
    session = Path(os.readlink(cluster["run_dir"] / "logs" / "ray")).parent
    unpacked = [p.parents[1] for p in session.glob("runtime_resources/working_dir_files/*/search_spaces/e2e_smoke.yaml")]
    assert len(unpacked) == 1, list(session.glob("runtime_resources/*/*"))
    assert (unpacked[0] / "sweep_platform" / "sweep.py").is_file()
    assert not any((unpacked[0] / d).exists() for d in ("data", "runs", ".venv"))

    base = env["MLFLOW_TRACKING_URI"]
    exp = _rest(base, "experiments/get-by-name?experiment_name=binsweep-bast")["experiment"]
    runs = _rest(base, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
    parents = [r for r in runs if _tag(r, "binsweep.role") == "sweep"]
    assert len(parents) == 1 and _tag(parents[0], "binsweep.sweep_id") == SWEEP_NAME
    parent = parents[0]
    assert parent["info"]["status"] == "FINISHED" and _tag(parent, "binsweep.state") == "finished"
    children = [r for r in runs if _tag(r, "mlflow.parentRunId") == parent["info"]["run_id"]]
    assert len(children) == 2
    # the trials ran on the cluster, not in a temporary unpacked working dir: checkpoints under its storage
    storage = Path(cluster["exports"]["BINSWEEP_RAY_STORAGE"])
    for child in children:
        m = _metrics(child)
        assert _tag(child, "binsweep.state") in ("completed", "stopped")
        assert 0 <= m["test_ad_deg"] <= 180 and m["params_m"] > 0
        hist = _rest(base, f"metrics/get-history?run_id={child['info']['run_id']}&metric_key=val_ad_deg")
        assert [int(h["step"]) for h in hist["metrics"]] in ([1], [1, 2])
        assert Path(_tag(child, "binsweep.best_checkpoint")).is_relative_to(storage)
    models = _rest(base, "logged-models/search", {"experiment_ids": [exp["experiment_id"]]})["models"]
    assert {m["info"]["source_run_id"] for m in models} == {c["info"]["run_id"] for c in children}
    cluster["experiment_id"] = exp["experiment_id"]


def test_promote_and_predict_through_the_server(cluster):
    assert cluster.get("experiment_id"), "the sweep did not run"
    env, home = cluster["job_env"], cluster["home"]
    promoted = _binsweep("promote", "--sweep", SWEEP_NAME, env=env, cwd=home, timeout=180)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert "promoted: bast@champion -> version 1" in promoted.stdout
    base = env["MLFLOW_TRACKING_URI"]
    alias = _rest(base, "registered-models/alias?name=bast&alias=champion")["model_version"]
    assert alias["version"] == "1" and alias["source"].startswith("models:/m-")

    from sweep_platform.demo import write_test_clips

    clips = write_test_clips(home / "data" / "e2e_loc", home / "clips", 2)
    predicted = _binsweep("predict", "models:/bast@champion", *[str(c.path) for c in clips], env=env, cwd=home,
                          timeout=120)
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    lines = [ln.split() for ln in predicted.stdout.splitlines() if ln.strip()]
    assert [ln[0] for ln in lines] == [str(c.path) for c in clips]
    assert all(0 <= float(ln[1]) < 360 for ln in lines)


def test_binsweep_submit_checks_first_then_submits_and_follows(cluster):
    env, home = cluster["job_env"], cluster["home"]
    wd = home / "checkout"
    assert wd.is_dir(), "the README sweep did not run"
    before = _ray("job", "list", env=env, cwd=wd, timeout=60).stdout

    bad = wd / "search_spaces" / "bad.yaml"
    bad.write_text("name: bad\ntrainable: bast\ntrials: 0\n")
    res = _binsweep("submit", str(bad.relative_to(wd)), env=env, cwd=wd, timeout=60)
    assert res.returncode == 2 and "bad.yaml" in res.stderr + res.stdout and "trials" in res.stderr + res.stdout
    leaky = _binsweep("submit", "search_spaces/e2e_smoke.yaml", "--env",
                      "MLFLOW_TRACKING_URI=http://me:s3cret@mlflow:5000", env=env, cwd=wd, timeout=60)
    assert leaky.returncode == 2 and "s3cret" not in leaky.stdout + leaky.stderr, leaky.stdout + leaky.stderr
    assert "password" in leaky.stdout + leaky.stderr
    assert _ray("job", "list", env=env, cwd=wd, timeout=60).stdout.count("submission_id") == \
        before.count("submission_id")  # neither reached the cluster

    # a sweep whose dataset is missing: submitted, pinned to the head's sweep_driver, fails on the cluster with the
    # driver's own message, and --follow returns the job's failure as exit code 1
    nodata = _smoke_sweep()
    nodata.pop("dataset_build")
    nodata["dataset"] = "data/not_there"
    (wd / "search_spaces" / "nodata.yaml").write_text(yaml.safe_dump(nodata, sort_keys=False))
    res = _binsweep("submit", "search_spaces/nodata.yaml", "--name", "nodata", "--follow", env=env, cwd=wd,
                    timeout=240)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-4000:]
    assert "binsweep-nodata" in out and "FAILED" in out and "no dataset at" in out.replace("\n", "")
    assert _job_status(cluster["ports"][1], "binsweep-nodata") == "FAILED"


def test_start_again_is_a_noop_and_stop_ends_everything(cluster):
    args, env, run_dir = cluster["args"], cluster["env"], cluster["run_dir"]
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("already running") == 3, again.stderr
    pids = {p.name: int(p.read_text()) for p in (run_dir / "pids").glob("*.pid")}
    assert set(pids) == {"ray-head.pid", "ray-worker-1.pid", "mlflow.pid"}

    stopped = subprocess.run([str(LOCAL / "stop.sh")], env=env, capture_output=True, text=True, timeout=180)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stderr
    for port in cluster["ports"]:
        assert _listeners(port) == [], (port, _listeners(port))
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, port
    for name, pid in pids.items():  # each leader and everything in its session is gone
        left = subprocess.run(["pgrep", "-s", str(pid)], capture_output=True, text=True).stdout.split()
        alive = [p for p in left if Path(f"/proc/{p}").exists()
                 and "Z" not in Path(f"/proc/{p}/stat").read_text().split(")")[-1].split()[0]]
        assert not alive, (name, alive)
    assert not list((run_dir / "pids").glob("*.pid"))
    if (run_dir / "pg" / "data" / "postmaster.pid").exists():
        raise AssertionError("PostgreSQL is still running")
    print(f"local cluster: start {cluster['t_start']:.1f}s, README sweep job {cluster.get('t_sweep', 0):.1f}s, "
          f"total {time.monotonic() - cluster['t0']:.1f}s")


def test_watch_reads_the_readme_sweep_from_the_server(cluster):
    """`binsweep watch NAME --once` from a machine that knows only the MLflow server (its MLFLOW_TRACKING_URI): the
    sweep's two trials in their final states."""
    import re

    assert cluster.get("experiment_id"), "the sweep did not run"
    env = {k: v for k, v in cluster["job_env"].items() if not k.startswith(("RAY_", "BINSWEEP_"))}
    env.update(BINSWEEP_HOME=str(cluster["home"] / "laptop"), COLUMNS="120")
    res = _binsweep("watch", SWEEP_NAME, "--once", env=env, cwd=cluster["home"], timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"sweep {SWEEP_NAME} (bast): finished | trials 2 done, 0 running, 0 failed of 2" in \
        " ".join(res.stdout.split()), res.stdout
    states = [ln.split()[1] for ln in res.stdout.splitlines() if re.match(r"\s*[0-9a-f]+\s+(completed|stopped)\s", ln)]
    assert len(states) == 2 and set(states) <= {"completed", "stopped"}, res.stdout
    js = _binsweep("watch", SWEEP_NAME, "--once", "-f", "json", env=env, cwd=cluster["home"], timeout=120)
    assert js.returncode == 0, js.stdout + js.stderr
    snap = json.loads(js.stdout)
    assert snap["state"] == "finished" and len(snap["trials"]) == 2
    assert all(t["epoch"] in (1, 2) and t["epochs"] == 2 and t["best"] is not None for t in snap["trials"])


# the tests run in definition order: the one that stops the cluster goes last again, after the watch test above
_STOP_TEST = "test_start_again_is_a_noop_and_stop_ends_everything"
globals()[_STOP_TEST] = globals().pop(_STOP_TEST)
