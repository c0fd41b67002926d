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
