"""MLflow for sweeps: a Tune Callback of our own on the sweep driver (not Ray's MLflowLoggerCallback).

Layout (design.md): one parent run per sweep (tag binsweep.role = sweep) with the sweep file's key settings as params
and `sweep.yaml` + `space.txt` as artifacts; one child run per trial (tag mlflow.parentRunId) with the trial's whole
flattened config as params, `params_m` at trial start, every epoch's metrics at step = epoch (one log_batch per
epoch), and at the end its state (binsweep.state: completed, stopped by ASHA, failed + binsweep.error), gpu_hours and
wall_s. The test evaluation of a trial's best checkpoint (test metrics, plots, the model as a LoggedModel) is never run
here, on the driver (`trial_eval`): a single-worker trial does it itself before it reports its last epoch; for a
multi-worker trial, and for an ASHA-stopped trial when the sweep file says `evaluate_stopped: true`, this callback
starts it as a Ray task with one worker's resources and waits for those tasks at the end of the sweep.

Nothing here may stop a trial: every MLflow call goes through `tracking.with_retries`.

Restores: the trial -> run map is the callback's `get_state`, saved by Tune with the experiment state. Tune saves it
every ~10 s, so after a driver is killed the map can be a few seconds behind MLflow; a trial whose run is missing
from it is looked up by its tags before a run is created, and epochs already in the run's history are not logged
again. Hence no duplicate runs and no duplicate epochs after `binsweep resume`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import threading
import time
from typing import Any

from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS

from sweep_platform import names, storage, tracking
from sweep_platform.names import (TAG_BEST_CHECKPOINT, TAG_ERROR, TAG_EVAL_ERROR, TAG_RESTARTS, TAG_RESUMED_FROM,
                                  TAG_STATE, TAG_TRAIN_NAME)
from sweep_platform.trial import SweepContext, count_params_m, end_state, trial_error, trial_model_config
from trainables import datastore

log = logging.getLogger(__name__)

_NOT_EPOCH = set(AUTO_RESULT_KEYS) | names.TRIAL_METRICS | {"done", "trial_id", "checkpoint_path", "experiment_tag",
                                                       "should_checkpoint"}


# ---------------------------------------------------------------------------------------------------- parent run


# --------------------------------------------------------------------------------------------------- callback


class MlflowSweepCallback(Callback):
    """Parent and child runs of one sweep; see the module docstring. Construct with the sweep's context."""

    def __init__(self, ctx: SweepContext, *, evaluate: bool = True):
        self.ctx = ctx
        self.evaluate = evaluate
        # trial id -> {run_id, state, last_epoch, best: [value, epoch, checkpoint_path] | None, wall_s, evaluated,
        #              restarts}
        self._trials: dict[str, dict[str, Any]] = {}
        self._rt: dict[str, Any] | None = None  # this session only: client, lock, evaluation thread, clocks

    def __getstate__(self):  # tuner.pkl holds the arguments; the trial map travels through get_state
        return {"ctx": self.ctx, "evaluate": self.evaluate, "_trials": {}, "_rt": None}

    # -- Tune state ------------------------------------------------------------------------------------------

    def get_state(self) -> dict | None:
        lock = self._rt["lock"] if self._rt else contextlib.nullcontext()
        with lock:
            return {"parent_run_id": self.ctx.parent_run_id, "trials": copy.deepcopy(self._trials)}

    def set_state(self, state: dict) -> None:
        self._trials = copy.deepcopy(state.get("trials", {}))

    # -- session ---------------------------------------------------------------------------------------------

    def setup(self, **info):
        from trainables.registry import get_trainable

        spec = self.ctx.spec
        self._rt = {"client": tracking.client(), "lock": threading.Lock(), "started": {}, "first": {},
                    "restarted": set(), "evaluations": {}, "trainable": get_trainable(spec.trainable)}
        self._rt["fingerprint"] = self._fingerprint()
        parent = self.ctx.parent_run_id
        c = self._rt["client"]
        tracking.with_retries(lambda: c.update_run(parent, status="RUNNING"), "sweep status")
        tracking.with_retries(lambda: c.set_tag(parent, TAG_STATE, names.RUNNING), "sweep state")
        # a previous driver died while an evaluation task it had started was running (the task died with it)
        for tid, rec in self._trials.items():
            if rec["state"] in names.SUCCEEDED_STATES and not rec.get("evaluated"):
                self._evaluate_elsewhere(tid, rec["state"])

    def _fingerprint(self) -> str:
        from sweep_platform.training import dataset_fingerprint, resolve_data_root

        try:
            base = trial_model_config(self.ctx.spec, {})
            return dataset_fingerprint(resolve_data_root(self._rt["trainable"], base))
        except Exception:  # noqa: BLE001 - a tag is not worth failing a sweep for
            return "unknown"

    def _client(self):
        return self._rt["client"]

    # -- child runs ------------------------------------------------------------------------------------------

    def _find_run(self, trial_id: str) -> dict[str, Any] | None:
        """A child run of this sweep for the trial that the restored state did not know about yet."""
        c = self._client()
        flt = (f"tags.`{names.TAG_PARENT}` = '{self.ctx.parent_run_id}' and "
               f"tags.`{names.TAG_TRIAL}` = '{trial_id}'")
        found = tracking.with_retries(lambda: c.search_runs([self.ctx.experiment_id], filter_string=flt,
                                                            max_results=1), "find trial run")
        if not found:
            return None
        run = found[0]
        state = run.data.tags.get(TAG_STATE, names.RUNNING)
        return {"run_id": run.info.run_id, "state": state, "last_epoch": 0, "best": None, "wall_s": 0.0,
                "evaluated": TAG_BEST_CHECKPOINT in run.data.tags
                or (run.info.status != "RUNNING" and state in names.FINAL_STATES)}

    def _logged_epoch(self, run_id: str) -> int:
        hist = tracking.with_retries(lambda: self._client().get_metric_history(run_id, "epoch"), "epoch history")
        return max((int(m.step) for m in hist or []), default=0)

    def _create_run(self, trial) -> dict[str, Any]:
        from mlflow.entities import Metric, Param

        spec, rt = self.ctx.spec, self._rt
        try:
            validated = trial_model_config(spec, trial.config)
            config, params_m = validated.model_dump(mode="json"), count_params_m(rt["trainable"], validated)
            init = tracking.init_tags(rt["trainable"], validated)  # e.g. which visual branches start random
        except Exception:  # noqa: BLE001 - an invalid combination: the trial fails with the reason; log what it got
            from sweep_platform.sweep_spec import trial_config

            config, params_m, init = trial_config(spec, trial.config), None, {}
        tags = {names.TAG_PARENT: self.ctx.parent_run_id, names.TAG_TRIAL: trial.trial_id,
                names.TAG_SWEEP: self.ctx.name, names.TAG_TRAINABLE: spec.trainable,
                names.TAG_DATASET: rt["fingerprint"], names.TAG_GIT: tracking.git_sha(), TAG_STATE: names.RUNNING,
                TAG_TRAIN_NAME: storage.train_run_name(self.ctx.name, trial.trial_id), **init}
        c = self._client()
        run = tracking.with_retries(lambda: c.create_run(self.ctx.experiment_id, run_name=trial.trial_id, tags=tags),
                                    f"run of trial {trial.trial_id}")
        rec = {"run_id": run.info.run_id if run else None, "state": names.RUNNING, "last_epoch": 0, "best": None,
               "wall_s": 0.0, "evaluated": False}
        if run is not None:
            r = spec.resources
            params = tracking.params_of(config)
            params.update({"resources.workers": str(r.workers), "resources.gpus_per_worker": str(r.gpus_per_worker),
                           "resources.cpus_per_worker": str(r.cpus_per_worker)})
            metrics = [Metric("params_m", params_m, int(time.time() * 1000), 0)] if params_m is not None else []
            tracking.with_retries(lambda: c.log_batch(rec["run_id"], metrics=metrics,
                                                      params=[Param(k, v) for k, v in params.items()]), "params")
            root = (config.get("data") or {}).get("root")
            tracking.log_dataset(rec["run_id"], datastore.normalize(root) if root else None, rt["fingerprint"])
        return rec

    # -- Tune hooks ------------------------------------------------------------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info):
        tid = trial.trial_id
        if tid in self._rt["started"] and self._trials.get(tid, {}).get("state") == names.RUNNING:
            return  # already started in this session
        rec = self._trials.get(tid) or self._find_run(tid)
        if rec is None:
            rec = self._create_run(trial)
        elif rec["run_id"] and (rec["state"] not in names.FINAL_STATES or rec["state"] == names.FAILED):
            # resumed (or a failed trial retried by `resume --retry-failed`): the same run goes on; epochs it
            # already has are not logged twice
            rec["last_epoch"] = max(rec["last_epoch"], self._logged_epoch(rec["run_id"]))
            rec["restarts"] = rec.get("restarts", 0) + 1
            c, run_id = self._client(), rec["run_id"]
            tracking.with_retries(lambda: c.update_run(run_id, status="RUNNING"), "run status")
            tracking.with_retries(lambda: c.set_tag(run_id, TAG_STATE, names.RUNNING), "run state")
            if rec["state"] == names.FAILED:  # retried: its old error no longer describes it
                rec["evaluated"] = False
                tracking.with_retries(lambda: c.delete_tag(run_id, TAG_ERROR), "error tag")
            rec["state"] = names.RUNNING
            self._rt["restarted"].add(tid)
        with self._rt["lock"]:
            self._trials[tid] = rec
        self._rt["started"][tid] = (time.time(), rec["wall_s"])

    def on_trial_recover(self, iteration, trials, trial, **info):
        """Tune retries the trial (max_failures) after it raised or its process or node died: the same run goes on,
        and its first result after the retry says which checkpoint the trial resumed from."""
        rec = self._trials.get(trial.trial_id)
        if rec is None or rec["run_id"] is None:
            return
        rec["restarts"] = rec.get("restarts", 0) + 1
        self._rt["restarted"].add(trial.trial_id)

    def _wall(self, tid: str) -> float:
        start, before = self._rt["started"].get(tid, (time.time(), 0.0))
        return before + time.time() - start

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = trial.trial_id
        rec = self._trials.get(tid)
        if rec is None or rec["run_id"] is None or rec["state"] in names.FINAL_STATES:
            return
        epoch = int(result.get("epoch", 0))
        rec["wall_s"] = self._wall(tid)
        if tid in self._rt["restarted"]:  # the first result after a restart says where Train resumed
            self._rt["restarted"].discard(tid)
            self._tags(rec["run_id"], {TAG_RESTARTS: str(rec["restarts"]), TAG_RESUMED_FROM: str(epoch - 1)})
        if epoch <= rec["last_epoch"]:
            return  # replayed after a restore: already in the run's history
        if epoch > rec["last_epoch"] + 1:
            self._backfill(tid, rec, before=epoch)
        self._log_epoch(rec, epoch, result, result.get("checkpoint_path"))
        if not rec.get("restarts"):
            self._startup(tid, rec["run_id"], result)

    def _log_epoch(self, rec: dict, epoch: int, metrics: dict, checkpoint_path: str | None) -> None:
        spec, run_id = self.ctx.spec, rec["run_id"]
        values = {k: v for k, v in metrics.items() if k not in _NOT_EPOCH and tracking.is_number(v)}
        tracking.with_retries(lambda: tracking.log_metrics_batch(run_id, values, step=epoch), f"epoch {epoch}")
        value = metrics.get(spec.metric)
        with self._rt["lock"]:
            rec["last_epoch"] = max(rec["last_epoch"], epoch)
            best = (rec["best"] or [None])[0]
            if tracking.is_number(value) and checkpoint_path and tracking.better(value, best, spec.mode):
                rec["best"] = [float(value), epoch, checkpoint_path]

    def _backfill(self, tid: str, rec: dict, before: float = math.inf) -> None:
        """Epochs whose checkpoint was saved but whose result never reached Tune (the driver died or was stopped
        in between, so Train resumes after them): logged from the history the loop keeps in every checkpoint, so an
        epoch whose own checkpoint Train has since deleted (num_to_keep) is not lost."""
        for epoch, (metrics, path) in sorted(storage.trial_history(self.ctx.name, tid).items()):
            if rec["last_epoch"] < epoch < before:
                self._log_epoch(rec, epoch, metrics, path)  # best only among checkpoints still kept (path not None)

    def _startup(self, tid: str, run_id: str, result: dict) -> None:
        """Seconds from the trial's start to its first epoch's start (first report time minus that epoch's own
        `epoch_s`): actor start-up, imports, model and data set-up (and, with several workers, Train's controller,
        worker group and process group). Logged once, at step 0."""
        first = self._rt["first"]
        if tid in first or not tracking.is_number(result.get("epoch_s")):
            return
        first[tid] = True
        startup = time.time() - self._rt["started"][tid][0] - float(result["epoch_s"])
        if startup > 0:
            tracking.with_retries(lambda: tracking.log_metrics_batch(run_id, {"startup_s": startup}, step=0),
                                  "startup time")

    def on_trial_complete(self, iteration, trials, trial, **info):
        tid = trial.trial_id
        rec = self._trials.get(tid)
        if rec is None or rec["run_id"] is None:
            return
        if rec["state"] in names.FINAL_STATES:  # rerun after a restore that lagged behind MLflow: already recorded
            if not rec.get("evaluated"):
                self._evaluate_elsewhere(tid, rec["state"])
            return
        if rec.get("restarts"):  # a resumed run's last epochs may be in its checkpoints only
            self._backfill(tid, rec)
        if tid in self._rt["restarted"]:  # restarted with nothing left to train: it resumed at its last checkpoint
            self._rt["restarted"].discard(tid)
            self._tags(rec["run_id"], {TAG_RESTARTS: str(rec["restarts"]), TAG_RESUMED_FROM: str(rec["last_epoch"])})
        last = max(rec["last_epoch"], int((trial.last_result or {}).get("epoch", 0)))
        state = end_state(self.ctx.spec, trial.config, last)
        self._end(tid, rec, state)
        best = self._best_tag(tid, rec)
        c, run_id = self._client(), rec["run_id"]
        tracking.with_retries(lambda: c.set_terminated(run_id, status="FINISHED"), "run status")
        if best is not None or not self._evaluate_elsewhere(tid, state):
            with self._rt["lock"]:
                rec["evaluated"] = True

    def on_trial_error(self, iteration, trials, trial, **info):
        tid = trial.trial_id
        rec = self._trials.get(tid)
        if rec is None:  # failed before it started (e.g. its actor could not be placed)
            self.on_trial_start(iteration, trials, trial)
            rec = self._trials[tid]
        if rec["run_id"] is None or rec["state"] in names.FINAL_STATES:
            return
        error = trial_error(trial)
        c, run_id = self._client(), rec["run_id"]
        tracking.with_retries(lambda: c.set_tag(run_id, TAG_ERROR, error[:5000]), "error tag")
        self._end(tid, rec, names.FAILED)
        tracking.with_retries(lambda: c.set_terminated(run_id, status="FAILED"), "run status")

    def _tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        c = self._client()
        tracking.with_retries(lambda: c.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()]), "tags")

    def _end(self, tid: str, rec: dict, state: str) -> None:
        r = self.ctx.spec.resources
        wall = self._wall(tid)
        with self._rt["lock"]:
            rec["state"], rec["wall_s"] = state, wall
        c, run_id = self._client(), rec["run_id"]
        tracking.with_retries(lambda: c.set_tag(run_id, TAG_STATE, state), "run state")
        tracking.with_retries(lambda: tracking.log_metrics_batch(
            run_id, {"gpu_hours": r.workers * r.gpus_per_worker * wall / 3600, "wall_s": wall}, step=0), "gpu hours")

    # -- evaluation (elsewhere) -----------------------------------------------------------------------------

    def _best_tag(self, tid: str, rec: dict) -> str | None:
        """The trial's binsweep.best_checkpoint tag: set once it was evaluated (by itself, before its last report)."""
        run = tracking.with_retries(lambda: self._client().get_run(rec["run_id"]), "trial run")
        return run.data.tags.get(TAG_BEST_CHECKPOINT) if run is not None else None

    def _evaluate_elsewhere(self, tid: str, state: str) -> bool:
        """Start the evaluation task of a multi-worker trial that completed, or of a stopped trial when the sweep
        file asks; False when the trial gets none."""
        from sweep_platform.trial_eval import evaluation_task

        spec = self.ctx.spec
        wanted = (state == names.COMPLETED and spec.resources.workers > 1) or \
            (state == names.STOPPED and spec.evaluate_stopped)
        if not (wanted and self.evaluate):
            return False
        r = spec.resources
        task = evaluation_task(r.cpus_per_worker, r.gpus_per_worker)
        self._rt["evaluations"][tid] = task.remote(self.ctx.name, spec.trainable, spec.metric, spec.mode,
                                                   self.ctx.parent_run_id, self.ctx.experiment_id, tid)
        return True

    def _wait_for_evaluations(self) -> None:
        import ray

        for tid, ref in self._rt["evaluations"].items():
            try:
                ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the task died (node lost): the run says so
                msg = tracking.redact(f"evaluation task failed: {type(exc).__name__}: {exc}")[:5000]
                run_id, c = self._trials[tid]["run_id"], self._client()
                tracking.with_retries(lambda: c.set_tag(run_id, TAG_EVAL_ERROR, msg), "eval error tag")
            with self._rt["lock"]:
                self._trials[tid]["evaluated"] = True
        self._rt["evaluations"].clear()

    # -- end of the sweep ------------------------------------------------------------------------------------

    def on_experiment_end(self, trials, **info):
        self._wait_for_evaluations()
        c, parent, spec = self._client(), self.ctx.parent_run_id, self.ctx.spec
        # Ctrl-C: Tune saved the experiment, then stopped the running trials without on_trial_complete
        for tid, rec in self._trials.items():
            if rec["state"] == names.RUNNING and rec["run_id"]:
                run_id = rec["run_id"]
                tracking.with_retries(lambda: c.set_tag(run_id, TAG_STATE, names.INTERRUPTED), "run state")
                tracking.with_retries(lambda: c.set_terminated(run_id, status="KILLED"), "run status")
                rec["state"] = names.INTERRUPTED
        counts = {s: 0 for s in (*names.FINAL_STATES, names.INTERRUPTED)}
        for rec in self._trials.values():
            counts[rec["state"]] = counts.get(rec["state"], 0) + 1
        pending = sum(1 for t in trials if t.status in ("PENDING", "PAUSED"))
        ended = sum(counts[s] for s in names.FINAL_STATES)
        complete = counts[names.INTERRUPTED] == 0 and pending == 0 and ended >= spec.trials
        metrics = {f"trials_{s}": n for s, n in counts.items()}
        best = min(((rec["best"][0] if spec.mode == "min" else -rec["best"][0], tid)
                    for tid, rec in self._trials.items() if rec["state"] in names.SUCCEEDED_STATES and rec["best"]),
                   default=None)
        if best is not None:
            tid = best[1]
            rec = self._trials[tid]
            tracking.with_retries(lambda: c.set_tag(parent, names.TAG_BEST_TRIAL, tid), "best trial")
            tracking.with_retries(lambda: c.set_tag(parent, names.TAG_BEST_RUN, rec["run_id"]), "best run")
            child = tracking.with_retries(lambda: c.get_run(rec["run_id"]), "best run")
            if child is not None:
                metrics.update({k: v for k, v in child.data.metrics.items()
                                if k.startswith("test_") or k == "params_m"})
            metrics[f"best_{spec.metric}"] = rec["best"][0]
        r = spec.resources
        wall = sum(rec["wall_s"] for rec in self._trials.values())
        metrics["gpu_hours"] = wall * r.workers * r.gpus_per_worker / 3600
        tracking.with_retries(lambda: tracking.log_metrics_batch(parent, metrics, step=0), "sweep summary")
        succeeded = counts[names.COMPLETED] + counts[names.STOPPED]
        state, status = ("interrupted", "KILLED") if not complete else \
            ("finished", "FINISHED") if succeeded else ("failed", "FAILED")
        tracking.with_retries(lambda: c.set_tag(parent, TAG_STATE, state), "sweep state")
        tracking.with_retries(lambda: c.set_terminated(parent, status=status), "sweep status")
