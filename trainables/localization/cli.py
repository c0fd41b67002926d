"""`binsweep data localization` and `binsweep data import-nicnn`: the localization datasets of bast and cnn_loc.

Both trainables' specs return `commands(services)`; the functions are module-level, so the platform sees one command
contributed twice and mounts it once. Heavy imports happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from trainables.registry import Command, PlatformServices
from trainables.terminal import console, print_manifest, progress_bar


def localization(
    out: Annotated[str, typer.Option(help="Output folder, e.g. data/loc, or a URI, e.g. s3://bucket/prefix (built in "
                                     "a local staging folder, then uploaded, manifest last).")] = "data/loc",
    sounds: Annotated[Optional[Path], typer.Option(help="Folder of recordings (wav, flac, ogg, mp3; any rate); "
                                                   "default: the generated corpus.")] = None,
    generated_sounds: Annotated[int, typer.Option(help="Generated sounds when no --sounds, e.g. 400.")] = 400,
    hrtf: Annotated[Optional[Path], typer.Option(help="SOFA file of your own subject; default MIT KEMAR.")] = None,
    azimuth_step: Annotated[int, typer.Option(help="Azimuth spacing in degrees (36 azimuths at 10).", min=1,
                                              max=180)] = 10,
    environments: Annotated[str, typer.Option(help="Comma-separated: anechoic,reverberant.")] = "anechoic,reverberant",
    rt60: Annotated[float, typer.Option(help="Reverberation time of the lecture hall in seconds.")] = 0.8,
    distance: Annotated[float, typer.Option(help="Source distance in metres (1 m in the paper).")] = 1.0,
    test_fraction: Annotated[float, typer.Option(help="Fraction of sounds held out for testing.")] = 0.1,
    val_fraction: Annotated[float, typer.Option(help="Val share of each azimuth x environment cell.")] = 0.25,
    dtype: Annotated[str, typer.Option(help="Waveform storage: int16 or float32.")] = "int16",
    shard_rows: Annotated[int, typer.Option(help="Rows per Parquet shard.")] = 2048,
    seed: Annotated[int, typer.Option(help="Seed of sounds and splits; the same seed gives the same bytes.")] = 0,
) -> None:
    """Render sounds at every azimuth and environment with measured KEMAR HRIRs into Parquet shards.

    An interrupted build resumes where it stopped when run again with the same options; with --out at a URI
    (s3://bucket/prefix, for a multi-node cluster) it is built in a staging folder under BINSWEEP_HOME's cache and
    uploaded when complete, manifest last.
    """
    from trainables.localization.builder import LocalizationBuildConfig, build

    cfg = LocalizationBuildConfig(
        sounds=sounds, generated_sounds=generated_sounds, hrtf=hrtf,
        azimuths=tuple(range(0, 360, azimuth_step)),
        environments=tuple(e.strip() for e in environments.split(",") if e.strip()),
        rt60_s=rt60, source_distance_m=distance, test_fraction=test_fraction, val_fraction=val_fraction,
        dtype=dtype, shard_rows=shard_rows, seed=seed,
    )
    with progress_bar("rendering") as bar:
        task = bar.add_task("render", total=None)
        manifest = build(cfg, out, progress=lambda done, total: bar.update(task, completed=done, total=total))
    print_manifest(manifest)


def import_nicnn(
    src: Annotated[Path, typer.Argument(help="Folder with train/ and test/ of NI-CNN WAVs.")],
    out: Annotated[str, typer.Option(help="Output folder, e.g. data/nicnn, or a URI, e.g. s3://bucket/prefix.")]
    = "data/nicnn",
    val_fraction: Annotated[float, typer.Option(help="Val share of each azimuth x environment cell.")] = 0.25,
    seed: Annotated[int, typer.Option(help="Seed of the train/val split.")] = 0,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on any file that breaks the convention.")] = False,
) -> None:
    """Import the original NI-CNN dataset (van der Heijden & Mehrkanoon 2022) into binsweep's Parquet format."""
    from trainables.localization import nicnn

    with progress_bar("importing") as bar:
        task = bar.add_task("import", total=None)
        report = nicnn.import_nicnn(src, out, val_fraction=val_fraction, seed=seed, strict=strict,
                                    progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(report.format(), highlight=False)
    print_manifest(report.manifest)


def commands(services: PlatformServices) -> list[Command]:
    return [Command("localization", localization, group="data"), Command("import-nicnn", import_nicnn, group="data")]
