"""`binsweep data binaural`, `binsweep data fairplay` and `binsweep binauralize`: the binaural trainable's commands.

Returned by `commands(services)` (the spec's `commands`); binauralize loads its model through the platform's
`services.load_model`, so models:/binaural@champion, runs:/... and checkpoint folders all work. Heavy imports
happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from trainables.registry import Command, PlatformServices
from trainables.terminal import print_manifest, progress_bar

TRAINABLE = "binaural"  # the registered name models are loaded as


def _manifest_details(manifest) -> str:
    h, w = manifest.image_size
    return f"{manifest.sample_rate} Hz, frames {h}×{w}, depth {'yes' if manifest.has_depth else 'no'}"


def data_binaural(
    out: Annotated[str, typer.Option(help="Output folder, e.g. data/binaural, or a URI, e.g. s3://bucket/prefix "
                                     "(built in a local staging folder, then uploaded, manifest last).")]
    = "data/binaural",
    scenes: Annotated[int, typer.Option(help="Scenes in all (split 80/10/10 by scene), e.g. 1000.", min=3)] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of scenes and splits; the same seed gives the same bytes.")] = 0,
    image_size: Annotated[tuple[int, int], typer.Option(help="Frame and depth-map size H W; match the model's "
                                                        "image_size (binaural_tiny 64 128, paper 224 448).")] = (64, 128),
    environments: Annotated[str, typer.Option(help="Comma-separated kinds of scene: anechoic (a chamber lined with "
                                              "wedge foam) and/or reverberant (a room of drawn size and materials).")]
    = "anechoic,reverberant",
    reverberant_fraction: Annotated[float, typer.Option(help="With both environments: the share of reverberant "
                                                        "scenes.", min=0.0, max=1.0)] = 0.5,
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

    Each scene is a shoebox room (size, wall materials, camera/listener pose) with 1-3 sources inside the camera's
    field of view, each an object whose shape and colour encode its sound class; picture, depth map and sound
    (image-source method, KEMAR at the listener) come from that one geometry. An interrupted build resumes when run
    again with the same options;
    with --out at a URI (s3://bucket/prefix) it is built in a staging folder and uploaded when complete, manifest last.
    """
    from trainables.binaural.data import BinauralBuildConfig, build
    from trainables.binaural.scenes import SceneConfig

    cfg = BinauralBuildConfig(
        scenes=scenes, seed=seed, hrtf=hrtf, dtype=dtype, shard_rows=shard_rows,
        environments=tuple(e.strip() for e in environments.split(",") if e.strip()),
        reverberant_fraction=reverberant_fraction,
        clip_seconds=clip_seconds, test_clip_seconds=test_seconds, val_fraction=val_fraction,
        test_fraction=test_fraction,
        scene=SceneConfig(image_size=tuple(image_size), min_sources=min_sources, max_sources=max_sources,
                          max_azimuth_deg=max_azimuth),
    )
    with progress_bar("rendering scenes") as bar:
        task = bar.add_task("render", total=scenes)
        manifest = build(cfg, out, progress=lambda done, total: bar.update(task, completed=done, total=total))
    print_manifest(manifest, _manifest_details(manifest))


def data_fairplay(
    root: Annotated[Path, typer.Argument(help="FAIR-Play root: binaural_audios/, frames/<id>.mp4/%06d.png (10 fps), "
                                         "splits/splitN/*.h5.")],
    out: Annotated[str, typer.Option(help="Output folder, e.g. data/fairplay, or a URI, e.g. s3://bucket/prefix.")]
    = "data/fairplay",
    split_set: Annotated[str, typer.Option(help="splits (the 10 random splits, .h5) or new_splits / five_splits "
                                           "(the 5 non-overlapping splits, .txt).")] = "splits",
    splits: Annotated[Optional[str], typer.Option(help="Comma-separated split numbers to record, e.g. 1,2; "
                                                  "default: every splitN folder.")] = None,
    image_size: Annotated[tuple[int, int], typer.Option(help="The model's frame size H W; frames are stored at "
                                                        "2.5D's margin (240×480 for 224×448) and cropped to it.")]
    = (224, 448),
    augment: Annotated[bool, typer.Option(help="Store frames with 2.5D's crop margin so training crops and "
                                          "colour-jitters them; --no-augment stores them at image_size.")] = True,
    max_seconds: Annotated[Optional[float], typer.Option(help="Cut every recording to this length (default: "
                                                         "whole 10 s).")] = None,
    frame_format: Annotated[str, typer.Option(help="Frame storage: jpeg (quality 95, about 48 kB for a 240×480 "
                                              "photo), png (lossless, about 3.5× that) or raw (346 kB).")] = "jpeg",
) -> None:
    """Import FAIR-Play once (16 kHz, whole recordings, every frame) with one view per split (OUT/splitN).

    Train on split N with data.root OUT and data.split N: fresh random 0.63 s crops of the whole training recordings
    every epoch, frames cropped and colour-jittered as in 2.5D; validation and test are deterministic.
    """
    from trainables.binaural.fairplay import ALL, FairPlayImportConfig, import_fairplay
    from trainables.terminal import console

    numbers = None
    if splits:
        try:
            numbers = tuple(int(x) for x in splits.split(",") if x.strip())
        except ValueError:
            raise typer.BadParameter(f"--splits {splits!r}: give split numbers such as 1,2,3") from None
    cfg = FairPlayImportConfig(root=root, split_set=split_set, splits=numbers, image_size=tuple(image_size),
                               augment=augment, max_seconds=max_seconds, frame_format=frame_format)
    with progress_bar("importing recordings") as bar:
        task = bar.add_task("import", total=None)
        manifest = import_fairplay(cfg, out, progress=lambda done, total: bar.update(task, completed=done, total=total))
    views = manifest.data.get("views", [])
    console.print(f"{manifest.root}: {manifest.data['counts'][ALL]['total']} recordings; "
                  f"{_manifest_details(manifest)}; fingerprint {manifest.fingerprint[:16]}\n"
                  f"{len(views)} split views ({', '.join(views)}): train on split N with data.root {out} and "
                  "data.split N", highlight=False)


def commands(services: PlatformServices) -> list[Command]:
    def binauralize(
        model: Annotated[str, typer.Argument(help="models:/binaural@champion, models:/binaural/3, runs:/RUN_ID/model "
                                             "or a checkpoint folder.")],
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
        """Turn a mono recording into binaural audio with a trained model (0.63 s windows, overlaps averaged)."""
        import torch

        from trainables.binaural.inference import binauralize_file

        device = "cuda" if torch.cuda.is_available() else "cpu"
        m, _ = services.load_model(model, TRAINABLE)
        result = binauralize_file(m.to(device), wav, out, image=image, depth=depth, downmix=downmix,
                                  hop_seconds=hop, device=device, say=services.warn)
        services.say(f"wrote {result.out} ({result.seconds:.2f} s, 2 channels, {result.sample_rate} Hz)")

    return [Command("binaural", data_binaural, group="data"), Command("fairplay", data_fairplay, group="data"),
            Command("binauralize", binauralize)]
