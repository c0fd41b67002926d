"""Sweeps on Ray Tune: one sweep file in, one Tune experiment out; Optuna proposes, ASHA stops, MLflow records.

    start_sweep(path, name)     validate, build the dataset when missing, parent MLflow run, Tuner.fit
    resume_sweep(name)          Tuner.restore(..., resume_unfinished=True, resume_errored=retry_failed).fit

A trial is `trial.run_trial`; where its processes run and how many run at once, `placement`; the MLflow side is
`mlflow_callback`, the live table `progress`, where things are stored `storage`.

Not restored by Tune (platform.md §1.4): the ASHA scheduler. After `resume` its rungs start empty, so the first
trials to reach each rung again are not compared with those that reached it before the interruption.
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import ray.tune

from sweep_platform import configfile, names, parent_run, ray_runtime, storage, tracking
from sweep_platform.errors import BinsweepError, SweepExistsError, SweepNotFoundError
from sweep_platform.placement import max_cluster_resources, offers_driver_slots, trial_resources, trials_at_once
from sweep_platform.progress import DISPLAYS, ProgressTable
from sweep_platform.sweep_file import load_sweep
from sweep_platform.sweep_spec import SweepSpec
from sweep_platform.training import dataset_fingerprint, resolve_data_root
from sweep_platform.trial import SweepContext, run_trial, trial_model_config
from trainables import datastore
from trainables.registry import get_trainable

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class DatasetMissingError(BinsweepError, FileNotFoundError):
    """The sweep's dataset folder is missing and the sweep file cannot build it."""


class SweepNameError(BinsweepError, ValueError):
    """A sweep name that cannot name a folder, a study and a run."""


class SweepOptionError(BinsweepError, ValueError):
    """A command-line override of the sweep file that is not allowed."""


def default_name(spec: SweepSpec) -> str:
    """The file's name plus a short timestamp, e.g. bast_smoke-1122-153012."""
    return f"{spec.name}-{time.strftime('%m%d-%H%M%S')}"


def ensure_dataset(spec: SweepSpec, say=lambda text: None) -> Path | str | None:
    """The sweep's dataset: a folder under this node's BINSWEEP_HOME, or a URI (s3://bucket/prefix) that every node
    reads. Built first with the trainable's dataset builder from `dataset_build` when it has no manifest yet (for a
    URI: built in a staging folder here and published there, manifest last)."""
    if spec.dataset is None:
        return None
    root = datastore.normalize(spec.dataset)
    if datastore.is_file(datastore.join(root, datastore.MANIFEST)):
        return root
    builder = get_trainable(spec.trainable).dataset_builder
    if spec.dataset_build is None or builder is None:
        how = (f"build it with `{builder.command} --out {spec.dataset}` or add a dataset_build section to the sweep "
               "file") if builder else f"trainable {spec.trainable} has no dataset builder: put a dataset there"
        raise DatasetMissingError(f"{spec.source}: dataset {spec.dataset}: no dataset at {root} (manifest.json "
                                  f"missing); {how}")
    cfg = configfile.validate(builder.config_type, spec.dataset_build, spec.source, prefix="dataset_build")
    published = " and publishing it there" if datastore.is_uri(root) else ""
    say(f"building dataset {spec.dataset} from the sweep file's dataset_build{published}")
    builder.build(cfg, root)
    return root


def reuse_actors(spec: SweepSpec) -> bool:
    """Single-worker trials run in their Tune actor, so the next trial can take over the warm process (torch, the
    trainable and MLflow already imported): measured in bench/README.md. A multi-worker trial's actor only drives a
    TorchTrainer, whose worker group is started afresh anyway."""
    return spec.resources.workers == 1


