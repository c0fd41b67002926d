"""The trials of a sweep, ranked, read back from MLflow (the layout in shared/design.md).

A sweep is one parent run (tag `binsweep.role` = sweep, `binsweep.sweep_id` = its name) with one child run per trial
(`mlflow.parentRunId`). `leaderboard` turns the children into one dict per trial: rank, run, the parameters that
matter (the trainable's `key_params`, then those that vary across the trials), the ranking metric, the trainable's
`test_metrics`, epochs, GPU hours, state and, for failed trials, the error. The format functions render those rows as
a rich table, CSV, JSON or markdown; `binsweep report` and `binsweep promote` reuse the same rows.

Everything trainable-specific comes from its TrainableSpec; a sweep of a trainable that is no longer installed still
lists, ranked by `test_loss` (or the best epoch of `val_loss`).

Ranking metric: by default the trainable's first test metric (e.g. `test_ad_deg`), falling back, for a trial without
one (stopped early, still running), to the best value over epochs of the matching validation metric
(`val_ad_deg`); the row says which (`value_source`). A per-epoch metric named explicitly (`--metric val_loss`) is
its best epoch. Lower is better except for throughput (`samples_per_s`). Trials without any value come after the
ranked ones; failed trials come last.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep_platform import names, tracking
from sweep_platform.errors import SweepNotFoundError

MAX_METRICS = frozenset({"samples_per_s"})  # higher is better; everything else in design.md is lower-is-better
FORMATS = ("table", "csv", "json", "markdown")
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

    def objective(self) -> tuple[str, str]:
        """(metric, mode) the sweep optimised, from its `sweep.yaml` artifact; the trainable's primary otherwise."""
        import os

        import yaml

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        c = tracking.client()
        try:
            with tempfile.TemporaryDirectory(prefix="binsweep-sweepyaml-") as d:
                data = yaml.safe_load(Path(c.download_artifacts(self.run_id, "sweep.yaml", d)).read_text()) or {}
            objectives = data.get("objectives") or []
            if objectives:
                return str(objectives[0]["metric"]), str(objectives[0].get("mode") or "min")
            if data.get("metric"):
                return str(data["metric"]), str(data.get("mode") or "min")
        except Exception:  # noqa: BLE001 - no or unreadable sweep.yaml: fall back to the trainable's own metric
            pass
        return primary_metric(self.trainable)


def trainable_spec(trainable: str):
    """The sweep's TrainableSpec, or None when that trainable is no longer installed (its sweeps still list)."""
    from trainables.registry import TrainableNotFoundError, get_trainable

    try:
        return get_trainable(trainable)
    except TrainableNotFoundError:
        return None


def primary_metric(trainable: str) -> tuple[str, str]:
    """The trainable's validation metric and its mode (the metric a sweep optimises unless it says otherwise)."""
    spec = trainable_spec(trainable)
    return (spec.primary_metric, spec.mode) if spec else ("val_loss", "min")


def test_metrics(trainable: str) -> tuple[str, ...]:
    """The test metrics every leaderboard of the trainable shows; the first ranks by default."""
    spec = trainable_spec(trainable)
    return spec.test_metrics if spec else ()


def default_metric(trainable: str) -> str:
    spec = trainable_spec(trainable)
    if spec is not None:
        return spec.default_test_metric
    val, _ = primary_metric(trainable)
    return "test_" + val[4:] if val.startswith("val_") else val


def metric_mode(metric: str) -> str:
    return "max" if metric in MAX_METRICS else "min"


def _quoted(value: str, what: str) -> str:
    if "'" in value or "\\" in value:
        raise ValueError(f"{what} {value!r} contains a quote or backslash; sweep names use letters, digits, _ - .")
    return f"'{value}'"


def _experiment_ids(c) -> list[str]:
    return [e.experiment_id for e in c.search_experiments()]


def _search_all(c, experiment_ids: list[str], filter_string: str, order_by: list[str] | None = None,
                max_results: int | None = None) -> list:
    out, token = [], None
    while True:
        page = c.search_runs(experiment_ids, filter_string=filter_string, order_by=order_by,
                             max_results=min(max_results or 1000, 1000), page_token=token)
        out.extend(page)
        token = page.token
        if not token or (max_results and len(out) >= max_results):
            return out[:max_results] if max_results else out


