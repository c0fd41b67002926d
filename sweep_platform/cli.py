"""The `binsweep` command line. The root only assembles commands; heavy libraries are imported inside them so
`binsweep --help` is instant."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from sweep_platform.errors import run_guarded

app = typer.Typer(
    name="binsweep",
    help="Ray-distributed hyperparameter sweeps for binaural-audio transformers (BAST, depth-infused "
    "binauralization), with every trial in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


def _mount_groups() -> None:
    from sweep_platform import data_cli

    app.add_typer(data_cli.app, name="data")
    from sweep_platform import binaural_cli

    binaural_cli.mount(app, data_cli.app)  # data binaural, data fairplay, binauralize
    from sweep_platform import train_cli

    app.command("train")(train_cli.train)
    from sweep_platform import results_cli

    results_cli.mount(app)  # leaderboard, report, promote, models, predict
    from sweep_platform import sweep_cli

    app.command("sweep")(sweep_cli.sweep)
    app.command("resume")(sweep_cli.resume)


_mount_groups()

PACKAGES = ("binsweep", "torch", "ray", "mlflow", "optuna")


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


class Loss(str, Enum):
    mse = "mse"
    ad = "ad"
    hybrid = "hybrid"


class Integration(str, Enum):
    add = "add"
    sub = "sub"
    concat = "concat"


class Sharing(str, Enum):
    SP = "SP"
    NSP = "NSP"


@app.command()
def demo(
    epochs: Annotated[int, typer.Option(help="Training epochs, e.g. 6.", min=1)] = 6,
    sounds: Annotated[int, typer.Option(help="Generated sounds, each rendered at every azimuth, e.g. 96.", min=4)] = 96,
    preset: Annotated[str, typer.Option(help="Model size preset: bast_tiny, bast_small or bast_paper.")] = "bast_tiny",
    sharing: Annotated[Sharing, typer.Option(help="SP shares TE-L and TE-R; NSP does not.")] = Sharing.NSP,
    integration: Annotated[Integration, typer.Option(help="Interaural integration.")] = Integration.sub,
    loss: Annotated[Loss, typer.Option(help="Training loss.")] = Loss.hybrid,
    lr: Annotated[float, typer.Option(help="Adam learning rate, e.g. 1e-3.", min=0.0)] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="Batch size, e.g. 32.", min=1)] = 32,
    seed: Annotated[int, typer.Option(help="Seed of data and initialisation.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Folder for the plots (default runs/demo).")] = None,
) -> None:
    """Train a small BAST on CPU on generated binaural data and print per-epoch loss and angular error.

    Sounds from the built-in corpus are rendered at 36 azimuths with a spherical-head model; validation sounds
    are never heard in training. Writes per-azimuth, hemifield, scatter and attention-rollout plots.
    """

    def _run() -> None:
        from rich.table import Table

        from sweep_platform.paths import runs_dir
        from trainables.bast.config import BASTConfig, LossConfig, TrainConfig, preset as make_preset
        from trainables.bast.demo import make_dataset, train, write_analysis
        from trainables.bast.model import count_parameters

        cfg = BASTConfig(
            model=make_preset(preset, sharing=sharing.value, integration=integration.value),
            loss=LossConfig(name=loss.value),
            train=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed),
        )
        out_dir = out or runs_dir() / "demo"
        azimuths = list(range(0, 360, 10))
        with console.status(f"rendering {sounds} generated sounds at {len(azimuths)} azimuths"):
            train_set, val_set = make_dataset(sounds, azimuths, val_fraction=0.25, seed=seed)
        console.print(
            f"BAST-{sharing.value} {integration.value}, {loss.value} loss, preset {preset}: "
            f"{len(train_set.spec)} training / {len(val_set.spec)} validation samples (validation sounds unseen)"
        )
        table = Table("epoch", "train loss", "val loss", "val AD (deg)", "val MSE", "seconds")

        def on_epoch(r) -> None:
            row = (str(r.epoch), f"{r.train_loss:.4f}", f"{r.val_loss:.4f}", f"{r.val_ad_deg:.2f}",
                   f"{r.val_mse:.4f}", f"{r.seconds:.1f}")
            table.add_row(*row)
            console.print(f"epoch {r.epoch:>3}  train_loss {row[1]}  val_loss {row[2]}  val_ad_deg {row[3]}  "
                          f"val_mse {row[4]}  ({row[5]} s)", highlight=False)

        model, _ = train(cfg, train_set, val_set, on_epoch)
        console.print(table)
        console.print(f"{count_parameters(model):,} parameters (chance AD is 90°)")
        files = write_analysis(model, val_set, out_dir)
        for name, path in files.items():
            console.print(f"  {name:<10} {path}", highlight=False)

    run_guarded(_run)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
