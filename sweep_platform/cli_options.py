"""Options and arguments that several commands share, defined once so that their flags and help agree everywhere.

A command declares `format: FormatOpt = Format.table`; the default stays with the command, the rest is here.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


class Format(str, Enum):
    table = "table"
    json = "json"


class RankingFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    markdown = "markdown"


FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="table (to read) or json (for scripts).")]
RankingFormatOpt = Annotated[RankingFormat, typer.Option("--format", "-f", help="table (to read), or csv, json or "
                                                                              "markdown (for scripts and reports).")]

SweepFileArg = Annotated[Path, typer.Argument(help="Sweep file (YAML), e.g. search_spaces/bast_smoke.yaml; format in "
                                              "search_spaces/README.md.")]
SweepNameOpt = Annotated[Optional[str], typer.Option(
    "--name", help="Name of the new sweep: the Ray experiment, the Optuna study and the MLflow parent run (default: "
    "the file's name plus a timestamp, e.g. bast_smoke-1122-153012).")]
SweepOpt = Annotated[Optional[str], typer.Option("--sweep", help="Sweep name (default: the most recent sweep).")]

TrainableArg = Annotated[str, typer.Argument(help="Installed trainable, e.g. bast (`binsweep trainables` lists them).")]
TrainableOpt = Annotated[Optional[str], typer.Option("--trainable", help="Only sweeps of this trainable, e.g. bast.")]
ModelNameOpt = Annotated[Optional[str], typer.Option(
    "--model-name", help="Registered model name (default: the sweep's trainable, e.g. bast).")]
ModelUriArg = Annotated[str, typer.Argument(help="Model: models:/bast@champion, models:/bast/3, runs:/RUN_ID/model "
                                            "or a checkpoint folder.")]

SweepMaxFailuresOpt = Annotated[Optional[int], typer.Option(
    "--max-failures", min=0, help="Times a trial is retried from its last checkpoint when it fails or its process or "
    "node dies (overrides the sweep file's max_failures, default 1).")]
ConcurrencyOpt = Annotated[Optional[int], typer.Option(
    "--concurrency", min=1, help="Trials at once (overrides the sweep file's concurrency; its default `auto` counts "
    "what the cluster can grow to).")]

MaxFailuresOpt = Annotated[int, typer.Option(
    "--max-failures", min=0, help="Worker failures a Train run recovers from (restarting from its last checkpoint) "
    "before it fails, e.g. 2 on spot instances. A NaN loss fails it whatever this says.")]

# -- binsweep submit: settings sent in the job's environment only when given (the cluster's own apply otherwise)
JobMlflowUriOpt = Annotated[Optional[str], typer.Option(
    "--mlflow-uri", metavar="URI", help="MLflow tracking server for the job (MLFLOW_TRACKING_URI), as the cluster's "
    "nodes reach it, e.g. http://mlflow.internal:5000; no password in it (default: the cluster's own).")]
JobRayStorageOpt = Annotated[Optional[str], typer.Option(
    "--ray-storage", metavar="URI", help="Ray storage for Tune state and checkpoints (BINSWEEP_RAY_STORAGE), e.g. "
    "s3://bucket/ray or a shared path (default: the cluster's own).")]
JobOptunaStorageOpt = Annotated[Optional[str], typer.Option(
    "--optuna-storage", metavar="URL", help="Optuna study storage (BINSWEEP_OPTUNA_STORAGE), e.g. "
    "postgresql://optuna@db/optuna (default: the cluster's own).")]
JobEnvOpt = Annotated[Optional[list[str]], typer.Option(
    "--env", metavar="KEY=VALUE", help="Another variable for the job's environment (repeatable), e.g. --env "
    "OMP_NUM_THREADS=4. Nothing of this shell is sent unless given here or by a flag above; credentials are "
    "refused.")]
