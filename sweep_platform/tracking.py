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


# What MLflow 3 calls an experiment for training models (the GenAI kind gets traces and token usage). The 3.17 UI
# reads the tag only while its GenAI/Model-training switch is off; with the switch (the default), the view comes
# from the URL's workflowType, then the browser's last choice, else GenAI: binsweep's links carry it (`ui_link`).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
UI_VIEW = "workflowType=machine_learning"


def ui_link(base: str, experiment_id: str | None = None, run_id: str | None = None) -> str:
    """A link into the MLflow UI that opens its model-training view: a run's page, the experiment's runs table, or
    the list of experiments."""
    page = f"#/experiments/{experiment_id}/runs" if experiment_id else "#/experiments"
    if experiment_id and run_id:
        page += f"/{run_id}"
    return f"{base.rstrip('/')}/{page}?{UI_VIEW}"


def ensure_experiment(name: str) -> str:
    """The experiment's id, created on first use (artifacts under runs/mlartifacts with the embedded store) and
    tagged as a model-training experiment (also an existing one from an older binsweep)."""
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get("mlflow.experimentKind") is None:
            with_retries(lambda: c.set_experiment_tag(exp.experiment_id, *next(iter(EXPERIMENT_KIND.items()))),
                         "experiment kind")
        return exp.experiment_id
    # the embedded store keeps artifacts beside it; a server decides for itself (proxied artifacts)
    location = f"{artifact_root()}/{name}" if tracking_uri() == embedded_uri() else None
    try:
        return c.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
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


TAG_INIT_PREFIX = "binsweep.init."  # + a part of the model ("image", "depth"): how it started (TrainableSpec)


def initialisation(spec, config) -> dict[str, str]:
    """{part: how it starts} from the trainable's `initialisation` hook (e.g. "image": "random init (...)"), or {}."""
    hook = getattr(spec, "initialisation", None)
    return dict(hook(config)) if hook is not None else {}


def init_tags(spec, config) -> dict[str, str]:
    """The run tags saying how each part of the model starts: binsweep.init.image = "random init (...)"."""
    return {f"{TAG_INIT_PREFIX}{part}": redact(how)[:5000] for part, how in initialisation(spec, config).items()}


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


def log_metrics_batch(run_id: str, metrics: dict[str, float], step: int, model_id: str | None = None) -> None:
    """One round trip for all of an epoch's metrics (per-metric calls cost ~1 s each on SQLite); with `model_id`
    (m-..., a LoggedModel of the run) they are the model's metrics too, shown on its page."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, int(step), model_id=model_id) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    client().log_batch(run_id, metrics=items)


def log_files(run_id: str, files: dict[str, Any], artifact_path: str | None = None) -> None:
    c = client()
    for f in files.values():
        p = Path(str(f))
        if p.is_file():
            with_retries(lambda p=p: c.log_artifact(run_id, str(p), artifact_path), f"artifact {p.name}")


def log_model(run_id: str, spec, model, config, name: str | None = None) -> str | None:
    """The trained model (a module on the CPU, and the config it was built from) as an MLflow 3 LoggedModel linked
    to the run, servable with `mlflow models serve`; returns its models:/ URI, or None when it could not be logged.

    A pyfunc of weights, config and the trainable's code, whose requests are what the trainable's `Serving` says
    (sweep_platform.model_package: what is in the directory and why).
    """
    from sweep_platform import model_package

    client()  # sets the tracking URI for MLflow's fluent API
    return model_package.log(run_id, spec, model, config, name or spec.name, attempt=with_retries)


def log_dataset(run_id: str, root, fingerprint: str | None, context: str = "training") -> None:
    """The run's dataset as an MLflow dataset input (the UI's Dataset column): its folder's name, the content
    fingerprint of its manifest (MLflow keeps a digest of at most 36 characters: the first 32 hex digits; the whole
    one is in the profile and the binsweep.dataset tag) and where it lives (a URI, or a path on the node that ran)."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    if root is None:
        return
    location = redact(str(root))
    scheme = location.split("://", 1)[0] if "://" in location else "local"
    dataset = Dataset(name=location.rstrip("/").rsplit("/", 1)[-1] or location,
                      digest=(fingerprint or "unknown")[:32], source_type=scheme,
                      source=json.dumps({"uri": location}),
                      profile=json.dumps({"fingerprint": fingerprint or "unknown"}))
    tags = [InputTag("mlflow.data.context", context)]
    with_retries(lambda: client().log_inputs(run_id, datasets=[DatasetInput(dataset, tags)]), "dataset input")
