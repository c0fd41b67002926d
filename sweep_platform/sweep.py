"""Sweeps on Ray Tune: one sweep file in, one Tune experiment out; Optuna proposes, ASHA stops, MLflow records.

Each trial is the Tune function `run_trial`, which runs one Ray Train `TorchTrainer` (the driver-function pattern of
reference/platform.md §1.2; a Trainer is never handed to a Tuner). The Train run is named from the Tune trial id, so
a trial that Tune restarts after `binsweep resume` finds its Train run under the same (storage_path, name) and goes
on from the run's last checkpoint. `TuneReportCallback` forwards rank 0's per-epoch metrics to Tune (with the
checkpoint's path); `_ReportToTune` adds `params_m`, which Optuna needs in every result when it is an objective.

    start_sweep(path, name)     validate, build the dataset when missing, parent MLflow run, Tuner.fit
    resume_sweep(name)          Tuner.restore(..., resume_unfinished=True, resume_errored=False).fit

Layout, all under ray_runtime.storage_path() (runs/ray by default):
    <sweep>/                    the Tune experiment (experiment state, trials, searcher and callback state)
    <sweep>/binsweep-sweep.json what `resume` needs: the sweep file's text, the MLflow parent run
    <sweep>-trial-<trial id>/   one Train run per trial (checkpoints)

Not restored by Tune (platform.md §1.4): the ASHA scheduler. After `resume` its rungs start empty, so the first
trials to reach each rung again are not compared with those that reached it before the interruption.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import ray.tune
from pydantic import BaseModel
from ray.tune import Callback
from ray.tune.integration.ray_train import TuneReportCallback

from sweep_platform import configfile, paths, ray_runtime, tracking
from sweep_platform.space import SweepSpec, load_sweep, parse_sweep, trial_config
from sweep_platform.training import Resources, _dataset_fingerprint, make_trainer, resolve_data_root, root_cause
from trainables.registry import TrainableSpec, get_trainable

CONTEXT_FILE = "binsweep-sweep.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Trial states (the MLflow tag binsweep.state of a child run); "running" and "interrupted" are not final.
COMPLETED, STOPPED, FAILED, RUNNING, INTERRUPTED = "completed", "stopped", "failed", "running", "interrupted"
FINAL_STATES = (COMPLETED, STOPPED, FAILED)


class SweepExistsError(ValueError):
    """A sweep of that name has already started (continue it with `binsweep resume NAME`)."""


class SweepNotFoundError(ValueError):
    """No restorable sweep of that name."""


class TrialFailed(RuntimeError):
    """A trial's Train run ended in an error; the message is the worker's own (e.g. a NaN loss at epoch 1, step 2)."""


# ------------------------------------------------------------------------------------------------ where things are


def optuna_storage() -> str:
    """The Optuna study storage: BINSWEEP_OPTUNA_STORAGE, else sqlite:///<home>/runs/optuna.db (design.md)."""
    return os.environ.get("BINSWEEP_OPTUNA_STORAGE") or f"sqlite:///{paths.runs_dir() / 'optuna.db'}"


def sweep_dir(name: str) -> str:
    """The sweep's Tune experiment directory (a path, or a URI with BINSWEEP_RAY_STORAGE=s3://...)."""
    return f"{ray_runtime.storage_path().rstrip('/')}/{name}"


def train_run_name(sweep_name: str, trial_id: str) -> str:
    """The Train run of one trial: stable across restores (never a timestamp), so Train resumes it."""
    return f"{sweep_name}-trial-{trial_id}"


def _fs(path: str):
    import pyarrow.fs

    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), str(Path(path).resolve())


def _exists(path: str) -> bool:
    import pyarrow.fs

    fs, p = _fs(path)
    return fs.get_file_info(p).type != pyarrow.fs.FileType.NotFound


def existing_sweeps() -> list[str]:
    """Names of the sweeps that `binsweep resume` can continue (experiment directories with Tune's tuner.pkl)."""
    import pyarrow.fs

    fs, root = _fs(ray_runtime.storage_path())
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except OSError:
        return []
    names = [i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory]
    return sorted(n for n in names if _exists(f"{sweep_dir(n)}/tuner.pkl"))


