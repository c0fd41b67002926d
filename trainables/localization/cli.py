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
    generated_sounds: Annotated[Optional[int], typer.Option(
        help="Generated sounds (default 400 without --sounds); with --sounds, this many generated sounds are added "
             "to the recordings.", min=2)] = None,
    generated_kinds: Annotated[Optional[str], typer.Option(
        help="Comma-separated families of the generated corpus (noise, harmonic, chirp, clicks, vowel, am_mix); "
             "default all six. The broadband ones (noise,chirp,am_mix) carry the pinna cues at every frequency.")
    ] = None,
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
    val_split: Annotated[str, typer.Option(help="sound: val holds out whole sounds; clip: val clips drawn per "
                                           "azimuth x environment cell (datasets built before).")] = "sound",
    rooms: Annotated[int, typer.Option(help="Randomised shoebox rooms for training (room-000, ...; RT60 0.2-1.5 s, "
                                       "sources 0.5-3 m), e.g. 48; adds diffuse noise and level jitter.", min=0)] = 0,
    heldout_rooms: Annotated[Optional[int], typer.Option(help="Rooms of the larger held-out family, split heldout "
                                                         "(default with --rooms: rooms // 4, at least 2).",
                                                         min=0)] = None,
    rooms_per_sound: Annotated[int, typer.Option(help="Training rooms each sound x azimuth is rendered in.",
                                                 min=1)] = 1,
    snr_db: Annotated[Optional[str], typer.Option(help="Diffuse noise SNR range LOW:HIGH in dB (default with "
                                                  "--rooms 0:30); 'none' for no noise.")] = None,
    level_jitter_db: Annotated[Optional[float], typer.Option(help="Attenuate each clip by 0..this many dB, both "
                                                             "ears alike (default with --rooms 10).", min=0)] = None,
) -> None:
    """Render sounds at every azimuth and environment with measured KEMAR HRIRs into Parquet shards.

    With --rooms N, each sound x azimuth is also rendered in randomised shoebox rooms (environments room-000, ...),
    test sounds in a held-out family of larger rooms (split heldout), with diffuse noise and level jitter; the
    manifest records every room. Train on them with data.train_environments: ["room-*"].

    An interrupted build resumes where it stopped when run again with the same options; with --out at a URI
    (s3://bucket/prefix, for a multi-node cluster) it is built in a staging folder under BINSWEEP_HOME's cache and
    uploaded when complete, manifest last.
    """
    from trainables.localization.builder import LocalizationBuildConfig, build
    from trainables.sounds import KINDS

    snr = _snr_range(snr_db, default=(0.0, 30.0) if rooms else None)
    cfg = LocalizationBuildConfig(
        sounds=sounds, generated_sounds=generated_sounds or 400, hrtf=hrtf,
        generated_kinds=KINDS if generated_kinds is None else _names(generated_kinds),
        mix_generated=sounds is not None and generated_sounds is not None, val_split=val_split, rooms=rooms,
        heldout_rooms=(max(2, rooms // 4) if rooms else 0) if heldout_rooms is None else heldout_rooms,
        rooms_per_sound=rooms_per_sound, snr_db=snr,
        level_jitter_db=(10.0 if rooms else 0.0) if level_jitter_db is None else level_jitter_db,
        azimuths=tuple(range(0, 360, azimuth_step)),
        environments=_names(environments),
        rt60_s=rt60, source_distance_m=distance, test_fraction=test_fraction, val_fraction=val_fraction,
        dtype=dtype, shard_rows=shard_rows, seed=seed,
    )
    with progress_bar("rendering") as bar:
        task = bar.add_task("render", total=None)
        manifest = build(cfg, out, progress=lambda done, total: bar.update(task, completed=done, total=total))
    print_manifest(manifest)


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated option ("anechoic, reverberant") as its names, blanks dropped."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _snr_range(text: str | None, default):
    if text is None:
        return default
    if text.strip().lower() == "none":
        return None
    try:
        low, high = (float(v) for v in text.split(":"))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give LOW:HIGH in dB, e.g. 0:30, or none", param_hint="--snr-db") from None
    return (low, high)


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
