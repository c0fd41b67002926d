"""Progress output: `binsweep sweep`'s per-trial-epoch lines off a terminal (ProgressTable fed by hand) and
`binsweep train`'s per-epoch lines off a terminal (a real small run, checked against what MLflow holds)."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

import pytest
from rich.console import Console

from sweep_platform import progress as progress_mod
from sweep_platform.progress import ProgressTable, TrainProgress
from sweep_platform.sweep_spec import SweepSpec


def _spec(**over) -> SweepSpec:
    data = {"name": "p", "trainable": "bast", "metric": "val_ad_deg", "mode": "min", "trials": 2,
            "objectives": [{"metric": "val_ad_deg", "mode": "min"}, {"metric": "params_m", "mode": "min"}],
            "scheduler": {"type": "asha", "grace_epochs": 1, "max_epochs": 3, "reduction_factor": 2},
            "base": {"train": {"epochs": 3}}, "space": {"train.lr": {"choice": [1e-3, 3e-3]}}}
    data.update(over)
    return SweepSpec.model_validate(data)


class FakeTrial:
    def __init__(self, trial_id, lr):
        self.trial_id, self.config, self.status = trial_id, {"train.lr": lr}, "RUNNING"
        self.last_result, self.metric_analysis = {}, {}

    def tune_update(self, result, metric):
        """What Tune does after the callbacks: last result and the per-metric min/max."""
        self.last_result = result
        a = self.metric_analysis.setdefault(metric, {"min": result[metric], "max": result[metric]})
        a["min"], a["max"] = min(a["min"], result[metric]), max(a["max"], result[metric])


def _table(monkeypatch, terminal: bool) -> tuple[ProgressTable, io.StringIO]:
    out = io.StringIO()
    monkeypatch.setattr("sweep_platform.errors.make_console",
                        lambda stderr=False: Console(file=out, width=200, force_terminal=terminal))
    table = ProgressTable("p", _spec())
    table.setup()
    return table, out


def _feed(table, trials, results):
    for trial in trials:
        table.on_trial_start(0, trials, trial)
    for trial_id, epoch, value in results:
        trial = next(t for t in trials if t.trial_id == trial_id)
        result = {"epoch": epoch, "val_ad_deg": value, "params_m": 0.05, "time_total_s": 3.0 * epoch}
        table.on_trial_result(0, trials, trial, result)
        table.on_step_end(0, trials)
        trial.tune_update(result, "val_ad_deg")


def test_sweep_off_a_terminal_prints_one_line_per_trial_epoch_with_best_so_far(monkeypatch):
    table, out = _table(monkeypatch, terminal=False)
    trials = [FakeTrial("a_00000", 1e-3), FakeTrial("a_00001", 3e-3)]
    _feed(table, trials, [("a_00000", 1, 40.0), ("a_00001", 1, 50.0), ("a_00000", 2, 30.0),
                          ("a_00000", 3, 35.0), ("a_00001", 2, 55.0)])
    trials[0].status = "TERMINATED"
    table.on_trial_complete(0, trials, trials[0])
    table.close(trials)
    lines = [line for line in out.getvalue().splitlines() if line.startswith("epoch")]
    assert lines == [
        "epoch     a_00000  1/3: val_ad_deg 40 (best 40)  params_m 0.05",
        "epoch     a_00001  1/3: val_ad_deg 50 (best 50)  params_m 0.05",
        "epoch     a_00000  2/3: val_ad_deg 30 (best 30)  params_m 0.05",
        "epoch     a_00000  3/3: val_ad_deg 35 (best 30)  params_m 0.05",
        "epoch     a_00001  2/3: val_ad_deg 55 (best 50)  params_m 0.05",
    ], out.getvalue()
    text = out.getvalue()
    assert text.index("start     a_00000") < text.index("epoch     a_00000  1/3")
    assert "completed at epoch 3: val_ad_deg 35 (best 30)" in text
    assert "\x1b[" not in text  # plain text: no colours, no cursor moves


def test_sweep_on_a_terminal_shows_epochs_in_the_live_table_not_as_lines(monkeypatch):
    table, out = _table(monkeypatch, terminal=True)
    trials = [FakeTrial("a_00000", 1e-3)]
    _feed(table, trials, [("a_00000", 1, 40.0), ("a_00000", 2, 30.0)])
    rendered = Console(file=io.StringIO(), width=200)
    rendered.print(table.table(trials))
    row = next(line for line in rendered.file.getvalue().splitlines() if "a_00000" in line)
    assert re.search(r"2/3 .*30 .*30", row), row  # epoch k/N, the current metric, the best
    table.close(trials)
    assert not re.search(r"^epoch ", out.getvalue(), re.M)


def test_train_progress_lines_off_a_terminal_use_the_final_tables_numbers():
    out = io.StringIO()
    spec = SimpleNamespace(primary_metric="val_ad_deg", reported_metrics=("val_mse",), mode="min")
    p = TrainProgress(spec, 3, Console(file=out, width=300))
    p._epoch({"epoch": 1, "train_loss": 1.234567, "val_loss": 0.5, "val_ad_deg": 41.23456, "val_mse": 0.01,
              "samples_per_s": 1234.5678, "epoch_s": 10.0, "lr": 1e-3})
    p._step(2, 5, 10)  # steps are for the bar only: off a terminal they print nothing
    p._epoch({"epoch": 2, "train_loss": 1.1, "val_ad_deg": 40.0, "epoch_s": 20.0})
    assert out.getvalue().splitlines() == [
        "epoch 1/3  train_loss 1.235  val_loss 0.5  val_ad_deg 41.23  val_mse 0.01  samples_per_s 1235  "
        "(10 s, ETA 20 s)",
        "epoch 2/3  train_loss 1.1  val_ad_deg 40  (20 s, ETA 15 s)",
    ]


# ---------------------------------------------------------------------------------------- a real `binsweep train`

from test_train import small_data  # noqa: E402,F401 - the same small dataset fixture as test_train.py


@pytest.mark.slow
def test_cli_train_prints_one_line_per_epoch_with_mlflows_numbers(small_data, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from sweep_platform import tracking
    from sweep_platform.cli import app
    from sweep_platform.training import metric_history
    from trainables.registry import get_trainable

    cfg = {"model": {"preset": "bast_tiny", "embed_dim": 32, "heads": 2, "dim_head": 16, "mlp_dim": 64},
           "data": {"root": str(small_data)}, "train": {"epochs": 3, "batch_size": 16, "lr": 1e-3}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["train", "bast", "--config", str(path), "--name", "progress-lines"])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if re.match(r"epoch \d+/3 ", line)]
    assert len(lines) == 3, res.output
    run = tracking.client().search_runs([tracking.ensure_experiment("binsweep-bast")],
                                        filter_string="tags.`binsweep.train_name` = 'progress-lines'")[0]
    history = metric_history(run.info.run_id)
    keys = progress_mod.train_keys(get_trainable("bast"), history)
    assert {"train_loss", "val_loss", "val_ad_deg", "samples_per_s"} <= set(keys)
    for line, h in zip(lines, history):
        assert line.startswith(f"epoch {int(h['epoch'])}/3  "), line
        for k in keys:  # the same numbers, formatted as in the final table
            assert f"  {k} {progress_mod.fmt(h[k])}" in line, (k, line, h)
    assert res.output.index(lines[-1]) < res.output.index("per-epoch metrics")  # printed while it ran
    assert not any("\x1b[" in line for line in lines)  # plain lines (Ray's own worker log lines have colours)
