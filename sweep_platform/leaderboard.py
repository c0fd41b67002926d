"""The trials of a sweep, ranked, read back from MLflow (the layout in shared/design.md).

A sweep is one parent run (tag `binsweep.role` = sweep, `binsweep.sweep_id` = its name) with one child run per trial
(`mlflow.parentRunId`). `leaderboard` turns the children into one dict per trial: rank, run, the parameters that
matter (the trainable's `key_params`, the sweep file's searched parameters, then those that vary across the trials),
the ranking metric, the sweep's objective, the trainable's `test_metrics`, epochs, wall time, GPU hours, state and,
for failed trials, the error. The format functions render those rows as a rich table, CSV, JSON or markdown;
`binsweep report`, `binsweep promote`, the sweep driver and the demo reuse the same rows.

Everything trainable-specific comes from its TrainableSpec; a sweep of a trainable that is no longer installed still
lists, ranked by its sweep file's metric (or `val_loss`).

Ranking metric: by default the sweep's own objective (the sweep file's `metric`/`mode`, e.g. `val_ad_deg`, min),
each trial's best validation epoch; the trainable's test metric (`test_ad_deg`) is shown beside it but never chosen
by, because the test split is for reporting and for the promotion gate. `--metric` ranks by another: a test metric
(falling back, for a trial without one, to the best epoch of the matching validation metric; the row says which in
`value_source`) or any per-epoch metric (its best epoch). Lower is better except for throughput (`samples_per_s`)
unless the sweep file says otherwise for its objective. Trials without any value come after the ranked ones; failed
trials come last.

How the rows are shown (columns, the table, CSV, JSON, markdown, the one number formatter): leaderboard_format,
whose names this module re-exports.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from sweep_platform import names, tracking
from sweep_platform.errors import SweepNotFoundError
from sweep_platform.leaderboard_format import (  # noqa: F401 - re-exported: callers use lb.to_table, lb.format_value
    FORMATS, TABLE_WIDTH, Column, abbreviate, columns, default_metric, failed_lines, format_duration, format_param,
    format_value, is_fallback, is_rate, natural_width, ranked_by, render, test_metrics, to_csv, to_json, to_markdown,
    to_table, trainable_spec, typed)

MAX_METRICS = frozenset({"samples_per_s"})  # higher is better; everything else in design.md is lower-is-better
# A run without a state tag (logged by hand, or by an older binsweep): its MLflow status says it.
_STATUS_STATE = {"FINISHED": names.COMPLETED, "FAILED": names.FAILED, "KILLED": names.STOPPED,
                 "RUNNING": names.RUNNING, "SCHEDULED": names.RUNNING}
_STATE_ORDER = {names.COMPLETED: 0, names.STOPPED: 0, names.RUNNING: 1}


@dataclass(frozen=True)
class SweepRef:
    """One sweep's parent run."""

    name: str
    run_id: str
    experiment_id: str
    trainable: str
    start_time: int

    @classmethod
    def of(cls, run, trainable: str = "") -> SweepRef:
        """The sweep whose parent run is `run` (a searched MLflow run)."""
        tags = run.data.tags
        return cls(name=tags.get(names.TAG_SWEEP, run.info.run_name), run_id=run.info.run_id,
                   experiment_id=run.info.experiment_id, trainable=tags.get(names.TAG_TRAINABLE, trainable),
                   start_time=run.info.start_time or 0)

    def sweep_file(self) -> dict[str, Any]:
        """The sweep file the sweep ran (its `sweep.yaml` artifact) as a dict; {} when there is none or it cannot be
        read."""
        import os

        import yaml

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        try:
            with tempfile.TemporaryDirectory(prefix="binsweep-sweepyaml-") as d:
                path = tracking.client().download_artifacts(self.run_id, "sweep.yaml", d)
                data = yaml.safe_load(Path(path).read_text())
        except Exception:  # noqa: BLE001 - no or unreadable sweep.yaml: the callers fall back to the trainable's
            return {}
        return data if isinstance(data, dict) else {}

    def objective(self, sweep_file: dict[str, Any] | None = None) -> tuple[str, str]:
        """(metric, mode) the sweep optimised, from its `sweep.yaml` artifact; the trainable's primary otherwise."""
        data = self.sweep_file() if sweep_file is None else sweep_file
        try:
            objectives = data.get("objectives") or []
            if objectives:
                return str(objectives[0]["metric"]), str(objectives[0].get("mode") or "min")
            if data.get("metric"):
                return str(data["metric"]), str(data.get("mode") or "min")
        except (AttributeError, KeyError, TypeError, IndexError):  # a malformed file: the trainable's own metric
            pass
        return primary_metric(self.trainable)


