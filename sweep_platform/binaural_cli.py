"""`binsweep data binaural`, `binsweep data fairplay` and `binsweep binauralize`.

Mounted by `sweep_platform.cli` (`mount(app, data_app)`). Heavy imports happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sweep_platform.data_cli import console, progress_bar
from sweep_platform.errors import err_console, run_guarded


def _print_manifest(manifest) -> None:
    counts = manifest.data["counts"]
    parts = ", ".join(f"{s} {counts[s]['total']}" for s in ("train", "val", "test") if s in counts)
    h, w = manifest.image_size
    console.print(f"{manifest.root}: {parts} clips; {manifest.sample_rate} Hz, frames {h}×{w}, depth "
                  f"{'yes' if manifest.has_depth else 'no'}; fingerprint {manifest.fingerprint[:16]}", highlight=False)


def data_binaural(
    out: Annotated[Path, typer.Option(help="Output folder, e.g. data/binaural.")] = Path("data/binaural"),
    scenes: Annotated[int, typer.Option(help="Scenes in all (split 80/10/10 by scene), e.g. 1000.", min=3)] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of scenes and splits; the same seed gives the same bytes.")] = 0,
    image_size: Annotated[tuple[int, int], typer.Option(help="Frame and depth-map size H W; match the model's "
                                                        "image_size (binaural_tiny 64 128, paper 224 448).")] = (64, 128),
    environments: Annotated[str, typer.Option(help="Comma-separated: anechoic,reverberant (the lecture hall).")]
    = "anechoic",
    min_sources: Annotated[int, typer.Option(help="Fewest sources per scene.", min=1)] = 1,
    max_sources: Annotated[int, typer.Option(help="Most sources per scene.", min=1)] = 3,
    max_azimuth: Annotated[float, typer.Option(help="Sources within ± this azimuth (degrees, inside the 90° "
                                               "field of view).")] = 40.0,
    clip_seconds: Annotated[float, typer.Option(help="Train/val clip length (the model window).")] = 0.63,
    test_seconds: Annotated[float, typer.Option(help="Test clip length, evaluated whole with sliding windows.")]
    = 1.0,
    val_fraction: Annotated[float, typer.Option(help="Share of scenes for validation.")] = 0.1,
    test_fraction: Annotated[float, typer.Option(help="Share of scenes for testing.")] = 0.1,
    hrtf: Annotated[Optional[Path], typer.Option(help="SOFA file of your own subject; default MIT KEMAR.")] = None,
    dtype: Annotated[str, typer.Option(help="Waveform storage: int16 or float32.")] = "int16",
    shard_rows: Annotated[int, typer.Option(help="Rows per Parquet shard.")] = 256,
) -> None:
    """Generate audio-visual scenes (frame, depth map, KEMAR-rendered binaural audio) into Parquet shards.

    1-3 sources per scene inside the camera's field of view, each an object whose shape and colour encode its sound
    class, placed by azimuth and sized by distance. An interrupted build resumes when run again with the same options.
    """

    def _run() -> None:
        from trainables.binaural.data import BinauralBuildConfig, build
        from trainables.binaural.scenes import SceneConfig

        cfg = BinauralBuildConfig(
            scenes=scenes, seed=seed, hrtf=hrtf, dtype=dtype, shard_rows=shard_rows,
            environments=tuple(e.strip() for e in environments.split(",") if e.strip()),
            clip_seconds=clip_seconds, test_clip_seconds=test_seconds, val_fraction=val_fraction,
            test_fraction=test_fraction,
            scene=SceneConfig(image_size=tuple(image_size), min_sources=min_sources, max_sources=max_sources,
                              max_azimuth_deg=max_azimuth),
        )
        with progress_bar("rendering scenes") as bar:
            task = bar.add_task("render", total=scenes)
            manifest = build(cfg, out, progress=lambda done, total: bar.update(task, completed=done, total=total))
        _print_manifest(manifest)

    run_guarded(_run)


def data_fairplay(
    root: Annotated[Path, typer.Argument(help="FAIR-Play root: binaural_audios/, frames/<id>.mp4/%06d.png (10 fps), "
                                         "splits/splitN/*.h5.")],
    out: Annotated[Path, typer.Option(help="Output folder, e.g. data/fairplay.")] = Path("data/fairplay"),
    split: Annotated[int, typer.Option(help="Which splitN.", min=1)] = 1,
    split_set: Annotated[str, typer.Option(help="splits (10 random splits, .h5) or new_splits / five_splits "
                                           "(the 5 non-overlapping splits, .txt).")] = "splits",
    image_size: Annotated[tuple[int, int], typer.Option(help="Frame size H W (the model's image_size).")]
    = (224, 448),
    windows_per_clip: Annotated[int, typer.Option(help="Random 0.63 s windows per train/val recording.", min=1)] = 8,
    test_seconds: Annotated[Optional[float], typer.Option(help="Cut test recordings to this length (default: "
                                                          "whole 10 s).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the window positions.")] = 0,
) -> None:
    """Import one FAIR-Play split into Parquet shards (16 kHz; windows with their nearest frame; whole test clips)."""

    def _run() -> None:
        from trainables.binaural.fairplay import FairPlayImportConfig, import_fairplay

        cfg = FairPlayImportConfig(root=root, split_index=split, split_set=split_set, image_size=tuple(image_size),
                                   windows_per_clip=windows_per_clip, test_seconds=test_seconds, seed=seed)
        with progress_bar("importing recordings") as bar:
            task = bar.add_task("import", total=None)
            manifest = import_fairplay(cfg, out,
                                       progress=lambda done, total: bar.update(task, completed=done, total=total))
        _print_manifest(manifest)

    run_guarded(_run)


def load_binaural_model(model_uri: str):
    """models:/name@alias, models:/name/version, runs:/..., or a checkpoint folder (state.pt + config.json)."""
    path = Path(model_uri)
    if path.is_dir():
        from sweep_platform.training import load_model
        from trainables.registry import get_trainable

        if not (path / "state.pt").is_file():
            raise FileNotFoundError(f"{path} is not a binsweep checkpoint folder (no state.pt)")
        model, _, meta = load_model(get_trainable("binaural"), path)
        if meta.get("trainable") not in (None, "binaural"):
            raise ValueError(f"{path} is a {meta.get('trainable')} checkpoint, not binaural")
        return model
    if "://" not in model_uri and ":/" not in model_uri:
        raise FileNotFoundError(f"{model_uri}: neither a checkpoint folder nor a model URI (models:/binaural@champion)")
    from sweep_platform.registry_ops import describe_error, load_model

    try:
        return load_model(model_uri)
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types for a missing model or alias
        raise ValueError(f"cannot load model {model_uri}: {describe_error(exc)}") from None


def binauralize(
    model: Annotated[str, typer.Argument(help="models:/binaural@champion, models:/binaural/3, or a checkpoint "
                                         "folder.")],
    wav: Annotated[Path, typer.Argument(help="Mono WAV (any rate; resampled to the model's 16 kHz).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output 2-channel WAV (channel 0 = left).")],
    image: Annotated[Optional[Path], typer.Option(help="The scene's frame (PNG/JPEG); required when the model "
                                                  "looks at images.")] = None,
    depth: Annotated[Optional[Path], typer.Option(help="Depth map .npy in metres [H, W]; for models with "
                                                  "depth_source=map.")] = None,
    downmix: Annotated[bool, typer.Option("--downmix", help="Accept a stereo file and use L + R as the mono mix "
                                          "(refused otherwise: a stereo file is probably binaural already).")]
    = False,
    hop: Annotated[float, typer.Option(help="Sliding-window hop in seconds (2.5D demo: 0.05).", min=0.001)] = 0.05,
) -> None:
    """Turn a mono recording into binaural audio with a trained model (0.63 s sliding windows, overlaps averaged)."""

    def _run() -> None:
        import torch

        from trainables.binaural.inference import binauralize_file

        m = load_binaural_model(model)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        result = binauralize_file(m.to(device), wav, out, image=image, depth=depth, downmix=downmix,
                                  hop_seconds=hop, device=device,
                                  say=lambda s: err_console.print(f"[yellow]notice:[/yellow] {s}", highlight=False))
        console.print(f"wrote {result.out} ({result.seconds:.2f} s, 2 channels, {result.sample_rate} Hz)",
                      highlight=False)

    run_guarded(_run)


def mount(app: typer.Typer, data_app: typer.Typer) -> None:
    data_app.command("binaural")(data_binaural)
    data_app.command("fairplay")(data_fairplay)
    app.command("binauralize")(binauralize)