def _tune_env() -> None:
    # The progress table is the main output: Ray's new output engine prints its experiment header and every trial
    # error even with verbose=0, the legacy one honours it. Trial errors are shown once, as one line; full
    # tracebacks stay in each trial's error.txt (and on screen with BINSWEEP_DEBUG=1). Tune's warnings (e.g. a trial
    # that cannot get its resources) and workers' output reach the user, less what sweep_platform.quiet drops.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from sweep_platform import quiet

    quiet.install()
    if os.environ.get("BINSWEEP_DEBUG") != "1":
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
        logging.getLogger("ray.tune").setLevel(logging.WARNING)
        # OptunaSearch reports intermediate values at Tune's training_iteration, which restarts at 1 in a resumed
        # trial; Optuna then ignores them (harmless: the study uses no pruner; ASHA stops on epochs)
        warnings.filterwarnings("ignore", message="The reported value is ignored because this `step",
                                category=UserWarning)
        stop = logging.getLogger("ray.tune.tune")  # except Tune's answer to Ctrl-C, in our words
        stop.setLevel(logging.WARNING)
        if not any(isinstance(f, _OnlyStopSignal) for f in stop.filters):
            stop.addFilter(_OnlyStopSignal())


class _OnlyStopSignal(logging.Filter):
    """ray.tune.tune's lines less those the table and our own Ctrl-C message say ("Trials did not complete", Tune's
    resume hint naming a Python entry point); its answer to Ctrl-C in our words."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        if msg.startswith("Trials did not complete") or "has been interrupted, but the most recent state" in msg:
            return False
        if not msg.startswith("Stop signal received"):
            return True
        record.msg, record.args = ("Ctrl-C: stopping the running trials and saving the sweep so that `binsweep "
                                   "resume` can continue it (Ctrl-C again skips the saving)"), ()
        return True


def _trial_id(trial) -> str:
    return trial.trial_id


def _trainable(ctx: SweepContext, cluster: dict[str, float], ceiling: dict[str, float] | None):
    # the same function on start and on restore (Tune checks its name); the context rides in the object store
    slots = offers_driver_slots(cluster, ceiling)
    return ray.tune.with_resources(ray.tune.with_parameters(run_trial, sweep=ctx), trial_resources(ctx.spec, slots))


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
        return sum(self.count(s) for s in names.SUCCEEDED_STATES)

    @property
    def best(self) -> dict[str, Any] | None:
        return next((t for t in self.trials if t["rank"] == 1), None)


def start_sweep(path: str | Path, name: str | None = None, *, max_failures: int | None = None,
                concurrency: int | None = None, progress: bool = True, say=lambda text: None) -> SweepOutcome:
    """Validate the sweep file, build its dataset when missing, then run it to the end (or until Ctrl-C).

    `max_failures` and `concurrency` override the file's (the command line's --max-failures and --concurrency)."""
    spec = load_sweep(path)  # every problem at once, before anything is created
    if concurrency is not None:
        if concurrency < 1:
            raise SweepOptionError(f"--concurrency {concurrency}: allowed a positive integer")
        spec = spec.model_copy(update={"concurrency": concurrency})
    if max_failures is not None:
        spec = spec.model_copy(update={"max_failures": max_failures})
    sweep_file = Path(path).read_text()  # the text that was validated, logged as the parent run's sweep.yaml
    name = name or default_name(spec)
    if not _NAME.match(name):
        raise SweepNameError(f"--name {name!r}: use letters, digits, '_', '-' and '.', starting with a letter or digit")
    if storage.exists(storage.sweep_dir(name)):
        raise _exists(name)
    # The MLflow store and the Optuna storage are opened in a thread while this one starts Ray: on a fresh SQLite
    # store the MLflow schema migrations take about 2 s, the local Ray start about 3 s (bench/README.md).
    with ThreadPoolExecutor(1, thread_name_prefix="binsweep-stores") as pool:
        recorded = pool.submit(lambda: parent_run.find(name) is not None or storage.study_exists(name))
        ensure_dataset(spec, say)
        trainable = get_trainable(spec.trainable)
        base = resolve_data_root(trainable, trial_model_config(spec, {}))  # the base config and dataset, once
        cluster = ray_runtime.ensure_ray()
        if recorded.result():
            raise _exists(name)
    ceiling = max_cluster_resources()
    conc = trials_at_once(spec, cluster, ceiling)
    exp_id, parent = parent_run.create(name, spec, sweep_file=sweep_file, concurrency=conc,
                                       optuna_storage=storage.optuna_storage(), fingerprint=dataset_fingerprint(base),
                                       dataset_root=getattr(getattr(base, "data", None), "root", None))
    ctx = SweepContext(name=name, spec=spec, sweep_file=sweep_file, max_failures=spec.max_failures,
                       parent_run_id=parent, experiment_id=exp_id)
    ctx.save()
    say(f"sweep [bold]{name}[/bold]: {spec.trials} trials, {conc} at once; MLflow parent run {parent} "
        f"({tracking.redact(tracking.tracking_uri())}); Tune {storage.sweep_dir(name)}")
    _tune_env()
    tuner = ray.tune.Tuner(
        _trainable(ctx, cluster, ceiling),
        tune_config=ray.tune.TuneConfig(
            metric=spec.metric, mode=spec.mode,  # the scheduler's (ASHA stops on the first objective)
            search_alg=_searcher(spec, name, parent), scheduler=_scheduler(spec), num_samples=spec.trials,
            max_concurrent_trials=conc, trial_name_creator=_trial_id, trial_dirname_creator=_trial_id,
            reuse_actors=reuse_actors(spec)),
        run_config=ray.tune.RunConfig(
            name=name, storage_path=ray_runtime.storage_path(), verbose=0,
            # a trial that raised or whose process or node died goes on from its last checkpoint, max_failures times
            failure_config=ray.tune.FailureConfig(max_failures=ctx.max_failures),
            callbacks=_callbacks(ctx, progress)),
    )
    return _fit(tuner, ctx)


def _exists(name: str) -> SweepExistsError:
    return SweepExistsError(f"a sweep named {name!r} already exists ({storage.sweep_dir(name)}); continue it with "
                            f"`binsweep resume {name}`, or start a new one with another --name")


def resume_sweep(name: str, *, retry_failed: bool = False, say=lambda text: None) -> SweepOutcome:
    """Continue a sweep whose driver died or was interrupted: finished trials stay, unfinished ones go on; with
    `retry_failed`, trials that errored (e.g. more node losses than max_failures) run again from their last
    checkpoints, in the same MLflow runs."""
    path = storage.sweep_dir(name)
    if not ray.tune.Tuner.can_restore(path) or not storage.exists(f"{path}/{storage.CONTEXT_FILE}"):
        known = storage.existing_sweeps()
        raise SweepNotFoundError(f"no sweep named {name!r} to resume under {ray_runtime.storage_path()} "
                                 f"(existing sweeps: {', '.join(known) if known else 'none'})")
    ctx = SweepContext.load(name)
    ensure_dataset(ctx.spec)
    cluster = ray_runtime.ensure_ray()  # a fresh local cluster when the dead driver's went with it
    say(f"resuming sweep [bold]{name}[/bold]: MLflow parent run {ctx.parent_run_id}; Tune {path}")
    _tune_env()
    # callbacks, searcher (with its Optuna study) and the trials come back from the experiment directory
    tuner = ray.tune.Tuner.restore(path, trainable=_trainable(ctx, cluster, max_cluster_resources()), resume_unfinished=True,
                                   resume_errored=retry_failed)
    return _fit(tuner, ctx)


def _searcher(spec: SweepSpec, study_name: str, parent_run_id: str | None = None):
    from sweep_platform.searcher import SweepSearch

    return SweepSearch(spec, study_name, parent_run_id)


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

    from sweep_platform.searcher import RetriedTrials

    callbacks = [MlflowSweepCallback(ctx), RetriedTrials(ctx.spec, ctx.name)]
    if progress:
        callbacks.append(ProgressTable(ctx.name, ctx.spec))
    return callbacks


def _fit(tuner, ctx: SweepContext) -> SweepOutcome:
    from sweep_platform import leaderboard as lb

    t0 = time.time()
    try:
        tuner.fit()
    except KeyboardInterrupt:  # a second Ctrl-C: Tune skipped its own clean-up
        parent_run.mark_interrupted(ctx.parent_run_id)
        raise
    finally:
        for display in list(DISPLAYS):
            display.close()
    ref = lb.SweepRef(name=ctx.name, run_id=ctx.parent_run_id, experiment_id=ctx.experiment_id,
                      trainable=ctx.spec.trainable, start_time=0)
    rows = lb.leaderboard(ref, metric=ctx.spec.metric, mode=ctx.spec.mode)
    parent_run.log_leaderboard(ctx.parent_run_id, rows)
    return SweepOutcome(name=ctx.name, parent_run_id=ctx.parent_run_id, state=parent_run.state(ctx.parent_run_id),
                        trials=rows, wall_s=time.time() - t0)
