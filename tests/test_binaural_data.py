"""Binauralization data: generated scenes (geometry, depth, audio, determinism, splits, resume), the shard reader,
the FAIR-Play import on a fixture in the real layout, and `binsweep data binaural`."""

import json
import math

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from PIL import Image

from trainables.binaural import data, fairplay
from trainables.binaural.data import BinauralBuildConfig, BinauralReader, build, load_manifest, read_clips
from trainables.binaural.scenes import CLASS_STYLE, Camera, Renderer, SceneConfig, Source, make_scene, render_view

SMALL = dict(scenes=24, shard_rows=8, val_fraction=0.15, test_fraction=0.15, test_clip_seconds=0.8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("bin") / "scenes"
    return build(BinauralBuildConfig(**SMALL), root)


@pytest.fixture(scope="module")
def renderer():
    return Renderer(SceneConfig())


# ------------------------------------------------------------------------------------------------ scenes


def test_same_seed_same_bytes_and_other_seed_differs(dataset, tmp_path):
    again = build(BinauralBuildConfig(**SMALL), tmp_path / "again")
    assert again.fingerprint == dataset.fingerprint
    for a, b in zip(dataset.data["shards"], again.data["shards"]):
        assert (dataset.root / a["file"]).read_bytes() == (again.root / b["file"]).read_bytes()
    other = build(BinauralBuildConfig(**{**SMALL, "seed": 1}), tmp_path / "other")
    assert other.fingerprint != dataset.fingerprint


def test_split_by_scene_and_manifest_counts(dataset):
    m = load_manifest(dataset.root)
    assert m.data["kind"] == "binaural" and m.data["schema_version"] == data.SCHEMA_VERSION
    assert m.sample_rate == 16000 and m.image_size == (64, 128) and m.has_depth
    scenes = {}
    for split in data.SPLITS:
        clips = read_clips(dataset.root, split)
        assert len(clips) == m.count(split) > 0
        scenes[split] = {c.scene_id for c in clips}
        lengths = {c.wave.shape[1] for c in clips}
        assert lengths == ({12800} if split == "test" else {10080})
        assert m.data["counts"][split]["samples"] == [min(lengths), max(lengths)]
    assert not scenes["train"] & scenes["val"] and not scenes["train"] & scenes["test"] \
        and not scenes["val"] & scenes["test"]
    assert sum(len(s) for s in scenes.values()) == SMALL["scenes"]
    assert sum(m.count(s) for s in data.SPLITS) == SMALL["scenes"]


def test_object_position_follows_azimuth():
    """90° = the listener's left, counter-clockwise: a source on the left is drawn in the left half of the image,
    and the object's column moves monotonically right as the azimuth goes from left to right."""
    cfg = SceneConfig(azimuth_step_deg=5.0)
    cam = Camera(cfg.image_size, cfg.hfov_deg)
    W = cfg.image_size[1]
    cols = []
    for az in (40.0, 20.0, 5.0, 0.0, -5.0, -20.0, -40.0):
        image, depth, (src,) = render_view(cfg, [Source("harmonic", az, 2.0, 0.0)], np.random.default_rng(0))
        r0, c0, r1, c1 = src.box
        centre = (c0 + c1) / 2
        assert abs(centre - cam.column(az)) <= 1.0
        if az > 0:
            assert centre < W / 2, (az, src.box)  # left of the listener: left half of the image
        elif az < 0:
            assert centre > W / 2, (az, src.box)
        if az >= 20:
            assert c1 <= W / 2, (az, src.box)  # wholly in the left half
        elif az <= -20:
            assert c0 >= W / 2, (az, src.box)
        # The object is where its class colour is: red (harmonic) pixels sit inside its box.
        red = (image[0] > 180) & (image[1] < 90) & (image[2] < 90)
        rr, cc = np.nonzero(red)
        assert len(rr) and rr.min() >= r0 and rr.max() < r1 and cc.min() >= c0 and cc.max() < c1
        cols.append(centre)
    assert cols == sorted(cols)


def test_object_size_follows_distance():
    cfg = SceneConfig()
    widths = []
    for d in (1.0, 2.0, 4.0):
        _, _, (src,) = render_view(cfg, [Source("noise", 0.0, d, 0.0)], np.random.default_rng(0))
        widths.append(src.box[3] - src.box[1])
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(4.0, rel=0.2)  # f · size / z


def test_depth_map_equals_source_distance_at_object_pixels(dataset):
    clips = read_clips(dataset.root, "train")
    checked = 0
    for clip in clips:
        depth = clip.depth[0]
        for d, box in zip(clip.distance_m, clip.boxes):
            if box == (0, 0, 0, 0):
                continue  # hidden behind a nearer object
            rr, cc = np.nonzero(depth == np.float32(d))
            # the pixels at exactly the source's distance are the object's visible pixels: their bounding box is
            # the object's box
            assert (rr.min(), cc.min(), rr.max() + 1, cc.max() + 1) == box
            checked += 1
        # the room is behind every source: the wall is farther than the farthest source
        assert depth.max() > max(clip.distance_m)
        assert np.isfinite(depth).all() and (depth > 0).all()
    assert checked >= len(clips)


def test_object_colour_encodes_class():
    cfg = SceneConfig()
    for kind, (shape, rgb) in CLASS_STYLE.items():
        image, _, (src,) = render_view(cfg, [Source(kind, 0.0, 1.5, 0.0)], np.random.default_rng(1))
        r0, c0, r1, c1 = src.box
        patch = image[:, r0:r1, c0:c1].reshape(3, -1).T.astype(float) / 255
        # the brightest-saturated pixels of the box carry the class colour (up to the shading)
        dist = np.linalg.norm(patch / np.maximum(patch.max(1, keepdims=True), 1e-6)
                              - np.asarray(rgb) / max(rgb), axis=1)
        assert (dist < 0.15).mean() > 0.3, kind


@pytest.mark.parametrize("az", [30.0, 15.0, -15.0, -30.0])
def test_rendered_ild_sign_follows_side(renderer, az):
    cfg = renderer.cfg
    rng = np.random.default_rng(3)
    from trainables import sounds

    for kind in ("noise", "harmonic", "vowel"):
        dry = sounds.generate_sound(kind, 10080, 16000, rng)[None]
        wave = renderer.render([Source(kind, az, 2.0, 0.0)], dry, "anechoic")
        ild_db = 10 * np.log10(np.mean(wave[0] ** 2) / np.mean(wave[1] ** 2))
        assert np.sign(ild_db) == np.sign(az), (kind, az, ild_db)
        assert abs(ild_db) > 1.0
        assert np.abs(wave).max() == pytest.approx(0.9, abs=1e-6)
    assert cfg.sample_rate == 16000


def test_dataset_ild_sign_follows_side_for_single_sources(dataset):
    n = 0
    for split in data.SPLITS:
        for clip in read_clips(dataset.root, split):
            if len(clip.azimuth_deg) == 1 and abs(clip.azimuth_deg[0]) >= 10:
                ild = np.mean(clip.wave[0] ** 2) / np.mean(clip.wave[1] ** 2)
                assert (ild > 1) == (clip.azimuth_deg[0] > 0)
                n += 1
    assert n >= 1


def test_scene_is_deterministic_and_seeded(renderer):
    cfg = renderer.cfg
    a = make_scene(cfg, renderer, 0, 5, 10080)
    b = make_scene(cfg, renderer, 0, 5, 10080)
    c = make_scene(cfg, renderer, 1, 5, 10080)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.depth, b.depth)
    assert np.array_equal(a.waves["anechoic"], b.waves["anechoic"])
    assert not np.array_equal(a.image, c.image)
    assert 1 <= len(a.sources) <= 3
    assert all(abs(s.azimuth_deg) <= cfg.max_azimuth_deg and 1.0 <= s.distance_m <= 5.0 for s in a.sources)


