"""`binsweep evaluate MODEL --data DIR_OR_URI [--split test]`: the command, its terminal table and JSON output.

The work is in sweep_platform.evaluation; this module only reads the flags and prints. The table is built from the
metric names alone (`{split}_{metric}` overall, `{split}_{metric}.{group}` per environment, room or family), so it
shows whatever the model's trainable measures.
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from sweep_platform import cli_options as opt
from sweep_platform.errors import console

DataOpt = Annotated[Optional[str], typer.Option(
    "--data", help="Dataset folder or URI (s3://...) holding manifest.json: generated, imported (binsweep data "
    "import-nicnn) or held-out rooms (default: the dataset the model was trained on).")]
SplitOpt = Annotated[str, typer.Option("--split", help="Split to score, e.g. test, val or heldout.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="Torch device, e.g. cpu or cuda.")]
ExperimentOpt = Annotated[Optional[str], typer.Option(
    "--experiment", help="MLflow experiment of the evaluation run (default: the one the model was trained in; "
    "binsweep-<trainable> for a checkpoint folder).")]


def metric_table(metrics: dict[str, float], split: str) -> tuple[list[str], list[tuple[str, dict[str, float]]]]:
    """(metric names, [(group, {metric: value})]) from `{split}_{metric}[.{group}]` keys: the overall row ("all")
    first, then the groups in sorted order, families ("family-...") last."""
    head = f"{split}_"
    columns: list[str] = []
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        name = key[len(head):] if key.startswith(head) else key
        metric, _, group = name.partition(".")
        if metric not in columns:
            columns.append(metric)
        rows.setdefault(group or "all", {})[metric] = value
    order = sorted(rows, key=lambda g: (g != "all", g.startswith("family-"), g))
    return columns, [(g, rows[g]) for g in order]


def _cell(metric: str, value: float | None) -> str:
    if value is None:
        return "–"
    if metric.endswith("_rate"):
        return f"{value:.1%}"
    return f"{value:.3f}" if abs(value) >= 0.1 else f"{value:.4g}"


def evaluate(
    model: opt.ModelUriArg,
    data: DataOpt = None,
    split: SplitOpt = "test",
    device: DeviceOpt = "cpu",
    experiment: ExperimentOpt = None,
    log: Annotated[bool, typer.Option("--log/--no-log", help="Record an MLflow evaluation run (tags name the "
                                      "model, dataset and split; metrics also on the model's page).")] = True,
    format: opt.FormatOpt = opt.Format.table,
) -> None:
    """Score a trained model on any dataset's split: overall and per environment (per room, and per room family when
    the dataset lists rooms), per azimuth (CSV and plots), with the trainable's own metrics (a localizer: AD, MSE
    (eq. 2), MSE on the reference code's scale (eq. 2 / 2), front/back confusion rate). Logged as an MLflow
    evaluation run linked to the model; `binsweep report` builds the cross-environment table (the BAST paper's
    Table 3) from such runs.

    Examples: binsweep evaluate models:/bast@champion --data data/loc_heldout --split heldout;
    binsweep evaluate runs/ray/my-train/checkpoint_000009 --data s3://bucket/nicnn
    """
    from rich.table import Table

    from sweep_platform.evaluation import evaluate_model, run_link

    ev = evaluate_model(model, data, split, device=device, experiment=experiment, log=log)
    if format is opt.Format.json:
        typer.echo(json.dumps({"model": model, "trainable": ev.trainable, "data": ev.data_root, "split": ev.split,
                               "fingerprint": ev.fingerprint, "train_environments": ev.train_environments,
                               "metrics": ev.metrics, "run_id": ev.run_id}, indent=2))
        return
    columns, rows = metric_table(ev.metrics, split)
    table = Table(title=f"{model} ({ev.trainable}, trained on {ev.train_environments}) on {ev.data_root} [{split}]")
    table.add_column("group")
    for c in columns:
        table.add_column(c, justify="right")
    for group, values in rows:
        table.add_row(group, *(_cell(c, values.get(c)) for c in columns))
    console.print(table)
    if ev.run_id:
        console.print(f"evaluation run {ev.run_id}: {run_link(ev)}", highlight=False, soft_wrap=True, markup=False)
    console.print(f"files: {', '.join(ev.files)}", highlight=False, soft_wrap=True, markup=False)
