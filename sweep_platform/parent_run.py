"""A sweep's parent MLflow run: created once with the sweep file's settings, `sweep.yaml` and `space.txt`; its
state read back and marked when a sweep is interrupted. The child runs are the MLflow callback's."""

from __future__ import annotations

import tempfile
from pathlib import Path

from sweep_platform import names, tracking
from sweep_platform.optuna_space import describe
from sweep_platform.sweep_spec import SweepSpec


def find(name: str):
    """The parent run of sweep `name` in any experiment, or None."""
    c = tracking.client()
    ids = [e.experiment_id for e in c.search_experiments()]
    if not ids:
        return None
    flt = f"tags.`{names.TAG_ROLE}` = '{names.ROLE_SWEEP}' and tags.`{names.TAG_SWEEP}` = '{name}'"
    found = c.search_runs(ids, filter_string=flt, max_results=1)
    return found[0] if found else None


def create(name: str, spec: SweepSpec, *, sweep_file: str, concurrency: int, optuna_storage: str,
           fingerprint: str, dataset_root=None) -> tuple[str, str]:
    """(experiment id, run id) of the sweep's new parent run, with its settings, sweep.yaml and space.txt; run as a
    Ray job (`binsweep submit`, `ray job submit`), it also names the job's submission id and the dashboard."""
    from mlflow.entities import Param

    from sweep_platform.jobs import running_job

    c = tracking.client()
    exp_id = tracking.ensure_experiment(tracking.experiment_name(spec.trainable, spec.experiment))
    run = c.create_run(exp_id, run_name=name, tags={
        names.TAG_ROLE: names.ROLE_SWEEP, names.TAG_SWEEP: name, names.TAG_TRAINABLE: spec.trainable,
        names.TAG_GIT: tracking.git_sha(), names.TAG_DATASET: fingerprint, names.TAG_STATE: names.RUNNING,
        **running_job()})
    run_id = run.info.run_id
    tracking.log_dataset(run_id, dataset_root, fingerprint)
    s, r, sch = spec.sampler, spec.resources, spec.scheduler
    params = {
        "trainable": spec.trainable, "dataset": spec.dataset, "sweep_file": spec.source,
        "objectives": ", ".join(f"{m} ({mode})" for m, mode in zip(spec.metrics, spec.modes)),
        "trials": spec.trials, "concurrency": concurrency, "concurrency_setting": spec.concurrency,
        "sampler.type": s.type, "sampler.seed": s.seed, "scheduler.type": sch.type,
        "resources.workers": r.workers, "resources.cpus_per_worker": r.cpus_per_worker,
        "resources.gpus_per_worker": r.gpus_per_worker, "optuna.study": name,
        "optuna.storage": tracking.redact(optuna_storage), "space.params": ", ".join(spec.space) or "none",
    }
    if sch.type == "asha":
        params.update({"scheduler.grace_epochs": sch.grace_epochs, "scheduler.max_epochs": sch.max_epochs,
                       "scheduler.reduction_factor": sch.reduction_factor})
    c.log_batch(run_id, params=[Param(k, "null" if v is None else str(v)[:6000]) for k, v in params.items()])
    with tempfile.TemporaryDirectory(prefix="binsweep-sweep-") as d:
        (Path(d) / "sweep.yaml").write_text(sweep_file)
        (Path(d) / "space.txt").write_text(describe(spec) + "\n")
        tracking.log_files(run_id, {"sweep": Path(d) / "sweep.yaml", "space": Path(d) / "space.txt"})
    return exp_id, run_id


def mark_interrupted(parent_run_id: str | None) -> None:
    if parent_run_id is None:
        return
    c = tracking.client()
    tracking.with_retries(lambda: c.set_tag(parent_run_id, names.TAG_STATE, names.INTERRUPTED), "sweep state")
    tracking.with_retries(lambda: c.set_terminated(parent_run_id, status="KILLED"), "sweep status")


def state(parent_run_id: str) -> str:
    """finished, failed or interrupted (the parent's binsweep.state), as the last session left it."""
    run = tracking.with_retries(lambda: tracking.client().get_run(parent_run_id), "sweep run")
    return run.data.tags.get(names.TAG_STATE, "unknown") if run is not None else "unknown"


def log_leaderboard(parent_run_id: str, rows: list[dict]) -> None:
    """The sweep's leaderboard on its parent run as an MLflow table (leaderboard.json: the UI's artifact view shows it
    as a sortable table), one row per trial: rank, trial, state, the ranking metric, test metrics, key parameters."""
    if not rows:
        return
    columns: dict[str, list] = {}
    flat = []
    for row in rows:
        out = {k: row.get(k) for k in ("rank", "trial", "state", "epochs")}
        out[row.get("metric") or "value"] = row.get("value")
        out.update(row.get("metrics") or {})
        out.update({f"params.{k}": v for k, v in (row.get("params") or {}).items()})
        out["run_id"] = row.get("run_id")
        flat.append(out)
    for out in flat:  # every column in every row (MLflow tables are columnar)
        for k in out:
            columns.setdefault(k, [])
    for out in flat:
        for k in columns:
            columns[k].append(out.get(k))
    c = tracking.client()
    tracking.with_retries(lambda: c.log_table(parent_run_id, data=columns, artifact_file="leaderboard.json"),
                          "leaderboard table")
