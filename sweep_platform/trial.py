"""One trial of a sweep: its context, its config, its end state, and the Tune function that trains it.

Each trial is the Tune function `run_trial`. With one worker (every shipped sweep file) it runs the shared training
loop in its own process (`trial_session`); with several it runs one Ray Train `TorchTrainer` (the driver-function
pattern of reference/platform.md §1.2; a Trainer is never handed to a Tuner). Either way the trial's checkpoints are
under a folder named from the Tune trial id (storage.run_dir), so a trial that Tune retries or that `binsweep resume`
restarts goes on from its last checkpoint. Every result carries `params_m`, which Optuna needs in every result when it
is an objective, and the checkpoint's path.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from ray.tune.integration.ray_train import TuneReportCallback

from sweep_platform import configfile, names, storage, tracking
from sweep_platform.sweep_file import parse_sweep
from sweep_platform.sweep_spec import SweepSpec, trial_config
from trainables.registry import TrainableSpec, get_trainable


KEEP_CHECKPOINTS = 2  # the best by the sweep's first objective and the newest are always among them


class TrialFailed(RuntimeError):
    """A trial's Train run ended in an error; the message is the worker's own (e.g. a NaN loss at epoch 1, step 2)."""


@dataclass(frozen=True)
class SweepContext:
    """What every trial needs and `resume` must rebuild: the sweep's name, its validated file, its MLflow runs."""

    name: str
    spec: SweepSpec
    sweep_file: str  # the sweep file's text, as given
    max_failures: int = 0
    parent_run_id: str | None = None
    experiment_id: str | None = None

    def save(self) -> None:
        data = {"name": self.name, "source": self.spec.source, "sweep_file": self.sweep_file,
                "max_failures": self.max_failures, "parent_run_id": self.parent_run_id,
                "experiment_id": self.experiment_id}
        storage.write_text(storage.sweep_dir(self.name), storage.CONTEXT_FILE, json.dumps(data, indent=2))

    @classmethod
    def load(cls, name: str) -> SweepContext:
        import yaml

        data = json.loads(storage.read_text(storage.sweep_dir(name), storage.CONTEXT_FILE))
        raw = yaml.safe_load(data["sweep_file"]) or {}
        raw.setdefault("name", Path(data["source"]).stem)
        spec = parse_sweep(raw, data["source"])  # the same file gives the same spec (the space cannot change)
        return cls(name=data["name"], spec=spec, sweep_file=data["sweep_file"], max_failures=data["max_failures"],
                   parent_run_id=data["parent_run_id"], experiment_id=data["experiment_id"])


def trial_model_config(spec: SweepSpec, params: dict[str, Any]) -> BaseModel:
    """A trial's validated trainable config (cross-field rules are checked here, per trial)."""
    trainable = get_trainable(spec.trainable)
    where = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "no searched params"
    return configfile.validate(trainable.config_type, trial_config(spec, params), f"{spec.source} (trial with {where})")


def trial_epochs(spec: SweepSpec, params: dict[str, Any]) -> int:
    """Epochs a trial runs unless the scheduler stops it: its train.epochs, capped by ASHA's max_epochs."""
    cap = spec.scheduler.max_epochs if spec.scheduler.type == "asha" else None
    try:
        epochs = trial_model_config(spec, params).train.epochs
    except configfile.ConfigError:  # an invalid combination, which fails before training
        return cap or 0
    return min(epochs, cap) if cap else epochs


def end_state(spec: SweepSpec, params: dict[str, Any], last_epoch: int) -> str:
    """A trial that ended without error before its last epoch was stopped by the scheduler."""
    return names.COMPLETED if last_epoch >= trial_epochs(spec, params) else names.STOPPED


def count_params_m(trainable: TrainableSpec, config: BaseModel) -> float:
    """Model size in millions of trainable parameters, counted on the meta device (no memory, no time)."""
    import torch

    try:
        with torch.device("meta"):
            model = trainable.build_model(config)
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta is built for real
        model = trainable.build_model(config)
    return sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6  # shared tensors counted once


