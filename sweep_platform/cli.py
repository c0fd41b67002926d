"""The `binsweep` command line. The root only assembles commands; heavy libraries are imported inside them, and
installed trainables' commands are mounted only when needed (cli_group), so `binsweep leaderboard --help` is instant.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from sweep_platform import cli_options as opt
from sweep_platform import evaluate_cli, results_cli, sweep_cli, train_cli, trainables_cli
from sweep_platform import watch as watch_cli
from sweep_platform.cli_group import BinsweepGroup
from sweep_platform.errors import console

app = typer.Typer(
    name="binsweep",
    cls=BinsweepGroup,
    help="Ray-distributed hyperparameter sweeps for binaural-audio transformers (BAST, depth-infused "
    "binauralization), with every trial in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("trainables")(trainables_cli.trainables)
app.command("train")(train_cli.train)
results_cli.mount(app)  # leaderboard, report, promote, models, predict
app.command("sweep")(sweep_cli.sweep)
app.command("resume")(sweep_cli.resume)
app.command("submit")(sweep_cli.submit)
app.command("watch")(watch_cli.watch_command)
app.command("evaluate")(evaluate_cli.evaluate)

PACKAGES = ("binsweep", "torch", "ray", "mlflow", "optuna")


@app.callback()
def root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show everything Ray and MLflow print, also the "
                                          "lines hidden by default (sets BINSWEEP_VERBOSE=1 for every process of "
                                          "the run).")] = False,
) -> None:
    """Ray-distributed hyperparameter sweeps, with every trial in MLflow."""
    from sweep_platform import quiet

    if verbose:
        os.environ[quiet.VERBOSE_VARIABLE] = "1"
    quiet.install()


@app.command()
def version() -> None:
    """Print the versions of binsweep and of the stack it runs on."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as pkg_version

    for name in PACKAGES:
        try:
            v = pkg_version(name)
        except PackageNotFoundError:
            v = "not installed"
        console.print(f"{name} {v}", highlight=False)


@app.command()
def demo(
    sweep: Annotated[Optional[Path], typer.Option(help="Sweep file to run (default: search_spaces/bast_demo.yaml, "
                                                  "4 trials of a small BAST with ASHA).")] = None,
    name: opt.SweepNameOpt = None,
    clips: Annotated[int, typer.Option(help="Held-out test clips to predict at the end, e.g. 4.", min=1)] = 4,
    model_name: opt.ModelNameOpt = None,
) -> None:
    """The whole platform in minutes on a laptop CPU: sweep, leaderboard, promotion, prediction.

    Builds the smoke dataset from measured KEMAR HRIRs if it is missing, sweeps a tiny BAST with Optuna and ASHA on
    an embedded Ray (every trial an MLflow child run), prints the leaderboard, promotes the best model to
    bast@champion through the paired-test gate, predicts a few held-out test clips, and says how to open the
    MLflow UI and optuna-dashboard on the results. State goes under $BINSWEEP_HOME/runs (default ./runs).
    """
    from sweep_platform.demo import DEFAULT_SWEEP, run_demo

    code = run_demo(sweep or DEFAULT_SWEEP, name, clips=clips, model_name=model_name,
                    say=lambda text: console.print(text, highlight=False, soft_wrap=True))
    if code:
        raise typer.Exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
