"""One training run of a registered trainable on Ray Train, logged to MLflow as one run.

`binsweep train` calls `run_training` directly; a sweep trial calls `make_trainer` inside its Tune function (the
driver-function pattern: a Trainer is never handed to a Tuner). After training, the best checkpoint is scored on the
test split on the driver and the evaluation, its plots and the model go to the same MLflow run.
"""

from __future__ import annotations

import math
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sweep_platform import names, paths, ray_runtime, tracking
from sweep_platform.errors import RUN_ERROR, BinsweepError
from sweep_platform.model_store import load_checkpoint
from trainables import datastore
from trainables.registry import TrainableSpec, get_trainable


class DatasetNotFoundError(BinsweepError, FileNotFoundError):
    """A config's data.root holds no dataset that this node can see."""


class TrainingFailed(BinsweepError, RuntimeError):
    """A run that ended in an error after its retries; the message is the root cause from the worker."""

    exit_code = RUN_ERROR


class TrainingRejected(BinsweepError, ValueError):
    """The trainable refused its config or data on the worker (e.g. a dataset at another sample rate)."""


def _callback_base():
    from ray.train import UserCallback

    return UserCallback


class MlflowEpochLogger(_callback_base()):
    """Runs on the Ray Train controller: every epoch's all-reduced rank-0 metrics go to one MLflow run, step = epoch.

    A worker restored after a failure reports the epochs after its checkpoint, so the history has every epoch once.
    """

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri, self.run_id = tracking_uri, run_id

    def after_report(self, run_context, metrics, checkpoint):
        import mlflow
        from mlflow.entities import Metric

        m = metrics[0]
        step = int(m.get("epoch", 0))
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in m.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        client = mlflow.MlflowClient(self.tracking_uri)
        tracking.with_retries(lambda: client.log_batch(self.run_id, metrics=items), f"epoch {step} metrics")


def root_cause(exc: BaseException) -> BaseException:
    """The worker's own exception out of Ray's wrappers (WorkerGroupError -> RayTaskError -> FloatingPointError)."""
    failures = getattr(exc, "worker_failures", None)
    if failures:
        exc = failures[min(failures)]
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    return exc


def resolve_data_root(spec: TrainableSpec, config: BaseModel) -> BaseModel:
    """data.root as this node sees it, checked for its manifest: a URI (s3://bucket/prefix) stays a URI; a relative
    folder becomes absolute under THIS node's BINSWEEP_HOME. Called on the driver and again in every trial, on the
    node that runs it."""
    data = getattr(config, "data", None)
    if data is None or not getattr(data, "root", None):
        return config
    root = datastore.normalize(data.root)
    try:
        found = datastore.is_file(datastore.join(root, datastore.MANIFEST))
    except OSError as exc:  # a URI this node cannot reach: no credentials, unknown bucket, no network
        raise DatasetNotFoundError(f"data.root {data.root}: cannot read {root} from node {socket.gethostname()}: "
                                   f"{exc}") from None
    if not found:
        raise DatasetNotFoundError(_not_found_here(spec, data.root, root))
    return config.model_copy(update={"data": data.model_copy(update={"root": str(root)})})


def _not_found_here(spec: TrainableSpec, given: str, root: Path | str) -> str:
    """What to do about a dataset this node cannot see, on one machine and on a cluster."""
    builder = spec.dataset_builder
    command = builder.command if builder else "your dataset builder"
    if datastore.is_uri(root):
        return (f"data.root {given}: no {spec.name} dataset at {root} (manifest.json missing: never published there, "
                f"or its upload was interrupted); build and publish it with `{command} --out {root}`")
    return (f"data.root {given}: no {spec.name} dataset at {root} (manifest.json missing) on node "
            f"{socket.gethostname()} (BINSWEEP_HOME={paths.home()}). On a multi-node cluster each node has its own "
            f"disk, so a dataset built on one node is not seen by trials on the others: build it into object "
            f"storage with `{command} --out s3://bucket/prefix` and set the sweep file's `dataset:` (or data.root) "
            f"to that URI. On a single machine: `{command} --out {given}`.")