def space_params(sweep_file: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(searched, log-scaled): the sweep file's parameters that are searched (choice, int or float; in the file's
    order) and those of them sampled on a log scale."""
    space = sweep_file.get("space") if isinstance(sweep_file, dict) else None
    searched, log = [], []
    for key, p in (space or {}).items() if isinstance(space, dict) else ():
        if isinstance(p, dict) and {"choice", "int", "float"} & set(p):
            searched.append(str(key))
            if p.get("log") is True:
                log.append(str(key))
    return searched, log


def primary_metric(trainable: str) -> tuple[str, str]:
    """The trainable's validation metric and its mode (the metric a sweep optimises unless it says otherwise)."""
    spec = trainable_spec(trainable)
    return (spec.primary_metric, spec.mode) if spec else ("val_loss", "min")


def metric_mode(metric: str) -> str:
    return "max" if metric in MAX_METRICS else "min"


def quoted(value: str, what: str) -> str:
    """`value` quoted for an MLflow filter string; a ValueError naming `what` when it would break out of it."""
    if "'" in value or "\\" in value:
        raise ValueError(f"{what} {value!r} contains a quote or backslash; sweep names use letters, digits, _ - .")
    return f"'{value}'"


def experiment_ids(c) -> list[str]:
    """Every experiment in the tracking store (sweeps, trainings and evaluations may each have their own)."""
    return [e.experiment_id for e in c.search_experiments()]


def search_all(c, experiments: list[str], filter_string: str, order_by: list[str] | None = None,
                max_results: int | None = None) -> list:
    """`search_runs` across pages (MLflow returns at most 1000 runs per call), up to `max_results` runs."""
    out, token = [], None
    while True:
        page = c.search_runs(experiments, filter_string=filter_string, order_by=order_by,
                             max_results=min(max_results or 1000, 1000), page_token=token)
        out.extend(page)
        token = page.token
        if not token or (max_results and len(out) >= max_results):
            return out[:max_results] if max_results else out


def find_sweep(name: str | None = None, trainable: str | None = None) -> SweepRef:
    """The parent run of sweep `name` (its latest, if the name was reused), or of the most recent sweep."""
    c = tracking.client()
    ids = experiment_ids(c)
    conds = [f"tags.`{names.TAG_ROLE}` = '{names.ROLE_SWEEP}'"]
    if name:
        conds.append(f"tags.`{names.TAG_SWEEP}` = {quoted(name, 'sweep name')}")
    if trainable:
        conds.append(f"tags.`{names.TAG_TRAINABLE}` = {quoted(trainable, 'trainable')}")
    runs = search_all(c, ids, " and ".join(conds), order_by=["attributes.start_time DESC"], max_results=1) if ids \
        else []
    if not runs:
        where = tracking.redact(tracking.tracking_uri())
        if name:
            raise SweepNotFoundError(f"no sweep named {name!r}{f' of trainable {trainable}' if trainable else ''} "
                                     f"in {where}{known_sweeps_hint(c, ids)}")
        raise SweepNotFoundError(f"no sweeps{f' of trainable {trainable}' if trainable else ''} in {where}: run "
                                 f"`binsweep sweep FILE.yaml` first")
    return SweepRef.of(runs[0], trainable or "")


def known_sweeps_hint(c, ids: list[str]) -> str:
    """The tail of a "no such sweep" message: the names of up to 200 sweeps in the store, or that there are none."""
    sweeps = search_all(c, ids, f"tags.`{names.TAG_ROLE}` = '{names.ROLE_SWEEP}'", max_results=200) if ids else []
    known = sorted({r.data.tags.get(names.TAG_SWEEP, "?") for r in sweeps})
    return f"; sweeps there: {', '.join(known)}" if known else "; there are no sweeps there yet"


def trial_runs(sweep: SweepRef) -> list:
    """The child runs of a sweep, oldest first."""
    c = tracking.client()
    return search_all(c, [sweep.experiment_id], f"tags.`{names.TAG_PARENT}` = '{sweep.run_id}'",
                      order_by=["attributes.start_time ASC"])


def run_state(run) -> str:
    return run.data.tags.get(names.TAG_STATE) or _STATUS_STATE.get(run.info.status, run.info.status.lower())


def best_over_epochs(run, metric: str, mode: str = "min") -> float | None:
    """The best per-epoch value of `metric` in the run's history (steps >= 1), or None."""
    if metric not in run.data.metrics:
        return None
    hist = [m.value for m in tracking.client().get_metric_history(run.info.run_id, metric)
            if tracking.is_number(m.value) and m.step >= 1]
    if not hist:  # logged only once, at step 0
        v = run.data.metrics[metric]
        return v if tracking.is_number(v) else None
    return min(hist) if mode == "min" else max(hist)


def metric_value(run, metric: str, mode: str | None = None) -> tuple[float | None, str | None]:
    """(value, where it came from) of `metric` for one trial run, with the validation fallback for test metrics."""
    mode = mode or metric_mode(metric)
    metrics = run.data.metrics
    if metric.startswith("test_") or metric in names.TRIAL_METRICS:
        v = metrics.get(metric)
        if tracking.is_number(v):
            return float(v), metric
        if metric.startswith("test_"):
            val = "val_" + metric[len("test_"):]
            v = best_over_epochs(run, val, mode)
            if v is not None:
                return float(v), f"{val} (best epoch)"
        return None, None
    v = best_over_epochs(run, metric, mode)
    return (float(v), f"{metric} (best epoch)") if v is not None else (None, None)


