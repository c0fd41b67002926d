"""Commands that read results back: leaderboard, report, promote, models, predict.

`mount(app)` adds them to the root `binsweep` app. Heavy imports (MLflow, torch, matplotlib, optuna) happen inside
the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from sweep_platform import cli_options as opt
from sweep_platform.errors import USAGE_ERROR, console, err_console

RankMetricOpt = Annotated[Optional[str], typer.Option(
    "--metric", help="Rank by this metric instead, e.g. test_ad_deg or val_loss (default: the sweep's own metric and "
    "mode, each trial's best validation epoch; the test metric is shown beside it). A test metric falls back to the "
    "best validation epoch for trials without one.")]


def leaderboard(
    sweep: opt.SweepOpt = None,
    metric: RankMetricOpt = None,
    top: Annotated[Optional[int], typer.Option(help="Show only the first N rows.", min=1)] = None,
    format: opt.RankingFormatOpt = opt.RankingFormat.table,
    compare_paper: Annotated[bool, typer.Option(
        "--compare-paper", help="Put published reference values beside each trial, for trainables that have them "
        "(bast: the BAST paper's AD and MSE, matched by sharing, integration and loss).")] = False,
    trainable: opt.TrainableOpt = None,
    wide: Annotated[bool, typer.Option(
        "--wide", help="Table: every column (run, every test metric, GPU hours, every parameter) at full length, "
        "however wide; by default the table fits 120 columns.")] = False,
) -> None:
    """Rank a sweep's trials from MLflow by the sweep's own metric on validation (the test metric beside it):
    state, epochs, wall time, the searched parameters; failed trials last."""
    from sweep_platform import leaderboard as lb

    ref = lb.find_sweep(sweep, trainable)
    rows = lb.leaderboard(ref, metric=metric, top=top, compare_paper=compare_paper)
    if format is not opt.RankingFormat.table:
        typer.echo(lb.render(rows, format.value), nl=False)
        return
    if not rows:
        console.print(f"sweep {ref.name}: no trials yet", highlight=False)
        return
    table = lb.to_table(rows, title=f"sweep {ref.name} ({ref.trainable}), ranked by {lb.ranked_by(rows)}", wide=wide)
    if wide:  # every column whole, however wide the terminal (rich would fold the cells to fit it)
        from rich.console import Console

        Console(width=max(console.width, lb.natural_width(table)), file=console.file,
                color_system=console.color_system, force_terminal=console.is_terminal).print(table)
    else:
        console.print(table)
    for line in lb.failed_lines(rows):
        console.print(f"[red]failed[/red] {line}", highlight=False, soft_wrap=True)
    paper = getattr(lb.trainable_spec(ref.trainable), "paper", None) if compare_paper else None
    if paper is not None:
        console.print(f"[dim]paper values: {paper.source}[/dim]", highlight=False)


def report(
    name: Annotated[Optional[str], typer.Argument(help="Sweep name (default: the most recent sweep).")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write.")] = Path("report.html"),
    metric: RankMetricOpt = None,
    storage: Annotated[Optional[str], typer.Option(
        help="Optuna storage URL (default: BINSWEEP_OPTUNA_STORAGE or sqlite:///runs/optuna.db).")] = None,
    log_artifact: Annotated[bool, typer.Option(
        "--log/--no-log", help="Also log the page to the sweep's parent run as report.html.")] = True,
) -> None:
    """Write one self-contained HTML page about a sweep: leaderboard, parameter importances, metric-versus-parameter
    plots and the best trial's evaluation plots."""
    from sweep_platform.report import write_report

    out, ref = write_report(name, output, metric=metric, storage=storage, log_to_mlflow=log_artifact)
    typer.echo(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB) for sweep {ref.name}"
               + (f"; logged to run {ref.run_id} as report.html" if log_artifact else ""))