def default_name(spec: SweepSpec) -> str:
    """The file's name plus a short timestamp, e.g. bast_smoke-1122-153012."""
    return f"{spec.name}-{time.strftime('%m%d-%H%M%S')}"


# --------------------------------------------------------------------------------------------- the sweep context


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
        fs, p = _fs(sweep_dir(self.name))
        fs.create_dir(p, recursive=True)
        data = {"name": self.name, "source": self.spec.source, "sweep_file": self.sweep_file,
                "max_failures": self.max_failures, "parent_run_id": self.parent_run_id,
                "experiment_id": self.experiment_id}
        with fs.open_output_stream(f"{p}/{CONTEXT_FILE}") as f:
            f.write(json.dumps(data, indent=2).encode())

    @classmethod
    def load(cls, name: str) -> SweepContext:
        import yaml

        fs, p = _fs(sweep_dir(name))
        with fs.open_input_stream(f"{p}/{CONTEXT_FILE}") as f:
            data = json.loads(f.read().decode())
        raw = yaml.safe_load(data["sweep_file"]) or {}
        raw.setdefault("name", Path(data["source"]).stem)
        spec = parse_sweep(raw, data["source"])  # the same file gives the same spec (the space cannot change)
        return cls(name=data["name"], spec=spec, sweep_file=data["sweep_file"], max_failures=data["max_failures"],
                   parent_run_id=data["parent_run_id"], experiment_id=data["experiment_id"])


# ------------------------------------------------------------------------------------------------- per trial


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
    return COMPLETED if last_epoch >= trial_epochs(spec, params) else STOPPED


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
    """The Tune function of every trial: one Ray Train run of the trial's config.

    `config` holds the trial's params under their dotted keys (Optuna's define-by-run names).
    """
    spec = sweep.spec
    trainable = get_trainable(spec.trainable)
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = resolve_data_root(trial_model_config(spec, config))
    r = spec.resources
    trainer = make_trainer(
        trainable, cfg, name=train_run_name(sweep.name, trial_id),
        resources=Resources(workers=r.workers, gpus_per_worker=r.gpus_per_worker, cpus_per_worker=r.cpus_per_worker),
        max_failures=sweep.max_failures,
        callbacks=[_ReportToTune({"params_m": count_params_m(trainable, cfg)})])
    try:
        trainer.fit()
    except Exception as exc:  # noqa: BLE001 - the worker's own error is what the user needs
        cause = root_cause(exc)
        raise TrialFailed(f"{type(cause).__name__}: {cause}") from None


def _trial_name(trial) -> str:
    return trial.trial_id


# ---------------------------------------------------------------------------------------------- live progress


