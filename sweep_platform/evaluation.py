"""`binsweep evaluate`: score any trained model on any dataset's split and record it as an MLflow evaluation run.

The model comes from wherever `model_store.load_model` finds models (models:/NAME@ALIAS, models:/NAME/VERSION,
models:/m-ID, runs:/RUN_ID/PATH, a checkpoint folder) with the config it was trained with; `data` replaces that
config's `data.root`, so the model's own trainable evaluation (`TrainableSpec.evaluate`) runs on the other dataset
and writes its numbers, tables and plots. A trainable refuses a dataset its model cannot read (a localizer: another
sample rate or clip length), naming both.

The evaluation run (tag binsweep.role=evaluation) goes to the experiment of the model's training run (so it sits
beside the model), `binsweep-<trainable>` for a checkpoint folder, or the experiment named. It holds:
- tags: the model URI, its LoggedModel id, registered name/version when it is one, the run that trained it, the
  trainable, the dataset URI and fingerprint, the split, the model's training environments (`all` when it was
  trained on every one), the code's git sha;
- the dataset as an MLflow dataset input and the LoggedModel as a model input;
- the metrics at step 0, also logged as the LoggedModel's metrics (MLflow 3: `Metric.model_id`, with the dataset's
  name and digest), so the model's page lists every dataset it was scored on;
- the evaluation's files under `evaluation/` and its text summary as `evaluation/summary.txt`.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweep_platform import model_store, names, tracking
from sweep_platform.errors import BinsweepError

ROLE_EVALUATION = "evaluation"  # TAG_ROLE of an evaluation run
TAG_MODEL_URI = "binsweep.model_uri"
TAG_MODEL_ID = "binsweep.model_id"  # m-..., the LoggedModel evaluated
TAG_MODEL_VERSION = "binsweep.model_version"  # NAME/VERSION for a registered version
TAG_SOURCE_RUN = "binsweep.source_run_id"  # the run that trained the model
TAG_DATASET_URI = "binsweep.dataset_uri"
TAG_SPLIT = "binsweep.split"
TAG_TRAIN_ENVIRONMENTS = "binsweep.train_environments"  # comma-separated, or ALL_ENVIRONMENTS
ALL_ENVIRONMENTS = "all"
ARTIFACT_DIR = "evaluation"


class EvaluationError(BinsweepError, ValueError):
    """The model cannot be evaluated on that dataset or split: the trainable's reason, with the model named."""


@dataclass(frozen=True)
class ModelIdentity:
    """What an evaluation run records about the model: where it came from, as far as the source says."""

    uri: str
    model_id: str | None = None  # m-..., the LoggedModel
    version: str | None = None  # NAME/VERSION of a registered version
    source_run: Any = None  # the MLflow run that trained it (None: a checkpoint folder)


@dataclass
class EvaluationRun:
    """One `binsweep evaluate`: the metrics, the summary, where they were logged."""

    identity: ModelIdentity
    trainable: str
    split: str
    data_root: str
    fingerprint: str | None
    train_environments: str
    metrics: dict[str, float]
    summary: str
    files: list[str] = field(default_factory=list)  # file names logged under evaluation/
    run_id: str | None = None
    experiment_id: str | None = None


def identify(uri: str) -> ModelIdentity:
    """The LoggedModel id, registered version and training run behind a model URI; only the URI for a folder."""
    if Path(uri).is_dir() or not uri.startswith(model_store.URI_SCHEMES):
        return ModelIdentity(uri)
    try:
        source = model_store.model_source(uri)
        run = tracking.client().get_run(source.run_id) if source.run_id else None
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types for a missing model, alias or run
        raise model_store.ModelLoadError(uri, model_store.describe_error(exc)) from exc
    model_id, version = source.model_id, source.version
    if model_id is None and run is not None:  # runs:/...: the newest LoggedModel of that run
        found = model_store.logged_model_uri(run)
        model_id = found.removeprefix("models:/") if found else None
    return ModelIdentity(uri, model_id, version, run)


def with_data_root(config, data: str | None):
    """The config with `data.root` replaced (validated again by the config's own type); as it is when `data` is
    None. A local folder is made absolute, so it means the folder the user named from where they are."""
    from trainables import datastore

    if data is None:
        return config
    root = data if datastore.is_uri(data) else str(Path(data).expanduser().resolve())
    dumped = config.model_dump(mode="json")
    if not isinstance(dumped.get("data"), dict) or "root" not in dumped["data"]:
        raise EvaluationError(f"the model's config ({type(config).__name__}) has no data.root, so --data cannot "
                              "point it at another dataset")
    dumped["data"] = {**dumped["data"], "root": root}
    return type(config).model_validate(dumped)


def train_environments(config) -> str:
    """The environments the model was trained on, as recorded: comma-separated, or `all` (no restriction)."""
    envs = getattr(getattr(config, "data", None), "train_environments", None)
    if not envs:
        return ALL_ENVIRONMENTS
    return ",".join(sorted([envs] if isinstance(envs, str) else map(str, envs)))