def promote(
    sweep: Annotated[Optional[str], typer.Option(help="Sweep whose best trial is the challenger (default: the most "
                                                 "recent sweep).")] = None,
    alias: Annotated[str, typer.Option(help="Registry alias to move, e.g. champion.")] = "champion",
    alpha: Annotated[float, typer.Option(
        help="Significance level of the gate: the challenger takes the alias only if the one-sided paired "
        "Wilcoxon test in its favour gives p < alpha (0 < alpha < 1).")] = 0.05,
    force: Annotated[bool, typer.Option("--force", help="Move the alias even when the gate refuses (not "
                                        "significantly better, too few samples, different datasets, a holder that "
                                        "cannot be evaluated); recorded on the version as binsweep.forced=true with "
                                        "the reason and p-value. A challenger that does not load is still refused.")
                      ] = False,
    model_name: opt.ModelNameOpt = None,
    trainable: opt.TrainableOpt = None,
) -> None:
    """Register a sweep's best model and move the alias to it only if it is significantly better than the holder on
    the same test split: a one-sided paired Wilcoxon signed-rank test on both models' per-sample test errors, p <
    --alpha. The first promotion needs no test. Each registered version gets a model-card description (trainable,
    searched parameters, test metrics and sample count, dataset and fingerprint, sweep and trial, the gate's outcome).

    Exit 0: promoted (or the alias already holds this model); 2: refused, with both means, the p-value and the
    number of samples; nothing in the registry changed.

    Examples: binsweep promote --sweep smoke1; binsweep promote --sweep smoke1 --alpha 0.01;
    binsweep promote --sweep smoke1 --force
    """
    from sweep_platform.promotion import promote as do_promote

    result = do_promote(sweep, model_name=model_name, alias=alias, force=force, alpha=alpha, trainable=trainable,
                        say=lambda s: typer.echo(s))
    typer.echo(("promoted: " if result.promoted else "unchanged: ") + result.message)


def models(
    name: Annotated[str, typer.Option(help="Registered model name, e.g. bast.")],
    format: opt.FormatOpt = opt.Format.table,
) -> None:
    """List the registered versions of a model: version, aliases, sweep, trial, test metric, created."""
    from rich.table import Table

    from sweep_platform.model_store import list_versions

    rows = list_versions(name)
    if format is opt.Format.json:
        typer.echo(json.dumps(rows, indent=2))
        return
    metric = (rows[0]["metric"] if rows else None) or "metric"
    table = Table("version", "aliases", "sweep", "trial", metric, "created", title=f"registered model {name}")
    for r in rows:
        table.add_row(r["version"], ", ".join(r["aliases"]), r["sweep"] or "", r["trial"] or "",
                      "" if r["value"] is None else f"{r['value']:.4g}", r["created"])
    console.print(table)


def predict(
    model: opt.ModelUriArg,
    files: Annotated[list[Path], typer.Argument(help="Input files, as the model's trainable reads them (see "
                                                "`binsweep trainables`; a localizer: stereo WAV, channel 0 = left "
                                                "ear, at least 0.5 s).")],
    format: opt.FormatOpt = opt.Format.table,
) -> None:
    """Predict each file with a registered model: one row per file of the values its trainable's predictor gives
    (a localizer: the azimuth in degrees counter-clockwise from the front, 90 = left).

    A file the predictor cannot use (unreadable, wrong channel count, too short) is named on stderr and makes the
    exit code 2; the other files are still predicted. With --format json: one object per file, with its values or
    its error.
    """
    from sweep_platform.leaderboard import format_value
    from sweep_platform.prediction import predict_files

    results = predict_files(model, list(files))
    bad = [r for r in results if r.error is not None]
    if format is opt.Format.json:
        typer.echo(json.dumps([r.row() for r in results], indent=2))
    else:
        width = max(len(r.path) for r in results)
        for r in results:
            if r.error is None:
                typer.echo(f"{r.path:<{width}}  " + "  ".join(f"{format_value(v):>6}" for v in r.values.values()))
    for r in bad:
        err_console.print(Text.assemble(("error: ", "bold red"), r.error), soft_wrap=True)
    if bad:
        raise typer.Exit(USAGE_ERROR)


def mount(app: typer.Typer) -> None:
    for fn in (leaderboard, report, promote, models, predict):
        app.command(fn.__name__)(fn)
