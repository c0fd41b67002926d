"""Commands that read results back: leaderboard, report, promote, models, predict.

`mount(app)` adds them to the root `binsweep` app. Heavy imports (MLflow, torch, matplotlib, optuna) happen inside
the commands.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from sweep_platform.errors import USAGE_ERROR, err_console, make_console, run_guarded


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    markdown = "markdown"


def _refuse(message: str, code: int = USAGE_ERROR) -> None:
    err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


def leaderboard(
    sweep: Annotated[Optional[str], typer.Option(help="Sweep name (default: the most recent sweep).")] = None,
    metric: Annotated[Optional[str], typer.Option(
        help="Ranking metric, e.g. test_mse or val_loss (default: the trainable's test metric, test_ad_deg for "
        "BAST, falling back to the best validation epoch for trials without one).")] = None,
    top: Annotated[Optional[int], typer.Option(help="Show only the first N rows.", min=1)] = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    compare_paper: Annotated[bool, typer.Option(
        "--compare-paper", help="Put the BAST paper's AD and MSE beside each (sharing, integration, loss).")] = False,
    trainable: Annotated[Optional[str], typer.Option(help="Only sweeps of this trainable, e.g. bast.")] = None,
) -> None:
    """Rank a sweep's trials from MLflow: key parameters, metric, epochs, GPU hours, state; failed trials last."""

    def _run() -> None:
        from sweep_platform import leaderboard as lb
        from sweep_platform import paper_results

        console = make_console()  # made here, so COLUMNS is read when the command runs
        ref = lb.find_sweep(sweep, trainable)
        rows = lb.leaderboard(ref, metric=metric, top=top, compare_paper=compare_paper)
        if format is Format.table:
            if not rows:
                console.print(f"sweep {ref.name}: no trials yet", highlight=False)
                return
            console.print(lb.to_table(rows, title=f"sweep {ref.name} ({ref.trainable}), ranked by {rows[0]['metric']}"))
            for line in lb.failed_lines(rows):
                console.print(f"[red]failed[/red] {line}", highlight=False, soft_wrap=True)
            if compare_paper:
                console.print(f"[dim]paper values: {paper_results.SOURCE}[/dim]", highlight=False)
        else:
            typer.echo(lb.render(rows, format.value), nl=False)

    run_guarded(_run)


def report(
    name: Annotated[Optional[str], typer.Argument(help="Sweep name (default: the most recent sweep).")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write.")] = Path("report.html"),
    metric: Annotated[Optional[str], typer.Option(help="Ranking metric (as for leaderboard).")] = None,
    storage: Annotated[Optional[str], typer.Option(
        help="Optuna storage URL (default: BINSWEEP_OPTUNA_STORAGE or sqlite:///runs/optuna.db).")] = None,
    log_artifact: Annotated[bool, typer.Option(
        "--log/--no-log", help="Also log the page to the sweep's parent run as report.html.")] = True,
) -> None:
    """Write one self-contained HTML page about a sweep: leaderboard, parameter importances, metric-versus-parameter
    plots and the best trial's per-azimuth, hemifield and attention-rollout plots."""

    def _run() -> None:
        from sweep_platform.report import write_report

        out, ref = write_report(name, output, metric=metric, storage=storage, log_to_mlflow=log_artifact)
        typer.echo(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB) for sweep {ref.name}"
                   + (f"; logged to run {ref.run_id} as report.html" if log_artifact else ""))

    run_guarded(_run)


def promote(
    sweep: Annotated[Optional[str], typer.Option(help="Sweep whose best trial is the challenger (default: the most "
                                                 "recent sweep).")] = None,
    alias: Annotated[str, typer.Option(help="Registry alias to move, e.g. champion.")] = "champion",
    force: Annotated[bool, typer.Option("--force", help="Move the alias even when the challenger is not better, the "
                                        "datasets differ or the holder cannot be evaluated.")] = False,
    model_name: Annotated[Optional[str], typer.Option(help="Registered model name (default: the trainable, e.g. "
                                                      "bast).")] = None,
    trainable: Annotated[Optional[str], typer.Option(help="Only sweeps of this trainable.")] = None,
) -> None:
    """Register a sweep's best model and move the alias to it only if it beats the holder on the same test split
    (paired Wilcoxon test on per-sample errors). Exit 0: promoted or kept; 2: refused (nothing changed)."""

    def _run() -> None:
        from sweep_platform.registry_ops import PromotionRefused, promote as do_promote

        try:
            result = do_promote(sweep, model_name=model_name, alias=alias, force=force, trainable=trainable,
                                say=lambda s: typer.echo(s))
        except PromotionRefused as exc:
            _refuse(f"promotion refused: {exc}")
            return
        cmp = result.comparison
        if cmp is not None:
            typer.echo(f"paired {cmp['test']} over {cmp['n']} test samples: challenger mean "
                       f"{cmp['mean_challenger']:.4g} vs holder {cmp['mean_holder']:.4g} (difference "
                       f"{cmp['mean_difference']:+.4g}); statistic {cmp['statistic']:.4g}, p one-sided "
                       f"{cmp['p_one_sided']:.3g}, p two-sided {cmp['p_two_sided']:.3g}")
        typer.echo(("promoted: " if result.promoted else "kept: ") + result.message)

    run_guarded(_run)


def models(
    name: Annotated[str, typer.Option(help="Registered model name.")] = "bast",
    format: Annotated[Format, typer.Option("--format", "-f", help="table or json.")] = Format.table,
) -> None:
    """List the registered versions of a model: version, aliases, sweep, trial, test metric, created."""

    def _run() -> None:
        import json

        from rich.table import Table

        from sweep_platform.registry_ops import list_versions

        console = make_console()
        rows = list_versions(name)
        if format is Format.json:
            typer.echo(json.dumps(rows, indent=2))
            return
        if format is not Format.table:
            raise ValueError("models supports --format table or json")
        metric = rows[0]["metric"] if rows else "test_ad_deg"
        table = Table("version", "aliases", "sweep", "trial", metric, "created", title=f"registered model {name}")
        for r in rows:
            table.add_row(r["version"], ", ".join(r["aliases"]), r["sweep"] or "", r["trial"] or "",
                          "" if r["value"] is None else f"{r['value']:.4g}", r["created"])
        console.print(table)

    run_guarded(_run)


def predict(
    model: Annotated[str, typer.Argument(help="Model URI, e.g. models:/bast@champion or models:/bast/3.")],
    files: Annotated[list[Path], typer.Argument(help="Stereo WAV files (channel 0 = left ear), at least 0.5 s.")],
) -> None:
    """Print the predicted azimuth (degrees counter-clockwise from the front, 90 = left) of each file.

    Files are resampled to 16 kHz and the centre 0.5 s is used. Unreadable, non-stereo or too-short files are named
    on stderr and make the exit code 2; the other files are still predicted.
    """

    def _run() -> None:
        from sweep_platform.registry_ops import predict_files

        results = predict_files(model, list(files))
        width = max(len(r.path) for r in results)
        for r in results:
            if r.error is None:
                typer.echo(f"{r.path:<{width}}  {r.azimuth_deg:6.1f}")
        bad = [r for r in results if r.error is not None]
        for r in bad:
            err_console.print(f"[bold red]error:[/bold red] {r.error}", highlight=False, soft_wrap=True)
        if bad:
            sys.exit(USAGE_ERROR)

    run_guarded(_run)


def mount(app: typer.Typer) -> None:
    for fn in (leaderboard, report, promote, models, predict):
        app.command(fn.__name__)(fn)