class ProgressTable(Callback):
    """The sweep's trials as a rich table, redrawn at most twice a second, with one line per trial event above it.

    On a terminal the table is live (rich.live); otherwise (CI, a pipe) only the event lines and a final table are
    printed. Rendering reads Tune's own Trial objects, so nothing needs restoring after `resume`.
    """

    def __init__(self, sweep_name: str, spec: SweepSpec):
        self.sweep_name, self.spec = sweep_name, spec
        self._runtime: dict | None = None

    def __getstate__(self):  # pickled into tuner.pkl before setup(): no console, no live display
        return {"sweep_name": self.sweep_name, "spec": self.spec, "_runtime": None}

    def setup(self, **info):
        from rich.live import Live

        from sweep_platform.errors import make_console

        console = make_console()
        live = Live(console=console, refresh_per_second=2, transient=False) if console.is_terminal else None
        if live is not None:
            live.start()
        self._runtime = {"console": console, "live": live, "last": 0.0, "trials": [], "t0": time.time(),
                         "started": set(), "ended": set(), "epochs": {}}
        _DISPLAYS.add(self)

    # rendering ------------------------------------------------------------------------------------------------

    def _searched(self) -> list[tuple[str, str]]:
        """(key, column name) of the searched params: the last part of the key when that is unambiguous."""
        keys = [k for k, p in self.spec.space.items() if p.kind in ("choice", "int", "float")]
        short = [k.rsplit(".", 1)[-1] for k in keys]
        return [(k, s if short.count(s) == 1 and s not in ("name", "type", "kind") else k)
                for k, s in zip(keys, short)]

    def _state(self, trial) -> str:
        status = trial.status
        rt = self._runtime
        if status == "TERMINATED" and rt and trial.trial_id in rt["started"] and trial.trial_id not in rt["ended"]:
            return INTERRUPTED  # Ctrl-C: Tune marks the trials it stops TERMINATED without completing them
        if status == "TERMINATED":
            return end_state(self.spec, trial.config, int((trial.last_result or {}).get("epoch", 0)))
        return {"RUNNING": RUNNING, "ERROR": FAILED, "PENDING": "pending", "PAUSED": "paused"}.get(status, status)

    def table(self, trials):
        from rich.table import Table

        metric, extra, rt = self.spec.metric, self.spec.metrics[1:], self._runtime
        t = Table(title=f"sweep {self.sweep_name}: {self.spec.trainable}, {metric} ({self.spec.mode})",
                  title_justify="left", caption_justify="left")
        for col in ("trial", "state", *[s for _, s in self._searched()], "epoch", metric, "best", *extra, "time"):
            t.add_column(col, justify="left" if col in ("trial", "state") else "right", no_wrap=True)
        colours = {COMPLETED: "green", STOPPED: "yellow", FAILED: "red", RUNNING: "cyan", INTERRUPTED: "magenta"}
        counts: dict[str, int] = {}
        for trial in trials:
            res = trial.last_result or {}
            state = self._state(trial)
            counts[state] = counts.get(state, 0) + 1
            total = rt["epochs"].setdefault(trial.trial_id, trial_epochs(self.spec, trial.config))
            epoch = f"{int(res['epoch'])}" if "epoch" in res else "-"
            t.add_row(
                trial.trial_id, f"[{colours.get(state, 'white')}]{state}[/]",
                *[_fmt(trial.config.get(k)) for k, _ in self._searched()], f"{epoch}/{total}",
                _fmt(res.get(metric)), _fmt(self._best(trial)), *[_fmt(res.get(m)) for m in extra],
                f"{res['time_total_s']:.0f}s" if "time_total_s" in res else "")
        t.caption = (f"{len(trials)}/{self.spec.trials} trials: "
                     + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                     + f"  ({time.time() - rt['t0']:.0f} s)")
        return t

    def _best(self, trial):
        """The best value of the metric over the trial's results (Tune keeps min/max per metric, across restores)."""
        return (trial.metric_analysis or {}).get(self.spec.metric, {}).get(self.spec.mode)

    def _print(self, text: str) -> None:
        if self._runtime is not None:
            self._runtime["console"].print(text, highlight=False, soft_wrap=True)

    def _params(self, trial) -> str:
        return " ".join(f"{s}={_fmt(trial.config.get(k))}" for k, s in self._searched() if k in trial.config)

    # Tune hooks ----------------------------------------------------------------------------------------------

    def on_step_end(self, iteration, trials, **info):
        rt = self._runtime
        if rt is None:
            return
        rt["trials"] = trials
        if rt["live"] is not None and time.time() - rt["last"] >= 0.5:
            rt["last"] = time.time()
            rt["live"].update(self.table(trials))

    def on_trial_start(self, iteration, trials, trial, **info):
        if self._runtime is not None:
            self._runtime["started"].add(trial.trial_id)
        self._print(f"[cyan]start[/]     {trial.trial_id}  {self._params(trial)}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self._runtime is not None:
            self._runtime["ended"].add(trial.trial_id)
        res = trial.last_result or {}
        epoch = int(res.get("epoch", 0))
        state = end_state(self.spec, trial.config, epoch)
        how = "stopped by ASHA" if state == STOPPED else "completed"
        self._print(f"[{'yellow' if state == STOPPED else 'green'}]{state:<9}[/] {trial.trial_id}  {how} at epoch "
                    f"{epoch}: {self.spec.metric} {_fmt(res.get(self.spec.metric))} (best {_fmt(self._best(trial))})")

    def on_trial_error(self, iteration, trials, trial, **info):
        if self._runtime is not None:
            self._runtime["ended"].add(trial.trial_id)
        self._print(f"[red]failed[/]    {trial.trial_id}  {trial_error(trial)}")

    def on_experiment_end(self, trials, **info):
        self.close(trials)

    def close(self, trials=None) -> None:
        """Stop the live table, leaving its last state on screen (off a terminal, the event lines said it all)."""
        rt = self._runtime
        if rt is None:
            return
        if rt["live"] is not None:
            rt["live"].update(self.table(trials if trials is not None else rt["trials"]))
            rt["live"].stop()
        self._runtime = None
        _DISPLAYS.discard(self)


_DISPLAYS: set[ProgressTable] = set()


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# ------------------------------------------------------------------------------------------------ sweep driver


def ensure_dataset(spec: SweepSpec, say=lambda text: None) -> Path | None:
    """The sweep's dataset folder, built first from `dataset_build` when it does not exist yet."""
    if spec.dataset is None:
        return None
    root = Path(spec.dataset)
    root = root if root.is_absolute() else paths.home() / root
    if (root / "manifest.json").is_file():
        return root
    if spec.dataset_build is None:
        raise FileNotFoundError(
            f"{spec.source}: dataset {spec.dataset}: no dataset at {root} (manifest.json missing); build it with "
            f"`binsweep data localization --out {spec.dataset}` or add a dataset_build section to the sweep file")
    from trainables.localization.builder import LocalizationBuildConfig, build

    cfg = configfile.validate(LocalizationBuildConfig, spec.dataset_build, spec.source, prefix="dataset_build.")
    say(f"building dataset {spec.dataset} from the sweep file's dataset_build")
    build(cfg, root)
    return root


def concurrency(spec: SweepSpec, cluster: dict[str, float]) -> int:
    """Trials at once: the file's number, or as many as the cluster holds (workers' CPUs/GPUs + 1 CPU per driver)."""
    if spec.concurrency != "auto":
        return int(spec.concurrency)
    r = spec.resources
    cpus = r.workers * r.cpus_per_worker + 1
    fits = [math.floor(cluster.get("CPU", 0) / cpus + 1e-9)]
    if r.gpus_per_worker:
        fits.append(math.floor(cluster.get("GPU", 0) / (r.workers * r.gpus_per_worker) + 1e-9))
    n = min(fits)
    if n < 1:
        need = f"{cpus:g} CPUs" + (f" and {r.workers * r.gpus_per_worker:g} GPUs" if r.gpus_per_worker else "")
        have = f"{cluster.get('CPU', 0):g} CPUs and {cluster.get('GPU', 0):g} GPUs"
        raise ValueError(f"{spec.source}: resources: one trial needs {need} ({r.workers} workers + 1 CPU for its "
                         f"driver) but the Ray cluster has {have}; lower resources or set concurrency explicitly "
                         "on an autoscaling cluster")
    return min(n, spec.trials)


def _tune_env() -> None:
    # The progress table is the only output: Ray's new output engine prints its experiment header and every trial
    # error even with verbose=0, the legacy one honours it. Trial errors are shown once, as one line; full
    # tracebacks stay in each trial's error.txt (and on screen with BINSWEEP_DEBUG=1).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if os.environ.get("BINSWEEP_DEBUG") != "1":
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)  # "Trials did not complete": the table says so
        logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)  # pickle format: chosen, see tracking.log_model
        # OptunaSearch reports intermediate values at Tune's training_iteration, which restarts at 1 in a resumed
        # trial; Optuna then ignores them (harmless: the study uses no pruner; ASHA stops on epochs)
        warnings.filterwarnings("ignore", message="The reported value is ignored because this `step",
                                category=UserWarning)
        stop = logging.getLogger("ray.tune.tune")  # except Tune's answer to Ctrl-C, in our words
        stop.setLevel(logging.WARNING)
        if not any(isinstance(f, _OnlyStopSignal) for f in stop.filters):
            stop.addFilter(_OnlyStopSignal())


