"""`binsweep submit`: a sweep, or a binsweep command about one, as a Ray job on a running cluster; the same as

    ray job submit --address http://127.0.0.1:8265 --working-dir . --entrypoint-num-cpus 1 \
        --entrypoint-resources '{"sweep_driver": 1}' -- python -m sweep_platform sweep FILE --name NAME

Everything is checked here first (the sweep file, the command line of a resume/promote/report/leaderboard job, the
environment), so a bad request never reaches the cluster. The working directory is zipped and uploaded by Ray
(`.rayignore` keeps data, runs, environments and .git out). The job's environment holds exactly what the user asked
for (--mlflow-uri, --ray-storage, --optuna-storage, --env) plus BINSWEEP_GIT_SHA, the commit of the uploaded checkout;
nothing of this shell travels by itself, so the cluster's own MLflow and storage settings apply. Credentials never
travel: a secret-looking name or a URI with a password is refused (Ray stores and shows a job's runtime environment in
plain text); give the cluster's nodes MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD instead (cluster/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
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
COMMANDS = ("resume", "promote", "report", "leaderboard")  # binsweep commands that may run as a job (--run)
# Settings the job's driver reads; sent only when given as flags or --env, never taken from this shell by themselves.
CLUSTER_SETTINGS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_NAME", "BINSWEEP_RAY_STORAGE",
                    "BINSWEEP_OPTUNA_STORAGE")
_SECRET_NAMES = re.compile(r"(PASSWORD|TOKEN|SECRET|CREDENTIAL|_KEY$)", re.IGNORECASE)
DRIVER_RESOURCE = "sweep_driver"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Ray 2.60's JobSupervisor starts a job's entrypoint with this variable: {"runtime_env": ..., "metadata": {...}}, the
# metadata holding the submission id under "job_submission_id" (ray/dashboard/modules/job/job_supervisor.py,
# _get_driver_env_vars; ray/dashboard/modules/job/common.py, JOB_ID_METADATA_KEY). Only the driver gets it.
RAY_JOB_CONFIG_VARIABLE = "RAY_JOB_CONFIG_JSON_ENV_VAR"
RAY_SUBMISSION_ID_KEY = "job_submission_id"


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


def check_env(env: dict[str, str]) -> dict[str, str]:
    """`env` itself, after refusing anything that would carry a credential."""
    for key, value in env.items():
        if _SECRET_NAMES.search(key):
            raise SubmitError(f"--env {key}: credentials must not travel in a job's runtime environment (Ray stores "
                              "and shows it in plain text); set it on the cluster's nodes instead (cluster/README.md)")
        if tracking.redact(value) != value:
            raise SubmitError(f"{key}={tracking.redact(value)}: a URI with a password must not travel in a job's "
                              "runtime environment (Ray stores and shows it in plain text); drop the password and "
                              "give the nodes MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (cluster/README.md)")
    return env


def job_env(flags: dict[str, str | None], pairs: dict[str, str], git_sha: str | None) -> dict[str, str]:
    """The job's env vars: exactly the settings given as flags ({variable: value or None}) and --env pairs, plus
    BINSWEEP_GIT_SHA (an explicit --env BINSWEEP_GIT_SHA wins). Nothing comes from this shell's environment."""
    given = {k: v for k, v in flags.items() if v is not None}
    twice = sorted(given.keys() & pairs.keys())
    if twice:
        raise SubmitError(f"{', '.join(twice)}: given both by its flag and by --env; keep one")
    env = {tracking.GIT_SHA_VARIABLE: git_sha} if git_sha else {}
    env.update(given)
    env.update(pairs)
    return check_env(env)


def not_sent(env: dict[str, str]) -> list[str]:
    """Cluster settings set in this shell that the job does not get (the cluster's own apply): for a note."""
    return [k for k in CLUSTER_SETTINGS if os.environ.get(k) and k not in env]