def evaluate_model(model_uri: str, data: str | None = None, split: str = "test", *, device: str = "cpu",
                   experiment: str | None = None, log: bool = True) -> EvaluationRun:
    """Evaluate the model at `model_uri` on `split` of `data` (default: the dataset it was trained on) and, with
    `log`, record an evaluation run (see the module docstring)."""
    from trainables import datastore

    identity = identify(model_uri)
    found = model_store.origin(model_uri)
    model, config = model_store.load_model(model_uri, device=device, known=found)
    config = with_data_root(config, data)
    root = datastore.normalize(config.data.root)
    fingerprint = model_store.manifest_fingerprint(root)
    if fingerprint is None:
        raise EvaluationError(f"no dataset at {root} (no readable manifest.json there)",
                              hint="build one with `binsweep data ...`, or name another folder or URI with --data")
    spec = found.spec
    with tempfile.TemporaryDirectory(prefix="binsweep-evaluate-") as out:
        try:
            result = spec.evaluate(model, config, split, out_dir=Path(out), device=device)
        except (ValueError, FileNotFoundError) as exc:  # a dataset the model cannot read, an unknown split
            raise EvaluationError(f"cannot evaluate {model_uri} on the {split!r} split of {root}: {exc}") from exc
        summary_file = Path(out) / "summary.txt"
        summary_file.write_text(result.summary)
        files = {**result.files, "summary": summary_file}
        ev = EvaluationRun(identity, spec.name, split, str(root), fingerprint, train_environments(config),
                           dict(result.metrics), result.summary, sorted(Path(str(f)).name for f in files.values()))
        if log:
            _log(ev, files, experiment)
    return ev


def _experiment_id(ev: EvaluationRun, experiment: str | None) -> str:
    if experiment is None and ev.identity.source_run is not None:
        return ev.identity.source_run.info.experiment_id
    return tracking.ensure_experiment(tracking.experiment_name(ev.trainable, experiment))


def _log(ev: EvaluationRun, files: dict[str, Any], experiment: str | None) -> None:
    """The evaluation run: tags, inputs, metrics (the run's and the LoggedModel's), files."""
    from mlflow.entities import LoggedModelInput, Metric

    c = tracking.client()
    ev.experiment_id = _experiment_id(ev, experiment)
    ident = ev.identity
    source = ident.source_run
    tags = {
        names.TAG_ROLE: ROLE_EVALUATION, names.TAG_TRAINABLE: ev.trainable, names.TAG_GIT: tracking.git_sha(),
        names.TAG_DATASET: ev.fingerprint or "unknown", TAG_DATASET_URI: tracking.redact(ev.data_root),
        TAG_MODEL_URI: ident.uri, TAG_SPLIT: ev.split, TAG_TRAIN_ENVIRONMENTS: ev.train_environments,
        **({TAG_MODEL_ID: ident.model_id} if ident.model_id else {}),
        **({TAG_MODEL_VERSION: ident.version} if ident.version else {}),
        **({TAG_SOURCE_RUN: source.info.run_id} if source is not None else {}),
    }
    dataset_name = ev.data_root.rstrip("/").rsplit("/", 1)[-1]
    run = c.create_run(ev.experiment_id, run_name=f"evaluate-{dataset_name}-{ev.split}-{time.strftime('%m%d-%H%M%S')}",
                       tags=tags)
    ev.run_id = run.info.run_id
    try:
        tracking.log_dataset(ev.run_id, ev.data_root, ev.fingerprint, context=ev.split)
        if ident.model_id:
            tracking.with_retries(lambda: c.log_inputs(ev.run_id, models=[LoggedModelInput(ident.model_id)]),
                                  "model input")
        now = int(time.time() * 1000)
        digest = (ev.fingerprint or "unknown")[:32]
        items = [Metric(k, float(v), now, 0, model_id=ident.model_id, dataset_name=dataset_name,
                        dataset_digest=digest) for k, v in ev.metrics.items() if tracking.is_number(v)]
        c.log_batch(ev.run_id, metrics=items)
        tracking.log_files(ev.run_id, files, ARTIFACT_DIR)
    except BaseException:
        c.set_terminated(ev.run_id, status="FAILED")
        raise
    c.set_terminated(ev.run_id)


def run_link(ev: EvaluationRun) -> str:
    """Where to see the evaluation run: a link into the MLflow UI (after `mlflow ui` for the embedded store)."""
    uri = tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        return tracking.ui_link(tracking.redact(uri), ev.experiment_id, ev.run_id)
    return (f"mlflow ui --backend-store-uri {tracking.redact(uri)}, then "
            f"{tracking.ui_link('http://127.0.0.1:5000', ev.experiment_id, ev.run_id)}")
