"""`binsweep submit`: a sweep as a Ray job on a running cluster, the same as the README's `ray job submit` line.

    ray job submit --address http://127.0.0.1:8265 --working-dir . --entrypoint-num-cpus 1 \
        --entrypoint-resources '{"sweep_driver": 1}' -- python -m sweep_platform sweep FILE --name NAME

The sweep file is validated here first, so a bad file never reaches the cluster. The working directory is zipped and
uploaded by Ray (`.rayignore` keeps data, runs and environments out). MLflow and storage settings of this shell
travel as env vars of the job's runtime environment; credentials never do: a tracking URI with a password in it is
refused (the job's runtime environment is stored and shown in plain text by the dashboard); give the cluster's nodes
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD instead (cluster/README.md).
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sweep_platform import names, tracking
from sweep_platform.errors import BinsweepError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Settings a sweep driver on the cluster needs from this shell, when they are set here.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_NAME", "BINSWEEP_RAY_STORAGE",
                 "BINSWEEP_OPTUNA_STORAGE", "BINSWEEP_DEBUG")
_SECRET_NAMES = re.compile(r"(PASSWORD|TOKEN|SECRET|CREDENTIAL|_KEY$)", re.IGNORECASE)
DRIVER_RESOURCE = "sweep_driver"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class SubmitError(BinsweepError, ValueError):
    """The job cannot be submitted as asked; nothing was sent to the cluster."""


def job_address(address: str | None = None) -> str:
    """The Jobs API of the cluster: --address, else RAY_API_SERVER_ADDRESS, else an http:// RAY_ADDRESS, else the
    local default (what `ray job submit` does, minus its guessing from a GCS address)."""
    for value in (address, os.environ.get("RAY_API_SERVER_ADDRESS"), os.environ.get("RAY_ADDRESS")):
        if value and value.startswith(("http://", "https://")):
            return value.rstrip("/")
        if value and value is address:
            raise SubmitError(f"--address {value!r}: give the dashboard's HTTP address, e.g. {DEFAULT_ADDRESS}")
    return DEFAULT_ADDRESS


def forwarded_env(extra: dict[str, str]) -> dict[str, str]:
    """This shell's MLflow and storage settings plus --env pairs; refuses anything that would carry a credential."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    env.update(extra)
    for key, value in env.items():
        if _SECRET_NAMES.search(key):
            raise SubmitError(f"--env {key}: credentials must not travel in a job's runtime environment (Ray stores "
                              "and shows it in plain text); set it on the cluster's nodes instead (cluster/README.md)")
        if tracking.redact(value) != value:
            raise SubmitError(f"{key}={tracking.redact(value)}: a URI with a password must not travel in a job's "
                              "runtime environment (Ray stores and shows it in plain text); drop the password and "
                              "give the nodes MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (cluster/README.md)")
    return env


def parse_env(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise SubmitError(f"--env {pair!r}: expected KEY=VALUE, e.g. --env OMP_NUM_THREADS=4")
        out[key] = value
    return out


@dataclass
class JobRequest:
    sweep_file: Path  # as given
    working_dir: Path
    name: str
    address: str
    env: dict[str, str] = field(default_factory=dict)
    entrypoint_cpus: float = 1.0
    driver_resource: str | None = DRIVER_RESOURCE
    max_failures: int | None = None
    concurrency: int | None = None

    @property
    def relative_file(self) -> str:
        """The sweep file as the job sees it: relative to the uploaded working directory."""
        f, wd = self.sweep_file.resolve(), self.working_dir.resolve()
        try:
            return f.relative_to(wd).as_posix()
        except ValueError:
            raise SubmitError(f"{self.sweep_file}: the sweep file must lie inside --working-dir {self.working_dir} "
                              "(only that folder is uploaded to the cluster)") from None

    @property
    def entrypoint(self) -> str:
        args = ["python", "-m", "sweep_platform", "sweep", self.relative_file, "--name", self.name, "--no-progress"]
        if self.max_failures is not None:
            args += ["--max-failures", str(self.max_failures)]
        if self.concurrency is not None:
            args += ["--concurrency", str(self.concurrency)]
        return shlex.join(args)

    @property
    def submission_id(self) -> str:
        return f"binsweep-{self.name}"

    def command_line(self) -> str:
        """The equivalent `ray job submit` line (what the README writes), for the user to read or rerun."""
        parts = ["ray", "job", "submit", "--address", self.address, "--working-dir", str(self.working_dir),
                 "--submission-id", self.submission_id, "--entrypoint-num-cpus", f"{self.entrypoint_cpus:g}"]
        if self.driver_resource:
            parts += ["--entrypoint-resources", f'{{"{self.driver_resource}": 1}}']
        if self.env:
            import json

            parts += ["--runtime-env-json", json.dumps({"env_vars": self.env})]
        return shlex.join(parts) + " -- " + self.entrypoint


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray 2.60 clusters expect the token (ray docs: token auth)
    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # noqa: BLE001 - connection refused, 401, wrong address: one message
        raise SubmitError(f"cannot reach the Ray Jobs API at {address}: {exc} (start a cluster with "
                          "cluster/local/start.sh, or pass --address)") from None


def submit(req: JobRequest) -> str:
    """Validate, then submit; returns the job's submission id."""
    from sweep_platform.sweep_file import load_sweep

    load_sweep(req.sweep_file)  # a bad file fails here (exit 2), before the cluster sees anything
    if not req.working_dir.is_dir():
        raise SubmitError(f"--working-dir {req.working_dir}: not a directory")
    _ = req.relative_file
    client = _client(req.address)
    existing = {j.submission_id for j in client.list_jobs()}
    if req.submission_id in existing:
        raise SubmitError(f"a job named {req.submission_id} was already submitted to {req.address}; pick another "
                          f"--name (resume a sweep with `binsweep resume {req.name}` on the cluster)")
    resources = {req.driver_resource: 1} if req.driver_resource else None
    return client.submit_job(
        entrypoint=req.entrypoint, submission_id=req.submission_id,
        runtime_env={"working_dir": str(req.working_dir), "env_vars": req.env},
        entrypoint_num_cpus=req.entrypoint_cpus, entrypoint_resources=resources,
        metadata={names.JOB_SWEEP: req.name, names.JOB_SWEEP_FILE: req.relative_file})


def follow(address: str, job_id: str, echo: Callable[[str], None], *, driver_resource: str | None = None,
           pending_hint_s: float = 60.0) -> str:
    """Stream the job's logs until it ends; returns its final status. A job pending for long gets a hint."""
    client = _client(address)
    t0 = time.monotonic()
    hinted = False
    while (status := str(client.get_job_status(job_id)).split(".")[-1]) == "PENDING":
        if not hinted and time.monotonic() - t0 > pending_hint_s:
            hinted = True
            need = f" and the custom resource {driver_resource!r}" if driver_resource else ""
            echo(f"job {job_id} is still pending after {pending_hint_s:.0f} s: it waits for a free CPU{need} on "
                 f"the cluster (cluster/local/start.sh offers {DRIVER_RESOURCE}; --driver-resource '' drops it)")
        time.sleep(1.0)
    if status not in TERMINAL:

        async def _tail():
            async for lines in client.tail_job_logs(job_id):
                echo(lines.rstrip("\n"))

        asyncio.run(_tail())
    else:
        echo(client.get_job_logs(job_id).rstrip("\n"))
    deadline = time.monotonic() + 30  # the log stream ends a moment before the status does
    while (status := str(client.get_job_status(job_id)).split(".")[-1]) not in TERMINAL and \
            time.monotonic() < deadline:
        time.sleep(0.5)
    return status