def parse_env(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise SubmitError(f"--env {pair!r}: expected KEY=VALUE, e.g. --env OMP_NUM_THREADS=4")
        out[key] = value
    return out


def parse_command(text: str) -> list[str]:
    """--run's text as arguments of one of COMMANDS, e.g. "promote --sweep smoke1" -> ["promote", "--sweep",
    "smoke1"]. Its options are checked against the command itself by the CLI (sweep_cli.submit)."""
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise SubmitError(f"--run {text!r}: {exc}") from None
    allowed = ", ".join(COMMANDS)
    if not argv or argv[0] not in COMMANDS:
        what = f"{argv[0]!r} is not one of them" if argv else "it is empty"
        hint = "; a new sweep is submitted as `binsweep submit FILE`" if argv and argv[0] == "sweep" else ""
        raise SubmitError(f"--run {text!r}: give a binsweep command to run as the job, one of {allowed} with its "
                          f"arguments, e.g. --run 'promote --sweep smoke1'; {what}{hint}")
    if any(a in ("--help", "-h") for a in argv[1:]):
        raise SubmitError(f"--run {text!r}: a job cannot show help; run `binsweep {argv[0]} --help` here")
    return argv


def resume_command(name: str, retry_failed: bool = False) -> list[str]:
    """`binsweep submit --resume NAME [--retry-failed]` as a job's binsweep command."""
    return ["resume", name] + (["--retry-failed"] if retry_failed else [])


def checkout_sha(working_dir: Path) -> str | None:
    """The commit of the code the job runs: the checkout holding the working directory ("-dirty" with uncommitted
    changes); else BINSWEEP_GIT_SHA of this shell (e.g. set by CI); else None (the job then says "unknown")."""
    return tracking.checkout_sha(working_dir) or os.environ.get(tracking.GIT_SHA_VARIABLE, "").strip() or None


def _id_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


@dataclass
class JobRequest:
    """One job: a new sweep (sweep_file + name) or a binsweep command (command, about sweep `name` when known)."""

    working_dir: Path
    address: str
    sweep_file: Path | None = None  # as given
    name: str | None = None
    command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    entrypoint_cpus: float = 1.0
    driver_resource: str | None = DRIVER_RESOURCE
    max_failures: int | None = None
    concurrency: int | None = None
    stamp: str = field(default_factory=lambda: time.strftime("%m%d-%H%M%S"))

    def __post_init__(self):
        if (self.sweep_file is None) == (self.command is None):
            raise SubmitError("a job is either a sweep file or a binsweep command, exactly one of them")
        if self.sweep_file is not None and not self.name:
            raise SubmitError("a sweep job needs its sweep's name")

    @property
    def kind(self) -> str:
        return "sweep" if self.command is None else self.command[0]

    @property
    def relative_file(self) -> str:
        """The sweep file as the job sees it: relative to the uploaded working directory."""
        f, wd = Path(self.sweep_file).resolve(), self.working_dir.resolve()
        try:
            return f.relative_to(wd).as_posix()
        except ValueError:
            raise SubmitError(f"{self.sweep_file}: the sweep file must lie inside --working-dir {self.working_dir} "
                              "(only that folder is uploaded to the cluster)") from None

    @property
    def entrypoint(self) -> str:
        if self.command is not None:
            return shlex.join(["python", "-m", "sweep_platform", *self.command])
        # progress on: a job's output is no terminal, so the sweep prints one line per trial epoch for `ray job logs`
        args = ["python", "-m", "sweep_platform", "sweep", self.relative_file, "--name", self.name]
        if self.max_failures is not None:
            args += ["--max-failures", str(self.max_failures)]
        if self.concurrency is not None:
            args += ["--concurrency", str(self.concurrency)]
        return shlex.join(args)

    @property
    def submission_id(self) -> str:
        """binsweep-NAME for a new sweep (its name is unique already); binsweep-[NAME-]COMMAND-MMDD-HHMMSS else."""
        if self.command is None:
            return f"binsweep-{self.name}"
        parts = ["binsweep"] + ([_id_part(self.name)] if self.name else []) + [self.kind, self.stamp]
        return "-".join(parts)

    @property
    def metadata(self) -> dict[str, str]:
        """The job's Ray metadata (`ray job list` shows it)."""
        meta = {names.JOB_COMMAND: self.kind}
        if self.name:
            meta[names.JOB_SWEEP] = self.name
        if self.sweep_file is not None:
            meta[names.JOB_SWEEP_FILE] = self.relative_file
        return meta

    def command_line(self) -> str:
        """The equivalent `ray job submit` line (what the README writes), for the user to read or rerun."""
        parts = ["ray", "job", "submit", "--address", self.address, "--working-dir", str(self.working_dir),
                 "--submission-id", self.submission_id, "--entrypoint-num-cpus", f"{self.entrypoint_cpus:g}"]
        if self.driver_resource:
            parts += ["--entrypoint-resources", f'{{"{self.driver_resource}": 1}}']
        if self.env:
            parts += ["--runtime-env-json", json.dumps({"env_vars": self.env})]
        return shlex.join(parts) + " -- " + self.entrypoint

    def check(self) -> None:
        """Everything that can be checked without the cluster; raises SubmitError (or the sweep file's error)."""
        if self.sweep_file is not None:
            from sweep_platform.sweep_file import load_sweep

            load_sweep(self.sweep_file)  # a bad file fails here (exit 2), before the cluster sees anything
        if not self.working_dir.is_dir():
            raise SubmitError(f"--working-dir {self.working_dir}: not a directory")
        if self.sweep_file is not None:
            _ = self.relative_file
        check_env(self.env)


def running_job() -> dict[str, str]:
    """Run tags when this process is a Ray job's driver: the submission id and the dashboard URL; {} otherwise.

    The submission id comes from RAY_JOB_CONFIG_JSON_ENV_VAR (see RAY_JOB_CONFIG_VARIABLE; Ray 2.60 has no other
    variable or runtime-context getter for it). The dashboard URL is the one the cluster publishes in its GCS
    (`webui:url`, written by the head, read by ray.init): ray._private.worker.get_dashboard_url(), which also honours
    RAY_OVERRIDE_DASHBOARD_URL; the address the job was submitted to (a tunnel, a port-forward) is unknown here."""
    try:
        meta = json.loads(os.environ.get(RAY_JOB_CONFIG_VARIABLE) or "{}").get("metadata") or {}
        job_id = meta.get(RAY_SUBMISSION_ID_KEY)
    except (ValueError, AttributeError):
        return {}
    if not job_id:
        return {}
    tags = {names.TAG_RAY_JOB: str(job_id)}
    url = _dashboard_url()
    if url:
        tags[names.TAG_RAY_DASHBOARD] = url
    return tags


def _dashboard_url() -> str | None:
    url = os.environ.get("RAY_OVERRIDE_DASHBOARD_URL")
    if not url:
        try:
            import ray

            url = ray._private.worker.get_dashboard_url() if ray.is_initialized() else None
        except Exception:  # noqa: BLE001 - a tag is not worth failing a sweep for
            url = None
    if not url:
        return None
    return url if "://" in url else f"http://{url}"


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray 2.60 clusters expect the token (ray docs: token auth)
    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # noqa: BLE001 - connection refused, 401, wrong address: one message
        raise SubmitError(f"cannot reach the Ray Jobs API at {address}: {exc} (start a cluster with "
                          "cluster/local/start.sh, or pass --address)") from None


def submit(req: JobRequest) -> str:
    """Check, then submit; returns the job's submission id."""
    req.check()
    client = _client(req.address)
    existing = {j.submission_id for j in client.list_jobs()}
    if req.submission_id in existing:
        again = (f"pick another --name (continue that sweep with `binsweep submit --resume {req.name}`)"
                 if req.command is None else "submit it again in a second")
        raise SubmitError(f"a job named {req.submission_id} was already submitted to {req.address}; {again}")
    resources = {req.driver_resource: 1} if req.driver_resource else None
    with _quiet_packaging():  # "Creating a file package ...", "Pushing file package ..." at every submit
        return client.submit_job(
            entrypoint=req.entrypoint, submission_id=req.submission_id,
            runtime_env={"working_dir": str(req.working_dir), "env_vars": req.env},
            entrypoint_num_cpus=req.entrypoint_cpus, entrypoint_resources=resources, metadata=req.metadata)


PACKAGING_LOGGERS = ("ray._private.runtime_env.packaging", "ray.dashboard.modules.dashboard_sdk")


@contextlib.contextmanager
def _quiet_packaging():
    """Ray's INFO lines about packaging and uploading the working dir, off unless -v (warnings stay)."""
    from sweep_platform import quiet

    loggers = [] if quiet.verbose() else [logging.getLogger(n) for n in PACKAGING_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


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