class _OnlyStopSignal(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Stop signal received"):
            return False
        record.msg, record.args = ("Ctrl-C: stopping the running trials and saving the sweep so that `binsweep "
                                   "resume` can continue it (Ctrl-C again skips the saving)"), ()
        return True


def _trainable(ctx: SweepContext):
    # the same function on start and on restore (Tune checks its name); the context rides in the object store
    return ray.tune.with_resources(ray.tune.with_parameters(run_trial, sweep=ctx), {"CPU": 1})


@dataclass
class SweepOutcome:
    """How a sweep ended, read back from MLflow: the leaderboard's rows (best first, failed last)."""

    name: str
    parent_run_id: str
    state: str  # finished | failed | interrupted (the parent run's binsweep.state)
    trials: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0

    def count(self, state: str) -> int:
        return sum(1 for t in self.trials if t["state"] == state)

    @property
    def succeeded(self) -> int:
        return self.count(COMPLETED) + self.count(STOPPED)

    @property
    def best(self) -> dict[str, Any] | None:
        return next((t for t in self.trials if t["rank"] == 1), None)


def start_sweep(path: str | Path, name: str | None = None, *, max_failures: int = 0,
                progress: bool = True, say=lambda text: None) -> SweepOutcome:
    """Validate the sweep file, build its dataset when missing, then run it to the end (or until Ctrl-C)."""
    spec = load_sweep(path)  # every problem at once, before anything is created
    sweep_file = Path(path).read_text()  # the text that was validated, logged as the parent run's sweep.yaml
    name = name or default_name(spec)
    if not _NAME.match(name):
        raise ValueError(f"--name {name!r}: use letters, digits, '_', '-' and '.', starting with a letter or digit")
    from sweep_platform import mlflow_callback as mc

    if _exists(sweep_dir(name)) or mc.find_parent_run(name) is not None or _study_exists(name):
        raise SweepExistsError(f"a sweep named {name!r} already exists ({sweep_dir(name)}); continue it with "
                               f"`binsweep resume {name}`, or start a new one with another --name")
    ensure_dataset(spec, say)
    base = resolve_data_root(trial_model_config(spec, {}))  # the base config and its dataset, checked once here
    cluster = ray_runtime.ensure_ray()
    conc = concurrency(spec, cluster)
    exp_id, parent = mc.create_parent_run(name, spec, sweep_file=sweep_file, concurrency=conc,
                                          optuna_storage=optuna_storage(), fingerprint=_dataset_fingerprint(base))
    ctx = SweepContext(name=name, spec=spec, sweep_file=sweep_file, max_failures=max_failures,
                       parent_run_id=parent, experiment_id=exp_id)
    ctx.save()
    say(f"sweep [bold]{name}[/bold]: {spec.trials} trials, {conc} at once; MLflow parent run {parent} "
        f"({tracking.redact(tracking.tracking_uri())}); Tune {sweep_dir(name)}")
    _tune_env()
    tuner = ray.tune.Tuner(
        _trainable(ctx),
        tune_config=ray.tune.TuneConfig(
            metric=spec.metric, mode=spec.mode,  # the scheduler's (ASHA stops on the first objective)
            search_alg=_searcher(spec, name), scheduler=_scheduler(spec), num_samples=spec.trials,
            max_concurrent_trials=conc, trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=ray.tune.RunConfig(
            name=name, storage_path=ray_runtime.storage_path(), verbose=0,
            failure_config=ray.tune.FailureConfig(max_failures=0),  # a failed trial is recorded, never retried
            callbacks=_callbacks(ctx, progress)),
    )
    return _fit(tuner, ctx)


def resume_sweep(name: str, *, say=lambda text: None) -> SweepOutcome:
    """Continue a sweep whose driver died or was interrupted: finished trials stay, unfinished ones go on."""
    path = sweep_dir(name)
    if not ray.tune.Tuner.can_restore(path) or not _exists(f"{path}/{CONTEXT_FILE}"):
        known = existing_sweeps()
        raise SweepNotFoundError(f"no sweep named {name!r} to resume under {ray_runtime.storage_path()} "
                                 f"(existing sweeps: {', '.join(known) if known else 'none'})")
    ctx = SweepContext.load(name)
    ensure_dataset(ctx.spec)
    ray_runtime.ensure_ray()  # a fresh local cluster when the dead driver's went with it
    say(f"resuming sweep [bold]{name}[/bold]: MLflow parent run {ctx.parent_run_id}; Tune {path}")
    _tune_env()
    # callbacks, searcher (with its Optuna study) and the trials come back from the experiment directory
    tuner = ray.tune.Tuner.restore(path, trainable=_trainable(ctx), resume_unfinished=True, resume_errored=False)
    return _fit(tuner, ctx)


class _Space:
    """`space.define_by_run(spec)` as a picklable object: OptunaSearch.save pickles the searcher, space included,
    with plain pickle every time Tune saves the experiment, and a closure cannot be pickled."""

    def __init__(self, spec: SweepSpec):
        self.spec = spec

    def __call__(self, trial):
        from sweep_platform.space import define_by_run

        return define_by_run(self.spec)(trial)


def _storage():
    import optuna

    url = optuna_storage()
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 30}}
                                      if url.startswith("sqlite") else {})


