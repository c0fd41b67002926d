"""`binsweep watch`: a sweep's live table, read from the MLflow tracking server alone.

Everything comes from MLflow (design.md's layout): the parent run (its binsweep.state, its `trials` param, its
sweep.yaml), the child runs (one `search_runs` per refresh: state tags, params, latest metrics) and, for the best
value of the sweep's metric, a trial's metric history, fetched only when its epoch moved since the last refresh (a
finished trial's best is fetched once, then kept). So it works from a laptop against a cluster's MLflow server
(MLFLOW_TRACKING_URI), without Ray.

One row per trial: trial id, state, epoch k/N (N: the trial's `train.epochs` param when it has one), the sweep
metric's last and best values, the trainable's test metric when logged, the key parameters (as many as fit 120
columns); above it a line with the sweep's name, state, trials done/running/failed and the best so far. Numbers go
through the leaderboard's one formatter; `--format json` keeps full precision.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import typer

from sweep_platform import cli_options as opt
from sweep_platform import names
from sweep_platform.errors import SweepNotFoundError

if TYPE_CHECKING:
    from sweep_platform.leaderboard import SweepRef

FINAL_SWEEP_STATES = (names.SWEEP_FINISHED, names.SWEEP_FAILED, names.SWEEP_INTERRUPTED)
_PARENT_STATUS = {"FINISHED": names.SWEEP_FINISHED, "FAILED": names.SWEEP_FAILED, "KILLED": names.SWEEP_INTERRUPTED,
                  "RUNNING": names.RUNNING, "SCHEDULED": names.RUNNING}
EPOCHS_PARAM = "train.epochs"


def find_by_job(job_id: str) -> SweepRef:
    """The parent run of the sweep that Ray job `job_id` ran: by its binsweep.ray_job_id tag, else by the submission
    id convention of `binsweep submit` (binsweep-NAME for a new sweep NAME)."""
    from sweep_platform import leaderboard as lb
    from sweep_platform import tracking

    c = tracking.client()
    ids = lb.experiment_ids(c)
    cond = (f"tags.`{names.TAG_ROLE}` = '{names.ROLE_SWEEP}' and "
            f"tags.`{names.TAG_RAY_JOB}` = {lb.quoted(job_id, 'job id')}")
    runs = lb.search_all(c, ids, cond, order_by=["attributes.start_time DESC"], max_results=1) if ids else []
    if runs:
        return lb.SweepRef.of(runs[0])
    prefix = "binsweep-"
    if job_id.startswith(prefix) and len(job_id) > len(prefix):
        try:
            return lb.find_sweep(job_id[len(prefix):])
        except SweepNotFoundError:
            pass
    raise SweepNotFoundError(f"no sweep ran as Ray job {job_id!r} in {tracking.redact(tracking.tracking_uri())} "
                             f"(no parent run tagged {names.TAG_RAY_JOB}={job_id}){lb.known_sweeps_hint(c, ids)}")


def sweep_state(parent) -> str:
    """The parent run's binsweep.state; its MLflow status when it has none."""
    return parent.data.tags.get(names.TAG_STATE) or _PARENT_STATUS.get(parent.info.status, parent.info.status.lower())


def _int(v: Any) -> int | None:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


