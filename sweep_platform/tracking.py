"""MLflow plumbing shared by single runs and sweeps: where the store is, experiments, params, retries, redaction.

Embedded default (design.md): `sqlite:///<home>/runs/mlflow.db`, artifacts in `<home>/runs/mlartifacts`.
MLFLOW_TRACKING_URI overrides (a server on a cluster). MLflow 3 refuses a plain file store, hence SQLite.
"""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from sweep_platform import paths

log = logging.getLogger(__name__)
T = TypeVar("T")



def embedded_uri() -> str:
    return f"sqlite:///{paths.runs_dir() / 'mlflow.db'}"


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")  # note: mlflow.set_tracking_uri also sets this variable
    if uri:
        return uri
    paths.runs_dir().mkdir(parents=True, exist_ok=True)
    return embedded_uri()


def artifact_root() -> str:
    return (paths.runs_dir() / "mlartifacts").as_uri()


def experiment_name(trainable: str, override: str | None = None) -> str:
    return override or f"binsweep-{trainable}"


def client():
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.MlflowClient(tracking_uri())


def ensure_experiment(name: str) -> str:
    """The experiment's id, created on first use (artifacts under runs/mlartifacts with the embedded store)."""
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    # the embedded store keeps artifacts beside it; a server decides for itself (proxied artifacts)
    location = f"{artifact_root()}/{name}" if tracking_uri() == embedded_uri() else None
    try:
        return c.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it between our two calls
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


_SECRET = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@")


def redact(text: str) -> str:
    """URIs with passwords lose the password: postgresql://u:secret@h/db -> postgresql://u:***@h/db."""
    return _SECRET.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"model": {"sharing": "SP"}} -> {"model.sharing": "SP"} (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = redact(str(v)) if isinstance(v, str) else v
    return out


def params_of(config: dict) -> dict[str, str]:
    return {k: ("null" if v is None else str(v))[:6000] for k, v in flatten(config).items()}


def is_number(v) -> bool:
    """A finite int or float (not a bool): what MLflow can store as a metric."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def better(a: float, b: float | None, mode: str) -> bool:
    """Whether metric value `a` beats `b` (None: nothing yet) in `mode` ("min" or "max")."""
    return b is None or (a < b if mode == "min" else a > b)


def with_retries(fn: Callable[[], T], what: str, attempts: int = 4, delay_s: float = 0.5) -> T | None:
    """Tracking must never kill training: retry with backoff, then log and give up."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - any store error is retried the same way
            if i == attempts - 1:
                log.warning("MLflow: giving up on %s after %d attempts: %s", what, attempts, redact(str(exc)))
                return None
            time.sleep(delay_s * 2**i)
    return None


GIT_SHA_VARIABLE = "BINSWEEP_GIT_SHA"  # set by `binsweep submit`: a job's upload has no .git (.rayignore)


def git_sha(folder: Path | None = None) -> str:
    """The code's commit, as recorded on runs: BINSWEEP_GIT_SHA when set (a submitted job), else the checkout this
    package (or `folder`) lives in, `<sha>-dirty` with uncommitted changes to tracked files, else "unknown"."""
    return (os.environ.get(GIT_SHA_VARIABLE, "").strip() or checkout_sha(folder or Path(__file__).resolve().parent)
            or "unknown")


def checkout_sha(folder: Path) -> str | None:
    """`git rev-parse HEAD` of the checkout holding `folder`, plus "-dirty" when tracked files differ from it
    (untracked files are ignored, as by `git describe --dirty`); None outside a checkout or without git."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=5,
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})  # read only: never lock the index

    try:
        head = git("rev-parse", "--verify", "HEAD")
        if head.returncode != 0 or not head.stdout.strip():
            return None
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = status.returncode != 0 or bool(status.stdout.strip())
    return head.stdout.strip() + ("-dirty" if dirty else "")


def log_metrics_batch(run_id: str, metrics: dict[str, float], step: int) -> None:
    """One round trip for all of an epoch's metrics (per-metric calls cost ~1 s each on SQLite)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    client().log_batch(run_id, metrics=items)


def log_files(run_id: str, files: dict[str, Any], artifact_path: str | None = None) -> None:
    c = client()
    for f in files.values():
        p = Path(str(f))
        if p.is_file():
            with_retries(lambda p=p: c.log_artifact(run_id, str(p), artifact_path), f"artifact {p.name}")


def log_model(run_id: str, model, name: str, example_input=None) -> str | None:
    """The trained model as an MLflow 3 LoggedModel linked to the run; returns its models:/ URI.

    Pickle serialization: torch.export (MLflow's default "pt2") cannot export every variant and needs a fixed
    input; the signature still records the input shape.
    """
    import mlflow
    import mlflow.pytorch

    os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
    mlflow.set_tracking_uri(tracking_uri())

    def _log():
        kwargs = {}
        if example_input is not None:
            import numpy as np
            from mlflow.models import infer_signature

            with __import__("torch").no_grad():
                out = model(example_input)
            kwargs["signature"] = infer_signature(np.asarray(example_input), np.asarray(out))
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(model, name=name, serialization_format="pickle",
                                            pip_requirements=[], **kwargs)
        return info.model_uri

    return with_retries(_log, f"model {name}")
