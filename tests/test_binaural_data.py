"""Binauralization data: generated scenes (geometry, depth, audio, determinism, splits, resume), the shard reader,
and `binsweep data binaural` (the FAIR-Play import: test_fairplay_protocol.py)."""

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from trainables.binaural import data
from trainables.binaural.data import BinauralBuildConfig, BinauralReader, build, load_manifest, read_clips
from trainables.binaural.scene_view import CHAMBER
from trainables.binaural.scenes import (CLASS_STYLE, Camera, Renderer, Room, SceneConfig, Source, make_scene,
                                         render_view)

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


def _room(environment="reverberant", material="plaster", absorption=0.05):
    """An 8 × 6 × 3 m room with the head 1 m from the back wall, centred, at 1.5 m."""
    if environment == "anechoic":
        material, absorption = CHAMBER, 1.0
    return Room(environment, (8.0, 6.0, 3.0), (1.0, 3.0, 1.5), (material,) * 6, (absorption,) * 6)


def test_object_position_follows_azimuth():
    """90° = the listener's left, counter-clockwise: a source on the left is drawn in the left half of the image,
    and the object's column moves monotonically right as the azimuth goes from left to right."""
    cfg = SceneConfig(azimuth_step_deg=5.0)
    cam = Camera(cfg.image_size, cfg.hfov_deg)
    W = cfg.image_size[1]
    cols = []
    for az in (40.0, 20.0, 5.0, 0.0, -5.0, -20.0, -40.0):
        image, depth, (src,) = render_view(cfg, _room(), [Source("harmonic", az, 2.0, 0.0, 0.0, 0.5)],
                                           np.random.default_rng(0))
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
        _, _, (src,) = render_view(cfg, _room(), [Source("noise", 0.0, d, 0.0, 0.0, 0.5)], np.random.default_rng(0))
        widths.append(src.box[3] - src.box[1])
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(4.0, rel=0.2)  # f · size / z


def test_depth_map_holds_each_objects_plane_at_its_pixels(dataset):
    """Objects are flat shapes facing the camera at their source's position: along every pixel ray of an object the
    forward distance (depth / ray length per forward metre) is the source's forward distance r cos(el) cos(az)."""
    cam = Camera((64, 128), 90.0)
    norm = np.linalg.norm(cam.rays(), axis=0)
    checked = 0
    for clip in read_clips(dataset.root, "train"):
        forward = clip.depth[0] / norm
        m = load_manifest(dataset.root).data["rooms"][clip.scene_id]
        for az, d, box in zip(clip.azimuth_deg, clip.distance_m, clip.boxes):
            if box == (0, 0, 0, 0):
                continue  # hidden behind a nearer object
            # the rows hold azimuth and radial distance, not the elevation (|el| <= 15°), so the plane's forward
            # distance lies in [r cos(az) cos(15°), r cos(az)]: the most common such value in the box
            r0, c0, r1, c1 = box
            vals, counts = np.unique(np.round(forward[r0:r1, c0:c1], 4), return_counts=True)
            top = d * math.cos(math.radians(az))
            fits = (vals <= top + 1e-3) & (vals >= top * math.cos(math.radians(15.0)) - 1e-3)
            assert fits.any(), (clip.scene_id, box)
            plane = vals[fits][np.argmax(counts[fits])]
            # within 2 pixels around the box (a ceiling or floor row lies at one forward distance too), the pixels on
            # that plane are exactly the object's visible pixels
            a0, b0 = max(0, r0 - 2), max(0, c0 - 2)
            rr, cc = np.nonzero(np.abs(forward[a0:r1 + 2, b0:c1 + 2] - plane) < 2e-4)
            assert (a0 + rr.min(), b0 + cc.min(), a0 + rr.max() + 1, b0 + cc.max() + 1) == box
            checked += 1
        # the room is behind every source: its walls are farther than the farthest source
        assert clip.depth.max() > max(clip.distance_m)
        assert np.isfinite(clip.depth).all() and (clip.depth > 0).all()
        assert m["environment"] == clip.environment
    assert checked >= 10


def test_object_colour_encodes_class():
    cfg = SceneConfig()
    for kind, (shape, rgb) in CLASS_STYLE.items():
        image, _, (src,) = render_view(cfg, _room(), [Source(kind, 0.0, 1.5, 0.0, 0.0, 0.5)],
                                       np.random.default_rng(1))
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

    # In a reverberant room the ILD of tonal sounds is at the mercy of the reflections (measured: a vowel at +30° gave
    # -5 dB in the 2.5 s room); broadband noise in a moderately damped room keeps the direct sound's side.
    cases = [("anechoic", _room("anechoic"), k) for k in ("noise", "harmonic", "vowel")] + [
        ("reverberant", _room(absorption=0.3), "noise")]
    for environment, room, kind in cases:
        dry = sounds.generate_sound(kind, 10080, 16000, rng)[None]
        wave = renderer.render(room, [Source(kind, az, 2.0, 0.0)], dry)
        ild_db = 10 * np.log10(np.mean(wave[0] ** 2) / np.mean(wave[1] ** 2))
        assert np.sign(ild_db) == np.sign(az), (environment, kind, az, ild_db)
        assert abs(ild_db) > (1.0 if environment == "anechoic" else 0.3)
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
    a = make_scene(cfg, renderer, 0, 5, 10080, "reverberant")
    b = make_scene(cfg, renderer, 0, 5, 10080, "reverberant")
    c = make_scene(cfg, renderer, 1, 5, 10080, "reverberant")
    assert np.array_equal(a.image, b.image) and np.array_equal(a.depth, b.depth)
    assert np.array_equal(a.wave, b.wave) and a.room == b.room
    assert not np.array_equal(a.image, c.image)
    assert 1 <= len(a.sources) <= 3
    assert all(abs(s.azimuth_deg) <= cfg.max_azimuth_deg and 0.5 <= s.distance_m <= 6.5 for s in a.sources)


def test_scene_config_rejects_sources_outside_the_view():
    with pytest.raises(ValueError, match="inside the field of view"):
        SceneConfig(max_azimuth_deg=50.0, hfov_deg=90.0)
    with pytest.raises(ValueError, match="max_elevation_deg"):
        SceneConfig(max_elevation_deg=30.0)  # 64 × 128 at 90°: the vertical field of view is ±26.6°
    with pytest.raises(ValueError, match="min_distance_m"):
        SceneConfig(min_distance_m=7.0)


def test_reverberant_environment_renders_a_longer_tail(renderer):
    dry = np.zeros((1, 8000), np.float32)
    dry[0, 0] = 1.0
    src = [Source("noise", 10.0, 2.0, 0.0)]
    dry_tail = np.abs(renderer.render(_room("anechoic"), src, dry)[:, 2000:]).max()
    wet_tail = np.abs(renderer.render(_room("reverberant"), src, dry)[:, 2000:]).max()
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
    assert m.data["environments"] == ["anechoic", "reverberant"]  # the default draws both kinds of scene
    assert len(m.data["rooms"]) == 6
    assert "fingerprint" in res.output
    assert all(len(c.classes) == 1 for c in read_clips(out, "train"))
    assert pq.read_schema(out / m.data["shards"][0]["file"]).names == data.schema("int16").names
