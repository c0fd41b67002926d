"""cluster/local/start.sh and stop.sh for real: a Ray head plus one extra node and an MLflow server on loopback.

One test, about 45-60 s on 2 cores: start, check the dashboard (token auth) and MLflow answer on 127.0.0.1 and on
nothing wider, submit a job that needs the head's `sweep_driver` resource and logs to the server, start again (a
no-op), stop, check that every port is closed and every process is gone. It uses its own BINSWEEP_HOME and free
ports, so it neither meets the embedded Ray of other tests nor a cluster someone runs on the default ports.
The MLflow backend is whatever `--backend auto` finds: PostgreSQL when initdb/pg_ctl and a Python driver are there
(as root only if the `postgres` OS user exists), else SQLite; the test checks that the choice is the expected one.
"""

from __future__ import annotations

import importlib.util
import json
import os
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

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "cluster" / "local"

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("bash") is None or shutil.which("ss") is None,
    reason="needs Linux, bash and ss (iproute2)",
)


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            socks.append(s)
            # Ray's worker ports are 10002-19999; keep the fixed ones out of that range
            if not 10002 <= port <= 19999 and port not in ports:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def _listeners(port: int) -> list[str]:
    """Local addresses listening on TCP `port`, as `ss -ltnH` shows them (127.0.0.1, 0.0.0.0, *, [::], ...)."""
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    hosts = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            host, _, p = fields[3].rpartition(":")
            if p == str(port):
                hosts.append(host)
    return hosts


def _http(url: str, token: str | None = None, data: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=None if data is None else json.dumps(data).encode())
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


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


def test_local_cluster_start_job_stop():
    t0 = time.monotonic()
    # a home that the postgres OS user can traverse when the test runs as root (pytest's tmp dirs are 0700)
    home = Path(tempfile.mkdtemp(prefix="bsc-"))
    home.chmod(0o755)
    gcs, dash, client, agent, mlflow_port, pg = _free_ports(6)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER", "MLFLOW_TRACKING", "BINSWEEP_"))}
    env.update(BINSWEEP_HOME=str(home), BINSWEEP_PYTHON=sys.executable)
    args = [str(LOCAL / "start.sh"), "--num-cpus", "2", "--workers", "1", "--worker-cpus", "1",
            "--port", str(gcs), "--dashboard-port", str(dash), "--client-port", str(client),
            "--agent-port", str(agent), "--mlflow-port", str(mlflow_port), "--mlflow-workers", "1",
            "--pg-port", str(pg), "--object-store-mb", "100"]
    run_dir = home / "runs" / "cluster"
    try:
        started = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stderr[-4000:]
        t_start = time.monotonic() - t0

        # stdout is nothing but the exports a client needs
        exports = _exports(started.stdout)
        assert exports == {
            "RAY_AUTH_MODE": "token",
            "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dash}",
            "RAY_ADDRESS": f"127.0.0.1:{gcs}",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "BINSWEEP_HOME": str(home),
            "BINSWEEP_RAY_STORAGE": str(home / "runs" / "ray"),
        }, started.stdout
        assert all(line.startswith(("export ", "#")) for line in started.stdout.splitlines() if line)
        assert (run_dir / "env.sh").read_text() == started.stdout
        assert (run_dir / "mlflow.backend").read_text().strip() == _expected_backend()

        # Ray dashboard / job API: token auth on, loopback only
        token = _token()
        status, _ = _http(f"http://127.0.0.1:{dash}/api/version")
        assert status == 401
        status, body = _http(f"http://127.0.0.1:{dash}/api/version", token=token)
        assert status == 200 and json.loads(body)["ray_version"] == "2.60.0", body
        # MLflow server
        assert _http(f"http://127.0.0.1:{mlflow_port}/health")[0] == 200
        status, _ = _http(f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/experiments/search", data={"max_results": 1})
        assert status == 200
        for port in (dash, mlflow_port):
            hosts = _listeners(port)
            assert hosts and set(hosts) <= {"127.0.0.1", "[::ffff:127.0.0.1]"}, (port, hosts)

        # a job: the client finds the cluster through the exports, the entrypoint gets the head's sweep_driver,
        # sees both nodes and the cluster's environment, and logs to the server
        job_env = {**env, **exports}
        code = (
            "import json, os, ray, mlflow\n"
            "ray.init()\n"
            "nodes = [n for n in ray.nodes() if n['Alive']]\n"
            "mlflow.set_experiment('local-cluster-test')\n"
            "with mlflow.start_run() as run:\n"
            "    mlflow.log_metric('x', 1.0)\n"
            "print('RESULT', json.dumps({'nodes': len(nodes), 'run': run.info.run_id,\n"
            "    'sweep_driver': ray.cluster_resources().get('sweep_driver'),\n"
            "    'env': {k: os.environ.get(k) for k in ('MLFLOW_TRACKING_URI', 'BINSWEEP_HOME', 'RAY_AUTH_MODE')}}))\n"
        )
        job = subprocess.run(
            [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--entrypoint-num-cpus", "1",
             "--entrypoint-resources", '{"sweep_driver": 1}', "--", "python", "-c", code],
            env=job_env, capture_output=True, text=True, timeout=120, cwd=home)
        assert job.returncode == 0, (job.stdout + job.stderr)[-4000:]
        line = next(x for x in job.stdout.splitlines() if x.startswith("RESULT "))
        result = json.loads(line[len("RESULT "):])
        assert result["nodes"] == 2 and result["sweep_driver"] == 1
        assert result["env"] == {"MLFLOW_TRACKING_URI": exports["MLFLOW_TRACKING_URI"],
                                 "BINSWEEP_HOME": str(home), "RAY_AUTH_MODE": "token"}
        status, body = _http(f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/runs/get?run_id={result['run']}")
        assert status == 200 and json.loads(body)["run"]["data"]["metrics"][0]["key"] == "x"
        t_job = time.monotonic() - t0 - t_start

        # starting again changes nothing
        again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr[-2000:]
        assert again.stderr.count("already running") == 3, again.stderr
        pids = {p.name: int(p.read_text()) for p in (run_dir / "pids").glob("*.pid")}
        assert set(pids) == {"ray-head.pid", "ray-worker-1.pid", "mlflow.pid"}
    finally:
        stopped = subprocess.run([str(LOCAL / "stop.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    t_total = time.monotonic() - t0

    for port in (gcs, dash, client, agent, agent + 1, mlflow_port):
        assert _listeners(port) == [], (port, _listeners(port))
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, port
    for name, pid in pids.items():  # each leader and everything in its session is gone
        left = subprocess.run(["pgrep", "-s", str(pid)], capture_output=True, text=True).stdout.split()
        alive = [p for p in left if Path(f"/proc/{p}").exists()
                 and "Z" not in Path(f"/proc/{p}/stat").read_text().split(")")[-1].split()[0]]
        assert not alive, (name, alive)
    assert not list((run_dir / "pids").glob("*.pid"))
    assert "stopped" in stopped.stderr
    print(f"local cluster: start {t_start:.1f}s, job {t_job:.1f}s, total with stop {t_total:.1f}s")
    # Ray's private temp dir (/tmp/binsweep-ray-<uid>-<hash>, its session logs) outlives stop.sh on purpose
    ray_tmp = Path(os.readlink(run_dir / "logs" / "ray")).parents[1]
    assert ray_tmp.name.startswith("binsweep-ray-")
    shutil.rmtree(ray_tmp, ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)