@dataclass(frozen=True)
class Resources:
    workers: int = 1
    gpus_per_worker: float = 0
    cpus_per_worker: float = 1


def make_trainer(spec: TrainableSpec, config: BaseModel, *, name: str, resources: Resources, max_failures: int = 0,
                 keep_checkpoints: int = 2, callbacks: list | None = None, fault: str | None = None,
                 progress_channel=None):
    import ray.train
    from ray.train.torch import TorchTrainer

    from trainables.loop import train_worker

    per_worker = {"CPU": resources.cpus_per_worker}
    if resources.gpus_per_worker:
        per_worker["GPU"] = resources.gpus_per_worker
    return TorchTrainer(
        train_worker,
        train_loop_config={"trainable": spec.name, "config": config.model_dump(mode="json"), "fault": fault,
                           **({"progress": progress_channel} if progress_channel is not None else {})},
        scaling_config=ray.train.ScalingConfig(num_workers=resources.workers, use_gpu=resources.gpus_per_worker > 0,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=name,  # stable: a rerun with the same name resumes from its last checkpoint
            storage_path=ray_runtime.storage_path(),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints,
                                                         checkpoint_score_attribute=spec.primary_metric,
                                                         checkpoint_score_order=spec.mode),
            callbacks=callbacks or []),
    )


@dataclass
class Evaluated:
    metrics: dict[str, float]
    summary: str
    model_uri: str | None
    per_sample_error: Any = None
    files: dict[str, Any] = field(default_factory=dict)


def evaluate_and_log(spec: TrainableSpec, checkpoint_dir: str | Path, run_id: str | None, split: str = "test",
                     log_model: bool = True, device: str | None = None) -> Evaluated:
    """Score a checkpoint on `split` on `device` (default: this machine's GPU, else CPU); log metrics, plots and the
    model to `run_id`."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, config, _ = load_checkpoint(spec, checkpoint_dir, device)
    with tempfile.TemporaryDirectory(prefix="binsweep-eval-") as out:
        result = spec.evaluate(model, config, split, out_dir=Path(out), device=device)
        model_uri = None
        if run_id is not None:
            summary_file = Path(out) / "summary.txt"
            summary_file.write_text(result.summary)
            if log_model:  # first, so that the test metrics are logged once, as the run's and the model's
                model_uri = tracking.log_model(run_id, spec, model.cpu(), config)
            model_id = model_uri.removeprefix("models:/") if model_uri else None
            tracking.with_retries(lambda: tracking.log_metrics_batch(run_id, result.metrics, step=0,
                                                                     model_id=model_id), "test metrics")
            tracking.log_files(run_id, {**result.files, "summary": summary_file}, "evaluation")
        return Evaluated(result.metrics, result.summary, model_uri, result.per_sample_error)


@dataclass
class Outcome:
    run_id: str
    history: list[dict[str, float]]
    best_checkpoint: str
    best_metrics: dict[str, Any]
    evaluation: Evaluated | None
    wall_s: float


def _find_or_create_run(spec: TrainableSpec, config: BaseModel, name: str, experiment: str | None,
                        resources: Resources) -> str:
    """Reuse the run of an interrupted `binsweep train --name NAME`, so a resumed run stays one MLflow run."""
    c = tracking.client()
    exp_id = tracking.ensure_experiment(tracking.experiment_name(spec.name, experiment))
    found = c.search_runs([exp_id], filter_string=f"tags.`{names.TAG_TRAIN_NAME}` = '{name}'", max_results=1)
    if found and found[0].info.status != "FINISHED":
        c.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    run = c.create_run(exp_id, run_name=name, tags={
        names.TAG_TRAIN_NAME: name, names.TAG_TRAINABLE: spec.name, names.TAG_GIT: tracking.git_sha(),
        names.TAG_DATASET: dataset_fingerprint(config), **tracking.init_tags(spec, config)})
    params = tracking.params_of(config.model_dump(mode="json"))
    params.update({"resources.workers": resources.workers, "resources.gpus_per_worker": resources.gpus_per_worker,
                   "resources.cpus_per_worker": resources.cpus_per_worker})
    from mlflow.entities import Param

    c.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


def dataset_fingerprint(config: BaseModel) -> str:
    """The fingerprint in the manifest of the config's dataset (a folder or a URI), or "unknown"."""
    import json

    data = getattr(config, "data", None)
    try:
        return json.loads(datastore.read_text(datastore.join(datastore.normalize(data.root), datastore.MANIFEST))
                          )["fingerprint"]
    except (AttributeError, TypeError, OSError, KeyError, ValueError):
        return "unknown"