def test_scene_config_rejects_sources_outside_the_view():
    with pytest.raises(ValueError, match="inside the field of view"):
        SceneConfig(max_azimuth_deg=50.0, hfov_deg=90.0)
    with pytest.raises(ValueError, match="wall_distance_m"):
        SceneConfig(max_distance_m=7.0)


def test_reverberant_environment_renders_a_longer_tail(tmp_path):
    cfg = SceneConfig(rt60_s=0.3, max_azimuth_deg=10.0, azimuth_step_deg=5.0, max_sources=1)
    r = Renderer(cfg)
    dry = np.zeros((1, 8000), np.float32)
    dry[0, 0] = 1.0
    src = [Source("noise", 10.0, 2.0, 0.0)]
    dry_tail = np.abs(r.render(src, dry, "anechoic")[:, 2000:]).max()
    wet_tail = np.abs(r.render(src, dry, "reverberant")[:, 2000:]).max()
    assert dry_tail < 1e-6 < wet_tail


# ------------------------------------------------------------------------------------------------ build, reader


def test_resume_rebuilds_only_missing_shards_and_refuses_other_builds(dataset, tmp_path):
    out = tmp_path / "resume"
    first = build(BinauralBuildConfig(**SMALL), out)
    victim = out / first.data["shards"][0]["file"]
    kept = out / first.data["shards"][1]["file"]
    kept_mtime = kept.stat().st_mtime_ns
    victim.unlink()
    again = build(BinauralBuildConfig(**SMALL), out)
    assert again.fingerprint == first.fingerprint == dataset.fingerprint
    assert kept.stat().st_mtime_ns == kept_mtime
    with pytest.raises(ValueError, match="different build"):
        build(BinauralBuildConfig(**{**SMALL, "seed": 9}), out)


