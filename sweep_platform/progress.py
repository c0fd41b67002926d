"""The sweep's live progress: a rich table of its trials on a terminal, one line per trial event everywhere.

A Tune Callback on the sweep driver. Rendering reads Tune's own Trial objects, so nothing needs restoring after
`binsweep resume`.
"""

from __future__ import annotations

import time

from ray.tune import Callback

from sweep_platform import names
from sweep_platform.leaderboard import format_value
from sweep_platform.sweep_spec import SweepSpec
from sweep_platform.trial import end_state, trial_epochs, trial_error

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
        DISPLAYS.add(self)

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
            return names.INTERRUPTED  # Ctrl-C: Tune marks the trials it stops TERMINATED without completing them
        if status == "TERMINATED":
            return end_state(self.spec, trial.config, int((trial.last_result or {}).get("epoch", 0)))
        return {"RUNNING": names.RUNNING, "ERROR": names.FAILED, "PENDING": "pending",
                "PAUSED": "paused"}.get(status, status)

    def table(self, trials):
        from rich.table import Table

        metric, extra, rt = self.spec.metric, self.spec.metrics[1:], self._runtime
        t = Table(title=f"sweep {self.sweep_name}: {self.spec.trainable}, {metric} ({self.spec.mode})",
                  title_justify="left", caption_justify="left")
        for col in ("trial", "state", *[s for _, s in self._searched()], "epoch", metric, "best", *extra, "time"):
            t.add_column(col, justify="left" if col in ("trial", "state") else "right", no_wrap=True)
        colours = {names.COMPLETED: "green", names.STOPPED: "yellow", names.FAILED: "red", names.RUNNING: "cyan",
                   names.INTERRUPTED: "magenta"}
        counts: dict[str, int] = {}
        for trial in trials:
            res = trial.last_result or {}
            state = self._state(trial)
            counts[state] = counts.get(state, 0) + 1
            total = rt["epochs"].setdefault(trial.trial_id, trial_epochs(self.spec, trial.config))
            epoch = f"{int(res['epoch'])}" if "epoch" in res else "-"
            t.add_row(
                trial.trial_id, f"[{colours.get(state, 'white')}]{state}[/]",
                *[format_value(trial.config.get(k)) for k, _ in self._searched()], f"{epoch}/{total}",
                format_value(res.get(metric)), format_value(self._best(trial)), *[format_value(res.get(m)) for m in extra],
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
        return " ".join(f"{s}={format_value(trial.config.get(k))}" for k, s in self._searched() if k in trial.config)

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

    def on_trial_result(self, iteration, trials, trial, result, **info):
        """Off a terminal (a pipe, CI, `ray job logs`) one line per trial epoch, so the log reads like a log; on a
        terminal the live table already shows each trial's epoch, metric and best, so nothing is printed."""
        rt = self._runtime
        if rt is None or rt["live"] is not None or "epoch" not in result:
            return
        self._print(epoch_line(self, trial, result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self._runtime is not None:
            self._runtime["ended"].add(trial.trial_id)
        res = trial.last_result or {}
        epoch = int(res.get("epoch", 0))
        state = end_state(self.spec, trial.config, epoch)
        how = "stopped by ASHA" if state == names.STOPPED else "completed"
        self._print(f"[{'yellow' if state == names.STOPPED else 'green'}]{state:<9}[/] {trial.trial_id}  {how} at "
                    f"epoch {epoch}: {self.spec.metric} {format_value(res.get(self.spec.metric))} (best {format_value(self._best(trial))})")

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
        DISPLAYS.discard(self)


DISPLAYS: set[ProgressTable] = set()  # open live tables, closed by the driver however the sweep ends


# `binsweep sweep` off a terminal: one line per trial epoch -----------------------------------------------------------

def _better(a, b, mode: str):
    """The better of two metric values (a missing or non-numeric one loses)."""
    from sweep_platform.tracking import is_number

    if not is_number(a):
        return b if is_number(b) else None
    if not is_number(b):
        return a
    return min(a, b) if mode == "min" else max(a, b)


def epoch_line(table: ProgressTable, trial, result: dict) -> str:
    """`epoch     TRIAL  k/N: METRIC v (best b)  extra v ...`; best so far includes this result (Tune updates its
    own per-trial min/max after the callbacks have run)."""
    spec, rt = table.spec, table._runtime
    total = rt["epochs"].setdefault(trial.trial_id, trial_epochs(spec, trial.config))
    value = result.get(spec.metric)
    best = _better(table._best(trial), value, spec.mode)
    extra = "".join(f"  {m} {format_value(result.get(m))}" for m in spec.metrics[1:] if m in result)
    return (f"[blue]epoch[/]     {trial.trial_id}  {int(result['epoch'])}/{total}: {spec.metric} "
            f"{format_value(value)} (best {format_value(best)}){extra}")



# `binsweep train`: progress from the workers -------------------------------------------------------------------------
#
# How progress travels. Epoch lines: `EpochForwarder`, a Ray Train UserCallback, runs on the Train controller and gets
# every epoch's reported (all-reduced, rank 0) metrics in `after_report`, right after MlflowEpochLogger logged them;
# it posts them to `ProgressChannel`, a tiny actor (0 CPUs) the driver created. Step bar: rank 0's session posts
# (epoch, step, steps) to the same actor, at most every STEP_POST_S seconds and fire-and-forget (`.remote()` without
# `ray.get`), so a step never waits for it: one small actor call every few seconds against steps of milliseconds.
# The driver drains the actor twice a second on a thread while `trainer.fit()` blocks. Why an actor rather than Ray
# Train's own reports for steps: a `ray.train.report` per few steps would be a checkpointing/metrics round trip
# through the controller (and land in MLflow and the checkpoint ranking); why not files: workers may be on other
# nodes. The controller's post is synchronous (`ray.get`, once per epoch), so when `fit()` returns every epoch's line
# is in the channel.

STEP_POST_S = 2.0  # rank 0 posts its step at most this often


class ProgressChannel:
    """The body of the actor that carries progress from the workers and the controller to the driver."""

    def __init__(self):
        self._items: list[dict] = []

    def post(self, item: dict) -> None:
        self._items.append(item)

    def drain(self) -> list[dict]:
        items, self._items = self._items, []
        return items


def _user_callback():
    from ray.train import UserCallback

    return UserCallback


class EpochForwarder(_user_callback()):
    """On the Train controller: every reported epoch's metrics to the driver's ProgressChannel."""

    def __init__(self, channel):
        self.channel = channel

    def after_report(self, run_context, metrics, checkpoint):
        import ray

        m = {k: v for k, v in metrics[0].items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        try:
            ray.get(self.channel.post.remote({"kind": "epoch", "metrics": m}), timeout=10)
        except Exception:  # noqa: BLE001 - a progress display never fails a run
            pass


def train_keys(spec, rows: list[dict]) -> list[str]:
    """The per-epoch metrics `binsweep train` shows, in the final table and in the progress lines alike."""
    wanted = dict.fromkeys(("train_loss", "val_loss", spec.primary_metric, *spec.reported_metrics, "samples_per_s"))
    return [k for k in wanted if any(k in r for r in rows)]


def fmt(value) -> str:
    """A metric as the final table writes it."""
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    m, s = divmod(seconds, 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


class TrainProgress:
    """`binsweep train`'s progress on the driver. On a terminal: a rich Progress bar of the current epoch's steps
    (epoch k/N, steps done, rate, ETA of the run) with one line per finished epoch above it. Off a terminal: only the
    epoch lines, `epoch k/N  train_loss ...  (epoch_s, ETA)`, with the numbers of the final table (`.4g`).

    Used by `run_training(progress=...)`: `start()` makes the channel (Ray must be up), `channel` goes to the workers
    and `callback()` to the Train controller; `stop()` drains what is left and removes the actor."""

    POLL_S = 0.5

    def __init__(self, spec, epochs: int | None, console):
        self.spec, self.epochs, self.console = spec, epochs, console
        self.channel = None
        self._thread = None
        self._stop = None
        self._bar = None
        self._task = None
        self._seen: set[int] = set()
        self._epoch_s: list[float] = []
        self._last_step: tuple[float, int, int] | None = None  # (time, epoch, step) of the last step update
        self._rate: float | None = None  # steps per second
        self.lines: list[str] = []

    def start(self) -> None:
        import threading

        import ray

        self.channel = ray.remote(num_cpus=0)(ProgressChannel).remote()
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("steps  {task.fields[rate]}  {task.fields[eta]}"),
                                 console=self.console, transient=True)
            self._task = self._bar.add_task("train", total=None, epoch=f"-/{self.epochs or '?'}", rate="", eta="")
            self._bar.start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="binsweep-progress", daemon=True)
        self._thread.start()

    def callback(self) -> EpochForwarder:
        return EpochForwarder(self.channel)

    def stop(self) -> None:
        import ray

        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None
        if self.channel is not None:
            self._poll()
            try:
                ray.kill(self.channel)
            except Exception:  # noqa: BLE001
                pass
            self.channel = None
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # ---------------------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.POLL_S):
            self._poll()

    def _poll(self) -> None:
        import ray

        try:
            items = ray.get(self.channel.drain.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - the actor gone (Ray shutting down): nothing more to show
            return
        for item in items:
            if item.get("kind") == "epoch":
                self._epoch(item["metrics"])
            elif item.get("kind") == "step":
                self._step(int(item["epoch"]), int(item["step"]), int(item["steps"]))

    def _eta(self, epochs_left: float) -> str:
        if not self._epoch_s or epochs_left <= 0:
            return ""
        per_epoch = sum(self._epoch_s[-3:]) / len(self._epoch_s[-3:])
        return f"ETA {_duration(per_epoch * epochs_left)}"

    def _epoch(self, m: dict) -> None:
        epoch = int(m.get("epoch", 0))
        if "epoch_s" in m:
            self._epoch_s.append(float(m["epoch_s"]))
        again = "  (again, after a restore)" if epoch in self._seen else ""
        self._seen.add(epoch)
        metrics = "  ".join(f"{k} {fmt(m[k])}" for k in train_keys(self.spec, [m]))
        timing = [_duration(float(m["epoch_s"]))] if "epoch_s" in m else []
        if self.epochs:
            eta = self._eta(self.epochs - epoch)
            timing += [eta] if eta else []
        line = f"epoch {epoch}/{self.epochs or '?'}  {metrics}" + (f"  ({', '.join(timing)})" if timing else "") + again
        self.lines.append(line)
        self.console.print(line, highlight=False, markup=False, soft_wrap=True)

    def _step(self, epoch: int, step: int, steps: int) -> None:
        import time as _time

        now = _time.monotonic()
        if self._last_step is not None and self._last_step[1] == epoch and step > self._last_step[2]:
            rate = (step - self._last_step[2]) / max(now - self._last_step[0], 1e-9)
            self._rate = rate if self._rate is None else 0.5 * self._rate + 0.5 * rate
        self._last_step = (now, epoch, step)
        if self._bar is None:
            return
        eta = ""
        if self._rate and self.epochs:
            eta = f"ETA {_duration(((self.epochs - epoch) * steps + steps - step) / self._rate)}"
        self._bar.update(self._task, completed=step, total=steps, epoch=f"{epoch}/{self.epochs or '?'}",
                         rate=f"{self._rate:.1f}/s" if self._rate else "", eta=eta)