def trial_error(trial) -> str:
    """A failed trial's error as one line: the worker's exception (TrialFailed), else the last line Tune kept.

    Read from the trial's local staging copy first: at on_trial_error time Tune has not synced it to storage yet.
    """
    import cloudpickle

    try:
        with open(trial.pickled_error_file, "rb") as f:
            err = cloudpickle.load(f)
    except Exception:  # noqa: BLE001 - no file, or a pickle this process cannot load
        err = None
    if err is None:
        try:
            err = trial.get_pickled_error()
        except Exception:  # noqa: BLE001
            err = None
    if err is not None:
        cause = getattr(err, "cause", None) or err
        text = str(cause) if isinstance(cause, TrialFailed) else f"{type(cause).__name__}: {cause}"
        return tracking.redact(" ".join(text.split()))
    text = ""
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else str(trial.get_error() or "")
    except Exception:  # noqa: BLE001
        pass
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return tracking.redact(lines[-1] if lines else "unknown error (see the trial's error.txt)")


class _ReportToTune(TuneReportCallback):
    """TuneReportCallback (rank 0's metrics and `checkpoint_path` become the trial's Tune result) plus constants of
    the trial, such as params_m, in every result: a multi-objective Optuna study reads its objectives there."""

    def __init__(self, extra: dict[str, float]):
        super().__init__()
        self._extra = dict(extra)

    def after_report(self, run_context, metrics, checkpoint):
        super().after_report(run_context, [{**metrics[0], **self._extra}, *metrics[1:]], checkpoint)


def run_trial(config: dict[str, Any], sweep: SweepContext) -> None:
    """The Tune function of every trial.

    One worker: the shared loop runs right here, on the trial's own resources (`trial_session`), and the trial scores
    its best checkpoint before it reports its last epoch. Several workers: one Ray Train run (a TorchTrainer with its
    worker group, DDP), evaluated afterwards by a task that the sweep driver's callback starts.
    `config` holds the trial's params under their dotted keys (Optuna's define-by-run names).
    """
    import ray.tune

    from sweep_platform.training import resolve_data_root

    spec = sweep.spec
    trainable = get_trainable(spec.trainable)
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = resolve_data_root(trainable, trial_model_config(spec, config))
    extra = {"params_m": count_params_m(trainable, cfg)}
    fault = os.environ.get("BINSWEEP_FAULT")  # chaos drills and fault tests: see trainables.loop.Fault
    if spec.resources.workers == 1:
        _train_here(sweep, trainable, cfg, config, trial_id, extra, fault)
    else:
        _train_on_workers(sweep, trainable, cfg, trial_id, extra, fault)


def _train_here(sweep: SweepContext, trainable: TrainableSpec, cfg: BaseModel, params: dict[str, Any],
                trial_id: str, extra: dict[str, float], fault: str | None) -> None:
    from sweep_platform.system_metrics import TrialSystemMetrics
    from sweep_platform.trial_eval import evaluate_trial
    from sweep_platform.trial_session import TrialSession
    from trainables.loop import train_loop

    spec = sweep.spec
    session = TrialSession(sweep.name, trial_id, metric=spec.metric, mode=spec.mode, keep=KEEP_CHECKPOINTS,
                           final_epoch=trial_epochs(spec, params), extra=extra)

    def evaluate() -> None:
        evaluate_trial(sweep.name, spec.trainable, spec.metric, spec.mode, sweep.parent_run_id, sweep.experiment_id,
                       trial_id, device=str(session.device))

    session.before_final_report = evaluate
    with TrialSystemMetrics(sweep.parent_run_id, sweep.experiment_id, trial_id):
        train_loop({"trainable": trainable.name, "config": cfg.model_dump(mode="json"), "fault": fault}, session)
    if session.before_final_report is not None:  # restarted after its last epoch: nothing left to report
        evaluate()


def _train_on_workers(sweep: SweepContext, trainable: TrainableSpec, cfg: BaseModel, trial_id: str,
                      extra: dict[str, float], fault: str | None) -> None:
    from sweep_platform.training import Resources, make_trainer, root_cause

    r = sweep.spec.resources
    trainer = make_trainer(
        trainable, cfg, name=storage.train_run_name(sweep.name, trial_id),
        resources=Resources(workers=r.workers, gpus_per_worker=r.gpus_per_worker, cpus_per_worker=r.cpus_per_worker),
        max_failures=sweep.max_failures, keep_checkpoints=KEEP_CHECKPOINTS, fault=fault,
        callbacks=[_ReportToTune(extra)])
    try:
        trainer.fit()
    except Exception as exc:  # noqa: BLE001 - the worker's own error is what the user needs
        cause = root_cause(exc)
        raise TrialFailed(f"{type(cause).__name__}: {cause}") from None