def test_reader_batches_crops_and_shards_over_workers(dataset):
    r = BinauralReader(dataset.root, "train", 4, window=10080, shuffle=True, random_crop=True, seed=0,
                       image=True, depth=True)
    batches = list(r)
    assert len(batches) == len(r)
    b = batches[0]
    assert b["wave"].shape == (4, 2, 10080) and b["wave"].dtype == torch.float32
    assert b["image"].shape == (4, 3, 64, 128) and b["image"].dtype == torch.uint8
    assert b["depth"].shape == (4, 1, 64, 128)
    again = list(r)  # the same (seed, epoch): the same batches
    assert all(torch.equal(x["wave"], y["wave"]) for x, y in zip(batches, again))
    r.set_epoch(1)
    assert not all(torch.equal(x["wave"], y["wave"]) for x, y in zip(batches, list(r)))
    # longer test clips: random windows of the model's length
    t = BinauralReader(dataset.root, "test", 2, window=4960, shuffle=False, random_crop=True, image=False)
    w = next(iter(t))["wave"]
    assert w.shape == (2, 2, 4960)
    # two workers: disjoint equal shares
    a = BinauralReader(dataset.root, "val", 1, window=10080, rank=0, world_size=2, shuffle=False, image=False)
    c = BinauralReader(dataset.root, "val", 1, window=10080, rank=1, world_size=2, shuffle=False, image=False)
    assert len(a) == len(c)
    wa = torch.cat([x["wave"] for x in a])
    wc = torch.cat([x["wave"] for x in c])
    assert not any(torch.equal(x, y) for x in wa for y in wc)


def test_reader_errors(dataset, tmp_path):
    with pytest.raises(ValueError, match="shorter than the model's window"):
        BinauralReader(dataset.root, "train", 4, window=20000)
    with pytest.raises(ValueError, match="no environment 'reverberant'"):
        BinauralReader(dataset.root, "train", 4, window=10080, environments=["reverberant"])
    with pytest.raises(FileNotFoundError, match="binsweep data binaural"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 1, "counts": {}}))
    with pytest.raises(ValueError, match="not a binauralization dataset"):
        load_manifest(tmp_path)


# ------------------------------------------------------------------------------------------------ FAIR-Play


FOREIGN = "/home/someone/BINAURAL_MUSIC_ROOM/binaural16k"
SECONDS = 1.5
NATIVE_RATE = 48000
IDS = {"train": ["000001", "000002", "000003"], "val": ["000004"], "test": ["000005"]}


def _frame_colour(clip_index: int, k: int) -> tuple[int, int, int]:
    return (10 * k, 20 * clip_index, 200)


def write_fairplay(root, ids=IDS, seconds=SECONDS, frames_per_clip=None):
    """A FAIR-Play root in the real layout: 48 kHz stereo WAVs, frames/<id>.mp4/%06d.png at 10 fps, and
    splits/split1/{train,val,test}.h5 whose 'audio' holds foreign absolute paths; new_splits/split1/*.txt too."""
    (root / "binaural_audios").mkdir(parents=True)
    rng = np.random.default_rng(0)
    n_frames = frames_per_clip or int(round(seconds * 10))
    for split, names in ids.items():
        for i, name in enumerate(names):
            n = int(seconds * NATIVE_RATE)
            t = np.arange(n) / NATIVE_RATE
            left = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(n)
            sf.write(str(root / "binaural_audios" / f"{name}.wav"), np.stack([left, 0.5 * left], 1), NATIVE_RATE)
            d = root / "frames" / f"{name}.mp4"
            d.mkdir(parents=True)
            for k in range(1, n_frames + 1):
                Image.new("RGB", (32, 16), _frame_colour(int(name), k)).save(d / f"{k:06d}.png")
        for folder, write in (("splits", "h5"), ("new_splits", "txt")):
            (root / folder / "split1").mkdir(parents=True, exist_ok=True)
            if write == "h5":
                with h5py.File(root / folder / "split1" / f"{split}.h5", "w") as f:
                    f.create_dataset("audio", data=np.array([f"{FOREIGN}/{n}.wav".encode() for n in names]))
            else:
                (root / folder / "split1" / f"{split}.txt").write_text("\n".join(f"{n}.mp3" for n in names))
    return root


@pytest.fixture
def fp_root(tmp_path):
    return write_fairplay(tmp_path / "FAIR-Play")