def _study_exists(name: str) -> bool:
    """A study of that name would be continued by OptunaSearch (load_if_exists), mixing two sweeps' trials."""
    import optuna

    return name in optuna.study.get_all_study_names(_storage())


def _searcher(spec: SweepSpec, study_name: str):
    from ray.tune.search.optuna import OptunaSearch

    from sweep_platform.space import make_sampler

    multi = spec.multi_objective
    return OptunaSearch(space=_Space(spec), metric=spec.metrics if multi else spec.metric,
                        mode=spec.modes if multi else spec.mode, sampler=make_sampler(spec),
                        storage=_storage(), study_name=study_name)


def _scheduler(spec: SweepSpec):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = spec.scheduler
    if s.type == "none":
        return FIFOScheduler()
    # time_attr epoch (reported by the loop, monotonic across restores), never training_iteration
    return ASHAScheduler(time_attr="epoch", max_t=s.max_epochs, grace_period=s.grace_epochs,
                         reduction_factor=s.reduction_factor)


def _callbacks(ctx: SweepContext, progress: bool) -> list:
    from sweep_platform.mlflow_callback import MlflowSweepCallback

    callbacks = [MlflowSweepCallback(ctx)]
    if progress:
        callbacks.append(ProgressTable(ctx.name, ctx.spec))
    return callbacks


def _fit(tuner, ctx: SweepContext) -> SweepOutcome:
    from sweep_platform import leaderboard as lb
    from sweep_platform import mlflow_callback as mc

    t0 = time.time()
    try:
        tuner.fit()
    except KeyboardInterrupt:  # a second Ctrl-C: Tune skipped its own clean-up
        mc.mark_interrupted(ctx.parent_run_id)
        raise
    finally:
        for display in list(_DISPLAYS):
            display.close()
    ref = lb.SweepRef(name=ctx.name, run_id=ctx.parent_run_id, experiment_id=ctx.experiment_id,
                      trainable=ctx.spec.trainable, start_time=0)
    rows = lb.leaderboard(ref, metric=ctx.spec.metric, mode=ctx.spec.mode)
    return SweepOutcome(name=ctx.name, parent_run_id=ctx.parent_run_id, state=mc.parent_state(ctx.parent_run_id),
                        trials=rows, wall_s=time.time() - t0)