@dataclass
class Watcher:
    """Reads a sweep's state from MLflow, one `snapshot()` per refresh; keeps what does not change between them
    (the sweep file, the objective, the best values of trials whose epoch has not moved)."""

    ref: SweepRef
    _best: dict[str, tuple[Any, float | None]] = field(default_factory=dict)  # run id -> (epoch, best value)
    _setup: dict[str, Any] | None = None

    def setup(self) -> dict[str, Any]:
        from sweep_platform import leaderboard as lb

        if self._setup is None:
            sweep_file = self.ref.sweep_file()
            metric, mode = self.ref.objective(sweep_file)
            searched, log_params = lb.space_params(sweep_file)
            test = lb.default_metric(self.ref.trainable) if self.ref.trainable else None
            self._setup = {"metric": metric, "mode": mode, "searched": searched, "log_params": log_params,
                           "test_metric": test if test != metric else None}
        return self._setup

    def _best_of(self, run, metric: str, mode: str) -> float | None:
        """The best per-epoch value, from the history only when the trial's epoch (or state) moved."""
        from sweep_platform import leaderboard as lb

        key = (run.data.metrics.get("epoch"), lb.run_state(run), run.data.metrics.get(metric))
        cached = self._best.get(run.info.run_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        value = lb.best_over_epochs(run, metric, mode)
        self._best[run.info.run_id] = (key, value)
        return value

    def snapshot(self) -> dict[str, Any]:
        """The sweep as MLflow holds it now: full precision, JSON-ready."""
        from sweep_platform import leaderboard as lb
        from sweep_platform import tracking

        s = self.setup()
        metric, mode = s["metric"], s["mode"]
        c = tracking.client()
        parent = c.get_run(self.ref.run_id)
        runs = lb.trial_runs(self.ref)  # one search_runs (paged past 1000 trials)
        keys = lb.key_params(runs, self.ref.trainable, s["searched"])
        trials = []
        for run in runs:
            m, params, tags = run.data.metrics, run.data.params, run.data.tags
            state = lb.run_state(run)
            last = m.get(metric)
            test = m.get(s["test_metric"]) if s["test_metric"] else None
            trials.append({
                "trial": tags.get(names.TAG_TRIAL, run.info.run_name),
                "run_id": run.info.run_id,
                "run_name": run.info.run_name,
                "state": state,
                "epoch": _int(m.get("epoch")),
                "epochs": _int(params.get(EPOCHS_PARAM)),
                "last": float(last) if tracking.is_number(last) else None,
                "best": self._best_of(run, metric, mode),
                "test": float(test) if tracking.is_number(test) else None,
                "params": {k: params.get(k) for k in keys},
                "error": tags.get(names.TAG_ERROR) if state == names.FAILED else None,
            })
        done = sum(t["state"] in names.SUCCEEDED_STATES for t in trials)
        running = sum(t["state"] == names.RUNNING for t in trials)
        failed = sum(t["state"] == names.FAILED for t in trials)
        scored = [t for t in trials if t["best"] is not None and t["state"] != names.FAILED]
        best = None
        if scored:
            b = (min if mode == "min" else max)(scored, key=lambda t: t["best"])
            best = {"trial": b["trial"], "run_id": b["run_id"], "value": b["best"]}
        return {
            "sweep": self.ref.name,
            "trainable": self.ref.trainable,
            "run_id": self.ref.run_id,
            "state": sweep_state(parent),
            "planned_trials": _int(parent.data.params.get("trials")),
            "metric": metric,
            "mode": mode,
            "test_metric": s["test_metric"],
            "log_params": [k for k in s["log_params"] if k in keys],
            "counts": {"trials": len(trials), "done": done, "running": running, "failed": failed,
                       "other": len(trials) - done - running - failed},
            "best": best,
            "trials": trials,
        }


def is_final(snap: dict[str, Any]) -> bool:
    return snap["state"] in FINAL_SWEEP_STATES


def to_json(snap: dict[str, Any]) -> str:
    return json.dumps(snap, indent=2, default=str)


def header(snap: dict[str, Any]) -> str:
    """sweep NAME (bast): running | trials 2 done, 1 running, 0 failed of 8 | best val_ad_deg 12.3 (trial 0002)"""
    from sweep_platform import leaderboard as lb

    n = snap["counts"]
    of = f" of {snap['planned_trials']}" if snap["planned_trials"] else ""
    other = f", {n['other']} interrupted" if n["other"] else ""
    best = snap["best"]
    best_text = (f"best {snap['metric']} {lb.format_value(best['value'], snap['metric'])} (trial {best['trial']})"
                 if best else f"best {snap['metric']}: none yet")
    trainable = f" ({snap['trainable']})" if snap["trainable"] else ""
    return (f"sweep {snap['sweep']}{trainable}: {snap['state']} | trials {n['done']} done, {n['running']} running, "
            f"{n['failed']} failed{other}{of} | {best_text}")


def _epoch_text(t: dict[str, Any]) -> str:
    if t["epoch"] is None:
        return f"-/{t['epochs']}" if t["epochs"] else ""
    return f"{t['epoch']}/{t['epochs']}" if t["epochs"] else str(t["epoch"])


def to_table(snap: dict[str, Any], width: int = 120):
    """A rich Table that fits `width` columns: the fixed columns, then as many key parameters as fit."""
    from sweep_platform import leaderboard as lb

    from rich import box
    from rich.table import Table

    metric, test = snap["metric"], snap["test_metric"]
    fixed: list[tuple[str, Callable[[dict], str], bool]] = [
        ("trial", lambda t: str(t["trial"]), False),
        ("state", lambda t: t["state"], False),
        ("epoch", _epoch_text, True),
        (f"{metric} last", lambda t: lb.format_value(t["last"], metric), True),
        (f"{metric} best", lambda t: lb.format_value(t["best"], metric), True),
    ]
    if test and any(t["test"] is not None for t in snap["trials"]):
        fixed.append((test, lambda t: lb.format_value(t["test"], test), True))
    params = list(snap["trials"][0]["params"]) if snap["trials"] else []
    log = snap.get("log_params") or ()

    def build(shown: list[str]) -> Table:
        hidden = len(params) - len(shown)
        caption = f"{hidden} more parameter{'s' if hidden > 1 else ''} not shown" if hidden else None
        table = Table(caption=caption, caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                      padding=(0, 1, 0, 0))
        for title, _, numeric in fixed:
            table.add_column(title, justify="right" if numeric else "left", overflow="fold")
        for k in shown:
            last = k.rsplit(".", 1)[-1]
            table.add_column(lb.abbreviate(k.split(".")[0] if last == "name" else last, 12), overflow="fold")
        for t in snap["trials"]:
            cells = [fn(t) for _, fn, _ in fixed]
            cells += [lb.format_param(k, t["params"].get(k), log)[:12] for k in shown]
            table.add_row(*cells, style="red" if t["state"] == names.FAILED else None)
        return table

    shown: list[str] = []
    table = build(shown)
    for k in params:
        candidate = build(shown + [k])
        if lb.natural_width(candidate) > width:
            break
        shown.append(k)
        table = candidate
    return table


def view(snap: dict[str, Any], width: int = 120):
    """The header line above the table, for a console."""
    from rich.console import Group
    from rich.text import Text

    return Group(Text(header(snap)), to_table(snap, width))


def watch(ref: SweepRef, *, interval: float, once: bool, show: Callable[[dict[str, Any]], None],
          sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Show the sweep's snapshot every `interval` seconds until its parent run's state is final (or once); returns
    the last snapshot."""
    w = Watcher(ref)
    while True:
        snap = w.snapshot()
        show(snap)
        if once or is_final(snap):
            return snap
        sleep(interval)


# ------------------------------------------------------------------------------------------------------ command

def watch_command(
    name: Annotated[Optional[str], typer.Argument(help="Sweep name, e.g. bast_smoke-1122-153012.")] = None,
    job: Annotated[Optional[str], typer.Option(
        "--job", metavar="JOB_ID", help="Instead of NAME: the Ray job that runs the sweep (its submission id, e.g. "
        "binsweep-smoke1 from `binsweep submit`), found by the parent run's binsweep.ray_job_id tag.")] = None,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.", min=0.5)] = 5.0,
    once: Annotated[bool, typer.Option("--once", help="Print the table once and exit.")] = False,
    format: opt.FormatOpt = opt.Format.table,
) -> None:
    """Follow a sweep's trials live from the MLflow tracking server alone (MLFLOW_TRACKING_URI; no Ray needed):
    state, epoch k/N, the sweep metric's last and best values, the test metric, key parameters, refreshed every
    --interval seconds until the sweep is finished, failed or interrupted.

    Exit 0 when the sweep ends finished or interrupted (or with --once), 1 when it failed. With --format json: the
    snapshot at full precision (one JSON document per line per change, without --once).

    Examples: binsweep watch smoke1; binsweep watch --job binsweep-smoke1; binsweep watch smoke1 --once -f json
    """
    from sweep_platform import leaderboard as lb

    from sweep_platform.errors import RUN_ERROR, USAGE_ERROR, console, err_console

    if (name is None) == (job is None):
        err_console.print("error: give a sweep NAME or --job JOB_ID (one of them)", highlight=False)
        raise typer.Exit(USAGE_ERROR)
    ref = find_by_job(job) if job else lb.find_sweep(name)
    as_json = format is opt.Format.json
    if once:
        snap = watch(ref, interval=interval, once=True, show=lambda s: None)
        if as_json:
            typer.echo(to_json(snap))
        else:
            console.print(view(snap))
        return
    last: list[str] = []

    def changed(snap: dict[str, Any]) -> bool:
        text = json.dumps(snap, sort_keys=True, default=str)
        if last and last[0] == text:
            return False
        last[:] = [text]
        return True

    if as_json:
        snap = watch(ref, interval=interval, once=False,
                     show=lambda s: typer.echo(json.dumps(s, default=str)) if changed(s) else None)
    elif console.is_terminal:
        from rich.live import Live

        with Live(console=console, auto_refresh=False) as live:
            snap = watch(ref, interval=interval, once=False, show=lambda s: live.update(view(s), refresh=True))
    else:  # a pipe, a log: the table each time it changes
        snap = watch(ref, interval=interval, once=False, show=lambda s: console.print(view(s)) if changed(s)
                     else None)
    if snap["state"] == names.SWEEP_FAILED:
        raise typer.Exit(RUN_ERROR)