def find_sweep(name: str | None = None, trainable: str | None = None) -> SweepRef:
    """The parent run of sweep `name` (its latest, if the name was reused), or of the most recent sweep."""
    c = tracking.client()
    ids = _experiment_ids(c)
    conds = [f"tags.`{names.TAG_ROLE}` = '{names.ROLE_SWEEP}'"]
    if name:
        conds.append(f"tags.`{names.TAG_SWEEP}` = {_quoted(name, 'sweep name')}")
    if trainable:
        conds.append(f"tags.`{names.TAG_TRAINABLE}` = {_quoted(trainable, 'trainable')}")
    runs = _search_all(c, ids, " and ".join(conds), order_by=["attributes.start_time DESC"], max_results=1) if ids \
        else []
    if not runs:
        where = tracking.redact(tracking.tracking_uri())
        if name:
            sweeps = _search_all(c, ids, conds[0], max_results=200) if ids else []
            known = sorted({r.data.tags.get(names.TAG_SWEEP, "?") for r in sweeps})
            hint = f"; sweeps there: {', '.join(known)}" if known else "; there are no sweeps there yet"
            raise SweepNotFoundError(f"no sweep named {name!r}{f' of trainable {trainable}' if trainable else ''} "
                                     f"in {where}{hint}")
        raise SweepNotFoundError(f"no sweeps{f' of trainable {trainable}' if trainable else ''} in {where}: run "
                                 f"`binsweep sweep FILE.yaml` first")
    run = runs[0]
    tags = run.data.tags
    return SweepRef(name=tags.get(names.TAG_SWEEP, run.info.run_name), run_id=run.info.run_id,
                    experiment_id=run.info.experiment_id, trainable=tags.get(names.TAG_TRAINABLE, trainable or ""),
                    start_time=run.info.start_time or 0)


def trial_runs(sweep: SweepRef) -> list:
    """The child runs of a sweep, oldest first."""
    c = tracking.client()
    return _search_all(c, [sweep.experiment_id], f"tags.`{names.TAG_PARENT}` = '{sweep.run_id}'",
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


def key_params(runs: list, trainable: str) -> list[str]:
    """Parameters shown: the trainable's always-shown ones present in the runs, then those that vary, sorted."""
    all_keys = sorted({k for r in runs for k in r.data.params})
    spec = trainable_spec(trainable)
    first = [k for k in (spec.key_params if spec else ()) if k in all_keys]
    varying = []
    for k in all_keys:
        if k in first:
            continue
        values = {r.data.params.get(k) for r in runs}
        if len(values) > 1:  # differs, or set in some trials only (a conditional parameter)
            varying.append(k)
    return first + varying


def leaderboard(sweep: str | SweepRef | None = None, *, metric: str | None = None, top: int | None = None,
                trainable: str | None = None, compare_paper: bool = False, mode: str | None = None
                ) -> list[dict[str, Any]]:
    """One dict per trial of the sweep (default: the most recent sweep), best first, failed trials last.

    Keys: rank (None when unranked), sweep, trial, run_name, run_id, state, params (the key parameters), metric,
    value, value_source, metrics (every test_* metric of the run), epochs, gpu_hours, error, and with
    compare_paper the columns of the trainable's PaperReference (e.g. paper_ad_deg / paper_mse for BAST, matched
    from the trial's params), when it has one.
    `mode` (min or max) overrides the metric's usual direction.
    """
    ref = sweep if isinstance(sweep, SweepRef) else find_sweep(sweep, trainable)
    runs = trial_runs(ref)
    metric = metric or default_metric(ref.trainable)
    mode = mode or metric_mode(metric)
    keys = key_params(runs, ref.trainable)
    paper = getattr(trainable_spec(ref.trainable), "paper", None) if compare_paper else None
    rows = []
    for run in runs:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        state = run_state(run)
        value, source = metric_value(run, metric, mode)
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
            "value": value,
            "value_source": source,
            "metrics": {k: float(v) for k, v in sorted(metrics.items()) if k.startswith("test_") and tracking.is_number(v)},
            "epochs": int(epochs) if tracking.is_number(epochs) else None,
            "gpu_hours": float(metrics["gpu_hours"]) if tracking.is_number(metrics.get("gpu_hours")) else None,
            "error": tags.get(names.TAG_ERROR) if state == names.FAILED else None,
            "dataset_fingerprint": tags.get(names.TAG_DATASET),
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


# ------------------------------------------------------------------------------------------------------ formats


def format_value(v: Any) -> str:
    """A metric or parameter value as every table shows it: 4 significant digits, small numbers readable."""
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3g}"
    return str(v)