def key_params(runs: list, trainable: str, searched: Sequence[str] = ()) -> list[str]:
    """Parameters shown: the trainable's always-shown ones present in the runs, then the sweep's searched ones (in
    its file's order) present in the runs, then the others that vary, sorted."""
    all_keys = sorted({k for r in runs for k in r.data.params})
    spec = trainable_spec(trainable)
    first = [k for k in (spec.key_params if spec else ()) if k in all_keys]
    first += [k for k in searched if k in all_keys and k not in first]
    varying = []
    for k in all_keys:
        if k in first:
            continue
        values = {r.data.params.get(k) for r in runs}
        if len(values) > 1:  # differs, or set in some trials only (a conditional parameter)
            varying.append(k)
    return first + varying


def _wall_s(run) -> float | None:
    """The trial's wall time: its `wall_s` metric (the sweep callback's, over all its sessions), else end - start."""
    v = run.data.metrics.get("wall_s")
    if tracking.is_number(v):
        return float(v)
    start, end = run.info.start_time, run.info.end_time
    return (end - start) / 1000 if start and end and end >= start else None


def leaderboard(sweep: str | SweepRef | None = None, *, metric: str | None = None, top: int | None = None,
                trainable: str | None = None, compare_paper: bool = False, mode: str | None = None
                ) -> list[dict[str, Any]]:
    """One dict per trial of the sweep (default: the most recent sweep), best first, failed trials last.

    Ranked by `metric` (default: the sweep's objective, each trial's best validation epoch) in `mode` (min or max;
    default: the sweep file's mode for its objective, else the metric's usual direction).

    Keys: rank (None when unranked), sweep, trainable, trial, run_name, run_id, state, params (the key parameters),
    metric, mode, value, value_source, objective and objective_value (the sweep's metric and the trial's best epoch
    of it), metrics (every test_* metric of the run), epochs, wall_s, gpu_hours, error, dataset_fingerprint,
    searched_params and log_params (the sweep file's searched and log-scaled parameters), and with compare_paper the
    columns of the trainable's PaperReference (e.g. paper_ad_deg / paper_mse_ref for BAST, matched from the trial's
    params), when it has one.
    """
    ref = sweep if isinstance(sweep, SweepRef) else find_sweep(sweep, trainable)
    runs = trial_runs(ref)
    sweep_file = ref.sweep_file()
    objective, objective_mode = ref.objective(sweep_file)
    searched, log_params = space_params(sweep_file)
    metric = metric or objective
    mode = mode or (objective_mode if metric == objective else metric_mode(metric))
    keys = key_params(runs, ref.trainable, searched)
    paper = getattr(trainable_spec(ref.trainable), "paper", None) if compare_paper else None
    rows = []
    for run in runs:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        state = run_state(run)
        value, source = metric_value(run, metric, mode)
        if objective == metric:
            objective_value = value
        else:
            objective_value, _ = metric_value(run, objective, objective_mode)
        epochs = metrics.get("epoch")
        row: dict[str, Any] = {
            "rank": None,
            "sweep": ref.name,
            "trainable": ref.trainable,
            "trial": tags.get(names.TAG_TRIAL, run.info.run_name),
            "run_name": run.info.run_name,
            "run_id": run.info.run_id,
            "state": state,
            "params": {k: params.get(k) for k in keys},
            "metric": metric,
            "mode": mode,
            "value": value,
            "value_source": source,
            "objective": objective,
            "objective_value": objective_value,
            "metrics": {k: float(v) for k, v in sorted(metrics.items()) if k.startswith("test_") and tracking.is_number(v)},
            "epochs": int(epochs) if tracking.is_number(epochs) else None,
            "wall_s": _wall_s(run),
            "gpu_hours": float(metrics["gpu_hours"]) if tracking.is_number(metrics.get("gpu_hours")) else None,
            "error": tags.get(names.TAG_ERROR) if state == names.FAILED else None,
            "dataset_fingerprint": tags.get(names.TAG_DATASET),
            "searched_params": [k for k in searched if k in keys],
            "log_params": [k for k in log_params if k in keys],
        }
        if paper is not None:
            values = paper.lookup(params) or {}
            row.update({col: values.get(col) for col in paper.columns})
        rows.append(row)

    def order(row):
        failed = row["state"] == names.FAILED
        group = 3 if failed else (0 if row["value"] is not None else 2)
        v = row["value"] if row["value"] is not None else 0.0
        return (group, v if mode == "min" else -v, _STATE_ORDER.get(row["state"], 1), str(row["trial"]))

    rows.sort(key=order)
    rank = 0
    for row in rows:
        if row["state"] != names.FAILED and row["value"] is not None:
            rank += 1
            row["rank"] = rank
    return rows[:top] if top else rows