def test_fairplay_split_paths_are_rerooted(fp_root):
    assert fairplay.read_split(fp_root, 1, "train") == IDS["train"]
    assert fairplay.read_split(fp_root, 1, "test", split_set="new_splits") == IDS["test"]
    assert fairplay.wav_path(fp_root, "000001") == fp_root / "binaural_audios" / "000001.wav"


def test_fairplay_import(fp_root, tmp_path):
    cfg = fairplay.FairPlayImportConfig(root=fp_root, image_size=(16, 32), windows_per_clip=3, seed=0)
    m = fairplay.import_fairplay(cfg, tmp_path / "fp")
    assert m.data["source"] == "fairplay" and not m.has_depth and m.sample_rate == 16000
    assert m.count("train") == 9 and m.count("val") == 3 and m.count("test") == 1
    for clip in read_clips(m.root, "train"):
        assert clip.wave.shape == (2, 10080) and clip.frames.shape == (1, 3, 16, 32)
        assert clip.scene_id in IDS["train"]
        # the frame is the one nearest the window's centre: round((t_mid + 0.05) * 10), 1-based (2.5D)
        t_mid = clip.start_s + 0.315
        k = int(math.floor((t_mid + 0.05) * 10 + 0.5))
        assert tuple(clip.frames[0, :, 0, 0]) == _frame_colour(int(clip.scene_id), k)
        assert 0.0 <= clip.start_s <= SECONDS - 0.63 + 1e-6
        # audio resampled from 48 kHz, channel 0 = left (the louder one in the fixture)
        assert np.mean(clip.wave[0] ** 2) > 3 * np.mean(clip.wave[1] ** 2)
    (test,) = read_clips(m.root, "test")
    assert test.wave.shape == (2, round(SECONDS * 16000)) and test.frames.shape == (15, 3, 16, 32)
    assert np.allclose(test.frame_times, (np.arange(15) + 0.5) / 10)
    # same config, same bytes; the reader feeds it (no depth maps)
    again = fairplay.import_fairplay(cfg, tmp_path / "fp2")
    assert again.fingerprint == m.fingerprint
    r = BinauralReader(m.root, "train", 4, window=10080, image=True)
    assert next(iter(r))["image"].shape == (4, 3, 16, 32)
    with pytest.raises(ValueError, match="no depth maps"):
        BinauralReader(m.root, "train", 4, window=10080, depth=True)


def test_fairplay_missing_audio_is_named(fp_root, tmp_path):
    (fp_root / "binaural_audios" / "000002.wav").unlink()
    with pytest.raises(fairplay.FairPlayError) as e:
        fairplay.import_fairplay(fairplay.FairPlayImportConfig(root=fp_root, image_size=(16, 32)), tmp_path / "o")
    assert str(fp_root / "binaural_audios" / "000002.wav") in str(e.value)
    assert "1 audio files missing" in str(e.value)


def test_fairplay_missing_frames_are_named(fp_root, tmp_path):
    import shutil

    shutil.rmtree(fp_root / "frames" / "000004.mp4")
    with pytest.raises(fairplay.FairPlayError) as e:
        fairplay.import_fairplay(fairplay.FairPlayImportConfig(root=fp_root, image_size=(16, 32)), tmp_path / "o")
    assert str(fp_root / "frames" / "000004.mp4") in str(e.value) and "ffmpeg" in str(e.value)


def test_fairplay_missing_single_frame_is_named(tmp_path):
    root = write_fairplay(tmp_path / "FP", frames_per_clip=4)  # frames end at 0.4 s of a 1.5 s clip
    cfg = fairplay.FairPlayImportConfig(root=root, image_size=(16, 32), windows_per_clip=2)
    with pytest.raises(fairplay.FairPlayError, match=r"frames/0000\d\d\.mp4/0000\d\d\.png"):
        fairplay.import_fairplay(cfg, tmp_path / "o")


def test_fairplay_missing_split_file_is_named(fp_root, tmp_path):
    with pytest.raises(fairplay.FairPlayError, match=r"splits/split3/train\.h5"):
        fairplay.import_fairplay(fairplay.FairPlayImportConfig(root=fp_root, split_index=3), tmp_path / "o")


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_data_binaural(tmp_path):
    from typer.testing import CliRunner

    from sweep_platform.cli import app

    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["data", "binaural", "--out", str(out), "--scenes", "6", "--image-size", "32", "64",
                                   "--max-sources", "1", "--seed", "3"])
    assert res.exit_code == 0, res.output
    m = load_manifest(out)
    assert m.image_size == (32, 64) and sum(m.count(s) for s in data.SPLITS) == 6
    assert "fingerprint" in res.output
    assert all(len(c.classes) == 1 for c in read_clips(out, "train"))
    assert pq.read_schema(out / m.data["shards"][0]["file"]).names == data.schema("int16").names