def columns(rows: list[dict]) -> list[tuple[str, Any]]:
    """(header, row -> value) for every column a rendering shows, in order."""
    if not rows:
        return []
    first = rows[0]
    metric = first["metric"]
    param_keys = list(first["params"])
    extra = [m for m in test_metrics(first.get("trainable", ""))
             if m != metric and any(m in r["metrics"] for r in rows)]
    cols: list[tuple[str, Any]] = [
        ("rank", lambda r: r["rank"]),
        ("trial", lambda r: r["trial"]),
        ("run", lambda r: f"{r['run_name']} ({r['run_id'][:8]})"),
    ]
    cols += [(k, lambda r, k=k: r["params"].get(k)) for k in param_keys]
    cols.append((metric, lambda r: r["value"]))
    if any(r["value_source"] not in (None, metric) for r in rows):
        cols.append(("from", lambda r: r["value_source"] if r["value_source"] != metric else ""))
    cols += [(m, lambda r, m=m: r["metrics"].get(m)) for m in extra]
    cols += [(k, lambda r, k=k: r.get(k)) for k in first if k.startswith("paper_")]
    cols += [("epochs", lambda r: r["epochs"]), ("gpu_hours", lambda r: r["gpu_hours"]),
             ("state", lambda r: r["state"]), ("error", lambda r: r["error"])]
    if not any(r["error"] for r in rows):
        cols.pop()
    return cols


def _short(text: Any, width: int = 100) -> str:
    s = " ".join(format_value(text).split())
    return s if len(s) <= width else s[: width - 1] + "…"


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    cols = columns(rows)
    writer.writerow([h for h, _ in cols])
    for r in rows:
        writer.writerow(["" if (v := get(r)) is None else (repr(v) if isinstance(v, float) else str(v))
                         for _, get in cols])
    return out.getvalue()


def to_json(rows: list[dict]) -> str:
    return json.dumps(rows, indent=2, default=str)


def to_markdown(rows: list[dict]) -> str:
    cols = columns(rows)
    if not cols:
        return "(no trials)\n"

    def cell(v) -> str:
        return _short(v).replace("|", "\\|")

    lines = ["| " + " | ".join(h for h, _ in cols) + " |",
             "|" + "|".join("---:" if numeric_column(h, rows[0]["metric"]) else "---" for h, _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(get(r)) for _, get in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _short_headers(headers: list[str]) -> dict[str, str]:
    """model.sharing -> sharing, loss.name -> loss, wherever the short name stays unique among the headers."""

    def short(h: str) -> str:
        if "." not in h:
            return h
        first, last = h.split(".")[0], h.rsplit(".", 1)[-1]
        return first if last == "name" else last

    shorts = [short(h) for h in headers]
    return {h: (s if shorts.count(s) == 1 else h) for h, s in zip(headers, shorts)}


def numeric_column(header: str, metric: str) -> bool:
    return header in ("rank", "epochs", "gpu_hours", metric) or header.startswith(("test_", "paper_"))


def to_table(rows: list[dict], title: str | None = None):
    """A rich Table for a terminal: short headers; run ids and errors left out (`failed_lines` lists the errors);
    a value from the best validation epoch is marked "(val)"."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    metric = rows[0]["metric"] if rows else ""
    cols = [(h, get) for h, get in columns(rows) if h not in ("run", "error", "from")]
    short = _short_headers([h for h, _ in cols])
    for h, _ in cols:
        table.add_column(short[h], justify="right" if numeric_column(h, metric) else "left", overflow="fold",
                         min_width=min(len(short[h]), 12))

    def cell(r, h, get) -> str:
        text = _short(get(r), 40)
        if h == metric and r["value"] is not None and r["value_source"] != metric:
            text += " (val)"
        return text

    for r in rows:
        table.add_row(*[cell(r, h, get) for h, get in cols], style="red" if r["state"] == names.FAILED else None)
    return table


def failed_lines(rows: list[dict]) -> list[str]:
    """`trial N (run): error` for every failed trial."""
    return [f"trial {r['trial']} ({r['run_name']}, {r['run_id'][:8]}): {r['error'] or 'no error recorded'}"
            for r in rows if r["state"] == names.FAILED]


def render(rows: list[dict], fmt: str) -> str:
    """csv, json or markdown as text (the table format is `to_table`)."""
    if fmt == "csv":
        return to_csv(rows)
    if fmt == "json":
        return to_json(rows)
    if fmt == "markdown":
        return to_markdown(rows)
    raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
