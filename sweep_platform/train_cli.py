"""`binsweep train TRAINABLE --config FILE.yaml`: one Ray Train run, logged to MLflow as one run."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from sweep_platform import cli_options as opt
from sweep_platform.errors import console


def _summary_table(outcome, spec) -> Table:
    from sweep_platform.progress import fmt, train_keys

    table = Table(title="per-epoch metrics (rank 0, all-reduced)")
    primary = spec.primary_metric
    keys = train_keys(spec, outcome.history)  # the columns of the progress lines too
    table.add_column("epoch", justify="right")
    for k in keys:
        table.add_column(k, justify="right")
    sign = 1 if spec.mode == "min" else -1  # a missing value ranks last either way
    best = min(outcome.history, key=lambda h: sign * h.get(primary, sign * float("inf"))) if outcome.history else None
    for h in outcome.history:
        mark = " *" if h is best else ""
        table.add_row(f"{int(h['epoch'])}{mark}", *[fmt(h[k]) if k in h else "" for k in keys])
    return table


def train(
    trainable: opt.TrainableArg,
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config of the trainable (model, loss, train, "
                                         "data sections); missing keys take their defaults.")],
    workers: Annotated[int, typer.Option(help="Ray Train workers (DDP ranks), e.g. 2.", min=1)] = 1,
    gpus_per_worker: Annotated[float, typer.Option(help="GPUs per worker; 0 trains on CPU.", min=0)] = 0,
    cpus_per_worker: Annotated[float, typer.Option(help="CPUs per worker (torch threads).", min=0.1)] = 1,
    name: Annotated[Optional[str], typer.Option(help="Run name; rerunning an interrupted name resumes it from its "
                                                 "last checkpoint (default: TRAINABLE-TIMESTAMP).")] = None,
    max_failures: opt.MaxFailuresOpt = 2,
    experiment: Annotated[Optional[str], typer.Option(help="MLflow experiment (default binsweep-TRAINABLE).")] = None,
) -> None:
    """Train once on Ray Train (local Ray, or the cluster in RAY_ADDRESS) and log the run to MLflow."""
    from sweep_platform import configfile, tracking
    from sweep_platform.progress import TrainProgress
    from sweep_platform.training import Resources, run_training
    from trainables.registry import get_trainable

    spec = get_trainable(trainable)
    cfg = configfile.load_config(spec.config_type, config)
    run_name = name or f"{trainable}-{time.strftime('%Y%m%d-%H%M%S')}"
    resources = Resources(workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker)
    console.print(f"training [bold]{trainable}[/bold] run [bold]{run_name}[/bold]: {workers} worker(s), "
                  f"{gpus_per_worker:g} GPU(s) each; MLflow {tracking.redact(tracking.tracking_uri())}",
                  highlight=False)
    for part, how in tracking.initialisation(spec, cfg).items():  # e.g. that a branch starts from random weights
        console.print(f"  {part}: {how}", highlight=False, markup=False)
    outcome = run_training(trainable, cfg, name=run_name, resources=resources, max_failures=max_failures,
                           experiment=experiment, fault=os.environ.get("BINSWEEP_FAULT"),
                           progress=TrainProgress(spec, getattr(getattr(cfg, "train", None), "epochs", None), console))
    console.print(_summary_table(outcome, spec))
    if outcome.evaluation is not None:
        console.print(outcome.evaluation.summary, highlight=False)
    console.print(f"best checkpoint: {outcome.best_checkpoint}", highlight=False)
    console.print(f"MLflow run: {outcome.run_id}  ({outcome.wall_s:.0f} s)", highlight=False)