def metric_history(run_id: str) -> list[dict[str, float]]:
    """Per-epoch metrics as logged (read back from MLflow), one dict per epoch in order."""
    c = tracking.client()
    run = c.get_run(run_id)
    by_step: dict[int, dict[str, float]] = {}
    for key in run.data.metrics:
        for m in c.get_metric_history(run_id, key):
            if m.step > 0:
                by_step.setdefault(m.step, {"epoch": m.step})[key] = m.value
    return [by_step[s] for s in sorted(by_step)]


def run_training(trainable: str, config: BaseModel, *, name: str, resources: Resources = Resources(),
                 max_failures: int = 0, keep_checkpoints: int = 2, experiment: str | None = None,
                 evaluate: bool = True, fault: str | None = None, progress=None) -> Outcome:
    """`progress`: a `sweep_platform.progress.TrainProgress`, shown while the trainer runs (see that module)."""
    spec = get_trainable(trainable)
    config = resolve_data_root(spec, config)
    ray_runtime.ensure_ray()
    run_id = _find_or_create_run(spec, config, name, experiment, resources)
    c = tracking.client()
    callbacks = [MlflowEpochLogger(tracking.tracking_uri(), run_id)]
    if progress is not None:
        progress.start()
        callbacks.append(progress.callback())  # after the MLflow logger: a printed epoch is already in MLflow
    trainer = make_trainer(spec, config, name=name, resources=resources, max_failures=max_failures,
                           keep_checkpoints=keep_checkpoints, fault=fault, callbacks=callbacks,
                           progress_channel=progress.channel if progress is not None else None)
    t0 = time.perf_counter()
    try:
        try:
            result = trainer.fit()
        finally:
            if progress is not None:
                progress.stop()
    except Exception as exc:  # noqa: BLE001 - recorded, then re-raised as the root cause
        cause = root_cause(exc)
        tracking.with_retries(lambda: c.set_tag(run_id, names.TAG_ERROR, tracking.redact(str(cause))[:5000]),
                              "error tag")
        tracking.with_retries(lambda: c.set_terminated(run_id, status="FAILED"), "run status")
        if isinstance(cause, FloatingPointError):
            raise cause from None
        if isinstance(cause, ValueError):  # the worker's frames are gone: the message is what the user needs
            raise TrainingRejected(str(cause)) from None
        raise TrainingFailed(f"training run {name} failed: {cause}") from exc
    wall = time.perf_counter() - t0
    best = result.get_best_checkpoint(spec.primary_metric, spec.mode) or result.checkpoint
    best_metrics = next((m for ck, m in (result.best_checkpoints or []) if ck.path == best.path), result.metrics)
    gpu_hours = resources.workers * resources.gpus_per_worker * wall / 3600
    tracking.with_retries(lambda: tracking.log_metrics_batch(run_id, {"gpu_hours": gpu_hours,
                                                                       "wall_s": wall}, step=0), "gpu hours")
    evaluation = None
    if evaluate:
        with best.as_directory() as d:
            evaluation = evaluate_and_log(spec, d, run_id)
    tracking.with_retries(lambda: c.set_tag(run_id, names.TAG_BEST_CHECKPOINT, best.path), "checkpoint tag")
    tracking.with_retries(lambda: c.set_terminated(run_id, status="FINISHED"), "run status")
    return Outcome(run_id, metric_history(run_id), best.path, dict(best_metrics or {}), evaluation, wall)
