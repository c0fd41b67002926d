"""A trial's test evaluation, run where the trial's resources are, never on the sweep driver.

A single-worker trial calls `evaluate_trial` in its own process before it reports its last epoch (trial_session). A
multi-worker trial, and an ASHA-stopped trial when the sweep file says `evaluate_stopped: true`, gets it as a Ray task
with one worker's resources (`evaluation_task`), so a GPU trial is scored on a GPU node.

The best checkpoint (by the sweep's first objective, among those kept) is scored on the test split; its metrics,
plots and summary and the model (a LoggedModel) go to the trial's MLflow child run, which gets the tags
binsweep.best_checkpoint and binsweep.best_epoch last: a run with those tags was evaluated, and a restarted trial does
not evaluate again. A failed evaluation tags binsweep.eval_error and leaves the training results as they are.
"""

from __future__ import annotations

import logging
import time

from sweep_platform import names, storage, tracking

log = logging.getLogger(__name__)

FIND_RUN_S = 120.0  # the driver creates the child run when the trial starts; a trial can get here first


def find_trial_run(parent_run_id: str, experiment_id: str, trial_id: str, wait_s: float = FIND_RUN_S):
    """The trial's MLflow child run (created by the sweep driver's callback), waiting for it to appear."""
    c = tracking.client()
    flt = f"tags.`{names.TAG_PARENT}` = '{parent_run_id}' and tags.`{names.TAG_TRIAL}` = '{trial_id}'"
    deadline = time.time() + wait_s
    while True:
        found = tracking.with_retries(lambda: c.search_runs([experiment_id], filter_string=flt, max_results=1),
                                      f"run of trial {trial_id}")
        if found:
            return found[0]
        if time.time() > deadline:
            return None
        time.sleep(0.5)


def best_checkpoint(sweep_name: str, trial_id: str, metric: str, mode: str) -> tuple[str, int] | None:
    """(path, epoch) of the kept checkpoint with the best `metric`."""
    best = None
    for epoch, path, metrics in storage.trial_checkpoints(sweep_name, trial_id):
        v = metrics.get(metric)
        if tracking.is_number(v) and tracking.better(v, best[0] if best else None, mode):
            best = (v, path, epoch)
    return (best[1], best[2]) if best else None


def evaluate_trial(sweep_name: str, trainable: str, metric: str, mode: str, parent_run_id: str,
                   experiment_id: str, trial_id: str, device: str | None = None) -> str:
    """Score the trial's best checkpoint on the test split and log it to its run; returns what happened, in words."""
    from sweep_platform.training import evaluate_and_log
    from trainables.registry import get_trainable

    run = find_trial_run(parent_run_id, experiment_id, trial_id)
    if run is None:
        log.warning("trial %s: no MLflow run to log its evaluation to", trial_id)
        return "no run"
    if names.TAG_BEST_CHECKPOINT in run.data.tags:
        return "already evaluated"
    c, run_id = tracking.client(), run.info.run_id
    found = best_checkpoint(sweep_name, trial_id, metric, mode)
    if found is None:
        tracking.with_retries(lambda: c.set_tag(run_id, names.TAG_EVAL_ERROR, "no checkpoint to evaluate"), "tag")
        return "no checkpoint"
    path, epoch = found
    t0 = time.perf_counter()
    try:
        with storage.checkpoint_dir(path) as d:
            evaluate_and_log(get_trainable(trainable), d, run_id, split="test", log_model=True, device=device)
    except Exception as exc:  # noqa: BLE001 - a failed evaluation leaves the trial's training results intact
        log.warning("evaluating trial %s failed: %s", trial_id, exc)
        msg = tracking.redact(f"{type(exc).__name__}: {exc}")[:5000]
        tracking.with_retries(lambda: c.set_tag(run_id, names.TAG_EVAL_ERROR, msg), "eval error tag")
        return "failed"
    seconds = time.perf_counter() - t0  # test split, plots and model logging
    tracking.with_retries(lambda: tracking.log_metrics_batch(run_id, {"eval_s": seconds}, step=0), "eval time")
    tracking.with_retries(lambda: c.set_tag(run_id, names.TAG_BEST_EPOCH, str(epoch)), "epoch tag")
    tracking.with_retries(lambda: c.set_tag(run_id, names.TAG_BEST_CHECKPOINT, path), "checkpoint tag")
    return "evaluated"


def evaluation_task(cpus: float, gpus: float):
    """`evaluate_trial` as a Ray task with one worker's resources (it runs on a node that has them)."""
    import ray

    def run(*args):
        from sweep_platform.trial_session import trial_device

        return evaluate_trial(*args, device=str(trial_device()))

    return ray.remote(run).options(num_cpus=cpus, num_gpus=gpus, name="binsweep-evaluate", max_retries=1)
